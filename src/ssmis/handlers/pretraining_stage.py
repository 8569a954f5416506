"""The end of a pre-training stage: start the next stage from the selected pre-trained state, with a fresh optimiser."""

from __future__ import annotations

import copy
import logging
import math
from typing import Any, Mapping

import torch
import torch.nn as nn
from ignite.engine import Engine, Events

from ..networks.unwrap import unwrap_module

__all__ = ["PretrainingStage"]

logger = logging.getLogger(__name__)


class PretrainingStage:
    """Select the pre-trained state on the validation split and start self-training from it, as BCP does.

    BCP pre-trains on labelled data, keeps the pre-trained model with the best validation score, and starts
    self-training from that model with a new optimiser. Attached to the trainer, this handler:

    - during pre-training (trainer iterations ``≤ iterations``), after each run of ``evaluator``, keeps an
      in-memory copy of ``network``'s weights when the evaluator's key metric beats the best so far
      (``select="best"``; ``"last"`` keeps nothing and self-training starts from the last pre-trained state);
    - at the start of iteration ``iterations + 1``: loads the kept weights into ``network`` and, with
      ``reset_optimizer``, clears the optimiser's state (SGD's momentum buffers), so self-training starts as with a
      newly built optimiser of the same settings (BCP on LA). With ``restore_optimizer`` instead, it loads the
      optimiser state kept with the selected weights (BCP on ACDC saves both in its best pre-trained checkpoint
      and reloads both); with neither, the optimiser goes on from its state at the end of pre-training. The
      learning-rate schedule is the config's business (``lr_scheduler`` switches at the same key).

    Strategies that copy the student into a teacher at the start of self-training (``BCPStrategy``) register that
    copy in ``Strategy.attach``, which the trainer calls after attaching its handlers; ignite runs handlers of one
    event in the order they were added, so the teacher receives the selected state.

    The kept weights and the best score are in ``state_dict`` (for ``ResumableCheckpoint``), so a run resumed
    during pre-training still selects over the whole stage. After the switch the copy is dropped.

    Args:
        network: the trained network (under DDP, the wrapped one).
        iterations: pre-training iterations (the bundle's ``pretrain_iterations``); 0: nothing to do.
        evaluator: the validation engine whose key metric (or ``metric_name``) is followed; needed for ``"best"``.
        optimizer: the optimiser(s) to reset.
        select: ``"best"`` or ``"last"``.
        reset_optimizer: clear the optimiser state at the switch.
        restore_optimizer: load the optimiser state kept with the selected weights at the switch (``"best"``
            only; not with ``reset_optimizer``).
        metric_name: the evaluator metric to follow (default: its key metric).
    """

    optional_in_checkpoint = True  # a checkpoint written before this handler existed still resumes

    def __init__(
        self,
        network: nn.Module,
        iterations: int,
        evaluator: Engine | None = None,
        optimizer: torch.optim.Optimizer | list[torch.optim.Optimizer] | None = None,
        select: str = "best",
        reset_optimizer: bool = True,
        metric_name: str | None = None,
        restore_optimizer: bool = False,
    ) -> None:
        if select not in ("best", "last"):
            raise ValueError(f"PretrainingStage: select must be 'best' or 'last', got {select!r}")
        if select == "best" and evaluator is None:
            raise ValueError("PretrainingStage: select='best' needs the evaluator whose metric selects the state")
        if int(iterations) < 0:
            raise ValueError(f"PretrainingStage: iterations must be >= 0, got {iterations}")
        self.network, self.iterations, self.evaluator = network, int(iterations), evaluator
        self.optimizers = [] if optimizer is None else (optimizer if isinstance(optimizer, list) else [optimizer])
        if reset_optimizer and restore_optimizer:
            raise ValueError("PretrainingStage: reset_optimizer and restore_optimizer exclude each other: a fresh "
                             "optimiser, or the one kept with the selected weights")
        self.select, self.reset_optimizer, self.metric_name = select, bool(reset_optimizer), metric_name
        self.restore_optimizer = bool(restore_optimizer)
        self.best_metric, self.best_iteration = -math.inf, -1
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_optimizer_state: list[dict[str, Any]] | None = None
        self._trainer: Engine | None = None

    def attach(self, engine: Engine) -> None:
        if self.iterations == 0:
            return  # no pre-training: nothing to select or reset
        self._trainer = engine
        if self.select == "best":
            self.evaluator.add_event_handler(Events.COMPLETED, self._record)
        engine.add_event_handler(Events.ITERATION_STARTED(once=self.iterations + 1), self._switch)

    def state_dict(self) -> dict[str, Any]:
        return {"best_metric": float(self.best_metric), "best_iteration": int(self.best_iteration),
                "best_state": self.best_state, "best_optimizer_state": self.best_optimizer_state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_metric, self.best_iteration = float(state["best_metric"]), int(state["best_iteration"])
        self.best_state = state.get("best_state")
        self.best_optimizer_state = state.get("best_optimizer_state")

    def _record(self, evaluator: Engine) -> None:
        iteration = int(self._trainer.state.iteration)
        if iteration > self.iterations:
            return
        name = self.metric_name or evaluator.state.key_metric_name
        value = float(evaluator.state.metrics[name])
        if value > self.best_metric:  # NaN never counts
            self.best_metric, self.best_iteration = value, iteration
            self.best_state = copy.deepcopy(unwrap_module(self.network).state_dict())
            if self.restore_optimizer:
                self.best_optimizer_state = [copy.deepcopy(opt.state_dict()) for opt in self.optimizers]

    def _switch(self, engine: Engine) -> None:
        if self.best_state is not None:
            unwrap_module(self.network).load_state_dict(self.best_state)
            logger.info(f"self-training starts from the pre-trained state of iteration {self.best_iteration} "
                        f"(validation {self.best_metric:.4f})")
        elif self.select == "best":
            logger.warning("PretrainingStage: no validation ran during pre-training; self-training starts from the "
                           "last pre-trained state")
        if self.reset_optimizer:
            for opt in self.optimizers:
                opt.state.clear()
        elif self.restore_optimizer and self.best_optimizer_state is not None:
            for opt, kept in zip(self.optimizers, self.best_optimizer_state):
                lrs = [group["lr"] for group in opt.param_groups]  # the schedule's rate, not the one kept
                opt.load_state_dict(kept)
                for group, lr in zip(opt.param_groups, lrs):
                    group["lr"] = lr
        self.best_state = self.best_optimizer_state = None  # not needed any more: out of memory and checkpoints
