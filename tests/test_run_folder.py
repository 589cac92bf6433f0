"""A run folder's life: one writer at a time, opening that deletes only what
the run made, messages that say what is intact, and no leftovers."""

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import bitwise_equal, make_data, make_model, snapshot, tiny_run

import transferkit
from transferkit import TransferRun
from transferkit.cache import features as feature_cache_module
from transferkit.cache.features import TemporaryCacheFolder
from transferkit.errors import CheckpointError, FolderLockedError

TESTS = Path(__file__).parent
ROOT = TESTS.parent


make_run = tiny_run


def state_of(folder):
    return json.loads((folder / "run.json").read_text())


def files(folder):
    return {
        p.name: p.read_bytes()
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != "run.lock"
    }


# The same plan as a user's second process would run it, against the folder.
SECOND_PROCESS = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from tiny import make_data, make_model
    from transferkit import TransferRun
    from transferkit.errors import FolderLockedError
    try:
        run = TransferRun(make_model(), optimizer="adam",
                          loss="sparse_categorical_crossentropy", verbose=0,
                          directory=sys.argv[1])
    except FolderLockedError as error:
        print(error)
        sys.exit(3)
    run.train(make_data(), epochs=1)
    print("trained")
    """
).format(tests=str(TESTS))

# Holds a folder's lock without TensorFlow, until killed.
HOLDER = textwrap.dedent(
    """
    import sys, time, types
    package = types.ModuleType("transferkit")  # Skips the package's imports.
    package.__path__ = [{package!r}]
    sys.modules["transferkit"] = package
    from transferkit.utils.locks import FolderLock
    lock = FolderLock(sys.argv[1])  # Held while referenced.
    lock.acquire()
    print("locked", flush=True)
    time.sleep(60)
    """
).format(package=str(ROOT / "transferkit"))


def test_a_second_process_is_refused_at_once_naming_the_holder(tmp_path):
    run = make_run(tmp_path)
    run.train(make_data(), epochs=1)
    before = files(tmp_path)

    second = subprocess.run(
        [sys.executable, "-c", SECOND_PROCESS, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert second.returncode == 3, second.stderr[-2000:]
    assert f"The run folder {str(tmp_path)!r} is in use by process {os.getpid()}" in (
        second.stdout
    )
    assert "on host" in second.stdout and "since 20" in second.stdout
    assert files(tmp_path) == before
    # The first run goes on and owns the folder.
    assert run.fine_tune(make_data(), freeze="features", epochs=1).frozen_unchanged


def hold(folder):
    """A process that holds `folder`'s lock, once it has said so."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True
    )
    return holder, holder.stdout.readline() == "locked\n"


def kill(holder):
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    holder.stdout.close()


def test_the_lock_of_a_killed_process_is_free_and_close_releases_it(tmp_path):
    holder, locked = hold(tmp_path)
    try:
        assert locked
        with pytest.raises(FolderLockedError, match=f"process {holder.pid} on host"):
            make_run(tmp_path)
    finally:
        kill(holder)

    with make_run(tmp_path) as run:  # The kernel dropped the killed one's lock.
        run.train(make_data(), epochs=1)
        holder, locked = hold(tmp_path)
        kill(holder)
        assert not locked
    holder, locked = hold(tmp_path)
    kill(holder)
    assert locked
    with pytest.raises(RuntimeError, match="This TransferRun is closed"):
        run.train(make_data(), epochs=1)


def test_a_second_run_of_the_same_process_takes_the_folder_over(tmp_path):
    first = make_run(tmp_path)
    second = make_run(tmp_path)  # A notebook cell run again.

    with pytest.raises(CheckpointError, match="no longer writes .*Use the newer run"):
        first.train(make_data(), epochs=1)
    assert not (tmp_path / "run.json").exists()
    second.train(make_data(), epochs=1)
    assert transferkit.saved_phases(tmp_path) == [("train", 1, 1, True)]


def test_saved_phases_reads_a_folder_in_use_and_changes_nothing(tmp_path):
    run = make_run(tmp_path)
    run.train(make_data(), epochs=2)
    before = files(tmp_path)

    assert transferkit.saved_phases(tmp_path) == [("train", 2, 2, True)]
    assert transferkit.saved_phases(tmp_path / "empty") == []
    assert files(tmp_path) == before
    assert not (tmp_path / "empty").exists()


