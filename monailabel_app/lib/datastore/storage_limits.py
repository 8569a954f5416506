"""How much disk the datastore may take: a client that may upload could otherwise fill the disk one allowed file at
a time, and the server's own writes (labels, trained weights, the datastore index) would then fail."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Dict

from lib.conf_values import positive_number
from lib.errors import RequestError

__all__ = ["StorageLimits", "folder_bytes"]

GIB = 1 << 30


def folder_bytes(folder: str | os.PathLike) -> int:
    """The bytes of the regular files under ``folder`` (links not followed; 0 for a missing folder)."""
    total, stack = 0, [os.fspath(folder)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:  # removed while counted
                continue
    return total


@dataclass(frozen=True)
class StorageLimits:
    """Args:
        max_bytes: the most bytes of images and labels the datastore may hold (default 64 GiB; the 100 LA MRIs
            of the challenge take about 2 GiB gzipped). Conf key ``max_datastore_gb``.
        min_free_bytes: the free space a write must leave on the datastore's disk (default 2 GiB). Conf key
            ``min_free_disk_gb``.
        max_index_bytes: the most bytes of the datastore's JSON index (default 64 MiB), which the server holds in
            memory and rewrites on every change; each image's and label's info may hold 256 KiB, and label tags
            are any names. Conf key ``max_index_mb``.
    """

    max_bytes: int = 64 * GIB
    min_free_bytes: int = 2 * GIB
    max_index_bytes: int = 64 << 20

    @classmethod
    def from_conf(cls, conf: Dict[str, str]) -> "StorageLimits":
        """The limits from ``--conf max_datastore_gb``, ``min_free_disk_gb`` and ``max_index_mb``; a bad value
        names its key."""
        values = {}
        for key, field, scale in (("max_datastore_gb", "max_bytes", GIB), ("min_free_disk_gb", "min_free_bytes", GIB),
                                  ("max_index_mb", "max_index_bytes", 1 << 20)):
            value = positive_number(conf, key)
            if value is not None:
                values[field] = int(value * scale)
        return cls(**values)

    def check(self, folder: str | os.PathLike, incoming: int, replaced: int = 0, what: str = "the upload") -> None:
        """Raise a 507 :class:`~lib.errors.RequestError` naming the conf key when writing ``incoming`` bytes into
        the datastore at ``folder`` (replacing a file of ``replaced`` bytes) would pass a limit."""
        stored = folder_bytes(folder)
        if stored - replaced + incoming > self.max_bytes:
            raise RequestError(507, f"{what} ({incoming / 2 ** 20:.1f} MiB) would take the datastore past its "
                                    f"{self.max_bytes / GIB:g} GiB (it holds {stored / GIB:.2f} GiB): delete images "
                                    "or labels, or raise --conf max_datastore_gb")
        free = shutil.disk_usage(folder).free
        if free - incoming < self.min_free_bytes:
            raise RequestError(507, f"{what} ({incoming / 2 ** 20:.1f} MiB) would leave less than "
                                    f"{self.min_free_bytes / GIB:g} GiB free on the datastore's disk ("
                                    f"{free / GIB:.2f} GiB free): free some space, or lower --conf min_free_disk_gb")

    def check_index(self, index: str | os.PathLike, added: int, what: str) -> None:
        """Raise a 507 :class:`~lib.errors.RequestError` naming the conf key when ``added`` more bytes (an upper
        bound of what a change adds) would take the index file ``index`` past ``max_index_bytes``."""
        size = os.path.getsize(index) if os.path.isfile(index) else 0
        if size + added > self.max_index_bytes:
            raise RequestError(507, f"{what} would take the datastore's index past {self.max_index_bytes / 2 ** 20:g} "
                                    f"MiB (it holds {size / 2 ** 20:.1f} MiB): shorten the info, delete images or "
                                    "labels, or raise --conf max_index_mb")
