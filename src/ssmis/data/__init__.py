"""Data preparation (``python -m ssmis.data``) and datalist loading for the bundles."""

from .datalist import DATALIST_KEYS, check_distinct_outputs, load_datalist, write_datalist
from ..utils.errors import DataError
from .image_writer import AtomicNibabelWriter

__all__ = [
    "AtomicNibabelWriter", "DATALIST_KEYS", "DataError", "check_distinct_outputs", "load_datalist", "write_datalist",
]
