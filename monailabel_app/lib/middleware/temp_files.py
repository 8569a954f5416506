"""The server's temporary files: a private folder, swept after every request, and what each request owns.

MONAI Label's endpoints copy each upload to ``tempfile.NamedTemporaryFile(...).name`` and delete it in a FastAPI
background task, which never runs when the endpoint raises: every refused upload stayed in ``/tmp``, readable by
every local user, and inference accepted such a path as an image. Here:

- :func:`private_tempdir` points ``tempfile`` at a folder only this user can enter, one per server process, and
  removes the folders of server processes that are gone (``kill -9``);
- :class:`TempFileJanitor` gives each request a folder of its own inside it (``tempfile`` creates the request's
  files there) and removes that folder when the request ends, whether it succeeded or not, so a long request (a
  slow download, a synchronous scoring) cannot keep the refused uploads of others on disk; it then removes every
  other entry that no request still running can own (older than the oldest running request);
- :func:`current_request` tells the code that serves a request when it started and what its query string said, so
  inference can tell this request's own upload from a path a client names.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from .request_parts import query_values

logger = logging.getLogger(__name__)

PREFIX = "ssmis-monailabel-"
#: an entry this much older than the oldest running request's start belongs to a finished request (the margin
#: covers file systems whose timestamps lag the clock by a tick)
MARGIN_S = 1.0


@dataclass(frozen=True)
class RequestInfo:
    """``started``: ``time.time()`` when the request arrived; ``query``: its query parameters (the last value of each,
    blank ones included, as FastAPI reads them)."""

    started: float
    query: dict = field(default_factory=dict)


_REQUEST: contextvars.ContextVar[RequestInfo | None] = contextvars.ContextVar("ssmis_request", default=None)
#: the temporary folder of the request being served (None outside a request)
_REQUEST_DIR: contextvars.ContextVar[str | None] = contextvars.ContextVar("ssmis_request_dir", default=None)
_SYSTEM_GETTEMPDIR = tempfile.gettempdir


def _request_gettempdir() -> str:
    """``tempfile.gettempdir`` inside a request: that request's own folder; elsewhere the usual answer."""
    return _REQUEST_DIR.get() or _SYSTEM_GETTEMPDIR()


def current_request() -> RequestInfo | None:
    """The request being served in this context (``None`` outside a request)."""
    return _REQUEST.get()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def private_tempdir(parent: str | None = None) -> Path:
    """Create this process's temporary folder (mode 0700) under ``parent`` (default the system's), make it
    ``tempfile``'s default, and remove the folders left by dead server processes. Returns the folder."""
    parent = parent or tempfile.gettempdir()
    pattern = re.compile(re.escape(PREFIX) + r"(\d+)-")
    for entry in os.scandir(parent):
        match = pattern.match(entry.name)
        try:
            mine = entry.is_dir(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_uid == os.getuid()
        except OSError:
            continue
        if match and mine and not _alive(int(match.group(1))):
            shutil.rmtree(entry.path, ignore_errors=True)
            logger.info(f"removed {entry.path}, the temporary folder of a server that is no longer running")
    folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=parent))
    tempfile.tempdir = str(folder)
    # every tempfile function finds its folder through this module-level name, so a request's files go to the
    # folder TempFileJanitor made for it (a context variable; the worker threads run in copies of the context)
    tempfile.gettempdir = _request_gettempdir
    return folder


class TempFileJanitor:
    """ASGI middleware: sweep ``folder`` after every HTTP request and record each request's :class:`RequestInfo`.

    Args: ``app``: the wrapped ASGI app; ``folder``: the folder to sweep (the server's private temporary folder).
    """

    def __init__(self, app: Any, folder: str | Path) -> None:
        self.app, self.folder = app, Path(folder)
        self._lock = threading.Lock()
        self._running: dict[int, float] = {}

    def sweep(self) -> int:
        """Remove the entries no running request can own; returns how many were removed."""
        with self._lock:
            horizon = min(self._running.values(), default=time.time()) - MARGIN_S
        removed = 0
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_ctime >= horizon:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                continue
            except OSError as e:
                logger.warning(f"cannot remove temporary entry {entry.path}: {e}")
        return removed

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        # as FastAPI reads them: the last value, blank ones included (``?image=x&image=`` names no image)
        info = RequestInfo(started=time.time(), query=query_values(scope))
        key = id(info)
        with self._lock:
            self._running[key] = info.started
        token = _REQUEST.set(info)
        own = None
        try:
            own = tempfile.mkdtemp(prefix="request-", dir=self.folder)
        except OSError as e:  # the request's files then go to the shared folder, swept as below
            logger.warning(f"cannot make a temporary folder for a request in {self.folder}: {e}")
        dir_token = _REQUEST_DIR.set(own)
        try:
            await self.app(scope, receive, send)
        finally:
            with self._lock:
                self._running.pop(key, None)
            _REQUEST_DIR.reset(dir_token)
            _REQUEST.reset(token)
            if own:
                shutil.rmtree(own, ignore_errors=True)
            self.sweep()


def is_own_upload(path: str | os.PathLike, folder: str | Path) -> bool:
    """Whether ``path`` is a file of the current request: in the request's own temporary folder, or (a request
    without one) in ``folder`` and created during the request."""
    info = current_request()
    if info is None:
        return False
    p = Path(path)
    try:
        resolved = p.resolve(strict=True)
        created = resolved.stat().st_ctime
    except OSError:
        return False
    own = _REQUEST_DIR.get()
    if own:
        return resolved.parent == Path(own).resolve() and resolved.is_file()
    # a file system's timestamp may lag the clock by a tick: allow 50 ms, far below any request's length
    return resolved.parent == Path(folder).resolve() and resolved.is_file() and created >= info.started - 0.05
