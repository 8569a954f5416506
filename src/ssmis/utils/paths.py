"""Checks on a folder that is about to be made."""

from __future__ import annotations

from pathlib import Path

__all__ = ["file_in_the_way"]


def file_in_the_way(folder: Path, itself: bool = True) -> Path | None:
    """The first existing non-folder among ``folder`` (if ``itself``) and its parents, or None: a folder cannot be
    made where one of them is a file, and ``mkdir`` would say only "Not a directory", without naming which."""
    candidates = (folder, *folder.parents) if itself else folder.parents
    return next((p for p in candidates if p.exists() and not p.is_dir()), None)