def test_opening_deletes_only_the_runs_own_leftovers(tmp_path):
    data = make_data()
    # A user's complete checkpoint in the folder before the run.
    theirs = {
        "checkpoint-000005.keras": b"a user's model",
        "checkpoint-000123.keras": b"another",
        "cache-photos.bin": b"a user's cache",
        ".run.json.x1y2.tmp": b"someone else's temporary file",
        "notes.txt": b"notes",
    }
    for name, content in theirs.items():
        (tmp_path / name).write_bytes(content)
    run = make_run(tmp_path)
    run.train(data, epochs=4)  # Saves 1, 2, 3, 4, then 6: 5 is taken.
    ours = [
        ".checkpoint-000009.partial.keras",
        ".run.json.transferkit-abcd1234.tmp",
        ".learning_curves.png.transferkit-abcd1234.tmp",
        ".transferkit-cache-train.bin",
        ".transferkit-cache-validation.bin",
    ]
    for name in ours:
        (tmp_path / name).write_bytes(b"left by a kill")
    run.close()

    make_run(tmp_path).close()

    state = state_of(tmp_path)
    assert state["checkpoint"] == "checkpoint-000006.keras"
    assert sorted(files(tmp_path)) == sorted(
        [*theirs, "checkpoint-000006.keras", "run.json"]
    )
    for name, content in theirs.items():
        assert (tmp_path / name).read_bytes() == content


def test_a_kill_between_the_two_renames_of_a_save_is_finished_on_opening(tmp_path):
    run = make_run(tmp_path)
    run.train(make_data(), epochs=2)
    weights = snapshot(run.model.weights)
    run.close()
    name = state_of(tmp_path)["checkpoint"]
    partial = f".{name[: -len('.keras')]}.partial.keras"
    (tmp_path / name).rename(tmp_path / partial)  # run.json names it already.

    again = make_run(tmp_path)

    assert sorted(files(tmp_path)) == [name, "run.json"]
    restored = snapshot(again.model.weights).values()
    assert all(
        bitwise_equal(a, b) for a, b in zip(restored, weights.values(), strict=True)
    )


def test_an_older_checkpoint_is_kept_until_the_current_one_loads(tmp_path):
    run = make_run(tmp_path)
    run.train(make_data(), epochs=2)
    run.close()
    state = state_of(tmp_path)
    current = tmp_path / state["checkpoint"]
    older = "checkpoint-000001.keras"
    (tmp_path / older).write_bytes(current.read_bytes())
    state["previous_checkpoint"] = older
    (tmp_path / "run.json").write_text(json.dumps(state))
    current.write_bytes(current.read_bytes()[:300])  # Truncated.
    before = files(tmp_path)

    with pytest.raises(
        CheckpointError,
        match=f"Cannot load the checkpoint .*The previous checkpoint '{older}' is "
        "kept beside it",
    ):
        make_run(tmp_path)
    assert files(tmp_path) == before


def test_a_folder_that_turns_read_only_mid_run_keeps_the_last_pair(
    tmp_path, monkeypatch
):
    run = make_run(tmp_path)
    run.train(make_data(), epochs=1)
    recorded = files(tmp_path)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(type(run.model), "save", read_only)
    monkeypatch.setattr(Path, "unlink", read_only)  # The clean-up fails too.
    with pytest.raises(
        OSError,
        match=r"Could not save a checkpoint in '.*' \(Read-only file system\); the "
        r"previous checkpoint 'checkpoint-000002.keras' is intact",
    ) as raised:
        run.fine_tune(make_data(), freeze="features", epochs=1)
    monkeypatch.undo()
    assert raised.value.errno == errno.EROFS
    assert files(tmp_path) == recorded


