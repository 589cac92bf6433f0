"""A run's report in one call: every phase, the test data's confusion
matrix, accuracy and top losses (by file for image folders), and the time
of every process that worked on the run, written beside its checkpoints.

`TransferRun.report(test_data)` calls `write_run_report`; the image task
(`transferkit.tasks`) uses it for its `report.json`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from transferkit.records.freeze_search import FreezeSearch
from transferkit.records.report import build_report, write_report
from transferkit.serving.evaluation import evaluation

if TYPE_CHECKING:
    from transferkit.run.phase_runner import PhaseRunner

__all__ = ["write_run_report"]


def write_run_report(
    runner: PhaseRunner,
    test_data: Any = None,
    *,
    started: float,
    dataset: str | None = None,
    settings: Mapping[str, Any] | None = None,
    directory: str | os.PathLike | None = None,
    count: int = 8,
    batch_size: int = 128,
    writes: bool = True,
    searches: Sequence[FreezeSearch] = (),
) -> dict[str, Any]:
    """Builds the run's report and writes it (see `TransferRun.report`).

    `started` is this process's start on the run (`time.perf_counter()`);
    the earlier processes' time comes from the phases they ran, as recorded
    in the run folder (`runner.earlier_seconds`); `searches` are the run's
    freeze searches, kept in the report as `freeze_searches`."""
    if not runner.results:
        raise ValueError(
            "The run has no finished phase to report on: call run.train(...) "
            "or run.fine_tune(...) first."
        )
    last = runner.results[-1]
    top = confusion = metrics = None
    if test_data is not None:
        top, confusion, metrics = evaluation(
            runner.model, test_data, phase=last.name, count=count, batch_size=batch_size
        )
    this_process = time.perf_counter() - started
    report = build_report(
        runner.results,
        dataset=dataset if dataset is not None else _described(test_data),
        total_seconds=this_process + runner.earlier_seconds,
        settings=settings,
        confusion=confusion,
        top_losses=top,
    )
    if searches:
        report["freeze_searches"] = [search.to_dict() for search in searches]
    report["seconds"] = {
        "this_process": this_process,
        "earlier_processes": runner.earlier_seconds,
    }
    if metrics is not None:
        # The last phase's figures on the test data, whatever it validated on.
        report["phases"][-1]["test_accuracy"] = metrics["accuracy"]
        report["phases"][-1]["test_loss"] = metrics["loss"]
        report["test"] = {**metrics, "samples": top.total, "phase": last.name}
    if writes and directory is not None:
        images = {"top_losses": top.images} if top is not None else None
        write_report(directory, report, images=images)
    return report


def _described(data: Any) -> str:
    if isinstance(data, (str, os.PathLike)):
        return os.fspath(data)
    paths = getattr(data, "file_paths", None)
    if paths:
        return os.path.dirname(os.path.dirname(paths[0]))
    return "the run's data"
