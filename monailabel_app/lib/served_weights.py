"""What the served ``model.pt`` of a model fits: the ``extra_config`` it was trained with, in ``model.json`` beside it.

The app copies a bundle's shipped weights into its ``model_dir`` once, and publishes every training there. Restarted
with another ``--conf extra_config``, it served them in a network set up otherwise: ACDC's CPU-protocol U-Net loads
into the full protocol's, which then segments slices of another size (mean Dice 0.57 fell to about 0.1, with a 200).
The record makes that a 409 that says how to start the server instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from ssmis.bundle.weights import sha256
from ssmis.utils.atomic import atomic_write_text

__all__ = ["config_names", "fit_mismatch", "record_fit"]


def _record(model_path: str | Path) -> Path:
    return Path(model_path).with_name("model.json")


def config_names(extra_configs: Sequence[str]) -> list[str]:
    """``extra_configs`` as ``--conf extra_config`` names them, each once: a bundle config by its file name (the
    name gives the shared file and the bundle's own), any other file by its path."""
    return list(dict.fromkeys(Path(c).name if Path(c).parent.name == "configs" else str(c) for c in extra_configs))


def record_fit(model_path: str | Path, extra_configs: Sequence[str]) -> None:
    """Write, beside ``model_path``, the ``extra_config`` its weights were trained with and the file's SHA-256 (a
    ``model.pt`` copied in by hand afterwards is not what the record speaks of)."""
    atomic_write_text(json.dumps({"extra_config": config_names(extra_configs), "sha256": sha256(model_path)}) + "\n",
                      _record(model_path))


def fit_mismatch(model_path: str | Path, extra_configs: Sequence[str]) -> str | None:
    """Why the weights at ``model_path`` must not be served (or trained on) with ``extra_configs``; None when they
    fit, or when nothing was recorded of this file (weights put there by hand, or by an app before this record)."""
    record = _record(model_path)
    if not record.is_file():
        return None
    try:
        data = json.loads(record.read_text())
        fits, digest = data["extra_config"], data["sha256"]
    except (ValueError, KeyError, TypeError) as e:
        return f"{record}: unreadable ({e}); delete it if {Path(model_path).name} fits this server's extra_config"
    if digest != sha256(model_path):  # weights put there after the record: it does not speak of them
        return None
    running = config_names(extra_configs)
    if fits == running:
        return None
    start = " ".join(f"--conf extra_config {c}" for c in fits) or "without --conf extra_config"
    return (f"{model_path} was trained with extra_config {fits or 'none'}, and this server runs with "
            f"{running or 'none'}: the same network set up otherwise gives wrong labels. Start the server {start}, "
            "or point --conf model_dir elsewhere")
