"""Checking and preparing a phase's data: what is accepted as it is, what is
made into arrays, and what is refused with a message that says why."""

import keras
import numpy as np
import pytest
from conftest import IMAGE_SHAPE, NUM_CLASSES, bitwise_equal, make_data, make_model

from transferkit import TransferRun
from transferkit.data.prepare import prepare_data

SPARSE = "sparse_categorical_crossentropy"


def prepare(data, loss=SPARSE, model=None):
    return prepare_data(
        data, "data", model=model or make_model(), loss=loss, batch_size=16
    )


def trained_weights(data):
    keras.utils.set_random_seed(7)
    run = TransferRun(make_model(), optimizer="sgd", loss=SPARSE, verbose=0, seed=7)
    run.train(data, epochs=1)
    return [np.array(w) for w in run.model.get_weights()]


def test_nested_lists_train_exactly_as_the_arrays_they_hold():
    x, y = make_data()

    from_arrays = trained_weights((x, y))
    from_lists = trained_weights((x.tolist(), y.tolist()))

    assert all(
        bitwise_equal(a, b) for a, b in zip(from_arrays, from_lists, strict=True)
    )


def test_labels_of_shape_n_by_1_are_class_ids():
    x, y = make_data()
    prepared = prepare((x, y[:, None]))
    assert prepared.y.shape == (len(y),)
    np.testing.assert_array_equal(prepared.y, y)


def test_categorical_losses_get_one_hot_labels():
    x, y = make_data()
    prepared = prepare((x, y), loss="categorical_crossentropy")
    np.testing.assert_array_equal(prepared.y, np.eye(NUM_CLASSES)[y])
    assert prepared.samples == len(x) and prepared.steps == 3  # 48 in 16s.


def test_string_labels_are_refused_with_a_way_out():
    x, y = make_data()
    names = np.array(["cat", "dog", "fox"])[y]
    with pytest.raises(
        TypeError,
        match=r"Expected the labels in `data` \(y\) to be numbers\. Received: "
        rf"dtype <U3, first value '{names[0]}'\. Map class names to ids first",
    ):
        prepare((x, names))


def test_text_samples_are_refused():
    _, y = make_data(samples=3)
    with pytest.raises(
        TypeError,
        match=r"samples in `data` \(x\) to be numbers\. Received: dtype <U1, "
        r"first value 'a'",
    ):
        prepare((np.array([["a"], ["b"], ["c"]]), y))


def test_ragged_lists_are_refused_naming_the_argument():
    with pytest.raises(
        ValueError,
        match=r"samples in `data` \(x\) to be an array, or nested lists of one "
        r"shape\. Received: a list NumPy cannot make into one array",
    ):
        prepare(([[1.0, 2.0], [3.0]], [0, 1]))


@pytest.mark.parametrize("shape", [(48, 1, 1), (48, 2), (48, 3, 1)])
def test_labels_of_another_shape_are_refused(shape):
    x, y = make_data()
    labels = np.zeros(shape, "int64")
    with pytest.raises(
        ValueError,
        match=r"labels in `data` to be class ids of shape \(n,\) or \(n, 1\), or "
        rf"targets shaped like the model's output, \(n, 3\)\. Received: y of "
        rf"shape \({shape[0]}, {', '.join(map(str, shape[1:]))}\)\.",
    ):
        prepare((x, labels))


def test_one_hot_labels_shaped_like_the_output_are_taken_as_they_are():
    x, y = make_data()
    one_hot = np.eye(NUM_CLASSES, dtype="float32")[y]
    assert prepare((x, one_hot)).y is one_hot


def test_a_scalar_is_not_data():
    with pytest.raises(TypeError, match=r"array with one row per sample"):
        prepare((3.0, [1]))


def test_an_unbuilt_model_is_built_from_the_samples():
    from keras import layers

    from transferkit import LayerGroup

    model = LayerGroup("a", [layers.Flatten()]) + LayerGroup("b", [layers.Dense(2)])
    x = np.zeros((4,) + IMAGE_SHAPE, "float32")
    prepare((x, np.array([0, 1, 0, 1])), model=model)
    assert model.built and model.input_shape == (None,) + IMAGE_SHAPE
