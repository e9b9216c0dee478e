"""Errors of the dataset readers."""


class DataFormatError(ValueError):
    """A data file is corrupt, truncated, or not in the format it claims."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not where earlyprune looked; the message lists the places and how to get it."""
