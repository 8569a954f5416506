"""``prepare-acdc``: ACDC in the SSL4MIS layout (``volumes/patientNNN_frameMM.h5`` + ``patients.list``) to NIfTI.

Each frame file holds ``image`` (float32, slices × H × W, scaled to [0, 1]) and ``label`` (uint8, 0 background,
1 right ventricle, 2 myocardium, 3 left ventricle). A frame becomes ``imagesTr/<patient>_<frame>.nii.gz`` and
``labelsTr/...`` as an H × W × slices volume; the files carry no spacing, so the affine is the identity and every
distance is in pixels. Patients, never frames, are split: both frames of a patient land in the same list.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from .datalist import write_datalist
from .splits import read_id_list, repeated_ids
from ..utils.errors import DataError
from .h5 import read_h5_volume
from ..transforms.check_label import check_label
from .nifti import save_image, save_label, spacing_affine
from .output import check_output_dir, replace_output_dir

__all__ = ["ACDC_CLASSES", "ACDC_LABELS", "patient_frames", "prepare_acdc", "read_acdc_frame", "split_patients"]

ACDC_CLASSES = 4
ACDC_LABELS = {"right ventricle": 1, "myocardium": 2, "left ventricle": 3}
FRAME_FILE = re.compile(r"^(patient\d+)_(frame\d+)\.h5$")


def read_acdc_frame(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``image`` (float32) and ``label`` (uint8) of one frame file as H × W × slices arrays, both checked."""
    image, label = read_h5_volume(path)
    check_label(label, image.shape, ACDC_CLASSES, str(path))
    return (np.ascontiguousarray(image.transpose(1, 2, 0)),
            np.ascontiguousarray(label.transpose(1, 2, 0)).astype(np.uint8))


#: ACDC keeps two frames of each patient: end-diastole and end-systole
FRAMES_PER_PATIENT = 2


def patient_frames(volumes: str | os.PathLike) -> dict[str, list[str]]:
    """``{patient: [frame file names]}`` of the ``patientNNN_frameMM.h5`` files in ``volumes``."""
    volumes = Path(volumes)
    if not volumes.is_dir():
        raise DataError(f"{volumes}: not a folder (expected the SSL4MIS layout: volumes/patientNNN_frameMM.h5)")
    frames: dict[str, list[str]] = {}
    for f in sorted(volumes.iterdir()):
        m = FRAME_FILE.match(f.name)
        if m:
            frames.setdefault(m.group(1), []).append(f.name)
    return frames


