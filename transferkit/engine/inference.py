"""One predict step, and what runs it over data.

Keras' trainer has one per-batch step per mode (`train_step`, `test_step`,
`predict_step`) and one factory per mode that compiles it. transferkit
trains through Keras' own train and test steps (`transferkit.engine.loop`); for
predictions it has this one step, `model(x, training=False)` (augmentation
off, BatchNormalization and Dropout in inference mode), compiled once per
model and input signature by `predict_function`, and `predict` to run it
over arrays, a `ClassSubset` or a dataset. The report's confusion matrix and
top losses, the predictions on files, the export's parity check and the
feature cache all compute through it.

It is a plain forward pass rather than `model.predict`: under a
multi-worker strategy `predict` gathers its outputs across the workers, and
a model inside a run may have a trainer model compiled beside it.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from transferkit.data.class_subset import ClassSubset
from transferkit.data.sample_weights import class_ids
from transferkit.data.several_inputs import first_input, map_inputs

__all__ = ["Predictions", "predict", "predict_function", "predict_step"]


def predict_step(layers: keras.Layer | Sequence[keras.Layer], x, augmenting: int = 0):
    """The outputs of `layers` (a model, or layers applied in order) for the
    batch `x`, in inference mode; the first `augmenting` layers in training
    mode (augmentation drawing, as the feature cache's augmented views
    need)."""
    if isinstance(layers, keras.Layer):
        return layers(x, training=False)
    for index, layer in enumerate(layers):
        x = layer(x, training=index < augmenting)
    return x


def predict_function(
    layers: keras.Layer | Sequence[keras.Layer],
    spec: tf.TensorSpec,
    augmenting: int = 0,
):
    """`predict_step` of `layers` compiled for batches of any size shaped
    like `spec` (its first dimension is ignored). For a model, one function
    per input signature is kept with it (as Keras keeps its
    `predict_function`), so later calls do not trace again."""
    signature = map_inputs(lambda s: tf.TensorSpec((None, *s.shape[1:]), s.dtype), spec)
    if not isinstance(layers, keras.Layer):
        return _compiled(layers, signature, augmenting)
    functions = _FUNCTIONS.setdefault(layers, {})
    flat = tf.nest.flatten(signature)
    key = (str(tf.nest.map_structure(lambda _: 0, signature)), augmenting) + tuple(
        (tuple(s.shape), s.dtype) for s in flat
    )
    if key not in functions:
        functions[key] = _compiled(layers, signature, augmenting)
    return functions[key]


_FUNCTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Each model's compiled predict steps, by input signature; dropped with
the model."""


def _compiled(layers, signature: tf.TensorSpec, augmenting: int):
    return tf.function(
        lambda x: predict_step(layers, x, augmenting), input_signature=[signature]
    )


@dataclasses.dataclass(frozen=True)
class Predictions:
    """What `predict` computed."""

    outputs: np.ndarray
    """The model's outputs, one row per sample (class probabilities for a
    softmax head)."""

    labels: np.ndarray | None
    """The data's labels as class ids, where it had labels; else `None`."""

    @property
    def predicted(self) -> np.ndarray:
        """The class id of each sample's largest output."""
        return np.argmax(self.outputs, axis=-1)


def predict(
    model: keras.Model, data: Any, *, batch_size: int = 128, function=None
) -> Predictions:
    """Runs `model`'s predict step over `data`.

    Args:
        model: the model.
        data: samples (an array), `(x, y)` or `(x, y, sample_weight)`
            arrays, a `ClassSubset`, or a batched `tf.data.Dataset` of
            samples or of `(x, y, ...)` tuples.
        batch_size: samples per step for arrays. Defaults to `128`.
        function: a `predict_function` of `model` to reuse. Defaults to
            `None`: one is made.
    """
    labels = None
    if isinstance(data, tf.data.Dataset):
        batches = ((_samples(b), _labels(b)) for b in data)
    else:
        if isinstance(data, ClassSubset):
            samples, labels = data.x, data.y
        elif isinstance(data, tuple):
            samples, labels = data[0], data[1]
        else:
            samples = data
        batches = (
            (_rows(samples, start, batch_size), None)
            for start in range(0, len(first_input(samples)), batch_size)
        )
    outputs, read = [], []
    for batch, batch_labels in batches:
        if function is None:
            spec = map_inputs(lambda t: tf.TensorSpec(t.shape, t.dtype), batch)
            function = predict_function(model, spec)
        outputs.append(np.asarray(function(batch)))
        if batch_labels is not None:
            read.append(batch_labels)
    if read:
        labels = np.concatenate(read)
    return Predictions(
        outputs=np.concatenate(outputs),
        labels=None if labels is None else class_ids(labels),
    )


def _rows(samples, start: int, count: int):
    """Rows `start` to `start + count` of the samples (one array, or one per
    input), as tensors."""
    return map_inputs(lambda a: tf.constant(a[start : start + count]), samples)


def _samples(batch):
    return batch[0] if isinstance(batch, tuple) else batch


def _labels(batch):
    return np.asarray(batch[1]) if isinstance(batch, tuple) else None
