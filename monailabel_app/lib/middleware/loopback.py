"""ASGI middleware: answer 403 to any client that is not on this machine."""

from __future__ import annotations

from .request_guard import RequestGuard

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class LoopbackOnly(RequestGuard):
    """``monailabel start_server`` binds 0.0.0.0 unless given ``--host``; this keeps the app local in that case."""

    def refusal(self, scope: dict) -> str | None:
        host = (scope.get("client") or ("127.0.0.1", 0))[0]
        if host in LOOPBACK:
            return None
        return (f"this server answers local clients only (client {host}); start it with --host 0.0.0.0 or "
                "--conf allow_remote true to serve others")
