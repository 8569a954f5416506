"""Active-learning scores against hand computations."""

import math

import pytest
import torch

from ssmis.metrics import prediction_disagreement, prediction_entropy


def test_entropy_hand_computed():
    probs = torch.zeros(2, 4)
    probs[:, 0] = torch.tensor([1.0, 0.0])   # certain background: outside the region
    probs[:, 1] = torch.tensor([0.5, 0.5])   # entropy log 2 -> 1 after normalisation
    probs[:, 2] = torch.tensor([0.0, 1.0])   # certain foreground -> 0
    probs[:, 3] = torch.tensor([0.8, 0.2])
    h3 = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2)) / math.log(2)
    assert prediction_entropy(probs) == pytest.approx((1.0 + 0.0 + h3) / 3, abs=1e-6)
    assert prediction_entropy(torch.tensor([[1.0, 1.0], [0.0, 0.0]])) == 0.0


def test_entropy_multiclass_normalised_to_one():
    probs = torch.full((4, 3, 3), 0.25)
    assert prediction_entropy(probs) == pytest.approx(1.0, abs=1e-6)


def test_disagreement_hand_computed():
    a = torch.zeros(2, 10)
    b = torch.zeros(2, 10)
    a[1, :4] = 1.0
    a[0, 4:] = 1.0
    b[1, 2:6] = 1.0
    b[0, :2] = 1.0
    b[0, 6:] = 1.0
    # foreground {0..3} vs {2..5}: Dice = 2*2/8 = 0.5
    assert prediction_disagreement(a, b) == pytest.approx(0.5)
    assert prediction_disagreement(a, a) == 0.0
    with pytest.raises(ValueError):
        prediction_disagreement(a, b[:, :5])
