"""The classic mean teacher: a student trained on a ramped consistency with its EMA teacher."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..handlers.rampup import weight_value
from ..metrics.uncertainty import mean_entropy
from .strategy import Strategy

if TYPE_CHECKING:
    from ..tsa import TransferableSemanticAugmentation

__all__ = ["MeanTeacherStrategy"]


class MeanTeacherStrategy(Strategy):
    """Classic mean teacher: supervised loss plus a ramped consistency with an EMA teacher.

    The student sees the labelled and unlabelled images in one batch; the teacher (an EMA of the student, e.g.
    ``ignite.handlers.EMAHandler(...).ema_model``) sees the unlabelled images with clipped Gaussian noise.
    ``loss = sup + w(t) * consistency``, where consistency is the mean squared error between the two softmax
    outputs (``"mse"``, default) or the KL divergence of the student from the teacher (``"kl"``).

    Args:
        network: the student, logits ``[B, K, *S]``.
        teacher: the teacher, same architecture (no gradient flows into it).
        loss_function: supervised loss on labelled logits and labels (e.g. ``DiceCELoss``).
        consistency_weight: a number or an object with ``.value`` (``RampUpWeight``).
        noise_std, noise_clip: teacher input noise ``clip(N(0, std²), -clip, clip)``.
        consistency: ``"mse"`` or ``"kl"``.
        tsa: optional ``ssmis.tsa.TransferableSemanticAugmentation`` on the student: labelled voxels (ground
            truth) are augmented towards the statistics of the unlabelled ones (teacher pseudo-labels).
    """

    def __init__(
        self,
        network: nn.Module,
        teacher: nn.Module,
        loss_function: Callable,
        consistency_weight: Any = 0.1,
        noise_std: float = 0.1,
        noise_clip: float = 0.2,
        consistency: str = "mse",
        tsa: TransferableSemanticAugmentation | None = None,
    ) -> None:
        if consistency not in ("mse", "kl"):
            raise ValueError(f"consistency must be 'mse' or 'kl', got {consistency!r}")
        self.network, self.teacher, self.loss_function = network, teacher, loss_function
        self.consistency_weight = consistency_weight
        self.noise_std, self.noise_clip, self.consistency = noise_std, noise_clip, consistency
        self.tsa = tsa
        self.networks = (network,)

    def __call__(self, engine: Any, labeled: dict[str, torch.Tensor], unlabeled: dict[str, torch.Tensor] | None
                 ) -> dict[str, torch.Tensor]:
        """The loss and its logged terms for a labelled batch (``image`` ``[B_l, C, *S]``, ``label``
        ``[B_l, 1, *S]``) and an unlabelled one (``image`` ``[B_u, C, *S]``; None: the supervised term alone)."""
        x_l, y = labeled["image"], labeled["label"]
        if unlabeled is None:
            sup = self.loss_function(self.forward(engine, self.network, x_l), y)
            return {"loss": sup, "loss/sup": sup}
        x_u = unlabeled["image"]
        logits = self.forward(engine, self.network, torch.cat([x_l, x_u]))
        sup = self.loss_function(logits[: x_l.shape[0]], y)
        with torch.no_grad():
            noise = torch.clamp(torch.randn_like(x_u) * self.noise_std, -self.noise_clip, self.noise_clip)
            t_prob = torch.softmax(self.teacher(x_u + noise).float(), 1)
        s_logits = logits[x_l.shape[0]:].float()
        if self.consistency == "mse":
            cons = F.mse_loss(torch.softmax(s_logits, 1), t_prob)
        else:
            cons = F.kl_div(torch.log_softmax(s_logits, 1), t_prob, reduction="batchmean") / s_logits[0, 0].numel()
        w = weight_value(self.consistency_weight)
        out = {"loss/sup": sup, "loss/consistency": cons, "weight/unlabeled": torch.tensor(w),
               "pseudo/entropy": mean_entropy(t_prob)}
        if self.report_pseudo_labels:
            out["pseudo_label/teacher"] = t_prob.argmax(1, keepdim=True)
        loss = sup + w * cons
        if self.tsa is not None:  # ground truth on the labelled images, the teacher's pseudo-labels on the others
            targets = torch.cat([y.long(), t_prob.argmax(1, keepdim=True)])
            source = torch.zeros_like(targets, dtype=torch.bool)
            source[: x_l.shape[0]] = True
            loss = self.add_tsa(out, loss, targets, source)
        out["loss"] = loss
        return out
