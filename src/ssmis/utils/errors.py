"""The exception bad input data raises (data preparation, image loading, label checks)."""


class DataError(ValueError):
    """Bad input data. The message names the offending file or field."""
