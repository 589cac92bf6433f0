"""`PhaseResult`: what one phase of a `TransferRun` did, measured and checked.

A plain record, JSON-ready through `to_dict`/`from_dict`; it imports neither
Keras nor TensorFlow, so reading a report does not need them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from transferkit.utils.io import json_number, strict_json

__all__ = ["PhaseResult", "evaluated_key", "evaluated_metrics"]

# PhaseResult fields held as tuples, stored as JSON lists.
_TUPLE_FIELDS = ("frozen_groups", "changed_variables", "classes", "class_names")


@dataclasses.dataclass(frozen=True)
class PhaseResult:
    """What one phase of a `TransferRun` did, measured and checked."""

    name: str
    """The phase's name, unique within its run (`"train"`, `"fine_tune"`)."""

    epochs: int
    """Epochs the phase trained: its planned epochs, or fewer when a callback
    (`EarlyStopping`) stopped it; `planned_epochs` says how many were
    planned."""

    train_samples: int | None
    """Training samples per epoch; for a `tf.data.Dataset`, the files of
    `image_dataset_from_directory` (`None` for other datasets)."""

    seconds: float
    """Wall-clock seconds of the whole phase: compile, fit and checks."""

    history: dict[str, list[float]]
    """Per-epoch values from Keras' `History`, e.g. `{"loss": [...],
    "val_accuracy": [...]}`."""

    metrics: dict[str, float]
    """Final validation metrics, without the `val_` prefix, e.g.
    `{"loss": 0.03, "accuracy": 0.99}`; empty without validation data."""

    trainable_params: int
    """Parameters the optimizer updated in this phase."""

    non_trainable_params: int
    """Parameters held fixed in this phase (frozen layers, BatchNorm
    statistics)."""

    frozen_groups: tuple[str, ...]
    """Groups all of whose layers were frozen during the phase."""

    frozen_unchanged: bool | None
    """Whether every variable of the frozen groups (trainable or not) is
    bitwise identical after the phase; `None` when no group was frozen."""

    changed_variables: tuple[str, ...] = ()
    """Paths of frozen variables that changed; empty when none did."""

    classes: tuple[int, ...] | None = None
    """Original class ids of the training data, when it was a
    `ClassSubset`."""

    class_names: tuple[str, ...] | None = None
    """Names of the model's output classes, in order (from a dataset's
    `class_names`, or given to the run); `None` when unknown."""

    precision: str = "float32"
    """The dtype policy the model computed in (`"float32"`,
    `"mixed_bfloat16"`, `"mixed_float16"`)."""

    steps_per_execution: int = 1
    """The run's `steps_per_execution`: steps per call into TensorFlow in
    `fit`; transferkit's loop runs at least as many (see `training_loop`)."""

    cached_layers: int = 0
    """Leading layers of the model computed once, before training, from the
    feature cache; 0 when the cache was not used."""

    cache: str = ""
    """Where the cache was held (e.g. `"270.0 MiB in memory, layers
    conv2d..max_pooling2d; stops before layer 'dropout' (Dropout) ..."`), or
    why it was not used (e.g. `"not used: no group is frozen"`)."""

    cache_seconds: float = 0.0
    """Seconds spent computing the cache (part of `seconds`)."""

    lean_step: str = ""
    """What the lean training step changed (e.g. `"2 Dropout layers on bit
    masks; fused Adadelta updates"`); empty when it was off."""

    lr_multipliers: dict[str, float] = dataclasses.field(default_factory=dict)
    """Learning-rate multipliers by group name (`lr_multipliers=`); groups
    not named trained at the optimizer's own rate."""

    training_loop: str = ""
    """Which loop trained the phase, and why: `"transferkit's, 32 steps per
    call"`, or `"Keras fit: ..."` with the reason."""

    cache_code: str = ""
    """`cache` as a short code (`"covers_frozen"`, `"random_layer"`,
    `"dataset_random"`, ...; `transferkit.cache.plan.CODES` lists them);
    empty in results saved before codes were recorded."""

    training_loop_code: str = ""
    """`training_loop` as a short code (`"own"`, `"fit_dataset"`, ...;
    `transferkit.phases.training.LOOP_CODES` lists them)."""

    batch_norm: str = ""
    """What the phase did with the BatchNormalization layers of trainable
    groups split from a backbone (e.g. `"52 layers in inference mode"`);
    empty when it had none."""

    planned_epochs: int | None = None
    """Epochs the plan gave the phase; `None` in results saved before it was
    recorded (they trained `epochs`)."""

    stopped_early: str = ""
    """Why the phase ended before its planned epochs (e.g. `"a callback set
    stop_training after epoch 2 of 15"`); empty when it ran them all."""

    lora: dict[str, int] = dataclasses.field(default_factory=dict)
    """LoRA ranks by group (`lora=`): groups adapted instead of trained;
    their adapters were folded into the kernels at the phase's end."""

    held_variables: int = 0
    """Variables held still inside the groups the phase trained (a LoRA
    group's base weights, BatchNormalization in inference mode, a layer
    frozen inside a trained group), proven unchanged with the frozen
    groups' in `frozen_unchanged`."""

    also_evaluated: dict[str, dict[str, float]] = dataclasses.field(
        default_factory=dict
    )
    """Final metrics of each data set the phase also evaluated
    (`also_evaluate=`), by the name it was given, e.g. `{"digits 0-4":
    {"loss": 2.9, "accuracy": 0.31}}`; per epoch in `history` under
    `evaluated_key(name)` and the metric (`"digits_0_4_accuracy"`). Empty
    when none was, and in results saved before it was recorded."""

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> PhaseResult:
        """The inverse of `to_dict`.

        Raises:
            TypeError: for a field that `PhaseResult` does not have.
        """
        record = dict(record)
        for key in _TUPLE_FIELDS:
            if record.get(key) is not None:
                record[key] = tuple(record[key])
        for key in ("history", "metrics"):
            if isinstance(record.get(key), Mapping):
                record[key] = {
                    name: [json_number(v) for v in values]
                    if isinstance(values, list)
                    else json_number(values)
                    for name, values in record[key].items()
                }
        evaluated = record.get("also_evaluated")
        if isinstance(evaluated, Mapping):
            record["also_evaluated"] = {
                name: {metric: json_number(v) for metric, v in values.items()}
                for name, values in evaluated.items()
            }
        return cls(**record)

    def to_dict(self) -> dict[str, Any]:
        """A dictionary of the record, ready for strict JSON: lists for
        tuples, and non-finite numbers as `"nan"`, `"inf"` or `"-inf"`."""
        record = dataclasses.asdict(self)
        for key in _TUPLE_FIELDS:
            if record[key] is not None:
                record[key] = list(record[key])
        return strict_json(record)


def evaluated_key(name: str) -> str:
    """The prefix of the history keys of a data set a phase also evaluated
    under `name` (`also_evaluate=`): each run of characters other than ASCII
    letters, digits and `_` becomes one `_`, with none at either end, so
    that the keys read as Keras' own (`"loss"`, `"val_accuracy"`) and stay
    plain names in a CSV or TensorBoard.

    >>> evaluated_key("digits 0-4")
    'digits_0_4'
    """
    return re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_")


def evaluated_metrics(
    history: Mapping[str, Sequence[float]], names: Sequence[str]
) -> dict[str, dict[str, float]]:
    """The last epoch's metrics of each data set named in `names`, read from
    a phase's `history` (`PhaseResult.also_evaluated`), e.g. `{"digits 0-4":
    {"loss": 2.9, "accuracy": 0.31}}`. The names' keys must not be prefixes
    of one another (`transferkit.engine.also_evaluate` checks that)."""
    found = {}
    for name in names:
        prefix = evaluated_key(name) + "_"
        found[name] = {
            key[len(prefix) :]: values[-1]
            for key, values in history.items()
            if key.startswith(prefix) and values
        }
    return found
