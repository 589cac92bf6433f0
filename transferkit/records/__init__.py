"""What a run leaves behind, as plain records: a phase's result, the run
folder's state file, the names of its files, the report, a table of results
and a freeze search. This room imports neither Keras nor TensorFlow (a test
holds it to that), so `transferkit report DIR` reads a run without starting
TensorFlow.

>>> from transferkit.records import build_report, format_phase, write_report
>>> from transferkit.records import read_results_table, results_table
"""

from transferkit.records.freeze_search import FreezeCandidate, FreezeSearch
from transferkit.records.report import (
    build_report,
    figures_line,
    format_markdown,
    format_phase,
    format_top_losses,
    write_report,
)
from transferkit.records.table import (
    read_results_table,
    results_table,
    write_results_table,
)
from transferkit.utils.io import ensure_writable

__all__ = [
    "FreezeCandidate",
    "FreezeSearch",
    "build_report",
    "ensure_writable",
    "figures_line",
    "format_markdown",
    "format_phase",
    "format_top_losses",
    "read_results_table",
    "results_table",
    "write_results_table",
    "write_report",
]
