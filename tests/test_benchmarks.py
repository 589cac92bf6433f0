"""The benchmark runs end to end on a tiny input (no timing assertions)."""

import re
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import load_script, shipped_digits

RUNNER = Path(__file__).parents[1] / "benchmarks" / "run.py"
HEAD_STEP = Path(__file__).parents[1] / "benchmarks" / "head_step.py"
SCALING = Path(__file__).parents[1] / "benchmarks" / "scaling.py"


@pytest.fixture(scope="module")
def runner():
    return load_script(RUNNER)


@pytest.fixture
def tiny(tmp_path):
    return shipped_digits(tmp_path / "tiny.npz", train=300, test=100)


@pytest.mark.slow  # 35-45 s of processes: opt in with --run-slow.
def test_the_benchmark_prints_a_table_of_every_variant(runner, tiny, capsys):
    text = runner.main(["--data", str(tiny), "--repeats", "1", "--epochs", "1"])

    assert text in capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| variant | phase 1 s | phase 2 s | process s")
    assert [row.split(" | ")[0] for row in rows[1:]] == [
        "| plain Keras 3",
        "| transferkit",
        "| transferkit --fast",
        "| transferkit --fast --precision float32",
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


@pytest.mark.slow  # 9-17 s of a benchmark end to end: --run-slow.
def test_the_head_step_benchmark_prints_every_combination(capsys):
    text = load_script(HEAD_STEP).main(["--samples", "300", "--repeats", "1"])

    assert text in capsys.readouterr().out
    rows = [line.strip("| ").split(" | ") for line in text.splitlines()[2:]]
    steps = [row for row in rows if len(row) == 6 and row[0] != "precision"]
    assert [tuple(row[:3]) for row in steps] == [
        (precision, dropout, update)
        for precision in ("float32", "mixed_bfloat16")
        for dropout in ("Keras", "lean")
        for update in ("Keras", "fused")
    ]
    assert all(float(cell.rstrip("x")) > 0 for row in steps for cell in row[3:])
    pairs = [row for row in rows if len(row) == 2 and row[0] != "precision"]
    # The arithmetic floor, then the frozen layers' forward pass.
    assert [row[0] for row in pairs] == ["float32", "mixed_bfloat16"] * 2
    assert all(float(row[-1]) > 0 for row in pairs)
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.parametrize("whole", [False, True])
def test_the_step_profile_lists_the_steps_operations(whole, capsys):
    pytest.importorskip("xprof", reason="the profile is read with xprof")
    profile = load_script(Path(__file__).parents[1] / "benchmarks" / "step_profile.py")

    text = profile.main(["--samples", "512", "--top", "40"] + ["--whole"] * whole)

    assert text in capsys.readouterr().out
    rows = [line.strip("| ").split(" | ") for line in text.splitlines()[4:]]
    kinds = {row[0] for row in rows}
    # The head's forward matmul (and the convolutions' gradients), the fused
    # update and the lean Dropout's bits.
    assert any("MatMul" in kind for kind in kinds)
    assert any("Conv2DBackpropFilter" in kind for kind in kinds) is whole
    assert {"ResourceApplyAdadelta", "StatelessRandomUniformFullIntV2"} <= kinds
    assert all(float(row[2]) >= 0 for row in rows)
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.slow  # 35-45 s of processes: opt in with --run-slow.
def test_the_backbone_benchmark_prints_both_comparisons(capsys):
    backbone = load_script(Path(__file__).parents[1] / "benchmarks" / "backbone.py")
    args = ["--size", "32", "--samples", "64", "--epochs", "1", "--batch-size", "32"]

    text = backbone.main(args)

    assert text in capsys.readouterr().out
    rows = [line.strip("| ").split(" | ") for line in text.splitlines()[4:]]
    assert [row[0] for row in rows] == [
        "head: Keras guide",
        "head: transferkit",
        "top: uncached",
        "top: cached",
    ]
    assert all(float(row[1]) > 0 and float(row[2]) > 0 for row in rows)
    assert rows[1][5].endswith("MiB in memory") and rows[3][5].endswith("MiB in memory")
    assert rows[2][5] == "not used: turned off (feature_cache=False)"


@pytest.mark.slow  # 9-17 s of a benchmark end to end: --run-slow.
def test_the_throughput_benchmark_prints_rates_and_the_examples_arithmetic(capsys):
    throughput = load_script(Path(__file__).parents[1] / "benchmarks" / "throughput.py")

    text = throughput.main(["--repeats", "1"])

    assert text in capsys.readouterr().out
    rates = [line.strip("| ").split(" | ") for line in text.splitlines()[2:5]]
    assert all(float(cell) > 0 for row in rates for cell in row[1:])
    per_sample = throughput.flops_per_sample()
    # 18.1 million multiply-adds to train on one digit, 1.18 million in the head.
    assert per_sample["train step, all layers (phase 1)"] == pytest.approx(
        36.17, abs=0.01
    )
    assert per_sample["train step of the head on cached features"] == pytest.approx(
        2.36, abs=0.01
    )


def test_the_phase_costs_benchmark_splits_the_fine_tuning_phase(tiny, capsys):
    costs = load_script(Path(__file__).parents[1] / "benchmarks" / "phase_costs.py")

    text = costs.main(["--data", str(tiny), "--epochs", "2", "--precision", "float32"])

    assert text in capsys.readouterr().out
    cpu, phase, parts, floor, verdict = text.split("\n\n")
    assert cpu.startswith("CPU: ") and "oneDNN o" in cpu
    assert phase.startswith("Fine-tuning phase, ") and "transferkit's" in phase
    rows = dict(line.strip("| ").split(" | ") for line in parts.splitlines()[2:])
    assert list(rows) == [
        "checking the data",
        "the cache's forward pass",
        "first epoch's extra (tracing, first run)",
        "2 epochs at the later epochs' pace",
        "3 checkpoints",
        "freeze digests, before and after",
        "the rest (compiling, the trainer model)",
    ]
    assert float(rows["the cache's forward pass"]) > 0
    floors = dict(line.strip("| ").split(" | ") for line in floor.splitlines()[2:])
    assert [name.split(" ")[1] for name in floors] == [
        "frozen",
        "training",
        "validation",
        "all",
    ]
    assert float(floors["in all"]) == pytest.approx(
        sum(map(float, list(floors.values())[:3])), abs=0.02
    )
    seconds = float(phase.split(": ")[-1].removesuffix(" s"))
    said_seconds, said_ratio = re.fullmatch(
        r"The phase: (\S+) s, (\S+)x its floor", verdict
    ).groups()
    assert float(said_seconds) == seconds
    # Both figures as printed, rounded to hundredths: the ratio within that.
    assert float(said_ratio) == pytest.approx(
        seconds / float(floors["in all"]), rel=0.1
    )


@pytest.mark.slow  # 35-45 s of processes: opt in with --run-slow.
def test_the_scaling_benchmark_times_one_device_two_devices_and_two_workers(
    tiny, capsys
):
    text = load_script(SCALING).main(
        ["--data", str(tiny), "--repeats", "1", "--epochs", "1"]
    )

    assert text in capsys.readouterr().out
    rows = [line.strip("| ").split(" | ") for line in text.splitlines()[2:]]
    assert rows[0][:3] == ["configuration", "phase 1 s", "phase 2 s"]
    assert [row[0] for row in rows[2:]] == [
        "one device",
        "MirroredStrategy, 2 logical CPU devices",
        "MultiWorkerMirroredStrategy, 2 workers",
    ]
    for row in rows[2:]:
        assert all(float(cell) > 0 for cell in row[1:4])
        assert all(0 <= float(cell.rstrip("%")) <= 100 for cell in row[4:6])
    assert rows[3][6].endswith("MirroredStrategy, 2 replicas")
    assert "2 workers of 1 replica, this one worker 0 (the chief)" in rows[4][6]


@pytest.mark.slow  # Two processes, about 40 s: opt in with --run-slow.
def test_the_augmented_views_benchmark_prints_accuracy_and_speed_up(capsys):
    script = Path(__file__).parents[1] / "benchmarks" / "augmented_views.py"
    views = load_script(script)
    args = ["--size", "32", "--samples", "100", "--epochs", "1", "--views", "2"]

    text = views.main([*args, "--pretrain-epochs", "1"])

    assert text in capsys.readouterr().out
    assert "backbone pretrained on the digits 0-4 for 1 epochs" in text
    rows = [line.strip("| ").split(" | ") for line in text.splitlines()[5:]]
    assert [row[0] for row in rows] == ["Keras guide", "transferkit, 2 views"]
    assert all(0 <= float(row[4].split("%")[0]) <= 100 for row in rows)
    assert rows[1][6].endswith("MiB in memory, 2 fixed augmented views")


@pytest.mark.slow  # Three short runs, about 10 s: opt in with --run-slow.
def test_the_first_phase_benchmark_times_fit_the_loop_and_the_lean_step(tiny, capsys):
    first = load_script(Path(__file__).parents[1] / "benchmarks" / "first_phase.py")

    text = first.main(
        ["--data", str(tiny), "--samples", "256", "--epochs", "2", "--rounds", "1"]
    )

    assert text in capsys.readouterr().out
    rows = [line.strip("| ").split(" | ") for line in text.splitlines()[-3:]]
    assert [row[0] for row in rows] == list(first.WAYS)
    assert rows[0][2] == "1.00x"
    assert all(float(row[1]) > 0 for row in rows)
