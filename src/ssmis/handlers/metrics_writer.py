"""An evaluator handler that scores every case and writes ``metrics.json``, ``metrics.csv`` and PNG overlays."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from ..metrics import case_metrics, mean_metrics, metric_names
from ..utils.atomic import atomic_write_text
from ..visualize import save_overlay

__all__ = ["SegmentationMetricsWriter"]


def _spacing(tensor: Any, ndim: int) -> list[float]:
    affine = getattr(tensor, "affine", None)
    if affine is None:
        return [1.0] * ndim
    a = np.asarray(affine, dtype=float)[:ndim, :ndim]
    return [float(v) for v in np.sqrt((a**2).sum(0))]


def _name(tensor: Any, index: int) -> str:
    meta = getattr(tensor, "meta", {}) or {}
    path = meta.get("filename_or_obj")
    if not path:
        return f"case_{index:03d}"
    base = os.path.basename(str(path))
    for s in (".nii.gz", ".nii", ".nrrd", ".mha", ".h5"):
        if base.endswith(s):
            return base[: -len(s)]
    return base


class SegmentationMetricsWriter:
    """Per-case Dice, Jaccard, HD95 and ASD (voxels and mm) over an evaluator run, saved as JSON, CSV and PNGs.

    It reads the decollated ``engine.state.output`` items: ``pred_key`` and ``label_key`` are class maps
    ``[1, *S]`` (apply ``AsDiscreted(argmax=True)`` first) and ``image_key`` the image ``[1, *S]``. The spacing
    comes from the label's affine. At ``COMPLETED`` it writes into ``output_dir``:

    - ``metrics.json``: ``{"mean": {...}, "cases": [{"case": name, ...}]}``
    - ``metrics.csv``: one row per case and a final ``mean`` row
    - ``overlay_best_<case>.png`` and ``overlay_worst_<case>.png`` (by Dice)

    and puts the means into ``engine.state.metrics`` (``dice``, ``jaccard``, …).

    Not MONAI's ``MetricsSaver``: that one writes what the evaluator's metric handlers computed, one CSV per metric,
    while the distances here are in mm from each label's own affine, every case is named after its file, and the
    JSON (which the benchmarks read), the CSV and the overlays come from one pass.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        num_classes: int,
        image_key: str = "image",
        label_key: str = "label",
        pred_key: str = "pred",
        overlays: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.num_classes = num_classes
        self.image_key, self.label_key, self.pred_key = image_key, label_key, pred_key
        self.overlays = overlays
        self.cases: list[dict[str, Any]] = []
        self._slices: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        self.cases, self._slices = [], {}

    def update(self, engine: Engine) -> None:
        items = engine.state.output
        items = items if isinstance(items, list) else [items]
        for item in items:
            pred, label = item[self.pred_key], item[self.label_key]
            ndim = pred.ndim - 1
            name = _name(item.get(self.image_key, label), len(self.cases))
            p = torch.as_tensor(pred).detach().cpu()[0].long().numpy()
            y = torch.as_tensor(label).detach().cpu()[0].long().numpy()
            try:
                m = case_metrics(p, y, self.num_classes, _spacing(label, ndim))
            except ValueError as e:  # e.g. a label whose shape differs from its image's
                raise ValueError(f"case {name}: {e}") from e
            self.cases.append({"case": name, **m})
            if self.overlays and self.image_key in item:
                img = torch.as_tensor(item[self.image_key]).detach().cpu()[0].float()
                if tuple(img.shape) != tuple(y.shape):  # the network's input grid (ACDC: resized in-plane)
                    img = torch.nn.functional.interpolate(img[None, None], size=y.shape, mode="nearest")[0, 0]
                img = img.numpy()
                if ndim == 3:
                    from ..visualize import best_slice

                    k = best_slice(y, p)
                    img, y, p = img[..., k], y[..., k], p[..., k]
                self._slices[name] = (img, y, p)

    def write(self, engine: Engine) -> None:
        if not self.cases:
            self.logger.warning("no cases were evaluated; nothing written")
            return
        mean = mean_metrics(self.cases)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            json.dumps({"mean": mean, "cases": self.cases}, indent=2, allow_nan=True) + "\n",
            self.output_dir / "metrics.json",
        )
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["case", *metric_names(self.num_classes)])
        writer.writeheader()
        writer.writerows(self.cases)
        writer.writerow({"case": "mean", **mean})
        atomic_write_text(buf.getvalue(), self.output_dir / "metrics.csv")
        if self._slices:
            ranked = sorted(self.cases, key=lambda c: -math.inf if math.isnan(c["dice"]) else c["dice"])
            for tag, case in (("worst", ranked[0]), ("best", ranked[-1])):
                img, y, p = self._slices[case["case"]]
                save_overlay(img, y, p, self.output_dir / f"overlay_{tag}_{case['case']}.png",
                             title=f"{tag}: {case['case']}  Dice {case['dice']:.3f}")
        engine.state.metrics.update(mean)
        self.logger.info("mean " + ", ".join(f"{k} {v:.4f}" for k, v in mean.items()))
