"""``datalist.json``: the split of a prepared dataset into labelled, unlabelled and validation records.

Records are ``{"image": path}`` or ``{"image": path, "label": path}``; relative paths are relative to the
folder holding ``datalist.json``. An unlabelled record may hold ``reference_label``, its label for diagnostics
only (``ssmis.handlers.PseudoLabelQuality``), which no training loss reads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from ..utils.atomic import atomic_write_text
from ..utils.errors import DataError

__all__ = ["DATALIST_KEYS", "check_distinct_outputs", "load_datalist", "write_datalist"]

DATALIST_KEYS = ("labeled", "unlabeled", "validation")


def write_datalist(datalist: dict[str, list[dict]], path: str | os.PathLike) -> Path:
    """Write ``datalist`` (the keys of ``DATALIST_KEYS``) to ``path`` atomically."""
    missing = [k for k in DATALIST_KEYS if k not in datalist]
    if missing:
        raise DataError(f"datalist for {path} lacks the keys {missing}")
    return atomic_write_text(json.dumps(datalist, indent=2) + "\n", path)


def load_datalist(
    dataset_dir: str | os.PathLike, key: str, limit: int | None = None, min_records: int = 0
) -> list[dict]:
    """Read the ``key`` records of ``<dataset_dir>/datalist.json`` with absolute paths.

    Args:
        dataset_dir: a folder holding ``datalist.json``.
        key: one of ``labeled``, ``unlabeled``, ``validation``.
        limit: keep only the first ``limit`` records (None keeps all).
        min_records: fewer records than this (after ``limit``) is an error; the training configs pass what one
            batch takes, so a run that could draw no batch stops here instead of training zero iterations.
    """
    path = Path(dataset_dir) / "datalist.json"
    if not path.is_file():
        raise DataError(f"{path} not found: prepare a dataset with `python -m ssmis.data` first")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with the keys {list(DATALIST_KEYS)}, "
                        f"got {type(data).__name__}")
    if key not in data:
        raise DataError(f"{path} has no key {key!r} (it has {sorted(data)})")
    if not isinstance(data[key], list):
        raise DataError(f"{path}: {key!r} must be a list of records, got {type(data[key]).__name__}")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise DataError(f"limit for {key!r} records of {path} must be a non-negative integer or null, got {limit!r}")
    records = []
    for i, rec in enumerate(data[key]):
        if not isinstance(rec, dict) or "image" not in rec:
            raise DataError(f"{path}: {key}[{i}] is not a record with an 'image' field")
        out = dict(rec)
        for field in ("image", "label", "reference_label"):
            if field in out:
                if not isinstance(out[field], str) or not out[field]:
                    raise DataError(f"{path}: {key}[{i}].{field} must be a file path, got {out[field]!r}")
                p = Path(out[field])
                out[field] = str(p if p.is_absolute() else (path.parent / p).resolve())
        records.append(out)
    records = records if limit is None else records[:limit]
    if len(records) < int(min_records):
        limited = "" if limit is None or limit >= len(data[key]) else f" (limit_{key} {limit} of {len(data[key])})"
        raise DataError(
            f"{path}: {len(records)} {key!r} record(s){limited}, but one batch takes {int(min_records)}: "
            f"add {key} records, raise limit_{key} or lower the batch size"
        )
    return records


def check_distinct_outputs(records: Sequence[dict], key: str = "image") -> None:
    """Refuse ``records`` of which two would be saved to the same segmentation file.

    ``SaveImaged`` names its output after the input's file name only (``a/case.nii.gz`` and ``b/case.nii.gz`` both
    become ``<output_dir>/case/case_seg.nii.gz``), so the second would silently replace the first. Uses MONAI's own
    naming (``create_file_basename``), so the check matches what would be written.
    """
    from monai.data.utils import create_file_basename

    seen: dict[str, str] = {}
    for rec in records:
        src = str(rec[key])
        out = create_file_basename("seg", src, "out", separate_folder=True, makedirs=False)
        if out in seen and seen[out] != src:
            raise DataError(f"{seen[out]} and {src} would both be saved as {Path(out).name}.*: rename one, or segment "
                            "them in separate runs with different --output_dir")
        seen[out] = src
