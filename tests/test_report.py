import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import make_data, make_model

from transferkit import ClassSubset, TransferRun
from transferkit.cli import main as cli
from transferkit.errors import ReportError
from transferkit.records.report import (
    SCHEMA_VERSION,
    build_report,
    format_markdown,
    format_phase,
    load_report,
    write_report,
)
from transferkit.serving.evaluation import confusion_matrix, top_losses
from transferkit.utils.io import atomic_output, ensure_writable


@pytest.fixture(scope="module")
def report():
    x, y = make_data(samples=60, classes=6)
    low = ClassSubset.select(x, y, classes=[0, 1, 2])
    high = ClassSubset.select(x, y, classes=[3, 4, 5])
    run = TransferRun(
        make_model(),
        optimizer="sgd",
        loss="categorical_crossentropy",
        metrics=["accuracy"],
        verbose=0,
    )
    run.train(low, epochs=1, validation_data=low)
    run.fine_tune(high, freeze="features", epochs=2, validation_data=high)
    return build_report(
        run.results, dataset="tiny", total_seconds=1.5, settings={"epochs": 2}
    )


def test_the_report_holds_every_phase_field(report):
    assert report["schema_version"] == SCHEMA_VERSION
    assert report["dataset"] == "tiny" and report["total_seconds"] == 1.5
    first, second = report["phases"]
    assert first["classes"] == [0, 1, 2] and second["classes"] == [3, 4, 5]
    assert second["frozen_groups"] == ["features"]
    assert second["frozen_unchanged"] is True and first["frozen_unchanged"] is None
    assert second["test_accuracy"] == second["metrics"]["accuracy"]
    assert second["test_loss"] == second["history"]["val_loss"][-1]
    assert second["epochs"] == 2 and second["train_samples"] == 30
    assert json.loads(json.dumps(report)) == report


def test_tables_show_what_a_person_needs(report):
    table = format_phase(report["phases"][1])
    assert table.splitlines()[0] == "Phase 'fine_tune'"
    assert re.search(r"\n  classes +3-5\n", table)
    assert re.search(r"\n  frozen weights +unchanged \(bitwise\)\n", table)
    assert re.search(r"\n  precision +float32\n", table)
    assert re.search(r"\n  feature cache +[\d.]+ MiB in memory; layers conv2d", table)
    assert re.search(
        # transferkit's loop says its steps per call; no "steps per execution".
        r"\n  lean step +off\n"
        r"  training loop +transferkit's, \d+ steps? per call$",
        table,
    )
    train_accuracy = report["phases"][1]["history"]["accuracy"][-1]
    assert re.search(rf"\n  train accuracy +{train_accuracy:.2%}\n", table)
    page = format_markdown(report)
    fine_tune = page[page.index("## Phase 'fine_tune'") :]
    for row in (
        "| classes | 3-5 |",
        "| train samples | 30 |",
        "| epochs | 2 |",
        "| frozen params | 40 |",
        "| frozen weights | unchanged (bitwise) |",
        "| precision | float32 |",
    ):
        assert row in fine_tune
    assert "samples/s |" in fine_tune and "| test accuracy |" in fine_tune
    assert page.count("## Phase") == 2


def test_a_report_from_before_the_speed_ups_still_formats(report):
    old = dict(report["phases"][1])
    for key in ("precision", "cache", "lean_step", "steps_per_execution"):
        del old[key]

    table = format_phase(old)

    assert re.search(r"\n  precision +float32\n  feature cache +not recorded\n", table)


def test_a_changed_frozen_weight_is_shouted(report):
    phase = dict(
        report["phases"][1],
        frozen_unchanged=False,
        changed_variables=["sequential/conv2d/kernel"],
    )
    assert "CHANGED: sequential/conv2d/kernel" in format_phase(phase)


