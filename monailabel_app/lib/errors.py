"""HTTP errors for bad requests, and the ASGI pieces the stock MONAI Label server lacks.

MONAI Label's endpoints turn every exception, ``MONAILabelException`` and a ``json.loads`` failure on a malformed
``params`` form field included, into a 500. Its FastAPI app has no hook for apps to add exception handlers before it
starts, so :func:`install` adds them (and the loopback guard) to the running app and has Starlette rebuild its
middleware stack, which it does lazily on the next request. A ``params`` or ``info`` form field that is JSON but
not an object is refused before MONAI Label's endpoint uses it (``lib.middleware.FormFieldCheck``).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Dict, Sequence

from fastapi import HTTPException
from fastapi.responses import JSONResponse

logger = logging.getLogger(__name__)

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class RequestError(HTTPException):
    """A client error (4xx, or 507 for a full datastore) with a message that says what was wrong."""

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


def _http_error(request: Any, exc: Any) -> JSONResponse:
    """FastAPI's answer to an ``HTTPException``, except that MONAI Label's 500 for an inference request without
    an image (a client error) becomes a 400."""
    status, detail = exc.status_code, exc.detail
    if status == 500 and str(detail).startswith("Neither Image nor File"):
        status, detail = 400, "no image given: pass a datastore image id (?image=<id>) or upload a file"
    return JSONResponse({"detail": detail}, status_code=status, headers=getattr(exc, "headers", None))


def install(fastapi_app: Any, loopback_only: bool, check_train: Any = None, scoring_methods: Sequence[str] = (),
            origins: Sequence[str] = (),
            max_upload_bytes: int | None = None, temp_folder: str | None = None, gate: Any = None,
            max_parallel_infer: int = 2, client_limits: Dict[str, float] | None = None,
            min_free_bytes: int = 0, server_roots: Dict[str, str] | None = None) -> None:
    """Add the 4xx exception handlers and the request guards to a running FastAPI app.

    The middleware, outermost first: ``SlowClients`` (``client_limits``: its ``idle_s``, ``body_s`` and ``min_rate``,
    from ``SlowClients.conf_limits``), ``LoopbackOnly`` (if ``loopback_only``; otherwise ``HideServerPaths`` with
    ``server_roots``, for the clients on other machines), ``OriginGuard`` (requests from web pages of other
    ``origins`` are refused), ``DisabledEndpoints`` (MONAI Label endpoints not served: 404), ``QueryValues``
    (query values its endpoints fail on: 400), a ``CORSMiddleware`` for ``origins`` only (MONAI Label's own, which
    allows every origin with credentials, is removed), ``BodySizeLimit`` (``max_upload_bytes``; uploads must leave
    ``min_free_bytes`` free on the disk of ``temp_folder``),
    ``FormFieldCheck`` (``params``/``info`` form fields must be JSON objects), ``TempFileJanitor`` (sweeps
    ``temp_folder``), ``WorkerThreads`` (blocking endpoints off the event loop, the computing ones through
    ``gate``), ``TaskRequestCheck`` (task bodies: no ``bundle_path``/``gpus``, batch inference to the ``original``
    tag with at most ``max_parallel_infer`` workers, a bounded ``enqueue``) and :class:`TrainRequestCheck` (with
    ``check_train``)."""
    from fastapi.middleware.cors import CORSMiddleware
    from monailabel.interfaces.exception import MONAILabelException
    from starlette.middleware import Middleware

    from lib.middleware import (BodySizeLimit, DisabledEndpoints, FormFieldCheck, HideServerPaths, LoopbackOnly,
                                OriginGuard, QueryValues, SlowClients, TaskRequestCheck, TempFileJanitor,
                                TrainRequestCheck, WorkerThreads)

    from starlette.exceptions import HTTPException as StarletteHTTPException

    fastapi_app.exception_handlers[StarletteHTTPException] = _http_error
    fastapi_app.exception_handlers[json.JSONDecodeError] = _json_error
    fastapi_app.exception_handlers[MONAILabelException] = _monailabel_error
    stack = [m for m in fastapi_app.user_middleware if m.cls is not CORSMiddleware
             and m.cls not in (SlowClients, LoopbackOnly, HideServerPaths, OriginGuard, DisabledEndpoints, QueryValues,
                               BodySizeLimit, FormFieldCheck, TempFileJanitor, WorkerThreads, TaskRequestCheck,
                               TrainRequestCheck)]
    stack.append(Middleware(SlowClients, **(client_limits or {})))
    if loopback_only:
        stack.append(Middleware(LoopbackOnly))
        logger.warning("started without --host: answering clients on this machine only "
                       "(pass --host to choose the interface, or --conf allow_remote true)")
    else:
        stack.append(Middleware(HideServerPaths, roots=server_roots or {}))
    stack.append(Middleware(OriginGuard, origins=list(origins)))
    stack.append(Middleware(DisabledEndpoints))
    stack.append(Middleware(QueryValues))
    if origins:
        stack.append(Middleware(CORSMiddleware, allow_origins=list(origins), allow_credentials=False,
                                allow_methods=["GET", "POST", "PUT", "DELETE"], allow_headers=["*"]))
    if max_upload_bytes:
        stack.append(Middleware(BodySizeLimit, max_bytes=max_upload_bytes, temp_folder=temp_folder,
                                min_free_bytes=min_free_bytes))
    stack.append(Middleware(FormFieldCheck))
    if temp_folder:
        stack.append(Middleware(TempFileJanitor, folder=temp_folder))
    if gate is not None:
        stack.append(Middleware(WorkerThreads, gate=gate))
    stack.append(Middleware(TaskRequestCheck, max_workers=max_parallel_infer))
    if check_train is not None:
        stack.append(Middleware(TrainRequestCheck, check=check_train, scoring_methods=list(scoring_methods)))
    fastapi_app.user_middleware[:] = stack
    fastapi_app.middleware_stack = None  # Starlette rebuilds it, with the above, on the next request
