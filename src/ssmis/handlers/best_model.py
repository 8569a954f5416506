"""Keep ``models/model_best.pt``: the weights at the best validation score, written atomically, across resumes."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from ignite.engine import Engine, Events

from ..utils.atomic import atomic_torch_save
from ..utils.distributed import get_rank
from ..networks.unwrap import unwrap_module

__all__ = ["BestModelSaver"]

logger = logging.getLogger(__name__)


class BestModelSaver:
    """After each validation, save ``save_dict`` to ``save_dir/filename`` when the key metric beats the best so far.

    Written here rather than with MONAI's ``CheckpointSaver(save_key_metric=True)`` for two reasons: that saver
    writes with ``atomic=False`` after deleting the previous best file, so a kill mid-write loses the best weights;
    and its best score starts afresh after a resume, so the first validation of a resumed run replaces a better
    earlier model. Here the file is replaced atomically, and the best score is a ``state_dict`` that goes into the
    resumable checkpoint. The file holds ``{name: state_dict, ..., "best_metric": float, "best_epoch": int}``
    (MONAI's ``CheckpointLoader`` with ``load_dict={"model": ...}`` reads it as usual). Under DDP only rank 0 writes.

    Args:
        save_dir: folder of the file.
        save_dict: what to save, e.g. ``{"model": network}``.
        filename: default ``model_best.pt``.
        metric_name: the evaluator metric to follow (default: the evaluator's key metric).
    """

    optional_in_checkpoint = True  # a checkpoint written before this handler existed still resumes

    def __init__(self, save_dir: str | os.PathLike, save_dict: Mapping[str, Any], filename: str = "model_best.pt",
                 metric_name: str | None = None) -> None:
        self.path = Path(save_dir) / filename
        self.save_dict = dict(save_dict)
        self.metric_name = metric_name
        self.best_metric, self.best_epoch = -math.inf, -1
        self._resumed = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def state_dict(self) -> dict[str, float]:
        return {"best_metric": float(self.best_metric), "best_epoch": int(self.best_epoch)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_metric, self.best_epoch = float(state["best_metric"]), int(state["best_epoch"])
        self._resumed = True

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
            self.best_metric, self.best_epoch = metric, at

    def __call__(self, engine: Engine) -> None:
        name = self.metric_name or engine.state.key_metric_name
        if name not in engine.state.metrics:
            raise KeyError(f"BestModelSaver: the evaluator has no metric {name!r} (it has {sorted(engine.state.metrics)})")
        value, epoch = float(engine.state.metrics[name]), int(engine.state.epoch)
        if self._resumed:
            self._adopt_saved_file(epoch)
        if not value > self.best_metric:  # NaN never counts as an improvement
            return
        self.best_metric, self.best_epoch = value, epoch
        if get_rank() != 0:
            return
        obj = {k: unwrap_module(v).state_dict() for k, v in self.save_dict.items()}
        obj.update(best_metric=value, best_epoch=epoch)
        atomic_torch_save(obj, self.path)
