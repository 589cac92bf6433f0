import json
import re

import pytest
from conftest import make_data, make_model

from transferkit import ClassSubset, TransferRun
from transferkit.report import (
    SCHEMA_VERSION,
    atomic_write,
    build_report,
    ensure_writable,
    format_markdown,
    format_phase,
    write_report,
)


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
    assert re.search(r"\n  frozen weights +unchanged \(bitwise\)$", table)
    page = format_markdown(report)
    assert "| fine_tune | 3-5 | 30 | 2 |" in page
    assert page.count("\n|") == 4  # Header, separator, two phases.


def test_a_changed_frozen_weight_is_shouted(report):
    phase = dict(
        report["phases"][1],
        frozen_unchanged=False,
        changed_variables=["sequential/conv2d/kernel"],
    )
    assert "CHANGED: sequential/conv2d/kernel" in format_phase(phase)


def test_write_report_writes_both_files_and_no_temporaries(tmp_path, report):
    json_path, md_path = write_report(tmp_path / "run", report)
    assert json.loads(json_path.read_text()) == report
    assert md_path.read_text() == format_markdown(report)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "report.json",
        "report.md",
    ]


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("previous")

    class Unprintable:
        def __str__(self):
            raise RuntimeError("boom")

    with pytest.raises(TypeError):
        atomic_write(path, Unprintable())
    assert path.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_an_unwritable_output_folder_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match="Cannot write to the output folder '.*file/run'"):
        ensure_writable(blocker / "run")
