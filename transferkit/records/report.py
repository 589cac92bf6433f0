"""Run reports: `report.json` for machines, `report.md`, tables and figures
for people, and `load_report` to read one back."""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transferkit.errors import ReportError
from transferkit.records.freeze_search import FreezeSearch
from transferkit.records.layout import REPORT_FILE, STATE_FILE
from transferkit.utils.io import atomic_write, dumps, ensure_writable, json_number
from transferkit.version import __version__

if TYPE_CHECKING:  # Reading a report needs neither Keras nor TensorFlow.
    from transferkit.records.phase_result import PhaseResult

__all__ = [
    "SCHEMA_VERSION",
    "build_report",
    "figures_line",
    "format_markdown",
    "format_phase",
    "format_summary",
    "format_freeze_searches",
    "format_top_losses",
    "load_report",
    "write_report",
]

SCHEMA_VERSION = 1
"""Version of the `report.json` layout; raised whenever a field changes
meaning or disappears."""


def build_report(
    results: Sequence[PhaseResult],
    *,
    dataset: str,
    total_seconds: float,
    settings: Mapping[str, Any] | None = None,
    confusion: Mapping[str, Any] | None = None,
    top_losses: Any = None,
) -> dict[str, Any]:
    """The JSON-ready record of a run.

    Args:
        results: the run's phases, e.g. `run.results`.
        dataset: where the data came from.
        total_seconds: wall-clock seconds of the whole run.
        settings: anything else worth keeping, e.g. the command-line
            options. Defaults to `None`.
        confusion: a confusion matrix from `confusion_matrix`. Defaults to
            `None`.
        top_losses: the worst mistakes, from `transferkit.serving.evaluation.
            top_losses` (or its `to_dict()`). Defaults to `None`.

    Returns:
        `{"schema_version", "transferkit_version", "dataset", "phases",
        "total_seconds", "settings", "confusion_matrix", "top_losses",
        "figures"}`. Each
        phase holds every `PhaseResult` field (per-epoch `history` included)
        plus `test_loss`, `test_accuracy` (from its validation data, `None`
        without), `samples_per_second` and `class_mapping` (label ->
        original class id); its `also_evaluated`, the final metrics of the
        sets the phase also evaluated (`also_evaluate=`), makes the table's
        rows `on <name>`.
    """
    phases = []
    for result in results:
        phase = result.to_dict()
        phase["test_loss"] = result.metrics.get("loss")
        phase["test_accuracy"] = result.metrics.get("accuracy")
        phase["samples_per_second"] = (
            result.train_samples * result.epochs / result.seconds
            if result.train_samples and result.seconds > 0
            else None
        )
        phase["class_mapping"] = (
            {str(label): cls for label, cls in enumerate(result.classes)}
            if result.classes
            else None
        )
        phases.append(phase)
    return {
        "schema_version": SCHEMA_VERSION,
        "transferkit_version": __version__,
        "dataset": dataset,
        "phases": phases,
        "total_seconds": float(total_seconds),
        "settings": dict(settings or {}),
        "confusion_matrix": dict(confusion) if confusion else None,
        "top_losses": _top_losses_dict(top_losses),
        "figures": {},
    }


def _top_losses_dict(top: Any) -> dict[str, Any] | None:
    if top is None:
        return None
    return dict(top.to_dict() if hasattr(top, "to_dict") else top)


