"""Batch-level transforms of the semi-supervised methods (tensor ops on ``[B, C, *S]`` batches), a label check, and
an image loader whose errors name the file."""

from .check_label import CheckLabeld, check_label
from .copy_paste import bidirectional_copy_paste, cuboid_mask
from .cutmix import apply_cutmix, cutmix_box, sample_beta
from .load_image import NamedLoadImage, NamedLoadImaged
from .shifted_crops import combine_fixed_dynamic, context_size, crop_at, map_back, sample_shifts

__all__ = [
    "CheckLabeld",
    "check_label",
    "NamedLoadImage",
    "NamedLoadImaged",
    "apply_cutmix",
    "bidirectional_copy_paste",
    "combine_fixed_dynamic",
    "context_size",
    "crop_at",
    "cuboid_mask",
    "cutmix_box",
    "map_back",
    "sample_beta",
    "sample_shifts",
]
