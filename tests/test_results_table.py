"""A table of phase results with the user's own columns, and its CSV."""

import math

import pytest

from transferkit import PhaseResult
from transferkit.records import (
    read_results_table,
    results_table,
    write_results_table,
)


def phase(name="fine_tune", frozen=("g1", "g2"), metrics=None, **fields):
    values = {
        "name": name,
        "epochs": 2,
        "train_samples": 40,
        "seconds": 1.25,
        "history": {
            "loss": [0.9, 0.5],
            "accuracy": [0.5, 0.75],
            "val_loss": [1.0, 0.6],
            "val_accuracy": [0.4, 0.7],
        },
        "metrics": {"loss": 0.6, "accuracy": 0.7} if metrics is None else metrics,
        "trainable_params": 90,
        "non_trainable_params": 40,
        "frozen_groups": frozen,
        "frozen_unchanged": True if frozen else None,
    }
    return PhaseResult(**{**values, **fields})


def test_rows_have_the_user_s_columns_then_the_phase_s():
    table = results_table(
        [
            ({"seed": 0, "variant": "AnB", "n": 2}, phase()),
            ({"seed": 1, "variant": "BnB+", "n": 3}, phase(frozen=(), seconds=0.1)),
        ]
    )

    assert table == [
        {
            "seed": 0,
            "variant": "AnB",
            "n": 2,
            "name": "fine_tune",
            "epochs": 2,
            "frozen_groups": "g1+g2",
            "trainable_params": 90,
            "seconds": 1.25,
            "val_loss": 0.6,
            "val_accuracy": 0.7,
            "loss": 0.5,
            "accuracy": 0.75,
            "frozen_unchanged": True,
        },
        {
            "seed": 1,
            "variant": "BnB+",
            "n": 3,
            "name": "fine_tune",
            "epochs": 2,
            "frozen_groups": "",
            "trainable_params": 90,
            "seconds": 0.1,
            "val_loss": 0.6,
            "val_accuracy": 0.7,
            "loss": 0.5,
            "accuracy": 0.75,
            "frozen_unchanged": None,
        },
    ]
    assert list(table[0]) == list(table[1])


def test_rows_of_other_columns_are_aligned_with_none():
    table = results_table(
        [
            phase(metrics={}),  # No validation data: no val_ columns.
            ({"seed": 4}, phase(name="train", metrics={"top5": 1.0})),
        ]
    )

    assert list(table[0]) == [
        "seed",
        "name",
        "epochs",
        "frozen_groups",
        "trainable_params",
        "seconds",
        "val_top5",
        "loss",
        "accuracy",
        "frozen_unchanged",
    ]
    assert table[0]["seed"] is None and table[0]["val_top5"] is None
    assert table[1]["seed"] == 4 and table[1]["val_top5"] == 1.0


def test_the_csv_reads_back_as_written(tmp_path):
    path = tmp_path / "sweep" / "results.csv"
    rows = [
        ({"seed": 0, "variant": "a,b", "n": 1}, phase(seconds=0.1 + 0.2)),
        ({"seed": 1, "variant": 'say "hi"', "n": None}, phase(frozen=())),
    ]

    written = results_table(rows, path)
    read = read_results_table(path, types={"seed": int, "n": int})

    assert read == written  # 0.30000000000000004 survives: floats by repr.
    assert read[0]["seconds"] == 0.1 + 0.2 and read[1]["n"] is None
    untyped = read_results_table(path)
    assert [row["seed"] for row in untyped] == ["0", "1"]
    assert path.read_text().splitlines()[0] == (
        "seed,variant,n,name,epochs,frozen_groups,trainable_params,seconds,"
        "val_loss,val_accuracy,loss,accuracy,frozen_unchanged"
    )


def test_non_finite_metrics_round_trip(tmp_path):
    path = tmp_path / "results.csv"
    results_table([phase(metrics={"loss": math.nan, "accuracy": -math.inf})], path)

    (row,) = read_results_table(path)

    assert math.isnan(row["val_loss"]) and row["val_accuracy"] == -math.inf


def test_rows_read_back_and_new_rows_write_one_table(tmp_path):
    path = tmp_path / "results.csv"
    results_table([({"seed": 0, "n": 1}, phase())], path)

    done = read_results_table(path, types={"seed": int, "n": int})
    new = results_table([({"seed": 0, "n": 2}, phase(metrics={"top5": 0.5}))])
    write_results_table(done + new, path)

    table = read_results_table(path, types={"seed": int, "n": int})
    assert [(row["seed"], row["n"]) for row in table] == [(0, 1), (0, 2)]
    assert table[0] == {**done[0], "val_top5": None}
    assert table[1]["val_top5"] == 0.5 and table[1]["val_loss"] is None
    assert list(table[0])[-1] == "frozen_unchanged"


def test_a_failed_table_leaves_the_file_as_it_was(tmp_path):
    path = tmp_path / "results.csv"
    results_table([phase()], path)
    before = path.read_bytes()

    with pytest.raises(
        TypeError,
        match=r"a `PhaseResult` or a pair \(columns, result\).*Received: rows\[1\] "
        r"of type dict",
    ):
        results_table([phase(), {"result": phase()}], path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_a_column_named_like_the_phase_s_is_refused():
    with pytest.raises(
        ValueError, match=r"Your column 'epochs' of rows\[0\] is named like one"
    ):
        results_table([({"epochs": 3}, phase())])
    with pytest.raises(ValueError, match=r"Your column 'val_loss'"):
        results_table([({"val_loss": 3}, phase())])


def test_reading_refuses_what_is_not_such_a_table(tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"not a results table.*\['a', 'b'\]"):
        read_results_table(other)

    path = tmp_path / "results.csv"
    results_table([({"seed": "x"}, phase())], path)
    with pytest.raises(
        ValueError, match=r"`types` names columns \['n'\] that are not among"
    ):
        read_results_table(path, types={"n": int})
    with pytest.raises(
        ValueError,
        match=r"Column 'seed' of line 2 of .* does not read as int: .* "
        r"Received: 'x'",
    ):
        read_results_table(path, types={"seed": int})
    path.write_text(path.read_text().replace(",True\n", ",maybe\n"))
    with pytest.raises(ValueError, match=r"'frozen_unchanged' .* Received: 'maybe'"):
        read_results_table(path)


def test_a_bool_column_reads_true_and_false_not_any_text(tmp_path):
    path = tmp_path / "results.csv"
    rows = [({"kept": flag}, phase()) for flag in (True, False, None)]
    results_table(rows, path)

    table = read_results_table(path, types={"kept": bool})

    assert [row["kept"] for row in table] == [True, False, None]
    path.write_text(path.read_text().replace("\nFalse,", "\nno,"))
    with pytest.raises(ValueError, match=r"'kept' .* does not read as bool"):
        read_results_table(path, types={"kept": bool})
