"""The uncertainty scores of a scoring method, kept per image in a JSON file beside the model."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any, Dict

from ssmis.utils.atomic import atomic_write_text

__all__ = ["ScoreCache"]

logger = logging.getLogger(__name__)


class ScoreCache:
    """``{image_id: {"score", "kind", "key"}}`` in a JSON file, rewritten atomically."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def load(self) -> Dict[str, Dict[str, Any]]:
        try:
            return json.loads(self.path.read_text()) if self.path.is_file() else {}
        except json.JSONDecodeError:
            logger.warning(f"{self.path}: unreadable score cache, ignored")
            return {}

    def update(self, scores: Dict[str, Dict[str, Any]]) -> None:
        with self._lock:
            data = self.load()
            data.update(scores)
            atomic_write_text(json.dumps(data, indent=2), self.path)