def phase_rows(phase: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The label and value rows that describe one phase of a report."""
    history = phase.get("history") or {}
    rows = [
        ("classes", _classes(phase["classes"], phase.get("class_names"))),
        ("train samples", _number(phase["train_samples"])),
        ("epochs", _epochs(phase)),
        ("seconds", f"{phase['seconds']:.1f}"),
        ("samples/s", _float(phase.get("samples_per_second"), "{:,.0f}")),
        ("train loss", _float(_last(history.get("loss")), "{:.4f}")),
        ("train accuracy", _float(_last(history.get("accuracy")), "{:.2%}")),
        ("test loss", _float(phase["test_loss"], "{:.4f}")),
        ("test accuracy", _float(phase["test_accuracy"], "{:.2%}")),
        # The sets the phase also evaluated (none in older reports).
        *(
            (f"on {name}", _evaluated(metrics))
            for name, metrics in (phase.get("also_evaluated") or {}).items()
        ),
        ("trainable params", _number(phase["trainable_params"])),
        ("frozen params", _number(phase["non_trainable_params"])),
        ("frozen groups", ", ".join(phase["frozen_groups"]) or "none"),
        ("frozen weights", _verdict(phase)),
        # Reports written before the speed-ups existed lack these fields.
        ("precision", phase.get("precision", "float32")),
        ("feature cache", phase.get("cache") or "not recorded"),
        ("lean step", phase.get("lean_step") or "off"),
    ]
    # transferkit's loop says its own steps per call, in its row.
    if not str(phase.get("training_loop", "")).startswith("transferkit's"):
        rows.append(("steps per execution", str(phase.get("steps_per_execution", 1))))
    # Shown only for the phases that use them (or record them).
    if phase.get("training_loop"):
        rows.append(("training loop", phase["training_loop"]))
    if phase.get("lr_multipliers"):
        rows.append(("learning rates", _multipliers(phase["lr_multipliers"])))
    if phase.get("batch_norm"):
        rows.append(("backbone batch norm", phase["batch_norm"]))
    return rows


def format_phase(phase: Mapping[str, Any]) -> str:
    """A small two-column table of one phase of a report, for a terminal."""
    rows = phase_rows(phase)
    width = max(len(label) for label, _ in rows)
    lines = [f"Phase '{phase['name']}'"]
    lines += [f"  {label:<{width}}  {value}" for label, value in rows]
    return "\n".join(lines)


def format_summary(report: Mapping[str, Any]) -> str:
    """The report as `transferkit report` prints it after its data line (and
    the image task after training): each phase's table, the total, the top
    losses and the figures."""
    parts = [format_phase(phase) + "\n" for phase in report["phases"]]
    parts.append(f"Total: {report['total_seconds']:.1f} s")
    top = format_top_losses(report)
    if top:
        parts.append("\n" + "\n".join(top))
    parts += format_freeze_searches(report)
    line = figures_line(report)
    if line:
        parts.append(line)
    return "\n".join(parts)


def figures_line(report: Mapping[str, Any]) -> str | None:
    """One line naming the report's figures or why they were skipped;
    `None` when the report has no figure entry."""
    figures = report.get("figures") or {}
    if "skipped" in figures:
        return f"Figures skipped: {figures['skipped']}"
    if figures:
        return "Figures: " + ", ".join(figures.values())
    return None


def format_markdown(report: Mapping[str, Any]) -> str:
    """`report.md`: the run as a short Markdown page, a table per phase."""
    lines = [
        "# Transfer run report",
        "",
        f"- Data: {report['dataset']}",
        f"- Total: {report['total_seconds']:.1f} s",
    ]
    for phase in report["phases"]:
        lines += ["", f"## Phase '{phase['name']}'", "", "| | |", "|---|---|"]
        lines += [f"| {label} | {value} |" for label, value in phase_rows(phase)]
    figures = report.get("figures") or {}
    if figures:
        lines += ["", "## Figures"]
    for title, name in figures.items():
        if title == "skipped":
            lines += ["", f"Figures skipped: {name}"]
        else:
            lines += ["", f"![{title.replace('_', ' ')}]({name})"]
    lines += format_top_losses(report, markdown=True)
    lines += format_freeze_searches(report, markdown=True)
    settings = report.get("settings") or {}
    if settings:
        lines += [
            "",
            "Settings: " + ", ".join(f"`{k}={v}`" for k, v in settings.items()),
        ]
    return "\n".join(lines) + "\n"


def format_freeze_searches(
    report: Mapping[str, Any], *, markdown: bool = False
) -> list[str]:
    """The report's freeze searches (`TransferRun.search_freeze`), each its
    table under a title: Markdown, or plain text."""
    lines = []
    for record in report.get("freeze_searches") or ():
        search = FreezeSearch.from_dict(record)
        best = ", ".join(search.best.frozen) or "nothing"
        title = f"Freeze search: {len(search.rows)} candidates; best: {best} frozen"
        if markdown:
            lines += ["", f"## {title}", "", "```", search.table(), "```"]
        else:
            lines += ["", title, search.table()]
    return lines


def format_top_losses(
    report: Mapping[str, Any], *, markdown: bool = False
) -> list[str]:
    """The report's top losses as lines: a Markdown table, or plain text."""
    top = report.get("top_losses")
    if not top or not top.get("rows"):
        return []
    title = (
        f"Top losses, phase '{top['phase']}': the {len(top['rows'])} most "
        f"confidently wrong of {top['wrong']} mistakes in {top['total']} samples"
    )
    named = "file" in top["rows"][0]
    header = ["file" if named else "sample", "true", "predicted", "p", "loss"]
    cells = [
        [
            str(row["file"] if named else row["index"]),
            str(row["true"]),
            str(row["predicted"]),
            f"{row['probability']:.3f}",
            f"{row['loss']:.2f}",
        ]
        for row in top["rows"]
    ]
    if markdown:
        return (
            ["", f"## {title}", "", "| " + " | ".join(header) + " |"]
            + ["|" + "---|" * len(header)]
            + ["| " + " | ".join(cell) + " |" for cell in cells]
        )
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    return [title] + [
        "  ".join(f"{v:<{w}}" for v, w in zip(line, widths, strict=True))
        for line in [header, *cells]
    ]


def write_report(
    directory: str | os.PathLike,
    report: dict[str, Any],
    *,
    figures: bool = True,
    images: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Writes `report.json`, `report.md` and the figures into `directory`.

    Every file is written to a temporary file in `directory`, flushed to disk
    and renamed over the target, so a crash leaves either the old file or
    the new one, never half of one. The figures (learning curves; the
    confusion matrix and the top losses, when the report has them, the
    latter drawn from `images["top_losses"]`) need matplotlib, the
    `transferkit[plots]` extra; without it `report["figures"]` says why they
    were skipped.

    Returns:
        The paths of `report.json` and `report.md`.

    Raises:
        OSError: if `directory` cannot be created or written, naming it.
    """
    directory = ensure_writable(directory)
    if figures:
        try:
            plots = importlib.import_module("transferkit.records.plots")
        except ImportError as error:
            report["figures"] = {
                "skipped": f"{error.msg}; install the plots extra: "
                "pip install 'transferkit[plots]'"
            }
        else:
            report["figures"] = plots.write_figures(report, directory, images)
    json_path = directory / REPORT_FILE
    md_path = directory / "report.md"
    atomic_write(json_path, dumps(report, indent=2))
    atomic_write(md_path, format_markdown(report))
    return json_path, md_path


def load_report(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a `report.json`, or the one in the folder `path`.

    Raises:
        FileNotFoundError: if there is no report at `path`.
        ReportError: naming the file, if it is truncated, not a report, or
            from a newer transferkit.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / REPORT_FILE).is_file() and (path / STATE_FILE).is_file():
            return _report_of_run_folder(path)
        path = path / REPORT_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"No report at {str(path)!r}. Expected a run folder holding "
            f"{REPORT_FILE} or {STATE_FILE}, or the file itself."
        )
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReportError(
            f"{str(path)!r} is damaged or truncated ({error})."
        ) from error
    version = report.get("schema_version") if isinstance(report, dict) else None
    if not isinstance(version, int) or not isinstance(report.get("phases"), list):
        raise ReportError(
            f"{str(path)!r} is not a transferkit report (no schema_version or phases)."
        )
    if version > SCHEMA_VERSION:
        raise ReportError(
            f"{str(path)!r} was written by a newer transferkit (report schema "
            f"{version}; this one reads up to {SCHEMA_VERSION}). Upgrade "
            "transferkit to read it."
        )
    _check_complete(report, path)
    return report


def _check_complete(report: Mapping[str, Any], path: Path) -> None:
    """Raises unless every part of `report` that the tables show is there:
    a report edited by hand, or written by another program, is named."""
    edited = "it was edited by hand or written by another program"
    for key, kinds in (("dataset", str), ("total_seconds", (int, float))):
        if not isinstance(report.get(key), kinds):
            raise ReportError(
                f"{str(path)!r} lacks {key!r} (or it is not a "
                f"{'text' if kinds is str else 'number'}): {edited}."
            )
    for index, phase in enumerate(report["phases"], start=1):
        try:
            format_phase(phase)
        except KeyError as error:
            raise ReportError(
                f"{str(path)!r}: phase {index} lacks the key {error}: {edited}."
            ) from None
        except (TypeError, ValueError, AttributeError) as error:
            raise ReportError(
                f"{str(path)!r}: phase {index} cannot be read ({error}): {edited}."
            ) from None


def _evaluated(metrics: Mapping[str, Any]) -> str:
    """E.g. `"loss 2.9012, accuracy 31.20%"`: a set's final metrics."""
    patterns = {"loss": "{:.4f}", "accuracy": "{:.2%}"}
    return ", ".join(
        f"{name} {_float(value, patterns.get(name, '{:.4g}'))}"
        for name, value in sorted(metrics.items(), key=lambda item: item[0] != "loss")
    )


def _multipliers(multipliers: Mapping[str, float]) -> str:
    return ", ".join(f"{name} x{value:g}" for name, value in multipliers.items())


def _classes(classes, names=None) -> str:
    if names:
        return ", ".join(names)
    if not classes:
        return "-"
    classes = list(classes)
    if classes == list(range(classes[0], classes[-1] + 1)) and len(classes) > 2:
        return f"{classes[0]}-{classes[-1]}"
    return ", ".join(str(c) for c in classes)


def _epochs(phase) -> str:
    """E.g. `"5"`, or `"2 of 15 (a callback set stop_training ...)"`."""
    planned = phase.get("planned_epochs")
    if planned is None or planned == phase["epochs"]:
        return str(phase["epochs"])
    return f"{phase['epochs']} of {planned} ({phase.get('stopped_early') or 'stopped'})"


def _last(values):
    return values[-1] if values else None


def _number(value) -> str:
    return "-" if value is None else f"{value:,}"


def _float(value, pattern: str) -> str:
    # Strict JSON holds non-finite numbers as "nan", "inf" or "-inf".
    return "-" if value is None else pattern.format(float(json_number(value)))


def _verdict(phase) -> str:
    if phase["frozen_unchanged"] is None:
        return "nothing frozen"
    if phase["frozen_unchanged"]:
        return "unchanged (bitwise)"
    return "CHANGED: " + ", ".join(phase["changed_variables"])


def _report_of_run_folder(folder: Path) -> dict[str, Any]:
    """The report of the finished phases a `TransferRun` folder records in
    its `run.json` (a folder that no example wrote a report for)."""
    from transferkit.records.run_record import RunRecord

    path = folder / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        record = RunRecord.from_json(state, repr(str(path)))
    except (UnicodeDecodeError, ValueError) as error:  # JSON's and the record's.
        raise ReportError(f"{str(path)!r} cannot be read: {error}") from error
    results = [phase.result for phase in record.phases if phase.result is not None]
    return build_report(
        results,
        dataset=f"the run folder {str(folder)!r} ({STATE_FILE}: its finished phases)",
        total_seconds=sum(result.seconds for result in results),
    )
