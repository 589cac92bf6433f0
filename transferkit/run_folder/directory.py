"""A folder that keeps a transfer run: checkpoints and the state to resume.

The folder has a life: `open` takes the lock (one writer per folder, see
`transferkit.utils.locks`), then `load_state` reads and checks `run.json`,
`restore` loads the checkpoint, and only then `clean_up` deletes what the
run itself left behind; `close` drops the lock. The constructor keeps paths
only, as Keras' `BackupAndRestore` does.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import keras

from transferkit.errors import CheckpointError
from transferkit.records.layout import CACHE_FILE, CHECKPOINT_NAME, STATE_FILE
from transferkit.utils.io import (
    atomic_write,
    dumps,
    ensure_writable,
    os_error,
    remove_temporaries,
)
from transferkit.utils.locks import FolderLock

__all__ = ["CheckpointError", "RunDirectory"]

STATE_SCHEMA_VERSION = 1
"""Version of the `run.json` layout this transferkit reads and writes."""

"""The names of a feature cache's files in a run folder."""

_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


class RunDirectory:
    """The files of one run: `run.json`, the current `checkpoint-N.keras`,
    and `run.lock`.

    `run.json` records the plan (one entry per phase), each phase's progress
    and results, the random-seed state of the model, and the names of the
    current checkpoint and of the one it replaced. A save writes the new
    checkpoint to a temporary file and syncs it, replaces `run.json` (which
    now names it) atomically, renames the temporary file to its name, and
    deletes the old checkpoint: a kill at any moment leaves a `run.json`
    whose checkpoint is complete, under its name or, between the two
    renames, under its temporary name, which the next `clean_up` finishes.

    Args:
        path: the folder; created by `open` if needed.
        writer: whether this process writes the folder. Other workers of a
            multi-worker run, and inspection, only read it: they neither
            create, lock nor clean it. Defaults to `True`.
    """

    STATE_FILE = STATE_FILE

    def __init__(self, path: str | os.PathLike, *, writer: bool = True):
        self.writer = writer
        self.path = Path(path)
        self.state_path = self.path / self.STATE_FILE
        self.read_only_reason = ""
        self._lock: FolderLock | None = None

    def open(self) -> None:
        """Creates the folder and takes its lock, for a writer. A folder on
        storage that cannot be written opens read-only, if it holds a run:
        its finished phases can be replayed, and the first save raises.

        Raises:
            FolderLockedError: if another process writes the folder.
            OSError: naming the folder, if it cannot be created or written
                (and holds no run).
        """
        if not self.writer:
            return
        try:
            ensure_writable(self.path)
        except OSError as error:
            if error.errno not in _READ_ONLY or not self.state_path.is_file():
                raise
            self.writer = False
            self.read_only_reason = error.strerror or str(error)
            return
        self._lock = FolderLock(self.path)
        self._lock.acquire()

    def close(self) -> None:
        """Drops the lock; the folder stays as it is."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def load_state(self) -> dict[str, Any] | None:
        """The saved state as JSON values, or `None` for a folder that holds
        no run. Its fields are checked by `RunRecord.from_json`.

        Raises:
            CheckpointError: if `run.json` is unreadable, truncated, from a
                newer transferkit, or names a checkpoint that is missing.
        """
        if not self.state_path.exists():
            return None
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(
                f"{str(self.state_path)!r} is damaged or truncated ({error}). "
                "Nothing was overwritten. Move the folder aside to start a "
                "new run, or restore the file."
            ) from error
        version = state.get("schema_version") if isinstance(state, dict) else None
        if not isinstance(version, int) or "phases" not in state:
            raise CheckpointError(
                f"{str(self.state_path)!r} is not a transferkit run state "
                "(no schema_version or phases). Nothing was overwritten; choose "
                "another folder."
            )
        if version > STATE_SCHEMA_VERSION:
            raise CheckpointError(
                f"{str(self.state_path)!r} was written by a newer transferkit "
                f"(schema version {version}; this one reads up to "
                f"{STATE_SCHEMA_VERSION}). Upgrade transferkit to resume it."
            )
        return state

    def check_checkpoint(self, name: str | None) -> None:
        """Raises `CheckpointError` if the checkpoint `name` is missing."""
        if name is not None and self.checkpoint_path(name) is None:
            raise CheckpointError(
                f"{str(self.state_path)!r} names the checkpoint {name!r}, "
                "which is missing. Nothing was overwritten; restore the file or "
                "move the folder aside."
            )

    def checkpoint_path(self, name: str) -> Path | None:
        """Where the checkpoint `name` is: its own path, or its temporary one
        when a kill came between the two renames of a save; `None` if it is
        in neither."""
        for path in (self.path / name, self.path / _partial_name(name)):
            if path.is_file():
                return path
        return None

    def clean_up(self, state: dict[str, Any] | None) -> list[str]:
        """Deletes what the run left behind, once `state` has been read and
        its checkpoint loaded: the checkpoint the current one replaced, the
        temporary files of interrupted writes, and the files of a feature
        cache. Finishes a save that a kill stopped between its renames.
        Nothing else is touched. Only the writer cleans. Returns the names
        it deleted."""
        if not self.writer:
            return []
        removed = []
        current = state.get("checkpoint") if state else None
        if current and not (self.path / current).is_file():
            os.replace(self.path / _partial_name(current), self.path / current)
        previous = state.get("previous_checkpoint") if state else None
        if previous and previous != current and (self.path / previous).is_file():
            (self.path / previous).unlink()
            removed.append(previous)
        for path in self.path.glob(".checkpoint-*.partial.keras"):
            if CHECKPOINT_NAME.fullmatch(path.name[1:].replace(".partial", "")):
                path.unlink(missing_ok=True)
                removed.append(path.name)
        for path in self.path.glob(".transferkit-cache-*.bin"):
            if CACHE_FILE.fullmatch(path.name) and path.is_file():
                path.unlink()
                removed.append(path.name)
        return removed + remove_temporaries(self.path)

    def save(self, model: keras.Model, state: dict[str, Any]) -> None:
        """Checkpoints `model` (weights, flags, optimizer) and then `state`.

        A process that does not write the folder saves the model to a
        temporary file and deletes it: under a multi-worker strategy, saving
        reads variables that every worker must read at the same time (the
        recipe of TensorFlow's multi-worker guide).

        Raises:
            OSError: naming the folder, if it cannot be written; the previous
                checkpoint and `run.json` are then intact.
            CheckpointError: if another `TransferRun` of this process opened
                the folder since.
        """
        if not self.writer:
            self._save_elsewhere(model)
            return
        self._check_lock()
        previous = state.get("checkpoint")
        name = self._next_name(previous)
        partial = self.path / _partial_name(name)
        try:
            model.save(partial)
            _fsync(partial)
        except BaseException as error:
            _remove_quietly(partial)
            if isinstance(error, OSError):
                raise self._save_error(error, previous, "a checkpoint") from error
            raise
        state["checkpoint"], state["previous_checkpoint"] = name, previous
        try:
            self.write_state(state)
        except BaseException as error:
            state["checkpoint"] = previous
            _remove_quietly(partial)
            if isinstance(error, OSError):
                raise self._save_error(error, previous, "run.json") from error
            raise
        # From here on `run.json` names the checkpoint, complete on disk; a
        # kill before the rename leaves it to the next `clean_up`.
        os.replace(partial, self.path / name)
        _fsync_directory(self.path)
        if previous and previous != name:
            _remove_quietly(self.path / previous)

    def write_state(self, state: dict[str, Any]) -> None:
        """Replaces `run.json` atomically, as strict JSON."""
        state["schema_version"] = STATE_SCHEMA_VERSION
        atomic_write(self.state_path, dumps(state))
        _fsync_directory(self.path)

    def restore(self, model: keras.Model, state: dict[str, Any], *, optimizer=True):
        """Loads the checkpoint's weights (and the optimizer state, when the
        model is compiled with a built optimizer and `optimizer`) and seed
        state into `model`.

        Raises:
            CheckpointError: naming the file, if the checkpoint is damaged or
                does not fit the model.
        """
        path = self.checkpoint_path(state["checkpoint"]) or (
            self.path / state["checkpoint"]
        )
        try:
            if optimizer or getattr(model, "optimizer", None) is None:
                model.load_weights(path)
            else:
                # Keras reads a .keras file's weights without its optimizer
                # only through saving_lib (load_weights refuses the option).
                from keras.src.saving import saving_lib

                saving_lib.load_weights_only(
                    model, path, objects_to_skip=[model.optimizer]
                )
        except Exception as error:
            kept = state.get("previous_checkpoint")
            beside = (
                f" The previous checkpoint {kept!r} is kept beside it."
                if kept and (self.path / kept).is_file()
                else ""
            )
            raise CheckpointError(
                f"Cannot load the checkpoint {str(path)!r} ({error}). Nothing "
                f"was overwritten.{beside} Move the folder aside to start a new "
                "run."
            ) from error
        seed_states = seed_variables(model)
        saved = state.get("seed_states", [])
        if len(saved) != len(seed_states):
            raise CheckpointError(
                f"{str(self.state_path)!r} holds {len(saved)} random-seed "
                f"states, but the model has {len(seed_states)}."
            )
        for variable, value in zip(seed_states, saved, strict=True):
            variable.assign(keras.ops.convert_to_tensor(value, variable.dtype))

    def _save_elsewhere(self, model: keras.Model) -> None:
        if self.read_only_reason:
            raise os_error(
                OSError(errno.EROFS, self.read_only_reason),
                f"Cannot write to the run folder {str(self.path)!r} "
                f"({self.read_only_reason}): its finished phases were replayed "
                "from it, but this phase must save. Copy the folder to storage "
                "that can be written and run the same plan there to go on.",
            )
        with tempfile.TemporaryDirectory(prefix="transferkit-worker-") as folder:
            model.save(Path(folder) / "checkpoint.keras")

    def _check_lock(self) -> None:
        if self._lock is None or not self._lock.held:
            raise CheckpointError(
                f"This run no longer writes {str(self.path)!r}: it was closed, "
                "or another TransferRun of this process opened the folder since. "
                "Use the newer run object."
            )

    def _next_name(self, previous: str | None) -> str:
        """The next checkpoint name after `previous` that no file has: a run
        never overwrites a file it did not make."""
        number = int(CHECKPOINT_NAME.fullmatch(previous).group(1)) if previous else 0
        while True:
            number += 1
            name = f"checkpoint-{number:06d}.keras"
            if self.checkpoint_path(name) is None:
                return name

    def _save_error(self, error: OSError, previous: str | None, what: str) -> OSError:
        """`error` with a message that names the folder and what is intact."""
        kept = (
            f"the previous checkpoint {previous!r} is intact, and so is run.json"
            if previous
            else "no checkpoint existed yet"
        )
        return os_error(
            error,
            f"Could not save {what} in {str(self.path)!r} "
            f"({error.strerror or error}); {kept}. Free some space or fix the "
            "folder, then run the same plan again to resume.",
        )


def seed_variables(model: keras.Model) -> list[keras.Variable]:
    """The model's random-seed state (e.g. Dropout's), in a stable order."""
    weights = {id(variable) for variable in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def seed_states(model: keras.Model) -> list[list[int]]:
    """JSON-ready values of `seed_variables(model)`."""
    return [keras.ops.convert_to_numpy(v).tolist() for v in seed_variables(model)]


def _partial_name(name: str) -> str:
    # Keras insists on the .keras suffix, so the temporary name keeps it.
    return f".{name[: -len('.keras')]}.partial.keras"


def _remove_quietly(path: Path) -> None:
    """Deletes `path` if it can; a folder that has become read-only keeps
    it, and the error that matters is the one being raised."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def _fsync(path: Path) -> None:
    with open(path, "rb") as stream:
        os.fsync(stream.fileno())


def _fsync_directory(path: Path) -> None:
    """Makes a rename in `path` durable (where the platform allows)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
