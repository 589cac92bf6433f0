"""Every exception transferkit raises of its own, in one place.

Each message names the bad value or file and the way out; the classes let a
caller catch one kind of failure:

>>> from transferkit.errors import CheckpointError, FolderLockedError
>>> issubclass(FolderLockedError, CheckpointError)
True
"""

from __future__ import annotations

__all__ = [
    "CacheTooLarge",
    "CheckpointError",
    "ExportParityError",
    "FolderLockedError",
    "NonFiniteError",
    "ReportError",
    "WorkerLostError",
]


class CheckpointError(ValueError):
    """A run folder's state or checkpoint cannot be used; the message names
    the file and what to do."""


class FolderLockedError(CheckpointError):
    """Another process writes the run folder; the message names the holder
    (process id, host, start time)."""


class NonFiniteError(FloatingPointError):
    """A phase's loss or weights became NaN or infinite; the message names
    the epoch and step, and the last finite checkpoint kept."""


class WorkerLostError(RuntimeError):
    """A worker of a multi-worker run stopped answering, so this one stopped
    too; the message says where the run can resume from."""


class ExportParityError(ValueError):
    """The exported artifact's outputs differ from the model's."""


class ReportError(ValueError):
    """A report file cannot be read; the message names it."""


class CacheTooLarge(Exception):
    """The feature cache would exceed its memory bound where it may not use
    files; nothing was computed. The phase then runs uncached and its result
    says why."""
