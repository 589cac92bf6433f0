"""A head grown to cover more classes: the old classes keep their weights.

Trained on the digits 0-4, a model's last Dense layer has 5 units; to go on
with 0-9 it needs 10. `grow_head` rebuilds the model from its config with
the wider layer (as `clone_model` rebuilds it), copies every weight bitwise,
and, for the widened layer, copies the old units' kernel columns and biases
into the first columns, leaving the new ones as the layer's own initializers
drew them. Output `k` of the grown model, for every old class `k`, is then
computed exactly as before, up to the softmax, which now also sums the new
classes' scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from transferkit.groups.layer_group import GroupedSequential

__all__ = ["grow_head"]

_AFTER_HEAD = (keras.layers.Activation, keras.layers.Softmax)
"""Layers that may follow the widened Dense layer: weightless, and of any
width (a softmax as a layer of its own)."""


def grow_head(
    model: GroupedSequential, classes: int | Sequence[str]
) -> GroupedSequential:
    """A new model like `model` whose last Dense layer has more units, one
    per class: the old units' kernel columns and biases copied bitwise, the
    new ones drawn by the layer's initializers (`kernel_initializer`,
    `bias_initializer`, for the wider shape), every other weight copied
    bitwise. Groups, trainable flags, class names and input recipe are kept;
    the new model is not compiled, and `model` is left as it was. Train it in
    a new `TransferRun`; docs/forgetting.md has the recipe (train on 0-4,
    grow to 10, fine-tune on 5-9 or on a mix of 0-9).

    The last layer with weights must be a `Dense`; only `Activation` and
    `Softmax` layers may follow it (a softmax as a layer of its own).

    >>> import keras, numpy as np
    >>> from transferkit import LayerGroup, grow_head
    >>> model = (LayerGroup("body", [keras.layers.Dense(4)], input_shape=(3,))
    ...          + LayerGroup("head", [keras.layers.Dense(2, activation="softmax")]))
    >>> grown = grow_head(model, 5)
    >>> grown.output_shape, list(grown.groups)
    ((None, 5), ['body', 'head'])
    >>> old, new = model.layers[-1].kernel.numpy(), grown.layers[-1].kernel.numpy()
    >>> bool(np.array_equal(new[:, :2], old))
    True

    Args:
        model: a built model composed from `LayerGroup`s.
        classes: how many classes the grown head covers, more than it does
            now; or their names, in output order, which for a model with
            class names must start with its own (the old units keep their
            classes).

    Returns:
        The grown model, a `GroupedSequential` of new layers.

    Raises:
        TypeError: for a model not composed from groups, or `classes` of
            another kind.
        ValueError: naming the layer or value, for a model that is not
            built, whose last layer with weights is not a `Dense` (or is
            followed by another layer than an activation), a head with LoRA
            adapters, or `classes` not more than the head's units.
    """
    if not isinstance(model, GroupedSequential):
        raise TypeError(
            "`grow_head` grows a model composed from `LayerGroup`s. Received: "
            f"model of type {type(model).__name__}."
        )
    if not model.built:
        raise ValueError(
            f"Model '{model.name}' is not built, so its head has no weights to "
            "keep. Give its first group an `input_shape`, or call it on data."
        )
    head = _head(model)
    units, names = _classes(classes, head.units, getattr(model, "class_names", None))
    config = model.get_config()
    config.pop("optimizer_variables", None)  # The new model is not compiled.
    (entry,) = (e for e in config["layers"] if e["config"]["name"] == head.name)
    entry["config"]["units"] = units
    config.pop("class_names", None)  # Set below, checked against the width.
    custom = {
        type(layer).__name__: type(layer)
        for layer in model._flatten_layers(include_self=False, recursive=True)
    }
    with keras.saving.custom_object_scope(custom):
        grown = GroupedSequential.from_config(config)
    grown.class_names = names
    widened = {id(v) for v in head.weights}
    for target, source in zip(grown.weights, model.weights, strict=True):
        value = keras.ops.convert_to_numpy(source)
        if id(source) in widened:  # The old units' columns, the new ones kept.
            drawn = np.array(keras.ops.convert_to_numpy(target))
            drawn[..., : value.shape[-1]] = value
            value = drawn
        target.assign(value)
    return grown


def _head(model: GroupedSequential) -> keras.layers.Dense:
    """The model's last layer with weights, checked to be a plain `Dense`
    that only activations follow."""
    for layer in reversed(model.layers):
        if not layer.weights and isinstance(layer, _AFTER_HEAD):
            continue
        if not layer.weights:
            raise ValueError(
                f"`grow_head` widens the model's last Dense layer, which only "
                f"activations (Activation, Softmax) may follow. Model "
                f"'{model.name}' ends with layer '{layer.name}' "
                f"({type(layer).__name__}) after it."
            )
        if type(layer) is not keras.layers.Dense:
            raise ValueError(
                "`grow_head` widens the model's last layer with weights, which "
                f"must be a Dense layer. Model '{model.name}' has layer "
                f"'{layer.name}' ({type(layer).__name__}) there."
            )
        if getattr(layer, "lora_enabled", False):
            raise ValueError(
                f"The head '{layer.name}' of model '{model.name}' has LoRA "
                "adapters; merge them first (a TransferRun phase does, at its "
                "end)."
            )
        return layer
    raise ValueError(f"Model '{model.name}' has no layer with weights to grow.")


def _classes(classes, units: int, known) -> tuple[int, tuple[str, ...] | None]:
    """`(units, class names or None)` of the grown head, checked."""
    if isinstance(classes, int) and not isinstance(classes, bool):
        if known is not None:
            raise ValueError(
                f"The model has class names {list(known)}; pass the grown "
                f"head's, starting with them, e.g. classes={[*known, '...']}. "
                f"Received: classes={classes}"
            )
        count, names = classes, None
    elif isinstance(classes, Sequence) and not isinstance(classes, str):
        names = tuple(classes)
        count = len(names)
        if not all(isinstance(name, str) for name in names):
            raise TypeError(
                f"Expected class names as text. Received: classes={list(names)}"
            )
        if known is not None and names[: len(known)] != tuple(known):
            raise ValueError(
                "The grown head's classes must start with the model's own, "
                f"{list(known)}, which its old units keep. Received: "
                f"classes={list(names)}"
            )
    else:
        raise TypeError(
            "Expected `classes` to be a number of classes or a list of class "
            f"names. Received: classes={classes!r}"
        )
    if count <= units:
        raise ValueError(
            f"Expected more classes than the head's {units} units, which it "
            f"keeps. Received: classes={classes!r}"
        )
    return count, names
