"""The state of a run: its plan, each phase's progress and results.

`RunState` is what `run.json` holds (a `RunRecord`), kept in memory for a
run without a folder. `open` takes the folder's lock, reads its saved state
(every field checked, and the model's architecture compared) and loads its
checkpoint; `clean_up` then deletes what the run left behind, and `close`
drops the lock. It hands out the saved record of a phase, checked against
the current plan, and saves the model with the state after an epoch and at
the end of a phase, through `RunDirectory`'s atomic writes. A phase that
fails goes back to what was last saved (`rollback`), so that a retry in the
same process resumes from the epoch it loads.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import keras

from transferkit.errors import CheckpointError
from transferkit.groups.layer_group import LayerGroup
from transferkit.groups.model_groups import groups_of
from transferkit.layers.lora import adapt
from transferkit.phases.freeze_proof import digest
from transferkit.phases.plan import differences, model_fingerprint
from transferkit.records.phase_result import PhaseResult
from transferkit.records.run_record import PhaseRecord, RunRecord
from transferkit.run_folder.directory import RunDirectory, seed_states

__all__ = ["RunState", "recorded_spec", "saved_phases"]


class RunState:
    """A run's plan and progress, saved in `directory` when there is one.

    Args:
        model: the run's model. A saved state must be of the same
            architecture; its checkpoint's weights are loaded into `model`.
        directory: the folder that keeps the run, or `None`.
        checkpoint_every: save after every this many epochs of a phase.
        writer: whether this process writes the folder; the other workers of
            a multi-worker run read the chief's state and weights from it,
            and keep their progress in memory. Defaults to `True`.
    """

    def __init__(
        self,
        model: keras.Model,
        directory: str | os.PathLike | None,
        *,
        checkpoint_every: int = 1,
        writer: bool = True,
    ):
        self._model = model
        self._directory = (
            None if directory is None else RunDirectory(directory, writer=writer)
        )
        self._given = None if directory is None else os.fspath(directory)
        self._every = checkpoint_every
        self._record = RunRecord(model_fingerprint(model))
        self._saved = self._record.copy()
        self._restore_weights = False

    def open(self) -> None:
        """Locks the folder, reads and checks its state, and loads its
        checkpoint into the model; nothing without a folder. On an error the
        lock is dropped and nothing on disk has changed.

        Raises:
            FolderLockedError: if another process writes the folder.
            CheckpointError: naming the file, if the folder holds a run of
                another model, a state with a field missing or out of range,
                or a checkpoint that cannot be loaded.
        """
        if self._directory is None:
            return
        self._directory.open()
        try:
            self._record = self._read()
        except BaseException:
            self._directory.close()
            raise
        self._saved = self._record.copy()

    def clean_up(self) -> list[str]:
        """Deletes what the run left in its folder (see
        `RunDirectory.clean_up`), after `open`; returns the names deleted."""
        if self._directory is None:
            return []
        return self._directory.clean_up(self._record.to_json())

    def close(self) -> None:
        """Drops the folder's lock."""
        if self._directory is not None:
            self._directory.close()

    @property
    def path(self) -> str | None:
        """The run folder, or `None`."""
        return None if self._directory is None else str(self._directory.path)

    @property
    def writes(self) -> bool:
        """Whether this process writes the run folder (there is one, and
        this is not a worker other than the chief)."""
        return self._directory is not None and self._directory.writer

    def fingerprint(self) -> int:
        """A number that two processes share when they read the same saved
        state: the checkpoint and each phase's name and progress."""
        progress = [self._record.checkpoint] + [
            [p.name, p.epochs_done, p.result is not None] for p in self.phases
        ]
        text = json.dumps(progress).encode()
        return int.from_bytes(hashlib.sha256(text).digest()[:7], "little")

    @property
    def phases(self) -> list[PhaseRecord]:
        """The records of the phases started so far, in order."""
        return self._record.phases

    def recorded_phase(self, index: int, spec: Mapping[str, Any]):
        """The saved record of phase `index`, or `None` if it has none yet.

        A phase that stopped on a non-finite loss may resume with other
        settings of the same optimizer class (a lower learning rate, say);
        the record then takes the new settings.

        Raises:
            CheckpointError: if the saved phase has another plan than `spec`.
        """
        phases = self.phases
        if self._directory is None:
            del phases[index:]  # Without a folder, a failed phase starts anew.
        if index >= len(phases):
            return None
        record = phases[index]
        data = record.spec.get("data")
        if isinstance(data, dict) and "labels_sha256" in data:
            # Folders from before the samples were fingerprinted resume.
            data.setdefault("samples_sha256", spec["data"].get("samples_sha256"))
        found = differences(record.spec, spec)
        if found and record.stopped and _only_optimizer_settings(record.spec, spec):
            record.spec, record.stopped, found = dict(spec), "", []
        if found:
            raise CheckpointError(
                f"{self._file()} holds a different plan: its phase "
                f"{index + 1} ('{record.name}') differs in "
                f"{'; '.join(found)}. Nothing was overwritten; run the same "
                "plan to resume, or use another folder."
            )
        return record

    def start_phase(
        self,
        record: PhaseRecord | None,
        spec: Mapping[str, Any],
        frozen: Sequence[LayerGroup],
        held_digest: dict[str, str] | None = None,
    ) -> PhaseRecord:
        """The record of a phase about to train: `record` when it resumes one
        (checked to freeze the same groups), else a new one with the digests
        of the `frozen` groups' variables (and `held_digest`, of those held
        still inside the groups it trains), saved at once as the phase's
        starting point.

        Raises:
            CheckpointError: if the resumed phase froze other groups.
        """
        frozen_groups = [group.name for group in frozen]
        if record is None:
            record = PhaseRecord(dict(spec), frozen_groups, digest(frozen))
            record.held_digest = held_digest or None
            self.phases.append(record)
            self.save()
        elif record.frozen_groups != frozen_groups:
            raise CheckpointError(
                f"Phase '{spec['name']}' in {self._file()} was interrupted with "
                f"the groups {record.frozen_groups} frozen, but now "
                f"{frozen_groups} are. Freeze the same groups to resume it."
            )
        return record

    def restore(self, record: PhaseRecord) -> None:
        """Loads the last checkpoint into the model for `record`'s phase:
        weights, optimizer state (the model must be compiled with a built
        optimizer) and seed state once the phase has saved an epoch; the
        weights alone when an attempt of this process left them changed."""
        if self._directory is None:
            return
        if record.epochs_done:
            self._directory.restore(self._model, self._record.to_json())
        elif self._restore_weights:
            self._directory.restore(
                self._model, self._record.to_json(), optimizer=False
            )
        self._restore_weights = False

    def end_epoch(
        self,
        record: PhaseRecord,
        epoch: int,
        logs: Mapping[str, Any],
        seconds: float,
        *,
        save: bool = False,
    ) -> None:
        """Records an epoch's logs in `record`, and saves the model and the
        state when `save`, or at every `checkpoint_every` epochs of the phase
        but its last, which `finish_phase` saves with the phase's result.

        The history keeps one value per epoch under every key: a key that
        an epoch does not log (a set a resumed phase no longer evaluates,
        `also_evaluate=`) gets NaN for it, and a new one NaN for the epochs
        before it."""
        before = record.epochs_done
        for key, values in record.history.items():
            if key not in logs:
                values.append(math.nan)
        for key, value in logs.items():
            record.history.setdefault(key, [math.nan] * before).append(float(value))
        record.epochs_done = epoch + 1
        record.seconds = seconds
        last = epoch + 1 == record.epochs
        if save or ((epoch + 1) % self._every == 0 and not last):
            self.save()

    def finish_phase(self, record: PhaseRecord, result: PhaseResult) -> None:
        """Records `result` and saves the model with it: the end of every
        phase is saved, whatever `checkpoint_every` says."""
        record.result = result
        record.seconds = result.seconds
        self.save()

    def rollback(self, stopped: str = "") -> None:
        """Goes back to the state last saved, after a phase failed: a retry
        resumes from the epoch it loads, and the model's weights are loaded
        again. `stopped` records why, in the folder too (a non-finite loss),
        so that the phase may resume with other optimizer settings."""
        self._record = self._saved.copy()
        self._restore_weights = True
        phases = self._record.phases
        if stopped and phases and phases[-1].result is None:
            phases[-1].stopped = stopped
            if self.writes:
                try:
                    self._directory.write_state(self._record.to_json())
                except OSError:
                    pass  # The error being raised matters more than the note.
            self._saved = self._record.copy()

    def save(self) -> None:
        """Checkpoints the model and then the state, atomically; nothing
        without a folder."""
        if self._directory is not None:
            self._record.seed_states = seed_states(self._model)
            state = self._record.to_json()
            self._directory.save(self._model, state)
            self._record.checkpoint = state["checkpoint"]
            self._record.previous_checkpoint = state["previous_checkpoint"]
        self._saved = self._record.copy()

    def interrupted_message(self, record: PhaseRecord, when: str = "") -> str:
        """What to tell a user who stopped `record`'s phase with Ctrl-C."""
        where = (
            f"Saved in {self.path!r}; run the same plan with the same "
            "directory to resume."
            if self._directory is not None
            else "Nothing was saved: pass `directory=` to keep progress."
        )
        return (
            f"Interrupted phase '{record.name}' {when or 'after epoch'} "
            f"{record.epochs_done} of {record.epochs}. {where}"
        )

    def kept_message(self, record: PhaseRecord) -> str:
        """What a phase stopped by a non-finite loss left, and how to go on."""
        if self._directory is None:
            return (
                "Nothing was saved (no `directory=`), and the model holds the "
                "non-finite weights: build the model again, lower the learning "
                "rate (or clip the gradients), and pass `directory=` to resume "
                "from the last finite epoch next time."
            )
        kept = (
            f"epoch {record.epochs_done} of phase '{record.name}'"
            if record.epochs_done
            else f"the weights from the start of phase '{record.name}'"
        )
        return (
            f"{self.path!r} keeps {kept}, its last finite checkpoint. Lower the "
            "learning rate (or clip the gradients) and run the plan again to "
            "resume from there: this phase may resume with other settings of "
            "the same optimizer."
        )

    def finished_message(self, record: PhaseRecord) -> str:
        """The line that says a finished phase was restored from the folder
        (as the user named it), not trained again."""
        return (
            f"phase '{record.name}' finished earlier in {self._given}: "
            "restored, not trained"
        )

    def resume_message(self) -> str:
        """How to go on after a multi-worker run lost a worker."""
        if self._directory is None:
            return "Nothing was saved: pass `directory=` to be able to resume."
        return (
            "Start every worker again with the same command to resume from "
            f"the last saved epoch in {self.path!r}."
        )

    def _read(self) -> RunRecord:
        """The folder's record, checked and with its weights loaded, or a new
        one."""
        fresh = self._record
        state = self._directory.load_state()
        if state is None:
            return fresh
        record = RunRecord.from_json(state, self._file())
        if record.model != fresh.model:
            raise CheckpointError(
                f"{self._file()} holds a run of a different model (other "
                "layers, groups or shapes). Nothing was overwritten; use another "
                "folder for this model."
            )
        self._directory.check_checkpoint(record.checkpoint)
        if record.checkpoint:
            if not self._model.built:
                raise CheckpointError(
                    f"Cannot resume {self._file()} into a model that is not "
                    "built; give the first group an `input_shape`."
                )
            _adapt_for(self._model, record)
            self._directory.restore(self._model, record.to_json())
        return record

    def _file(self) -> str:
        return repr(str(self._directory.state_path)) if self._directory else "the run"


