"""PNG figures of a run report. Needs matplotlib (`transferkit[plots]`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # Files only; no window, no display needed.

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.font_manager import FontProperties  # noqa: E402
from matplotlib.textpath import text_to_path  # noqa: E402

from transferkit.records.phase_result import evaluated_key  # noqa: E402
from transferkit.utils.io import atomic_output  # noqa: E402

__all__ = [
    "plot_confusion_matrix",
    "plot_freeze_search",
    "plot_learning_curves",
    "plot_learning_rate_sweep",
    "plot_top_losses",
    "write_figures",
]


def write_figures(
    report: Mapping[str, Any],
    directory: Path,
    images: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Writes the report's figures into `directory`, each atomically.

    Returns:
        Figure title -> file name: `learning_curves` always,
        `confusion_matrix` when the report has one, `freeze_search` (the
        last one) when it has freeze searches, `top_losses` when it
        has them and `images["top_losses"]` holds their samples.
    """
    written = {}
    figure = plot_learning_curves(report)
    written["learning_curves"] = _save(figure, directory / "learning_curves.png")
    if report.get("confusion_matrix"):
        figure = plot_confusion_matrix(report["confusion_matrix"])
        written["confusion_matrix"] = _save(figure, directory / "confusion_matrix.png")
    if report.get("freeze_searches"):
        figure = plot_freeze_search(report["freeze_searches"][-1])
        written["freeze_search"] = _save(figure, directory / "freeze_search.png")
    samples = (images or {}).get("top_losses")
    if report.get("top_losses") and samples is not None:
        figure = plot_top_losses(report["top_losses"], samples)
        written["top_losses"] = _save(figure, directory / "top_losses.png")
    return written


def plot_learning_curves(report: Mapping[str, Any]):
    """Loss and accuracy per epoch, train and validation, across all phases
    on one epoch axis and one scale, each phase's start marked and named;
    each set a phase also evaluated (`also_evaluate=`) is a dotted line of
    its own, labelled with its name, one colour per name in every phase."""
    phases = report["phases"]
    figure, axes = plt.subplots(2, 1, figsize=(7.5, 6.5), sharex=True)
    start, labelled = 0, set()
    colors = _evaluated_colors(phases)
    for number, phase in enumerate(phases):
        history = phase["history"]
        epochs = max((len(v) for v in history.values()), default=0)
        for axis, metric in zip(axes, ("loss", "accuracy"), strict=True):
            lines = [
                (metric, "train", "-o", "C0"),
                (f"val_{metric}", "validation", "--s", "C1"),
            ] + [
                (f"{evaluated_key(name)}_{metric}", name, ":^", colors[name])
                for name in phase.get("also_evaluated") or {}
            ]
            for key, label, style, color in lines:
                values = history.get(key)
                if values:
                    axis.plot(
                        range(start + 1, start + len(values) + 1),
                        [_plotted(value) for value in values],
                        style,
                        color=color,
                        label=None if (axis, label) in labelled else label,
                        markersize=4,
                    )
                    labelled.add((axis, label))
            if number:
                axis.axvline(start + 0.5, color="grey", linewidth=0.8)
        note = axes[0].annotate(
            f"{phase['name']}\n(frozen: {_frozen_words(phase['frozen_groups'])})",
            xy=(start + 0.6, 1.0),
            xycoords=("data", "axes fraction"),
            va="top",
            fontsize=8,
        )
        note.set_in_layout(False)  # A phase's note may run past the axes.
        start += epochs
    for axis, metric in zip(axes, ("loss", "accuracy"), strict=True):
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        if axis.has_data():
            axis.legend(loc="center right")
    axes[1].set_xlabel("epoch, all phases")
    axes[1].xaxis.get_major_locator().set_params(integer=True)
    figure.suptitle(f"Learning curves: {report['dataset']}", fontsize=10)
    figure.tight_layout()
    return figure


def _evaluated_colors(phases) -> dict[str, str]:
    """A colour for each name of an evaluated set, in the order they first
    appear; train and validation have the first two."""
    names = dict.fromkeys(
        name for phase in phases for name in phase.get("also_evaluated") or {}
    )
    return {name: f"C{index + 2}" for index, name in enumerate(names)}


def _plotted(value) -> float:
    """A history value as a number: strict JSON holds NaN as `"nan"` (an
    epoch a set was not evaluated in, which the line skips) and infinity as
    `"inf"`, which `float` reads; matplotlib would plot text as categories."""
    return float(value)


def _frozen_words(groups) -> str:
    """The frozen groups, the first to the last where listing them all
    would not fit above a short phase (`stage_1..stage_7 (7 groups)`)."""
    words = ", ".join(groups) or "nothing"
    if len(words) <= 28:
        return words
    return f"{groups[0]}..{groups[-1]} ({len(groups)} groups)"


