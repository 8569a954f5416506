"""The output folder of a preparation command, checked before anything is read or written."""

from __future__ import annotations

import os
from pathlib import Path

from ..utils.errors import DataError

__all__ = ["check_output_dir"]


def check_output_dir(output: str | os.PathLike, inputs: dict[str, str | os.PathLike | None] | None = None) -> Path:
    """Refuse an ``output`` folder whose replacement would delete data; return its absolute path.

    Preparation commands replace what they write in ``output`` (``atomic_output_dir(..., keep_others=True)``; other
    entries such as ``imagesTs/`` are kept), so it must not be, or contain, one of the ``inputs``
    (``{"--images": path, ...}``, named in the message), and an existing ``output`` must be empty or a folder this
    project prepared before (it holds ``datalist.json``).
    """
    out = Path(output).expanduser().resolve()
    for flag, path in (inputs or {}).items():
        if path is None:
            continue
        src = Path(path).expanduser().resolve()
        if src == out or out in src.parents:
            raise DataError(
                f"--output {output}: it is or contains {flag} {path}; replacing it would delete the input. "
                "Choose a separate output folder."
            )
    if out.is_file():
        raise DataError(f"--output {output}: is a file, expected a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "datalist.json").is_file():
        raise DataError(
            f"--output {output}: exists, is not empty and holds no datalist.json, so it is not a dataset prepared "
            "here; it would be replaced as a whole. Choose a new or empty folder."
        )
    return out
