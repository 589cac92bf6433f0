"""A table of phase results, one row per phase, with the user's own columns
(a seed, a variant, a cut) in front: as a list of dicts, and as a CSV file
written atomically and read back, so that a sweep over many runs can
resume from it. Plain Python: no pandas, no Keras, no TensorFlow.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from transferkit.records.phase_result import PhaseResult
from transferkit.utils.io import atomic_write, ensure_writable

__all__ = ["read_results_table", "results_table", "write_results_table"]

PHASE_COLUMNS = ("name", "epochs", "frozen_groups", "trainable_params", "seconds")
"""The phase's own columns, after the user's and before its metrics."""

LAST_COLUMN = "frozen_unchanged"
"""The table's last column: the phase's freeze verdict."""

_INTEGERS = ("epochs", "trainable_params")
_TEXTS = ("name", "frozen_groups")

Row = PhaseResult | tuple[Mapping[str, Any], PhaseResult]


def results_table(
    rows: Iterable[Row], path: str | os.PathLike | None = None
) -> list[dict[str, Any]]:
    """One row per phase result, as a list of dicts with the same keys in
    the same order: the user's columns first, then the phase's `name`,
    `epochs`, `frozen_groups` (joined with `+`, `""` when none),
    `trainable_params`, `seconds`, every validation metric of
    `result.metrics` as `val_<name>`, the last epoch's training metrics as
    Keras' `History` names them (`loss`, `accuracy`), and
    `frozen_unchanged`. A value a row lacks is `None`.

    >>> from transferkit import PhaseResult
    >>> result = PhaseResult(name="fine_tune", epochs=2, train_samples=40,
    ...     seconds=1.5, history={"loss": [0.9, 0.5]}, metrics={"accuracy": 0.8},
    ...     trainable_params=90, non_trainable_params=40,
    ...     frozen_groups=("g1", "g2"), frozen_unchanged=True)
    >>> results_table([({"seed": 0, "variant": "AnB"}, result)])
    ... # doctest: +NORMALIZE_WHITESPACE
    [{'seed': 0, 'variant': 'AnB', 'name': 'fine_tune', 'epochs': 2,
      'frozen_groups': 'g1+g2', 'trainable_params': 90, 'seconds': 1.5,
      'val_accuracy': 0.8, 'loss': 0.5, 'frozen_unchanged': True}]

    Args:
        rows: each a `PhaseResult`, or a pair `(columns, result)` of a
            mapping of the user's own columns (name -> value) and a
            `PhaseResult`.
        path: where to write the table as CSV (`write_results_table`), or
            `None` for no file. Defaults to `None`.

    Raises:
        TypeError: for a row of another form, naming it.
        ValueError: for a user's column named like one of the phase's.
    """
    table = [_row(index, row) for index, row in enumerate(rows)]
    table = _aligned(table)
    if path is not None:
        write_results_table(table, path)
    return table


def write_results_table(
    table: Sequence[Mapping[str, Any]], path: str | os.PathLike
) -> Path:
    """Writes rows made by `results_table` or read by `read_results_table`
    (together, to add rows to a table read back) as CSV, atomically: a
    crash leaves the old file or the new one. The columns are ordered as
    `results_table` orders them; `None` is written as an empty field.
    Returns the path.

    Raises:
        ValueError: for a row without the phase's `name` column.
        OSError: naming the folder, if it cannot be written.
    """
    table = _aligned([dict(row) for row in table])
    path = Path(path)
    ensure_writable(path.parent)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(list(table[0]) if table else [*PHASE_COLUMNS, LAST_COLUMN])
    for row in table:
        writer.writerow(["" if value is None else str(value) for value in row.values()])
    atomic_write(path, text.getvalue())
    return path


def read_results_table(
    path: str | os.PathLike, types: Mapping[str, Callable[[str], Any]] | None = None
) -> list[dict[str, Any]]:
    """The rows of a CSV that `results_table` wrote, with the phase's
    columns typed as `results_table` gives them (integers, floats,
    `frozen_unchanged` as `True`, `False` or `None`; an empty field as
    `None`). The user's columns come back as the text written, or through
    `types`, e.g. `{"seed": int, "n": int, "kept": bool}` (`bool` reads
    `True` and `False`; an empty field stays `None`).

    Args:
        path: the CSV file.
        types: a function from text to value for some of the user's
            columns. Defaults to `None`: all are text.

    Raises:
        ValueError: naming the file and column, for a file that is not such
            a table, a `types` column it lacks, or a value that does not
            read as its column's type.
    """
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as stream:
        lines = list(csv.reader(stream))
    header = lines[0] if lines else []
    if "name" not in header or LAST_COLUMN not in header:
        raise ValueError(
            f"{str(path)!r} is not a results table: expected the columns 'name' "
            f"and '{LAST_COLUMN}' that `results_table` writes. Received the "
            f"columns {header}"
        )
    user = header[: header.index("name")]
    types = dict(types or {})
    unknown = sorted(set(types) - set(user))
    if unknown:
        raise ValueError(
            f"`types` names columns {unknown} that are not among the user's "
            f"columns of {str(path)!r}, {user}. Received: types={sorted(types)}"
        )
    # bool("False") is True: a `bool` column reads "True" and "False".
    readers = {c: _verdict if types.get(c) is bool else types.get(c, str) for c in user}
    readers.update({c: _phase_reader(c) for c in header[len(user) :]})
    table = []
    for number, line in enumerate(lines[1:], start=2):
        if len(line) != len(header):
            raise ValueError(
                f"Line {number} of {str(path)!r} has {len(line)} fields; the "
                f"header has {len(header)}."
            )
        table.append(
            {
                column: _read(readers[column], column, text, path, number)
                for column, text in zip(header, line, strict=True)
            }
        )
    return table


def _row(index: int, row: Any) -> dict[str, Any]:
    if isinstance(row, PhaseResult):
        columns, result = {}, row
    elif (
        isinstance(row, tuple)
        and len(row) == 2
        and isinstance(row[0], Mapping)
        and isinstance(row[1], PhaseResult)
    ):
        columns, result = dict(row[0]), row[1]
    else:
        raise TypeError(
            "Expected each row to be a `PhaseResult` or a pair (columns, result) "
            "of a dict of your own columns and a `PhaseResult`. Received: "
            f"rows[{index}] of type {type(row).__name__}"
        )
    phase = {
        "name": result.name,
        "epochs": result.epochs,
        "frozen_groups": "+".join(result.frozen_groups),
        "trainable_params": result.trainable_params,
        "seconds": result.seconds,
        **{f"val_{name}": value for name, value in result.metrics.items()},
        **{
            name: values[-1] if values else None
            for name, values in result.history.items()
            if not name.startswith("val_")
        },
        LAST_COLUMN: result.frozen_unchanged,
    }
    for column in columns:
        if not isinstance(column, str) or column in phase:
            raise ValueError(
                f"Your column {column!r} of rows[{index}] is named like one of the "
                f"phase's columns, {list(phase)}; rename it (e.g. 'my_{column}')."
            )
    return {**columns, **phase}


def _aligned(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every row with every column, in the table's order: the user's (those
    before `name` in a row), the phase's, validation metrics, training
    metrics, the verdict; each kind in the order first seen."""
    seen: dict[str, None] = {}
    user: set[str] = set()
    for index, row in enumerate(table):
        if "name" not in row:
            raise ValueError(
                f"Row {index} has no 'name' column: expected rows made by "
                f"`results_table` or read by `read_results_table`. Received the "
                f"columns {list(row)}"
            )
        keys = list(row)
        user.update(keys[: keys.index("name")])
        seen.update(dict.fromkeys(keys))

    def kind(column: str) -> int:
        if column in user:
            return 0
        if column in PHASE_COLUMNS:
            return 1 + PHASE_COLUMNS.index(column) / len(PHASE_COLUMNS)
        if column == LAST_COLUMN:
            return 4
        return 2 if column.startswith("val_") else 3

    columns = sorted(seen, key=kind)  # Stable: first seen within a kind.
    return [{column: row.get(column) for column in columns} for row in table]


def _phase_reader(column: str) -> Callable[[str], Any]:
    if column in _TEXTS:
        return str
    if column in _INTEGERS:
        return int
    if column == LAST_COLUMN:
        return _verdict
    return float


def _verdict(text: str) -> bool:
    if text not in ("True", "False"):
        raise ValueError("expected True, False or an empty field")
    return text == "True"


_verdict.__name__ = "bool"


def _read(reader, column: str, text: str, path: Path, number: int) -> Any:
    if text == "" and reader is not str:
        return None
    try:
        value = reader(text)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"Column {column!r} of line {number} of {str(path)!r} does not read "
            f"as {reader.__name__.lstrip('_')}: {error}. Received: "
            f"{text!r}"
        ) from error
    return value
