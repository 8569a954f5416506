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
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, Sequence

import torch
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.train import TrainTask

from lib.served_weights import fit_mismatch, record_fit
from lib.trainers.resampling import resample_records
from lib.trainers.train_limits import TrainLimits
from lib.volumes import VolumeError, VolumeLimits, read_header
from ssmis.bundle.layout import config_files
from ssmis.bundle.weights import read_state_dict
from ssmis.utils.atomic import atomic_replace, atomic_write_text

logger = logging.getLogger(__name__)


def _in_task_process() -> bool:
    """Whether this is MONAI Label's task subprocess (``python -m monailabel.interfaces.utils.app``)."""
    return Path(sys.argv[0]).parts[-3:] == ("interfaces", "utils", "app.py")


def check_records(datalist: Dict[str, list], spatial_dims: int, limits: VolumeLimits | None = None) -> None:
    """``ValueError`` naming the first file of ``datalist`` that cannot be read (its header, within ``limits``), has
    another number of spatial axes than ``spatial_dims``, or whose label's shape differs from its image's."""
    limits = limits or VolumeLimits()
    for part, records in datalist.items():
        for record in records:
            shapes = {}
            for key in ("image", "label"):
                if key in record:
                    try:
                        header = read_header(record[key], f"{part} {key} {record[key]}", limits, check_data=False)
                    except VolumeError as e:
                        raise ValueError(str(e)) from e
                    shape = tuple(header.shape)
                    while len(shape) > spatial_dims and shape[-1] == 1:
                        shape = shape[:-1]
                    if len(shape) != spatial_dims:
                        raise ValueError(f"{part} {key} {record[key]}: shape {tuple(header.shape)} is not "
                                         f"{spatial_dims}D")
                    shapes[key] = shape
            if len(set(shapes.values())) > 1:
                raise ValueError(f"{part} label {record['label']}: shape {shapes['label']} differs from its image "
                                 f"{record['image']} ({shapes['image']})")


def check_finite_weights(trained: Path, served: Path) -> None:
    """``RuntimeError`` naming the first tensor of the state dict at ``trained`` that holds NaN or infinite values
    (a diverged run), before it could replace the ``served`` weights."""
    bad = [k for k, v in read_state_dict(trained).items()
           if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise RuntimeError(f"the trained weights {trained} hold NaN or infinite values ({bad[0]}"
                           f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}; a diverged run: lower "
                           f"learning_rate?); the served {served} is kept")


