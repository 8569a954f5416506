"""Bidirectional copy-paste (BCP): a cuboid of one image pasted into another, in both directions.

MONAI has no copy-paste between two batches with a shared mask, so it is written here on plain tensors.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["cuboid_mask", "bidirectional_copy_paste"]


def cuboid_mask(
    spatial_shape: Sequence[int],
    ratio: float = 2.0 / 3.0,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A ``[1, 1, *spatial_shape]`` float mask, 1 inside a cuboid (a square in 2D) at a random position.

    The cuboid spans ``round(ratio · size)`` voxels (at least 1, at most ``size``) along every axis (2/3 in BCP)
    and lies fully inside the volume; its position is drawn from ``generator`` (torch's global one without). BCP's
    mask and CUT's CutMix box (``cutmix_box``, with a random ``ratio``) are both this.
    """
    mask = torch.zeros(1, 1, *spatial_shape, device=device)
    idx = []
    for size in spatial_shape:
        extent = max(1, min(size, int(round(ratio * size))))
        start = int(torch.randint(0, size - extent + 1, (1,), generator=generator))
        idx.append(slice(start, start + extent))
    mask[(slice(None), slice(None), *idx)] = 1.0
    return mask


def bidirectional_copy_paste(
    labeled: torch.Tensor, unlabeled: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x_in = x_l ⊙ M + x_u ⊙ (1 − M)`` and ``x_out = x_u ⊙ M + x_l ⊙ (1 − M)``.

    Args:
        labeled, unlabeled: ``[B, C, *S]`` images (or ``[B, 1, *S]`` label maps: the same formula mixes a ground
            truth with a pseudo-label).
        mask: ``[1, 1, *S]`` or ``[B, 1, *S]``, values in {0, 1}.
    """
    if labeled.shape != unlabeled.shape:
        raise ValueError(f"labelled {tuple(labeled.shape)} and unlabelled {tuple(unlabeled.shape)} shapes differ")
    m = mask.to(labeled.dtype) if labeled.is_floating_point() else mask.bool()
    if labeled.is_floating_point():
        return labeled * m + unlabeled * (1 - m), unlabeled * m + labeled * (1 - m)
    return torch.where(m, labeled, unlabeled), torch.where(m, unlabeled, labeled)
