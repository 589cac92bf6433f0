"""Groups between models, as copies: a composed model cloned with its groups,
and the weights of named groups copied from one model into another of the
same layout. Nothing here shares a variable between two models.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from transferkit.groups.layer_group import GroupedSequential, LayerGroup
from transferkit.groups.model_groups import groups_of

__all__ = ["clone_model", "copy_groups"]


def clone_model(model: GroupedSequential, *, weights: bool = True) -> GroupedSequential:
    """A new model of new layers with `model`'s groups, trainable flags,
    class names and input recipe; its weights copied from `model` (bitwise),
    or, with `weights=False`, newly initialised as Keras initialises a
    layer. The clone is not compiled: a `TransferRun` compiles it, and its
    groups may be composed with new ones (`clone.groups["g1"] + head`).

    `keras.models.clone_model` works on a composed model too, but returns a
    plain `keras.Sequential`, without groups, with weights newly initialised.

    >>> import keras, numpy as np
    >>> from transferkit import LayerGroup, clone_model
    >>> model = (LayerGroup("body", [keras.layers.Dense(3)], input_shape=(2,))
    ...          + LayerGroup("head", [keras.layers.Dense(1)]))
    >>> copy = clone_model(model)
    >>> list(copy.groups), copy.layers[0] is model.layers[0]
    (['body', 'head'], False)
    >>> bool(np.array_equal(copy.layers[0].kernel, model.layers[0].kernel))
    True

    Raises:
        TypeError: for a model that is not composed from groups (for a model
            given groups in place: `keras.models.clone_model`, then
            `attach_groups` on the clone).
    """
    if not isinstance(model, GroupedSequential):
        raise TypeError(
            "`clone_model` clones a model composed from `LayerGroup`s. "
            f"Received: model of type {type(model).__name__}. For a model "
            "given groups in place, clone it with `keras.models.clone_model` "
            "and give the clone its groups with `attach_groups`."
        )
    config = model.get_config()
    config.pop("optimizer_variables", None)  # The clone is not compiled.
    custom = {
        type(layer).__name__: type(layer)
        for layer in model._flatten_layers(include_self=False, recursive=True)
    }
    with keras.saving.custom_object_scope(custom):
        clone = GroupedSequential.from_config(config)
    if weights:
        _assign(clone.weights, model.weights, f"model '{model.name}'")
    return clone


def copy_groups(
    source: keras.Model, target: keras.Model, groups: Sequence[str] | int
) -> None:
    """Copies the weights (trainable or not, such as BatchNormalization's
    statistics) of `source`'s `groups` into `target`'s groups of the same
    names, bitwise. The two models keep their own variables: training one
    never changes the other.

    Args:
        source: a model with groups (composed, or given them in place).
        target: a model with groups of the same names, each holding
            variables of the same shapes, in the same order; built.
        groups: group names, or a number `n`: the first `n` groups of
            `source`.

    Raises:
        ValueError: naming the group, for a name either model lacks, or a
            group whose variables differ in number or shape between them.
    """
    source_groups, target_groups = _groups(source, "source"), _groups(target, "target")
    names = _names(groups, source_groups)
    for name in names:
        for role, model, held in (
            ("source", source, source_groups),
            ("target", target, target_groups),
        ):
            if name not in held:
                raise ValueError(
                    f"The {role} model '{model.name}' has no group '{name}'. "
                    f"Its groups: {list(held)}"
                )
    for name in names:  # Every group checked before any weight is written.
        _check_layout(source_groups[name], target_groups[name], name)
    for name in names:
        _assign(target_groups[name].variables, source_groups[name].variables, name)


def _groups(model, role: str):
    groups = groups_of(model)
    if not isinstance(model, keras.Model) or groups is None:
        raise TypeError(
            f"Expected the {role} to be a Keras model with groups (composed "
            "from `LayerGroup`s, or given them with `attach_groups`). "
            f"Received: {role} of type {type(model).__name__}"
        )
    return groups


def _names(groups, source_groups) -> list[str]:
    order = list(source_groups)
    if isinstance(groups, int) and not isinstance(groups, bool):
        if not 0 <= groups <= len(order):
            raise ValueError(
                f"Expected `groups` to be a number from 0 to {len(order)} (the "
                f"first n of {order}), or a list of group names. Received: "
                f"groups={groups}"
            )
        return order[:groups]
    if isinstance(groups, str) or not isinstance(groups, Sequence):
        raise TypeError(
            "Expected `groups` to be a list of group names or a number of "
            f"leading groups. Received: groups={groups!r}"
        )
    if len(set(groups)) != len(groups):
        raise ValueError(f"A group is named twice in groups={list(groups)}")
    return list(groups)


def _check_layout(source: LayerGroup, target: LayerGroup, name: str) -> None:
    mine, theirs = source.variables, target.variables
    shapes = [tuple(v.shape) for v in mine]
    wanted = [tuple(v.shape) for v in theirs]
    if shapes != wanted:
        raise ValueError(
            f"Group '{name}' holds variables of shapes {shapes} in the source "
            f"and {wanted} in the target; weights copy only between groups of "
            "the same layout. Build the target first (call it on data, or give "
            "its first group an input shape) if it has no variables yet."
        )


def _assign(targets, sources, what: str) -> None:
    if len(targets) != len(sources):
        raise ValueError(
            f"{what} has {len(sources)} variables and its copy {len(targets)}."
        )
    for target, source in zip(targets, sources, strict=True):
        if target is source:
            raise ValueError(
                f"{what}: the source and target share a variable "
                f"('{source.path}'); there is nothing to copy."
            )
        target.assign(keras.ops.convert_to_tensor(source))
