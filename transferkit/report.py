"""Run reports: `report.json` for machines, `report.md` and tables for people."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transferkit._io import atomic_write, ensure_writable
from transferkit.transfer_run import PhaseResult

__all__ = [
    "SCHEMA_VERSION",
    "atomic_write",
    "build_report",
    "ensure_writable",
    "format_markdown",
    "format_phase",
    "write_report",
]

SCHEMA_VERSION = 1
"""Version of the `report.json` layout; raised whenever a field changes."""


def build_report(
    results: Sequence[PhaseResult],
    *,
    dataset: str,
    total_seconds: float,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON-ready record of a run.

    Args:
        results: the run's phases, e.g. `run.results`.
        dataset: where the data came from.
        total_seconds: wall-clock seconds of the whole run.
        settings: anything else worth keeping, e.g. the command-line
            options. Defaults to `None`.

    Returns:
        `{"schema_version", "dataset", "phases", "total_seconds",
        "settings"}`. Each phase holds every `PhaseResult` field plus
        `test_loss` and `test_accuracy` (from its validation data, `None`
        without).
    """
    phases = []
    for result in results:
        phase = result.to_dict()
        phase["test_loss"] = result.metrics.get("loss")
        phase["test_accuracy"] = result.metrics.get("accuracy")
        phases.append(phase)
    return {
        "schema_version": SCHEMA_VERSION,
        "dataset": dataset,
        "phases": phases,
        "total_seconds": float(total_seconds),
        "settings": dict(settings or {}),
    }


def format_phase(phase: Mapping[str, Any]) -> str:
    """A small two-column table of one phase of a report, for a terminal."""
    rows = [
        ("classes", _classes(phase["classes"])),
        ("train samples", _number(phase["train_samples"])),
        ("epochs", str(phase["epochs"])),
        ("seconds", f"{phase['seconds']:.1f}"),
        ("test loss", _float(phase["test_loss"], "{:.4f}")),
        ("test accuracy", _float(phase["test_accuracy"], "{:.2%}")),
        ("trainable params", _number(phase["trainable_params"])),
        ("non-trainable params", _number(phase["non_trainable_params"])),
        ("frozen groups", ", ".join(phase["frozen_groups"]) or "none"),
        ("frozen weights", _verdict(phase)),
    ]
    width = max(len(label) for label, _ in rows)
    lines = [f"Phase '{phase['name']}'"]
    lines += [f"  {label:<{width}}  {value}" for label, value in rows]
    return "\n".join(lines)


def format_markdown(report: Mapping[str, Any]) -> str:
    """`report.md`: the run as a short Markdown page."""
    header = (
        "| phase | classes | train samples | epochs | seconds | test loss "
        "| test accuracy | trainable params | frozen groups | frozen weights |"
    )
    lines = [
        "# Transfer run report",
        "",
        f"- Data: {report['dataset']}",
        f"- Total: {report['total_seconds']:.1f} s",
        "",
        header,
        "|" + "---|" * (header.count("|") - 1),
    ]
    for phase in report["phases"]:
        cells = [
            phase["name"],
            _classes(phase["classes"]),
            _number(phase["train_samples"]),
            str(phase["epochs"]),
            f"{phase['seconds']:.1f}",
            _float(phase["test_loss"], "{:.4f}"),
            _float(phase["test_accuracy"], "{:.2%}"),
            _number(phase["trainable_params"]),
            ", ".join(phase["frozen_groups"]) or "none",
            _verdict(phase),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    settings = report.get("settings") or {}
    if settings:
        lines += [
            "",
            "Settings: " + ", ".join(f"`{k}={v}`" for k, v in settings.items()),
        ]
    return "\n".join(lines) + "\n"


def write_report(
    directory: str | os.PathLike, report: Mapping[str, Any]
) -> tuple[Path, Path]:
    """Writes `report.json` and `report.md` into `directory`, atomically.

    Each file is written to a temporary file in `directory`, flushed to disk
    and renamed over the target, so a crash leaves either the old file or
    the new one, never half of one.

    Returns:
        The paths of `report.json` and `report.md`.

    Raises:
        OSError: if `directory` cannot be created or written, naming it.
    """
    directory = ensure_writable(directory)
    json_path = directory / "report.json"
    md_path = directory / "report.md"
    atomic_write(json_path, json.dumps(report, indent=2) + "\n")
    atomic_write(md_path, format_markdown(report))
    return json_path, md_path


def _classes(classes) -> str:
    if not classes:
        return "-"
    classes = list(classes)
    if classes == list(range(classes[0], classes[-1] + 1)) and len(classes) > 2:
        return f"{classes[0]}-{classes[-1]}"
    return ", ".join(str(c) for c in classes)


def _number(value) -> str:
    return "-" if value is None else f"{value:,}"


def _float(value, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def _verdict(phase) -> str:
    if phase["frozen_unchanged"] is None:
        return "nothing frozen"
    if phase["frozen_unchanged"]:
        return "unchanged (bitwise)"
    return "CHANGED: " + ", ".join(phase["changed_variables"])
