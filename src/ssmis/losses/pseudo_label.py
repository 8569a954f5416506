"""The loss of a student against another network's soft pseudo-label, as co-training uses it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

__all__ = ["pseudo_label_loss"]


def pseudo_label_loss(logits: torch.Tensor, prob: torch.Tensor, confidence_weighted: bool = False) -> torch.Tensor:
    """CE (optionally weighted by the teacher's confidence) + Dice of ``logits`` against ``argmax(prob)``.

    Args:
        logits: student logits ``[B, K, *S]``.
        prob: teacher probabilities ``[B, K, *S]`` (no gradient).
    """
    target = prob.argmax(1, keepdim=True)
    # MONAI's DiceLoss: soft Dice over every class, pooled over the batch (the form masked_dice_ce takes on a full
    # mask); the cross-entropy is written out because MONAI's has no per-voxel weight for the confidence
    dice = DiceLoss(to_onehot_y=True, softmax=True, batch=True)(logits, target)
    ce = F.cross_entropy(logits, target[:, 0], reduction="none")
    if confidence_weighted:
        conf = prob.max(1).values
        return (ce * conf).sum() / conf.sum().clamp_min(1e-6) + dice
    return ce.mean() + dice
