"""Run reports: `report.json` for machines, `report.md`, tables and figures
for people, and `load_report` to read one back."""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from transferkit._io import atomic_write, dumps, ensure_writable, json_number

if TYPE_CHECKING:  # Reading a report needs neither Keras nor TensorFlow.
    import keras

    from transferkit.class_subset import ClassSubset
    from transferkit.phase_result import PhaseResult

__all__ = [
    "SCHEMA_VERSION",
    "ReportError",
    "build_report",
    "confusion_matrix",
    "ensure_writable",
    "figures_line",
    "format_markdown",
    "format_phase",
    "load_report",
    "write_report",
]

SCHEMA_VERSION = 1
"""Version of the `report.json` layout; raised whenever a field changes
meaning or disappears."""

REPORT_FILE = "report.json"


class ReportError(ValueError):
    """A report file cannot be read; the message names it."""


def build_report(
    results: Sequence[PhaseResult],
    *,
    dataset: str,
    total_seconds: float,
    settings: Mapping[str, Any] | None = None,
    confusion: Mapping[str, Any] | None = None,
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

    Returns:
        `{"schema_version", "transferkit_version", "dataset", "phases",
        "total_seconds", "settings", "confusion_matrix", "figures"}`. Each
        phase holds every `PhaseResult` field (per-epoch `history` included)
        plus `test_loss`, `test_accuracy` (from its validation data, `None`
        without), `samples_per_second` and `class_mapping` (label ->
        original class id).
    """
    from transferkit import __version__

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
        "figures": {},
    }


def confusion_matrix(
    model: keras.Model, subset: ClassSubset, *, phase: str, batch_size: int = 128
) -> dict[str, Any]:
    """Counts of true against predicted class on `subset`, in original ids.

    Args:
        model: a classifier whose output width is `subset.num_classes`.
        subset: labelled data, e.g. the final phase's test subset.
        phase: the name of the phase the matrix belongs to.
        batch_size: samples per forward pass. Defaults to `128`.

    Returns:
        `{"phase", "classes", "matrix"}`: `matrix[i][j]` counts samples of
        `classes[i]` predicted as `classes[j]`.
    """
    import tensorflow as tf  # Here: reading a report must not start TensorFlow.

    # A plain forward pass rather than `predict`, which under a multi-worker
    # strategy gathers its outputs across the workers.
    forward = tf.function(lambda x: tf.argmax(model(x, training=False), axis=-1))
    predicted = np.concatenate(
        [
            forward(tf.constant(subset.x[start : start + batch_size])).numpy()
            for start in range(0, len(subset.x), batch_size)
        ]
    )
    size = subset.num_classes
    matrix = np.bincount(subset.y * size + predicted, minlength=size * size)
    return {
        "phase": phase,
        "classes": list(subset.classes),
        "matrix": matrix.reshape(size, size).tolist(),
    }


def phase_rows(phase: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The label and value rows that describe one phase of a report."""
    history = phase.get("history") or {}
    rows = [
        ("classes", _classes(phase["classes"])),
        ("train samples", _number(phase["train_samples"])),
        ("epochs", _epochs(phase)),
        ("seconds", f"{phase['seconds']:.1f}"),
        ("samples/s", _float(phase.get("samples_per_second"), "{:,.0f}")),
        ("train loss", _float(_last(history.get("loss")), "{:.4f}")),
        ("train accuracy", _float(_last(history.get("accuracy")), "{:.2%}")),
        ("test loss", _float(phase["test_loss"], "{:.4f}")),
        ("test accuracy", _float(phase["test_accuracy"], "{:.2%}")),
        ("trainable params", _number(phase["trainable_params"])),
        ("frozen params", _number(phase["non_trainable_params"])),
        ("frozen groups", ", ".join(phase["frozen_groups"]) or "none"),
        ("frozen weights", _verdict(phase)),
        # Reports written before the speed-ups existed lack these fields.
        ("precision", phase.get("precision", "float32")),
        ("feature cache", phase.get("cache") or "not recorded"),
        ("lean step", phase.get("lean_step") or "off"),
        ("steps per execution", str(phase.get("steps_per_execution", 1))),
    ]
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
    settings = report.get("settings") or {}
    if settings:
        lines += [
            "",
            "Settings: " + ", ".join(f"`{k}={v}`" for k, v in settings.items()),
        ]
    return "\n".join(lines) + "\n"


def write_report(
    directory: str | os.PathLike, report: dict[str, Any], *, figures: bool = True
) -> tuple[Path, Path]:
    """Writes `report.json`, `report.md` and the figures into `directory`.

    Every file is written to a temporary file in `directory`, flushed to disk
    and renamed over the target, so a crash leaves either the old file or
    the new one, never half of one. The figures (learning curves; the
    confusion matrix, when the report has one) need matplotlib, the
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
            plots = importlib.import_module("transferkit.plots")
        except ImportError as error:
            report["figures"] = {
                "skipped": f"{error.msg}; install the plots extra: "
                "pip install 'transferkit[plots]'"
            }
        else:
            report["figures"] = plots.write_figures(report, directory)
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
        path = path / REPORT_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"No report at {str(path)!r}. Expected a run folder holding "
            f"{REPORT_FILE}, or the file itself."
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
    return report


def _multipliers(multipliers: Mapping[str, float]) -> str:
    return ", ".join(f"{name} x{value:g}" for name, value in multipliers.items())


def _classes(classes) -> str:
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
