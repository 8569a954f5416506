"""ASGI middleware: JSON answers to clients on other machines without the server's folders.

MONAI Label puts absolute server paths in what it answers: ``path`` in an image's or label's info and in the next
sample of ``/activelearning``, every entry of ``/datastore/?output=train``, and the file names in error messages.
A client on this machine may use them (Slicer loads the next sample from ``path`` when that file exists on its own
disk, and downloads it otherwise); a client elsewhere learns only where the server keeps its data and code.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Awaitable, Callable, Mapping

from .headers import header
from .loopback import LOOPBACK

__all__ = ["HideServerPaths", "hide_paths"]


def hide_paths(value: Any, roots: Mapping[str, str]) -> Any:
    """``value`` (parsed JSON) with every ``roots`` folder in its strings and keys (plain or as a ``file://`` URI)
    replaced by what stands for it (``""``: paths inside that folder become relative to it), and without the ``path``
    entries that hold an absolute path (a client would try a relative one on its own disk). Longer roots first."""
    ordered = sorted(((os.path.normpath(r), s) for r, s in roots.items()), key=lambda rs: -len(rs[0]))
    # a root (or its file:// URI) where no path continues into it from the left (not /mnt/data for /data), then a
    # separator (a path inside it) or anything that cannot continue a folder name (a sentence's full stop included)
    patterns = [(re.compile(r"(?<![\w.~/-])(?:file://)?" + re.escape(root) + r"(/|(?=$|[\s'\",;:)\]}]|\.(?![\w-])))"),
                 stand_in)
                for root, stand_in in ordered]

    def text(s: str) -> str:
        for pattern, stand_in in patterns:
            s = pattern.sub(lambda m: (stand_in + "/" if stand_in else "") if m.group(1) else (stand_in or "."), s)
        return s

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            return {text(k): walk(x) for k, x in v.items()
                    if not (k == "path" and isinstance(x, str) and os.path.isabs(x))}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return text(v) if isinstance(v, str) else v

    return walk(value)


class HideServerPaths:
    """Rewrites ``application/json`` responses to clients that are not on this machine with :func:`hide_paths`.
    Other responses (images, multipart inference results) pass unchanged and unbuffered. A JSON response is held
    whole before it is sent: Starlette renders one in memory anyway, so this holds no more than the app did.

    Args:
        app: the ASGI app.
        roots: absolute server folder -> what a remote client sees instead (``""`` for the studies folder).
    """

    def __init__(self, app: Callable[..., Awaitable[None]], roots: Mapping[str, str]) -> None:
        self.app = app
        self.roots = {str(k): v for k, v in roots.items() if k}

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        host = (scope.get("client") or ("127.0.0.1", 0))[0]
        if scope.get("type") != "http" or host in LOOPBACK:
            return await self.app(scope, receive, send)
        start: dict | None = None
        chunks: list[bytes] = []

        async def rewriting_send(message: dict) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                kind = (header(message, b"content-type") or b"").split(b";")[0].strip().lower()
                if kind == b"application/json":
                    start = message
                    return
            elif message["type"] == "http.response.body" and start is not None:
                chunks.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                body = b"".join(chunks)
                try:
                    body = json.dumps(hide_paths(json.loads(body), self.roots), ensure_ascii=False,
                                      separators=(",", ":")).encode()
                except ValueError:
                    pass  # not JSON after all: nothing to rewrite
                headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
                message = {"type": "http.response.body", "body": body}
            await send(message)

        await self.app(scope, receive, rewriting_send)