def test_a_full_disk_while_replacing_run_json_keeps_the_last_pair(
    tmp_path, monkeypatch
):
    run = make_run(tmp_path)
    run.train(make_data(), epochs=1)
    recorded = files(tmp_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("transferkit.run_folder.directory.atomic_write", full)
    with pytest.raises(
        OSError,
        match=r"Could not save run.json in '.*' \(No space left on device\); the "
        r"previous checkpoint 'checkpoint-000002.keras' is intact, and so is run.json",
    ):
        run.fine_tune(make_data(), freeze="features", epochs=1)
    monkeypatch.undo()
    assert files(tmp_path) == recorded


def test_a_finished_run_on_read_only_storage_is_replayed(tmp_path, monkeypatch):
    data = make_data()
    first = make_run(tmp_path)
    first.train(data, epochs=1)
    first.close()
    before = files(tmp_path)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    # What ensure_writable meets on a read-only mount.
    monkeypatch.setattr("transferkit.utils.io.tempfile.TemporaryFile", read_only)
    again = make_run(tmp_path)
    assert again.train(data, epochs=1) == first.results[0]
    with pytest.raises(
        OSError, match="Cannot write to the run folder .*Copy the folder to storage"
    ):
        again.fine_tune(data, freeze="features", epochs=1)
    assert files(tmp_path) == before


def test_a_full_disk_while_the_cache_spills_names_the_file(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", feature_cache_memory=0)
    run.train(make_data(), epochs=1)

    class FullDisk:
        def __init__(self, *args):
            pass

        def seek(self, *args):
            pass

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            pass

    monkeypatch.setattr(feature_cache_module, "open", FullDisk, raising=False)
    with pytest.raises(
        OSError,
        match=r"Could not write the feature cache '.*\.transferkit-cache-train.bin' "
        r"\(No space left on device\) after 0 rows; the run's checkpoints are "
        "untouched",
    ):
        run.fine_tune(make_data(), freeze="features", epochs=1)
    assert transferkit.saved_phases(tmp_path / "run")[-1] == ("fine_tune", 0, 1, False)


def test_ctrl_c_while_the_cache_is_built_says_how_to_resume(tmp_path, monkeypatch):
    run = make_run(tmp_path)
    run.train(make_data(), epochs=1)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("transferkit.phases.training.FeatureCache", interrupted)
    with pytest.raises(
        KeyboardInterrupt,
        match=r"Interrupted phase 'fine_tune' after epoch 0 of 2. Saved in '.*'; run "
        "the same plan with the same directory to resume.",
    ):
        run.fine_tune(make_data(), freeze="features", epochs=2)


def test_an_abandoned_temporary_cache_is_removed_by_the_next_one(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    abandoned, alive = TemporaryCacheFolder(), TemporaryCacheFolder()
    (abandoned.path / ".transferkit-cache-train.bin").write_bytes(b"x" * 1000)
    os.close(abandoned._lock)  # As a kill -9 drops it.
    foreign = tmp_path / "transferkit-cache-someone"  # No lock file: not ours.
    foreign.mkdir()

    fresh = TemporaryCacheFolder()

    assert not abandoned.path.exists()
    assert alive.path.exists() and foreign.exists()
    fresh.remove()
    alive.remove()
    assert sorted(p.name for p in tmp_path.iterdir()) == [foreign.name]


def test_numpy_integers_are_taken_wherever_python_ones_are(tmp_path):
    run = TransferRun(
        make_model(),
        optimizer="adam",
        loss="sparse_categorical_crossentropy",
        batch_size=np.int64(16),
        checkpoint_every=np.int32(1),
        seed=np.int64(3),
        verbose=0,
        directory=tmp_path,
    )
    result = run.train(make_data(), epochs=np.int64(1))
    assert (
        result.epochs == 1
        and state_of(tmp_path)["phases"][0]["spec"]["batch_size"] == 16
    )


def test_a_changed_sample_with_the_same_labels_is_a_different_plan(tmp_path):
    x, y = make_data()
    with make_run(tmp_path) as run:
        run.train((x, y), epochs=1)
    # The labels' digest stays what folders from before recorded.
    data = state_of(tmp_path)["phases"][0]["spec"]["data"]
    assert data["labels_sha256"] == hashlib.sha256(y.tobytes()).hexdigest()
    with pytest.raises(CheckpointError, match="differs in data.samples_sha256"):
        make_run(tmp_path).train((x * 255, y), epochs=1)
    keras.utils.set_random_seed(0)
