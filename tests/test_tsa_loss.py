"""TSALoss against plain cross-entropy and a Monte-Carlo estimate of the expected augmented cross-entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssmis.tsa import TSALoss


def _random_problem(n=64, a=5, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, a, generator=g, dtype=torch.float64)
    labels = torch.randint(0, c, (n,), generator=g)
    w = torch.randn(c, a, generator=g, dtype=torch.float64)
    b = torch.randn(c, generator=g, dtype=torch.float64)
    shift = 0.5 * torch.randn(c, a, generator=g, dtype=torch.float64)
    m = torch.randn(c, a, a, generator=g, dtype=torch.float64)
    cov = m @ m.transpose(1, 2) / a + 0.1 * torch.eye(a, dtype=torch.float64)
    return feats, labels, w, b, shift, cov


def test_lambda_zero_is_cross_entropy():
    f, y, w, b, mu, cov = _random_problem()
    torch.testing.assert_close(TSALoss()(f, y, w, b, mu, cov, 0.0), F.cross_entropy(f @ w.t() + b, y))


def test_hand_computed_single_voxel():
    # one voxel, two classes, one feature: z̃_j = w_j a + b_j + λ(w_j−w_y)Δμ + λ/2 (w_j−w_y)² σ²
    f = torch.tensor([[2.0]], dtype=torch.float64)
    y = torch.tensor([0])
    w = torch.tensor([[1.0], [3.0]], dtype=torch.float64)
    b = torch.tensor([0.5, -1.0], dtype=torch.float64)
    mu = torch.tensor([[0.4], [0.0]], dtype=torch.float64)
    cov = torch.tensor([[[0.25]], [[9.0]]], dtype=torch.float64)
    lam = 0.5
    z0 = 1.0 * 2 + 0.5
    z1 = 3.0 * 2 - 1.0 + lam * 2.0 * 0.4 + lam / 2 * 4.0 * 0.25
    expected = -z0 + torch.logsumexp(torch.tensor([z0, z1], dtype=torch.float64), 0)
    torch.testing.assert_close(TSALoss()(f, y, w, b, mu, cov, lam), expected)


def _monte_carlo(f, y, w, b, mu, cov, lam, draws=4000):
    g = torch.Generator().manual_seed(1)
    chol = torch.linalg.cholesky(lam * cov)  # [C, A, A]
    eps = torch.randn(draws, f.shape[0], f.shape[1], generator=g, dtype=torch.float64)
    delta = lam * mu[y] + torch.einsum("nab,knb->kna", chol[y], eps)  # δ ~ N(λΔμ^y, λΣ^y) per voxel
    logits = (f.unsqueeze(0) + delta) @ w.t() + b
    ce = F.cross_entropy(logits.reshape(-1, w.shape[0]), y.repeat(draws), reduction="none").reshape(draws, -1)
    per_draw = ce.mean(1)  # the loss of one augmented draw of every voxel
    return per_draw.mean(), per_draw.std() / draws**0.5


@pytest.mark.parametrize("lam", [0.1, 0.25, 1.0])
def test_monte_carlo_expectation_is_under_the_bound(lam):
    f, y, w, b, mu, cov = _random_problem(n=32)
    bound = TSALoss()(f, y, w, b, mu, cov, lam)
    mc, se = _monte_carlo(f, y, w, b, mu, cov, lam)
    assert mc <= bound + 3 * se, (float(mc), float(bound))
    # the augmentation is real: the expectation moved away from the unaugmented cross-entropy
    assert abs(mc - TSALoss()(f, y, w, b, mu, cov, 0.0)) > 3 * se


def test_bound_is_exact_without_covariance():
    # with Σ = 0 every augmentation is the same shift a + λΔμ^y: no expectation, so no Jensen gap
    f, y, w, b, mu, _ = _random_problem(n=32)
    zero = torch.zeros(w.shape[0], w.shape[1], w.shape[1], dtype=torch.float64)
    shifted = F.cross_entropy((f + 0.3 * mu[y]) @ w.t() + b, y)
    torch.testing.assert_close(TSALoss()(f, y, w, b, mu, zero, 0.3), shifted)


def test_gradients_and_shapes():
    f, y, w, b, mu, cov = _random_problem()
    f, w = f.clone().requires_grad_(), w.clone().requires_grad_()
    TSALoss()(f, y, w, b, mu, cov, 0.25).backward()
    assert torch.isfinite(f.grad).all() and torch.isfinite(w.grad).all()
    with pytest.raises(ValueError, match="shape mismatch"):
        TSALoss()(f, y, w, b, mu[:, :2], cov, 0.25)
    assert TSALoss()(f[:0], y[:0], w, b, mu, cov, 0.25).item() == 0.0
