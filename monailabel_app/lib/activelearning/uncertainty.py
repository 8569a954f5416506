"""Active-learning strategy: the unlabelled image the models are least sure of."""

from __future__ import annotations

import logging
import random
from typing import Any, Dict, Sequence

from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.strategy import Strategy

from lib.activelearning.score_cache import ScoreCache

logger = logging.getLogger(__name__)


class Uncertainty(Strategy):
    """Propose the unlabelled image with the highest cached uncertainty, averaged over the models' caches.

    Scores come from the scoring tasks (``POST /scoring/<model>_uncertainty``). Images no model has scored yet, or
    a datastore with no scores at all, fall back to a random unlabelled image, and the answer says which it was.
    """

    def __init__(self, caches: Sequence[ScoreCache], description: str = "Least certain unlabelled image") -> None:
        super().__init__(description)
        self.caches = list(caches)

    def __call__(self, request: Dict[str, Any], datastore: Datastore) -> Dict[str, Any]:
        images = datastore.get_unlabeled_images(DefaultLabelTag.FINAL)
        if not images:
            return {}
        totals: Dict[str, list] = {}
        for cache in self.caches:
            for image_id, entry in cache.load().items():
                if image_id in images:
                    totals.setdefault(image_id, []).append(float(entry["score"]))
        if totals:
            image_id = max(sorted(totals), key=lambda i: sum(totals[i]) / len(totals[i]))
            score = sum(totals[image_id]) / len(totals[image_id])
            return {"id": image_id, "score": score, "selected_by": "uncertainty"}
        return {"id": random.choice(images), "selected_by": "random (no image scored yet)"}
