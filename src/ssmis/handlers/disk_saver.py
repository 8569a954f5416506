"""ignite's ``DiskSaver`` with the two guarantees this project's checkpoints need on top."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

from ignite.handlers import DiskSaver

from ..utils.atomic import atomic_replace
from ..utils.distributed import get_rank

__all__ = ["AtomicDiskSaver"]


class AtomicDiskSaver(DiskSaver):
    """:class:`ignite.handlers.DiskSaver` (``atomic=True``, an existing folder allowed) that differs in two ways,
    both needed to rerun a killed training or read its files as another user:

    - **Replacing never deletes first.** ``ignite.handlers.Checkpoint`` removes the file it supersedes *before* it
      writes the new one, so with a fixed file name (``checkpoint.pt``, ``model.pt``) a kill between the two leaves
      no checkpoint at all. Here a removal waits until the next file is written, and a removal of the very name
      about to be written is dropped: the rename replaces it.
    - **Ordinary permissions, flushed.** ignite's atomic write goes through a ``NamedTemporaryFile`` (mode 0600,
      then 0644 whatever the umask) and is not fsynced; here the write is :func:`ssmis.utils.atomic.atomic_replace`
      (fsync, then the mode ``open`` would give, or the mode of the file replaced).

    Only the rank that saves (``save_on_rank``, default 0) writes or removes.
    """

    def __init__(self, dirname: str | os.PathLike, save_on_rank: int = 0, **kwargs: Any) -> None:
        super().__init__(dirname, atomic=True, create_dir=True, require_empty=False, save_on_rank=save_on_rank,
                         **kwargs)
        self._pending_removal: set[str] = set()

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        self._pending_removal.discard(filename)  # the rename below replaces it
        super().__call__(checkpoint, filename, metadata)
        if get_rank() == self.save_on_rank:
            for name in sorted(self._pending_removal):
                (self.dirname / name).unlink(missing_ok=True)
        self._pending_removal.clear()

    def _save_func(self, checkpoint: Mapping, path: Path, func: Callable) -> None:
        atomic_replace(lambda tmp: func(checkpoint, tmp, **self.kwargs), path)

    def remove(self, filename: str) -> None:
        """Deferred: done after the next file is written (never, for the name written next)."""
        self._pending_removal.add(filename)
