"""TSA as a plug-in for any teacher–student strategy: statistics, the λ ramp, and the weighted loss."""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events

from ..handlers.rampup import RampUpWeight
from ..networks import ClassifierFeatures
from .loss import TSALoss
from .memory import ClassFeatureStatistics

__all__ = ["TransferableSemanticAugmentation"]


class TransferableSemanticAugmentation(torch.nn.Module):
    """Transferable Semantic Augmentation for the student of a teacher–student method.

    Any teacher–student strategy takes it as its ``tsa`` (``ssmis.engines.Strategy``): it calls
    ``Strategy.add_tsa`` right after the student's forward pass, with the class map ``[B, 1, *S]`` of that pass
    (ground truth where ``source_mask`` ``[B, 1, *S]`` is true, teacher pseudo-labels elsewhere), which adds
    ``beta · L_tsa`` (``MeanTeacherStrategy`` and ``BCPStrategy`` do); ``Strategy.attach`` attaches the λ ramp.
    This object then

    1. reads the features feeding the student's final 1×1 convolution (``ClassifierFeatures``),
    2. updates the memory module (``ClassFeatureStatistics``): source statistics from the ground-truth voxels,
       target statistics from the pseudo-labelled ones,
    3. returns ``L_tsa`` (``TSALoss``) on the ground-truth voxels, augmented towards the target statistics
       (``Δμ = μ_t − μ_s``, ``Σ_t``); with ``bidirectional`` also on the pseudo-labelled voxels towards the
       source statistics (``μ_s − μ_t``, ``Σ_s``), averaged with the first,

    plus diagnostics: the condition number of each ``Σ_t^c``. λ is 0 through iteration ``ramp_start + 1`` (ignite
    counts iterations from 1), then grows by ``lam0 / (ramp_iterations − ramp_start)`` per iteration, so a run of
    ``ramp_iterations`` iterations ends one step short of ``lam0``; ``attach(engine)`` updates it each iteration.

    Args:
        network: the student.
        num_classes: C.
        beta: loss weight β (0.4).
        lam0: final λ (0.25).
        ramp_iterations: the end of the ramp, counted from the start of the run (the run's length).
        ramp_start: iterations before the ramp starts; BCP's self-training passes its pre-training length, so λ is
            0 at its first TSA iteration rather than part-way up. Clamped to ``ramp_iterations`` (λ then stays 0,
            as in a run shorter than its pre-training).
        estimator, momentum, max_per_class: of ``ClassFeatureStatistics``.
        bidirectional: also augment the pseudo-labelled voxels in the reverse direction.
    """

    def __init__(self, network: torch.nn.Module, num_classes: int, beta: float = 0.4, lam0: float = 0.25,
                 ramp_iterations: int = 1000, estimator: str = "count", momentum: float = 0.1,
                 max_per_class: int = 4096, bidirectional: bool = False, ramp_start: int = 0) -> None:
        super().__init__()
        self.tap = ClassifierFeatures(network)
        feature_dim = self.tap.weight.shape[1]
        self.statistics = ClassFeatureStatistics(num_classes, feature_dim, estimator, momentum, max_per_class)
        self.beta, self.lam0, self.ramp_iterations = float(beta), float(lam0), int(ramp_iterations)
        if int(ramp_start) < 0:
            raise ValueError(f"ramp_start must be >= 0, got {ramp_start}")
        self.ramp_start = min(int(ramp_start), max(self.ramp_iterations, 0))
        self.bidirectional = bidirectional
        # λ: 0 until ramp_start, then linear to lam0 at ramp_iterations (engine.state.tsa_lambda)
        self.ramp = RampUpWeight(self.lam0, self.ramp_iterations - self.ramp_start, kind="linear", name="tsa_lambda",
                                 delay=self.ramp_start)
        self.loss_function = TSALoss()

    @property
    def lam(self) -> float:
        return self.ramp.value

    def attach(self, engine: Engine) -> None:
        """Update λ at every iteration of ``engine``. The strategy that holds TSA attaches it
        (``Strategy.attach``); a config that also lists it among the trainer's handlers attaches nothing twice."""
        if not engine.has_event_handler(self.ramp, Events.ITERATION_STARTED):
            self.ramp.attach(engine)

    def loss(self, targets: torch.Tensor, source_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"loss/tsa", "tsa/lambda", "tsa/cond_class<c>"}`` for the student's last forward pass.

        Args:
            targets: class per voxel ``[B, 1, *S]`` (ground truth or pseudo-label).
            source_mask: ``[B, 1, *S]`` bool, true on ground-truth voxels.
        """
        feats = self.tap.features
        if feats is None:
            raise RuntimeError("TSA found no student features: call loss() right after the student's forward pass")
        if feats.shape[0] != targets.shape[0] or feats.shape[2:] != targets.shape[2:]:
            raise ValueError(f"student features {tuple(feats.shape)} do not match targets {tuple(targets.shape)}")
        a = feats.float().movedim(1, -1).reshape(-1, feats.shape[1])
        y = targets.reshape(-1).long()
        src = source_mask.reshape(-1).bool()
        stats = self.statistics
        stats.update(a[src], y[src], a[~src], y[~src])
        w, b = self.tap.weight.float(), self.tap.bias.float()
        cov_t = stats.target.cov.to(a)
        l_tsa = self.loss_function(a[src], y[src], w, b, stats.mean_shift().to(a), cov_t, self.lam)
        if self.bidirectional and bool((~src).any()):
            l_rev = self.loss_function(a[~src], y[~src], w, b, stats.mean_shift(reverse=True).to(a),
                                       stats.source.cov.to(a), self.lam)
            l_tsa = 0.5 * (l_tsa + l_rev)
        out = {"loss/tsa": l_tsa, "tsa/lambda": torch.tensor(self.lam)}
        for c, v in enumerate(stats.condition_numbers()):
            out[f"tsa/cond_class{c}"] = v.float()
        return out
