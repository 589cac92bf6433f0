"""A phase's data, checked and made ready for training.

`prepare_data` takes what a user passes to `TransferRun.train` (a
`ClassSubset`, an `(x, y)` tuple, or a batched `tf.data.Dataset`) and returns a
`PhaseData`: arrays of numbers in the shapes the model takes, labels one-hot
encoded where the loss expects that, and what the plan and the result record
(sample count, classes). Everything a user can get wrong about the data is
refused here, naming the argument, what was received and what is accepted,
before Keras sees it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import re
from typing import Any, TypeAlias

import keras
import numpy as np
import tensorflow as tf

from transferkit.data.class_subset import ClassSubset
from transferkit.data.dataset_checks import (
    check_class_ids,
    check_dataset,
    check_sample_shape,
    class_names_of,
    prepare_dataset,
    shape_fits,
)
from transferkit.data.sample_weights import (
    check_sample_weight,
    class_ids,
    class_weight_vector,
    dataset_class_counts,
    weights_of_labels,
)
from transferkit.data.several_inputs import (
    first_input,
    inputs_sha256,
    is_nested,
    prepare_inputs,
)

__all__ = [
    "Data",
    "PhaseData",
    "expects_one_hot",
    "loss_name",
    "prepare_data",
    "require_finite",
]

Data: TypeAlias = ClassSubset | tuple | tf.data.Dataset
"""A `ClassSubset`, an `(x, y)` or `(x, y, sample_weight)` tuple of arrays,
or a batched `tf.data.Dataset` of either."""

_NUMBERS = "biuf"  # NumPy dtype kinds: bool, signed, unsigned, floating.


@dataclasses.dataclass(frozen=True)
class PhaseData:
    """Training or validation data of one phase, ready for `fit`."""

    x: Any
    """The samples: an array (or tensor), or the whole `tf.data.Dataset`."""

    y: np.ndarray | None
    """Labels as `fit` takes them (one-hot for a categorical loss); `None`
    for a dataset, which yields its own."""

    samples: int | None
    """Number of samples; `None` for a dataset."""

    classes: tuple[int, ...] | None
    """Original class ids, when the data was a `ClassSubset`."""

    batch_size: int | None
    """Samples per step; `None` for a dataset, which is batched already."""

    labels_sha256: str | None
    """SHA-256 of the labels as given; `None` for a dataset."""

    steps_per_epoch: int | None = None
    """Batches per epoch of a dataset, when given (`steps_per_epoch`)."""

    class_names: tuple[str, ...] | None = None
    """The class names a dataset carries (`class_names` of
    `image_dataset_from_directory`), or `None`."""

    sample_weight: np.ndarray | None = None
    """One weight per sample of arrays (given, or from `class_weight`);
    `None` without weights, and for a dataset, which yields its own."""

    class_weights: tuple[float, ...] | None = None
    """The weight of every class id, when `class_weight` was given."""

    source: Any = None
    """The dataset the user passed (this one may be mapped from it)."""

    @functools.cached_property
    def samples_sha256(self) -> str | None:
        """SHA-256 of the samples' bytes, dtype and shape; `None` for a
        dataset. Computed when first asked for (the plan asks for the
        training data's only): 0.15 s for 60,000 MNIST digits in float32."""
        if self.is_dataset:
            return None
        if not isinstance(self.x, np.ndarray | tf.Tensor):
            return inputs_sha256(self.x)
        array = np.ascontiguousarray(self.x)
        digest = hashlib.sha256(memoryview(array).cast("B"))
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        return digest.hexdigest()

    @functools.cached_property
    def sample_weight_sha256(self) -> str | None:
        """SHA-256 of the sample weights' bytes; `None` without weights."""
        if self.sample_weight is None:
            return None
        array = np.ascontiguousarray(self.sample_weight)
        return hashlib.sha256(memoryview(array).cast("B")).hexdigest()

    @property
    def is_dataset(self) -> bool:
        return isinstance(self.x, tf.data.Dataset)

    @property
    def steps(self) -> int | None:
        """Batches per epoch; `None` when a dataset does not know its length."""
        if self.steps_per_epoch is not None:
            return self.steps_per_epoch
        if self.samples is not None and self.batch_size:
            return math.ceil(self.samples / self.batch_size)
        cardinality = int(self.x.cardinality())
        return cardinality if cardinality >= 0 else None

    @property
    def arrays(self) -> tuple:
        """`(x, y)`, or `(x, y, sample_weight)` with weights."""
        if self.sample_weight is None:
            return self.x, self.y
        return self.x, self.y, self.sample_weight

    def for_fit(self) -> Any:
        """What `fit` takes as `validation_data`: the dataset, or `(x, y)`
        (with the sample weights, if any)."""
        return self.x if self.is_dataset else self.arrays

    def as_dataset(self, *, shuffle: bool) -> PhaseData:
        """The same data as a batched `tf.data.Dataset`: itself if it is
        one; arrays in batches of `batch_size`, shuffled anew every epoch
        when `shuffle`."""
        if self.is_dataset:
            return self
        dataset = tf.data.Dataset.from_tensor_slices(self.arrays)
        if shuffle:
            dataset = dataset.shuffle(self.samples, reshuffle_each_iteration=True)
        return dataclasses.replace(self, x=dataset.batch(self.batch_size), y=None)


def prepare_data(
    data: Data,
    argument: str,
    *,
    model: keras.Model,
    loss: Any,
    batch_size: int,
    check_finite: bool = False,
    steps_per_epoch: int | None = None,
    class_weight: Any = None,
) -> PhaseData:
    """Checks `data` and makes it ready to train `model` with `loss`.

    Builds `model` from the data's sample shape if it is not built yet.

    Args:
        data: a `ClassSubset`, an `(x, y)` or `(x, y, sample_weight)` tuple
            of arrays (or of nested lists of numbers, which are made into
            arrays), or a batched `tf.data.Dataset` of either.
        argument: the name the user passed `data` as, for messages.
        model: the model to train.
        loss: the loss; a categorical one gets integer labels one-hot.
        batch_size: samples per step for arrays.
        check_finite: look for NaN and infinity in float arrays. Defaults to
            `False`.
        steps_per_epoch: batches per epoch of a dataset (`fit`'s
            `steps_per_epoch`); required for an endless one. Defaults to
            `None`: one pass over the dataset.
        class_weight: `{class: weight}` or `"balanced"`
            (`transferkit.data.sample_weights`), made into a weight per sample.
            Defaults to `None`.

    Raises:
        TypeError: for data of another kind, or samples or labels that are
            not numbers.
        ValueError: for samples or labels of the wrong shape or count, class
            ids outside the model's outputs, or (with `check_finite`) NaN or
            infinite values.
    """
    if isinstance(data, tf.data.Dataset):
        return _from_dataset(data, argument, model, loss, steps_per_epoch, class_weight)
    if steps_per_epoch is not None:
        raise ValueError(
            f"`steps_per_epoch` is for a tf.data.Dataset; `{argument}` holds "
            "arrays, whose epoch is every sample once. Received: "
            f"steps_per_epoch={steps_per_epoch}"
        )
    return _from_arrays(
        data, argument, model, loss, batch_size, check_finite, class_weight
    )


def _from_arrays(
    data, argument, model, loss, batch_size, check_finite, class_weight
) -> PhaseData:
    weights = None
    if isinstance(data, ClassSubset):
        x, y, classes = data.x, data.y, data.classes
    elif isinstance(data, tuple) and len(data) in (2, 3):
        (x, y, *weights), classes = data, None
        weights = weights[0] if weights else None
    else:
        raise TypeError(
            f"Expected `{argument}` to be a ClassSubset, an (x, y) or "
            "(x, y, sample_weight) tuple or a batched tf.data.Dataset. "
            f"Received: {_kind(data)}"
        )
    x, samples = _samples_of(x, argument, model)
    y = _numbers(y, f"`{argument}` (y)", "labels")
    if samples != len(y):
        raise ValueError(
            f"Expected x and y of the same length in `{argument}`. "
            f"Received: len(x)={samples}, len(y)={len(y)}"
        )
    if samples == 0:
        raise ValueError(
            f"Expected at least one sample in `{argument}`. Received: x of "
            f"shape {tuple(np.shape(first_input(x)))}"
        )
    if check_finite:
        origin = data.indices if isinstance(data, ClassSubset) else None
        arrays = tf.nest.flatten(x)
        for index, values in enumerate(arrays):
            where = f" (array {index})" if len(arrays) > 1 else ""
            require_finite(values, f"`{argument}` (x){where}", origin)
        require_finite(y, f"`{argument}` (y)", origin)
    return PhaseData(
        x=x,
        y=_prepare_labels(y, argument, model, loss),
        samples=samples,
        classes=classes,
        batch_size=batch_size,
        labels_sha256=hashlib.sha256(np.ascontiguousarray(y).tobytes()).hexdigest(),
        **_array_weights(weights, class_weight, y, argument, model),
    )


def _samples_of(x, argument, model) -> tuple[Any, int]:
    """`(x, samples)`: one array checked against the model's input, or one
    array per input (`transferkit.data.several_inputs`)."""
    if is_nested(x, model):
        return prepare_inputs(
            x, model, argument, lambda v, what: _numbers(v, what, "samples")
        )
    x = _numbers(x, f"`{argument}` (x)", "samples")
    if len(x):
        _ensure_built(model, tuple(np.shape(x)[1:]))
        shape = tuple(np.shape(x)[1:])
        check_sample_shape(shape, model, argument, _reshape_hint(model))
    return x, len(x)


def _kind(data) -> str:
    if isinstance(data, tuple):
        return f"a tuple of {len(data)}"
    return type(data).__name__


def _array_weights(weights, class_weight, y, argument, model) -> dict[str, Any]:
    """`sample_weight` (one weight per sample of arrays: given, from
    `class_weight`, or `None`) and `class_weights`, for `PhaseData`."""
    if weights is not None and class_weight is not None:
        raise ValueError(
            f"`{argument}` has sample weights and `class_weight` is given too; "
            "Keras' fit takes one or the other. Multiply the class weights into "
            "the sample weights, or drop one."
        )
    if weights is not None:
        return {"sample_weight": check_sample_weight(weights, argument, len(y))}
    if class_weight is None:
        return {}
    width = int(model.output_shape[-1])
    counts = np.bincount(class_ids(y), minlength=width)
    vector = class_weight_vector(
        class_weight,
        width,
        class_names=getattr(model, "class_names", None),
        counts=counts,
    )
    return {
        "sample_weight": weights_of_labels(y, vector),
        "class_weights": tuple(vector.tolist()),
    }


def _from_dataset(
    data, argument, model, loss, steps_per_epoch, class_weight
) -> PhaseData:
    if isinstance(data.element_spec, tuple):
        _ensure_built(model, data.element_spec[0].shape[1:])
    one_hot = expects_one_hot(loss)
    check_dataset(
        data,
        argument,
        model=model,
        loss=loss_name(loss),
        one_hot=one_hot,
        steps_per_epoch=steps_per_epoch,
    )
    vector = None
    if class_weight is not None:
        if len(data.element_spec) > 2:
            raise ValueError(
                f"`{argument}` yields sample weights and `class_weight` is given "
                "too; Keras' fit takes one or the other."
            )
        width = int(model.output_shape[-1])
        vector = class_weight_vector(
            class_weight,
            width,
            class_names=class_names_of(data) or getattr(model, "class_names", None),
            counts=(
                dataset_class_counts(data, width)
                if class_weight == "balanced"
                else None
            ),
        )
    return PhaseData(
        prepare_dataset(data, argument, model, one_hot, vector),
        None,
        samples=_file_count(data, steps_per_epoch),
        classes=None,
        batch_size=None,
        labels_sha256=None,
        steps_per_epoch=steps_per_epoch,
        class_names=class_names_of(data),
        class_weights=None if vector is None else tuple(vector.tolist()),
        source=data,
    )


def _file_count(dataset, steps_per_epoch) -> int | None:
    """Samples per epoch of a dataset of files (`file_paths`, as
    `image_dataset_from_directory` sets it) read once an epoch; else `None`."""
    paths = getattr(dataset, "file_paths", None)
    if steps_per_epoch is not None or not isinstance(paths, list):
        return None
    return len(paths)


def check_same_classes(train: PhaseData, validation: PhaseData | None) -> None:
    """Raises if both hold `ClassSubset` classes and they differ."""
    if validation is None or not (train.classes and validation.classes):
        return
    if train.classes != validation.classes:
        raise ValueError(
            "The validation data holds other classes than the "
            f"training data. Received: classes {train.classes} for `data` "
            f"and {validation.classes} for `validation_data`"
        )


def loss_name(loss: Any) -> str:
    """`loss` as a snake_case name: `"categorical_crossentropy"` for the
    string, the `CategoricalCrossentropy` object or the function alike."""
    if isinstance(loss, str):
        return loss
    if isinstance(loss, keras.losses.Loss):
        return re.sub(r"(?<!^)(?=[A-Z])", "_", type(loss).__name__).lower()
    return getattr(loss, "__name__", type(loss).__name__)


def expects_one_hot(loss: Any) -> bool:
    """Whether `loss` is a categorical loss that takes one-hot targets."""
    name = loss_name(loss)
    return "categorical" in name and "sparse" not in name


def require_finite(array, what: str, origin=None, chunk: int = 4096) -> None:
    """Raises if a floating-point `array` holds NaN or infinity; checks
    `chunk` samples at a time to keep memory flat. `origin` maps positions
    to those in the source data (a `ClassSubset`'s `indices`)."""
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.floating):
        return
    bad = [
        start + int(offset)
        for start in range(0, len(array), chunk)
        for offset in np.flatnonzero(
            ~np.isfinite(array[start : start + chunk])
            .reshape(len(array[start : start + chunk]), -1)
            .all(axis=1)
        )
    ]
    if bad:
        source = "" if origin is None else f" ({origin[bad[0]]} in the source data)"
        raise ValueError(
            f"NaN or infinite values in {what}: {len(bad)} "
            f"sample{'s' if len(bad) > 1 else ''}, the first "
            f"at index {bad[0]}{source}. Clean or drop them, or pass "
            "check_finite=False to skip this check."
        )


