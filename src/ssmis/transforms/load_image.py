"""``LoadImaged`` whose failures name the file that could not be read."""

from __future__ import annotations

from typing import Any

from monai.data import ImageReader
from monai.transforms import LoadImage, LoadImaged

from ..utils.errors import DataError

__all__ = ["NamedLoadImage", "NamedLoadImaged"]


class NamedLoadImage(LoadImage):
    """``monai.transforms.LoadImage`` that re-raises a reader's failure as a ``DataError`` naming the file.

    MONAI reports a truncated or corrupt volume as ``applying transform <LoadImaged …>`` caused by, e.g., an
    ``EOFError`` from gzip: the path appears nowhere, so with hundreds of images one cannot tell which is bad.
    """

    def __call__(self, filename: Any, reader: ImageReader | None = None) -> Any:
        try:
            return super().__call__(filename, reader)
        except Exception as e:
            raise DataError(f"{filename}: cannot be read as an image ({type(e).__name__}: {e})") from e


class NamedLoadImaged(LoadImaged):
    """``monai.transforms.LoadImaged`` (same arguments and outputs) whose read errors name the file."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # LoadImaged builds its LoadImage from a dozen arguments; switching the class of that object (which adds
        # no state) keeps every one of them exactly as MONAI set it
        self._loader.__class__ = NamedLoadImage
