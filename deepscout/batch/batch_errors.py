"""The batch jobs' deliberate errors: one line each, saying what to change."""

from __future__ import annotations

from deepscout.errors import DeepscoutError


class BatchInputError(DeepscoutError, ValueError):
    """The input file (as a whole) or the batch's options are unusable."""


class OutputFolderError(DeepscoutError, FileExistsError):
    """The output folder holds another job's results, or cannot be written."""


class BatchNotFoundError(DeepscoutError, LookupError):
    """No batch job has the id given."""


class BatchBusyError(DeepscoutError, RuntimeError):
    """Another live process is running the batch job."""
