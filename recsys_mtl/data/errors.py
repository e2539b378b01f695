"""Errors about data files: the message names the file, the column and what was expected."""


class DataError(ValueError):
    """Bad input data (missing/corrupt file, schema mismatch, invalid ids or labels)."""
