"""HTTP errors for bad requests, and the ASGI pieces the stock MONAI Label server lacks.

MONAI Label's endpoints turn every exception, ``MONAILabelException`` and a ``json.loads`` failure on a malformed
``params`` form field included, into a 500. Its FastAPI app has no hook for apps to add exception handlers before it
starts, so :func:`install` adds them (and the loopback guard) to the running app and has Starlette rebuild its
middleware stack, which it does lazily on the next request.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse

logger = logging.getLogger(__name__)

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class RequestError(HTTPException):
    """A client error (4xx) with a message that says what was wrong."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(status_code=status_code, detail=detail)


def bad_request(detail: str) -> RequestError:
    return RequestError(400, detail)


def not_found(detail: str) -> RequestError:
    return RequestError(404, detail)


def conflict(detail: str) -> RequestError:
    return RequestError(409, detail)


def check_id(value: Any, what: str) -> str:
    """``value`` as a safe file-name stem (letters, digits, ``.``, ``_``, ``-``; no ``..``), else a 400."""
    if not isinstance(value, str) or not _SAFE_ID.match(value) or ".." in value:
        raise bad_request(f"invalid {what} {value!r}: use letters, digits, '.', '_' and '-' only "
                          "(no path separators or '..')")
    return value


class LoopbackOnly:
    """ASGI middleware: answer 403 to any client that is not on this machine.

    ``monailabel start_server`` binds 0.0.0.0 unless given ``--host``; this keeps the app local in that case.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") in ("http", "websocket"):
            host = (scope.get("client") or ("127.0.0.1", 0))[0]
            if host not in LOOPBACK:
                response = JSONResponse({"detail": f"this server answers local clients only (client {host}); "
                                         "start it with --host 0.0.0.0 or --conf allow_remote true to serve "
                                         "others"}, status_code=403)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class TrainRequestCheck:
    """ASGI middleware: check a ``POST /train/<model>`` body with that model's trainer before MONAI Label queues it.

    The stock endpoint starts a background task with any parameters, so a typo'd key or a wrong type surfaced only
    as a failed task (or a 500 with ``run_sync``). ``check(model, params)`` raises ``ValueError`` for bad
    parameters; the client then gets a 400 saying which, and nothing is queued. ``model`` is None for
    ``POST /train/`` (every model), whose body is ``{model: params, ...}``.
    """

    def __init__(self, app: Any, check: Any) -> None:
        self.app, self.check = app, check

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "").strip("/").split("/")
        if scope.get("type") != "http" or scope.get("method") != "POST" or path[0] != "train":
            await self.app(scope, receive, send)
            return
        messages, more = [], True
        while more:
            message = await receive()
            messages.append(message)
            more = message.get("type") == "http.request" and message.get("more_body", False)
        error = self._error(path[1] if len(path) > 1 else None, b"".join(m.get("body", b"") for m in messages))
        if error:
            await JSONResponse({"detail": error}, status_code=400)(scope, receive, send)
            return

        async def replay() -> dict:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    def _error(self, model: str | None, body: bytes) -> str | None:
        try:
            params = json.loads(body) if body.strip() else None
        except ValueError:
            return None  # not JSON: FastAPI answers 422 itself
        if params is None:
            return None
        if not isinstance(params, dict):
            return f"the train parameters must be a JSON object, got {type(params).__name__}"
        try:
            self.check(model, params)
        except ValueError as e:
            return str(e)
        return None


def _json_error(request: Any, exc: json.JSONDecodeError) -> JSONResponse:
    return JSONResponse({"detail": f"malformed JSON in the request parameters: {exc}"}, status_code=400)


def _monailabel_error(request: Any, exc: Exception) -> JSONResponse:
    from monailabel.interfaces.exception import ImageNotFoundException, MONAILabelError

    msg = getattr(exc, "msg", str(exc))
    if isinstance(exc, ImageNotFoundException):
        return JSONResponse({"detail": msg}, status_code=404)
    error = getattr(exc, "error", None)
    code = 400 if error in (MONAILabelError.INVALID_INPUT, MONAILabelError.APP_INIT_ERROR) else 500
    return JSONResponse({"detail": msg}, status_code=code)


def _params_type_error(request: Any, exc: TypeError) -> JSONResponse:
    """400 for a ``params`` (or ``info``) form field that is valid JSON but not an object: MONAI Label's endpoints use it as a
    dict (``request.update(p)``, ``save_params["user"] = …``) and fail with a ``TypeError``. Every other
    ``TypeError`` is re-raised, a server error as before."""
    tb, frame = exc.__traceback__, None
    while tb is not None:  # the innermost MONAI Label endpoint frame
        if "monailabel/endpoints/" in tb.tb_frame.f_code.co_filename.replace("\\", "/"):
            frame = tb.tb_frame
        tb = tb.tb_next
    for field in ("params", "info"):  # the form field's name: ``info`` in the image/label info endpoints
        raw = frame.f_locals.get(field) if frame is not None else None
        if isinstance(raw, str):
            try:
                parsed = json.loads(raw) if raw else {}
            except ValueError:
                parsed = {}
            if not isinstance(parsed, dict):
                return JSONResponse({"detail": f"the {field} field must be a JSON object, got "
                                     f"{type(parsed).__name__}: {raw:.80}"}, status_code=400)
    raise exc


def install(fastapi_app: Any, loopback_only: bool, check_train: Any = None) -> None:
    """Add the 4xx exception handlers (and, if asked, :class:`LoopbackOnly`, and :class:`TrainRequestCheck` with
    ``check_train``) to a running FastAPI app."""
    from monailabel.interfaces.exception import MONAILabelException
    from starlette.middleware import Middleware

    fastapi_app.exception_handlers[json.JSONDecodeError] = _json_error
    fastapi_app.exception_handlers[MONAILabelException] = _monailabel_error
    fastapi_app.exception_handlers[TypeError] = _params_type_error
    if check_train is not None and not any(m.cls is TrainRequestCheck for m in fastapi_app.user_middleware):
        # innermost, inside MONAI Label's CORS middleware, so its 400s carry the CORS headers too
        fastapi_app.user_middleware.append(Middleware(TrainRequestCheck, check=check_train))
    if loopback_only and not any(m.cls is LoopbackOnly for m in fastapi_app.user_middleware):
        fastapi_app.user_middleware.insert(0, Middleware(LoopbackOnly))
        logger.warning("started without --host: answering clients on this machine only "
                       "(pass --host to choose the interface, or --conf allow_remote true)")
    fastapi_app.middleware_stack = None  # Starlette rebuilds it, with the above, on the next request
