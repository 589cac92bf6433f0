"""The errors a run folder and a phase raise, in one place for every module."""

from __future__ import annotations

__all__ = ["CheckpointError", "FolderLockedError", "NonFiniteError"]


class CheckpointError(ValueError):
    """A run folder's state or checkpoint cannot be used; the message names
    the file and what to do."""


class FolderLockedError(CheckpointError):
    """Another process writes the run folder; the message names the holder
    (process id, host, start time)."""


class NonFiniteError(FloatingPointError):
    """A phase's loss or weights became NaN or infinite; the message names
    the epoch and step, and the last finite checkpoint kept."""
