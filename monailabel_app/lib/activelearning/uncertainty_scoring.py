"""Scoring task: how unsure a model is about each unlabelled image, cached per image and prediction key (weights,
bundle version, inference configs).

MONAI Label's ``EpistemicScoring`` and ``Epistemic`` strategy are not used: they score by Monte Carlo dropout (the
CPU-protocol networks have none, and each image costs several inferences), keep the score in the image's info,
which clients may also write (``PUT /datastore/image/info``), and date it by the weight file's time alone. Here the
score is one inference's entropy, or the disagreement of co-training's two networks, kept in a server-side file and
dropped when the prediction key (weights, bundle version, inference configs) changes."""

from __future__ import annotations

import logging
from typing import Any, Dict

from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.scoring import ScoringMethod

from ssmis.metrics import prediction_disagreement, prediction_entropy
from lib.activelearning.score_cache import ScoreCache
from lib.infers.bundle_predictor import BundlePredictor, ImageError

logger = logging.getLogger(__name__)


class UncertaintyScoring(ScoringMethod):
    """Score every unlabelled image with the model's current weights.

    ``kind="entropy"`` (TransMedSeg): mean normalised entropy of the prediction over possibly-foreground voxels.
    ``kind="disagreement"`` (co-training): 1 − Dice between the two networks' label maps.
    Images already scored under the same prediction key are skipped: the same weights (mtime), bundle version and
    inference configs. A new key (new weights, or a bundle whose blending changed) rescores them.
    """

    def __init__(self, predictor: BundlePredictor, cache: ScoreCache, kind: str, description: str) -> None:
        super().__init__(description)
        if kind not in ("entropy", "disagreement"):
            raise ValueError(f"unknown uncertainty kind {kind!r} (entropy or disagreement)")
        self.predictor = predictor
        self.cache = cache
        self.kind = kind

    def score(self, image_path: str) -> float:
        if self.kind == "disagreement":
            per_network = self.predictor.network_probabilities(image_path)
            # a single network cannot disagree with itself: its entropy, from the same forward pass
            if len(per_network) == 2:
                return prediction_disagreement(*per_network)
            return prediction_entropy(per_network[0])
        return prediction_entropy(self.predictor.predict(image_path).probs)

    def __call__(self, request: Dict[str, Any], datastore: Datastore) -> Dict[str, Any]:
        if not self.predictor.is_trained():
            return {"scored": 0, "skipped": 0, "reason": "the model has no trained weights yet"}
        key = self.predictor.prediction_key()
        cached = self.cache.load()
        scores, skipped, failed = {}, 0, {}
        for image_id in datastore.get_unlabeled_images(DefaultLabelTag.FINAL):
            if cached.get(image_id, {}).get("key") == key:
                skipped += 1
                continue
            try:
                scores[image_id] = {"score": self.score(datastore.get_image_uri(image_id)), "kind": self.kind,
                                    "key": key}
            except ImageError as e:
                failed[image_id] = str(e)
        self.cache.update(scores)
        return {"scored": len(scores), "skipped": skipped, "failed": failed}
