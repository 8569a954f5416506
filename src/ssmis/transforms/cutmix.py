"""3D (or 2D) CutMix of two images in a batch, applied identically to images and pseudo-labels.

MONAI's ``CutMix`` (``monai.transforms``) is not used: it draws λ from Beta(α, α) only, pairs each image with a
random permutation that may pair it with itself (no mix), and clips its box at the volume's border, so the box's
sides are not √(1 − λ) of the axes. Here the box lies inside the volume, and the image it is mixed with is always
another one of the batch (``torch.roll``).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .copy_paste import cuboid_mask

__all__ = ["sample_beta", "cutmix_box", "apply_cutmix"]


def _log_gamma_draw(shape: float, generator: torch.Generator) -> float:
    """log of one Gamma(``shape``, 1) draw from ``generator`` (Marsaglia and Tsang's squeeze; shape < 1 via the
    U^(1/a) boost, kept in log space so that tiny shapes do not underflow to 0)."""
    if shape < 1.0:
        u = 0.0
        while u <= 0.0:
            u = float(torch.rand((), generator=generator, dtype=torch.float64))
        return _log_gamma_draw(shape + 1.0, generator) + math.log(u) / shape
    d = shape - 1.0 / 3.0
    c = 1.0 / (9.0 * d) ** 0.5
    while True:
        x = float(torch.randn((), generator=generator, dtype=torch.float64))
        v = (1.0 + c * x) ** 3
        if v <= 0.0:
            continue
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        if u > 0.0 and math.log(u) < 0.5 * x * x + d - d * v + d * math.log(v):
            return math.log(d * v)


def sample_beta(alpha: float, beta: float, generator: torch.Generator | None = None) -> float:
    """One λ ~ Beta(α, β). Without ``generator`` it is ``torch.distributions.Beta`` on torch's global generator;
    with one, every draw comes from that generator (``torch.distributions`` takes none, hence the two Gamma draws
    written out here: λ = X / (X + Y), X ~ Gamma(α), Y ~ Gamma(β), as a sigmoid of log X − log Y)."""
    if not (math.isfinite(alpha) and math.isfinite(beta) and alpha > 0 and beta > 0):
        raise ValueError(f"Beta parameters must be positive and finite, got alpha={alpha}, beta={beta}.")
    if generator is None:
        return float(torch.distributions.Beta(alpha, beta).sample())
    t = _log_gamma_draw(beta, generator) - _log_gamma_draw(alpha, generator)  # log(Y / X)
    return 1.0 / (1.0 + math.exp(t)) if t < 700 else 0.0


def cutmix_box(
    spatial_shape: Sequence[int], alpha: float = 4.0, beta: float = 4.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A ``[1, 1, *S]`` float box mask: λ ~ Beta(α, β), each side ``√(1 − λ)`` of the axis,
    at a random position.

    With ``generator``, λ and the position both come from it, so a seeded generator gives the same box every time;
    without, both come from torch's global generator."""
    lam = sample_beta(alpha, beta, generator)
    return cuboid_mask(spatial_shape, (1.0 - lam) ** 0.5, generator=generator)


def apply_cutmix(x: torch.Tensor, box: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """``x ⊙ (1 − box) + x[perm] ⊙ box`` for images/probabilities ``[B, C, *S]`` or class maps
    (``torch.where``)."""
    box = box.to(x.device)
    if x.is_floating_point():
        b = box.to(x.dtype)
        return x * (1 - b) + x[perm] * b
    return torch.where(box.bool(), x[perm], x)
