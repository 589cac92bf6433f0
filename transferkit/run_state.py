"""The state of a run: its plan, each phase's progress and results.

`RunState` is what `run.json` holds, kept in memory for a run without a
folder. It opens a folder's saved state (checking that it belongs to the
same model and that no key is missing), hands out the saved record of a
phase, checked against the current plan, and saves the model with the
state after an epoch and at the end of a phase, through `RunDirectory`'s
atomic writes.

A phase's record is a dictionary, as JSON keeps it:

- `spec`: the phase's entry of the plan (`transferkit.plan.phase_spec`);
- `frozen_groups`, `frozen_digest`: the groups frozen for the phase and the
  digests of their variables at its start;
- `epochs_done`, `seconds`, `history`: progress so far;
- `result`: the `PhaseResult` as a dictionary once the phase has finished,
  else `None`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import keras

from transferkit.freeze_proof import digest
from transferkit.layer_group import LayerGroup
from transferkit.phase_result import PhaseResult
from transferkit.plan import differences, model_fingerprint
from transferkit.run_directory import CheckpointError, RunDirectory, seed_states

__all__ = ["RunState"]

_STATE_KEYS = ("model", "checkpoint", "phases")
_PHASE_KEYS = (
    "spec",
    "frozen_groups",
    "frozen_digest",
    "epochs_done",
    "seconds",
    "history",
    "result",
)
_SPEC_KEYS = ("kind", "name", "epochs")
_RESULT_KEYS = tuple(
    field.name
    for field in dataclasses.fields(PhaseResult)
    if field.default is dataclasses.MISSING
)


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

    Raises:
        CheckpointError: naming the file, if the folder holds a run of
            another model, a state with a key missing, or a checkpoint that
            cannot be loaded.
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
        self._every = checkpoint_every
        self._state = self._open()

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
        progress = [self._state["checkpoint"]] + [
            [p["spec"]["name"], p["epochs_done"], p["result"] is not None]
            for p in self.phases
        ]
        text = json.dumps(progress).encode()
        return int.from_bytes(hashlib.sha256(text).digest()[:7], "little")

    @property
    def phases(self) -> list[dict[str, Any]]:
        """The records of the phases started so far, in order."""
        return self._state["phases"]

    def recorded_phase(self, index: int, spec: Mapping[str, Any]):
        """The saved record of phase `index`, or `None` if it has none yet.

        Raises:
            CheckpointError: if the saved phase has another plan than `spec`.
        """
        phases = self.phases
        if self._directory is None:
            del phases[index:]  # Without a folder, a failed phase starts anew.
        if index >= len(phases):
            return None
        recorded = phases[index]["spec"]
        found = differences(recorded, spec)
        if found:
            raise CheckpointError(
                f"{self._file()} holds a different plan: its phase "
                f"{index + 1} ('{recorded['name']}') differs in "
                f"{'; '.join(found)}. Nothing was overwritten; run the same "
                "plan to resume, or use another folder."
            )
        return phases[index]

    def start_phase(
        self,
        record: dict[str, Any] | None,
        spec: Mapping[str, Any],
        frozen: Sequence[LayerGroup],
    ) -> dict[str, Any]:
        """The record of a phase about to train: `record` when it resumes one
        (checked to freeze the same groups), else a new one with the digests
        of the `frozen` groups' variables, saved at once as the phase's
        starting point.

        Raises:
            CheckpointError: if the resumed phase froze other groups.
        """
        frozen_groups = [group.name for group in frozen]
        if record is None:
            record = {
                "spec": dict(spec),
                "frozen_groups": frozen_groups,
                "frozen_digest": digest(frozen),
                "epochs_done": 0,
                "seconds": 0.0,
                "history": {},
                "result": None,
            }
            self.phases.append(record)
            self.save()
        elif record["frozen_groups"] != frozen_groups:
            raise CheckpointError(
                f"Phase '{spec['name']}' in {self._file()} was interrupted with "
                f"the groups {record['frozen_groups']} frozen, but now "
                f"{frozen_groups} are. Freeze the same groups to resume it."
            )
        return record

    def restore(self) -> None:
        """Loads the last checkpoint into the model: weights, optimizer state
        (the model must be compiled with a built optimizer) and seed state."""
        if self._directory is not None:
            self._directory.restore(self._model, self._state)

    def end_epoch(
        self,
        record: dict[str, Any],
        epoch: int,
        logs: Mapping[str, Any],
        seconds: float,
        *,
        save: bool = False,
    ) -> None:
        """Records an epoch's logs in `record`, and saves the model and the
        state when `save`, or at every `checkpoint_every` epochs of the phase
        but its last, which `finish_phase` saves with the phase's result."""
        for key, value in logs.items():
            record["history"].setdefault(key, []).append(float(value))
        record["epochs_done"] = epoch + 1
        record["seconds"] = seconds
        last = epoch + 1 == record["spec"]["epochs"]
        if save or ((epoch + 1) % self._every == 0 and not last):
            self.save()

    def finish_phase(self, record: dict[str, Any], result: PhaseResult) -> None:
        """Records `result` and saves the model with it: the end of every
        phase is saved, whatever `checkpoint_every` says."""
        record["result"] = result.to_dict()
        record["seconds"] = result.seconds
        self.save()

    def save(self) -> None:
        """Checkpoints the model and then the state, atomically; nothing
        without a folder."""
        if self._directory is not None:
            self._state["seed_states"] = seed_states(self._model)
            self._directory.save(self._model, self._state)

    def interrupted_message(self, record: Mapping[str, Any]) -> str:
        """What to tell a user who stopped `record`'s phase with Ctrl-C."""
        where = (
            f"Saved in {self.path!r}; run the same plan with the same "
            "directory to resume."
            if self._directory is not None
            else "Nothing was saved: pass `directory=` to keep progress."
        )
        return (
            f"Interrupted phase '{record['spec']['name']}' after epoch "
            f"{record['epochs_done']} of {record['spec']['epochs']}. {where}"
        )

    def resume_message(self) -> str:
        """How to go on after a multi-worker run lost a worker."""
        if self._directory is None:
            return "Nothing was saved: pass `directory=` to be able to resume."
        return (
            "Start every worker again with the same command to resume from "
            f"the last saved epoch in {self.path!r}."
        )

    def _open(self) -> dict[str, Any]:
        """The saved state, checked and with its weights loaded, or a new one."""
        fingerprint = model_fingerprint(self._model)
        fresh: dict[str, Any] = {"model": fingerprint, "checkpoint": None, "phases": []}
        if self._directory is None:
            return fresh
        state = self._directory.load_state()
        self._directory.remove_orphans(state)
        if state is None:
            return fresh
        self._check_keys(state)
        if state["model"] != fingerprint:
            raise CheckpointError(
                f"{self._file()} holds a run of a different model (other "
                "layers, groups or shapes). Nothing was overwritten; use another "
                "folder for this model."
            )
        if state["checkpoint"]:
            if not self._model.built:
                raise CheckpointError(
                    f"Cannot resume {self._file()} into a model that is not "
                    "built; give the first group an `input_shape`."
                )
            self._directory.restore(self._model, state)
        return state

    def _check_keys(self, state: Mapping[str, Any]) -> None:
        """Raises, naming the file and the key, if a key is missing."""
        self._require(state, _STATE_KEYS, "the top level")
        if not isinstance(state["phases"], list):
            raise CheckpointError(
                f"{self._file()} is damaged: 'phases' is not a list. Nothing "
                "was overwritten; restore the file, or move the folder aside "
                "to start a new run."
            )
        for index, phase in enumerate(state["phases"]):
            where = f"phases[{index}]"
            self._require(phase, _PHASE_KEYS, where)
            self._require(phase["spec"], _SPEC_KEYS, f"{where}.spec")
            if phase["result"] is not None:
                self._require(phase["result"], _RESULT_KEYS, f"{where}.result")

    def _require(self, record: Any, keys: Sequence[str], where: str) -> None:
        if not isinstance(record, Mapping):
            raise CheckpointError(
                f"{self._file()} is damaged: {where} is not a mapping "
                f"(received {type(record).__name__}). Nothing was "
                "overwritten; restore the file, or move the folder aside to "
                "start a new run."
            )
        for key in keys:
            if key not in record:
                raise CheckpointError(
                    f"{self._file()} lacks the key {key!r} in {where}: it was "
                    "edited by hand or written by another program. Nothing "
                    "was overwritten; restore the file, or move the folder "
                    "aside to start a new run."
                )

    def _file(self) -> str:
        return repr(str(self._directory.state_path)) if self._directory else "the run"
