"""Strategies: the per-iteration logic of a method, plugged into ``SemiSupervisedTrainer``.

A strategy receives the labelled batch (``image`` ``[B_l, C, *S]``, ``label`` ``[B_l, 1, *S]``) and the
unlabelled batch (``image`` ``[B_u, C, *S]``, or None when there is no unlabelled data) and returns a dict of
tensors holding the total ``"loss"`` and any named terms to log (``"loss/sup"``, ``"weight/unlabeled"``, …).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Strategy", "SupervisedStrategy", "MeanTeacherStrategy", "mean_entropy", "weight_value"]


def mean_entropy(prob: torch.Tensor) -> torch.Tensor:
    """Mean per-voxel entropy (nats) of class probabilities ``[B, K, *S]``: the pseudo-label uncertainty."""
    return -(prob * torch.log(prob.clamp_min(1e-8))).sum(1).mean()


def weight_value(weight: Any) -> float:
    """A weight given as a number or as an object with a ``value`` (e.g. ``ssmis.handlers.RampUpWeight``)."""
    return float(getattr(weight, "value", weight))


class Strategy:
    """Base class. Subclasses implement ``__call__`` and list the networks they train in ``networks``.

    With ``report_pseudo_labels`` set (by ``ssmis.handlers.PseudoLabelQuality``), a strategy also returns each
    pseudo-label it trains on as a class map ``[B, 1, *S]`` under ``"pseudo_label/<name>"``, on the grid that
    :meth:`align_reference` maps the unlabelled batch's grid to.
    """

    networks: Sequence[nn.Module] = ()
    report_pseudo_labels: bool = False

    def align_reference(self, reference: torch.Tensor) -> torch.Tensor:
        """A tensor ``[B, 1, *S]`` on the unlabelled batch's grid, on the grid of the reported pseudo-labels."""
        return reference

    def attach(self, engine: Any) -> None:
        """Called once by the engine; register event handlers here if the strategy needs any."""

    @staticmethod
    def forward(engine: Any, network: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """A trained network's forward pass ``[B, K, *S]``, through the engine's ``inferer`` (its ``train#inferer``,
        ``SimpleInferer`` by default); a plain call for an engine without one (a test's stand-in)."""
        inferer = getattr(engine, "inferer", None)
        return network(x) if inferer is None else inferer(x, network)

    def train(self) -> None:
        """Put the trained networks in training mode (teachers are left as they are)."""
        for net in self.networks:
            net.train()

    def __call__(
        self, engine: Any, labeled: dict[str, torch.Tensor], unlabeled: dict[str, torch.Tensor] | None
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class SupervisedStrategy(Strategy):
    """Labelled data only: ``loss = loss_function(network(image), label)``; the unlabelled batch is ignored."""

    def __init__(self, network: nn.Module, loss_function: Callable) -> None:
        self.network, self.loss_function = network, loss_function
        self.networks = (network,)

    def __call__(self, engine, labeled, unlabeled):
        loss = self.loss_function(self.forward(engine, self.network, labeled["image"]), labeled["label"])
        return {"loss": loss, "loss/sup": loss}


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
        tsa: Any = None,
    ) -> None:
        if consistency not in ("mse", "kl"):
            raise ValueError(f"consistency must be 'mse' or 'kl', got {consistency!r}")
        self.network, self.teacher, self.loss_function = network, teacher, loss_function
        self.consistency_weight = consistency_weight
        self.noise_std, self.noise_clip, self.consistency = noise_std, noise_clip, consistency
        self.tsa = tsa
        self.networks = (network,)

    def __call__(self, engine, labeled, unlabeled):
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
        if self.tsa is not None:
            targets = torch.cat([y.long(), t_prob.argmax(1, keepdim=True)])
            source = torch.zeros_like(targets, dtype=torch.bool)
            source[: x_l.shape[0]] = True
            out.update(self.tsa.loss(targets, source))
            loss = loss + self.tsa.beta * out["loss/tsa"]
        out["loss"] = loss
        return out
