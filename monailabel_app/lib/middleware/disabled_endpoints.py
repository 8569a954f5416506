"""ASGI middleware: MONAI Label endpoints this app does not serve answer 404, before their handlers run.

- ``/infer/wsi*``: whole-slide (pathology) inference tiles a slide into tasks sized by the request, before any
  check of the app's, and opens any path a client names; this app serves volumes.
- ``/logs``: the server log holds request parameters and paths, and ``/logs/gpu`` runs ``nvidia-smi`` on the event
  loop; read the log file on the server instead.
- ``/datastore/dataset``: writes a zip of the whole datastore for every request.
- ``PUT /model/*``: uploading weights through the API (the app publishes weights from its own trainings, or an
  operator copies ``model.pt`` into ``model_dir``).
- ``/session``: sessions are off (``SSMISApp._load_sessions``), but MONAI Label's endpoint stored a whole upload
  before saying so.
- ``/proxy``: DICOMweb proxying (held a whole body in memory, then failed); this app's datastore is a local folder.
- ``/ohif`` and ``/static/ohif``: the OHIF web viewer's files (this app's client is 3D Slicer); ``/ohif/..`` and
  ``/ohif/.`` were 500s.
- ``POST /reload``: rebuilt the app without the set-up the server does at start-up (its private temporary folder),
  so inference on uploaded files failed until a restart.
"""

from __future__ import annotations

from .request_guard import RequestGuard
from .request_parts import path_parts

__all__ = ["DisabledEndpoints"]


def disabled(method: str, path: list[str]) -> str | None:
    """Why ``method`` on ``path`` (its segments) is not served, or None."""
    if len(path) >= 2 and path[0] == "infer" and path[1].startswith("wsi"):
        return "whole-slide inference is not served by this app (it segments volumes: POST /infer/<model>)"
    if path[0] == "logs":
        return "the server log is not served over HTTP; read it on the server (<app>/logs/app.log)"
    if path[:2] == ["datastore", "dataset"]:
        return "downloading the whole datastore is not served; copy the studies folder on the server"
    if path[0] == "session":
        return "sessions are not served by this app: upload images with PUT /datastore/image"
    if path[0] == "proxy":
        return "DICOMweb proxying is not served: this app's datastore is a local folder of NIfTI volumes"
    if path[0] == "ohif" or path[:2] == ["static", "ohif"]:
        return "the OHIF web viewer is not served by this app; use 3D Slicer's MONAI Label module"
    if path == ["reload"]:
        return "reloading the app over HTTP is not served; restart the server to load new settings"
    if path[0] == "model" and method == "PUT":
        return ("uploading weights is not served: the app publishes its trainings' weights; an operator may copy a "
                "model.pt into model_dir/<model>/")
    return None


class DisabledEndpoints(RequestGuard):
    """Args: ``app``: the wrapped ASGI app."""

    status_code = 404

    def refusal(self, scope: dict) -> str | None:
        return disabled(scope.get("method", ""), path_parts(scope))
