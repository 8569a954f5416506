"""A request header as the app behind the middleware reads it.

A request may repeat a header. Starlette and FastAPI read the first value (``Request.headers[name]``); a check that
read the last (``dict(scope["headers"])``) judged another value than the endpoint then used, so a JSON body sent
with a second ``Content-Type: multipart/form-data`` passed the JSON checks and the 1 MiB cap. Every middleware here
reads headers through :func:`header`.
"""

from __future__ import annotations

__all__ = ["header"]


def header(scope: dict, name: bytes, default: bytes | None = b"") -> bytes | None:
    """The first value of header ``name`` (lower-case bytes, as ASGI names them), or ``default``."""
    for key, value in scope.get("headers") or []:
        if key.lower() == name:
            return value
    return default
