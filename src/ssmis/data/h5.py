"""Reading the image/label pairs that the semi-supervised literature distributes as HDF5 files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..utils.errors import DataError

__all__ = ["read_h5_volume"]


def read_h5_volume(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``image`` (float32) and ``label`` of one HDF5 file, both 3D; a missing, unreadable, incomplete, non-3D or
    non-finite file raises :class:`DataError` naming it. The label's values are the caller's to check."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with h5py.File(path, "r") as f:
            for key in ("image", "label"):
                if key not in f:
                    raise DataError(f"{path}: missing the {key!r} dataset (it has {sorted(f.keys())})")
            image = np.asarray(f["image"][()], dtype=np.float32)
            label = np.asarray(f["label"][()])
    except DataError:
        raise
    except Exception as e:  # h5py raises OSError/KeyError/RuntimeError for corrupt or truncated files
        raise DataError(f"{path}: cannot read as HDF5 ({type(e).__name__}: {e})") from e
    if image.ndim != 3:
        raise DataError(f"{path}: image has {image.ndim} dimensions, expected 3")
    if 0 in image.shape:
        raise DataError(f"{path}: image of shape {list(image.shape)} is empty")
    if not np.all(np.isfinite(image)):
        raise DataError(f"{path}: image holds NaN or infinite values")
    return image, label
