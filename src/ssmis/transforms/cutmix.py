"""3D (or 2D) CutMix of two images in a batch, applied identically to images and pseudo-labels."""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["cutmix_box", "apply_cutmix"]


def cutmix_box(
    spatial_shape: Sequence[int], alpha: float = 4.0, beta: float = 4.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A ``[1, 1, *S]`` float box mask: λ ~ Beta(α, β), each side ``√(1 − λ)`` of the axis, at a random position.

    ``generator`` draws the position; λ comes from torch's global generator (``torch.distributions.Beta`` takes no
    generator), so seed that too for a reproducible box."""
    lam = float(torch.distributions.Beta(alpha, beta).sample())
    ratio = (1.0 - lam) ** 0.5
    mask = torch.zeros(1, 1, *spatial_shape)
    idx = []
    for size in spatial_shape:
        extent = max(1, min(size, int(round(ratio * size))))
        start = int(torch.randint(0, size - extent + 1, (1,), generator=generator))
        idx.append(slice(start, start + extent))
    mask[(slice(None), slice(None), *idx)] = 1.0
    return mask


def apply_cutmix(x: torch.Tensor, box: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """``x ⊙ (1 − box) + x[perm] ⊙ box`` for images/probabilities ``[B, C, *S]`` or class maps (``torch.where``)."""
    box = box.to(x.device)
    if x.is_floating_point():
        b = box.to(x.dtype)
        return x * (1 - b) + x[perm] * b
    return torch.where(box.bool(), x[perm], x)
