"""What a search over what to freeze found: one row per candidate cut.

`TransferRun.search_freeze` (`transferkit.run.freeze_search`) trains each
candidate from the same weights and returns a `FreezeSearch`; the report
keeps it (`to_dict`), and `FreezeSearch.from_dict` reads it back without
TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transferkit.records.phase_result import PhaseResult

__all__ = ["FreezeCandidate", "FreezeSearch", "metric_mode"]


def metric_mode(metric: str) -> str:
    """`"min"` for a loss or an error (`loss`, `mae`, `mse`, ...), `"max"`
    for the rest (`accuracy`, `auc`, ...), as Keras' callbacks guess it."""
    lowered = metric.lower()
    lower_is_better = ("loss", "error", "mae", "mse", "mape", "msle", "hinge")
    return "min" if any(word in lowered for word in lower_is_better) else "max"


@dataclasses.dataclass(frozen=True)
class FreezeCandidate:
    """One candidate of a freeze search: its frozen groups, and what a
    `fine_tune` with them frozen gave."""

    frozen: tuple[str, ...]
    """The groups frozen for the candidate (those frozen before, and the
    candidate's own): pass them to `run.fine_tune(freeze=...)`."""

    depth: int
    """How many groups with weights are frozen: the cut, 0 for none."""

    trainable_params: int
    """Parameters the candidate trained."""

    seconds: float
    """Its time: its share of the feature cache (features carried on from
    the cut before, or computed) and its phase."""

    metrics: dict[str, float]
    """Its final validation metrics, e.g. `{"loss": ..., "accuracy": ...}`."""

    frozen_unchanged: bool | None
    """The freeze proof: every frozen variable bitwise as before."""

    cache: str = ""
    """How its features came: computed, carried on from the cut before, or
    not cached (with why)."""

    history: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    """Its metrics after every epoch, as `PhaseResult.history`."""

    result: PhaseResult | None = None
    """The candidate's whole `PhaseResult` (history included); `None` when
    read back from a report."""

    def to_dict(self) -> dict[str, Any]:
        fields = {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.name != "result"
        }
        return {**fields, "frozen": list(self.frozen)}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> FreezeCandidate:
        known = {field.name for field in dataclasses.fields(cls)} - {"result"}
        fields = {key: value for key, value in record.items() if key in known}
        fields["frozen"] = tuple(fields.get("frozen", ()))
        return cls(**fields)


@dataclasses.dataclass(frozen=True)
class FreezeSearch:
    """The candidates of a freeze search, in the order tried, and the best.

    Attributes:
        rows: one `FreezeCandidate` per candidate.
        metric: the validation metric that chooses, e.g. `"loss"`.
        mode: `"min"` or `"max"`: which end of `metric` is best.
        epochs: epochs each candidate trained.
        seconds: the whole search's time.
        shared_cache: how the candidates shared the frozen prefix's features.
    """

    rows: tuple[FreezeCandidate, ...]
    metric: str
    mode: str
    epochs: int
    seconds: float
    shared_cache: str = ""

    @property
    def best(self) -> FreezeCandidate:
        """The candidate with the best validation `metric` (ties: the one
        that trains fewer parameters)."""
        sign = 1.0 if self.mode == "min" else -1.0

        def key(row: FreezeCandidate):
            value = row.metrics.get(self.metric, math.nan)
            finite = isinstance(value, int | float) and math.isfinite(value)
            return (not finite, sign * value if finite else 0.0, row.trainable_params)

        return min(self.rows, key=key)

    def table(self) -> str:
        """The rows as a text table: frozen groups, parameters trained,
        every validation metric, seconds and the freeze proof; the best
        marked with `*`."""
        names = sorted({name for row in self.rows for name in row.metrics})
        header = ["", "frozen", "trainable", *(f"val_{n}" for n in names), "seconds"]
        best = self.best
        lines = [header]
        for row in self.rows:
            lines.append(
                [
                    "*" if row is best else "",
                    "+".join(row.frozen) or "(nothing)",
                    f"{row.trainable_params:,}",
                    *(_number(row.metrics.get(n)) for n in names),
                    f"{row.seconds:.1f}",
                ]
            )
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        text = [
            "  ".join(
                cell.ljust(width) for cell, width in zip(line, widths, strict=True)
            )
            for line in lines
        ]
        text.append(
            f"* best by validation {self.metric} ({self.mode}); each candidate "
            f"{self.epochs} epoch{'s' * (self.epochs != 1)} from the same weights; "
            f"{self.seconds:.1f} s in all"
        )
        return "\n".join(line.rstrip() for line in text)

    def plot(self, path: str | Path | None = None):
        """The validation metric against the cut (groups frozen), the time
        of each candidate beside it; saved to `path` when given. Needs
        matplotlib (the `plots` extra)."""
        from transferkit.records.plots import plot_freeze_search

        figure = plot_freeze_search(self.to_dict())
        if path is not None:
            figure.savefig(path, dpi=110, bbox_inches="tight")
        return figure

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": [row.to_dict() for row in self.rows],
            "metric": self.metric,
            "mode": self.mode,
            "epochs": self.epochs,
            "seconds": self.seconds,
            "shared_cache": self.shared_cache,
            "best": list(self.best.frozen),
        }

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> FreezeSearch:
        return cls(
            rows=tuple(FreezeCandidate.from_dict(row) for row in record["rows"]),
            metric=record["metric"],
            mode=record["mode"],
            epochs=record["epochs"],
            seconds=record["seconds"],
            shared_cache=record.get("shared_cache", ""),
        )


def _number(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value:.4f}"


def candidates_of(weighted: Sequence[str]) -> list[tuple]:
    """Every prefix of the groups with weights, deepest first, and the empty
    one: freeze all but the last one, ..., the first, nothing."""
    return [tuple(weighted[:n]) for n in range(len(weighted) - 1, -1, -1)]
