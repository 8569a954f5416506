"""Reading a whole request body in an ASGI middleware, and handing the same messages on to the app."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

__all__ = ["buffer_body"]


async def buffer_body(receive: Any) -> tuple[bytes, Callable[[], Awaitable[dict]]]:
    """The body of the request (its size is bounded by ``BodySizeLimit``, outside) and a ``receive`` for the
    wrapped app that replays the messages read."""
    messages, more = [], True
    while more:
        message = await receive()
        messages.append(message)
        more = message.get("type") == "http.request" and message.get("more_body", False)
    body = b"".join(m.get("body", b"") for m in messages)

    async def replay() -> dict:
        return messages.pop(0) if messages else await receive()

    return body, replay
