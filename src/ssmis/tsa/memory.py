"""Class-conditional feature statistics (TSA's memory module), updated online and saved with checkpoints."""

from __future__ import annotations

import torch

from ..utils.distributed import get_world_size

__all__ = ["ClassFeatureStatistics", "OnlineClassStatistics"]


class OnlineClassStatistics(torch.nn.Module):
    """Per-class mean ``[C, A]`` and covariance ``[C, A, A]`` of features, estimated online.

    Args:
        num_classes: C.
        feature_dim: A.
        estimator: ``"count"`` (default): the count-weighted pooled estimate, so after any sequence of batches
            the mean and (population) covariance equal those of every voxel seen so far; ``"ema"``: exponential
            moving average with ``momentum`` (a class's first batch initialises it).
        momentum: EMA weight of the new batch.
        with_covariance: also track covariances.
        sync_distributed: when ``torch.distributed`` is initialised with more than one process, sum each batch's
            per-class counts, sums and scatter over all processes before folding them in, so every process holds
            the statistics of the union of their batches (the same as one process seeing all of them). Every
            process must then call ``update`` the same number of times.

    Buffers (saved in ``state_dict``): ``mean``, ``cov``, ``count`` ``[C]``. They move to the device of the
    features on the first ``update`` from another device, so the module need not be placed by hand.
    """

    def __init__(self, num_classes: int, feature_dim: int, estimator: str = "count", momentum: float = 0.1,
                 with_covariance: bool = True, sync_distributed: bool = True) -> None:
        super().__init__()
        if estimator not in ("count", "ema"):
            raise ValueError(f"estimator must be 'count' or 'ema', got {estimator!r}")
        self.estimator, self.momentum, self.with_covariance = estimator, float(momentum), with_covariance
        self.sync_distributed = bool(sync_distributed)
        self.register_buffer("mean", torch.zeros(num_classes, feature_dim, dtype=torch.float64))
        self.register_buffer("cov", torch.zeros(num_classes, feature_dim, feature_dim, dtype=torch.float64))
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.float64))

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Fold in ``features`` ``[N, A]`` with class ``labels`` ``[N]``;
        classes absent from the batch are unchanged."""
        if self.mean.device != features.device:
            self.to(features.device)  # follow the features (e.g. onto the GPU); the dtype stays float64
        x = features.detach().to(self.mean.dtype)
        y = labels.detach().long().to(x.device)
        c = self.mean.shape[0]
        onehot = torch.nn.functional.one_hot(y, c).to(x.dtype)  # [N, C]
        m = onehot.sum(0)  # [C]
        sums = onehot.t() @ x  # [C, A]
        if self._distributed():
            # one buffer, one collective: counts and sums of every process (all processes reach this call)
            packed = torch.cat([m.unsqueeze(1), sums], dim=1)
            torch.distributed.all_reduce(packed)
            m, sums = packed[:, 0], packed[:, 1:]
        present = m > 0
        mean_b = sums / m.clamp_min(1).unsqueeze(1)  # [C, A], the mean over the whole (global) batch
        if self.with_covariance:
            centred = x.unsqueeze(0) - mean_b.unsqueeze(1)  # [C, N, A]
            centred = centred * onehot.t().unsqueeze(2)
            scatter = centred.transpose(1, 2) @ centred  # [C, A, A], around the global batch mean
            if self._distributed():
                torch.distributed.all_reduce(scatter)
            cov_b = scatter / m.clamp_min(1).view(-1, 1, 1)  # population covariance
        if not bool(present.any()):
            return
        if self.estimator == "count":
            f = (m / (self.count + m).clamp_min(1)).view(-1, 1)  # weight of the new batch, 0 for absent classes
        else:
            f = torch.where(self.count > 0, torch.full_like(m, self.momentum), torch.ones_like(m)).view(-1, 1)
            f = f * present.view(-1, 1)
        diff = self.mean - mean_b
        self.mean.copy_((1 - f) * self.mean + f * mean_b)
        if self.with_covariance:
            f3 = f.view(-1, 1, 1)
            between = (f3 * (1 - f3)) * diff.unsqueeze(2) * diff.unsqueeze(1) if self.estimator == "count" else 0.0
            self.cov.copy_((1 - f3) * self.cov + f3 * cov_b + between)
        self.count.add_(m)

    def _distributed(self) -> bool:
        return self.sync_distributed and get_world_size() > 1


class ClassFeatureStatistics(torch.nn.Module):
    """The TSA memory module: source (labelled, ground truth) and target (unlabelled, pseudo-label) statistics.

    ``source``: mean (and covariance, for the reverse-direction option) of labelled-voxel features per class;
    ``target``: mean and covariance of unlabelled-voxel features per pseudo-label class. Each update folds in at
    most ``max_per_class`` randomly chosen voxels of every class.

    It is an ``nn.Module`` so it goes into checkpoints like a network (``state_dict``/``load_state_dict``).

    Args:
        num_classes: C.
        feature_dim: A (channels feeding the classifier).
        estimator: ``"count"`` (default) or ``"ema"``.
        momentum: EMA weight (``estimator="ema"`` only).
        max_per_class: bound on voxels per class per update.
    """

    def __init__(self, num_classes: int, feature_dim: int, estimator: str = "count", momentum: float = 0.1,
                 max_per_class: int = 4096) -> None:
        super().__init__()
        self.source = OnlineClassStatistics(num_classes, feature_dim, estimator, momentum)
        self.target = OnlineClassStatistics(num_classes, feature_dim, estimator, momentum)
        self.max_per_class = int(max_per_class)

    def subsample(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """At most ``max_per_class`` random rows of ``features`` ``[N, A]`` per class of ``labels`` ``[N]``."""
        keep = []
        for c in labels.unique():
            idx = (labels == c).nonzero(as_tuple=True)[0]
            if idx.numel() > self.max_per_class:
                idx = idx[torch.randperm(idx.numel(), device=idx.device)[: self.max_per_class]]
            keep.append(idx)
        if not keep:
            return features[:0], labels[:0]
        idx = torch.cat(keep)
        return features[idx], labels[idx]

    def update(self, source_features: torch.Tensor, source_labels: torch.Tensor,
               target_features: torch.Tensor, target_labels: torch.Tensor) -> None:
        """Fold in one iteration: features ``[N, A]`` with labels ``[N]`` for each domain."""
        self.source.update(*self.subsample(source_features, source_labels))
        self.target.update(*self.subsample(target_features, target_labels))

    def mean_shift(self, reverse: bool = False) -> torch.Tensor:
        """``μ_t − μ_s`` per class ``[C, A]`` (``μ_s − μ_t`` when ``reverse``);
        zero for classes not yet seen in both."""
        seen = ((self.source.count > 0) & (self.target.count > 0)).view(-1, 1)
        shift = self.target.mean - self.source.mean
        return torch.where(seen, -shift if reverse else shift, torch.zeros_like(shift))

    def condition_numbers(self) -> torch.Tensor:
        """Condition number of each target covariance ``Σ_t^c`` ``[C]`` (inf when singular, nan when unseen)."""
        eig = torch.linalg.eigvalsh(self.target.cov)  # ascending
        cond = eig[:, -1] / eig[:, 0].clamp_min(0)
        return torch.where(self.target.count > 0, cond, torch.full_like(cond, float("nan")))
