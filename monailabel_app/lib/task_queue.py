"""MONAI Label's background task queue (training, scoring): what is pending, and cancelling what has not started.

MONAI Label runs each kind of task through one single-worker executor; ``DELETE /train/`` kills the running
process only, so a training queued behind it (``POST /train/`` queues every model) started right after the stop.
A task whose process fails to start (``Popen`` raising in the executor, where nobody reads the error) stays
``SUBMITTED`` for good, and counted as queued it would block automatic scoring and the queue's bound; such tasks
are marked ``ERROR`` (:func:`mark_failed_starts`).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from monailabel.utils.async_tasks import utils as async_tasks

logger = logging.getLogger(__name__)

__all__ = ["pending", "cancel_queued", "forget_finished", "mark_failed_starts"]

#: a queued task older than this, with nothing running or waiting in its executor, never started
START_GRACE_S = 30.0

#: finished tasks of one kind whose status (``GET /train/?all=true``) is kept; MONAI Label keeps every one, with its
#: request, for the server's lifetime
KEEP_FINISHED = 50


def _age_s(task: dict) -> float:
    try:
        return time.time() - datetime.strptime(task.get("start_ts", ""), "%Y-%m-%d %H:%M:%S").timestamp()
    except ValueError:
        return 0.0


def mark_failed_starts(method: str, grace_s: float = START_GRACE_S) -> int:
    """Mark ``ERROR`` the queued ``method`` tasks that can no longer start, and return how many.

    The executor runs tasks in the order they were queued, so a ``SUBMITTED`` task before one that started was
    skipped by a failure; and one older than ``grace_s`` while no process runs and the executor holds no work
    item failed too. (``_work_queue`` is the executor's private queue: the executor offers no public view of it.)
    """
    tasks = list(async_tasks.background_tasks.get(method) or [])
    started = [i for i, t in enumerate(tasks) if t.get("status") != "SUBMITTED"]
    failed = [t for t in tasks[: started[-1]] if t.get("status") == "SUBMITTED"] if started else []
    executor = async_tasks.background_executors.get(method)
    work = getattr(executor, "_work_queue", None)
    idle = not async_tasks.background_processes.get(method) and work is not None and work.empty()
    if idle:
        failed += [t for t in tasks if t.get("status") == "SUBMITTED" and _age_s(t) > grace_s and t not in failed]
    for task in failed:
        task["status"] = "ERROR"
        task["end_ts"] = datetime.today().strftime("%Y-%m-%d %H:%M:%S")
        task["details"] = ["the task's process did not start (see the server log)"]
    if failed:
        logger.warning(f"{len(failed)} queued {method} task(s) never started; marked ERROR")
    return len(failed)


def pending(method: str) -> list[dict]:
    """The ``method`` tasks (``train``, ``scoring``) that are queued (SUBMITTED) or RUNNING; queued tasks that can
    no longer start are marked ``ERROR`` first."""
    mark_failed_starts(method)
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
