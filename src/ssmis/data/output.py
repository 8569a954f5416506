"""The output folder of a preparation command: checked before anything is read or written, then written beside
``output`` and put in its place in one step."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
from pathlib import Path
from typing import Iterator

from ..utils.errors import DataError
from ..utils.paths import file_in_the_way

try:
    import fcntl
except ImportError:  # not on POSIX: no locks; an existing <output>.partial is then always refused
    fcntl = None

__all__ = ["check_output_dir", "replace_output_dir"]

logger = logging.getLogger(__name__)


def check_output_dir(output: str | os.PathLike, inputs: dict[str, str | os.PathLike | None] | None = None) -> Path:
    """Refuse an ``output`` folder whose replacement would delete data; return its absolute path.

    Preparation commands replace ``output`` (:func:`replace_output_dir`; entries they do not write, such as
    ``imagesTs/``, are carried over), so it must not be, or contain, one of the ``inputs``
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


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names of ``a`` and ``b`` in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or the file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)  # same file system (a sibling folder): instant, no extra space
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


HELD, BUSY, UNSUPPORTED = "held", "busy", "unsupported"


@contextlib.contextmanager
def _locked(path: Path, blocking: bool = True) -> Iterator[str]:
    """Hold an exclusive ``flock`` on the folder ``path`` while the block runs and yield ``HELD``; ``BUSY`` where
    ``blocking`` is False and another process holds it; ``UNSUPPORTED`` where the file system cannot lock a folder
    (NFS, which emulates flock with locks that need a file open for writing) or the platform has no flock. The
    kernel drops the lock when its holder dies, so a held lock means a live process."""
    if fcntl is None:
        yield UNSUPPORTED
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        state = HELD
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            state = BUSY
        except OSError as e:
            logger.debug(f"cannot lock {path} ({e.strerror})")
            state = UNSUPPORTED
        yield state
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def replace_output_dir(output: str | os.PathLike) -> Iterator[Path]:
    """Yield ``<output>.partial``, a new folder to write into; on success it takes the place of ``output``, on
    error it is deleted and ``output`` is left as it was.

    A reader of ``output`` sees the old folder or the complete new one: the two are exchanged in one rename
    (Linux), then the old one is deleted. Where that is not available, ``output`` is renamed to ``<output>.old``
    and the new folder into place, two renames apart; a run killed between them is put right by the next one.
    Entries of an existing ``output`` that the new folder lacks (a user's ``imagesTs/``) are carried into it first,
    as hard links where the file system allows, so nothing but what the preparation rewrites leaves ``output``.

    The writing run holds a ``flock`` on ``<output>.partial`` until it is done. A ``<output>.partial`` whose lock
    another process holds is refused before anything is written (the message names it); one that nobody holds was
    left by a killed run and is deleted. Setting up and swapping happen under a lock on the parent folder, so two
    runs never both take the same ``.partial``. Where the file system cannot lock (NFS), an existing
    ``.partial`` is refused, as nobody can tell whether a live run holds it.
    """
    output = Path(output).absolute()
    partial, old = output.with_name(output.name + ".partial"), output.with_name(output.name + ".old")
    blocked = file_in_the_way(output, itself=False)
    if blocked is not None:
        raise DataError(f"{output}: cannot be made, {blocked} is a file")
    output.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as held:
        with _locked(output.parent):
            if old.is_dir():  # a swap of the two-rename kind was cut short
                if not os.path.lexists(output):
                    logger.warning(f"restoring {output} from {old.name}, set aside by an interrupted run")
                    os.replace(old, output)
                else:
                    shutil.rmtree(old)
            if partial.is_dir() and not partial.is_symlink():
                with _locked(partial, blocking=False) as state:
                    if state == BUSY:
                        raise DataError(f"{partial} exists and another preparation is writing it; wait for it to "
                                        "finish, or choose another --output")
                    if state == UNSUPPORTED:
                        raise DataError(f"{partial} exists: another preparation is writing it, or an interrupted "
                                        "one left it (this file system cannot tell which); delete it if no "
                                        "preparation is running, and run again")
                logger.warning(f"deleting {partial}, left by an interrupted preparation")
                shutil.rmtree(partial)
            try:
                partial.mkdir()
            except FileExistsError:  # a file or a link of that name: not ours to delete
                raise DataError(f"{partial} exists and is not a folder this project writes; move it away and "
                                "run again") from None
            held.enter_context(_locked(partial))
        try:
            yield partial
            if output.is_dir():
                for entry in sorted(os.listdir(output)):
                    src, dst = output / entry, partial / entry
                    if os.path.lexists(dst):
                        continue
                    if src.is_dir() and not src.is_symlink():
                        shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
                    else:
                        _link_or_copy(str(src), str(dst))
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        with _locked(output.parent):
            if output.exists() and _exchange(partial, output):
                shutil.rmtree(partial)  # now the old folder
                return
            if output.exists():
                os.replace(output, old)
            os.replace(partial, output)
            shutil.rmtree(old, ignore_errors=True)
