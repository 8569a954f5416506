"""Base ASGI middleware: answer a request that a check refuses (403 by default), before anything else sees it."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse


class RequestGuard:
    """Subclasses implement :meth:`refusal` and may set ``status_code``; ``app`` is the wrapped ASGI app."""

    status_code = 403

    def __init__(self, app: Any) -> None:
        self.app = app

    def refusal(self, scope: dict) -> str | None:
        """Why this HTTP or websocket request is refused, or ``None`` to let it through."""
        raise NotImplementedError

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") in ("http", "websocket"):
            reason = self.refusal(scope)
            if reason:
                await JSONResponse({"detail": reason}, status_code=self.status_code)(scope, receive, send)
                return
        await self.app(scope, receive, send)
