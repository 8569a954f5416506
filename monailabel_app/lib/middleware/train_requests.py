"""Checks of ``POST /train`` bodies and ``POST /scoring/<name>`` names before MONAI Label's endpoints start a task.

The stock train endpoint starts a background task with any parameters, so a typo'd key or a wrong type surfaced
only as a failed task (or a 500 with ``run_sync``); an unknown scoring method was a 500.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from fastapi.responses import JSONResponse

from .request_parts import buffer_body, is_json_body, path_parts

__all__ = ["TrainRequestCheck"]


class TrainRequestCheck:
    """ASGI middleware: check a ``POST /train/<model>`` body with that model's trainer before MONAI Label queues it
    (``run_sync`` is refused by ``TaskRequestCheck``, outside), cancel queued trainings on ``DELETE /train/``
    (before MONAI Label stops the running one), and answer 404 to ``POST /scoring/<name>`` for a name not in
    ``scoring_methods``.

    The stock endpoint starts a background task with any parameters, so a typo'd key or a wrong type surfaced only
    as a failed task (or a 500 with ``run_sync``). ``check(model, params)`` raises ``ValueError`` for bad
    parameters; the client then gets a 400 saying which, and nothing is queued. ``model`` is None for
    ``POST /train/`` (every model), whose body is ``{model: params, ...}``.
    """

    def __init__(self, app: Any, check: Any, scoring_methods: Sequence[str] | None = None) -> None:
        self.app, self.check = app, check
        self.scoring_methods = None if scoring_methods is None else set(scoring_methods)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = path_parts(scope)
        if (scope.get("type") == "http" and scope.get("method") == "POST" and path[0] == "scoring" and len(path) > 1
                and self.scoring_methods is not None and path[1] not in self.scoring_methods):
            await JSONResponse({"detail": f"unknown scoring method {path[1]!r}; available: "
                                          f"{sorted(self.scoring_methods)}"}, status_code=404)(scope, receive, send)
            return
        if scope.get("type") == "http" and scope.get("method") == "DELETE" and path == ["train"]:
            from lib.task_queue import cancel_queued

            cancel_queued("train")  # "Stop" stops the queue too; MONAI Label's endpoint then stops the running one
        if scope.get("type") != "http" or scope.get("method") != "POST" or path[0] != "train":
            await self.app(scope, receive, send)
            return
        if not is_json_body(scope):  # FastAPI refuses other bodies itself (422)
            await self.app(scope, receive, send)
            return
        body, replay = await buffer_body(receive)
        error = self._error(path[1] if len(path) > 1 else None, body)
        if error:
            await JSONResponse({"detail": error}, status_code=400)(scope, receive, send)
            return

        await self.app(scope, replay, send)

    def _error(self, model: str | None, body: bytes) -> str | None:
        try:
            params = json.loads(body) if body.strip() else {}
        except ValueError:
            return None  # not JSON: FastAPI answers 422 itself
        except RecursionError:
            return "the train parameters nest too deeply"
        if params is None:
            params = {}
        if not isinstance(params, dict):
            return f"the train parameters must be a JSON object, got {type(params).__name__}"
        try:
            self.check(model, params)
        except ValueError as e:
            return str(e)
        return None