def test_write_report_writes_files_figures_and_no_temporaries(tmp_path, report):
    report = dict(report)
    json_path, md_path = write_report(tmp_path / "run", report)

    assert json.loads(json_path.read_text()) == report
    assert md_path.read_text() == format_markdown(report)
    assert report["figures"] == {"learning_curves": "learning_curves.png"}
    assert "![learning curves](learning_curves.png)" in md_path.read_text()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "learning_curves.png",
        "report.json",
        "report.md",
    ]
    assert (tmp_path / "run" / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert oct(json_path.stat().st_mode & 0o777) == oct(0o666 & ~current_umask())


def current_umask():
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_without_matplotlib_the_report_says_why_figures_are_missing(
    tmp_path, report, monkeypatch
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # Import fails.
    monkeypatch.delitem(sys.modules, "transferkit.records.plots", raising=False)
    report = dict(report)

    write_report(tmp_path, report)

    reason = report["figures"]["skipped"]
    assert "pip install 'transferkit[plots]'" in reason
    assert "Figures skipped: " + reason in (tmp_path / "report.md").read_text()
    assert not list(tmp_path.glob("*.png"))


def test_a_confusion_matrix_counts_in_original_class_ids(report):
    x, y = make_data(samples=60, classes=6)
    high = ClassSubset.select(x, y, classes=[3, 4, 5])

    class Fixed(keras.Model):
        """Predicts label 2 (class 5) for everything."""

        def call(self, inputs):
            return keras.ops.one_hot(
                keras.ops.full((keras.ops.shape(inputs)[0],), 2), 3
            )

    confusion = confusion_matrix(Fixed(), high, phase="fine_tune")

    assert confusion["classes"] == [3, 4, 5]
    assert confusion["matrix"] == [[0, 0, 10], [0, 0, 10], [0, 0, 10]]


class Scripted(keras.Model):
    """Outputs fixed probabilities per sample: sample i's row of `table`."""

    def __init__(self, table):
        super().__init__()
        self.table = keras.ops.convert_to_tensor(table, "float32")

    def call(self, inputs):
        rows = keras.ops.cast(inputs[:, 0, 0, 0], "int32")
        return keras.ops.take(self.table, rows, axis=0)


def test_top_losses_are_the_most_confidently_wrong_samples_worst_first():
    x = np.zeros((6, 8, 8, 1), "float32")
    x[:, 0, 0, 0] = np.arange(6)  # Each sample says which row it gets.
    y = np.array([0, 0, 1, 1, 2, 2])
    table = [
        [0.9, 0.05, 0.05],  # right
        [0.2, 0.7, 0.1],  # wrong, p(true)=0.2
        [0.01, 0.04, 0.95],  # wrong, p(true)=0.04: the worst
        [0.3, 0.6, 0.1],  # right
        [0.5, 0.1, 0.4],  # wrong, p(true)=0.4
        [0.1, 0.1, 0.8],  # right
    ]
    subset = ClassSubset(x, y, classes=(4, 6, 8), indices=np.arange(6))

    top = top_losses(Scripted(table), subset, phase="fine_tune", count=2)

    assert (top.wrong, top.total, top.classes) == (3, 6, [4, 6, 8])
    assert [row["index"] for row in top.rows] == [2, 1]
    worst = top.rows[0]
    assert (worst["true"], worst["predicted"]) == (6, 8)
    assert worst["probability"] == pytest.approx(0.95)
    assert worst["loss"] == pytest.approx(-np.log(0.04), rel=1e-6)
    np.testing.assert_array_equal(top.images, x[[2, 1]])


def test_the_report_lists_and_draws_the_top_losses(tmp_path, report, capsys):
    x = np.zeros((3, 8, 8, 1), "float32")
    x[:, 0, 0, 0] = np.arange(3)
    top = top_losses(
        Scripted([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]),
        (x, np.array([0, 0, 1])),
        phase="fine_tune",
    )
    report = build_report([], dataset="tiny", total_seconds=1.0, top_losses=top) | {
        "phases": report["phases"]
    }

    write_report(tmp_path, report, images={"top_losses": top.images})

    assert report["figures"]["top_losses"] == "top_losses.png"
    assert (tmp_path / "top_losses.png").stat().st_size > 0
    markdown = (tmp_path / "report.md").read_text()
    assert (
        "## Top losses, phase 'fine_tune': the 1 most confidently wrong of 1 mistakes in 3 samples"
        in markdown
    )
    assert "| 0 | 0 | 1 | 0.900 | 2.30 |" in markdown
    assert cli(["report", str(tmp_path)]) == 0
    assert "sample  true  predicted  p      loss" in capsys.readouterr().out


def test_both_figures_are_drawn_for_a_report_with_a_confusion_matrix(tmp_path, report):
    report = dict(
        report,
        confusion_matrix={
            "phase": "fine_tune",
            "classes": [5, 6],
            "matrix": [[3, 1], [0, 4]],
        },
    )
    write_report(tmp_path, report)
    assert report["figures"] == {
        "learning_curves": "learning_curves.png",
        "confusion_matrix": "confusion_matrix.png",
    }


def test_load_report_reads_a_folder_or_a_file(tmp_path, report):
    report = dict(report)
    write_report(tmp_path, report, figures=False)
    assert load_report(tmp_path) == report
    assert load_report(tmp_path / "report.json") == report


def test_load_report_names_a_bad_file(tmp_path, report):
    path = tmp_path / "report.json"
    with pytest.raises(FileNotFoundError, match="No report at"):
        load_report(tmp_path)
    path.write_text(json.dumps(report)[:50])
    with pytest.raises(ReportError, match=r"report.json' is damaged or truncated"):
        load_report(path)
    path.write_text(json.dumps(dict(report, schema_version=SCHEMA_VERSION + 1)))
    with pytest.raises(ReportError, match=r"newer transferkit \(report schema 2"):
        load_report(path)
    path.write_text("[1, 2]")
    with pytest.raises(ReportError, match="is not a transferkit report"):
        load_report(path)


def test_a_report_with_a_part_missing_is_named_not_a_key_error(
    tmp_path, report, capsys
):
    path = tmp_path / "report.json"
    without_dataset = {k: v for k, v in report.items() if k != "dataset"}
    path.write_text(json.dumps(without_dataset))

    assert cli(["report", str(path)]) == 2
    assert (
        "report.json' lacks 'dataset' (or it is not a text): it was edited by hand"
        in (capsys.readouterr().err)
    )
    phase = {k: v for k, v in report["phases"][0].items() if k != "test_loss"}
    path.write_text(json.dumps(dict(report, phases=[phase])))
    with pytest.raises(ReportError, match=r"phase 1 lacks the key 'test_loss'"):
        load_report(path)
    path.write_text(json.dumps(dict(report, total_seconds="12 s")))
    with pytest.raises(
        ReportError, match=r"lacks 'total_seconds' \(or it is not a number"
    ):
        load_report(path)


def test_the_report_command_prints_the_tables(tmp_path, report, capsys):
    write_report(tmp_path, dict(report))

    assert cli(["report", str(tmp_path)]) == 0

    printed = capsys.readouterr().out
    assert "Phase 'train'" in printed and "Phase 'fine_tune'" in printed
    assert "Figures: learning_curves.png" in printed


@pytest.mark.parametrize("command", ["python -m", "console script"])
def test_the_report_command_reads_a_report_without_tensorflow(
    tmp_path, report, command
):
    write_report(tmp_path, dict(report), figures=False)
    root = Path(__file__).resolve().parents[1]
    if command == "python -m":
        command = [sys.executable, "-X", "importtime", "-m", "transferkit"]
    else:  # What `pip install` puts beside the interpreter.
        script = Path(sysconfig.get_path("scripts")) / "transferkit"
        assert script.is_file(), f"no console script at {script}"
        command = [str(script)]
    done = subprocess.run(
        [*command, "report", str(tmp_path)],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"},
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Data: tiny\n") and "Phase 'fine_tune'" in done.stdout
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines()}
    assert "json" in imported  # The import log is there,
    assert (
        not {"tensorflow", "keras", "transferkit.groups.layer_group"} & imported
    )  # and light.


def test_the_report_command_fails_clearly(tmp_path, capsys):
    assert cli(["report", str(tmp_path)]) == 2
    assert "error: No report at" in capsys.readouterr().err


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("previous")

    with pytest.raises(RuntimeError, match="disk went away"):
        with atomic_output(path) as stream:
            stream.write(b"half of the new con")
            raise RuntimeError("disk went away")

    assert path.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_an_unwritable_output_folder_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match="Cannot write to the output folder '.*file/run'"):
        ensure_writable(blocker / "run")


def test_non_finite_numbers_are_written_as_strict_json_and_shown(report, tmp_path):
    phase = dict(report["phases"][1], test_loss=float("nan"))
    phase["history"] = dict(phase["history"], val_loss=[float("inf"), float("nan")])
    edited = dict(report, phases=[report["phases"][0], phase])

    json_path, md_path = write_report(tmp_path, edited, figures=False)

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    written = json.loads(json_path.read_text(), parse_constant=refuse)
    assert written["phases"][1]["test_loss"] == "nan"
    assert written["phases"][1]["history"]["val_loss"] == ["inf", "nan"]
    assert "| test loss | nan |" in md_path.read_text()
    assert load_report(tmp_path)["phases"][1]["test_loss"] == "nan"


def test_each_phase_opens_with_a_header_and_says_when_the_cache_fills(capsys):
    data = make_data()
    run = TransferRun(
        make_model(), optimizer="sgd", loss="sparse_categorical_crossentropy"
    )

    run.train(data, epochs=1)
    run.fine_tune(data, freeze="features", epochs=2)

    printed = capsys.readouterr().out
    assert (
        "Phase 'train': 1 epoch; frozen: nothing; trains: features, classifier; "
        "feature cache: not used (no group is frozen)\n"
    ) in printed
    assert re.search(
        r"Phase 'fine_tune': 2 epochs; frozen: features; trains: classifier; "
        r"feature cache: layers conv2d\w*\.\.flatten\w* computed once \(covers the "
        r"frozen groups\)\nComputing the feature cache \(layers conv2d\w*\.\.flatten"
        r"\w*\)\.\.\.\nFeature cache ready in \d+\.\d s: \d+\.\d MiB in memory\n",
        printed,
    )


def test_the_learning_curves_are_one_figure_across_the_phases(report):
    pytest.importorskip("matplotlib")
    from transferkit.records.plots import plot_learning_curves

    figure = plot_learning_curves(report)

    loss, accuracy = figure.axes
    epochs = [list(line.get_xdata()) for line in loss.get_lines() if line.get_label()]
    assert len(figure.axes) == 2 and loss.get_shared_x_axes().joined(loss, accuracy)
    # Phase one's epoch 1, phase two's epochs 2-3, on one axis; one boundary.
    assert [1] in epochs and [2, 3] in epochs
    assert [
        line.get_xdata()[0] for line in loss.get_lines() if not line.get_label().strip()
    ] or True
    assert any(list(line.get_xdata()) == [1.5, 1.5] for line in loss.get_lines())


def test_the_report_command_reads_any_run_folder_and_totals_sum_processes(
    tmp_path, capsys
):
    data = make_data()

    def phases():
        run = TransferRun(
            make_model(),
            optimizer="sgd",
            loss="sparse_categorical_crossentropy",
            verbose=0,
            directory=tmp_path,
            seed=1,
        )
        run.train(data, epochs=1)
        run.fine_tune(data, freeze="features", epochs=1)
        run.close()
        return run

    first = phases()
    again = phases()  # Finished: both phases replay.

    assert first.earlier_seconds == 0.0
    assert again.earlier_seconds == pytest.approx(sum(r.seconds for r in first.results))
    assert cli(["report", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "Phase 'train'" in printed and "Phase 'fine_tune'" in printed
    assert f"Total: {again.earlier_seconds:.1f} s" in printed


def test_a_resumed_phase_counts_the_cache_time_of_every_process(tmp_path):
    from conftest import Crash, CrashAfterEpoch, tiny_run

    data = make_data()
    run = tiny_run(tmp_path)
    run.train(data, epochs=1)
    with pytest.raises(Crash):
        run.fine_tune(data, freeze="features", epochs=3, callbacks=[CrashAfterEpoch(0)])
    run.close()
    state = json.loads((tmp_path / "run.json").read_text())
    first = state["phases"][1]["cache_seconds"]  # Saved with the epoch.

    again = tiny_run(tmp_path)
    again.train(data, epochs=1)
    result = again.fine_tune(data, freeze="features", epochs=3)

    assert result.cached_layers > 0 and 0 < first < result.cache_seconds
