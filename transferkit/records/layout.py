"""The names of the files in a run folder, in one place.

The run folder's code (`transferkit.run_folder`), the report and the feature
cache each write some of these files; the folder's clean-up must know all of
them as the run's own, and `python -m transferkit report` must find them
without importing TensorFlow, so the names live here, in a module that
imports nothing. (The lock's file, `run.lock`, is named by the lock itself:
`transferkit.utils.locks.LOCK_FILE`.)
"""

from __future__ import annotations

import re

__all__ = [
    "CACHE_FILE",
    "CHECKPOINT_NAME",
    "FREEZE_SEARCH_FILE",
    "REPORT_FILE",
    "STATE_FILE",
    "cache_file_name",
]

STATE_FILE = "run.json"
"""The run's state: its plan, each phase's progress and result."""

FREEZE_SEARCH_FILE = "freeze_search.json"
"""The run's freeze searches (`TransferRun.search_freeze`), for its report."""

REPORT_FILE = "report.json"
"""A report written beside the run (`transferkit.records.write_report`)."""

CHECKPOINT_NAME = re.compile(r"checkpoint-(\d{6})\.keras")
"""The names of a run's checkpoints, inside its folder."""

CACHE_FILE = re.compile(r"\.transferkit-cache-(train|validation)(-view\d+)?\.bin")
"""The names of the feature cache's files, which the run folder's clean-up
knows as its own."""


def cache_file_name(name: str, view: int = 0) -> str:
    """The file of the cached features of `name` (`"train"`,
    `"validation"`): of its first view, or of view `view`."""
    return f".transferkit-cache-{name}{f'-view{view}' if view else ''}.bin"