def split_patients(patients: Sequence[str], labeled: int, val: int, seed: int | None = None,
                   labeled_ids: Sequence[str] | None = None,
                   val_ids: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Split patients into labelled, unlabelled and validation lists.

    In ``patients`` order (shuffled with ``seed`` when one is given): the first ``labeled`` are labelled, the last
    ``val`` validation, the rest unlabelled. ``labeled_ids``/``val_ids`` name a list's patients explicitly instead
    of its count; the other list is then drawn from the remaining patients as above.
    """
    order = list(patients)
    if labeled < 0 or val < 0:
        raise DataError(f"--labeled-patients ({labeled}) and --val-patients ({val}) must not be negative")
    for name, ids in (("--labeled-ids", labeled_ids), ("--val-ids", val_ids)):
        if ids is not None and not ids:
            raise DataError(f"{name}: names no patient")
        repeated = repeated_ids(ids or ())
        if repeated:
            raise DataError(f"{name}: names {repeated} more than once")
        unknown = sorted(set(ids or ()) - set(order))
        if unknown:
            raise DataError(f"{name}: {unknown} are not among the {len(order)} patients")
    both = sorted(set(labeled_ids or ()) & set(val_ids or ()))
    if both:
        raise DataError(f"--labeled-ids and --val-ids both name {both}")
    if seed is not None:
        random.Random(seed).shuffle(order)
    named = set(labeled_ids or ()) | set(val_ids or ())
    rest = [p for p in order if p not in named]
    lab = list(labeled_ids) if labeled_ids is not None else None
    va = list(val_ids) if val_ids is not None else None
    need = (0 if lab is not None else labeled) + (0 if va is not None else val)
    if need > len(rest):
        counts = [f"--labeled-patients {labeled}"] * (lab is None) + [f"--val-patients {val}"] * (va is None)
        left = f"left after {' and '.join(n for n, i in (('--labeled-ids', lab), ('--val-ids', va)) if i is not None)}"
        raise DataError(f"{' plus '.join(counts)} exceeds the {len(rest)} patients "
                        f"{left if named else 'available'}")
    if lab is None:
        lab, rest = rest[:labeled], rest[labeled:]
    if va is None:
        va, rest = rest[len(rest) - val:], rest[: len(rest) - val]
    return {"labeled": lab, "unlabeled": rest, "validation": va}


def prepare_acdc(
    source: str | os.PathLike,
    output: str | os.PathLike,
    labeled: int = 3,
    val: int = 4,
    seed: int | None = None,
    labeled_ids: Sequence[str] | None = None,
    val_ids: Sequence[str] | None = None,
    progress: bool = True,
) -> Path:
    """Convert the ACDC frames under ``source`` to ``output/{imagesTr,labelsTr}`` and ``datalist.json``.

    Records carry ``patient``, so the split can be checked; the datalist holds ``classes`` (4), ``label_names``
    and ``spacing`` (1 pixel). The output folder is written to a temporary sibling and renamed at the end: bad input
    names the file and leaves an existing ``output`` untouched.
    """
    check_output_dir(output, {"--source": source})
    source = Path(source)
    list_file = source / "patients.list"
    patients = read_id_list(list_file, "patients", "SSL4MIS layout: patients.list and volumes/")
    frames = patient_frames(source / "volumes")
    missing = [p for p in patients if p not in frames]
    if missing:
        raise DataError(f"{source / 'volumes'}: no frame files for {missing[:5]} (named in {list_file})")
    uneven = {p: frames[p] for p in patients if len(frames[p]) != FRAMES_PER_PATIENT}
    if uneven:  # a lost or misnamed file would silently leave the patient with one frame
        p, names = next(iter(uneven.items()))
        raise DataError(f"{source / 'volumes'}: {p} has {len(names)} frame file(s) {names}, not "
                        f"{FRAMES_PER_PATIENT} (end-diastole and end-systole, patientNNN_frameMM.h5)"
                        + (f"; so do {len(uneven) - 1} more patients" if len(uneven) > 1 else ""))
    split = split_patients(patients, labeled, val, seed, labeled_ids, val_ids)
    output = Path(output)
    affine = spacing_affine(1.0)
    with replace_output_dir(output) as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        records: dict[str, list[dict]] = {}
        for patient in tqdm(patients, desc="prepare-acdc", disable=not progress, unit="patient"):
            records[patient] = []
            for name in frames[patient]:
                image, label = read_acdc_frame(source / "volumes" / name)
                stem = name[: -len(".h5")]
                save_image(image, affine, tmp / "imagesTr" / f"{stem}.nii.gz")
                save_label(label, affine, tmp / "labelsTr" / f"{stem}.nii.gz")
                records[patient].append({"image": f"imagesTr/{stem}.nii.gz", "label": f"labelsTr/{stem}.nii.gz",
                                         "patient": patient})

        def rows(key: str, with_label: bool) -> list[dict]:
            return [r if with_label else {k: v for k, v in r.items() if k != "label"}
                    for p in split[key] for r in records[p]]

        write_datalist(
            {
                "labeled": rows("labeled", True),
                "unlabeled": rows("unlabeled", False),
                "validation": rows("validation", True),
                "patients": split,
                "spacing": [1.0, 1.0, 1.0],
                "classes": ACDC_CLASSES,
                "label_names": ACDC_LABELS,
                "source": "ACDC",
            },
            tmp / "datalist.json",
        )
    return output
