"""Uncertainty: per-volume scores for active learning (prediction entropy, two-network disagreement), and the mean
entropy of a batch of pseudo-labels that the strategies log."""

from __future__ import annotations

import math

import torch

__all__ = ["mean_entropy", "prediction_entropy", "prediction_disagreement"]


def mean_entropy(prob: torch.Tensor) -> torch.Tensor:
    """Mean per-voxel entropy (nats) of class probabilities ``[B, K, *S]``: the pseudo-label uncertainty."""
    return -(prob * torch.log(prob.clamp_min(1e-8))).sum(1).mean()


def _foreground(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """Voxels where any non-background class has probability above ``threshold``: ``[*S]`` bool."""
    return (probs[1:] > threshold).any(0)


def prediction_entropy(probs: torch.Tensor, threshold: float = 0.1) -> float:
    """Mean normalised entropy ``H(p) / log K`` in [0, 1] over the voxels a model considers possibly foreground.

    Background-only voxels, almost all certain, would swamp a mean over the whole volume; restricting it to where
    any foreground class exceeds ``threshold`` scores how sure the model is about the structure itself.

    Args:
        probs: ``[K, *S]`` class probabilities of one volume (K ≥ 2; class 0 is background).
        threshold: foreground probability above which a voxel counts.
    Returns 0.0 when no voxel is possibly foreground.
    """
    if probs.ndim < 2 or probs.shape[0] < 2:
        raise ValueError(f"probs must be [K, *S] with K >= 2 classes, got shape {tuple(probs.shape)}")
    region = _foreground(probs, threshold)
    if not bool(region.any()):
        return 0.0
    p = probs[:, region].clamp_min(1e-12)
    h = -(p * p.log()).sum(0) / math.log(probs.shape[0])
    return float(h.mean())


def prediction_disagreement(probs1: torch.Tensor, probs2: torch.Tensor) -> float:
    """``1 − mean_c Dice(argmax₁ = c, argmax₂ = c)`` over the foreground classes either network predicts.

    0 when both networks label every voxel alike, 1 when their foreground predictions do not overlap at all.

    Args:
        probs1, probs2: ``[K, *S]`` class probabilities of the same volume from two networks.
    Returns 0.0 when neither network predicts any foreground.
    """
    if probs1.shape != probs2.shape or probs1.ndim < 2:
        raise ValueError(f"expected two [K, *S] tensors of one shape, got {tuple(probs1.shape)} and "
                         f"{tuple(probs2.shape)}")
    a, b = probs1.argmax(0), probs2.argmax(0)
    dices = []
    for c in range(1, probs1.shape[0]):
        x, y = a == c, b == c
        total = int(x.sum()) + int(y.sum())
        if total:
            dices.append(2.0 * int((x & y).sum()) / total)
    return 1.0 - sum(dices) / len(dices) if dices else 0.0
