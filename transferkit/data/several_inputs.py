"""Samples of a model with several inputs: a dict of arrays (token ids,
segment ids, padding mask) or a list or tuple of them, one per input.

`prepare_inputs` checks them as `training_data` checks one array: numbers,
one row per sample in every array, the model's input names (for a dict) or
count, and each array's shape against its input's. The rest of the library
handles the result through `map_inputs` and `first_input`: transferkit's
loop gathers each batch's rows from every array, `fit` and `evaluate` take
the dict as it is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from transferkit.data.dataset_checks import shape_fits

__all__ = [
    "first_input",
    "inputs_sha256",
    "is_nested",
    "map_inputs",
    "prepare_inputs",
]


def model_inputs(model: keras.Model) -> Any:
    """The model's inputs as it takes them: a dict, a list, or one tensor;
    `None` for a model that has none yet (not built, or subclassed)."""
    return getattr(model, "_inputs_struct", None)


def is_nested(x: Any, model: keras.Model) -> bool:
    """Whether `x` holds one array per input: a dict, or a list or tuple for
    a model with several inputs (for one input, a list is nested numbers)."""
    if isinstance(x, Mapping):
        return True
    inputs = model_inputs(model)
    return isinstance(x, list | tuple) and isinstance(inputs, list | tuple | dict)


def map_inputs(function: Callable, x: Any) -> Any:
    """`function` applied to every array of `x` (one array, or nested)."""
    return tf.nest.map_structure(function, x)


def first_input(x: Any) -> Any:
    """The first array of `x` (itself for one array): its length is the
    number of samples."""
    return tf.nest.flatten(x)[0]


def prepare_inputs(
    x: Any, model: keras.Model, argument: str, numbers: Callable
) -> tuple[Any, int]:
    """`(x, samples)`: every array made by `numbers` (the check of one
    array), checked against the model's inputs.

    Raises:
        ValueError: naming the argument, for other input names or count than
            the model's, arrays of different lengths, or an array whose shape
            does not fit its input.
    """
    inputs = model_inputs(model)
    if isinstance(x, Mapping):
        x = {
            key: numbers(value, f"`{argument}` (x[{key!r}])")
            for key, value in x.items()
        }
    else:
        x = type(x)(numbers(v, f"`{argument}` (x[{i}])") for i, v in enumerate(x))
    _check_structure(x, inputs, argument)
    lengths = {_name(key): len(value) for key, value in _items(x)}
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"Expected every array of `{argument}` (x) to hold one row per "
            f"sample, the same number. Received: lengths {lengths}"
        )
    if inputs is not None:
        for (key, value), spec in zip(_items(x), _specs(x, inputs), strict=True):
            expected = tuple(spec.shape[1:])
            if not shape_fits(tuple(value.shape[1:]), expected):
                raise ValueError(
                    f"The samples in `{argument}` (x[{key!r}]) have shape "
                    f"{tuple(value.shape[1:])}, but the model's input "
                    f"{_name(key)!r} expects {expected}."
                )
    return x, next(iter(lengths.values()))


def _check_structure(x, inputs, argument) -> None:
    if inputs is None:
        return
    if isinstance(inputs, Mapping):
        if not isinstance(x, Mapping) or sorted(x) != sorted(inputs):
            received = sorted(x) if isinstance(x, Mapping) else f"{len(x)} arrays"
            raise ValueError(
                f"Expected `{argument}` (x) to be a dict of the model's inputs, "
                f"{sorted(inputs)}. Received: {received}"
            )
        return
    count = len(inputs) if isinstance(inputs, list | tuple) else 1
    if isinstance(x, Mapping) or len(x) != count:
        names = [t.name for t in tf.nest.flatten(inputs)]
        raise ValueError(
            f"Expected `{argument}` (x) to hold {count} arrays, one per input "
            f"of the model ({names}), in order. Received: "
            f"{sorted(x) if isinstance(x, Mapping) else f'{len(x)} arrays'}"
        )


def _items(x):
    return sorted(x.items()) if isinstance(x, Mapping) else list(enumerate(x))


def _specs(x, inputs):
    if isinstance(x, Mapping):
        return [inputs[key] for key, _ in _items(x)]
    return list(inputs)


def _name(key) -> str:
    return key if isinstance(key, str) else f"input {key}"


def inputs_sha256(x: Any) -> str:
    """SHA-256 of every array's bytes, dtype and shape, with its key."""
    digest = hashlib.sha256()
    for key, value in _items(x):
        array = np.ascontiguousarray(value)
        digest.update(f"{key}{array.dtype.str}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()
