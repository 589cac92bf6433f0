"""Checkpoints, resume, interruption and reproducibility of a TransferRun."""

import json
import os
import re
import signal

import keras
import numpy as np
import pytest
from conftest import (
    Crash,
    CrashAfterEpoch,
    Epochs,
    bitwise_equal,
    make_data,
    make_model,
    snapshot,
)
from tiny import run_options

from transferkit import TransferRun
from transferkit.errors import CheckpointError
from transferkit.run_folder.directory import RunDirectory

LOSS = "sparse_categorical_crossentropy"


def make_run(directory, model=None, **kwargs):
    return TransferRun(
        model or make_model(dropout=True),
        optimizer="adam",
        loss=LOSS,
        metrics=["accuracy"],
        batch_size=16,
        verbose=0,
        directory=directory,
        **run_options(kwargs),
    )


def plan(run, data, callbacks=(), epochs=(2, 4)):
    """The plan every test runs: train, then fine-tune the head."""
    run.train(data, epochs=epochs[0], validation_data=data)
    return run.fine_tune(
        data,
        freeze=["features"],
        epochs=epochs[1],
        validation_data=data,
        callbacks=list(callbacks),
    )


def state_of(directory):
    return json.loads((directory / "run.json").read_text())


def checkpoints(directory):
    return sorted(p.name for p in directory.glob("checkpoint-*.keras"))


def test_a_run_folder_keeps_the_state_and_one_loadable_checkpoint(tmp_path):
    run = make_run(tmp_path)
    plan(run, make_data())

    state = state_of(tmp_path)
    assert [phase["spec"]["name"] for phase in state["phases"]] == [
        "train",
        "fine_tune",
    ]
    assert [phase["epochs_done"] for phase in state["phases"]] == [2, 4]
    assert checkpoints(tmp_path) == [state["checkpoint"]]
    loaded = keras.models.load_model(tmp_path / state["checkpoint"])
    assert not loaded.groups["features"].trainable
    for mine, theirs in zip(run.model.weights, loaded.weights, strict=True):
        assert bitwise_equal(np.array(mine.numpy()), np.array(theirs.numpy()))


def test_rerunning_a_finished_plan_trains_nothing_and_restores_the_model(tmp_path):
    data = make_data()
    first = make_run(tmp_path)
    plan(first, data)
    final = snapshot(first.model.weights)

    again = make_run(tmp_path)
    epochs = Epochs()
    plan(again, data, callbacks=[epochs])

    assert epochs.seen == []
    assert again.results == first.results
    restored = snapshot(again.model.weights)
    assert all(
        bitwise_equal(a, b)
        for a, b in zip(restored.values(), final.values(), strict=True)
    )


def test_an_interrupted_phase_resumes_from_its_last_saved_epoch(tmp_path):
    data = make_data()
    with pytest.raises(Crash):
        plan(make_run(tmp_path / "run"), data, callbacks=[CrashAfterEpoch(1)])
    assert state_of(tmp_path / "run")["phases"][1]["epochs_done"] == 2

    resumed_run = make_run(tmp_path / "run")
    epochs = Epochs()
    resumed = plan(resumed_run, data, callbacks=[epochs])
    uninterrupted_run = make_run(tmp_path / "other")
    uninterrupted = plan(uninterrupted_run, data)

    assert epochs.seen == [2, 3]  # Only the epochs the crash left undone.
    for mine, theirs in zip(
        resumed_run.results, uninterrupted_run.results, strict=True
    ):
        assert mine.name == theirs.name and mine.epochs == theirs.epochs
        assert mine.frozen_groups == theirs.frozen_groups
        assert mine.frozen_unchanged == theirs.frozen_unchanged
        assert mine.train_samples == theirs.train_samples
        assert {k: len(v) for k, v in mine.history.items()} == {
            k: len(v) for k, v in theirs.history.items()
        }
    assert resumed.frozen_unchanged is True and uninterrupted.frozen_unchanged is True


FAST = {"lean_step": True, "precision": "mixed_bfloat16", "steps_per_execution": 2}


