"""The reference example, end to end on digits shipped with transferkit."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import load_script, shipped_digits

from transferkit.datasets import mnist

EXAMPLE = Path(__file__).parents[1] / "examples" / "mnist_digits.py"


@pytest.fixture(scope="module")
def example():
    return load_script(EXAMPLE)


@pytest.fixture
def few_digits(tmp_path):
    return shipped_digits(tmp_path / "few.npz", train=400, test=200)


def run_example(*args):
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(EXAMPLE.parents[1])},
    )


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
    if not report["settings"]["resumed"]:
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
    page = (out / "report.md").read_text()
    assert "## Phase 'fine_tune'" in page and "| train samples | 190 |" in page
    confusion = report["confusion_matrix"]
    assert confusion["classes"] == [5, 6, 7, 8, 9]
    assert sum(map(sum, confusion["matrix"])) == 115  # The 5-9 test digits.
    assert (out / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "Phase 'train'" in printed and "Phase 'fine_tune'" in printed
    assert re.search(r"frozen weights +unchanged \(bitwise\)", printed)


def test_fast_turns_on_every_speed_up_and_the_report_says_so(
    example, few_digits, monkeypatch
):
    monkeypatch.setattr(
        "transferkit.layers.precision.cpu_bfloat16_flags", lambda: ("avx512_bf16",)
    )
    args = ["--data", str(few_digits), "--epochs", "1", "--verbose", "0"]

    report = example.main([*args, "--fast"])

    settings = report["settings"]
    assert settings["fast"] is True and settings["lean_step"] is True
    assert settings["precision"] == "mixed_bfloat16"
    assert settings["precision_reason"] == "the CPU has avx512_bf16"
    assert settings["steps_per_execution"] == example.FAST_STEPS_PER_EXECUTION
    train, fine_tune = report["phases"]
    assert train["precision"] == fine_tune["precision"] == "mixed_bfloat16"
    assert train["cache"] == "not used: no group is frozen"
    assert fine_tune["cached_layers"] == 5  # Up to the pooling, before Dropout.
    assert "stops before layer" in fine_tune["cache"]
    assert fine_tune["lean_step"] == (
        "2 Dropout layers on bit masks; 1 softmax from exp and sums; "
        "fused Adadelta updates"
    )
    assert fine_tune["frozen_unchanged"] is True


def test_fast_prefers_onednn_unless_the_variable_is_set(example):
    environ = {}
    assert example.prefer_onednn(["--epochs", "1"], environ) is False
    assert environ == {}
    assert example.prefer_onednn(["--epochs", "1", "--fast"], environ) is True
    assert environ == {"TF_ENABLE_ONEDNN_OPTS": "1"}
    chosen = {"TF_ENABLE_ONEDNN_OPTS": "0"}
    assert example.prefer_onednn(["--fast"], chosen) is False
    assert chosen == {"TF_ENABLE_ONEDNN_OPTS": "0"}


def test_fast_takes_explicit_choices_over_its_defaults(example):
    args = example.parse_args(
        ["--fast", "--precision", "float32", "--steps-per-execution", "4"]
    )
    assert (args.precision, args.steps_per_execution) == ("float32", 4)
    plain = example.parse_args([])
    assert (plain.precision, plain.steps_per_execution) == ("float32", 1)
    assert plain.feature_cache is True and plain.fast is False


def test_model_input_is_the_images_divided_by_255_in_float32(example):
    images = np.arange(256, dtype=np.uint8).reshape(1, 16, 16).repeat(3, axis=0)
    images = np.pad(images, ((0, 0), (6, 6), (6, 6)))

    x = example.to_model_input(images)

    assert x.shape == (3, 28, 28, 1) and x.dtype == np.float32
    expected = (images.astype(np.float64) / 255).astype(np.float32)
    assert np.array_equal(x[..., 0], expected)
    assert x.max() == 1.0


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

    finished = run_example("--out", blocker / "run")

    assert finished.returncode == 2
    assert "error: Cannot write to the output folder" in finished.stderr
    assert "Epoch" not in finished.stdout


@pytest.mark.parametrize(
    "strategy",
    [
        [],
        # In-process, test_distribution resumes a mirrored run in 3 s.
        pytest.param(
            ["--strategy", "mirrored", "--cpu-devices", 2], marks=pytest.mark.slow
        ),
    ],
    ids=["one device", "two logical devices"],
)
def test_a_run_killed_in_the_second_phase_resumes_and_finishes(tmp_path, strategy):
    digits = shipped_digits(tmp_path / "digits.npz", train=2000, test=400)
    out = tmp_path / "run"
    args = ["--data", digits, "--epochs", 5, "--out", out, "--verbose", 0, *strategy]
    command = [sys.executable, str(EXAMPLE), *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(EXAMPLE.parents[1])}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        try:
            phases = json.loads((out / "run.json").read_text())["phases"]
        except FileNotFoundError:
            phases = []
        if len(phases) == 2 and phases[1]["epochs_done"] >= 1:
            process.send_signal(signal.SIGKILL)  # Mid-phase, between saves.
            break
        time.sleep(0.005)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (out / "report.json").exists()

    finished = run_example(*args)

    assert finished.returncode == 0, finished.stderr
    assert f"Phase 'train' in {out}: finished." in finished.stdout
    assert f"Phase 'fine_tune' in {out}: resuming after epoch" in finished.stdout
    report = json.loads((out / "report.json").read_text())
    check_report(report, epochs=5)
    assert report["settings"]["resumed"] is True
    assert len(report["phases"][1]["history"]["loss"]) == 5
    assert sorted(report["figures"]) == [
        "confusion_matrix",
        "learning_curves",
        "top_losses",
    ]
    assert report["settings"]["replicas"] == (2 if strategy else 1)
    if strategy:
        assert report["settings"]["strategy"] == "mirrored"
        loop = report["phases"][1]["training_loop"]
        assert loop.endswith("MirroredStrategy, 2 replicas")


def test_rerunning_with_other_settings_refuses_to_touch_the_run(
    example, few_digits, tmp_path
):
    out = tmp_path / "run"
    # The first run in this process (it closes its folder at the end); the
    # refusal in a process of its own, for its exit status and message.
    example.main(
        map(str, ["--data", few_digits, "--epochs", 1, "--out", out, "--verbose", 0])
    )
    before = (out / "run.json").read_bytes()

    finished = run_example("--data", few_digits, "--epochs", 2, "--out", out)

    assert finished.returncode == 2
    assert "run.json' holds a different plan" in finished.stderr
    assert (out / "run.json").read_bytes() == before


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


def test_the_example_checks_for_nan_by_default(example, tmp_path):
    sample = mnist.load_sample()
    x_train = sample.x_train[:400].astype("float32")
    x_train[7, 3, 3] = np.nan
    path = tmp_path / "nan.npz"
    np.savez(
        path,
        x_train=x_train,
        y_train=sample.y_train[:400],
        x_test=sample.x_test[:200],
        y_test=sample.y_test[:200],
    )

    with pytest.raises(
        ValueError,
        match=r"NaN or infinite values in `data` \(x\): 1 sample, the first at index \d+ \(7 in the source data\)",
    ):
        example.main(["--data", str(path), "--epochs", "1", "--verbose", "0"])


def test_cpu_devices_go_with_the_mirrored_strategy(example, capsys):
    with pytest.raises(SystemExit):
        example.parse_args(["--cpu-devices", "2"])

    assert (
        "error: --cpu-devices goes with --strategy mirrored" in capsys.readouterr().err
    )
