"""A `tf.data.Dataset` checked like arrays, before training starts.

What can be known without a pass over the data is checked at once: the
element spec (batches of `(x, y)`), the sample shape and channels against the
model's input, the labels' form against the loss (class ids for a sparse
loss, one-hot rows as wide as the model's output for a categorical one), the
dataset's `class_names` (from `keras.utils.image_dataset_from_directory`)
against the output width, an endless dataset without `steps_per_epoch`; then
the first batch alone is read, for the real sample shape and the labels'
range. The other batches are checked as they pass, by assertions in the
pipeline, whose message names the argument.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from transferkit.data.sample_weights import weights_of_label_tensor

__all__ = [
    "check_class_ids",
    "check_dataset",
    "check_sample_shape",
    "class_names_of",
    "prepare_dataset",
    "shape_fits",
]


def check_dataset(
    dataset: tf.data.Dataset,
    argument: str,
    *,
    model: keras.Model,
    loss: str,
    one_hot: bool,
    steps_per_epoch: int | None,
) -> None:
    """Raises for a dataset that cannot train `model` with the loss named
    `loss` (`one_hot`: whether it takes one-hot targets), naming the
    argument, what was received and what is accepted."""
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) < 2:
        raise TypeError(
            f"Expected `{argument}` to yield (x, y) batches. Received a "
            f"dataset with element_spec={spec}"
        )
    batches = int(dataset.cardinality())
    if batches == 0:
        raise ValueError(
            f"Expected `{argument}` to yield at least one batch. Received an "
            "empty tf.data.Dataset (cardinality 0)"
        )
    _check_length(batches, argument, steps_per_epoch)
    width = int(model.output_shape[-1])
    _check_class_names(class_names_of(dataset), argument, width)
    _check_label_form(spec[1].shape, argument, loss, one_hot, width)
    first = next(iter(dataset.take(1)), None)
    if first is None:
        raise ValueError(
            f"Expected `{argument}` to yield at least one batch. Received a "
            "tf.data.Dataset that gave none (a `filter` that drops every sample, "
            "or an exhausted generator)"
        )
    x, y = first[:2]
    received = tuple(x.shape[1:])
    way_out = _image_way_out(received, tuple(model.input_shape[1:]))
    check_sample_shape(received, model, argument, way_out)
    _check_label_form(y.shape, argument, loss, one_hot, width)
    if y.shape.rank == 1 and y.dtype.is_integer:
        check_class_ids(np.asarray(y), argument, width, "its first batch")


def class_names_of(dataset: tf.data.Dataset) -> tuple[str, ...] | None:
    """The class names a dataset carries (`image_dataset_from_directory`
    sets `class_names`), or `None`."""
    names = getattr(dataset, "class_names", None)
    if not names or not all(isinstance(name, str) for name in names):
        return None
    return tuple(names)


def prepare_dataset(
    dataset, argument: str, model: keras.Model, one_hot: bool, class_weights=None
):
    """`dataset` with its class ids checked as they pass (and made one-hot
    when `one_hot`), other labels as they are; with `class_weights` (a weight
    per class id), each batch gets its samples' weights as a third element,
    as `fit(class_weight=...)` gives them."""
    y_spec = dataset.element_spec[1]
    if class_weights is not None:
        dataset = dataset.map(
            lambda x, y: (x, y, weights_of_label_tensor(y, class_weights))
        )
    if not (y_spec.dtype.is_integer and y_spec.shape.rank == 1):
        return dataset
    width = int(model.output_shape[-1])

    def checked(x, y, *rest):
        checks = [
            tf.debugging.assert_non_negative(
                y, message=f"Labels in `{argument}` must be class ids >= 0"
            ),
            tf.debugging.assert_less(
                y,
                tf.cast(width, y.dtype),
                message=f"Labels in `{argument}` must be class ids in [0, {width - 1}] "
                f"for a model with {width} outputs",
            ),
        ]
        with tf.control_dependencies(checks):
            y = tf.one_hot(y, width) if one_hot else tf.identity(y)
        return (x, y) + rest

    return dataset.map(checked)


def _check_length(batches: int, argument: str, steps_per_epoch: int | None) -> None:
    if batches == tf.data.INFINITE_CARDINALITY and steps_per_epoch is None:
        way_out = (
            "Pass steps_per_epoch=N, the batches of one epoch, or a finite dataset."
            if argument == "data"
            else "Pass a finite dataset, e.g. `dataset.take(N)`."
        )
        raise ValueError(
            f"`{argument}` is an endless tf.data.Dataset (from `repeat()`, or a "
            f"generator): it would never end. {way_out}"
        )
    if steps_per_epoch is not None and 0 < batches < steps_per_epoch:
        raise ValueError(
            f"`{argument}` has {batches} batches, fewer than steps_per_epoch="
            f"{steps_per_epoch}. Pass steps_per_epoch={batches} or less, or "
            "repeat the dataset."
        )


def _check_class_names(names, argument: str, width: int) -> None:
    if names is not None and len(names) > width:
        raise ValueError(
            f"`{argument}` has {len(names)} classes ({list(names)}), but the "
            f"model has {width} outputs, so labels {width}..{len(names) - 1} "
            f"have none. Give the head {len(names)} outputs, e.g. "
            f"Dense({len(names)}), or load only {width} class folders "
            "(`class_names=` of image_dataset_from_directory)."
        )


def _check_label_form(
    shape: tf.TensorShape, argument: str, name: str, one_hot: bool, width: int
) -> None:
    """Class ids `(n,)` for a sparse loss; one-hot rows `(n, width)` for a
    categorical one (class ids are made one-hot); unknown sizes pass."""
    rows = shape.rank == 2 and shape[-1] is not None and shape[-1] > 1
    if "sparse" in name and rows:
        raise ValueError(
            f"The labels in `{argument}` are one-hot rows (shape "
            f"{tuple(shape)}), but the loss '{name}' takes class ids. Pass "
            "label_mode='int' to image_dataset_from_directory, or use "
            "loss='categorical_crossentropy'."
        )
    if one_hot and rows and shape[-1] != width:
        raise ValueError(
            f"The labels in `{argument}` are rows of {shape[-1]} values, but "
            f"the model has {width} outputs. Expected one-hot rows of {width}, "
            "or class ids."
        )


def check_sample_shape(
    received: tuple, model: keras.Model, argument: str, way_out: str
) -> None:
    """Raises unless samples of shape `received` fit the model's input,
    naming both shapes and `way_out` (if any)."""
    expected = tuple(model.input_shape[1:])
    if not shape_fits(received, expected):
        raise ValueError(
            f"The samples in `{argument}` have shape {received}, but the model "
            f"expects {expected}." + (f" {way_out}" if way_out else "")
        )


def shape_fits(shape, expected) -> bool:
    """Whether `shape` matches `expected`, where `None` matches any size."""
    return len(shape) == len(expected) and all(
        e is None or e == s for s, e in zip(shape, expected, strict=True)
    )


def _image_way_out(received: tuple, expected: tuple) -> str:
    if len(received) == len(expected) == 3:
        return (
            f"For an image folder, pass image_size={expected[:2]} and "
            f"color_mode={'rgb' if expected[2] == 3 else 'grayscale'!r} to "
            "image_dataset_from_directory, or put a Resizing layer in front."
        )
    return ""


def check_class_ids(labels: np.ndarray, argument: str, width: int, where="") -> None:
    """Raises for class ids outside `[0, width)`, naming the first few;
    `where` says which part of the data they came from."""
    bad = (labels < 0) | (labels >= width)
    if bad.any():
        raise ValueError(
            f"Labels in `{argument}` must be class ids in [0, {width - 1}] for "
            f"a model with {width} outputs. Received{f' in {where}' if where else ''}: "
            f"{sorted(set(labels[bad].tolist()))[:5]}"
        )
