"""Named groups of a model drawn afresh from a seed, each variable from its
own layer's initializer (`kernel_initializer`, `bias_initializer`,
BatchNormalization's four, `recurrent_initializer`, ...), so that the same
seed on the same layout gives the same weights, bit for bit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import keras

from transferkit.groups import tree
from transferkit.groups.copying import _groups, _names
from transferkit.utils.checks import require_count

__all__ = ["reinitialize_groups"]

_KERNEL_ALIASES = ("depthwise",)
"""Where a layer keeps the initializer of a variable named `kernel` when it
has no `kernel_initializer` (Keras' `DepthwiseConv*D`)."""


def reinitialize_groups(
    model: keras.Model, groups: Sequence[str] | int, seed: int
) -> None:
    """Draws every variable of `model`'s `groups` afresh (trainable or not,
    such as BatchNormalization's moving statistics) from its own layer's
    initializer, seeded from `seed`: the same seed on a model of the same
    layout (group names and variable shapes) gives bitwise the same values,
    another seed other values; the other groups are left as they were.

    A variable's initializer is the layer's `<name>_initializer` attribute
    (`kernel` -> `kernel_initializer`, `moving_mean` ->
    `moving_mean_initializer`; `recurrent_kernel` ->
    `recurrent_initializer`, `depthwise_kernel` -> `depthwise_initializer`),
    and an LSTM's `unit_forget_bias` is kept. Each variable gets its own
    seed, derived from `seed`, its group's name and its place in the group.

    >>> import keras, numpy as np
    >>> from transferkit import LayerGroup, reinitialize_groups
    >>> model = (LayerGroup("body", [keras.layers.Dense(3)], input_shape=(2,))
    ...          + LayerGroup("head", [keras.layers.Dense(1)]))
    >>> values = lambda: [keras.ops.convert_to_numpy(w) for w in model.weights]
    >>> before = values()
    >>> reinitialize_groups(model, ["body"], seed=7)
    >>> drawn = values()
    >>> reinitialize_groups(model, 1, seed=7)  # 1: the first group
    >>> [np.array_equal(a, b) for a, b in zip(values(), drawn)]  # the same draw
    [True, True, True, True]
    >>> [np.array_equal(a, b) for a, b in zip(drawn, before)]  # body's kernel moved
    [False, True, True, True]

    Args:
        model: a built model with groups (composed, or given them in place).
        groups: group names, or a number `n`: the first `n` groups.
        seed: an integer >= 0.

    Raises:
        ValueError: for an unknown group (naming the model's groups), a
            negative seed, or, naming the layer and variable, a variable
            whose initializer the layer does not hold. Every name and
            initializer is checked before any variable is written.
        TypeError: for a seed that is not an integer, or an initializer
            that is a plain function (it cannot be seeded).
    """
    seed = require_count(seed, "seed", minimum=0)
    held = _groups(model, "model")
    names = _names(groups, held)
    unknown = [name for name in names if name not in held]
    if unknown:
        raise ValueError(
            f"Unknown group {unknown[0]!r}. Expected one of {list(held)}. "
            f"Received: groups={groups!r}"
        )
    draws = []
    for name in names:
        owners = _owners(held[name])
        for index, variable in enumerate(held[name].variables):
            layer = owners[id(variable)]
            initializer = _initializer(layer, variable, name)
            draws.append(
                (variable, _draw(initializer, layer, variable, (seed, name, index)))
            )
    for variable, value in draws:  # Only once every draw succeeded.
        variable.assign(value)


def _owners(group) -> dict[int, keras.Layer]:
    """The layer that made each variable of the group, by the variable's id."""
    return {
        id(variable): layer
        for layer in tree.layers_under(group)
        for variable in tree.own_variables(layer)
    }


def _initializer(layer: keras.Layer, variable: keras.Variable, group: str):
    stem = variable.name
    stems = [stem]
    if stem.endswith("_kernel"):
        stems.append(stem.removesuffix("_kernel"))
    if stem == "kernel":
        stems.extend(_KERNEL_ALIASES)
    for candidate in stems:
        for attribute in (f"{candidate}_initializer", f"_{candidate}_initializer"):
            initializer = getattr(layer, attribute, None)
            if initializer is not None:
                break
        else:
            continue
        if not isinstance(initializer, keras.initializers.Initializer):
            raise TypeError(
                f"Cannot re-initialise variable '{variable.path}' of layer "
                f"'{layer.name}' (group '{group}'): its `{attribute}` is "
                f"{initializer!r}, not a `keras.initializers.Initializer`, so it "
                "cannot be seeded. Give the layer an Initializer instance."
            )
        return initializer
    found = sorted(a for a in dir(layer) if a.endswith("_initializer"))
    raise ValueError(
        f"Cannot re-initialise variable '{variable.path}' of layer "
        f"'{layer.name}' ({type(layer).__name__}, group '{group}'): the layer has "
        f"no initializer for it. Looked for "
        f"{[f'{s}_initializer' for s in stems]}; the layer has "
        f"{found or 'no initializer attributes'}."
    )


def _draw(initializer, layer, variable, key: tuple[int, str, int]):
    """The variable's new value: `initializer` with its seed replaced by one
    derived from `key`, (seed, group, the variable's place in the group)."""
    config = initializer.get_config()
    if "seed" in config:  # A random initializer; the others are constant.
        digest = hashlib.sha256("/".join(map(str, key)).encode()).digest()
        config["seed"] = int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
        initializer = type(initializer).from_config(config)
    shape, dtype = tuple(variable.shape), variable.dtype
    if variable.name == "bias" and getattr(layer, "unit_forget_bias", False):
        # An LSTM's forget gate starts at one, as its `build` makes it.
        units = shape[-1] // 4
        return keras.ops.concatenate(
            [
                initializer((units,), dtype=dtype),
                keras.ops.ones((units,), dtype=dtype),
                initializer((2 * units,), dtype=dtype),
            ]
        )
    return initializer(shape, dtype=dtype)
