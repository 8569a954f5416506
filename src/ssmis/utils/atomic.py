"""Atomic writes: a reader sees either the old file/folder or the complete new one, never a partial one."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["atomic_output_dir", "atomic_torch_save", "atomic_write_text", "atomic_replace", "recover_interrupted"]

logger = logging.getLogger(__name__)

#: a hidden temporary file or folder untouched for this long belongs to a killed process, not to a running one
STALE_AFTER_S = 3600.0

#: every temporary is named ``.<name>.ssmis-<8 random chars><suffix>``, so recovery never mistakes a user's own
#: hidden entry (e.g. ``.out.20240101.old``) for one of ours
MARKER = "ssmis-"


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


def _prefix(path: Path) -> str:
    return f".{path.name}.{MARKER}"


@contextlib.contextmanager
def _dir_lock(folder: Path, shared: bool = False) -> Iterator[None]:
    """Hold a ``flock`` on ``folder`` itself (no lock file is left behind): exclusive, or ``shared``.

    Recovery and swaps in a parent folder take its exclusive lock, so one process never puts back what another is in
    the middle of swapping; a write holds its ``.partial`` folder's shared lock, so recovery never deletes it as
    stale. The lock excludes processes on one machine only (network file systems may not pass ``flock`` on), and
    where ``fcntl`` is missing (Windows) there is none.
    """
    if fcntl is None:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.warning(f"waiting for another process's write in {folder}")
            fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _in_use(folder: Path) -> bool:
    """Whether a running write holds ``folder``'s shared lock (see :func:`_dir_lock`)."""
    if fcntl is None:
        return False
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _tmp_sibling(path: Path, suffix: str = "", keep_extension: bool = False) -> Path:
    suffix = ".tmp" + suffix if keep_extension else suffix + ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _siblings(path: Path, suffix: str) -> list[Path]:
    """Our hidden temporaries for ``path`` here: ``.<name>.ssmis-<8 random chars><suffix>``."""
    pattern = re.compile(re.escape(_prefix(path)) + r"[a-z0-9_]{8}" + re.escape(suffix))
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        return []
    return [path.parent / n for n in sorted(names) if pattern.fullmatch(n)]


def _newest_mtime(entry: Path) -> float:
    """The latest modification time in ``entry`` (a file, or a folder and everything under it)."""
    newest = entry.lstat().st_mtime
    if entry.is_dir() and not entry.is_symlink():
        for root, dirs, files in os.walk(entry):
            for name in dirs + files:
                with contextlib.suppress(OSError):
                    newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


def _remove_stale(entries: list[Path], now: float) -> None:
    for entry in entries:
        with contextlib.suppress(OSError):
            if now - _newest_mtime(entry) < STALE_AFTER_S or (entry.is_dir() and _in_use(entry)):
                continue  # possibly another process's write in progress
            logger.warning(f"removing {entry}, left by an interrupted write")
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def recover_interrupted(path: str | os.PathLike) -> None:
    """Put back what a process killed inside :func:`atomic_output_dir` for ``path`` had set aside, and delete its
    stale temporary folders.

    A kill between the two renames of a swap leaves ``path`` (or one of its entries) only in a hidden
    ``.<name>.ssmis-*.old`` (whole folder) or ``.<name>.ssmis-*.aside`` (``keep_others`` entries) sibling; those are
    moved back wherever ``path`` lacks them, then removed. ``.<name>.ssmis-*.partial`` folders in which nothing was
    touched for ``STALE_AFTER_S`` and that no running write holds are deleted. It
    holds the parent folder's lock, so a swap running in another process is never undone half-way.
    """
    path = Path(path).absolute()
    if not path.parent.is_dir():
        return
    with _dir_lock(path.parent):
        _recover(path)


def _recover(path: Path) -> None:
    """:func:`recover_interrupted`, with the parent folder's lock already held."""
    for old in _siblings(path, ".old"):
        if not os.path.lexists(path):
            logger.warning(f"restoring {path} from {old.name}, set aside by an interrupted run")
            os.replace(old, path)
        else:
            shutil.rmtree(old, ignore_errors=True)  # the swap had completed; only the removal was cut short
    for aside in _siblings(path, ".aside"):
        if not path.is_dir():
            continue  # nothing to put the entries back into: leave them where they are
        for entry in sorted(os.listdir(aside)):
            if not os.path.lexists(path / entry):
                logger.warning(f"restoring {path / entry} from {aside.name}, set aside by an interrupted run")
                os.replace(aside / entry, path / entry)
        shutil.rmtree(aside, ignore_errors=True)
    _remove_stale(_siblings(path, ".partial"), time.time())


def atomic_replace(write: Any, path: str | os.PathLike, keep_extension: bool = False) -> Path:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, fsync it, then rename it onto ``path``.

    If ``write`` raises, the temporary file is removed and ``path`` is left as it was. ``keep_extension``: the
    temporary name ends with ``path``'s extensions (``….tmp.nii.gz``), for writers that pick the format from them.
    Temporary files of ``path`` that a killed process left (untouched for ``STALE_AFTER_S``) are deleted first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sfx = "".join(path.suffixes)
    _remove_stale(_siblings(path, ".tmp" + sfx if keep_extension else sfx + ".tmp"), time.time())
    tmp = _tmp_sibling(path, sfx, keep_extension)
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
    What an earlier, killed run set aside is put back first (:func:`recover_interrupted`).
    """
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted(path)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".partial", dir=path.parent))
    try:
        with _dir_lock(tmp, shared=True):  # however long the caller writes, recovery never takes this for stale
            yield tmp
        os.chmod(tmp, _final_mode(path, directory=True))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with _dir_lock(path.parent):
        if keep_others and path.is_dir():
            _replace_entries(tmp, path)
            return
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".old", dir=path.parent))
            os.rmdir(old)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _replace_entries(new: Path, path: Path) -> None:
    """Move every entry of ``new`` into ``path`` over its namesake: folders first, then files; then remove ``new``."""
    trash = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".aside", dir=path.parent))
    for entry in sorted(os.listdir(new), key=lambda e: (not (new / e).is_dir(), e)):
        if (path / entry).is_dir() and not (path / entry).is_symlink():
            os.replace(path / entry, trash / entry)  # a rename cannot replace a non-empty folder: set it aside
        os.replace(new / entry, path / entry)  # a file (or link) is replaced in one rename
    shutil.rmtree(trash, ignore_errors=True)
    shutil.rmtree(new, ignore_errors=True)
