"""The typed content of `run.json`, every field checked when it is read.

`RunRecord.from_json` reads what `json.loads` gave and checks each field
(type, range, and how the fields agree: a checkpoint name that is a plain
file name of the run's own pattern, `epochs_done` within the phase's epochs
and equal to the length of every history) before anything on disk is
touched; anything else is a `CheckpointError` naming the file, the field
and the value. `to_json` writes it back, non-finite numbers as the strings
`"nan"`, `"inf"` and `"-inf"`, so the file is strict JSON.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

from transferkit.errors import CheckpointError
from transferkit.records.layout import CHECKPOINT_NAME
from transferkit.records.phase_result import PhaseResult
from transferkit.utils.io import json_number

__all__ = ["PhaseRecord", "RunRecord"]

PHASE_KINDS = ("train", "fine_tune")

_RESULT_KEYS = tuple(
    field.name
    for field in dataclasses.fields(PhaseResult)
    if field.default is dataclasses.MISSING
    and field.default_factory is dataclasses.MISSING
)


@dataclasses.dataclass
class PhaseRecord:
    """One phase's entry in `run.json`: its plan, progress and result."""

    spec: dict[str, Any]
    """The phase's entry of the plan (`transferkit.phases.plan.phase_spec`)."""

    frozen_groups: list[str]
    """The groups frozen during the phase."""

    frozen_digest: dict[str, list[str]]
    """SHA-256 of every variable of the frozen groups at the phase's start."""

    epochs_done: int = 0
    """Epochs trained and recorded so far."""

    seconds: float = 0.0
    """Seconds the phase has taken so far, over all sessions."""

    history: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    """Per-epoch logs, one value per epoch done."""

    result: PhaseResult | None = None
    """The phase's result once it has finished, else `None`."""

    cache_seconds: float = 0.0
    """Seconds spent computing the feature cache, over all sessions."""

    stopped: str = ""
    """Why the last attempt stopped before the end (a non-finite loss), so
    that a rerun may change the optimizer's settings; empty otherwise."""

    held_digest: dict[str, str] | None = None
    """SHA-256 of every variable held still inside the groups the phase
    trains (`freeze_proof.held_variables`), by key; `None` in folders from
    before it was recorded."""

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def epochs(self) -> int:
        """The epochs the plan gives the phase."""
        return self.spec["epochs"]

    @property
    def summary(self) -> tuple[str, int, int, bool]:
        """`(name, epochs_done, epochs, finished)`, as `saved_phases` lists it."""
        return self.name, self.epochs_done, self.epochs, self.result is not None

    def to_json(self) -> dict[str, Any]:
        record = {
            "spec": self.spec,
            "frozen_groups": self.frozen_groups,
            "frozen_digest": self.frozen_digest,
            "epochs_done": self.epochs_done,
            "seconds": self.seconds,
            "history": self.history,
            "result": None if self.result is None else self.result.to_dict(),
        }
        if self.cache_seconds:  # Recorded only when set: older folders resume.
            record["cache_seconds"] = self.cache_seconds
        if self.stopped:
            record["stopped"] = self.stopped
        if self.held_digest:
            record["held_digest"] = self.held_digest
        return record


@dataclasses.dataclass
class RunRecord:
    """What `run.json` holds."""

    model: str
    """The model's architecture fingerprint (`plan.model_fingerprint`)."""

    checkpoint: str | None = None
    """The current checkpoint's file name, `None` before the first save."""

    previous_checkpoint: str | None = None
    """The checkpoint the current one replaced, deleted after it."""

    phases: list[PhaseRecord] = dataclasses.field(default_factory=list)
    """The phases started so far, in order."""

    seed_states: list[Any] = dataclasses.field(default_factory=list)
    """The model's random-seed state (Dropout's) at the checkpoint."""

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "checkpoint": self.checkpoint,
            "previous_checkpoint": self.previous_checkpoint,
            "phases": [phase.to_json() for phase in self.phases],
            "seed_states": self.seed_states,
        }

    def copy(self) -> RunRecord:
        return copy.deepcopy(self)

    @classmethod
    def from_json(cls, state: Any, file: str) -> RunRecord:
        """The record of `state` (as `json.loads` read it from `file`).

        Raises:
            CheckpointError: naming `file`, the field and its value, for a
                missing key, a value of the wrong type or range, or fields
                that disagree.
        """
        check = _Checker(file)
        check.mapping(state, "the top level", ("model", "checkpoint", "phases"))
        checkpoint = check.checkpoint_name(state["checkpoint"], "checkpoint")
        previous = check.checkpoint_name(
            state.get("previous_checkpoint"), "previous_checkpoint"
        )
        if not isinstance(state["model"], str):
            check.fail("model", state["model"], "an architecture fingerprint")
        if not isinstance(state["phases"], list):
            check.fail("phases", state["phases"], "a list")
        phases = [
            _phase(check, phase, f"phases[{index}]")
            for index, phase in enumerate(state["phases"])
        ]
        if phases and checkpoint is None:
            check.fail(
                "checkpoint",
                None,
                f"the name of the checkpoint of its {len(phases)} recorded phase(s)",
            )
        for earlier in phases[:-1]:
            if earlier.result is None:
                check.fail(
                    f"phases[{phases.index(earlier)}].result",
                    None,
                    "the result of a phase that a later phase follows",
                )
        seeds = state.get("seed_states", [])
        if not isinstance(seeds, list):
            check.fail("seed_states", seeds, "a list")
        return cls(state["model"], checkpoint, previous, phases, seeds)