def _numbers(values, what: str, kind: str):
    """`values` as an array (or tensor) of numbers: a nested list becomes an
    array; text, objects and ragged lists are refused."""
    if not isinstance(values, np.ndarray | tf.Tensor):
        try:
            values = np.asarray(values)
        except ValueError as error:  # Ragged nesting.
            raise ValueError(
                f"Expected the {kind} in {what} to be an array, or nested "
                "lists of one shape. Received: a "
                f"{type(values).__name__} NumPy cannot make into one array "
                f"({error})"
            ) from None
        if values.ndim == 0:
            raise TypeError(
                f"Expected the {kind} in {what} to be an array with one row "
                f"per sample. Received: {values!r}"
            )
    dtype = np.dtype(
        values.dtype.as_numpy_dtype if isinstance(values, tf.Tensor) else values.dtype
    )
    if dtype.kind not in _NUMBERS:
        first = np.asarray(values).reshape(-1)[:1].tolist()
        received = f"dtype {dtype}" + (f", first value {first[0]!r}" if first else "")
        hint = (
            " Map class names to ids first, e.g. `names, y = np.unique(y, "
            "return_inverse=True)`."
            if kind == "labels"
            else ""
        )
        raise TypeError(
            f"Expected the {kind} in {what} to be numbers. Received: {received}.{hint}"
        )
    return values


def _ensure_built(model: keras.Model, sample_shape) -> None:
    if not model.built:
        model.build((None,) + tuple(sample_shape))


def _reshape_hint(model: keras.Model) -> str:
    return f"Reshape the data, e.g. x.reshape((-1,) + {tuple(model.input_shape[1:])})."


def _prepare_labels(y, argument: str, model: keras.Model, loss):
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    output = tuple(model.output_shape[1:])
    if y.ndim != 1 and not shape_fits(tuple(y.shape[1:]), output):
        raise ValueError(
            f"Expected the labels in `{argument}` to be class ids of shape "
            f"(n,) or (n, 1), or targets shaped like the model's output, "
            f"(n, {', '.join(str(d) for d in output)}). Received: y of shape "
            f"{y.shape}."
        )
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        return y  # One-hot or other targets: Keras checks them.
    width = int(output[-1])
    check_class_ids(y, argument, width)
    if expects_one_hot(loss):
        return keras.utils.to_categorical(y, width).astype("float32")
    return y
