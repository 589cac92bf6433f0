"""Groups of two models compared bitwise: the proof that groups copied from a
source model and frozen through a fine-tuning still equal the source's.

A phase's own freeze proof (`PhaseResult.frozen_unchanged`) says a group
did not move *during the phase*; this says it equals *another model's*.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping, Sequence

import keras
import numpy as np

from transferkit.groups.copying import _groups, _names

__all__ = ["GroupComparison", "compare_groups"]


@dataclasses.dataclass(frozen=True)
class GroupComparison:
    """Which groups of a model equal a reference model's, bitwise. True when
    every compared variable does (`if compare_groups(...):`)."""

    groups: tuple[str, ...]
    """The groups compared, in the order asked."""

    differing: Mapping[str, tuple[str, ...]]
    """For each group that differs, the paths (in the model) of its
    variables that differ from the reference's; groups that are equal are
    not in it."""

    variables: int
    """How many variables were compared."""

    @property
    def equal(self) -> bool:
        """Whether every variable of every compared group is bitwise equal."""
        return not self.differing

    @property
    def equal_groups(self) -> tuple[str, ...]:
        """The compared groups whose variables are all bitwise equal."""
        return tuple(name for name in self.groups if name not in self.differing)

    @property
    def differing_groups(self) -> tuple[str, ...]:
        """The compared groups with at least one variable that differs."""
        return tuple(name for name in self.groups if name in self.differing)

    def __bool__(self) -> bool:
        return self.equal

    def __str__(self) -> str:
        if self.equal:
            return (
                f"groups {list(self.groups)}: all {self.variables} variables "
                "bitwise equal to the reference"
            )
        moved = "; ".join(
            f"'{name}': {', '.join(paths)}" for name, paths in self.differing.items()
        )
        return (
            f"equal: {list(self.equal_groups)}; differ: {moved} "
            f"({self.variables} variables compared)"
        )


def compare_groups(
    model: keras.Model, reference: keras.Model, groups: Sequence[str] | int
) -> GroupComparison:
    """Compares every variable (trainable or not, BatchNormalization's
    statistics included) of `model`'s `groups` with those of the groups of
    the same names in `reference`, bitwise (values, dtype and shape).

    After `copy_groups(source, model, n)` and a phase that froze those
    groups, `compare_groups(model, source, n)` is the proof that they still
    equal the source's:

    >>> import keras
    >>> from transferkit import LayerGroup, clone_model, compare_groups
    >>> source = (LayerGroup("body", [keras.layers.Dense(3)], input_shape=(2,))
    ...           + LayerGroup("head", [keras.layers.Dense(1)]))
    >>> model = clone_model(source)
    >>> _ = model.layers[1].bias.assign([1.0])
    >>> result = compare_groups(model, source, ["body", "head"])
    >>> bool(result), result.equal_groups, result.differing_groups
    (False, ('body',), ('head',))

    Args:
        model: a model with groups (composed, or given them in place).
        reference: a model with groups of the same names.
        groups: group names, or a number `n`: the first `n` groups of
            `model`.

    Returns:
        A `GroupComparison`: true when all compared variables are equal;
        `differing` names the groups and variables that are not.

    Raises:
        ValueError: naming the group, for a name either model lacks, or a
            group whose variables differ in number between the two models.
    """
    mine, theirs = _groups(model, "model"), _groups(reference, "reference")
    names = _names(groups, mine)
    for role, held, owner in (("model", mine, model), ("reference", theirs, reference)):
        for name in names:
            if name not in held:
                raise ValueError(
                    f"The {role} '{owner.name}' has no group '{name}'. Its "
                    f"groups: {list(held)}. Received: groups={groups!r}"
                )
    for name in names:
        count, wanted = len(mine[name].variables), len(theirs[name].variables)
        if count != wanted:
            raise ValueError(
                f"Group '{name}' holds {count} variables in the model and "
                f"{wanted} in the reference; only groups of the same layout "
                "compare. Build both models first."
            )
    differing, compared = {}, 0
    for name in names:
        pairs = zip(mine[name].variables, theirs[name].variables, strict=True)
        moved = tuple(v.path for v, r in pairs if not _bitwise_equal(v, r))
        compared += len(mine[name].variables)
        if moved:
            differing[name] = moved
    return GroupComparison(
        groups=tuple(names),
        differing=types.MappingProxyType(differing),
        variables=compared,
    )


def _bitwise_equal(variable, reference) -> bool:
    a = np.asarray(keras.ops.convert_to_numpy(variable))
    b = np.asarray(keras.ops.convert_to_numpy(reference))
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
