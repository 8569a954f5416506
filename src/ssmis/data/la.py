"""``prepare-la``: the UA-MT layout of the LA dataset (``volumes/<id>/mri_norm2.h5`` + ``train.list``) to NIfTI."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .datalist import write_datalist
from .splits import read_id_list, split_cases
from ..utils.errors import DataError
from .h5 import read_h5_volume
from .output import check_output_dir, replace_output_dir
from ..transforms.check_label import check_label
from .nifti import save_image, save_label, spacing_affine

__all__ = ["LA_SPACING", "read_la_case", "resample", "prepare_la"]

LA_SPACING = 0.625  # mm, isotropic; the h5 files carry no geometry


def read_la_case(path: str | os.PathLike, classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Read ``image`` (float32, H×W×D) and ``label`` (uint8, H×W×D) from one ``mri_norm2.h5``, checking both."""
    image, label = read_h5_volume(path)
    check_label(label, image.shape, classes, str(path))
    return image, label.astype(np.uint8)


def resample(
    image: np.ndarray, label: np.ndarray, spacing: float, target: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample an isotropic pair to ``target`` mm: image linear, label nearest. Returns (image, label, affine)."""
    affine = spacing_affine(spacing)
    if np.isclose(spacing, target):
        return image, label, affine
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    img = MetaTensor(image[None], affine=affine)
    lab = MetaTensor(label[None].astype(np.float32), affine=affine)
    img_r = Spacing(pixdim=(target,) * 3, mode="bilinear", padding_mode="border")(img)
    lab_r = Spacing(pixdim=(target,) * 3, mode="nearest", padding_mode="zeros")(lab)
    return (
        img_r[0].numpy().astype(np.float32),
        lab_r[0].numpy().round().astype(np.uint8),
        np.asarray(img_r.affine, dtype=float),
    )


#: the voxel sizes prepare-la accepts (mm): finer than the 0.625 mm scans only up to 4x per axis (64x the voxels),
#: and no coarser than a 40-voxel LA (about 100 mm across)
MIN_SPACING_MM, MAX_SPACING_MM = 0.15, 2.5


def prepare_la(
    source: str | os.PathLike,
    output: str | os.PathLike,
    spacing: float = LA_SPACING,
    labeled: int = 8,
    val: int = 8,
    classes: int = 2,
    progress: bool = True,
) -> Path:
    """Convert the LA training volumes under ``source`` to ``output/{imagesTr,labelsTr}`` and ``datalist.json``.

    The whole output folder is written to a temporary sibling and renamed at the end, so bad input leaves an
    existing ``output`` untouched and never leaves a partial one.
    """
    if not MIN_SPACING_MM <= spacing <= MAX_SPACING_MM:  # also refuses NaN and infinity
        raise DataError(f"--spacing {spacing}: must be a voxel size from {MIN_SPACING_MM} to {MAX_SPACING_MM} mm "
                        "(LA is scanned at 0.625 mm)")
    if classes < 2:
        raise DataError(f"--classes {classes}: must be at least 2 (the background and one class)")
    check_output_dir(output, {"--source": source})
    source = Path(source)
    ids = read_id_list(source / "train.list", "cases", "UA-MT layout: train.list and volumes/<id>/mri_norm2.h5")
    split = split_cases(ids, labeled, val)
    output = Path(output)
    with replace_output_dir(output) as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        for case in tqdm(ids, desc="prepare-la", disable=not progress, unit="case"):
            image, label = read_la_case(source / "volumes" / case / "mri_norm2.h5", classes)
            image, label, affine = resample(image, label, LA_SPACING, spacing)
            save_image(image, affine, tmp / "imagesTr" / f"{case}.nii.gz")
            save_label(label, affine, tmp / "labelsTr" / f"{case}.nii.gz")

        def rec(case: str, with_label: bool) -> dict:
            r = {"image": f"imagesTr/{case}.nii.gz"}
            # an unlabelled case's label, for diagnostics only (pseudo-label quality); no loss reads it
            r["label" if with_label else "reference_label"] = f"labelsTr/{case}.nii.gz"
            return r

        write_datalist(
            {
                "labeled": [rec(c, True) for c in split["labeled"]],
                "unlabeled": [rec(c, False) for c in split["unlabeled"]],
                "validation": [rec(c, True) for c in split["validation"]],
                "spacing": [float(spacing)] * 3,
                "classes": classes,
                "source": "LA",
            },
            tmp / "datalist.json",
        )
    return output
