"""The two records a run's phases are made from: `RunSettings`, what the
run was made with, and `PhaseRequest`, what the user asked of one phase.
`PhaseRunner` turns a request into the phase's `PhaseSpec`, its entry in
the plan."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from transferkit.engine.optimizers import OptimizerSpec
from transferkit.groups.layer_group import LayerGroup
from transferkit.phases.speed import Speed

__all__ = ["BATCH_NORM", "PhaseRequest", "RunSettings"]

BATCH_NORM = ("inference", "train")
"""What a phase's `backbone_batch_norm` accepts."""


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What a `TransferRun` was made with, checked: the same for every
    phase, and read by its phases and tools."""

    optimizer: OptimizerSpec
    """Every phase's optimizer, unless a phase overrides it."""

    loss: Any
    """The Keras loss."""

    metrics: list[Any] | None
    """Keras metrics, or `None`."""

    batch_size: int
    """Samples per step for array data."""

    verbose: str | int
    """Keras' `fit` verbosity, unless a phase overrides it."""

    seed: int | None
    """Seeds each phase from the seed, the phase's position and its epoch."""

    check_finite: bool
    """Check array data for NaN and infinite values before each phase."""

    precision: str
    """The dtype policy the model computes in."""

    speed: Speed
    """How fast the phases run; the same function whatever it says."""


@dataclasses.dataclass(frozen=True)
class PhaseRequest:
    """What the user asked of one phase, as given to `train` or `fine_tune`;
    `PhaseRunner.run` checks it and makes the phase's `PhaseSpec`."""

    kind: str
    """`"train"` or `"fine_tune"`."""

    epochs: Any
    """Epochs to train."""

    name: str | None = None
    """The phase's name; `None`: the kind, with a suffix if it is taken."""

    freeze: tuple[LayerGroup, ...] = ()
    """Groups to freeze for the phase, beside those frozen now."""

    optimizer: OptimizerSpec | None = None
    """Overrides the run's optimizer for this phase."""

    lr_multipliers: Mapping[str, float] | None = None
    """Learning-rate multipliers by group name."""

    backbone_batch_norm: str = "inference"
    """What backbone groups' BatchNormalization layers do: `BATCH_NORM`."""

    steps_per_epoch: int | None = None
    """Batches per epoch of a dataset."""

    class_weight: Any = None
    """`{class: weight}`, or `"balanced"`."""

    lora: Mapping[str, int] | None = None
    """LoRA ranks by group name."""

    augmented_views: int = 1
    """Augmented views per sample the cache may hold; 1: none."""

    also_evaluate: Mapping[str, Any] | None = None
    """Data sets evaluated after every epoch, by name; not in the plan."""

    @classmethod
    def of(cls, kind: str, arguments: Mapping[str, Any]) -> PhaseRequest:
        """The request of a `kind` phase from the arguments of the call that
        asked for it (`train`'s or `fine_tune`'s `locals()`), field by field:
        a field named as an argument takes its value, so an argument added
        to both cannot be left out of the request on the way."""
        names = {field.name for field in dataclasses.fields(cls)} - {"kind"}
        return cls(kind=kind, **{n: arguments[n] for n in names if n in arguments})
