"""HTTP errors for bad requests, and the ASGI pieces the stock MONAI Label server lacks.

MONAI Label's endpoints turn every exception, ``MONAILabelException`` and a ``json.loads`` failure on a malformed
``params`` form field included, into a 500. Its FastAPI app has no hook for apps to add exception handlers before it
starts, so :func:`install_handlers` adds them to the running app (``lib.middleware.install_middleware`` adds the
request guards). A ``params`` or ``info`` form field that is JSON but not an object is refused before MONAI Label's
endpoint uses it (``lib.middleware.FormFieldCheck``).
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


def install_handlers(fastapi_app: Any) -> None:
    """Answer bad requests with a 4xx that says what was wrong: MONAI Label's exceptions, malformed JSON parameters
    and its 500 for an inference request without an image. The request guards come with
    ``lib.middleware.install_middleware``."""
    from monailabel.interfaces.exception import MONAILabelException
    from starlette.exceptions import HTTPException as StarletteHTTPException

    fastapi_app.exception_handlers[StarletteHTTPException] = _http_error
    fastapi_app.exception_handlers[json.JSONDecodeError] = _json_error
    fastapi_app.exception_handlers[MONAILabelException] = _monailabel_error
