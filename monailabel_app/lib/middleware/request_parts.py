"""Parts of a raw ASGI request that several middlewares read the same way: the path's segments, a query flag as
FastAPI would parse it, whether the body is JSON, and the whole body (bounded) with a replay for the app."""

from __future__ import annotations

import email.message
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs

from .body_limit import BodyTooLarge
from .headers import header

__all__ = ["buffer_body", "is_json_body", "is_true", "path_parts", "query_flag", "query_value", "query_values",
           "route_path"]

#: what pydantic reads as False; it reads ``1``, ``on``, ``t``, ``true``, ``y``, ``yes`` (any case) as True and
#: refuses the rest, so anything not listed here must be treated as True
FALSE_VALUES = ("", "0", "off", "f", "false", "n", "no")


def is_true(value: Any) -> bool:
    """Whether a query value could mean True to FastAPI (``--conf`` switches: ``lib.conf_values.switch``)."""
    return str(value).strip().lower() not in FALSE_VALUES


def route_path(scope: dict) -> str:
    """The path the app's router matches: ``scope["path"]`` less the server's ``root_path``
    (``monailabel start_server --root_path``). uvicorn puts the root path in front of every request's path, and the
    router routes ``/api/logs`` and ``/logs`` alike, so a check on ``scope["path"]`` alone would let ``/api/logs``
    through. (Starlette strips it the same way, in a private helper, hence not imported.)"""
    path, root = scope.get("path", ""), scope.get("root_path", "").rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        return path[len(root):]
    return path


def path_parts(scope: dict) -> list[str]:
    """The routed path's segments: ``/train/m/`` -> ``["train", "m"]`` (uvicorn has decoded it already)."""
    return route_path(scope).strip("/").split("/")


def query_values(scope: dict) -> dict[str, str]:
    """The query parameters as FastAPI reads them: the last value of each, blank ones included. Any other reading of
    ``?x=1&x=0`` lets a check judge a value the endpoint never sees."""
    parsed = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    return {k: v[-1] for k, v in parsed.items()}


def query_value(scope: dict, name: str) -> str | None:
    """The query parameter ``name`` as FastAPI reads it (:func:`query_values`); None when absent."""
    return query_values(scope).get(name)


def query_flag(scope: dict, name: str) -> bool:
    """Whether the query parameter ``name`` is given with a value FastAPI would read as True."""
    value = query_value(scope, name)
    return value is not None and is_true(value)


def is_json_body(scope: dict) -> bool:
    """Whether FastAPI could parse the body as JSON: no content type, or one that ``email.message`` reads as
    ``application/json`` or ``application/*+json``, read the way FastAPI reads it (a byte-wise strip kept
    ``\\x85`` or ``\\xa0`` after the type, which FastAPI's parse drops, so such a body skipped these checks)."""
    value = header(scope, b"content-type").decode("latin-1")
    if not value:
        return True
    message = email.message.Message()
    message["content-type"] = value
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


async def buffer_body(receive: Any, max_bytes: int = 1 << 20) -> tuple[bytes, Callable[[], Awaitable[dict]]]:
    """The request's body and a ``receive`` for the wrapped app that replays the messages read; raises
    :class:`BodyTooLarge` (413) past ``max_bytes``, the limit of a body that is not an upload."""
    messages, more, size = [], True, 0
    while more:
        message = await receive()
        messages.append(message)
        size += len(message.get("body", b""))
        if size > max_bytes:
            raise BodyTooLarge(max_bytes, upload=False)
        more = message.get("type") == "http.request" and message.get("more_body", False)
    body = b"".join(m.get("body", b"") for m in messages)

    async def replay() -> dict:
        return messages.pop(0) if messages else await receive()

    return body, replay
