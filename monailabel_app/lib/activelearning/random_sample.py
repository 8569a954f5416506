"""Active-learning strategy: a random unlabelled image, favouring the ones proposed longest ago."""

from __future__ import annotations

import random
import time
from typing import Any, Dict

from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.strategy import Strategy


def _last_proposed(info: Any, strategy: str) -> int:
    """When ``strategy`` last proposed the image (its info's ``strategy.<name>.ts``); 0 for never, or for a record
    that is not of that shape (an image's info is also written by clients)."""
    entry = info.get("strategy") if isinstance(info, dict) else None
    entry = entry.get(strategy) if isinstance(entry, dict) else None
    ts = entry.get("ts") if isinstance(entry, dict) else None
    return int(ts) if isinstance(ts, (int, float)) and not isinstance(ts, bool) and ts == ts else 0


class RandomSample(Strategy):
    """Propose an unlabelled image at random, weighted by the seconds since it was last proposed, plus one.

    MONAI Label's ``Random`` uses the seconds alone: when every image was proposed within the current second (a
    quick series of Next Sample clicks), all weights are zero and the request fails with a 500.
    """

    def __init__(self, description: str = "Random unlabelled image") -> None:
        super().__init__(description)

    def __call__(self, request: Dict[str, Any], datastore: Datastore) -> Dict[str, Any]:
        images = datastore.get_unlabeled_images(DefaultLabelTag.FINAL)
        if not images:
            return {}
        strategy, now = request.get("strategy", "random"), int(time.time())
        weights = [max(0, now - _last_proposed(datastore.get_image_info(i), strategy)) + 1 for i in images]
        return {"id": random.choices(images, weights=weights)[0], "selected_by": "random"}
