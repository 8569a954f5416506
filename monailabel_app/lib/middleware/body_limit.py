"""ASGI middleware: a request body may not exceed a fixed number of bytes (HTTP 413).

MONAI Label's endpoints copy every upload to disk in full before any check runs. This refuses a request whose
``Content-Length`` is too large before reading it, and stops a body sent without one (chunked) once it passes the
limit. Uploads come as ``multipart/form-data``; every other body (JSON parameters, url-encoded forms) is parsed
whole into Python objects, several times its size, so it gets a much smaller limit.

An upload is written to the server's temporary folder twice while it is served (Starlette spools the form part to
a file, and MONAI Label copies it). With a ``temp_folder``, an upload is refused (507) when those copies, counted
at its declared length (or at the limit when it declares none) on top of the uploads in flight, would leave less
than ``min_free_bytes`` free on that folder's disk (conf ``min_free_disk_gb``): a full disk there made every
upload, inference and log write fail with a 500.
"""

from __future__ import annotations

import shutil
import threading
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


#: copies of an upload on the temporary folder's disk while it is served
UPLOAD_COPIES = 2


class BodySizeLimit:
    """Args: ``app``: the wrapped ASGI app; ``max_bytes``: the most bytes an upload (a ``multipart/form-data``
    body) may carry; ``max_other_bytes``: the most bytes of any other body (default 1 MiB); ``temp_folder`` and
    ``min_free_bytes``: where uploads are copied, and the free space they must leave there (no check without a
    folder)."""

    def __init__(self, app: Any, max_bytes: int, max_other_bytes: int = 1 << 20, temp_folder: str | None = None,
                 min_free_bytes: int = 0) -> None:
        self.app, self.max_bytes, self.max_other_bytes = app, int(max_bytes), int(max_other_bytes)
        self.temp_folder, self.min_free_bytes = temp_folder, int(min_free_bytes)
        self._lock = threading.Lock()
        self._in_flight = 0  # bytes reserved by the uploads being served

    def _reserve(self, nbytes: int) -> str | None:
        """Reserve ``nbytes`` of the temporary folder's disk, or say why not (nothing reserved then)."""
        with self._lock:
            free = shutil.disk_usage(self.temp_folder).free
            if free - self._in_flight - nbytes < self.min_free_bytes:
                return (f"the server's disk is too full for this upload: {free / 2 ** 30:.1f} GiB free, "
                        f"{(self._in_flight + nbytes) / 2 ** 30:.1f} GiB needed by the uploads being served, and "
                        f"{self.min_free_bytes / 2 ** 30:g} GiB must stay free (--conf min_free_disk_gb)")
            self._in_flight += nbytes
        return None

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
        reserved = 0
        if upload and self.temp_folder:
            reserved = UPLOAD_COPIES * (int(declared) if declared.isdigit() else limit)
            why = self._reserve(reserved)
            if why:
                await JSONResponse({"detail": why}, status_code=507)(scope, receive, send)
                return
        try:
            await self._serve(scope, receive, send, limit, error)
        finally:
            if reserved:
                with self._lock:
                    self._in_flight -= reserved

    async def _serve(self, scope: dict, receive: Any, send: Any, limit: int, error: "BodyTooLarge") -> None:
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
