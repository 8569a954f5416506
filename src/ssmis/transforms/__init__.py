"""Batch-level transforms of the semi-supervised methods (tensor ops on ``[B, C, *S]`` batches)."""

from .copy_paste import bidirectional_copy_paste, cuboid_mask

__all__ = ["bidirectional_copy_paste", "cuboid_mask"]
