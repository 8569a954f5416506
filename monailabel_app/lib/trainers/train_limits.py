"""How much one training request may ask of the server: iterations, batch and patch sizes, and the other numbers a
client sets, each with a ceiling the server's operator chooses (``--conf``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict

from lib.conf_values import positive_number

__all__ = ["TrainLimits"]


@dataclass(frozen=True)
class TrainLimits:
    """Args:
        max_iterations: the most training iterations one request may ask for (``--conf max_train_iterations``;
            default 100,000: three times the longest published recipe, ACDC's 30,000).
        max_batch_size: the most images per batch (``--conf max_batch_size``; default 64).
        max_batch_voxels: the most voxels of one batch, ``batch_size × prod(patch_size)`` (``--conf
            max_batch_voxels``; default 512³, the upload limit's default).
    """

    max_iterations: int = 100_000
    max_batch_size: int = 64
    max_batch_voxels: int = 512 ** 3

    @classmethod
    def from_conf(cls, conf: Dict[str, Any]) -> "TrainLimits":
        """The limits from ``--conf``; a value that is not a positive integer names its key."""
        values = {}
        for key, field in (("max_train_iterations", "max_iterations"), ("max_batch_size", "max_batch_size"),
                           ("max_batch_voxels", "max_batch_voxels")):
            value = positive_number(conf, key, integer=True)
            if value is not None:
                values[field] = int(value)
        return cls(**values)

    def check(self, settings: Dict[str, Any], batch_size: int, patch_size: Any) -> None:
        """``ValueError`` naming the first of ``settings`` (a parsed train request) above its ceiling or outside
        its range; ``batch_size`` and ``patch_size`` are the run's, the request's or else the bundle's."""
        n = settings["num_iterations"]
        if n > self.max_iterations:
            raise ValueError(f"train request: num_iterations={n} is above this server's limit of "
                             f"{self.max_iterations:,} (--conf max_train_iterations)")
        if not 0 <= settings["seed"] < 2 ** 32:
            raise ValueError(f"train request: seed={settings['seed']} must lie in [0, 2^32)")
        lr = settings.get("learning_rate")
        if lr is not None and not (math.isfinite(lr) and 0 < lr <= 10):
            raise ValueError(f"train request: learning_rate={lr} must lie in (0, 10]")
        if batch_size > self.max_batch_size:
            raise ValueError(f"train request: batch_size={batch_size} is above this server's limit of "
                             f"{self.max_batch_size} (--conf max_batch_size)")
        voxels = batch_size * math.prod(int(v) for v in (patch_size or [1]))
        if voxels > self.max_batch_voxels:
            raise ValueError(f"train request: batch_size {batch_size} x patch_size {list(patch_size)} is "
                             f"{voxels:,} voxels a batch, above this server's limit of {self.max_batch_voxels:,} "
                             "(--conf max_batch_voxels)")
