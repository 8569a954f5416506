"""Dice, Jaccard, 95 % Hausdorff distance and average surface distance of one case, in voxels and in mm.

Computed with MONAI's metric functions; this module only fixes the conventions of the semi-supervised
literature: per foreground class, symmetric surface distances, and both voxel and mm units.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
)
from monai.networks.utils import one_hot

__all__ = ["METRIC_NAMES", "case_metrics", "mean_metrics", "metric_names"]

METRIC_NAMES = ("dice", "jaccard", "hd95_vox", "hd95_mm", "asd_vox", "asd_mm")


def case_metrics(
    pred: torch.Tensor | np.ndarray,
    label: torch.Tensor | np.ndarray,
    num_classes: int,
    spacing: Sequence[float],
) -> dict[str, float]:
    """Metrics of one case, averaged over the foreground classes.

    Args:
        pred: predicted class map ``[*S]`` (or ``[1, *S]``), integers in ``[0, num_classes)``.
        label: ground-truth class map of the same shape.
        num_classes: number of classes including background.
        spacing: voxel size in mm along each spatial axis.

    Returns ``{"dice", "jaccard", "hd95_vox", "hd95_mm", "asd_vox", "asd_mm"}``, and with more than one foreground
    class also ``"dice_class<c>"`` for each (:func:`metric_names`). Distances are ``inf`` when a
    class is present in only one of prediction and label, and the class is skipped (nan) when it is absent from
    both.
    """
    p = torch.as_tensor(np.asarray(pred)).long()
    y = torch.as_tensor(np.asarray(label)).long()
    if p.shape != y.shape:
        raise ValueError(f"prediction shape {tuple(p.shape)} does not match label shape {tuple(y.shape)}")
    p = p.reshape(1, 1, *p.shape[-len(spacing):])
    y = y.reshape(1, 1, *y.shape[-len(spacing):])
    p1, y1 = one_hot(p, num_classes), one_hot(y, num_classes)
    import warnings

    with warnings.catch_warnings():  # MONAI warns on empty masks; the nan/inf result says it already
        warnings.simplefilter("ignore")
        dice = compute_dice(p1, y1, include_background=False, ignore_empty=True)[0]
        jac = compute_iou(p1, y1, include_background=False, ignore_empty=True)[0]
        out: dict[str, float] = {"dice": _nanmean(dice), "jaccard": _nanmean(jac)}
        if num_classes > 2:  # several structures (ACDC): each one's Dice too, as the literature reports them
            out.update({f"dice_class{c}": float(dice[c - 1]) for c in range(1, num_classes)})
        # a class present in only one of the two has no finite surface distance (MONAI gives nan or inf)
        spatial = tuple(range(1, p1.ndim - 1))  # axes of p1[0, 1:] other than the class axis
        one_sided = (p1[0, 1:].sum(spatial) > 0) != (y1[0, 1:].sum(spatial) > 0)
        for unit, sp in (("vox", None), ("mm", [float(s) for s in spacing])):
            hd = compute_hausdorff_distance(p1, y1, include_background=False, percentile=95, spacing=sp)[0]
            asd = compute_average_surface_distance(p1, y1, include_background=False, symmetric=True, spacing=sp)[0]
            hd, asd = hd.masked_fill(one_sided, math.inf), asd.masked_fill(one_sided, math.inf)
            out[f"hd95_{unit}"] = _nanmean(hd)
            out[f"asd_{unit}"] = _nanmean(asd)
    return out


def _nanmean(t: torch.Tensor) -> float:
    v = t.double().numpy()
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else math.nan


def metric_names(num_classes: int) -> tuple[str, ...]:
    """The keys :func:`case_metrics` returns for ``num_classes`` (background included)."""
    per_class = tuple(f"dice_class{c}" for c in range(1, num_classes)) if num_classes > 2 else ()
    return METRIC_NAMES + per_class


def mean_metrics(cases: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over cases, ignoring nan (a class absent from both prediction and label)."""
    names = [k for k in cases[0] if k != "case"] if cases else list(METRIC_NAMES)
    return {k: _nanmean(torch.tensor([c[k] for c in cases], dtype=torch.float64)) for k in names}
