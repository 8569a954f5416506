"""What every ssmis bundle model shares in the app: its tasks, built from the bundle's own configs and metadata."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, Optional

from monailabel.interfaces.config import TaskConfig

from lib.activelearning import ScoreCache, UncertaintyScoring
from lib.conf_values import switch
from lib.infers import BundlePredictor, BundleSegmentation
from lib.served_weights import record_fit
from lib.trainers import SemiSupervisedBundleTrain, TrainLimits
from lib.volumes import VolumeLimits
from ssmis.bundle.layout import config_files
from ssmis.bundle.weights import read_state_dict, shipped_weights
from ssmis.utils.atomic import atomic_torch_save

logger = logging.getLogger(__name__)


class BundleTaskConfig(TaskConfig):
    """One bundle served and retrained by the app. Subclasses name the bundle and its uncertainty measure.

    Conf keys (``--conf key value``): ``bundles`` (folder of bundles, default the repository's ``bundles/``),
    ``extra_config`` (a file, or a config name such as ``cpu_protocol.yaml``: the shared one, then the bundle's own;
    merged on top of both the train and the inference configs), ``device`` (cpu or cuda), ``shipped_weights``
    (default true: with no model of its own yet, serve the bundle's shipped weights when they fit ``extra_config``).
    """

    bundle: str = ""
    task: str = "la"                   # what images and labels the bundle is for; an app serves one task
    uncertainty: str = "entropy"
    train_defaults: Dict[str, Any] = {}

    def init(self, name: str, model_dir: str, conf: Dict[str, str], planner: Any, **kwargs: Any) -> None:
        super().init(name, model_dir, conf, planner, **kwargs)
        self.bundle_root = Path(kwargs["bundles_dir"]) / self.bundle
        meta_file = self.bundle_root / "configs" / "metadata.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"model {name!r}: bundle metadata {meta_file} not found")
        self.metadata = json.loads(meta_file.read_text())
        channels = self.metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
        self.labels = {v: int(k) for k, v in channels.items() if int(k) > 0}
        self.num_classes = len(channels)
        self.path = str(Path(model_dir) / name / "model.pt")
        extra = conf.get("extra_config")
        self.extra_configs = []
        if Path(extra or "").is_file():
            self.extra_configs = [str(Path(extra).resolve())]
        elif extra:  # a config name: the shared one and the bundle's own (``cpu_protocol.yaml``)
            try:
                self.extra_configs = config_files(self.bundle_root, extra)
            except FileNotFoundError as e:
                raise FileNotFoundError(f"--conf extra_config {extra!r}: neither a file nor a config name ({e})") from e
        if switch(conf, "shipped_weights", True):
            self._start_from_shipped_weights()
        self.predictor = BundlePredictor(self.bundle_root, self.path, self.extra_configs, conf.get("device"),
                                         limits=VolumeLimits.from_conf(conf))
        self.cache = ScoreCache(Path(model_dir) / name / "scores.json")

    def _start_from_shipped_weights(self) -> None:
        """With no model of its own yet, serve the weights the bundle ships (``weights/model.pt``) when they fit this
        app's configs (the record's ``configs`` are the app's ``extra_config``), so predictions work before any
        training. A trained model, once published, replaces them."""
        if Path(self.path).exists():
            return
        try:
            record = shipped_weights(self.bundle_root)
        except ValueError as e:
            logger.warning(f"model {self.name}: the bundle's shipped weights are not used: {e}")
            return
        if record is None or config_files(self.bundle_root, *record["configs"]) != self.extra_configs:
            return  # (shipped_weights has checked that the record's configs exist)
        atomic_torch_save(read_state_dict(record["path"]), self.path)
        record_fit(self.path, self.extra_configs)
        logger.info(f"model {self.name}: starts from the bundle's shipped weights (validation Dice "
                    f"{record['val_dice']:.4f}; {record['path']})")

    @property
    def description(self) -> str:
        return self.metadata.get("description", self.bundle)

    def infer(self) -> BundleSegmentation:
        return BundleSegmentation(self.predictor, self.labels, self.description)

    def trainer(self) -> Optional[SemiSupervisedBundleTrain]:
        return SemiSupervisedBundleTrain(self.name, self.bundle_root, self.path, self.extra_configs,
                                         dict(self.train_defaults), f"Semi-supervised retraining of {self.name}",
                                         spatial_dims=self.predictor.spatial_dims,
                                         network_dims=self.predictor.network_dims,
                                         keep_runs=int((self.conf or {}).get("keep_runs", 5)),
                                         target_spacing=self.predictor.target_spacing,
                                         limits=TrainLimits.from_conf(self.conf or {}),
                                         volume_limits=self.predictor.limits)

    def scoring_method(self) -> UncertaintyScoring:
        return UncertaintyScoring(self.predictor, self.cache, self.uncertainty,
                                  f"{self.name}: {self.uncertainty} of the prediction on unlabelled images")
