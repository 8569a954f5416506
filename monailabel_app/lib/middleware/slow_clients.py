"""ASGI middleware: a client that sends its body, or takes the response, too slowly is cut off.

uvicorn puts no limit on how long a request's body may take to arrive, nor on how long a client may leave a
response unread. A few connections that sent a body a byte at a time, or downloaded nothing, held the worker
threads of the blocking endpoints (and, before the gate waited for the whole body, the inference slots) for good.
Here every request gets at most ``idle_s`` seconds between two chunks of its body, ``body_s`` seconds for the
whole body, and ``idle_s`` seconds for each chunk of the response to be taken; a body or a response that lasts
longer than ``idle_s`` must average ``min_rate``. A body too slow gets a 408; a response not taken is dropped with
its connection.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Dict

from fastapi import HTTPException
from fastapi.responses import JSONResponse

from lib.conf_values import positive_number
from .headers import header

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
    whole body may take from the app's first read (conf ``max_body_s``, default 600: a 512 MiB upload at
    0.9 MB/s); ``min_rate``: bytes per second a body or a response must average once it has lasted ``idle_s``
    (conf ``min_client_rate_kbs``, default 32 KiB/s), so a steady trickle cannot hold a worker thread for hours."""

    def __init__(self, app: Any, idle_s: float = 60.0, body_s: float = 600.0, min_rate: float = 32 * 1024) -> None:
        if not (idle_s > 0 and body_s > 0 and min_rate >= 0):
            raise ValueError(f"--conf client_idle_s and max_body_s must be positive and min_client_rate_kbs at "
                             f"least 0, got {idle_s}, {body_s}, {min_rate / 1024}")
        self.app, self.idle_s, self.body_s, self.min_rate = app, float(idle_s), float(body_s), float(min_rate)

    @staticmethod
    def conf_limits(conf: Dict[str, Any]) -> Dict[str, float]:
        """``idle_s``, ``body_s`` and ``min_rate`` (bytes/s) from ``--conf client_idle_s``, ``max_body_s`` and
        ``min_client_rate_kbs`` (KiB/s, 0 for no rate), the defaults where absent; a bad value names its key."""
        idle_s, body_s = positive_number(conf, "client_idle_s"), positive_number(conf, "max_body_s")
        rate = positive_number(conf, "min_client_rate_kbs", zero=True)
        return {"idle_s": 60.0 if idle_s is None else idle_s, "body_s": 600.0 if body_s is None else body_s,
                "min_rate": 32 * 1024.0 if rate is None else 1024 * rate}

    def _too_slow(self, started: float, now: float, nbytes: int) -> bool:
        """Whether ``nbytes`` since ``started`` average under ``min_rate``, once ``idle_s`` have passed."""
        elapsed = now - started
        return elapsed > self.idle_s and nbytes < self.min_rate * elapsed

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        length = header(scope, b"content-length").strip()
        chunked = b"chunked" in header(scope, b"transfer-encoding").lower()
        # a request without a body is done at once: its one (empty) message is never waited for
        state = {"body_done": not chunked and (not length.isdigit() or int(length) == 0), "body_start": None,
                 "received": 0, "started": False, "send_start": None, "sent": 0}

        async def timed_receive() -> dict:
            if state["body_done"]:  # after the body, receive waits for the disconnect for as long as the response
                return await receive()
            now = loop.time()
            state["body_start"] = state["body_start"] or now  # the clock starts when the app first reads
            left = state["body_start"] + self.body_s - now
            if left <= 0:
                raise ClientTooSlow(f"the request was too slow: the body took longer than {self.body_s:g} s "
                                    "(--conf max_body_s)")
            if self._too_slow(state["body_start"], now, state["received"]):
                raise ClientTooSlow(f"the request was too slow: the body arrived at under "
                                    f"{self.min_rate / 1024:g} KiB/s (--conf min_client_rate_kbs)")
            try:
                message = await asyncio.wait_for(receive(), min(self.idle_s, left))
            except asyncio.TimeoutError:
                why = (f"no part of the body for {self.idle_s:g} s (--conf client_idle_s)" if left > self.idle_s
                       else f"the body took longer than {self.body_s:g} s (--conf max_body_s)")
                raise ClientTooSlow(f"the request was too slow: {why}") from None
            state["received"] += len(message.get("body", b""))
            state["body_done"] = message.get("type") != "http.request" or not message.get("more_body", False)
            return message

        async def timed_send(message: dict) -> None:
            now = loop.time()
            if message.get("type") == "http.response.start":
                state["started"], state["send_start"] = True, now
            elif state["send_start"] is not None and self._too_slow(state["send_start"], now, state["sent"]):
                raise ClientTooSlow(f"the client took the response at under {self.min_rate / 1024:g} KiB/s "
                                    "(--conf min_client_rate_kbs)", sending=True)
            try:
                await asyncio.wait_for(send(message), self.idle_s)
            except asyncio.TimeoutError:
                raise ClientTooSlow(f"the client took no part of the response for {self.idle_s:g} s "
                                    "(--conf client_idle_s)", sending=True) from None
            state["sent"] += len(message.get("body", b""))

        try:
            await self.app(scope, timed_receive, timed_send)
        except Exception as e:  # noqa: BLE001 - only ours is handled; the rest is raised again
            cause = e if isinstance(e, ClientTooSlow) else e.__cause__ or e.__context__
            if not isinstance(cause, ClientTooSlow):
                raise
            logger.warning(f"{scope.get('method')} {scope.get('path')}: {cause.detail}")
            if not state["started"] and not cause.sending:
                try:
                    await asyncio.wait_for(
                        JSONResponse({"detail": cause.detail}, status_code=408)(scope, receive, send), self.idle_s)
                except asyncio.TimeoutError:
                    pass
            # otherwise the response is left unfinished: the server closes the connection
