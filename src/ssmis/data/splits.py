"""Which cases a preparation labels, keeps unlabelled or holds out for validation: id lists and their split."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

from ..utils.errors import DataError

__all__ = ["read_id_list", "repeated_ids", "split_cases"]


def repeated_ids(ids: Sequence[str]) -> list[str]:
    """The ids that ``ids`` holds more than once, sorted."""
    return sorted(i for i, n in Counter(ids).items() if n > 1)


def read_id_list(path: Path, what: str, layout: str) -> list[str]:
    """The ids of a ``*.list`` file, one per line; a missing or empty file, or an id listed twice (it could land
    on both sides of a split), is a :class:`DataError` naming the file. ``what``: "cases" or "patients";
    ``layout``: the expected source layout, for the missing-file message."""
    if not path.is_file():
        raise DataError(f"{path}: not found (expected the {layout})")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{path}: empty, no {what} to prepare")
    repeated = repeated_ids(ids)
    if repeated:
        raise DataError(f"{path}: lists these {what} more than once: {repeated[:5]}")
    return ids


def split_cases(ids: Sequence[str], labeled: int, val: int) -> dict[str, list[str]]:
    """Split ``ids`` in order: the first ``labeled`` are labelled, the last ``val`` validation, the rest unlabelled."""
    n = len(ids)
    if labeled < 0 or val < 0:
        raise DataError(f"--labeled ({labeled}) and --val ({val}) must not be negative")
    if labeled + val > n:
        raise DataError(f"--labeled {labeled} plus --val {val} exceeds the {n} available cases")
    return {
        "labeled": list(ids[:labeled]),
        "unlabeled": list(ids[labeled : n - val]),
        "validation": list(ids[n - val :]),
    }
