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
good (blocking automatic scoring and the queue), so a task body holds at most ``MAX_TASK_BODY`` bytes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Dict

from fastapi.responses import JSONResponse

from .request_parts import buffer_body, is_json_body, path_parts, query_flag

__all__ = ["TaskRequestCheck"]

#: the most bytes of a task request's JSON body (413 beyond): far below Linux's 128 KiB for one argument
MAX_TASK_BODY = 32 * 1024

#: the first path segment -> MONAI Label's task kind (None: not a task, but a body to check)
METHODS = {"train": "train", "scoring": "scoring", "batch": "batch_infer", "activelearning": None}


def _refusal(kind: str, body: Dict[str, Any], max_workers: int) -> str | None:
    """Why a task body (or one model's section of it) is refused, or None."""
    for where, params in [("", body)] + [(f" (section {k!r})", v) for k, v in body.items() if isinstance(v, dict)]:
        if "bundle_path" in params:
            return f"bundle_path{where}: set by the server, not by a request"
        if params.get("gpus", "all") != "all":
            return f"gpus={params['gpus']!r}{where}: this server chooses its devices (--conf device); send 'all' or nothing"
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
        self._locks: Dict[str, asyncio.Lock] = {}

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
        if is_json_body(scope):  # other bodies: FastAPI refuses them itself (422), so they are not read here
            raw, receive = await buffer_body(receive)
            if method and len(raw) > MAX_TASK_BODY:
                await self._answer(413, f"the {method} request's body is {len(raw):,} bytes; a task request holds at "
                                        f"most {MAX_TASK_BODY:,} (it is passed to the task's process on its command "
                                        "line)", scope, receive, send)
                return
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = None  # not JSON: the endpoint answers
            reason = _refusal(kind, body, self.max_workers) if isinstance(body, dict) else None
            if reason:
                await self._answer(400, reason, scope, receive, send)
                return
        queues = method in ("train", "scoring") and (query_flag(scope, "enqueue") or len(path) == 1)
        if not queues:
            await self.app(scope, receive, send)
            return
        from lib.task_queue import pending

        # checked and queued under one lock, so requests arriving together cannot all pass the count
        async with self._locks.setdefault(method, asyncio.Lock()):
            if len(pending(method)) >= self.max_queued:
                await self._answer(429, f"{self.max_queued} {method} tasks are queued or running already; try again "
                                        "when one has finished", scope, receive, send)
                return
            await self.app(scope, receive, send)

    @staticmethod
    async def _answer(status: int, detail: str, scope: dict, receive: Any, send: Any) -> None:
        await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)
