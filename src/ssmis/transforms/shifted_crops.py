"""Shifted crops for dynamic pseudo-labels: crops around a fixed crop, and their predictions mapped back.

A *context* patch of size ``crop + 2·max_shift`` (per axis) holds the fixed crop at its centre. Shifted crops are
the same size as the fixed crop, displaced by integer offsets in ``[−max_shift, max_shift]``; with
``max_shift < crop`` every one overlaps the fixed crop. Everything is exact integer indexing on the voxel grid.
MONAI's crop transforms work on one item and do not map predictions back, so these are plain tensor functions.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["context_size", "sample_shifts", "crop_at", "map_back", "combine_fixed_dynamic"]


def context_size(crop: Sequence[int], max_shift: Sequence[int]) -> list[int]:
    """Size of the context patch holding a fixed crop and every crop shifted by at most ``max_shift``."""
    if len(crop) != len(max_shift):
        raise ValueError(f"crop {list(crop)} and max_shift {list(max_shift)} must have one entry per spatial axis")
    for c, m in zip(crop, max_shift):
        if not 0 <= m < c:
            raise ValueError(f"max_shift {list(max_shift)} must be >= 0 and < the crop size {list(crop)}, so every "
                             "shifted crop overlaps the fixed one")
    return [c + 2 * m for c, m in zip(crop, max_shift)]


def sample_shifts(
    n: int, max_shift: Sequence[int], generator: torch.Generator | None = None, nonzero: bool = True
) -> torch.Tensor:
    """``n`` random integer offsets ``[n, D]`` with ``|offset_d| <= max_shift_d``; ``nonzero`` excludes the zero shift
    (which would repeat the fixed crop) whenever some ``max_shift_d > 0``."""
    m = torch.as_tensor(list(max_shift))
    out = torch.empty(n, len(m), dtype=torch.long)
    for i in range(n):
        while True:
            s = torch.stack([torch.randint(-int(v), int(v) + 1, (1,), generator=generator)[0] for v in m])
            if not nonzero or bool(s.ne(0).any()) or int(m.sum()) == 0:
                break
        out[i] = s
    return out


def crop_at(context: torch.Tensor, offsets: torch.Tensor, crop: Sequence[int],
            max_shift: Sequence[int]) -> torch.Tensor:
    """Crops of size ``crop`` from a context batch ``[B, C, *context]``, shifted by each offset ``[n, D]``
    from the centred fixed crop. Returns ``[n·B, C, *crop]``, offset-major (all of batch for offset 0, then 1, …)."""
    out = []
    for off in offsets.tolist():
        idx = [slice(m + o, m + o + c) for m, o, c in zip(max_shift, off, crop)]
        out.append(context[(slice(None), slice(None), *idx)])
    return torch.cat(out)


def map_back(preds: torch.Tensor, offsets: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Place predictions of shifted crops into the fixed crop's coordinates and average where they overlap.

    Args:
        preds: ``[n·B, K, *crop]`` (offset-major, as from ``crop_at``), e.g. probabilities.
        offsets: ``[n, D]`` the offsets used.
        batch: B.

    Returns (mean ``[B, K, *crop]``, coverage ``[B, 1, *crop]`` = number of shifted crops covering each voxel);
    the mean is 0 where coverage is 0.
    """
    crop = preds.shape[2:]
    total = preds.new_zeros(batch, preds.shape[1], *crop)
    cover = preds.new_zeros(batch, 1, *crop)
    for i, off in enumerate(offsets.tolist()):
        dst, src = [], []
        for o, c in zip(off, crop):  # voxel v of the shifted crop is voxel v + o of the fixed crop
            dst.append(slice(max(0, o), min(c, c + o)))
            src.append(slice(max(0, -o), min(c, c - o)))
        p = preds[i * batch : (i + 1) * batch]
        total[(slice(None), slice(None), *dst)] += p[(slice(None), slice(None), *src)]
        cover[(slice(None), slice(None), *dst)] += 1
    return total / cover.clamp_min(1), cover


def combine_fixed_dynamic(fixed: torch.Tensor, temporary: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
    """COM ``[B, K, *crop]``: the temporary (mapped-back) prediction ``temporary`` ``[B, K, *crop]`` where
    ``coverage`` ``[B, 1, *crop]`` counts a shifted crop over the voxel, the ``fixed`` one ``[B, K, *crop]``
    elsewhere."""
    return torch.where(coverage > 0, temporary, fixed)
