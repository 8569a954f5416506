"""ASGI middleware: what a client may put in the JSON body of a request that starts a background task
(``POST /train``, ``/scoring``, ``/batch/infer``) or asks for the next sample (``POST /activelearning``), checked
before MONAI Label sees it (HTTP 400, or 429 for a full queue).

MONAI Label's task launcher copies the body into the task's request and reads some keys as server settings:
``bundle_path`` is put on the task process's ``PYTHONPATH`` (a client could name a folder, or an uploaded file
that is also a zip, for the task to import code from), ``gpus`` becomes ``CUDA_VISIBLE_DEVICES``; batch inference
saves a label under any ``label_tag`` (``final`` overwrites the annotators' labels), and ``run_sync`` runs a
training or a batch inference in the server process, outside the compute gate. ``?enqueue=true``, ``POST /train/``
and ``POST /scoring/`` (every model) queue tasks without bound, and MONAI Label keeps every finished task, with its
request, in memory (here the newest ``lib.task_queue.KEEP_FINISHED``). A task's request travels to its process as
one command-line argument, which Linux caps at 128 KiB: a longer one failed to start and stayed ``SUBMITTED`` for
good (blocking automatic scoring and the queue), so a task body holds at most ``MAX_TASK_BODY`` bytes. A scoring
with ``run_sync`` runs in the server process and cannot be stopped, so one runs at a time (429 for another), leaving
the other inference slots to inference.

Every request here is served in a worker thread with an event loop of its own (``WorkerThreads``), so the locks are
``threading`` locks, polled without blocking that loop, and a request waits at most ``LOCK_WAIT_S`` for one (503).
An ``asyncio.Lock`` shared between those loops left a waiter that was never woken.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Dict

from fastapi.responses import JSONResponse

from .request_parts import buffer_body, is_json_body, path_parts, query_flag

__all__ = ["TaskRequestCheck"]

#: the most bytes of a task request's JSON body (413 beyond): far below Linux's 128 KiB for one argument
MAX_TASK_BODY = 32 * 1024

#: the longest a request waits for another request of its kind to finish queueing (503 after)
LOCK_WAIT_S = 30.0

#: the first path segment -> MONAI Label's task kind (None: not a task, but a body to check)
METHODS = {"train": "train", "scoring": "scoring", "batch": "batch_infer", "activelearning": None}


#: the request key that names a task's model (or scoring method): MONAI Label lays the body over the request,
#: so a body naming another would run a task other than the one the path named and the checks judged
NAME_KEYS = {"train": "model", "batch": "model", "scoring": "method"}


def _refusal(kind: str, body: Dict[str, Any], max_workers: int, named: str | None = None) -> str | None:
    """Why a task body (or one model's section of it) is refused, or None. ``named``: the model or scoring method
    the path names (None for ``POST /train/`` and ``POST /scoring/``, which run every one)."""
    key = NAME_KEYS.get(kind)
    if key and key in body and (named is None or body[key] != named):
        return (f"{key}={body[key]!r:.60} in the body: the path names the {key} "
                f"({'/' + kind + '/<' + key + '>' if named is None else repr(named)}), not the body")
    for section, params in body.items():
        if key and isinstance(params, dict) and key in params and params[key] != section:
            return f"{key}={params[key]!r:.60} in the section {section!r}: a section runs the {key} it is named after"
    for where, params in [("", body)] + [(f" (section {k!r})", v) for k, v in body.items() if isinstance(v, dict)]:
        if "bundle_path" in params:
            return f"bundle_path{where}: set by the server, not by a request"
        if params.get("gpus", "all") != "all":
            return (f"gpus={params['gpus']!r}{where}: this server chooses its devices (--conf device); "
                    "send 'all' or nothing")
    if kind == "batch":
        if body.get("label_tag", "original") != "original":
            return (f"label_tag={body['label_tag']!r}: batch inference saves to the 'original' tag only; annotators' "
                    "labels ('final') come from PUT /datastore/label")
        images = body.get("images", "all")
        if not (images in ("all", "labeled", "unlabeled")
                or isinstance(images, list) and all(isinstance(i, str) for i in images)):
            return f"images={images!r:.80}: 'all', 'labeled', 'unlabeled' or a list of datastore image ids"
        workers = body.get("max_workers", 1)
        if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool)
                                    or not 0 <= workers <= max_workers):
            return f"max_workers={workers!r}: at most {max_workers} (--conf max_parallel_infer)"
    if kind == "activelearning":
        client = body.get("client_id")
        if client is not None and not (isinstance(client, str) and len(client) <= 256):
            return "client_id: a string of at most 256 characters"
    return None


class TaskRequestCheck:
    """Args: ``app``: the wrapped ASGI app; ``max_queued``: the most tasks of one kind queued or running when a
    request queues one (``?enqueue=true``, or ``POST /train/`` and ``POST /scoring/`` for every model);
    ``max_workers``: the most inference threads a batch inference may ask for (``SSMISApp.batch_infer`` also
    clamps what MONAI Label would choose)."""

    def __init__(self, app: Any, max_queued: int = 4, max_workers: int = 2) -> None:
        self.app, self.max_queued, self.max_workers = app, int(max_queued), int(max_workers)
        self._locks: Dict[str, threading.Lock] = {"train": threading.Lock(), "scoring": threading.Lock()}
        self._sync_scoring = threading.Lock()

    @staticmethod
    @asynccontextmanager
    async def _held(lock: threading.Lock, wait_s: float) -> AsyncIterator[bool]:
        """Yields whether ``lock`` was taken within ``wait_s``, polling so that no event loop blocks; releases it."""
        deadline = time.monotonic() + wait_s
        taken = lock.acquire(blocking=False)
        while not taken and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            taken = lock.acquire(blocking=False)
        try:
            yield taken
        finally:
            if taken:
                lock.release()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = path_parts(scope)
        kind = path[0]
        if scope.get("type") != "http" or scope.get("method") != "POST" or kind not in METHODS:
            await self.app(scope, receive, send)
            return
        method = METHODS[kind]
        if method:
            from lib.task_queue import forget_finished

            forget_finished(method)  # before another task joins the list
        if kind in ("train", "batch") and query_flag(scope, "run_sync"):
            await self._answer(400, f"run_sync is not supported for {method}: it would run in the server process for "
                                    f"its whole length; start it without run_sync and poll GET /{'/'.join(path[:2])}",
                               scope, receive, send)
            return
        json_body = is_json_body(scope)
        queues = method in ("train", "scoring") and (query_flag(scope, "enqueue") or len(path) == 1)
        # a JSON body is read to be checked; a queueing request's body of any type is read before its lock is taken,
        # so a client sending it slowly cannot hold the lock (FastAPI would read it under the lock); other bodies are
        # refused by FastAPI itself (422) and not read here
        if json_body or queues:
            raw, receive = await buffer_body(receive)
            if method and len(raw) > MAX_TASK_BODY:
                await self._answer(413, f"the {method} request's body is {len(raw):,} bytes; a task request holds at "
                                        f"most {MAX_TASK_BODY:,} (it is passed to the task's process on its command "
                                        "line)", scope, receive, send)
                return
        if json_body:
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = None  # not JSON: the endpoint answers
            except RecursionError:
                await self._answer(400, "the request's JSON body nests too deeply", scope, receive, send)
                return
            at = 2 if kind == "batch" else 1  # /batch/infer/<model>, /train/<model>, /scoring/<method>
            named = path[at] if len(path) > at else None
            reason = _refusal(kind, body, self.max_workers, named) if isinstance(body, dict) else None
            if reason:
                await self._answer(400, reason, scope, receive, send)
                return
        if method == "scoring" and query_flag(scope, "run_sync"):
            await self._sync_scoring_call(scope, receive, send)
            return
        if not queues:
            await self.app(scope, receive, send)
            return
        from lib.task_queue import pending

        # checked and queued under one lock, so requests arriving together cannot all pass the count
        async with self._held(self._locks[method], LOCK_WAIT_S) as taken:
            if not taken:
                await self._answer(503, f"another {method} request is being queued and did not finish within "
                                        f"{LOCK_WAIT_S:g} s; try again", scope, receive, send)
                return
            if len(pending(method)) >= self.max_queued:
                await self._answer(429, f"{self.max_queued} {method} tasks are queued or running already; try again "
                                        "when one has finished", scope, receive, send)
                return
            await self.app(scope, receive, send)

    async def _sync_scoring_call(self, scope: dict, receive: Any, send: Any) -> None:
        """Runs a ``run_sync`` scoring alone (429 while another runs). The lock is freed just before the answer's
        last body message goes out: the endpoint runs in a worker thread and the app coroutine returns only after
        the client has the whole answer, so freeing it on return gave a client's next ``run_sync`` a spurious 429."""
        if not self._sync_scoring.acquire(blocking=False):
            await self._answer(429, "a synchronous scoring (run_sync) is running already; wait for it, or start this "
                                    "one without run_sync and poll GET /scoring/", scope, receive, send)
            return
        held = [True]

        def free() -> None:
            if held[0]:
                held[0] = False
                self._sync_scoring.release()

        async def send_freeing(message: dict) -> None:
            if message.get("type") == "http.response.body" and not message.get("more_body", False):
                free()
            await send(message)

        try:
            await self.app(scope, receive, send_freeing)
        finally:
            free()

    @staticmethod
    async def _answer(status: int, detail: str, scope: dict, receive: Any, send: Any) -> None:
        await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)
