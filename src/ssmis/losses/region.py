"""Dice + cross-entropy restricted to a region, with one weight per region (BCP's mixed-target loss).

MONAI's ``DiceCELoss`` has no voxel mask, so the masked form is written here. MONAI's ``MaskedDiceLoss`` does not
fit either: it masks the class-index target before one-hot encoding it, so every voxel outside the mask counts as
background in the Dice, and it has no cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["masked_dice_ce", "region_weighted_dice_ce"]


def masked_dice_ce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, eps: float = 1e-5
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(Dice loss, CE) of ``logits`` ``[B, K, *S]`` against class map ``target`` ``[B, 1, *S]`` on ``mask`` voxels.

    Dice is over all classes (soft, batch-pooled), CE is the mean over masked voxels. Both are 0 on an empty mask.
    """
    m = mask.to(logits.dtype).expand(target.shape)
    ce = F.cross_entropy(logits, target[:, 0].long(), reduction="none").unsqueeze(1)
    ce = (ce * m).sum() / m.sum().clamp_min(eps)
    prob = torch.softmax(logits, 1)
    onehot = F.one_hot(target[:, 0].long(), logits.shape[1]).movedim(-1, 1).to(prob.dtype)
    dims = (0, *range(2, logits.ndim))
    inter = (prob * onehot * m).sum(dims)
    denom = ((prob + onehot) * m).sum(dims)
    dice = 1.0 - ((2 * inter + eps) / (denom + eps)).mean()
    return dice, ce


def region_weighted_dice_ce(
    logits: torch.Tensor,
    target_in: torch.Tensor,
    target_out: torch.Tensor,
    mask: torch.Tensor,
    weight_in: float,
    weight_out: float,
) -> torch.Tensor:
    """``(Dice + CE)/2`` of ``logits`` ``[B, K, *S]``, weighted ``weight_in`` on the ``mask`` region (``[1, 1, *S]``
    or ``[B, 1, *S]``; class map ``target_in`` ``[B, 1, *S]``) and ``weight_out`` outside it (``target_out``). In
    BCP one region holds ground truth (weight 1) and the other a pseudo-label (weight 0.5)."""
    mask = mask.expand(target_in.shape[0], 1, *target_in.shape[2:])
    d_in, c_in = masked_dice_ce(logits, target_in, mask)
    d_out, c_out = masked_dice_ce(logits, target_out, 1 - mask)
    return 0.5 * (weight_in * (d_in + c_in) + weight_out * (d_out + c_out))
