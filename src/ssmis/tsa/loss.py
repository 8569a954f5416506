"""Transferable Semantic Augmentation: the closed-form upper bound of the expected cross-entropy.

Augmenting the classifier input ``a_i`` of a voxel of class ``y`` with ``δ ~ N(λ·Δμ^y, λ·Σ^y)`` and averaging
the cross-entropy over infinitely many draws is bounded above (Jensen) by the cross-entropy of augmented logits

    z̃_ij = w_jᵀa_i + b_j + λ·(w_j − w_y)ᵀΔμ^y + (λ/2)·(w_j − w_y)ᵀΣ^y(w_j − w_y),

so the loss needs no sampling. Not in MONAI: no MONAI loss augments features with class statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

__all__ = ["TSALoss", "tsa_logit_offsets"]


def tsa_logit_offsets(
    weight: torch.Tensor, mean_shift: torch.Tensor, covariance: torch.Tensor, lam: float
) -> torch.Tensor:
    """The per-class logit offsets ``O[y, j] = λ(w_j−w_y)ᵀΔμ^y + (λ/2)(w_j−w_y)ᵀΣ^y(w_j−w_y)``.

    Args:
        weight: classifier weight ``[C, A]``.
        mean_shift: ``Δμ`` per class ``[C, A]``.
        covariance: ``Σ`` per class ``[C, A, A]``.
        lam: augmentation strength λ.

    Returns ``[C, C]`` (row: true class y, column: logit j). Cost O(C²·A²), independent of the voxel count.
    """
    diff = weight.unsqueeze(0) - weight.unsqueeze(1)  # [y, j, A]: w_j − w_y
    shift = torch.einsum("yja,ya->yj", diff, mean_shift)
    quad = torch.einsum("yja,yab,yjb->yj", diff, covariance, diff)
    return lam * shift + 0.5 * lam * quad


class TSALoss(_Loss):
    """Mean over voxels of the cross-entropy of TSA-augmented logits (the closed-form upper bound).

    ``TSALoss()(features, labels, weight, bias, mean_shift, covariance, lam) -> scalar``

    Args (of ``forward``):
        features: ``[N, A]`` classifier-input features of N voxels.
        labels: ``[N]`` class index of each voxel.
        weight: ``[C, A]`` and bias ``[C]`` of the final 1×1 convolution.
        mean_shift: ``[C, A]``, ``μ_t − μ_s`` per class.
        covariance: ``[C, A, A]``, ``Σ_t`` per class.
        lam: augmentation strength λ (0 gives plain cross-entropy).

    Cost O(N·C·A + C²·A²): the quadratic forms are per class, never per voxel.
    """

    def forward(  # type: ignore[override]
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        mean_shift: torch.Tensor,
        covariance: torch.Tensor,
        lam: float,
    ) -> torch.Tensor:
        if features.ndim != 2 or labels.shape != features.shape[:1]:
            raise ValueError(f"features must be [N, A] and labels [N]; got {tuple(features.shape)} and "
                             f"{tuple(labels.shape)}")
        c, a = weight.shape
        if features.shape[1] != a or mean_shift.shape != (c, a) or covariance.shape != (c, a, a):
            raise ValueError(f"shape mismatch: features {tuple(features.shape)}, weight {tuple(weight.shape)}, "
                             f"mean_shift {tuple(mean_shift.shape)}, covariance {tuple(covariance.shape)}")
        if features.shape[0] == 0:
            return features.sum() * 0.0
        logits = features @ weight.t() + bias
        labels = labels.long()
        offsets = tsa_logit_offsets(weight, mean_shift.to(weight), covariance.to(weight), float(lam))
        return F.cross_entropy(logits + offsets[labels], labels)
