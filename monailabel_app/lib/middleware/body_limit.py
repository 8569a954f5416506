"""ASGI middleware: a request body may not exceed a fixed number of bytes (HTTP 413).

MONAI Label's endpoints copy every upload to disk in full before any check runs. This refuses a request whose
``Content-Length`` is too large before reading it, and stops a body sent without one (chunked) once it passes the
limit.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when the body passes the limit. An ``HTTPException``, so FastAPI's body parsing
    passes it on (it turns other errors into a 400) and the client gets a 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"the request body exceeds this server's upload limit of "
                                                 f"{limit:,} bytes (--conf max_upload_mb)")


class BodySizeLimit:
    """Args: ``app``: the wrapped ASGI app; ``max_bytes``: the most bytes a request body may carry."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").strip()
        if declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": BodyTooLarge(self.max_bytes).detail}, status_code=413)(scope, receive, send)
            return
        seen = 0

        async def bounded_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        started = False

        async def tracked_send(message: dict) -> None:
            nonlocal started
            started = started or message.get("type") == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracked_send)
        except BodyTooLarge as e:  # raised where nothing turned it into a response
            if started:
                raise
            await JSONResponse({"detail": e.detail}, status_code=413)(scope, receive, send)
