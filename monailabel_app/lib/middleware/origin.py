"""ASGI middleware: refuse requests that a web page on another origin makes through the annotator's browser.

MONAI Label's CORS settings allow every origin, with credentials and every method, so any page the annotator opens
could upload, delete or train through the server. CORS only decides whether the page may *read* an answer: a
cross-origin form ``POST`` is still carried out. So this refuses (403) every request whose ``Origin`` header is
neither the server itself nor an origin the operator allowed (``--conf cors_origins``). Clients that are not
browsers (3D Slicer, ``MONAILabelClient``, curl) send no ``Origin`` and are not affected.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable, Sequence
from urllib.parse import urlsplit

from .headers import header
from .request_guard import RequestGuard


def allowed_origins(conf_value: str | None, env_origins: Iterable[Any] = ()) -> list[str]:
    """The allowed origins: ``--conf cors_origins`` (a comma list of ``scheme://host[:port]``) plus MONAI Label's
    ``MONAI_LABEL_CORS_ORIGINS``; none by default. ``*`` is refused: it would let any page drive the server."""
    origins = [o.strip().rstrip("/") for o in (conf_value or "").split(",") if o.strip()]
    origins += [str(o).strip().rstrip("/") for o in env_origins if str(o).strip()]
    for origin in origins:
        parts = urlsplit(origin)
        if origin == "*" or parts.scheme not in ("http", "https") or not parts.hostname or parts.path:
            raise ValueError(f"--conf cors_origins: {origin!r} is not an origin such as http://localhost:3000 "
                             "('*' is not allowed)")
    return sorted(set(origins))


def _is_literal_host(host: str) -> bool:
    """An IP address or ``localhost``: a Host header that DNS rebinding cannot forge for the same origin."""
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


class OriginGuard(RequestGuard):
    """Args: ``app``: the wrapped ASGI app; ``origins``: the origins allowed besides the server's own.

    Same-origin requests (the server's own pages) pass when the ``Host`` header is an IP address or ``localhost``;
    a host name is trusted only when listed in ``origins``, since a rebound DNS name would otherwise pass too.
    """

    def __init__(self, app: Any, origins: Sequence[str] = ()) -> None:
        super().__init__(app)
        self.origins = set(origins)

    def allows(self, origin: str, host: str) -> bool:
        if origin.rstrip("/") in self.origins:
            return True
        parts = urlsplit(origin)
        return bool(parts.netloc) and parts.netloc == host and _is_literal_host(parts.hostname or "")

    def refusal(self, scope: dict) -> str | None:
        origin = header(scope, b"origin", None)
        if origin is None:
            return None
        origin_s, host = origin.decode("latin-1"), header(scope, b"host").decode("latin-1")
        if self.allows(origin_s, host):
            return None
        return (f"cross-origin requests from {origin_s!r} are not allowed; start the server with --conf "
                "cors_origins <origin> to allow a web app")
