"""The order of the request guards in front of the MONAI Label app, outermost first, and their installation."""

from __future__ import annotations

import logging
from typing import Any, Dict, Sequence

from .body_limit import BodySizeLimit
from .disabled_endpoints import DisabledEndpoints
from .form_fields import FormFieldCheck
from .loopback import LoopbackOnly
from .origin import OriginGuard
from .query_values import QueryValues
from .server_paths import HideServerPaths
from .slow_clients import SlowClients
from .task_requests import TaskRequestCheck
from .temp_files import TempFileJanitor
from .train_requests import TrainRequestCheck
from .worker_threads import WorkerThreads

__all__ = ["install_middleware"]

logger = logging.getLogger(__name__)


def install_middleware(fastapi_app: Any, loopback_only: bool, check_train: Any = None,
                       scoring_methods: Sequence[str] = (), origins: Sequence[str] = (),
                       max_upload_bytes: int | None = None, temp_folder: str | None = None, gate: Any = None,
                       max_parallel_infer: int = 2, client_limits: Dict[str, float] | None = None,
                       min_free_bytes: int = 0, server_roots: Dict[str, str] | None = None) -> None:
    """Put the request guards in front of a running FastAPI app (MONAI Label's has no hook to add them before it
    starts): Starlette rebuilds its middleware stack, lazily, on the next request.

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
    from starlette.middleware import Middleware

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
