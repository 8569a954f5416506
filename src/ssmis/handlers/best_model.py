"""Keep ``models/model_best.pt``: the weights at the best validation score, written atomically, across resumes."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from ..networks.unwrap import unwrap_module
from .disk_saver import AtomicDiskSaver

__all__ = ["BestModelSaver"]

logger = logging.getLogger(__name__)


class _Value:
    """A number that ``Checkpoint`` saves as a top-level entry of the file (``state_dict()`` is the number)."""

    def __init__(self, read: Callable[[], Any]) -> None:
        self.state_dict = read


class BestModelSaver(Checkpoint):
    """After each validation, save ``save_dict`` to ``save_dir/filename`` when the key metric beats the best so far.

    An ``ignite.handlers.Checkpoint`` (one file, its score the metric) writing through
    :class:`~ssmis.handlers.disk_saver.AtomicDiskSaver`, rather than MONAI's ``CheckpointSaver(save_key_metric=True)``
    or a plain ``Checkpoint``, for two reasons: those delete the previous best file before writing the next, so a
    kill in between loses the best weights (here the file is replaced by a rename); and their best score starts
    afresh after a resume, so the first validation of a resumed run replaces a better earlier model. Here the best
    score is this handler's ``state_dict``, which goes into the resumable checkpoint, and the file records it too:
    a validation that ended after the last checkpoint was written is found there. The file holds
    ``{name: state_dict, ..., "best_metric": float, "best_epoch": int}`` (MONAI's ``CheckpointLoader`` with
    ``load_dict={"model": ...}`` reads it as usual). NaN never counts as an improvement. Under DDP only rank 0
    writes.

    Args:
        save_dir: folder of the file.
        save_dict: what to save, e.g. ``{"model": network}``.
        filename: default ``model_best.pt``.
        metric_name: the evaluator metric to follow (default: the evaluator's key metric).
    """

    optional_in_checkpoint = True  # a checkpoint written before this handler existed still resumes

    def __init__(self, save_dir: str | os.PathLike, save_dict: Mapping[str, Any], filename: str = "model_best.pt",
                 metric_name: str | None = None) -> None:
        if {"best_metric", "best_epoch"} & set(save_dict):
            raise ValueError("save_dict must not hold 'best_metric' or 'best_epoch': the file records them")
        self.path = Path(save_dir) / filename
        self.metric_name = metric_name
        self.best_metric, self.best_epoch = -math.inf, -1
        self._resumed = False
        objects = {k: unwrap_module(v) for k, v in save_dict.items()}
        objects.update(best_metric=_Value(lambda: float(self.best_metric)),
                       best_epoch=_Value(lambda: int(self.best_epoch)))
        super().__init__(objects, AtomicDiskSaver(save_dir), filename_pattern=filename, n_saved=1,
                         score_function=lambda engine: self.best_metric)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def state_dict(self) -> dict[str, float]:  # type: ignore[override]
        return {"best_metric": float(self.best_metric), "best_epoch": int(self.best_epoch)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:  # type: ignore[override]
        self._set_best(float(state["best_metric"]), int(state["best_epoch"]))
        self._resumed = True

    def _set_best(self, metric: float, epoch: int) -> None:
        self.best_metric, self.best_epoch = metric, epoch
        self._saved = [Checkpoint.Item(metric, self.path.name)] if math.isfinite(metric) else []

    def _adopt_saved_file(self, epoch: int) -> None:
        # a validation can end after the last resumable checkpoint was written; the file then knows a newer best
        self._resumed = False
        if not self.path.is_file():
            return
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # unreadable: it will be replaced at the next improvement
            logger.warning(f"{self.path}: unreadable ({type(e).__name__}: {e}); it will be replaced")
            return
        metric, at = saved.get("best_metric"), saved.get("best_epoch")
        if isinstance(metric, float) and isinstance(at, int) and at <= epoch and metric > self.best_metric:
            self._set_best(metric, at)

    def __call__(self, engine: Engine) -> None:  # type: ignore[override]
        name = self.metric_name or engine.state.key_metric_name
        if name not in engine.state.metrics:
            raise KeyError(f"BestModelSaver: the evaluator has no metric {name!r} "
                           f"(it has {sorted(engine.state.metrics)})")
        value, epoch = float(engine.state.metrics[name]), int(engine.state.epoch)
        if self._resumed:
            self._adopt_saved_file(epoch)
        if not value > self.best_metric:  # NaN never counts as an improvement
            return
        self.best_metric, self.best_epoch = value, epoch
        super().__call__(engine)  # the score (value) beats the one saved: the file is replaced
