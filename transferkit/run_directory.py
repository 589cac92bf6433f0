"""A folder that keeps a transfer run: checkpoints and the state to resume."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import keras

from transferkit._io import atomic_write, ensure_writable

__all__ = ["CheckpointError", "RunDirectory"]

STATE_SCHEMA_VERSION = 1
"""Version of the `run.json` layout this transferkit reads and writes."""

_CHECKPOINT = re.compile(r"checkpoint-(\d{6})\.keras")


class CheckpointError(ValueError):
    """A run folder's state or checkpoint cannot be used; the message names
    the file and what to do."""


class RunDirectory:
    """The files of one run: `run.json` and the latest `checkpoint-N.keras`.

    `run.json` records the plan (one entry per phase), each phase's progress
    and results, the random-seed state of the model, and the name of the
    checkpoint that holds the weights and optimizer state. A save writes the
    new checkpoint to a temporary file, syncs it and renames it to a new name,
    then replaces `run.json` the same way, then deletes the old checkpoint: a
    kill at any moment leaves a `run.json` that names a complete checkpoint.

    Args:
        path: the folder; created if needed.
        writer: whether this process writes the folder. Other workers of a
            multi-worker run only read it: they neither create nor clean it.
            Defaults to `True`.

    Raises:
        OSError: if the folder cannot be created or written.
    """

    STATE_FILE = "run.json"

    def __init__(self, path: str | os.PathLike, *, writer: bool = True):
        self.writer = writer
        self.path = ensure_writable(path) if writer else Path(path)
        self.state_path = self.path / self.STATE_FILE

    def load_state(self) -> dict[str, Any] | None:
        """The saved state, or `None` for a folder that holds no run.

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
        checkpoint = state.get("checkpoint")
        if checkpoint is not None and not (self.path / checkpoint).is_file():
            raise CheckpointError(
                f"{str(self.state_path)!r} names the checkpoint {checkpoint!r}, "
                "which is missing. Nothing was overwritten; restore the file or "
                "move the folder aside."
            )
        return state

    def save(self, model: keras.Model, state: dict[str, Any]) -> None:
        """Checkpoints `model` (weights, flags, optimizer) and then `state`.

        A process that does not write the folder saves the model to a
        temporary file and deletes it: under a multi-worker strategy, saving
        reads variables that every worker must read at the same time (the
        recipe of TensorFlow's multi-worker guide)."""
        if not self.writer:
            with tempfile.TemporaryDirectory(prefix="transferkit-worker-") as folder:
                model.save(Path(folder) / "checkpoint.keras")
            return
        previous = state.get("checkpoint")
        number = _checkpoint_number(previous) + 1 if previous else 1
        name = f"checkpoint-{number:06d}.keras"
        path = self.path / name
        # Keras insists on the .keras suffix, so the temporary name keeps it.
        partial = self.path / f".{name[: -len('.keras')]}.partial.keras"
        try:
            model.save(partial)
            _fsync(partial)
            os.replace(partial, path)
        except OSError as error:
            partial.unlink(missing_ok=True)
            kept = (
                f"the previous checkpoint {previous!r} is intact"
                if previous
                else "no checkpoint existed yet"
            )
            raise type(error)(
                f"Could not save a checkpoint in {str(self.path)!r} "
                f"({error.strerror or error}); {kept}. Free some space or fix "
                "the folder, then run the same plan again to resume."
            ) from error
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        state["checkpoint"] = name
        try:
            self.write_state(state)
        except BaseException:
            state["checkpoint"] = previous
            path.unlink(missing_ok=True)
            raise
        if previous and previous != name:
            (self.path / previous).unlink(missing_ok=True)

    def write_state(self, state: dict[str, Any]) -> None:
        """Replaces `run.json` atomically."""
        state["schema_version"] = STATE_SCHEMA_VERSION
        atomic_write(self.state_path, json.dumps(state, indent=1) + "\n")
        _fsync_directory(self.path)

    def remove_orphans(self, state: dict[str, Any] | None) -> None:
        """Deletes what a kill can leave behind: checkpoints that `run.json`
        does not name, temporary files of unfinished writes, and feature
        caches of an unfinished phase. Only the writer cleans the folder."""
        if not self.writer:
            return
        keep = state.get("checkpoint") if state else None
        for path in self.path.glob("checkpoint-*.keras"):
            if path.name != keep and _CHECKPOINT.fullmatch(path.name):
                path.unlink(missing_ok=True)
        for pattern in (
            ".checkpoint-*.partial.keras",
            f".{self.STATE_FILE}.*.tmp",
            "cache-*.bin",
        ):
            for path in self.path.glob(pattern):
                path.unlink(missing_ok=True)

    def restore(self, model: keras.Model, state: dict[str, Any]) -> None:
        """Loads the checkpoint's weights (and the optimizer state, when the
        model is compiled with a built optimizer) and seed state into `model`.

        Raises:
            CheckpointError: naming the file, if the checkpoint is damaged or
                does not fit the model.
        """
        path = self.path / state["checkpoint"]
        try:
            model.load_weights(path)
        except Exception as error:
            raise CheckpointError(
                f"Cannot load the checkpoint {str(path)!r} ({error}). Nothing "
                "was overwritten; move the folder aside to start a new run."
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


def seed_variables(model: keras.Model) -> list[keras.Variable]:
    """The model's random-seed state (e.g. Dropout's), in a stable order."""
    weights = {id(variable) for variable in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def seed_states(model: keras.Model) -> list[list[int]]:
    """JSON-ready values of `seed_variables(model)`."""
    return [keras.ops.convert_to_numpy(v).tolist() for v in seed_variables(model)]


def _checkpoint_number(name: str) -> int:
    match = _CHECKPOINT.fullmatch(name)
    return int(match.group(1)) if match else 0


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
