"""Writing prepared volumes as NIfTI, and the checks every image/label pair passes first."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np


__all__ = ["spacing_affine", "save_image", "save_label", "LOSSLESS_ATOL"]

LOSSLESS_ATOL = 1e-5


def spacing_affine(spacing: float | tuple[float, ...], ndim: int = 3) -> np.ndarray:
    """A 4×4 RAS affine with the given voxel spacing in mm and the origin at zero."""
    sp = np.broadcast_to(np.asarray(spacing, dtype=float), (ndim,))
    aff = np.eye(4)
    aff[range(ndim), range(ndim)] = sp
    return aff


def _uint8_lattice(image: np.ndarray) -> tuple[np.ndarray, float, float] | None:
    """If ``image`` holds at most 256 evenly spaced values, return (codes, slope, intercept) that reproduce it."""
    values = np.unique(image)
    if values.size > 256:
        return None
    lo = float(values[0])
    if values.size == 1:
        return np.zeros(image.shape, np.uint8), 1.0, lo
    values = values.astype(np.float64)
    span = float(values[-1] - lo)
    # float32 rounding makes the gaps between neighbouring values uneven: derive the step from the whole span
    slope = span / max(1, round(span / float(np.diff(values).min())))
    codes = np.rint((image.astype(np.float64) - lo) / slope)
    if codes.max() > 255:
        return None
    # nibabel stores slope and intercept as float32: check the round trip with the stored precision
    slope32, lo32 = float(np.float32(slope)), float(np.float32(lo))
    if np.abs(codes * slope32 + lo32 - image).max() > LOSSLESS_ATOL:
        return None
    return codes.astype(np.uint8), slope32, lo32


def save_image(image: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> Path:
    """Save an intensity volume: as uint8 with NIfTI slope/intercept when that is lossless, else float32."""
    path = Path(path)
    lattice = _uint8_lattice(image)
    if lattice is None:
        img = nib.Nifti1Image(image.astype(np.float32), affine)
        img.header.set_data_dtype(np.float32)
    else:
        codes, slope, inter = lattice
        img = nib.Nifti1Image(codes, affine)
        img.header.set_data_dtype(np.uint8)
        img.header.set_slope_inter(slope, inter)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)
    return path


def save_label(label: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> Path:
    """Save a label volume as uint8."""
    path = Path(path)
    img = nib.Nifti1Image(np.asarray(label).astype(np.uint8), affine)
    img.header.set_data_dtype(np.uint8)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)
    return path
