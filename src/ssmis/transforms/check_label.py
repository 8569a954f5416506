"""A label that does not fit its image or the classes is refused, naming the file: ``check_label`` on arrays (data
preparation) and the ``CheckLabeld`` transform (training)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from ..utils.errors import DataError

__all__ = ["CheckLabeld", "check_label"]


def check_label(label: np.ndarray, image_shape: tuple[int, ...], classes: int, name: str) -> None:
    """Raise ``DataError`` naming ``name`` if ``label`` does not match ``image_shape`` or holds values >= classes."""
    if tuple(label.shape) != tuple(image_shape):
        raise DataError(f"{name}: label shape {tuple(label.shape)} does not match image shape {tuple(image_shape)}")
    if not np.all(np.isfinite(label)) or np.any(label != np.rint(label)):
        raise DataError(f"{name}: label holds non-integer values")
    values = np.unique(label)
    bad = values[(values < 0) | (values >= classes)]
    if bad.size:
        raise DataError(
            f"{name}: label values {bad.tolist()[:10]} are outside the {classes} declared classes 0..{classes - 1}"
        )


def _source(x: Any, key: Hashable) -> str:
    meta = getattr(x, "meta", None) or {}
    return str(meta.get("filename_or_obj") or f"the {key!r} entry")


class CheckLabeld(MapTransform):
    """Check each label ``[1, *S]`` against the image ``[C, *S]`` under ``image_key``: same spatial shape, and
    integer values in ``0 … num_classes − 1``; otherwise raise ``DataError`` naming the label's file.

    MONAI's losses and metrics would fail later on such a label with an index error that names no file (or, in
    ``MeanDice``, ignore the extra values), so this goes right after loading, before any cast or resampling.
    """

    def __init__(self, keys: KeysCollection, num_classes: int, image_key: str = "image",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.num_classes, self.image_key = int(num_classes), image_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d[self.image_key]
        for key in self.key_iterator(d):
            label = d[key]
            name = _source(label, key)
            arr = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
            if arr.ndim == image.ndim and arr.shape[0] == 1:
                arr = arr[0]  # channel-first, one channel
            check_label(arr, tuple(image.shape[1:]), self.num_classes, name)
        return d
