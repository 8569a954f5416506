"""What a ``python -m monai.bundle run`` command line names: its config files, however they were given."""

from __future__ import annotations

import ast
from pathlib import Path

__all__ = ["config_files_on_command_line"]


def config_files_on_command_line(argv: list[str]) -> list[str]:
    """The files of ``--config_file`` on a ``monai.bundle run`` command line (python-fire also reads
    ``--config-file``), or the ``config_file`` of its ``--args_file``, in its three spellings: one path, a Python
    list literal, or MONAI's ``"a.yaml,b.yaml"``."""
    for i, raw in enumerate(argv):
        arg, value = raw.replace("-", "_") if raw.startswith("--") else raw, None
        if arg in ("__config_file", "__args_file") and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(("__config_file=", "__args_file=")):
            value = raw.split("=", 1)[1]
        if value is not None and arg.startswith("__args_file"):
            value = _args_file_config(value)
        if isinstance(value, list):
            return value
        if value is not None:
            if value.lstrip().startswith("["):
                try:
                    return [str(v) for v in ast.literal_eval(value)]
                except (ValueError, SyntaxError):
                    return []
            if not Path(value).is_file() and "," in value:  # MONAI's own "a.yaml,b.yaml" form
                return [v for v in value.split(",") if v]
            return [value]
    return []


def _args_file_config(path: str) -> str | list[str] | None:
    """The ``config_file`` of a ``--args_file`` (JSON or YAML): a string in one of the command line's spellings, or
    a list of files; None when it has none."""
    try:
        from monai.bundle import ConfigParser

        value = ConfigParser.load_config_file(path).get("config_file")
    except Exception:  # an unreadable args file: MONAI itself reports it
        return None
    return None if value is None else (value if isinstance(value, str) else [str(v) for v in value])
