"""The benchmark runs end to end on a tiny input (no timing assertions)."""

from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import load_script, shipped_digits

RUNNER = Path(__file__).parents[1] / "benchmarks" / "run.py"
HEAD_STEP = Path(__file__).parents[1] / "benchmarks" / "head_step.py"


@pytest.fixture(scope="module")
def runner():
    return load_script(RUNNER)


@pytest.fixture
def tiny(tmp_path):
    return shipped_digits(tmp_path / "tiny.npz", train=300, test=100)


def test_the_benchmark_prints_a_table_of_every_variant(runner, tiny, capsys):
    text = runner.main(["--data", str(tiny), "--repeats", "1", "--epochs", "1"])

    assert text in capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| variant | phase 1 s | phase 2 s | process s")
    assert [row.split(" | ")[0] for row in rows[1:]] == [
        "| plain Keras 3",
        "| transferkit",
        "| transferkit --fast",
    ]
    plain = rows[1].strip("| ").split(" | ")
    assert plain[6] == "+0.00"
    assert plain[-3:] == ["1.00x", "1.00x", "1.00x"]
    for row in rows[1:]:
        cells = row.strip("| ").split(" | ")
        assert all(float(cell) > 0 for cell in cells[1:4])
        assert all(0 <= float(cell.rstrip("%")) <= 100 for cell in cells[4:6])
        assert -100 <= float(cells[6]) <= 100
        assert float(cells[7]) > 100  # Peak MiB of a process running TensorFlow.
        assert all(float(cell.rstrip("x")) > 0 for cell in cells[8:])


def test_synthesize_makes_an_mnist_layout_set_of_the_asked_size(runner, tiny, tmp_path):
    path = runner.synthesize(tiny, 700, tmp_path / "synth.npz", seed=0)
    with np.load(path) as data:
        assert data["x_train"].shape == (600, 28, 28)
        assert data["x_test"].shape == (100, 28, 28)
        assert data["x_train"].dtype == np.uint8
        assert set(np.unique(data["y_train"])) <= set(range(10))


def test_the_head_step_benchmark_prints_every_combination(capsys):
    text = load_script(HEAD_STEP).main(["--samples", "300", "--repeats", "1"])

    assert text in capsys.readouterr().out
    rows = [line.strip("| ").split(" | ") for line in text.splitlines()[2:]]
    steps = [row for row in rows if len(row) == 4 and row[0] != "precision"]
    assert [tuple(row[:3]) for row in steps] == [
        (precision, dropout, update)
        for precision in ("float32", "mixed_bfloat16")
        for dropout in ("Keras", "lean")
        for update in ("Keras", "fused")
    ]
    prefix = [row for row in rows if len(row) == 2 and row[0] != "precision"]
    assert [row[0] for row in prefix] == ["float32", "mixed_bfloat16"]
    assert all(float(row[-1]) > 0 for row in steps + prefix)
    assert keras.mixed_precision.global_policy().name == "float32"
