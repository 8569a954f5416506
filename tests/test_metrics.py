"""Segmentation metrics against hand computations and an independent brute-force surface distance."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from ssmis.metrics import case_metrics, mean_metrics


def _cubes():
    label = np.zeros((20, 20, 20), np.int64)
    label[4:12, 4:12, 4:12] = 1
    pred = np.zeros_like(label)
    pred[6:14, 4:12, 4:12] = 1  # the same cube shifted by 2 voxels along x
    return pred, label


def test_dice_jaccard_by_hand():
    pred, label = _cubes()
    m = case_metrics(pred, label, num_classes=2, spacing=(1, 1, 1))
    # overlap 6*8*8 = 384 of two 512-voxel cubes
    assert m["dice"] == pytest.approx(2 * 384 / 1024)
    assert m["jaccard"] == pytest.approx(384 / 640)


def _surface(mask):
    return np.argwhere(mask & ~ndimage.binary_erosion(mask))


def _brute_force(pred, label, spacing):
    sp = np.asarray(spacing, float)
    a, b = _surface(pred.astype(bool)) * sp, _surface(label.astype(bool)) * sp
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    ab, ba = d.min(1), d.min(0)
    hd95 = max(np.percentile(ab, 95), np.percentile(ba, 95))
    asd = (ab.sum() + ba.sum()) / (len(ab) + len(ba))
    return hd95, asd


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 0.5, 1.25)])
def test_surface_distances_brute_force(spacing):
    pred, label = _cubes()
    hd95, asd = _brute_force(pred, label, spacing)
    m = case_metrics(pred, label, num_classes=2, spacing=spacing)
    assert m["hd95_mm"] == pytest.approx(hd95, rel=1e-5)
    assert m["asd_mm"] == pytest.approx(asd, rel=1e-5)
    hd95_v, asd_v = _brute_force(pred, label, (1, 1, 1))
    assert m["hd95_vox"] == pytest.approx(hd95_v, rel=1e-5)
    assert m["asd_vox"] == pytest.approx(asd_v, rel=1e-5)
    if spacing[0] == 2.0:  # the shift is along x, which is 2 mm here: mm and voxel distances must differ
        assert m["hd95_mm"] == pytest.approx(2 * m["hd95_vox"])


def test_perfect_and_empty_predictions():
    _, label = _cubes()
    m = case_metrics(label, label, 2, (1, 1, 1))
    assert m["dice"] == 1.0 and m["hd95_vox"] == 0.0 and m["asd_mm"] == 0.0
    empty = case_metrics(np.zeros_like(label), label, 2, (1, 1, 1))
    assert empty["dice"] == 0.0 and math.isinf(empty["hd95_vox"])


def test_multiclass_mean_over_foreground():
    label = np.zeros((16, 16), np.int64)
    label[2:6, 2:6] = 1
    label[8:12, 8:12] = 2
    pred = label.copy()
    pred[8:12, 8:12] = 0  # class 2 missed entirely
    m = case_metrics(pred, label, 3, (1, 1))
    assert m["dice"] == pytest.approx(0.5)


def test_shape_mismatch():
    with pytest.raises(ValueError, match="does not match"):
        case_metrics(np.zeros((4, 4)), np.zeros((4, 5)), 2, (1, 1))


def test_metrics_writer_names_the_case_of_a_shape_mismatch(tmp_path):
    import torch
    from ignite.engine import Engine
    from monai.data import MetaTensor

    from ssmis.handlers import SegmentationMetricsWriter

    label = MetaTensor(torch.zeros(1, 4, 5, 3), meta={"filename_or_obj": "/data/labelsTr/la_007.nii.gz"})
    engine = Engine(lambda e, b: None)
    engine.state.output = [{"pred": torch.zeros(1, 4, 4, 3), "label": label}]
    writer = SegmentationMetricsWriter(tmp_path, num_classes=2, overlays=False)
    with pytest.raises(ValueError, match="case la_007: prediction shape"):
        writer.update(engine)


def test_mean_ignores_nan():
    assert mean_metrics([{k: 1.0 for k in ("dice", "jaccard", "hd95_vox", "hd95_mm", "asd_vox", "asd_mm")},
                         {k: math.nan for k in ("dice", "jaccard", "hd95_vox", "hd95_mm", "asd_vox", "asd_mm")}])[
        "dice"] == 1.0
