"""Atomic writes: a reader sees either the old file/folder or the complete new one, never a partial one."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

__all__ = ["atomic_output_dir", "atomic_torch_save", "atomic_write_text", "atomic_replace"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _final_mode(path: Path, directory: bool = False) -> int:
    """The permissions ``path`` would get from a plain ``open``/``mkdir`` (or keeps, if it exists).

    ``mkstemp``/``mkdtemp`` create owner-only (0600/0700) entries and a rename keeps that, which would hide
    outputs from other users of a shared machine (e.g. a segmentation read by 3D Slicer under another account).
    """
    if path.exists():
        return stat.S_IMODE(path.stat().st_mode)
    return (0o777 if directory else 0o666) & ~_umask()


def _tmp_sibling(path: Path, suffix: str = "", keep_extension: bool = False) -> Path:
    suffix = ".tmp" + suffix if keep_extension else suffix + ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def atomic_replace(write: Any, path: str | os.PathLike, keep_extension: bool = False) -> Path:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, fsync it, then rename it onto ``path``.

    If ``write`` raises, the temporary file is removed and ``path`` is left as it was. ``keep_extension``: the
    temporary name ends with ``path``'s extensions (``….tmp.nii.gz``), for writers that pick the format from them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path, "".join(path.suffixes), keep_extension)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _final_mode(path))
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


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike, keep_others: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path``, on error it is deleted.

    An existing ``path`` survives a failed run untouched, and a successful run never mixes old and new files.
    ``keep_others``: an existing ``path`` is kept, and only the entries the new folder holds replace their
    namesakes in it, one rename each (folders first, then files such as an index), so entries it does not write
    (e.g. a user's ``imagesTs/`` beside a prepared dataset) never leave it, even if the process dies mid-way.
    """
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, _final_mode(path, directory=True))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep_others and path.is_dir():
        _replace_entries(tmp, path)
        return
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
        os.rmdir(old)
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _replace_entries(new: Path, path: Path) -> None:
    """Move every entry of ``new`` into ``path`` over its namesake: folders first, then files; then remove ``new``."""
    trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    for entry in sorted(os.listdir(new), key=lambda e: (not (new / e).is_dir(), e)):
        if (path / entry).is_dir() and not (path / entry).is_symlink():
            os.replace(path / entry, trash / entry)  # a rename cannot replace a non-empty folder: set it aside
        os.replace(new / entry, path / entry)  # a file (or link) is replaced in one rename
    shutil.rmtree(trash, ignore_errors=True)
    shutil.rmtree(new, ignore_errors=True)