def publish_weights(trained: Path, served: Path, extra_configs: Sequence[str]) -> None:
    """Replace the ``served`` weights with a training's (atomically: a reader gets the old or the new file) and
    record the configs they fit; a diverged run's weights (NaN, infinity) raise and leave ``served`` as it was."""
    check_finite_weights(trained, served)
    atomic_replace(lambda tmp: shutil.copyfile(trained, tmp), served)
    record_fit(served, extra_configs)


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
        target_spacing: the voxel size the network expects; datastore images at another one are trained on through
            resampled copies (``<model_dir>/<model>/resampled/``), as inference resamples them.
        keep_runs: run folders kept (the newest); a finished run keeps its datalist, TensorBoard logs and
            ``model_best.pt``, not the resume checkpoint or a second copy of the published weights.
        limits: the ceilings of a request (iterations, batch, patch); default :class:`TrainLimits`' defaults.
        volume_limits: what one training image may cost, resampled (the server's ``VolumeLimits``).
    """

    def __init__(self, name: str, bundle_root: str | Path, model_path: str | Path, extra_configs: Sequence[str],
                 defaults: Dict[str, Any], description: str, spatial_dims: int = 3, keep_runs: int = 5,
                 target_spacing: Sequence[float] | None = None, network_dims: int | None = None,
                 limits: TrainLimits | None = None, volume_limits: VolumeLimits | None = None) -> None:
        super().__init__(description)
        self.train_limits = limits or TrainLimits()
        self.volume_limits = volume_limits or VolumeLimits()
        self.name, self.spatial_dims = name, int(spatial_dims)
        # axes of the network's input (patch_size): the images' own, or 2 for a 2D network on volumes (ACDC)
        self.network_dims = int(network_dims or spatial_dims)
        if int(keep_runs) < 1:
            raise ValueError(f"--conf keep_runs must be >= 1, got {keep_runs}")
        self.keep_runs = int(keep_runs)
        self.target_spacing = None if target_spacing is None else tuple(float(v) for v in target_spacing)
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
        # a short run (Slicer sends the default val_interval with any num_iterations) validates at its end
        out["val_interval"] = min(out["val_interval"], out["num_iterations"])
        for key, low in (("batch_size", 1), ("pretrain_iterations", 0)):
            if key in out and out[key] < low:
                raise ValueError(f"train request: {key}={out[key]} must be >= {low}")
        if "learning_rate" in out and not out["learning_rate"] > 0:
            raise ValueError(f"train request: learning_rate={out['learning_rate']} must be > 0")
        if not 0.0 < out["val_fraction"] <= 0.9:
            raise ValueError(f"train request: val_fraction={out['val_fraction']} must lie in (0, 0.9]")
        if out["device"] not in ("cpu", "cuda") or (out["device"] == "cuda" and not torch.cuda.is_available()):
            raise ValueError(f"train request: device={out['device']!r} is not available (cpu or cuda)")
        return out

    def _typed(self, key: str, value: Any, kind: type) -> Any:
        bad = ValueError(f"train request: {key}={value!r} is not a valid "
                         + (f"list of {self.network_dims} positive integers" if kind is list else kind.__name__))
        if kind is list:
            if not isinstance(value, (list, tuple)) or len(value) != self.network_dims or not all(
                    isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
                raise bad
            return [int(v) for v in value]
        if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
            raise bad  # True is not 1 iteration, and 2.5 iterations is not 2
        try:
            return kind(value)
        except (TypeError, ValueError) as e:
            raise bad from e

    def _prune_runs(self) -> None:
        """Delete all but the newest ``keep_runs`` run folders."""
        runs = sorted(p for p in (self.model_path.parent / "runs").iterdir() if p.is_dir())
        for old in runs[: -self.keep_runs]:
            shutil.rmtree(old, ignore_errors=True)

    def configured(self, key: str, settings: Dict[str, Any] | None = None) -> Any:
        """``key`` as the bundle's ``train.yaml`` plus the extra configs define it, with the request's ``settings``
        applied (``None`` if they do not define it)."""
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config([*config_files(self.bundle_root, "train"), *self.extra_configs])
        parser["bundle_root"] = str(self.bundle_root)
        for name in ("batch_size", "patch_size", "num_iterations"):
            if settings and name in settings:
                parser[name] = settings[name]
        return parser.get_parsed_content(key) if key in parser else None

    @staticmethod
    def n_validation(n_labeled: int, val_fraction: float) -> int:
        """How many of ``n_labeled`` labelled images :meth:`split` holds out for validation."""
        return min(n_labeled - 1, max(1, round(val_fraction * n_labeled)))

    def check(self, settings: Dict[str, Any], n_labeled: int) -> None:
        """``ValueError`` saying what is wrong with a run of ``settings`` (from :meth:`parse`) before it is queued:
        a value above the server's :class:`TrainLimits`, or too few of the datastore's ``n_labeled`` labelled
        images for one batch plus the validation hold-out."""
        batch = int(self.configured("batch_size", settings) or 1)
        self.train_limits.check(settings, batch, self.configured("patch_size", settings))
        # the fewest labelled images that leave a batch after the hold-out; val_fraction <= 0.9 bounds the search
        needed = next((n for n in range(2, 10 * batch + 20)
                       if n - self.n_validation(n, settings["val_fraction"]) >= batch), None)
        if needed is None:
            raise ValueError(f"train request: val_fraction {settings['val_fraction']} holds out too much to leave a "
                             f"batch of {batch}")
        if n_labeled < needed:
            raise ValueError(f"{self.name}: training needs at least {needed} labelled images: a batch takes {batch} "
                             "(batch_size) and validation holds out "
                             f"{self.n_validation(needed, settings['val_fraction'])}"
                             f" (val_fraction {settings['val_fraction']}); the datastore has {n_labeled}. Save more "
                             "labels, or lower batch_size")

    @classmethod
    def split(cls, datastore: Datastore, val_fraction: float, seed: int, unlabeled_batch: int = 1) -> Dict[str, Any]:
        """``labeled``/``validation`` from the final labels (a seeded shuffle), ``unlabeled`` from the rest.

        An unlabelled pool smaller than ``unlabeled_batch`` (but not empty) would yield no batch: it is drawn with
        replacement up to one batch, and ``unlabeled_resampled`` says so."""
        labeled = sorted(datastore.datalist(), key=lambda r: r["image"])
        if len(labeled) < 2:
            raise ValueError(f"training needs at least 2 labelled images (1 to train, 1 to validate); the datastore "
                             f"has {len(labeled)}: save more labels first")
        random.Random(seed).shuffle(labeled)
        n_val = cls.n_validation(len(labeled), val_fraction)
        unlabeled = [{"image": datastore.get_image_uri(i)}
                     for i in sorted(datastore.get_unlabeled_images(DefaultLabelTag.FINAL))]
        resampled = 0 < len(unlabeled) < unlabeled_batch
        if resampled:
            rng = random.Random(seed)
            unlabeled = unlabeled + [rng.choice(unlabeled) for _ in range(unlabeled_batch - len(unlabeled))]
        return {"labeled": labeled[n_val:], "unlabeled": unlabeled, "validation": labeled[:n_val],
                "unlabeled_resampled": resampled}

    def __call__(self, request: Dict[str, Any], datastore: Datastore) -> Dict[str, Any]:
        """Train and publish. A failure ends with one log line that says what failed (3D Slicer shows the last
        lines of the task's log, which a traceback would fill); the traceback goes to ``last_error.txt`` beside
        the weights. In MONAI Label's task process the run then exits with status 1 (the task reads ERROR)."""
        try:
            return self._train(request, datastore)
        except Exception as e:
            message = f"{self.name}: training failed: {type(e).__name__}: {e}".replace("\n", " ")
            error_file = self.model_path.parent / "last_error.txt"
            error_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(traceback.format_exc(), error_file)
            logger.error(f"{message[:1000]} (traceback in {error_file})")
            if _in_task_process():
                raise SystemExit(1) from None
            raise

    def _train(self, request: Dict[str, Any], datastore: Datastore) -> Dict[str, Any]:
        from monai.bundle import ConfigWorkflow

        t0 = time.time()
        settings = self.parse(request)
        self.check(settings, len(datastore.datalist()))
        unlabeled_batch = int(self.configured("unlabeled_batch_size", settings) or 0)
        datalist = self.split(datastore, settings["val_fraction"], settings["seed"], unlabeled_batch)
        resampled = datalist.pop("unlabeled_resampled")
        check_records(datalist, self.spatial_dims, self.volume_limits)
        datalist = resample_records(datalist, self.target_spacing, self.model_path.parent / "resampled",
                                    self.volume_limits)
        run_dir = self.model_path.parent / "runs" / time.strftime("%Y%m%d-%H%M%S")
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json.dumps(datalist, indent=2), run_dir / "datalist.json")
        logger.info(f"{self.name}: {len(datalist['labeled'])} labelled, {len(datalist['unlabeled'])} unlabelled, "
                    f"{len(datalist['validation'])} validation images; run folder {run_dir}")
        if unlabeled_batch and not datalist["unlabeled"]:
            logger.warning(f"{self.name}: no unlabelled images: training on the labelled images only")
        elif resampled:
            logger.warning(f"{self.name}: fewer unlabelled images than one batch ({unlabeled_batch}): drawing them "
                           "with replacement")

        overrides: Dict[str, Any] = {
            "bundle_root": str(self.bundle_root), "dataset_dir": str(run_dir), "output_dir": str(run_dir),
            "device": f"$torch.device('{settings['device']}')", "amp": settings["device"] == "cuda",
        }
        for key in ("num_iterations", "val_interval", "batch_size", "learning_rate", "pretrain_iterations",
                    "seed", "patch_size"):
            if key in settings:
                overrides[key] = settings[key]
        configs = [*config_files(self.bundle_root, "train"), *self.extra_configs]
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
            mismatch = fit_mismatch(self.model_path, self.extra_configs)
            if mismatch:
                raise RuntimeError(f"{self.name}: cannot start from the served weights: {mismatch}")
            network = workflow.parser.get_parsed_content("network")
            try:
                network.load_state_dict(read_state_dict(self.model_path), strict=True)
            except (ValueError, RuntimeError) as e:  # unreadable, or a mismatch of keys/shapes
                raise RuntimeError(f"{self.name}: cannot start from the served weights {self.model_path} "
                                   f"({str(e)[:300]}); delete or replace that file to train from scratch") from e
            start = f"{self.model_path} (mtime {self.model_path.stat().st_mtime})"
        logger.info(f"{self.name}: training starts from {start}")
        workflow.run()
        workflow.finalize()

        trained = run_dir / "models" / "model.pt"
        if not trained.is_file():
            raise RuntimeError(f"{self.name}: training finished without writing {trained}")
        publish_weights(trained, self.model_path, self.extra_configs)  # a diverged run: the served weights stay
        for done_with in (run_dir / "models" / "checkpoint.pt", trained):  # resume state; a copy of the published
            done_with.unlink(missing_ok=True)
        self._prune_runs()
        stats: Dict[str, Any] = {
            "model": self.name, "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "start_weights": start,
            "iterations": settings["num_iterations"], "wall_s": round(time.time() - t0, 1), "run_dir": str(run_dir),
            "labeled": len(datalist["labeled"]), "unlabeled": len(datalist["unlabeled"]),
            "validation": len(datalist["validation"]), "published": str(self.model_path),
            "unlabeled_resampled": resampled,
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
