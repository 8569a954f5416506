"""``prepare-images``: a user's own NIfTI folders become a ``datalist.json`` (files are referenced, not copied)."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from .datalist import write_datalist
from .splits import split_cases
from ..utils.errors import DataError
from .output import check_output_dir
from ..transforms.check_label import check_label

__all__ = ["case_name", "prepare_images"]

_SUFFIXES = (".nii.gz", ".nii")


def case_name(path: Path) -> str | None:
    """The case name of a NIfTI file (its name without ``.nii``/``.nii.gz``), or None for other files."""
    for s in _SUFFIXES:
        if path.name.endswith(s):
            return path.name[: -len(s)]
    return None


def _scan(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: {what} folder not found")
    found = {n: p for p in sorted(folder.iterdir()) if (n := case_name(p)) is not None}
    if not found and what == "images":
        raise DataError(f"{folder}: no *.nii or *.nii.gz images found")
    return found


def _load(path: Path) -> nib.Nifti1Image:
    try:
        img = nib.load(str(path))
        img.shape  # noqa: B018 - touch the header
        return img
    except Exception as e:
        raise DataError(f"{path}: cannot read as NIfTI ({type(e).__name__}: {e})") from e


def _voxels(img: nib.Nifti1Image, path: Path) -> np.ndarray:
    try:
        return np.asanyarray(img.dataobj)
    except Exception as e:  # truncated gzip streams raise EOFError/OSError/zlib.error only when the data is read
        raise DataError(f"{path}: cannot read the voxel data ({type(e).__name__}: {e})") from e


def _check_image(path: Path) -> nib.Nifti1Image:
    """Load ``path`` with all its voxels (a truncated file fails here, not in training) and refuse NaN/inf."""
    img = _load(path)
    data = _voxels(img, path)
    if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
        raise DataError(f"{path}: image holds NaN or infinite values")
    img.uncache()
    return img


def prepare_images(
    images: str | os.PathLike,
    output: str | os.PathLike,
    labeled: int,
    labels: str | os.PathLike | None = None,
    val: int = 0,
    classes: int | None = None,
    progress: bool = True,
) -> Path:
    """Write ``output/datalist.json`` for the NIfTI files in ``images`` (and matching names in ``labels``).

    Images that have a label are split in name order: the first ``labeled`` labelled, the last ``val`` validation,
    and the rest join the images without a label as unlabelled. Every label is checked against its image (shape,
    integer values below ``classes``; ``classes`` defaults to the largest value found plus one).
    """
    if classes is not None and classes < 2:
        raise DataError(f"--classes {classes}: must be at least 2 (the background and one class), or left out")
    check_output_dir(output, {"--images": images, "--labels": labels})
    images = Path(images).absolute()
    imgs = _scan(images, "images")
    labs = _scan(Path(labels).absolute(), "labels") if labels is not None else {}
    orphans = sorted(set(labs) - set(imgs))
    if orphans:
        raise DataError(f"{labels}: labels without an image: {orphans[:5]}")
    with_label = [n for n in imgs if n in labs]
    if labeled + val > len(with_label) and labeled >= 0 and val >= 0:
        raise DataError(
            f"--labeled {labeled} plus --val {val} exceeds the {len(with_label)} images that have a label in {labels}"
        )
    split = split_cases(with_label, labeled, val)  # also refuses negative counts
    used = split["labeled"] + split["validation"]
    max_value = 0
    for name in tqdm(used, desc="checking labels", disable=not progress, unit="case"):
        img, lab = _check_image(imgs[name]), _load(labs[name])
        data = _voxels(lab, labs[name])
        check_label(data, img.shape[:3] if data.ndim == 3 else img.shape, classes or 256, str(labs[name]))
        max_value = max(max_value, int(data.max()))
    for name in tqdm([n for n in imgs if n not in used], desc="checking images", disable=not progress, unit="case"):
        _check_image(imgs[name])
    val_names = split["validation"]
    unl = [n for n in imgs if n not in split["labeled"] and n not in val_names]
    # the only file written: replace it alone (atomically), never the folder that holds it
    Path(output).mkdir(parents=True, exist_ok=True)
    write_datalist(
        {
            "labeled": [{"image": str(imgs[n]), "label": str(labs[n])} for n in split["labeled"]],
            "unlabeled": [{"image": str(imgs[n])} for n in unl],
            "validation": [{"image": str(imgs[n]), "label": str(labs[n])} for n in val_names],
            "classes": classes or max_value + 1,
        },
        Path(output) / "datalist.json",
    )
    return Path(output)
