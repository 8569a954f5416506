"""ssmis MONAI Label app: serve the semi-supervised bundles to 3D Slicer and retrain them from the annotation loop.

    monailabel start_server --app monailabel_app --studies DIR --host 127.0.0.1 \
        --conf models transmedseg_la,fixed_dynamic_pl_la

Conf keys: ``models`` (comma list of bundle names of one task, or ``all``: every LA model; default ``all``),
``model_dir`` (where each model's ``model.pt``, runs and score cache live; default ``<app>/model``), ``bundles`` (the
bundles folder; default the repository's ``bundles/``), ``extra_config`` (merged on top of each bundle's train and
inference configs), ``device``, ``allow_remote`` (answer clients on other machines when started without ``--host``;
default false), ``cors_origins`` (web origins allowed to call the server; default none), ``max_upload_mb`` (default 512)
and ``max_voxels`` (default 512³) per uploaded volume, ``max_parallel_infer`` (default 2) and ``infer_wait_s`` (default
120): inferences and synchronous scorings at once, and how long one waits for a turn before a 503;
``max_train_iterations`` (default 100,000), ``max_batch_size`` (64) and ``max_batch_voxels`` (512³): the most a
training request may ask for (``lib.trainers.TrainLimits``); ``max_datastore_gb`` (default 64) and
``min_free_disk_gb`` (2): the disk images and labels may take (``lib.datastore.StorageLimits``; the floor holds for
the temporary copies of uploads too, ``lib.middleware.BodySizeLimit``);
``client_idle_s`` (default 60), ``max_body_s`` (600) and ``min_client_rate_kbs`` (32; 0: none): how long a client may
pause while sending a body or taking a response, take for a whole body, and the rate it must keep
(``lib.middleware.SlowClients``). An image is also refused when it would pass
``max_voxels`` on a served model's grid (resampled or resized). Sessions (``/session/``), whole-slide inference,
``/logs``, the datastore zip, weight uploads and OHIF are off (``lib.middleware.DisabledEndpoints``). Nothing is
downloaded, at start-up or later.
"""

from __future__ import annotations

import logging
import os
import sys
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

from lib import errors, task_queue  # noqa: E402
from lib.activelearning import RandomSample, Uncertainty  # noqa: E402
from lib.configs import CONFIGS, served_models  # noqa: E402
from lib.datastore import SafeLocalDatastore, StorageLimits  # noqa: E402
from lib.middleware import (ComputeGate, SlowClients, allowed_origins, install_middleware, is_own_upload,  # noqa: E402
                            private_tempdir)
from lib.conf_values import switch  # noqa: E402
from lib.volumes import VolumeLimits  # noqa: E402

logger = logging.getLogger(__name__)


class SSMISApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: Dict[str, str]) -> None:
        conf = dict(conf or {})
        bundles_dir = Path(conf.get("bundles", APP_DIR.parent / "bundles")).resolve()
        model_dir = Path(conf.get("model_dir", APP_DIR / "model")).resolve()
        self.server_roots = {str(bundles_dir): "<bundles>", str(model_dir): "<model_dir>", str(APP_DIR): "<app>"}
        self.limits = VolumeLimits.from_conf(conf)
        self.storage = StorageLimits.from_conf(conf)
        from monailabel.config import settings

        self.origins = allowed_origins(conf.get("cors_origins"), settings.MONAI_LABEL_CORS_ORIGINS)
        self.temp_folder: Path | None = None
        self.gate = ComputeGate.from_conf(conf)
        self.gate_size = self.gate.slots
        self.client_limits = SlowClients.conf_limits(conf)
        names = served_models(conf.get("models"))
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
        dims = sorted({c.predictor.spatial_dims for c in self.models.values()})
        if len(dims) > 1:
            raise ValueError(f"--conf models: the served models mix {dims}D inputs; serve models of one kind")
        predictors = [c.predictor for c in self.models.values()]

        def grid_check(header: Any, name: str) -> None:  # an upload must fit every served model's grid
            for predictor in predictors:
                predictor.check_grid(header, name)

        return SafeLocalDatastore(self.studies, num_classes=num_classes, extensions=("*.nii.gz", "*.nii"),
                                  auto_reload=switch(self.conf, "auto_reload", False), limits=self.limits,
                                  spatial_dims=dims[0] if dims else 3, grid_check=grid_check,
                                  storage=self.storage)

    def _load_sessions(self, load: bool = False) -> None:
        """Sessions stay off: the Slicer workflow this app serves does not use them, and MONAI Label's session store
        unpacks client archives without checking member paths and serves whatever path a session records."""
        return None

    def init_infers(self) -> Dict[str, InferTask]:
        return {name: c.infer() for name, c in self.models.items()}

    def init_trainers(self) -> Dict[str, TrainTask]:
        return {name: c.trainer() for name, c in self.models.items()}

    def init_strategies(self) -> Dict[str, Strategy]:
        return {"uncertainty": Uncertainty([c.cache for c in self.models.values()]), "random": RandomSample()}

    def init_scoring_methods(self) -> Dict[str, ScoringMethod]:
        return {f"{name}_uncertainty": c.scoring_method() for name, c in self.models.items()}

    # ---- request checks: a clear 4xx instead of the stock server's 500 -----------------------------------------
    def server_mode(self, mode: bool) -> None:
        super().server_mode(mode)
        if mode:
            from monailabel.app import app as fastapi_app

            told = any(a in ("--host", "-i") or a.startswith("--host=") for a in sys.argv)
            self.temp_folder = private_tempdir()
            errors.install_handlers(fastapi_app)
            install_middleware(fastapi_app, loopback_only=not told and not switch(self.conf, "allow_remote", False),
                               check_train=self._check_train_request, scoring_methods=list(self._scoring_methods),
                               origins=self.origins,
                               max_upload_bytes=self.limits.max_upload_bytes, temp_folder=str(self.temp_folder),
                               gate=self.gate, max_parallel_infer=self.gate_size, client_limits=self.client_limits,
                               min_free_bytes=self.storage.min_free_bytes, server_roots=self._server_roots())

    def _server_roots(self) -> Dict[str, str]:
        """The server folders a remote client sees replaced (``HideServerPaths``): the studies (paths in it become
        relative), the bundles, the weights, the app, the temporary folder and Python's (the environment's and the
        installation's under it); each as given and resolved."""
        roots = {self.studies: "", **self.server_roots, str(self.temp_folder or ""): "<tmp>", sys.prefix: "<python>",
                 sys.base_prefix: "<python>"}
        return {**{os.path.realpath(r): s for r, s in roots.items() if r}, **{r: s for r, s in roots.items() if r}}

    def async_scoring(self, method: str | None, params: Dict[str, Any] | None = None) -> Dict[str, Any]:
        """MONAI Label queues a scoring run after every Next Sample, training and start-up: one subprocess per
        method each time, so they piled up behind each other. Here a new round starts only when no scoring is
        queued or running."""
        task_queue.forget_finished("scoring")  # these rounds never pass TaskRequestCheck
        running = task_queue.pending("scoring")
        if running:
            logger.info(f"scoring already queued or running ({len(running)} task(s)): not queueing another round")
            return {}
        return super().async_scoring(method, params)

    def _check_train_request(self, model: str | None, params: Dict[str, Any]) -> None:
        """``ValueError`` if ``params`` would make the training fail, or the datastore has too few labels for it
        (unknown models are answered later).

        ``model`` None is ``POST /train/``: MONAI Label then runs every trainer with its own section of the body,
        ``params[name]``, updated by the whole body (so the other sections come along; ``parse`` skips them)."""
        n_labeled = len(self.datastore().datalist())
        if model is not None:
            if model in self._trainers:
                trainer = self._trainers[model]
                trainer.check(trainer.parse(params), n_labeled)
            return
        for name, trainer in self._trainers.items():
            own = params.get(name) or {}
            if not isinstance(own, dict):
                raise ValueError(f"train request: the section for {name!r} must be a JSON object, got {own!r:.60}")
            trainer.check(trainer.parse({**own, **params}), n_labeled)

    def bundle_path(self, model: str) -> str | None:
        """Called by MONAI Label's task launcher (/train, /scoring, /batch/infer) before it starts a task: an unknown
        model is a 404 there. The folder returned replaces any ``bundle_path`` in the request, and the launcher puts
        it on the task process's ``PYTHONPATH``: the app's own folder, which the task imports anyway, so no
        client-named folder ever gets there (``TaskRequestCheck`` also refuses the key)."""
        if model and model not in self.models:
            raise errors.not_found(f"unknown model {model!r}; available: {sorted(self.models)}")
        return str(APP_DIR)

    def infer(self, request: Dict[str, Any], datastore: Datastore | None = None) -> Dict[str, Any]:
        model = request.get("model")
        if model not in self._infers:
            raise errors.not_found(f"unknown model {model!r}; available: {sorted(self._infers)}")
        image = request.get("image")
        if not isinstance(image, str) or not image:
            raise errors.bad_request("no image given: pass a datastore image id (?image=<id>) or upload a file")
        if request.get("save_label") and request.get("label_tag", "original") != "original":
            raise errors.bad_request(f"label_tag={request.get('label_tag')!r}: a prediction is saved to the "
                                     "'original' tag only; annotators' labels ('final') come from PUT /datastore/label")
        if self._is_own_upload(image):
            return super().infer(request, datastore)
        errors.check_id(image, "image id")  # a path a client names is refused: only datastore images
        store = datastore or self.datastore()
        uri = store.get_image_uri(image)
        if not uri:
            raise errors.not_found(f"image {image!r} is not in the datastore")
        # MONAI Label reads an id that names a file in the server's working directory as that file's path (and then
        # saves no label): hand it the datastore's own path, and save the label here as it would
        result = super().infer({**request, "image": uri, "save_label": False}, store)
        if request.get("save_label") and result.get("file") and os.path.exists(result["file"]):
            result["label"] = store.save_label(image, result["file"], "original",
                                               {"model": model, "params": result.get("params")})
        return result

    def batch_infer(self, request: Dict[str, Any], datastore: Datastore | None = None) -> Dict[str, Any]:
        """MONAI Label's batch inference, with its labels saved to the ``original`` tag only and at most
        ``max_parallel_infer`` images at once (MONAI Label takes a quarter of the CPUs when none is asked for;
        ``TaskRequestCheck`` refuses larger requests with a message)."""
        tag = request.get("label_tag", "original")
        if tag != "original":
            raise errors.bad_request(f"label_tag={tag!r}: batch inference saves to the 'original' tag only")
        images = request.get("images")
        if isinstance(images, list):  # named images: each once (a list may repeat one id 25,000 times)
            request = {**request, "images": list(dict.fromkeys(i for i in images if isinstance(i, str)))}
        workers = request.get("max_workers") or 1
        if not isinstance(workers, int) or isinstance(workers, bool):
            raise errors.bad_request(f"max_workers={workers!r}: an integer from 1 to {self.gate_size}")
        return super().batch_infer({**request, "label_tag": "original",
                                    "max_workers": max(1, min(workers, self.gate_size))}, datastore)

    def _is_own_upload(self, image: str) -> bool:
        """Whether ``image`` is the file the client uploaded with this very request (MONAI Label saves it in the
        server's private temporary folder and passes its path). A path given in the query or in ``params`` is not,
        even when it names an upload of another request."""
        return self.temp_folder is not None and is_own_upload(image, self.temp_folder)

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
