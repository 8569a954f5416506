"""Data preparation (``python -m ssmis.data``) and datalist loading for the bundles."""

from .datalist import DATALIST_KEYS, load_datalist, write_datalist
from .errors import DataError

__all__ = ["DATALIST_KEYS", "DataError", "load_datalist", "write_datalist"]
