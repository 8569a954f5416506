"""Rank and world size of the current ``torch.distributed`` process group, read afresh on every call.

``ignite.distributed.get_rank`` / ``get_world_size`` would be the natural choice, but ignite remembers the process
group it finds on its first call in a process: once that group is destroyed (a test that tears its group down, or a
long-lived MONAI Label server that trains more than once), every later call raises instead of answering "not
distributed". These two functions ask ``torch.distributed`` each time instead.
"""

from __future__ import annotations

import torch.distributed as dist

__all__ = ["get_rank", "get_world_size"]


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank, 0 when no process group is initialised."""
    return dist.get_rank() if _initialized() else 0


def get_world_size() -> int:
    """The number of processes in the default group, 1 when no process group is initialised."""
    return dist.get_world_size() if _initialized() else 1
