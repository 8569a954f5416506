"""ssmis MONAI Label app: serve the semi-supervised bundles to 3D Slicer and retrain them from the annotation loop.

    monailabel start_server --app monailabel_app --studies DIR --host 127.0.0.1 \
        --conf models transmedseg_la,fixed_dynamic_pl_la

Conf keys: ``models`` (comma list of bundle names, or ``all``; default ``all``), ``model_dir`` (where each model's
``model.pt``, runs and score cache live; default ``<app>/model``), ``bundles`` (the bundles folder; default the
repository's ``bundles/``), ``extra_config`` (merged on top of each bundle's train and inference configs),
``device``, ``allow_remote`` (answer clients on other machines when started without ``--host``; default false).
Nothing is downloaded, at start-up or later.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict

APP_DIR = Path(__file__).resolve().parent
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))

from monailabel.interfaces.app import MONAILabelApp  # noqa: E402
from monailabel.interfaces.datastore import Datastore  # noqa: E402
from monailabel.interfaces.tasks.infer_v2 import InferTask  # noqa: E402
from monailabel.interfaces.tasks.scoring import ScoringMethod  # noqa: E402
from monailabel.interfaces.tasks.strategy import Strategy  # noqa: E402
from monailabel.interfaces.tasks.train import TrainTask  # noqa: E402
from monailabel.tasks.activelearning.random import Random  # noqa: E402

from lib import errors  # noqa: E402
from lib.activelearning import Uncertainty  # noqa: E402
from lib.configs import CONFIGS  # noqa: E402
from lib.datastore import SafeLocalDatastore  # noqa: E402

logger = logging.getLogger(__name__)


def _true(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


class SSMISApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: Dict[str, str]) -> None:
        conf = dict(conf or {})
        bundles_dir = Path(conf.get("bundles", APP_DIR.parent / "bundles")).resolve()
        model_dir = Path(conf.get("model_dir", APP_DIR / "model")).resolve()
        requested = [m.strip() for m in conf.get("models", "all").split(",") if m.strip()]
        names = sorted(CONFIGS) if requested in ([], ["all"]) else requested
        unknown = [m for m in names if m not in CONFIGS]
        if unknown:
            raise ValueError(f"--conf models: unknown model(s) {unknown}; available: {sorted(CONFIGS)} or 'all'")
        self.models = {}
        for name in names:
            config = CONFIGS[name]()
            config.init(name, str(model_dir), conf, None, bundles_dir=str(bundles_dir))
            self.models[name] = config
        logger.info(f"models: {list(self.models)}; weights under {model_dir}")
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="ssmis",
                         description="Semi-supervised segmentation (TransMedSeg, fixed/dynamic pseudo-labels)",
                         version="0.1.0")

    # ---- tasks ---------------------------------------------------------------------------------------------------
    def init_datastore(self) -> Datastore:
        num_classes = max([c.num_classes for c in self.models.values()] or [2])
        return SafeLocalDatastore(self.studies, num_classes=num_classes, extensions=("*.nii.gz", "*.nii"),
                                  auto_reload=_true(self.conf.get("auto_reload", "false")))

    def init_infers(self) -> Dict[str, InferTask]:
        return {name: c.infer() for name, c in self.models.items()}

    def init_trainers(self) -> Dict[str, TrainTask]:
        return {name: c.trainer() for name, c in self.models.items()}

    def init_strategies(self) -> Dict[str, Strategy]:
        return {"uncertainty": Uncertainty([c.cache for c in self.models.values()]), "random": Random()}

    def init_scoring_methods(self) -> Dict[str, ScoringMethod]:
        return {f"{name}_uncertainty": c.scoring_method() for name, c in self.models.items()}

    # ---- request checks: a clear 4xx instead of the stock server's 500 -----------------------------------------
    def server_mode(self, mode: bool) -> None:
        super().server_mode(mode)
        if mode:
            from monailabel.app import app as fastapi_app

            told = any(a in ("--host", "-i") or a.startswith("--host=") for a in sys.argv)
            errors.install(fastapi_app, loopback_only=not told and not _true(self.conf.get("allow_remote")),
                           check_train=self._check_train_request)

    def _check_train_request(self, model: str | None, params: Dict[str, Any]) -> None:
        """``ValueError`` if ``params`` would make the training fail (unknown models are answered later).

        ``model`` None is ``POST /train/``: MONAI Label then runs every trainer with its own section of the body,
        ``params[name]``, updated by the whole body (so the other sections come along; ``parse`` skips them)."""
        if model is not None:
            if model in self._trainers:
                self._trainers[model].parse(params)
            return
        for name, trainer in self._trainers.items():
            own = params.get(name) or {}
            if not isinstance(own, dict):
                raise ValueError(f"train request: the section for {name!r} must be a JSON object, got {own!r:.60}")
            trainer.parse({**own, **params})

    def bundle_path(self, model: str) -> str | None:
        # called by the /train/ and /scoring/ endpoints before they start a task: reject unknown models there
        if model and model not in self.models:
            raise errors.not_found(f"unknown model {model!r}; available: {sorted(self.models)}")
        return None

    def infer(self, request: Dict[str, Any], datastore: Datastore | None = None) -> Dict[str, Any]:
        model = request.get("model")
        if model not in self._infers:
            raise errors.not_found(f"unknown model {model!r}; available: {sorted(self._infers)}")
        image = request.get("image")
        if not isinstance(image, str) or not image:
            raise errors.bad_request("no image given")
        if not self._is_request_file(image):  # else a datastore id
            errors.check_id(image, "image id")
            if not (datastore or self.datastore()).get_image_uri(image):
                raise errors.not_found(f"image {image!r} is not in the datastore")
        return super().infer(request, datastore)

    def _is_request_file(self, image: str) -> bool:
        """Whether ``image`` is a file the server itself made for this request: an upload (a temporary file) or
        the volume of a Slicer session. Any other path is refused, so a client cannot read arbitrary files."""
        path = Path(image).resolve()
        if not path.is_file():
            return False
        if path.parent == Path(tempfile.gettempdir()).resolve() and path.name.startswith("tmp"):
            return True
        sessions = self.sessions()
        return bool(sessions) and Path(sessions.store_path).resolve() in path.parents

    def train(self, request: Dict[str, Any]) -> Dict[str, Any]:
        model = request.get("model")
        if model not in self._trainers:
            raise errors.not_found(f"unknown model {model!r}; available: {sorted(self._trainers)}")
        return super().train(request)

    def next_sample(self, request: Dict[str, Any]) -> Dict[str, Any]:
        strategy = request.get("strategy") or "uncertainty"
        if strategy not in self._strategies:
            raise errors.not_found(f"unknown strategy {strategy!r}; available: {sorted(self._strategies)}")
        return super().next_sample({**request, "strategy": strategy})
