"""ASGI middleware: a request body may not exceed a fixed number of bytes (HTTP 413).

MONAI Label's endpoints copy every upload to disk in full before any check runs. This refuses a request whose
``Content-Length`` is too large before reading it, and stops a body sent without one (chunked) once it passes the
limit. Uploads come as ``multipart/form-data``; every other body (JSON parameters, url-encoded forms) is parsed
whole into Python objects, several times its size, so it gets a much smaller limit.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse

from .headers import header


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when the body passes the limit. An ``HTTPException``, so FastAPI's body parsing
    passes it on (it turns other errors into a 400) and the client gets a 413."""

    def __init__(self, limit: int, upload: bool = True) -> None:
        super().__init__(status_code=413, detail=(
            f"the request body exceeds this server's upload limit of {limit:,} bytes (--conf max_upload_mb)" if upload
            else f"the request body exceeds {limit:,} bytes, this server's limit for a body that is not a file "
                 "upload (multipart/form-data)"))


class BodySizeLimit:
    """Args: ``app``: the wrapped ASGI app; ``max_bytes``: the most bytes an upload (a ``multipart/form-data``
    body) may carry; ``max_other_bytes``: the most bytes of any other body (default 1 MiB)."""

    def __init__(self, app: Any, max_bytes: int, max_other_bytes: int = 1 << 20) -> None:
        self.app, self.max_bytes, self.max_other_bytes = app, int(max_bytes), int(max_other_bytes)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        upload = header(scope, b"content-type").split(b";")[0].strip().lower() == b"multipart/form-data"
        limit = self.max_bytes if upload else self.max_other_bytes
        error = BodyTooLarge(limit, upload)
        declared = header(scope, b"content-length").strip()
        if declared.isdigit() and int(declared) > limit:
            await JSONResponse({"detail": error.detail}, status_code=413)(scope, receive, send)
            return
        seen = 0

        async def bounded_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise error
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
