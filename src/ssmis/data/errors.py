"""The one exception that data preparation raises for bad input."""


class DataError(ValueError):
    """Bad input data. The message names the offending file or field."""
