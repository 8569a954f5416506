"""ASGI middleware: a client that sends its body, or takes the response, too slowly is cut off.

uvicorn puts no limit on how long a request's body may take to arrive, nor on how long a client may leave a
response unread. A few connections that sent a body a byte at a time, or downloaded nothing, held the worker
threads of the blocking endpoints (and, before the gate waited for the whole body, the inference slots) for good.
Here every request gets at most ``idle_s`` seconds between two chunks of its body, ``body_s`` seconds for the
whole body, and ``idle_s`` seconds for each chunk of the response to be taken. A body too slow gets a 408; a
response not taken is dropped with its connection.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse

__all__ = ["ClientTooSlow", "SlowClients"]

logger = logging.getLogger(__name__)


class ClientTooSlow(HTTPException):
    """408: the client did not send its body, or take the response, in time."""

    def __init__(self, detail: str, sending: bool = False) -> None:
        super().__init__(status_code=408, detail=detail)
        self.sending = sending


class SlowClients:
    """Args: ``app``: the wrapped ASGI app; ``idle_s``: the longest wait for the next chunk of a body, or for the
    client to take the next chunk of a response (conf ``client_idle_s``, default 60); ``body_s``: the longest a
    whole body may take to arrive (conf ``max_body_s``, default 600: a 512 MiB upload at 0.9 MB/s)."""

    def __init__(self, app: Any, idle_s: float = 60.0, body_s: float = 600.0) -> None:
        if not (idle_s > 0 and body_s > 0):
            raise ValueError(f"--conf client_idle_s and max_body_s must be positive, got {idle_s}, {body_s}")
        self.app, self.idle_s, self.body_s = app, float(idle_s), float(body_s)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_s
        body_done = started = False

        async def timed_receive() -> dict:
            nonlocal body_done
            if body_done:  # after the body, receive waits for the disconnect for as long as the response lasts
                return await receive()
            left = deadline - loop.time()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, min(self.idle_s, left)))
            except asyncio.TimeoutError:
                why = (f"no part of the body for {self.idle_s:g} s (--conf client_idle_s)" if left > self.idle_s
                       else f"the body took longer than {self.body_s:g} s (--conf max_body_s)")
                raise ClientTooSlow(f"the request was too slow: {why}") from None
            body_done = message.get("type") != "http.request" or not message.get("more_body", False)
            return message

        async def timed_send(message: dict) -> None:
            nonlocal started
            started = started or message.get("type") == "http.response.start"
            try:
                await asyncio.wait_for(send(message), self.idle_s)
            except asyncio.TimeoutError:
                raise ClientTooSlow(f"the client took no part of the response for {self.idle_s:g} s "
                                    "(--conf client_idle_s)", sending=True) from None

        try:
            await self.app(scope, timed_receive, timed_send)
        except Exception as e:  # noqa: BLE001 - only ours is handled; the rest is raised again
            cause = e if isinstance(e, ClientTooSlow) else e.__cause__ or e.__context__
            if not isinstance(cause, ClientTooSlow):
                raise
            logger.warning(f"{scope.get('method')} {scope.get('path')}: {cause.detail}")
            if not started and not cause.sending:
                try:
                    await asyncio.wait_for(JSONResponse({"detail": cause.detail}, status_code=408)(scope, receive, send),
                                           self.idle_s)
                except asyncio.TimeoutError:
                    pass
            # otherwise the response is left unfinished: the server closes the connection
