"""`grow_head`: a head widened to more classes, the old classes' weights kept
bitwise, the new ones drawn by the layer's initializers."""

import keras
import numpy as np
import pytest
from conftest import bitwise_equal, make_data, make_model, snapshot
from keras import layers

from transferkit import LayerGroup, TransferRun, grow_head

IMAGE_SHAPE = (8, 8, 1)


def separate_softmax_model():
    """The reference example's shape: the softmax a layer of its own."""
    features = LayerGroup(
        "features", [layers.Conv2D(4, 3), layers.Flatten()], input_shape=IMAGE_SHAPE
    )
    head = LayerGroup(
        "classifier",
        [
            layers.Dense(8, activation="relu"),
            layers.Dense(3),
            layers.Activation("softmax"),
        ],
    )
    return features + head


def numpy(variable):
    return np.array(keras.ops.convert_to_numpy(variable))


@pytest.mark.parametrize(
    "build",
    [make_model, separate_softmax_model],
    ids=["softmax in Dense", "Activation"],
)
def test_the_old_units_are_kept_bitwise_and_the_new_ones_initialised(build):
    model = build()
    model.groups["features"].trainable = False
    before = snapshot(model.weights)
    dense = [layer for layer in model.layers if isinstance(layer, layers.Dense)][-1]
    old_kernel, old_bias = numpy(dense.kernel), numpy(dense.bias)

    grown = grow_head(model, 7)

    head = grown.get_layer(dense.name)
    kernel, bias = numpy(head.kernel), numpy(head.bias)
    assert grown.output_shape == (None, 7) and kernel.shape == (8, 7)
    assert bitwise_equal(kernel[:, :3].copy(), old_kernel)
    assert bitwise_equal(bias[:3].copy(), old_bias)
    # New units from the layer's own initializers: zeros for the bias,
    # Glorot-uniform for the kernel, within its limit for the wider shape.
    assert not bias[3:].any() and np.abs(kernel[:, 3:]).max() > 0
    assert np.abs(kernel[:, 3:]).max() <= np.sqrt(6 / (8 + 7))
    for new, old in zip(grown.weights, model.weights, strict=True):
        assert new is not old
        if old.path not in (dense.kernel.path, dense.bias.path):
            assert bitwise_equal(numpy(new), numpy(old))
    assert list(grown.groups) == ["features", "classifier"]
    assert [layer.trainable for layer in grown.layers] == [
        layer.trainable for layer in model.layers
    ]
    assert not getattr(grown, "compiled", False)
    after = snapshot(model.weights)  # The model it grew from is as it was.
    assert all(bitwise_equal(before[k], after[k]) for k in before)

    # Among the old classes, the grown model's probabilities are the old
    # model's: the same scores, which the softmax now also divides by the new
    # classes'. To float32 rounding, as the sums and divisions differ.
    x, _ = make_data(8)
    old, new = (
        keras.ops.convert_to_numpy(m(x, training=False)) for m in (model, grown)
    )
    np.testing.assert_allclose(
        new[:, :3] / new[:, :3].sum(1, keepdims=True), old, rtol=1e-5
    )
    assert (new[:, 3:] > 0).all()


def test_a_trained_head_grows_and_trains_on_the_new_classes():
    run = TransferRun(make_model(), optimizer="adam", loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"], verbose=0)  # fmt: skip
    run.train(make_data(24), epochs=1)  # Compiled: its config holds optimizer state.
    grown = grow_head(run.model, 6)
    x, y = make_data(24, classes=6)
    again = TransferRun(grown, optimizer="adam", loss="sparse_categorical_crossentropy",
                        metrics=["accuracy"], verbose=0)  # fmt: skip

    result = again.fine_tune(
        (x, y), freeze=["features"], epochs=1,
        also_evaluate={"old": make_data(12), "new": (x[y >= 3], y[y >= 3])},
    )  # fmt: skip

    assert result.frozen_unchanged is True
    assert set(result.also_evaluated) == {"old", "new"}


def test_class_names_grow_with_the_head():
    model = make_model()
    model.class_names = ["a", "b", "c"]

    grown = grow_head(model, ["a", "b", "c", "d"])

    assert grown.class_names == ("a", "b", "c", "d") and grown.output_shape == (None, 4)
    with pytest.raises(
        ValueError,
        match=r"The model has class names \['a', 'b', 'c'\]; pass the grown head's, "
        r"starting with them, e\.g\. classes=\['a', 'b', 'c', '\.\.\.'\]\. Received: "
        r"classes=5",
    ):
        grow_head(model, 5)
    with pytest.raises(
        ValueError,
        match=r"The grown head's classes must start with the model's own, \['a', "
        r"'b', 'c'\], which its old units keep\. Received: classes=\['b', 'a', 'c', 'd'\]",
    ):
        grow_head(model, ["b", "a", "c", "d"])


def test_bad_heads_and_class_counts_are_refused():
    model = make_model()
    with pytest.raises(
        ValueError,
        match=r"Expected more classes than the head's 3 units, which it keeps\. "
        r"Received: classes=3",
    ):
        grow_head(model, 3)
    with pytest.raises(TypeError, match=r"Expected `classes` to be a number of "
                       r"classes or a list of class names\. Received: classes='ten'"):  # fmt: skip
        grow_head(model, "ten")
    with pytest.raises(TypeError, match=r"Received: model of type Sequential"):
        grow_head(keras.Sequential([keras.Input((4,)), layers.Dense(3)]), 5)

    conv_last = LayerGroup(
        "features", [layers.Dense(4)], input_shape=(3,)
    ) + LayerGroup(
        "head", [layers.Dense(4), layers.Reshape((2, 2)), layers.Conv1D(2, 1)]
    )
    with pytest.raises(
        ValueError,
        match=r"`grow_head` widens the model's last layer with weights, which must "
        r"be a Dense layer\. Model '.*' has layer 'conv1d\w*' \(Conv1D\) there\.",
    ):
        grow_head(conv_last, 5)
    dropout_last = LayerGroup(
        "features", [layers.Dense(4)], input_shape=(3,)
    ) + LayerGroup("head", [layers.Dense(2), layers.Dropout(0.5)])
    with pytest.raises(
        ValueError,
        match=r"which only activations \(Activation, Softmax\) may follow\. Model "
        r"'.*' ends with layer 'dropout\w*' \(Dropout\) after it\.",
    ):
        grow_head(dropout_last, 5)
    unbuilt = LayerGroup("features", [layers.Dense(4)]) + LayerGroup(
        "head", [layers.Dense(2)]
    )
    with pytest.raises(ValueError, match=r"is not built, so its head has no weights"):
        grow_head(unbuilt, 5)
