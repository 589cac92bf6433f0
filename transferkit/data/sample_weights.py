"""Class weights and sample weights, as Keras' `fit` takes them.

`fit(class_weight={class: weight})` weighs each training sample's loss by
its class's weight, and `(x, y, sample_weight)` data by a weight per sample;
both scale the loss and the weighted metrics, never the validation data's
class weights. transferkit turns a class weight into a weight per sample
where the labels are (arrays, each batch of a dataset, the feature cache's
labels), so that every loop trains on the same weighted loss as `fit`.

`class_weight="balanced"` gives each class `n / (k * n_c)` for `n` samples of
`k` classes of which `n_c` are of class `c` (scikit-learn's "balanced"): every
class then weighs as much in the loss as if the classes were equally common.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from transferkit.utils.checks import is_non_negative_number

__all__ = [
    "balanced_class_weight",
    "check_sample_weight",
    "class_ids",
    "class_weight_vector",
    "dataset_class_counts",
    "weights_of_label_tensor",
    "weights_of_labels",
]


def class_weight_vector(
    class_weight: Mapping[Any, float] | str,
    width: int,
    *,
    class_names: Sequence[str] | None = None,
    counts: np.ndarray | None = None,
) -> np.ndarray:
    """The weight of every class id in `[0, width)`, as float32.

    Args:
        class_weight: `{class: weight}`, its keys class ids (or, where the
            run has class names, names); classes left out weigh 1.0, as in
            `fit`. Or `"balanced"`.
        width: the model's outputs.
        class_names: the run's class names, for keys given as names.
        counts: samples per class id, for `"balanced"`.

    Raises:
        ValueError: for a key that is no class, or a weight that is not a
            finite number >= 0.
        TypeError: for a `class_weight` that is neither.
    """
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(
                "Expected `class_weight` to be a dict {class: weight} or "
                f"'balanced'. Received: class_weight={class_weight!r}"
            )
        return balanced_class_weight(counts, width)
    if not isinstance(class_weight, Mapping) or not class_weight:
        raise TypeError(
            "Expected `class_weight` to be a dict {class: weight}, e.g. "
            "{0: 1.0, 1: 5.0}, or 'balanced'. Received: "
            f"class_weight={class_weight!r}"
        )
    vector = np.ones(width, dtype="float32")
    names = list(class_names or ())
    for key, weight in class_weight.items():
        index = _class_index(key, width, names)
        if not is_non_negative_number(weight):
            raise ValueError(
                "Expected class weights to be finite numbers >= 0. Received: "
                f"class_weight[{key!r}]={weight!r}"
            )
        vector[index] = weight
    _check_some_weight(vector, counts, class_weight)
    return vector


def _check_some_weight(vector: np.ndarray, counts, class_weight) -> None:
    """Raises if every training sample would weigh 0 (where the class counts
    are known; else if every class does): the loss would be 0 and the phase
    would train nothing, silently."""
    present = vector if counts is None else vector[np.asarray(counts) > 0]
    if present.size and not present.any():
        raise ValueError(
            "Every training sample would weigh 0 with class_weight="
            f"{dict(class_weight)!r}: the phase would train on a loss of 0 and "
            "change nothing. Give at least one class of the data a weight above 0."
        )


def _class_index(key: Any, width: int, names: list[str]) -> int:
    if isinstance(key, str):
        if key in names:
            return names.index(key)
        raise ValueError(
            f"`class_weight` names the class {key!r}, which is not one of the "
            f"run's classes {names or '(the run has no class names)'}. Use "
            f"class ids in [0, {width - 1}] or those names."
        )
    if isinstance(key, bool) or not isinstance(key, int | np.integer):
        raise TypeError(
            f"Expected the keys of `class_weight` to be class ids (ints) or "
            f"class names. Received the key {key!r}"
        )
    if not 0 <= key < width:
        raise ValueError(
            f"`class_weight` has the class id {key}, but the model has {width} "
            f"outputs: class ids are 0..{width - 1}."
        )
    return int(key)


def balanced_class_weight(counts: np.ndarray | None, width: int) -> np.ndarray:
    """`n / (k * n_c)` for each class `c` of `counts` (samples per class id),
    `k` the classes with samples; 1.0 for a class with none.

    >>> balanced_class_weight(np.array([30, 10]), 2).tolist()
    [0.6666666865348816, 2.0]
    """
    counts = np.zeros(width) if counts is None else np.asarray(counts, "float64")
    counts = counts[:width]
    present = counts > 0
    if not present.any():
        raise ValueError(
            "class_weight='balanced' needs labels to count the classes; the "
            "data has none."
        )
    weights = np.ones(width)
    weights[present] = counts[present].sum() / (present.sum() * counts[present])
    return weights.astype("float32")


def class_ids(labels: np.ndarray) -> np.ndarray:
    """Class ids of labels given as ids, `(n, 1)` ids or one-hot rows, as
    Keras' `class_weight` reads them (rows by their largest entry)."""
    labels = np.asarray(labels)
    if labels.ndim > 1:
        labels = labels[:, 0] if labels.shape[-1] == 1 else np.argmax(labels, axis=-1)
    return np.round(labels).astype("int64")


def weights_of_labels(labels: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """Each sample's weight, the weight of its class."""
    return vector[class_ids(labels)].astype("float32")


def weights_of_label_tensor(labels: tf.Tensor, vector: np.ndarray) -> tf.Tensor:
    """`weights_of_labels` inside a `tf.data` pipeline."""
    if labels.shape.rank is not None and labels.shape.rank > 1:
        if labels.shape[-1] == 1:
            labels = labels[:, 0]
        else:
            labels = tf.argmax(labels, axis=-1)
    ids = tf.cast(tf.round(tf.cast(labels, tf.float32)), tf.int32)
    return tf.gather(tf.constant(vector), ids)


def check_sample_weight(weights: Any, argument: str, samples: int) -> np.ndarray:
    """`weights` as one float32 weight per sample, or raises naming `argument`."""
    array = np.asarray(weights)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.dtype.kind not in "biuf" or array.ndim != 1 or len(array) != samples:
        raise ValueError(
            f"Expected the sample weights in `{argument}` (x, y, sample_weight) "
            f"to be {samples} numbers, one per sample. Received: an array of "
            f"shape {array.shape} and dtype {array.dtype}"
        )
    array = array.astype("float32")
    if not np.isfinite(array).all() or (array < 0).any():
        bad = int(np.flatnonzero(~np.isfinite(array) | (array < 0))[0])
        raise ValueError(
            f"Expected the sample weights in `{argument}` to be finite numbers "
            f">= 0. Received: {float(array[bad])!r} at index {bad}"
        )
    return array


def dataset_class_counts(dataset: tf.data.Dataset, width: int) -> np.ndarray:
    """Samples per class id in a dataset: from its file paths and class
    names where it has them (`image_dataset_from_directory`: a file's class
    is its folder), else from one pass over its labels."""
    paths = getattr(dataset, "file_paths", None)
    names = getattr(dataset, "class_names", None)
    if isinstance(paths, list) and names:
        index = {name: i for i, name in enumerate(names)}
        ids = [index.get(os.path.basename(os.path.dirname(p)), -1) for p in paths]
        if ids and min(ids) >= 0:
            return np.bincount(ids, minlength=width)
    counts = np.zeros(width, dtype="int64")
    for labels in dataset.map(lambda *batch: batch[1]):
        counts += np.bincount(class_ids(labels.numpy()), minlength=width)[:width]
    return counts
