"""Semi-supervised retraining of a bundle from the datastore: labelled images plus every unlabelled one.

MONAI Label's ``BundleTrainTask`` passes only labelled images, and crashes on ``pretrained: false`` and on handlers
given as string references; this task instead writes an ssmis ``datalist.json`` (``labeled``, ``unlabeled``,
``validation``) and runs the bundle's own ``train.yaml`` through ``monai.bundle.ConfigWorkflow``, unchanged.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Sequence

import torch
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.train import TrainTask

from lib.infers.bundle_predictor import load_weights
from ssmis.utils.atomic import atomic_replace, atomic_write_text

logger = logging.getLogger(__name__)

# request keys a client may set, with their types; everything else in a train request is rejected
ALLOWED = {
    "num_iterations": int, "val_interval": int, "batch_size": int, "learning_rate": float,
    "pretrain_iterations": int, "seed": int, "val_fraction": float, "device": str, "patch_size": list,
}
IGNORED = {"model", "bundle_path", "name", "description", "client_id", "gpus", "multi_gpu", "local_rank"}


class SemiSupervisedBundleTrain(TrainTask):
    """Args:
        name: the model name (the bundle folder's name).
        bundle_root: the bundle folder.
        model_path: where the served ``model.pt`` is published (atomically, after a run completes).
        extra_configs: config files merged on top of ``train.yaml`` (the inference task merges the same ones).
        defaults: default request values (``num_iterations`` and so on).
    """

    def __init__(self, name: str, bundle_root: str | Path, model_path: str | Path, extra_configs: Sequence[str],
                 defaults: Dict[str, Any], description: str, spatial_dims: int = 3) -> None:
        super().__init__(description)
        self.name, self.spatial_dims = name, int(spatial_dims)
        self.bundle_root = Path(bundle_root)
        self.model_path = Path(model_path)
        self.extra_configs = [str(c) for c in extra_configs]
        self.defaults = {"num_iterations": 1000, "val_interval": 100, "val_fraction": 0.2, "seed": 0,
                         "device": "cuda" if torch.cuda.is_available() else "cpu", **defaults}
        self.stats_path = self.model_path.parent / "train_stats.json"

    def config(self) -> Dict[str, Any]:
        return dict(self.defaults)

    def stats(self) -> Dict[str, Any]:
        return json.loads(self.stats_path.read_text()) if self.stats_path.is_file() else {}

    def parse(self, request: Dict[str, Any]) -> Dict[str, Any]:
        """The run's settings: the defaults updated by the request; unknown keys and wrong types raise ValueError."""
        out = dict(self.defaults)
        for key, value in request.items():
            if key in IGNORED:
                continue
            if isinstance(value, dict) and (self.bundle_root.parent / key / "configs").is_dir():
                continue  # a model's section of a POST /train/ body, which MONAI Label passes to every trainer
            if key not in ALLOWED:
                raise ValueError(f"train request: unknown parameter {key!r} (allowed: {sorted(ALLOWED)})")
            out[key] = self._typed(key, value, ALLOWED[key])
        if out["num_iterations"] < 1 or out["val_interval"] < 1:
            raise ValueError("train request: num_iterations and val_interval must be >= 1")
        for key, low in (("batch_size", 1), ("pretrain_iterations", 0)):
            if key in out and out[key] < low:
                raise ValueError(f"train request: {key}={out[key]} must be >= {low}")
        if "learning_rate" in out and not out["learning_rate"] > 0:
            raise ValueError(f"train request: learning_rate={out['learning_rate']} must be > 0")
        if not 0.0 < out["val_fraction"] < 1.0:
            raise ValueError(f"train request: val_fraction={out['val_fraction']} must lie in (0, 1)")
        if out["device"] not in ("cpu", "cuda") or (out["device"] == "cuda" and not torch.cuda.is_available()):
            raise ValueError(f"train request: device={out['device']!r} is not available (cpu or cuda)")
        return out

    def _typed(self, key: str, value: Any, kind: type) -> Any:
        bad = ValueError(f"train request: {key}={value!r} is not a valid "
                         + (f"list of {self.spatial_dims} positive integers" if kind is list else kind.__name__))
        if kind is list:
            if not isinstance(value, (list, tuple)) or len(value) != self.spatial_dims or not all(
                    isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
                raise bad
            return [int(v) for v in value]
        if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
            raise bad  # True is not 1 iteration, and 2.5 iterations is not 2
        try:
            return kind(value)
        except (TypeError, ValueError) as e:
            raise bad from e

    @staticmethod
    def split(datastore: Datastore, val_fraction: float, seed: int) -> Dict[str, list]:
        """``labeled``/``validation`` from the final labels (a seeded shuffle), ``unlabeled`` from the rest."""
        labeled = sorted(datastore.datalist(), key=lambda r: r["image"])
        if len(labeled) < 2:
            raise ValueError(f"training needs at least 2 labelled images (1 to train, 1 to validate); the datastore "
                             f"has {len(labeled)}: save more labels first")
        random.Random(seed).shuffle(labeled)
        n_val = min(len(labeled) - 1, max(1, round(val_fraction * len(labeled))))
        unlabeled = [{"image": datastore.get_image_uri(i)}
                     for i in sorted(datastore.get_unlabeled_images(DefaultLabelTag.FINAL))]
        return {"labeled": labeled[n_val:], "unlabeled": unlabeled, "validation": labeled[:n_val]}

    def __call__(self, request: Dict[str, Any], datastore: Datastore) -> Dict[str, Any]:
        from monai.bundle import ConfigWorkflow

        t0 = time.time()
        settings = self.parse(request)
        datalist = self.split(datastore, settings["val_fraction"], settings["seed"])
        run_dir = self.model_path.parent / "runs" / time.strftime("%Y%m%d-%H%M%S")
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json.dumps(datalist, indent=2), run_dir / "datalist.json")
        logger.info(f"{self.name}: {len(datalist['labeled'])} labelled, {len(datalist['unlabeled'])} unlabelled, "
                    f"{len(datalist['validation'])} validation images; run folder {run_dir}")

        overrides: Dict[str, Any] = {
            "bundle_root": str(self.bundle_root), "dataset_dir": str(run_dir), "output_dir": str(run_dir),
            "device": f"$torch.device('{settings['device']}')", "amp": settings["device"] == "cuda",
        }
        for key in ("num_iterations", "val_interval", "batch_size", "learning_rate", "pretrain_iterations",
                    "seed", "patch_size"):
            if key in settings:
                overrides[key] = settings[key]
        configs = [str(self.bundle_root / "configs" / "train.yaml"), *self.extra_configs]
        # no logging_file: the bundle's logging.conf would replace the server's handlers (app.log went silent after
        # the first training); the run logs through the server's own logging set-up instead
        workflow = ConfigWorkflow(config_file=configs, workflow_type="train", logging_file=None, **overrides)
        workflow.initialize()
        batch = int(workflow.parser.get_parsed_content("batch_size"))
        if len(datalist["labeled"]) < batch:
            raise ValueError(f"{self.name}: {len(datalist['labeled'])} labelled training image(s) after holding out "
                             f"{len(datalist['validation'])} for validation, but a batch takes {batch}: save more "
                             "labels or lower batch_size")
        start = "random initialisation"
        if self.model_path.is_file():  # continue from the served weights (the EMA teacher is copied from them)
            network = workflow.parser.get_parsed_content("network")
            try:
                network.load_state_dict(load_weights(self.model_path), strict=True)
            except RuntimeError as e:  # ModelNotTrainedError (unreadable) or a mismatch of keys/shapes
                raise RuntimeError(f"{self.name}: cannot start from the served weights {self.model_path} "
                                   f"({str(e)[:300]}); delete or replace that file to train from scratch") from e
            start = f"{self.model_path} (mtime {self.model_path.stat().st_mtime})"
        logger.info(f"{self.name}: training starts from {start}")
        workflow.run()
        workflow.finalize()

        trained = run_dir / "models" / "model.pt"
        if not trained.is_file():
            raise RuntimeError(f"{self.name}: training finished without writing {trained}")
        atomic_replace(lambda tmp: shutil.copyfile(trained, tmp), self.model_path)  # publish
        stats = {
            "model": self.name, "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "start_weights": start,
            "iterations": settings["num_iterations"], "wall_s": round(time.time() - t0, 1), "run_dir": str(run_dir),
            "labeled": len(datalist["labeled"]), "unlabeled": len(datalist["unlabeled"]),
            "validation": len(datalist["validation"]), "published": str(self.model_path),
        }
        try:  # the validator the workflow ran (the parser returns its cached instance)
            evaluator = workflow.parser.get_parsed_content("validate#evaluator")
            stats["best_val_dice"] = float(evaluator.state.best_metric)
            stats["last_val_dice"] = float(evaluator.state.metrics.get(evaluator.state.key_metric_name, float("nan")))
        except Exception as e:  # reporting only; the weights are published either way
            logger.warning(f"no validation metric to report: {e}")
        atomic_write_text(json.dumps(stats, indent=2), self.stats_path)
        logger.info(f"{self.name}: published {self.model_path} after {stats['wall_s']} s")
        return stats
