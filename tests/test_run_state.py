"""The run's state in `run.json`: every key checked on opening, and
checkpoints at an interval with the end of every phase saved."""

import json
import re
import shutil

import pytest
from conftest import (
    Crash,
    CrashAfterEpoch,
    Epochs,
    bitwise_equal,
    make_data,
    snapshot,
    tiny_run,
)

import transferkit
from transferkit.errors import CheckpointError
from transferkit.run_folder.directory import RunDirectory

make_run = tiny_run


def two_phases(run, data, epochs=(1, 5), callbacks=()):
    run.train(data, epochs=epochs[0])
    return run.fine_tune(
        data, freeze="features", epochs=epochs[1], callbacks=list(callbacks)
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A folder with a finished two-phase run, made once for the module."""
    folder = tmp_path_factory.mktemp("finished")
    with make_run(folder) as run:
        two_phases(run, make_data(), epochs=(1, 1))
    return folder


@pytest.fixture
def folder(finished, tmp_path):
    """A copy of the finished folder, for a test to edit."""
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def files(folder):
    """Every file's bytes but the lock's (opening records its holder)."""
    return {
        p.name: p.read_bytes()
        for p in sorted(folder.parent.rglob("*"))
        if p.is_file() and p.name != "run.lock"
    }


def edit_state(folder, edit):
    state_file = folder / "run.json"
    state = json.loads(state_file.read_text())
    edit(state)
    state_file.write_text(json.dumps(state))
    return state_file


@pytest.mark.parametrize(
    "path",
    [
        ("model",),
        ("checkpoint",),
        ("phases", 0, "epochs_done"),
        ("phases", 1, "frozen_digest"),
        ("phases", 1, "spec", "epochs"),
        ("phases", 1, "result", "frozen_unchanged"),
    ],
    ids=lambda path: ".".join(map(str, path)),
)
def test_a_state_file_with_a_missing_key_names_the_file_and_the_key(folder, path):
    def remove(state):
        parent = state
        for key in path[:-1]:
            parent = parent[key]
        del parent[path[-1]]

    state_file = edit_state(folder, remove)
    before = files(folder)

    where = "the top level"
    if len(path) > 1:
        where = f"phases[{path[1]}]" + "".join(f".{key}" for key in path[2:-1])
    message = (
        f"{str(state_file)!r} lacks the key {path[-1]!r} in {where}: it was "
        "edited by hand or written by another program. Nothing was overwritten"
    )
    with pytest.raises(CheckpointError, match=re.escape(message)):
        make_run(folder)
    assert files(folder) == before


def test_a_phase_record_that_is_not_a_mapping_is_named(folder):
    edit_state(folder, lambda state: state["phases"].__setitem__(1, "fine_tune"))
    with pytest.raises(CheckpointError, match=r"phases\[1\] is not a mapping"):
        make_run(folder)


def set_field(path, value):
    def edit(state):
        parent = state
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = value

    return edit


@pytest.mark.parametrize(
    "path, value, expected",
    [
        (("checkpoint",), "../other.keras", "a checkpoint file of the folder"),
        (("checkpoint",), "run.json", "a checkpoint file of the folder"),
        (("checkpoint",), None, "the name of the checkpoint of its 2 recorded"),
        (("phases", 1, "epochs_done"), 99, "at most the phase's 1 epochs"),
        (("phases", 1, "epochs_done"), -1, "an integer >= 0"),
        (("phases", 1, "history"), [1, 2], None),
        (("phases", 1, "history", "loss"), [1, 2], "a list of one number per epoch"),
        (("phases", 1, "frozen_digest"), {}, "the digests of the frozen groups"),
        (("phases", 1, "spec", "epochs"), "two", "an integer >= 1"),
        (("phases", 0, "result"), None, "the result of a phase that a later"),
        (("phases", 1, "seconds"), "long", "a number >= 0"),
    ],
    ids=lambda value: str(value),
)
def test_every_field_of_the_state_is_checked_and_nothing_is_changed(
    folder, path, value, expected
):
    # A file outside the folder that a checkpoint name could point at.
    (folder.parent / "other.keras").write_bytes(b"not the run's")
    state_file = edit_state(folder, set_field(path, value))
    before = files(folder)

    field = ".".join(
        f"[{key}]" if isinstance(key, int) else key for key in path
    ).replace(".[", "[")
    if expected is None:
        message = f"{str(state_file)!r} is damaged: {field} is not a mapping"
    else:
        message = (
            f"{str(state_file)!r} is damaged: {field} is {value!r}, expected {expected}"
        )
    with pytest.raises(CheckpointError, match=re.escape(message)):
        make_run(folder)
    assert files(folder) == before
    assert saved_phases_refuse(folder, message)


def saved_phases_refuse(folder, message):
    """Reading the folder without a model refuses it the same way."""
    with pytest.raises(CheckpointError, match=re.escape(message)):
        transferkit.saved_phases(folder)
    return True


class CountSaves:
    """Counts the checkpoints written, and the epoch each one holds."""

    def __init__(self, monkeypatch):
        self.epochs = []
        save = RunDirectory.save

        def counted(directory, model, state):
            self.epochs.append([phase["epochs_done"] for phase in state["phases"]])
            save(directory, model, state)

        monkeypatch.setattr(RunDirectory, "save", counted)


def test_checkpoint_every_saves_at_the_interval_and_at_the_end(tmp_path, monkeypatch):
    saves = CountSaves(monkeypatch)
    run = make_run(tmp_path, checkpoint_every=2)

    two_phases(run, make_data(), epochs=(1, 5))

    # train: its start, its end; fine_tune: its start, epochs 2 and 4, its end.
    assert saves.epochs == [[0], [1], [1, 0], [1, 2], [1, 4], [1, 5]]
    final = snapshot(run.model.weights)
    again = make_run(tmp_path, checkpoint_every=2)
    two_phases(again, make_data(), epochs=(1, 5))
    restored = snapshot(again.model.weights)
    assert all(
        bitwise_equal(a, b)
        for a, b in zip(restored.values(), final.values(), strict=True)
    )


def test_every_epoch_is_saved_by_default(tmp_path, monkeypatch):
    saves = CountSaves(monkeypatch)
    two_phases(make_run(tmp_path), make_data(), epochs=(1, 3))
    assert saves.epochs == [[0], [1], [1, 0], [1, 1], [1, 2], [1, 3]]


def test_a_crash_between_checkpoints_resumes_from_the_last_one(tmp_path):
    data = make_data()
    with pytest.raises(Crash, match="crash after epoch 2"):
        two_phases(
            make_run(tmp_path, checkpoint_every=2), data, callbacks=[CrashAfterEpoch(2)]
        )
    state = json.loads((tmp_path / "run.json").read_text())
    assert state["phases"][1]["epochs_done"] == 2

    epochs = Epochs()
    result = two_phases(
        make_run(tmp_path, checkpoint_every=2), data, callbacks=[epochs]
    )

    assert epochs.seen == [2, 3, 4]
    assert result.frozen_unchanged is True and len(result.history["loss"]) == 5


@pytest.mark.parametrize("every", [0, -1])
def test_checkpoint_every_must_be_a_positive_integer(tmp_path, every):
    with pytest.raises(ValueError, match=rf"Received: checkpoint_every={every}"):
        make_run(tmp_path, checkpoint_every=every)
