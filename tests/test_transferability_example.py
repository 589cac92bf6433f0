"""The transferability study (examples/transferability.py): its rows, and a
rerun that skips what is done."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_script, shipped_digits

from transferkit.records import read_results_table, write_results_table

EXAMPLE = Path(__file__).parents[1] / "examples" / "transferability.py"

# Parameters of the example's groups: g1 3x3x1x16+16; g2 3x3x16x32+32;
# g3 (5*5*32)x128+128; g4 128x64+64; head 64x5+5.
PARAMS = {"g1": 160, "g2": 4_640, "g3": 102_528, "g4": 8_256, "head": 325}
ALL = sum(PARAMS.values())


@pytest.fixture(scope="module")
def example():
    return load_script(EXAMPLE)


def keys(table):
    return [(row["seed"], row["variant"], row["n"]) for row in table]


def test_the_study_writes_its_rows_and_a_rerun_skips_them(example, tmp_path, capsys):
    data = shipped_digits(tmp_path / "few.npz", train=300, test=100)
    out = tmp_path / "study"
    argv = ["--data", str(data), "--epochs", "1", "--seeds", "0", "--cuts", "1"]
    argv += ["--variants", "BnB", "AnB+", "--out", str(out)]

    table = example.main(argv)

    csv = out / "results.csv"
    assert read_results_table(csv, types=example.TYPES) == table
    assert keys(table) == [
        (0, "baseA", None),
        (0, "baseB", None),
        (0, "BnB", 1),
        (0, "AnB+", 1),
    ]
    assert [row["frozen_groups"] for row in table] == ["", "", "g1", ""]
    assert [row["trainable_params"] for row in table] == [
        ALL,
        ALL,
        ALL - PARAMS["g1"],
        ALL,
    ]
    # The frozen copy still equals its base, bitwise; the fine-tuned moved.
    assert [row["same_as_base"] for row in table] == [None, None, True, False]
    assert [row["frozen_unchanged"] for row in table] == [None, None, True, None]
    assert all(row["epochs"] == 1 and 0 <= row["val_accuracy"] <= 1 for row in table)
    assert (out / "transferability.png").stat().st_size > 0

    # Cut short: BnB's row lost (its run folder finished), AnB+ lost with
    # its folder. The rerun keeps the done rows as they were, bitwise (their
    # seconds too), restores BnB from its folder and trains AnB+ again, to
    # the same accuracy: every draw comes from the seed.
    write_results_table(table[:2], csv)
    shutil.rmtree(out / "seed-0" / "AnB+-1")
    capsys.readouterr()

    again = example.main(argv)

    printed = capsys.readouterr().out
    assert again[:3] == table[:3]
    assert again[3]["val_accuracy"] == table[3]["val_accuracy"]
    assert again[3]["seconds"] != table[3]["seconds"]  # Trained again.
    assert "seed 0 AnB+ n=1: accuracy" in printed
    restored = [line for line in printed.splitlines() if "restored" in line]
    assert [line.split(": accuracy")[0] for line in restored] == [
        "seed 0 baseA",
        "seed 0 baseB",
        "seed 0 BnB n=1",
    ]
    assert read_results_table(csv, types=example.TYPES) == again

    with pytest.raises(ValueError, match=r"trained for \[1\] epochs; this study "):
        example.main([*argv, "--epochs", "2"])


def test_bad_arguments_name_what_is_accepted(example, capsys):
    with pytest.raises(SystemExit):
        example.parse_args(["--cuts", "5"])
    assert "expected n in [1, 2, 3, 4]" in capsys.readouterr().err


@pytest.mark.slow
def test_the_full_study_runs_with_its_defaults(example, tmp_path):
    out = tmp_path / "study"
    finished = subprocess.run(
        [sys.executable, str(EXAMPLE), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=EXAMPLE.parents[1],
    )

    assert finished.returncode == 0, finished.stderr[-3000:]
    table = read_results_table(out / "results.csv", types=example.TYPES)
    assert len(table) == 2 * (2 + 4 * 4)
    same = {"BnB": True, "AnB": True, "BnB+": False, "AnB+": False}
    for row in table:
        assert row["same_as_base"] is same.get(row["variant"])
        assert row["frozen_unchanged"] is (True if same.get(row["variant"]) else None)
    accuracy = {(r["seed"], r["variant"], r["n"]): r["val_accuracy"] for r in table}
    for seed in (0, 1):
        assert accuracy[seed, "baseB", None] > 0.9
        # Specificity: A's top features serve B worse than B's own.
        assert accuracy[seed, "AnB", 4] < accuracy[seed, "BnB", 4]
    assert "AnB+" in finished.stdout and (out / "transferability.png").is_file()
