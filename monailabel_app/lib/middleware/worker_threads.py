"""ASGI middleware: serve the blocking endpoints in worker threads, the heavy ones bounded in number and waiting time.

Every MONAI Label endpoint is an ``async def`` that calls blocking code (inference, reading volumes, scoring)
without awaiting, so one inference held the whole server: 16 parallel requests were answered one after another,
and ``/info/`` waited 31 s behind them. :class:`WorkerThreads` runs the rest of the ASGI stack for such a request
in a worker thread with an event loop of its own, passing ``receive`` and ``send`` back to the server's loop, so
that loop keeps answering. A request waits at most the gate's ``wait_s`` for a thread (then 503). Requests that
compute (``POST`` to inference and scoring) or decode a volume (``PUT`` of an image or a label) also pass a
:class:`ComputeGate`, an upload once its whole body has arrived (a slow upload holds a thread, never a slot): at
most ``slots`` run at once, and one that cannot start within ``wait_s`` gets a 503 instead of waiting without bound.
"""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

import anyio
import anyio.to_thread
from fastapi import HTTPException
from fastapi.responses import JSONResponse
from python_multipart.multipart import parse_options_header  # Starlette's parse, so "a form" means the same

from .compute_gate import ComputeGate
from .headers import header
from .request_parts import route_path

#: path prefixes whose endpoints block; the rest (``/info/``, ``/train/`` status, the docs) stay on the loop
BLOCKING = ("/infer", "/scoring", "/datastore", "/activelearning", "/batch", "/train")
#: prefixes whose ``POST`` requests compute and pass the gate
COMPUTING = ("/infer", "/scoring")
#: the routes whose ``PUT`` requests are uploads of a volume: checking one decodes it whole (a 600 KB gzip of a
#: 512^3 volume with a scale factor is 1 GiB of float64), so they pass the gate too, once their body is in
UPLOADS = ("/datastore", "/datastore/image", "/datastore/label")
#: bodies the endpoints parse as forms, reading them whole before they compute
FORM_TYPES = (b"multipart/form-data", b"application/x-www-form-urlencoded")


class ServerBusy(HTTPException):
    """503: no worker thread, or no compute slot, within the gate's ``wait_s``."""

    def __init__(self, detail: str) -> None:
        super().__init__(status_code=503, detail=detail)


class WorkerThreads:
    """Args: ``app``: the wrapped ASGI app; ``gate``: the :class:`ComputeGate`; ``threads``: the most requests
    served in worker threads at once (the others wait for a thread); ``blocking``/``computing``: path prefixes;
    ``uploads``: routes whose ``PUT`` is a volume upload (gated like a computation)."""

    def __init__(self, app: Any, gate: ComputeGate, threads: int = 16, blocking: Sequence[str] = BLOCKING,
                 computing: Sequence[str] = COMPUTING, uploads: Sequence[str] = UPLOADS) -> None:
        self.app, self.gate, self.threads = app, gate, int(threads)
        self.blocking, self.computing, self.uploads = tuple(blocking), tuple(computing), tuple(uploads)
        self.limiter = anyio.CapacityLimiter(self.threads)
        self._free_threads = asyncio.Semaphore(self.threads)  # waited on with a timeout, unlike the limiter

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = route_path(scope)
        if scope.get("type") != "http" or not path.startswith(self.blocking):
            await self.app(scope, receive, send)
            return
        try:
            if self._free_threads.locked():  # (wait_for with a timeout of 0 would cancel even a free acquire)
                await asyncio.wait_for(self._free_threads.acquire(), max(self.gate.wait_s, 1e-3))
            else:
                await self._free_threads.acquire()
        except asyncio.TimeoutError:
            await JSONResponse({"detail": f"the server is busy: all {self.threads} worker threads are serving "
                                          f"requests and none finished within {self.gate.wait_s:.0f} s; try again "
                                          "later"}, status_code=503)(scope, receive, send)
            return
        try:
            await self._serve_in_thread(scope, receive, send, path)
        finally:
            self._free_threads.release()

    def _take_slot(self) -> None:
        """Take a compute slot within the gate's wait, or raise :class:`ServerBusy` (blocks the calling thread)."""
        if not self.gate.acquire():
            raise ServerBusy(f"the server is busy: {self.gate.slots} inferences or scorings are running and none "
                             f"finished within {self.gate.wait_s:.0f} s; try again later (--conf max_parallel_infer, "
                             "infer_wait_s)")

    async def _serve_in_thread(self, scope: dict, receive: Any, send: Any, path: str) -> None:
        method = scope.get("method")
        gated = (method == "POST" and path.startswith(self.computing)
                 or method == "PUT" and (path.rstrip("/") or "/") in self.uploads)
        # a form body (an upload) is read whole by the endpoint before it computes, so its slot waits for the body;
        # any other request (no body, JSON) may compute without reading its body, so it takes the slot first
        form = parse_options_header(header(scope, b"content-type"))[0] in FORM_TYPES
        server_loop = asyncio.get_running_loop()
        slot = {"held": False, "started": False}

        # ``receive`` and ``send`` run on the server's loop; the worker's loop awaits them without blocking, since
        # a streamed response (a file download) listens for the disconnect while it sends
        async def thread_receive() -> dict:
            message = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(receive(), server_loop))
            body_done = message.get("type") == "http.request" and not message.get("more_body", False)
            if gated and form and body_done and not slot["held"] and not slot["started"]:
                self._take_slot()  # the whole upload is here (this blocks the worker's own loop only)
                slot["held"] = True
            return message

        async def thread_send(message: dict) -> None:
            slot["started"] = slot["started"] or message.get("type") == "http.response.start"
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(send(message), server_loop))

        def serve() -> None:
            try:
                if gated and not form:
                    self._take_slot()
                    slot["held"] = True
                asyncio.run(self.app(scope, thread_receive, thread_send))
            except ServerBusy as busy:  # before the app, or in a middleware that reads the body first
                if slot["started"]:
                    raise
                asyncio.run(JSONResponse({"detail": busy.detail}, status_code=503)(scope, thread_receive,
                                                                                   thread_send))
            finally:
                if slot["held"]:
                    self.gate.release()

        await anyio.to_thread.run_sync(serve, limiter=self.limiter)