@pytest.mark.parametrize("settings", [{}, FAST], ids=["default", "fast"])
def test_resuming_restores_the_optimizer_state_of_the_last_epoch(tmp_path, settings):
    data = make_data()
    with pytest.raises(Crash):
        plan(make_run(tmp_path, **settings), data, callbacks=[CrashAfterEpoch(1)])

    class Iterations(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.start = int(self.model.optimizer.iterations.numpy())

    iterations = Iterations()
    resumed = plan(make_run(tmp_path, **settings), data, callbacks=[iterations])

    assert iterations.start == 2 * 3  # Two epochs of three batches of 16.
    assert resumed.frozen_unchanged is True
    assert resumed.cached_layers == 3 and len(resumed.history["loss"]) == 4


def test_ctrl_c_finishes_the_epoch_saves_and_says_how_to_resume(tmp_path):
    class CtrlC(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if not hasattr(self, "sent"):
                self.sent = True
                os.kill(os.getpid(), signal.SIGINT)

    data = make_data()
    run = make_run(tmp_path)
    run.train(data, epochs=1)
    epochs = Epochs()
    message = (
        r"Interrupted phase 'fine_tune' after epoch 1 of 3. Saved in '.*'; "
        r"run the same plan with the same directory to resume."
    )
    with pytest.raises(KeyboardInterrupt, match=message):
        run.fine_tune(data, freeze="features", epochs=3, callbacks=[CtrlC(), epochs])

    assert epochs.seen == [0]  # The epoch finished; no further one began.
    assert state_of(tmp_path)["phases"][1]["epochs_done"] == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    again = make_run(tmp_path)
    again.train(data, epochs=1)
    assert again.fine_tune(data, freeze="features", epochs=3).epochs == 3


def test_ctrl_c_without_a_folder_says_nothing_was_saved():
    class CtrlC(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            os.kill(os.getpid(), signal.SIGINT)

    run = make_run(None)
    with pytest.raises(KeyboardInterrupt, match="Nothing was saved: pass `directory=`"):
        run.train(make_data(), epochs=2, callbacks=[CtrlC()])
    assert run.train(make_data(), epochs=1).name == "train"  # Starts anew.


def test_a_different_plan_is_an_error_that_leaves_the_folder_alone(tmp_path):
    data = make_data()
    plan(make_run(tmp_path), data)
    before = (tmp_path / "run.json").read_bytes()

    run = make_run(tmp_path)
    with pytest.raises(
        CheckpointError,
        match=r"run.json' holds a different plan: its phase 1 \('train'\) differs in epochs: recorded 2, now 3\. Nothing was overwritten",
    ):
        run.train(data, epochs=3)
    with pytest.raises(CheckpointError, match="different plan"):
        run.train((data[0][:20], data[1][:20]), epochs=2)

    assert (tmp_path / "run.json").read_bytes() == before


def test_a_different_model_is_an_error(tmp_path):
    plan(make_run(tmp_path), make_data())
    with pytest.raises(CheckpointError, match="holds a run of a different model"):
        make_run(tmp_path, model=make_model(batch_norm=True))


def test_a_truncated_state_file_is_named_and_kept(tmp_path):
    plan(make_run(tmp_path), make_data())
    state_file = tmp_path / "run.json"
    state_file.write_bytes(state_file.read_bytes()[:100])
    damaged = state_file.read_bytes()

    with pytest.raises(CheckpointError, match=r"run.json' is damaged or truncated"):
        make_run(tmp_path)
    assert state_file.read_bytes() == damaged


def test_a_state_file_from_a_newer_transferkit_is_refused(tmp_path):
    plan(make_run(tmp_path), make_data())
    state = state_of(tmp_path)
    state["schema_version"] = 99
    (tmp_path / "run.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="newer transferkit .schema version 99"):
        make_run(tmp_path)


def test_a_damaged_or_missing_checkpoint_is_named(tmp_path):
    plan(make_run(tmp_path), make_data())
    checkpoint = tmp_path / state_of(tmp_path)["checkpoint"]
    checkpoint.write_bytes(checkpoint.read_bytes()[:300])
    with pytest.raises(
        CheckpointError, match=f"Cannot load the checkpoint '.*{checkpoint.name}'"
    ):
        make_run(tmp_path)
    checkpoint.unlink()
    with pytest.raises(
        CheckpointError,
        match=f"names the checkpoint '{checkpoint.name}', which is missing",
    ):
        make_run(tmp_path)


def test_a_crash_between_checkpoint_and_state_leaves_the_previous_pair(
    tmp_path, monkeypatch
):
    data = make_data()
    run = make_run(tmp_path)
    run.train(data, epochs=1)
    recorded = state_of(tmp_path)

    def killed(*args, **kwargs):
        raise Crash("killed while writing run.json")

    monkeypatch.setattr("transferkit.run_folder.directory.atomic_write", killed)
    with pytest.raises(Crash):
        run.fine_tune(data, freeze="features", epochs=2)
    monkeypatch.undo()

    assert state_of(tmp_path) == recorded
    assert checkpoints(tmp_path) == [recorded["checkpoint"]]
    # A kill leaves the run's own temporary files behind: the next run
    # removes those, and nothing else.
    ours = [
        ".checkpoint-000100.partial.keras",
        ".run.json.transferkit-x1y2z3w4.tmp",
        ".transferkit-cache-train.bin",
    ]
    theirs = ["checkpoint-000099.keras", ".run.json.x1y2.tmp", "cache-train.bin"]
    for name in ours + theirs:
        (tmp_path / name).write_bytes(b"left over")
    again = make_run(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [recorded["checkpoint"], "run.json", "run.lock", *theirs]
    )
    again.train(data, epochs=1)
    assert again.fine_tune(data, freeze="features", epochs=2).frozen_unchanged


def test_a_full_disk_names_the_folder_and_keeps_the_last_checkpoint(
    tmp_path, monkeypatch
):
    data = make_data()
    run = make_run(tmp_path)
    run.train(data, epochs=1)
    recorded = state_of(tmp_path)

    def full(self, path, *args, **kwargs):
        with open(path, "wb") as stream:
            stream.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(run.model), "save", full)
    with pytest.raises(
        OSError,
        match=r"Could not save a checkpoint in '.*' \(No space left on device\); the previous checkpoint 'checkpoint-\d+.keras' is intact",
    ):
        run.fine_tune(data, freeze="features", epochs=2)
    monkeypatch.undo()

    assert state_of(tmp_path) == recorded
    # The half-written file is gone; the recorded pair is untouched.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        recorded["checkpoint"],
        "run.json",
        "run.lock",
    ]


def test_an_unwritable_folder_is_refused_up_front(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match="Cannot write to the output folder"):
        RunDirectory(blocker / "run").open()


def train_seeded(seed, directory=None):
    keras.utils.set_random_seed(seed)
    run = make_run(directory, model=make_model(dropout=True), seed=seed)
    plan(run, make_data(), epochs=(1, 2))
    return [np.array(keras.ops.convert_to_numpy(w)) for w in run.model.weights]


def all_bitwise_equal(first, second):
    return all(bitwise_equal(a, b) for a, b in zip(first, second, strict=True))


def test_the_same_seed_gives_bitwise_identical_weights():
    first, second, other = train_seeded(7), train_seeded(7), train_seeded(8)
    assert all_bitwise_equal(first, second)
    assert not any(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_seeded_runs_with_a_folder_match_runs_without(tmp_path):
    assert all_bitwise_equal(train_seeded(3), train_seeded(3, tmp_path))


def test_resuming_the_same_checkpoint_twice_gives_the_same_weights(tmp_path):
    import shutil

    data = make_data()
    keras.utils.set_random_seed(5)
    with pytest.raises(Crash):
        plan(make_run(tmp_path / "a", seed=5), data, callbacks=[CrashAfterEpoch(1)])
    shutil.copytree(tmp_path / "a", tmp_path / "b")

    weights = []
    for folder in ("a", "b"):
        run = make_run(tmp_path / folder, seed=5)
        plan(run, data)
        weights.append([np.array(w.numpy()) for w in run.model.weights])

    assert all_bitwise_equal(*weights)


def test_resuming_with_other_groups_frozen_is_refused(tmp_path):
    data = make_data()
    run = make_run(tmp_path)
    run.freeze("features")
    with pytest.raises(Crash):
        run.train(data, epochs=3, callbacks=[CrashAfterEpoch(0)])

    again = make_run(tmp_path)
    again.unfreeze("features")
    with pytest.raises(
        CheckpointError,
        match=r"was interrupted with the groups \['features'\] frozen, but now \[\] are",
    ):
        again.train(data, epochs=3)


@pytest.mark.parametrize(
    "change, shown",
    [
        (
            {"optimizer": keras.optimizers.Adam(learning_rate=0.5)},
            "optimizer.learning_rate: recorded 0.00",
        ),
        ({"batch_size": 8}, "batch_size: recorded 16, now 8"),
        (
            {"loss": "categorical_crossentropy"},
            "loss: recorded 'sparse_categorical_crossentropy', now 'categorical_crossentropy'",
        ),
    ],
    ids=["learning_rate", "batch_size", "loss"],
)
def test_other_training_settings_are_a_different_plan(tmp_path, change, shown):
    data = make_data()
    plan(make_run(tmp_path), data)
    settings = {"optimizer": "adam", "loss": LOSS, "batch_size": 16, **change}

    run = TransferRun(
        make_model(dropout=True), verbose=0, directory=tmp_path, **run_options(settings)
    )

    with pytest.raises(
        CheckpointError,
        match=rf"different plan: its phase 1 \('train'\) differs in {re.escape(shown)}",
    ):
        run.train(data, epochs=2, validation_data=data)
