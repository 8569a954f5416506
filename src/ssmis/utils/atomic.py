"""Atomic file writes: a reader sees either the old file or the complete new one, never a partial one."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_replace", "atomic_torch_save", "atomic_write_text"]

logger = logging.getLogger(__name__)

#: a temporary file untouched for this long belongs to a killed process, not to a running one
STALE_AFTER_S = 3600.0

#: every temporary file is named ``.<name>.ssmis-<8 random chars>.tmp`` (or ``….tmp<extensions>``), so a user's
#: own hidden file is never mistaken for one
MARKER = "ssmis-"


def _ordinary_mode(path: Path) -> int:
    """The permissions file ``path`` would get from a plain ``open`` (or keeps, if it exists).

    ``mkstemp`` creates owner-only (0600) files and a rename keeps that, which would hide outputs from other users
    of a shared machine (e.g. a segmentation read by 3D Slicer under another account).
    """
    if path.exists():
        return stat.S_IMODE(path.stat().st_mode)
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _remove_stale_temporaries(path: Path, suffix: str) -> None:
    """Delete the temporary files of ``path`` that a killed write left (untouched for ``STALE_AFTER_S``)."""
    pattern = re.compile(re.escape(f".{path.name}.{MARKER}") + r"[a-z0-9_]{8}" + re.escape(suffix))
    now = time.time()
    for name in sorted(os.listdir(path.parent)):
        entry = path.parent / name
        with contextlib.suppress(OSError):
            if pattern.fullmatch(name) and entry.is_file() and now - entry.stat().st_mtime >= STALE_AFTER_S:
                logger.warning(f"removing {entry}, left by an interrupted write")
                entry.unlink()


def atomic_replace(write: Any, path: str | os.PathLike, keep_extension: bool = False) -> Path:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, fsync it, then rename it onto ``path``.

    If ``write`` raises, the temporary file is removed and ``path`` is left as it was. ``keep_extension``: the
    temporary name ends with ``path``'s extensions (``….tmp.nii.gz``), for writers that pick the format from them.
    The file gets the permissions a plain ``open`` would give (or keeps those of the file it replaces). Temporary files
    of ``path`` that a killed process left are deleted first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extensions = "".join(path.suffixes)
    suffix = ".tmp" + extensions if keep_extension else extensions + ".tmp"
    _remove_stale_temporaries(path, suffix)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.{MARKER}", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _ordinary_mode(path))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` that never leaves a truncated checkpoint behind (e.g. when the run is killed mid-write)."""
    return atomic_replace(lambda tmp: torch.save(obj, tmp), path)


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_replace(lambda tmp: Path(tmp).write_text(text), path)