def plot_confusion_matrix(confusion: Mapping[str, Any]):
    """Counts of true against predicted class, labelled with the classes'
    names (or original ids); names wider than a cell slant at 45 degrees,
    and the cells widen so that neighbouring names stay apart."""
    matrix, classes = confusion["matrix"], confusion["classes"]
    names = [str(c) for c in classes]
    size = len(names)
    longest, line = _label_inches(names)
    # At 45 degrees a name spans (width + line) * cos 45 across; cells that
    # wide keep neighbouring names' boxes apart, up to a cap past which the
    # slant alone keeps their letters apart.
    slanted = longest + 0.1 > _CELL_INCHES
    drop = 0.72 * (longest + line) if slanted else line
    cell = min(max(_CELL_INCHES, drop + 0.05), 1.5) if slanted else _CELL_INCHES
    side = cell * size  # The colorbar takes a tenth more, and its labels.
    # Wide enough for the title and the colorbar's labels at any class count.
    width = max(1.9 + longest + 1.1 * side, 4.5)
    figure, axis = plt.subplots(figsize=(width, max(1.5 + side + drop, 3.0)))
    image = axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(size), names)
    axis.set_yticks(range(size), names)
    if slanted:
        plt.setp(
            axis.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor"
        )
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    axis.set_title(f"Confusion matrix, phase '{confusion['phase']}'", fontsize=10)
    peak = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            color = "white" if count > peak / 2 else "black"
            axis.text(j, i, str(count), ha="center", va="center", color=color)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    figure.tight_layout()
    return figure


_CELL_INCHES = 0.6
"""The side of a confusion matrix's cell, at the least."""


def _label_inches(names: list[str]) -> tuple[float, float]:
    """The width of the longest of `names` as a tick label, and the height
    of a line of them, in inches."""
    font = FontProperties(size=matplotlib.rcParams["xtick.labelsize"])
    widths = [
        text_to_path.get_text_width_height_descent(name, font, ismath=False)[0]
        for name in names
    ]
    return max(widths, default=0.0) / 72, 1.2 * font.get_size_in_points() / 72


def plot_top_losses(top: Mapping[str, Any], images):
    """Each mistake's image, titled with its true and predicted class, the
    predicted class's probability and the loss; worst first."""
    rows = top["rows"]
    columns = min(4, len(rows))
    lines = -(-len(rows) // columns)
    figure, axes = plt.subplots(
        lines, columns, figsize=(2.3 * columns, 2.9 * lines), squeeze=False
    )
    for axis in axes.flat:
        axis.axis("off")
    for axis, row, image in zip(axes.flat, rows, images, strict=False):
        pixels = image[..., 0] if image.shape[-1] == 1 else image
        low, high = float(pixels.min()), float(pixels.max())
        axis.imshow((pixels - low) / max(high - low, 1e-12), cmap="gray")
        name = f"{row['file'].rsplit('/', 1)[-1]}\n" if "file" in row else ""
        axis.set_title(
            f"{name}true {row['true']}, predicted {row['predicted']}\n"
            f"p={row['probability']:.2f}, loss {row['loss']:.2f}",
            fontsize=7,
        )
    figure.suptitle(
        f"Top losses, phase '{top['phase']}': {top['wrong']} of {top['total']} wrong",
        fontsize=9,
    )
    figure.tight_layout()
    return figure


def plot_learning_rate_sweep(sweep):
    """The loss of every step against its learning rate (log scale), the
    smoothed loss over it, the suggested rate marked."""
    figure, axis = plt.subplots(figsize=(6.5, 4))
    axis.plot(sweep.learning_rates, sweep.losses, ".", alpha=0.35, label="batch loss")
    axis.plot(sweep.learning_rates, sweep.smoothed, "-", label="smoothed")
    if sweep.suggested is not None:
        axis.axvline(sweep.suggested, color="C2", linestyle="--")
    axis.annotate(
        f"suggested {sweep.suggested:.2g}\n({sweep.rule})"
        if sweep.suggested is not None
        else f"no suggestion ({sweep.rule})",
        xy=(sweep.suggested or sweep.learning_rates[0], 0.95),
        xycoords=("data", "axes fraction"),
        va="top",
        fontsize=8,
    )
    axis.set_xscale("log")
    axis.set_xlabel("learning rate")
    axis.set_ylabel("loss")
    axis.set_title(f"Learning-rate sweep of {', '.join(sweep.trained)}", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower left")
    figure.tight_layout()
    return figure


def plot_freeze_search(search: Mapping[str, Any]):
    """A freeze search (`FreezeSearch.to_dict()`): the validation metric
    against the number of frozen groups with weights, the best starred, and
    each candidate's seconds as a bar on a second axis."""
    metric, epochs = search["metric"], search["epochs"]
    rows = sorted(search["rows"], key=lambda row: row["depth"])
    places = list(range(len(rows)))
    values = [row["metrics"].get(metric) for row in rows]
    figure, axis = plt.subplots(figsize=(6.5, 4))
    times = axis.twinx()
    times.bar(places, [row["seconds"] for row in rows], color="C7", alpha=0.3)
    times.set_ylabel("seconds", color="C7")
    axis.set_zorder(times.get_zorder() + 1)
    axis.patch.set_visible(False)
    axis.plot(places, values, "o-", color="C0")
    best = [i for i, row in enumerate(rows) if row["frozen"] == search["best"]]
    axis.plot(best, [values[i] for i in best], "*", color="C3", ms=14)
    labels = [
        f"{row['depth']}\n{row['frozen'][-1] if row['frozen'] else 'nothing'}"
        for row in rows
    ]
    axis.set_xticks(places, labels, fontsize=8)
    axis.set_xlabel("groups frozen (the last one named)")
    axis.set_ylabel(f"validation {metric}")
    axis.set_title(
        f"What to freeze: {epochs} epoch{'s' * (epochs != 1)} per candidate, "
        "best starred",
        fontsize=10,
    )
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def _save(figure, path: Path) -> str:
    """Saves `figure` as PNG, atomically; returns the file name."""
    try:
        with atomic_output(path) as stream:
            figure.savefig(stream, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(figure)
    return path.name