def _phase(check: _Checker, phase: Any, where: str) -> PhaseRecord:
    check.mapping(
        phase,
        where,
        ("spec", "frozen_groups", "frozen_digest", "epochs_done", "seconds"),
    )
    check.mapping(phase.get("history", {}), f"{where}.history", ())
    spec = phase["spec"]
    check.mapping(spec, f"{where}.spec", ("kind", "name", "epochs"))
    if spec["kind"] not in PHASE_KINDS:
        check.fail(f"{where}.spec.kind", spec["kind"], f"one of {list(PHASE_KINDS)}")
    if not isinstance(spec["name"], str) or not spec["name"]:
        check.fail(f"{where}.spec.name", spec["name"], "a non-empty string")
    epochs = check.count(spec["epochs"], f"{where}.spec.epochs", minimum=1)
    groups = phase["frozen_groups"]
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        check.fail(f"{where}.frozen_groups", groups, "a list of group names")
    frozen_digest = phase["frozen_digest"]
    if not isinstance(frozen_digest, dict) or sorted(frozen_digest) != sorted(groups):
        check.fail(
            f"{where}.frozen_digest",
            frozen_digest,
            f"the digests of the frozen groups {groups}",
        )
    done = check.count(phase["epochs_done"], f"{where}.epochs_done", minimum=0)
    if done > epochs:
        check.fail(f"{where}.epochs_done", done, f"at most the phase's {epochs} epochs")
    seconds, cache_seconds = (
        json_number(phase.get(key, 0.0)) for key in ("seconds", "cache_seconds")
    )
    for key, value in (("seconds", seconds), ("cache_seconds", cache_seconds)):
        if not isinstance(value, int | float) or not value >= 0:
            check.fail(f"{where}.{key}", phase.get(key), "a number >= 0")
    history = {}
    for key, values in phase.get("history", {}).items():
        if not isinstance(values, list) or len(values) != done:
            check.fail(
                f"{where}.history.{key}",
                values,
                f"a list of one number per epoch done ({done})",
            )
        history[key] = [check.number(v, f"{where}.history.{key}") for v in values]
    result = phase.get("result")
    if result is not None:
        check.mapping(result, f"{where}.result", _RESULT_KEYS)
        if done < 1:
            check.fail(f"{where}.epochs_done", done, "at least 1 for a finished phase")
        try:
            result = PhaseResult.from_dict(result)
        except (TypeError, ValueError) as error:
            check.fail(f"{where}.result", result, f"a phase result ({error})")
    stopped = phase.get("stopped", "")
    if not isinstance(stopped, str):
        check.fail(f"{where}.stopped", stopped, "a string")
    held = phase.get("held_digest")
    if held is not None and not (
        isinstance(held, dict)
        and all(isinstance(v, str) and len(v) == 64 for v in held.values())
    ):
        check.fail(f"{where}.held_digest", held, "SHA-256 digests by variable key")
    return PhaseRecord(
        spec=dict(spec),
        frozen_groups=list(groups),
        frozen_digest=dict(frozen_digest),
        epochs_done=done,
        seconds=float(seconds),
        history=history,
        result=result,
        cache_seconds=float(cache_seconds),
        stopped=stopped,
        held_digest=None if held is None else dict(held),
    )


class _Checker:
    """Raises `CheckpointError`s that name the file, the field and the value."""

    def __init__(self, file: str):
        self.file = file

    def fail(self, field: str, value: Any, expected: str):
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        raise CheckpointError(
            f"{self.file} is damaged: {field} is {shown}, expected {expected}. "
            "It was edited by hand or written by another program. Nothing was "
            "overwritten; restore the file, or move the folder aside to start a "
            "new run."
        )

    def mapping(self, record: Any, where: str, keys) -> None:
        if not isinstance(record, Mapping):
            raise CheckpointError(
                f"{self.file} is damaged: {where} is not a mapping (received "
                f"{type(record).__name__}). Nothing was overwritten; restore the "
                "file, or move the folder aside to start a new run."
            )
        for key in keys:
            if key not in record:
                raise CheckpointError(
                    f"{self.file} lacks the key {key!r} in {where}: it was "
                    "edited by hand or written by another program. Nothing "
                    "was overwritten; restore the file, or move the folder "
                    "aside to start a new run."
                )

    def count(self, value: Any, field: str, *, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(field, value, f"an integer >= {minimum}")
        return value

    def number(self, value: Any, field: str) -> float:
        number = json_number(value)
        if isinstance(number, bool) or not isinstance(number, int | float):
            self.fail(field, value, "a number")
        return float(number)

    def checkpoint_name(self, name: Any, field: str) -> str | None:
        if name is None:
            return None
        if not isinstance(name, str) or not CHECKPOINT_NAME.fullmatch(name):
            self.fail(
                field,
                name,
                "a checkpoint file of the folder, named like 'checkpoint-000007.keras'",
            )
        return name
