"""A checkpoint handler that resumes a killed run and publishes ``models/model.pt`` atomically.

Built from ignite: two ``ignite.handlers.Checkpoint`` savers (the training state and the model) writing through
:class:`~ssmis.handlers.disk_saver.AtomicDiskSaver`, and ``Checkpoint.load_objects`` to restore. What is added is
what "rerun the same command after a kill and it resumes" needs: fixed file names, a load that is skipped on the
first run, errors that name the file and the entry that does not fit, and entries that older checkpoints may lack.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from ..networks.unwrap import unwrap_module
from .disk_saver import AtomicDiskSaver

__all__ = ["ResumableCheckpoint"]


class ResumableCheckpoint:
    """Save the full training state every ``save_interval`` iterations and at the end; load it at start if present.

    Files in ``save_dir``:

    - ``checkpoint.pt``: ``{name: obj.state_dict()}`` for every entry of ``save_dict`` (networks, optimisers,
      schedulers, handlers with state) plus ``"trainer"``, the state of the engine it is attached to (iteration,
      epoch) — what a resumed run needs;
    - ``model.pt``: the network's plain state dict, which the model zoo's export step and MONAI's
      ``CheckpointLoader`` (one-entry ``load_dict``) both read; with several ``model_keys``,
      ``{key: state dict}`` for each.

    Both are written to a temporary file and renamed over the previous one (never deleted first), so a kill
    mid-write never leaves a truncated or missing checkpoint. Under DDP only rank 0 writes.

    Args:
        save_dir: folder for the two files (created if missing).
        save_dict: objects with ``state_dict``/``load_state_dict`` (the engine is added as ``"trainer"``); None
            entries (a part switched off in the config) are left out. An entry
            missing from ``checkpoint.pt`` is an error, unless its object sets ``optional_in_checkpoint = True``.
        save_interval: iterations between saves (0: only at the end).
        model_keys: entries of ``save_dict`` that go into ``model.pt``.
        resume: load ``checkpoint.pt`` at start when it exists.
        max_wall_s: stop cleanly (save, then terminate) once a run has lasted this many seconds; rerunning the
            same command continues. Lets long trainings run in pieces on machines lent for a few minutes.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        save_interval: int = 100,
        model_keys: tuple[str, ...] | list[str] = ("model",),
        resume: bool = True,
        state_name: str = "checkpoint.pt",
        model_name: str = "model.pt",
        max_wall_s: float | None = None,
    ) -> None:
        self.save_dir = Path(save_dir)
        self.save_dict = {k: v for k, v in save_dict.items() if v is not None}  # None: a switched-off part
        missing = [k for k in model_keys if k not in self.save_dict]
        if missing:
            raise ValueError(f"model_keys {missing} are not in save_dict (it has {sorted(self.save_dict)})")
        self.save_interval = int(save_interval)
        self.model_keys = tuple(model_keys)
        self.resume = resume
        self.state_path = self.save_dir / state_name
        self.model_path = self.save_dir / model_name
        self.max_wall_s = max_wall_s
        self._t0 = time.monotonic()
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        if "trainer" in self.save_dict:
            raise ValueError("save_dict must not hold 'trainer': the engine this handler is attached to is saved there")
        self.save_dict["trainer"] = engine
        objects = {k: unwrap_module(v) for k, v in self.save_dict.items()}
        saver = AtomicDiskSaver(self.save_dir)
        # one file each, replaced in place (n_saved=1, a literal file name); priority: the iteration
        self._state_saver = Checkpoint(objects, saver, filename_pattern=self.state_path.name, n_saved=1)
        self._model_saver = Checkpoint({k: objects[k] for k in self.model_keys}, saver,
                                       filename_pattern=self.model_path.name, n_saved=1)
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load)
        if self.save_interval > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.save_interval), self.save)
        engine.add_event_handler(Events.COMPLETED, self.save)
        if self.max_wall_s:
            engine.add_event_handler(Events.STARTED, self._start_clock)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._check_wall_time)

    def _start_clock(self, engine: Engine) -> None:
        self._t0 = time.monotonic()

    def _check_wall_time(self, engine: Engine) -> None:
        if time.monotonic() - self._t0 > self.max_wall_s:
            self.logger.info(f"max_wall_s={self.max_wall_s} reached at iteration {engine.state.iteration}: "
                             "saving and stopping; rerun the same command to continue")
            engine.terminate()  # COMPLETED still fires, and saves

    def load(self, engine: Engine) -> None:
        """Restore every object of ``save_dict`` from ``checkpoint.pt`` (no-op when it does not exist)."""
        if not self.state_path.is_file():
            return
        try:
            state = torch.load(self.state_path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise RuntimeError(f"{self.state_path}: cannot load the checkpoint to resume from ({e}); "
                               "delete it to start afresh") from e
        max_epochs = engine.state.max_epochs
        for name, obj in self.save_dict.items():
            if name not in state:
                if getattr(obj, "optional_in_checkpoint", False):  # bookkeeping added after the file was written
                    self.logger.warning(f"{self.state_path} has no entry {name!r}; it starts afresh")
                    continue
                raise KeyError(f"{self.state_path} has no entry {name!r} (it has {sorted(state)})")
            try:  # one entry at a time, so an error names the entry
                Checkpoint.load_objects({name: unwrap_module(obj)}, {name: state[name]})
            except (RuntimeError, KeyError, ValueError, TypeError) as e:  # e.g. the network's settings changed since
                raise RuntimeError(f"{self.state_path}: entry {name!r} does not fit this run's {type(obj).__name__} "
                                   f"({str(e)[:300]}); resume with the settings it was trained with, or delete "
                                   "the file to start afresh") from e
        # the configured length wins, so a finished run can be extended by raising num_iterations
        engine.state.max_epochs = max_epochs
        self.logger.info(f"resumed from {self.state_path} at iteration {engine.state.iteration}")

    def save(self, engine: Engine) -> None:
        """Write ``checkpoint.pt`` and ``model.pt`` (each replaced atomically; rank 0 only). Called at the same
        iteration twice (the last interval and the end), it writes once."""
        self._state_saver(engine)
        self._model_saver(engine)