def _adapt_for(model: keras.Model, record: RunRecord) -> None:
    """Adapts the groups of an interrupted LoRA phase before its checkpoint
    is loaded, since that holds their adapters (`transferkit.layers.lora`); the
    phase takes them as they are when it resumes."""
    last = record.phases[-1] if record.phases else None
    ranks = {} if last is None or last.result is not None else last.spec.get("lora")
    if ranks:
        groups = groups_of(model) or {}
        adapt([groups[name] for name in ranks if name in groups], ranks)


def saved_phases(directory: str | os.PathLike) -> list[tuple[str, int, int, bool]]:
    """`(name, epochs_done, epochs, finished)` per phase that the run folder
    `directory` records; reads `run.json` only: takes no lock, loads no
    model and changes nothing, so it works while another process trains.

    Raises:
        CheckpointError: naming the file, if `run.json` is damaged.
    """
    folder = RunDirectory(directory, writer=False)
    state = folder.load_state()
    if state is None:
        return []
    record = RunRecord.from_json(state, repr(str(folder.state_path)))
    return [phase.summary for phase in record.phases]


def recorded_spec(directory: str | os.PathLike, name: str) -> dict[str, Any] | None:
    """The plan entry of the phase `name` that the run folder `directory`
    records (its kind, epochs, optimizer's config, ...), or `None`; reads
    `run.json` only, as `saved_phases` does."""
    state = RunDirectory(directory, writer=False).load_state()
    if state is None:
        return None
    record = RunRecord.from_json(state, repr(str(directory)))
    for phase in record.phases:
        if phase.spec.get("name") == name:
            return dict(phase.spec)
    return None


def _only_optimizer_settings(recorded: Mapping, current: Mapping) -> bool:
    """Whether two plans of a phase differ only in the optimizer's settings,
    not its class."""
    if differences({**recorded, "optimizer": None}, {**current, "optimizer": None}):
        return False
    old, new = recorded.get("optimizer"), current.get("optimizer")
    return _optimizer_class(old) == _optimizer_class(new) is not None


def _optimizer_class(fingerprint: Any) -> str | None:
    if isinstance(fingerprint, Mapping):
        return fingerprint.get("class")
    return None
