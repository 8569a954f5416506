"""``demo``: deterministic synthetic volumes (2D or 3D, binary or multi-class) for the demo and the tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .datalist import write_datalist
from .splits import split_cases
from ..utils.errors import DataError
from .nifti import save_image, save_label, spacing_affine
from .output import check_output_dir, replace_output_dir

__all__ = ["synthetic_case", "make_synthetic_dataset"]


def synthetic_case(
    rng: np.random.Generator, shape: tuple[int, ...], classes: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """One image/label pair: a noisy background with ``classes - 1`` nested, randomly placed ellipsoids.

    Class c (1 ≤ c < classes) is an ellipsoid inside the one of class c−1, brighter by one unit, so every
    class touches the one below it, as anatomy does. Returns (image float32, label uint8), both of ``shape``.
    """
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    label = np.zeros(shape, np.uint8)
    image = np.zeros(shape, np.float32)
    centre = np.array([rng.uniform(0.35, 0.65) * s for s in shape], np.float32)
    radii = np.array([rng.uniform(0.18, 0.28) * s for s in shape], np.float32)
    for c in range(1, classes):
        inside = (((grid - centre.reshape(-1, *[1] * len(shape))) / radii.reshape(-1, *[1] * len(shape))) ** 2).sum(0)
        mask = inside <= 1.0
        label[mask] = c
        image[mask] += 1.0
        centre = centre + rng.uniform(-0.25, 0.25, len(shape)).astype(np.float32) * radii
        radii = radii * rng.uniform(0.45, 0.6)
    bias = sum(rng.uniform(-0.3, 0.3) * (g / s) for g, s in zip(grid, shape))
    image = image + bias + rng.normal(0.0, 0.35, shape).astype(np.float32)
    image = (image - image.mean()) / image.std()
    return image.astype(np.float32), label


def make_synthetic_dataset(
    output: str | os.PathLike,
    dims: int = 3,
    classes: int = 2,
    cases: int = 12,
    labeled: int = 4,
    val: int = 2,
    size: int | None = None,
    spacing: float = 1.25,
    seed: int = 0,
) -> Path:
    """Write ``cases`` synthetic pairs to ``output/{imagesTr,labelsTr}`` plus ``datalist.json`` (deterministic).

    The default size is 64×64×48 in 3D (one CPU-protocol patch of 56×56×40 fits) and 96×96 in 2D.
    """
    if dims not in (2, 3):
        raise DataError(f"--dims must be 2 or 3, got {dims}")
    if classes < 2:
        raise DataError(f"--classes must be at least 2 (background and one class), got {classes}")
    check_output_dir(output)
    shape = ((size,) * 2 + (max(size * 3 // 4, 8),) if size else (64, 64, 48)) if dims == 3 else ((size or 96),) * 2
    ids = [f"case_{i:03d}" for i in range(cases)]
    split = split_cases(ids, labeled, val)
    rng = np.random.default_rng(seed)
    with replace_output_dir(output) as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        affine = spacing_affine(spacing, dims)
        for case in ids:
            image, label = synthetic_case(rng, shape, classes)
            save_image(image, affine, tmp / "imagesTr" / f"{case}.nii.gz")
            save_label(label, affine, tmp / "labelsTr" / f"{case}.nii.gz")
        write_datalist(
            {
                "labeled": [{"image": f"imagesTr/{c}.nii.gz", "label": f"labelsTr/{c}.nii.gz"}
                            for c in split["labeled"]],
                # their labels too, for diagnostics only (pseudo-label quality); no loss reads them
                "unlabeled": [{"image": f"imagesTr/{c}.nii.gz", "reference_label": f"labelsTr/{c}.nii.gz"}
                              for c in split["unlabeled"]],
                "validation": [
                    {"image": f"imagesTr/{c}.nii.gz", "label": f"labelsTr/{c}.nii.gz"} for c in split["validation"]
                ],
                "spacing": [spacing] * dims,
                "classes": classes,
                "source": f"synthetic-{dims}d",
            },
            tmp / "datalist.json",
        )
    return Path(output)
