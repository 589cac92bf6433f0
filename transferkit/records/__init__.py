"""What a run leaves behind, as plain records: a phase's result, the run
folder's state file, the names of its files, and the report. This room imports
neither Keras nor TensorFlow (a test holds it to that), so
`transferkit report DIR` reads a run without starting TensorFlow.

>>> from transferkit.records import build_report, format_phase, write_report
"""

from transferkit.records.report import (
    build_report,
    figures_line,
    format_markdown,
    format_phase,
    format_top_losses,
    write_report,
)
from transferkit.utils.io import ensure_writable

__all__ = [
    "build_report",
    "ensure_writable",
    "figures_line",
    "format_markdown",
    "format_phase",
    "format_top_losses",
    "write_report",
]
