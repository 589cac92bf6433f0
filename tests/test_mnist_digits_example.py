"""The reference example, end to end on digits shipped with transferkit."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from transferkit import mnist

EXAMPLE = Path(__file__).parents[1] / "examples" / "mnist_digits.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("mnist_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def few_digits(tmp_path):
    """A few hundred shipped digits, in the Keras mnist.npz layout."""
    sample = mnist.load_sample()
    path = tmp_path / "few.npz"
    np.savez(
        path,
        x_train=sample.x_train[:400],
        y_train=sample.y_train[:400],
        x_test=sample.x_test[:200],
        y_test=sample.y_test[:200],
    )
    return path


def check_report(report, epochs):
    assert [p["name"] for p in report["phases"]] == ["train", "fine_tune"]
    train, fine_tune = report["phases"]
    assert train["classes"] == [0, 1, 2, 3, 4]
    assert fine_tune["classes"] == [5, 6, 7, 8, 9]
    assert fine_tune["frozen_groups"] == ["features"]
    assert fine_tune["frozen_unchanged"] is True
    for phase in report["phases"]:
        assert phase["epochs"] == epochs
        assert 0.0 <= phase["test_accuracy"] <= 1.0
        assert np.isfinite(phase["test_loss"]) and phase["seconds"] > 0
    # The original model: 600,165 weights; the head alone 590,597.
    assert train["trainable_params"] == 600_165
    assert fine_tune["trainable_params"] == 590_597
    assert report["total_seconds"] >= train["seconds"] + fine_tune["seconds"]


def test_the_example_runs_and_writes_a_valid_report(
    example, few_digits, tmp_path, capsys
):
    out = tmp_path / "run"

    returned = example.main(
        [
            "--data",
            str(few_digits),
            "--epochs",
            "1",
            "--out",
            str(out),
            "--verbose",
            "0",
        ]
    )

    report = json.loads((out / "report.json").read_text())
    assert report == json.loads(json.dumps(returned))
    check_report(report, epochs=1)
    assert report["dataset"] == str(few_digits)
    assert report["settings"]["batch_size"] == 128
    assert sum(phase["train_samples"] for phase in report["phases"]) == 400
    assert "| fine_tune | 5-9 |" in (out / "report.md").read_text()
    printed = capsys.readouterr().out
    assert "Phase 'train'" in printed and "Phase 'fine_tune'" in printed
    assert "frozen weights        unchanged (bitwise)" in printed


def test_the_model_is_the_original_convnet(example):
    model = example.build_model()
    assert list(model.groups) == ["features", "classifier"]
    assert [type(layer).__name__ for layer in model.layers] == [
        "Conv2D",
        "Activation",
        "Conv2D",
        "Activation",
        "MaxPooling2D",
        "Dropout",
        "Flatten",
        "Dense",
        "Activation",
        "Dropout",
        "Dense",
        "Activation",
    ]
    assert model.input_shape == (None, 28, 28, 1)
    assert model.output_shape == (None, 5)


def test_an_unwritable_out_folder_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")

    finished = subprocess.run(
        [sys.executable, str(EXAMPLE), "--out", str(blocker / "run")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(EXAMPLE.parents[1])},
    )

    assert finished.returncode == 2
    assert "error: Cannot write to the output folder" in finished.stderr
    assert "Epoch" not in finished.stdout


@pytest.mark.slow
def test_full_reference_run_on_the_embedded_sample(example, tmp_path, monkeypatch):
    def offline():
        raise Exception("offline")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    report = example.main(["--out", str(tmp_path), "--verbose", "0"])

    check_report(report, epochs=5)
    assert report["settings"]["embedded_sample"] is True
    # With Keras 3's default Adadelta rate (0.001) this stays near 20-40%.
    assert report["phases"][1]["test_accuracy"] > 0.9
