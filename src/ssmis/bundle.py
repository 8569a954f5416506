"""Helpers the bundle configs call: locating the bundle folder when ``--bundle_root`` is not given."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

__all__ = ["default_bundle_root"]


def _config_files(argv: list[str]) -> list[str]:
    for i, arg in enumerate(argv):
        value = None
        if arg == "--config_file" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--config_file="):
            value = arg.split("=", 1)[1]
        if value is not None:
            if value.lstrip().startswith("["):
                try:
                    return [str(v) for v in ast.literal_eval(value)]
                except (ValueError, SyntaxError):
                    return []
            return [value]
    return []


def default_bundle_root(argv: list[str] | None = None) -> str:
    """The bundle folder of the first ``--config_file`` on the command line (the parent of its ``configs/``).

    ``python -m monai.bundle run --config_file bundles/x/configs/train.yaml`` then works from any folder, as does
    the model-zoo habit of running ``--config_file configs/train.yaml`` inside the bundle. Falls back to ``"."``.
    An explicit ``--bundle_root`` always overrides this default.
    """
    files = _config_files(sys.argv if argv is None else argv)
    if not files:
        return "."
    parent = Path(files[0]).absolute().parent
    return str(parent.parent if parent.name == "configs" else parent)
