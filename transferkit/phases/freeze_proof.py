"""The freeze proof: digests of every frozen variable, before and after.

A group is frozen when none of its variables may change during a phase,
trainable or not (BatchNormalization's moving statistics included). Flags
prove nothing about that; values do. Before a phase, every variable of the
frozen groups is hashed with SHA-256; after it, the hashes are taken again
and compared, so a single flipped bit is caught. Under a strategy, whose
variables hold one copy per replica, the digest is of the first copy and
every other copy of this machine must equal it bitwise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

import keras
import numpy as np

from transferkit.engine.distribution import replica_copies
from transferkit.groups import tree
from transferkit.groups.layer_group import LayerGroup

__all__ = [
    "changed_held",
    "changed_variables",
    "count_params",
    "digest",
    "digest_held",
    "held_variables",
]


def _sha(variable: keras.Variable) -> str:
    value = np.ascontiguousarray(keras.ops.convert_to_numpy(variable))
    sha = hashlib.sha256(value.tobytes())
    sha.update(f"{value.dtype}{value.shape}".encode())
    return sha.hexdigest()


def digest(groups: Iterable[LayerGroup]) -> dict[str, list[str]]:
    """SHA-256 of every variable of each group, in the group's variable order.

    Keyed by group name and position, not by variable path: Keras numbers
    paths per process, and a resumed run compares against digests saved by
    another process.
    """
    digests: dict[str, list[str]] = {}
    for group in groups:
        digests[group.name] = [_sha(variable) for variable in group.variables]
    return digests


def held_variables(
    model: keras.Model, groups: Iterable[LayerGroup], extra: Iterable = ()
) -> dict[str, keras.Variable]:
    """The variables that a phase holds still inside the groups it trains,
    by key: those of every layer frozen inside them at any depth (a
    sub-block frozen by hand, a BatchNormalization in inference mode), and
    `extra` ones frozen one by one (a LoRA group's base weights). Keyed by
    the layer's position in the model's tree and the variable's name
    (`"1/2/0/kernel"`), which another process building the same model
    gives the same key, whatever names Keras numbered its layers with."""
    where = tree.positions(model)
    extra = {id(variable) for variable in extra}
    held = {}
    for group in groups:
        for layer in tree.layers_under(group):
            for variable in tree.own_variables(layer):
                if not layer.trainable or id(variable) in extra:
                    position = "/".join(map(str, where[id(layer)]))
                    held[f"{position}/{variable.name}"] = variable
    return held


def digest_held(held: Mapping[str, keras.Variable]) -> dict[str, str]:
    """SHA-256 of each of `held_variables`, by key."""
    return {key: _sha(variable) for key, variable in held.items()}


def changed_held(
    held: Mapping[str, keras.Variable], before: Mapping[str, str]
) -> tuple[str, ...]:
    """Paths of the `held` variables whose digest differs from `before`, or
    that `before` does not hold (a resumed phase that holds others)."""
    return tuple(
        variable.path
        for key, variable in held.items()
        if before.get(key) != _sha(variable) or not _replicas_agree(variable)
    )


def changed_variables(
    groups: Sequence[LayerGroup], before: Mapping[str, Sequence[str]]
) -> tuple[str, ...]:
    """Paths of the variables of `groups` whose digest differs from `before`
    (a `digest` of the same groups), or whose copies on this machine's
    replicas differ from each other; empty when every one is unchanged."""
    after = digest(groups)
    return tuple(
        variable.path
        for group in groups
        for variable, old, new in zip(
            group.variables, before[group.name], after[group.name], strict=True
        )
        if old != new or not _replicas_agree(variable)
    )


def _replicas_agree(variable: keras.Variable) -> bool:
    """Whether every replica's copy of `variable` is bitwise the same (a
    variable made outside a strategy has one)."""
    copies = replica_copies(variable)
    if len(copies) < 2:
        return True
    first = np.asarray(copies[0].numpy()).tobytes()
    return all(np.asarray(c.numpy()).tobytes() == first for c in copies[1:])


def count_params(variables: Iterable[keras.Variable]) -> int:
    """The number of scalars in `variables`."""
    return int(sum(np.prod(v.shape, dtype=np.int64) for v in variables))
