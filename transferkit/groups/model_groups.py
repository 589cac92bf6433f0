"""The groups of a model trained in place.

A `GroupedSequential` holds its groups; any other model (a keras-hub task
or backbone, a user's functional model with several inputs) is given them
by `attach_groups(model, LayerGroup.split(model, ...))`, which keeps
them here, beside the model, without changing it. `groups_of` is how the
rest of the library reads a model's groups, whichever way it has them.
"""

from __future__ import annotations

import types
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import keras

from transferkit.groups import ownership, tree
from transferkit.groups.layer_group import (
    GroupChain,
    GroupedSequential,
    LayerGroup,
    check_groups,
)

__all__ = ["attach_groups", "check_model", "group_paths", "groups_of"]

_ATTACHED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def groups_of(model: Any) -> Mapping[str, LayerGroup] | None:
    """The model's groups by name, in order: those given to it in place,
    else its own `groups` mapping; `None` if it has neither."""
    try:
        attached = _ATTACHED.get(model)
    except TypeError:  # Not weakly referable: no Keras model.
        attached = None
    if attached is not None:
        return attached
    groups = getattr(model, "groups", None)
    return groups if isinstance(groups, Mapping) else None


def attach_groups(model: keras.Model, groups: Sequence[LayerGroup]) -> keras.Model:
    """Gives `model` the `groups` cut from it (`LayerGroup.split`,
    `LayerGroup.match`), to be trained in place, and returns `model`: a
    keras-hub task, a backbone, a functional model with several inputs keep
    their own class, `fit` and saving. The groups are the model's own fact,
    kept beside it; a `TransferRun` reads them from there.

    >>> import keras
    >>> from transferkit import LayerGroup, attach_groups
    >>> inputs = keras.Input((4,))
    >>> x = keras.layers.Dense(8, name="body")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    >>> groups = LayerGroup.match(model, {"body": "body", "head": "head"})
    >>> attach_groups(model, groups) is model
    True

    Raises:
        TypeError: if `groups` is not a list of `LayerGroup`s.
        ValueError: for a model composed from groups (it holds its own), or,
            naming the group and layer, if a group's layer is not in
            `model`, a layer is in two groups, or the groups leave out a
            layer that has weights (it would be trained in no group's name,
            and never be frozen).
    """
    if isinstance(model, GroupedSequential):
        raise ValueError(
            f"Model '{model.name}' is composed from groups and holds them "
            f"({list(model.groups)}); `attach_groups` is for a model trained in "
            "place. Pass one or the other."
        )
    if not isinstance(model, keras.Model):
        check_model(model)
    if isinstance(groups, LayerGroup) or not isinstance(groups, Sequence):
        raise TypeError(
            "Expected `groups` to be a list of `LayerGroup`s cut from the model, "
            "e.g. LayerGroup.split(model, at=[...], names=[...]). Received: "
            f"groups={groups!r}"
        )
    groups = tuple(groups)
    check_groups(groups)
    if not groups:
        raise ValueError("Expected at least one group. Received: groups=[]")
    paths = tree.layer_paths(model)
    grouped: set[int] = set()
    for group in groups:
        for layer in group:
            if id(layer) not in paths:
                raise ValueError(
                    f"Layer '{layer.name}' of group '{group.name}' is not in "
                    f"model '{model.name}': cut the groups from the model they "
                    "train (LayerGroup.split(model, ...))."
                )
            grouped.add(id(layer))
            grouped.update(id(x) for _, x in tree.walk(layer))
    _check_covered(model, grouped)
    _ATTACHED[model] = types.MappingProxyType({g.name: g for g in groups})
    return model


def _check_covered(model, grouped) -> None:
    """Raises if a variable of `model` is in no group: one of a layer outside
    every group, or made by a layer that holds grouped ones."""
    for path, layer in tree.walk(model):
        if id(layer) not in grouped and tree.own_variables(layer):
            raise ValueError(
                f"Layer {path!r} of model '{model.name}' has weights but is in "
                "no group; every layer with weights belongs to one, so that a "
                "phase trains or freezes it by name."
            )


def group_paths(model: keras.Model) -> dict[str, list[str]]:
    """Each group's layers by path in `model`: what a run folder records, and
    what `LayerGroup.from_paths` makes the same groups from again."""
    paths = tree.layer_paths(model)
    return {
        name: [paths[id(layer)] for layer in group]
        for name, group in (groups_of(model) or {}).items()
    }


def check_model(model: Any) -> None:
    """Raises unless `model` is a Keras model with groups: composed from
    `LayerGroup`s, or given groups to be trained in place."""
    if isinstance(model, GroupChain):
        raise ValueError(
            "Expected a model composed from `LayerGroup`s. Received groups "
            f"{[group.name for group in model.groups]} that are not one yet: "
            f"{model.missing()} are missing. Add the rest of the groups split "
            "from it, in their order."
        )
    groups = groups_of(model)
    if not isinstance(model, keras.Model) or groups is None:
        raise TypeError(
            "Expected a Keras model composed from `LayerGroup`s, e.g. "
            "`features + classifier`, or any Keras model given groups with "
            "`attach_groups(model, LayerGroup.split(model, ...))`. Received: "
            "model of type "
            f"{type(model).__name__}"
        )
    if not groups:
        raise ValueError(
            "Expected a model with at least one group. Received a model with none."
        )
    if not getattr(model, "_share_layers", True):
        ownership.check_unshared(groups.values(), besides=model)
