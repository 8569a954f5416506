"""A NIfTI writer for ``monai.transforms.SaveImaged`` that replaces its output file atomically.

MONAI's ``NibabelWriter`` calls ``nib.save`` on the final path, so a run killed mid-write leaves a truncated
segmentation where an earlier complete one stood (and a reader may load half a file). This subclass writes the
same bytes to a temporary sibling and renames it into place.
"""

from __future__ import annotations

import os
from typing import Any

from monai.data import NibabelWriter
from monai.data.image_writer import logger as monai_writer_logger

from ..utils.atomic import atomic_replace

__all__ = ["AtomicNibabelWriter"]


class AtomicNibabelWriter(NibabelWriter):
    """``NibabelWriter`` whose ``write`` is atomic; use as ``SaveImaged(..., writer=AtomicNibabelWriter)``."""

    def write(self, filename: str | os.PathLike, verbose: bool = False, **obj_kwargs: Any) -> None:
        # MONAI's own "writing: …" line, under the final name rather than the temporary one
        if verbose:
            monai_writer_logger.info(f"writing: {filename}")
        # the temporary name keeps ".nii.gz"/".nii": nibabel picks compression from the extension
        atomic_replace(lambda tmp: super(AtomicNibabelWriter, self).write(tmp, False, **obj_kwargs), filename,
                       keep_extension=True)
