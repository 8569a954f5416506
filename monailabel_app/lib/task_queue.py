"""MONAI Label's background task queue (training, scoring): what is pending, and cancelling what has not started.

MONAI Label runs each kind of task through one single-worker executor; ``DELETE /train/`` kills the running
process only, so a training queued behind it (``POST /train/`` queues every model) started right after the stop.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from monailabel.utils.async_tasks import utils as async_tasks

logger = logging.getLogger(__name__)

__all__ = ["pending", "cancel_queued", "forget_finished"]

#: finished tasks of one kind whose status (``GET /train/?all=true``) is kept; MONAI Label keeps every one, with its
#: request, for the server's lifetime
KEEP_FINISHED = 50


def pending(method: str) -> list[dict]:
    """The ``method`` tasks (``train``, ``scoring``) that are queued (SUBMITTED) or RUNNING."""
    return [t for t in async_tasks.tasks(method) if t.get("status") in ("SUBMITTED", "RUNNING")]


def cancel_queued(method: str) -> int:
    """Cancel the ``method`` tasks that have not started: their executor is replaced by a fresh one (the running
    task, if any, goes on until it is stopped), and they are marked STOPPED. Returns how many were cancelled."""
    executor = async_tasks.background_executors.get(method)
    if executor is None:
        return 0
    async_tasks.background_executors[method] = ThreadPoolExecutor(max_workers=1)
    executor.shutdown(wait=False, cancel_futures=True)
    queued = [t for t in async_tasks.tasks(method) if t.get("status") == "SUBMITTED"]
    for task in queued:
        task["status"] = "STOPPED"
        task["end_ts"] = datetime.today().strftime("%Y-%m-%d %H:%M:%S")
    if queued:
        logger.info(f"cancelled {len(queued)} queued {method} task(s)")
    return len(queued)


def forget_finished(method: str, keep: int = KEEP_FINISHED) -> int:
    """Drop all but the newest ``keep`` finished ``method`` tasks from MONAI Label's task list (queued and running
    ones stay). Returns how many were dropped."""
    tasks = async_tasks.background_tasks.get(method)
    if not tasks:
        return 0
    finished = [t for t in list(tasks) if t.get("status") not in ("SUBMITTED", "RUNNING")]
    drop = finished[: max(0, len(finished) - keep)]
    for task in drop:  # one at a time, in place: MONAI Label appends to this list from other threads
        try:
            tasks.remove(task)
        except ValueError:
            pass
    return len(drop)
