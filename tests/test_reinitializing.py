"""Groups drawn afresh from a seed: `reinitialize_groups`."""

import keras
import numpy as np
import pytest
from conftest import bitwise_equal, make_data, make_model, snapshot
from keras import layers

from transferkit import LayerGroup, TransferRun, reinitialize_groups


def values(variables):
    return [keras.ops.convert_to_numpy(v) for v in variables]


def trained_model():
    """The tiny model with BatchNormalization, trained one epoch: its
    moving statistics have left their initial values."""
    model = make_model(batch_norm=True)
    TransferRun(
        model, optimizer="adam", loss="sparse_categorical_crossentropy", verbose=0
    ).train(make_data(), epochs=1)
    return model


def test_the_same_seed_on_the_same_layout_gives_bitwise_the_same_weights():
    first, second = trained_model(), make_model(batch_norm=True)
    assert first.layers[0].name != second.layers[0].name  # Other Keras names.

    reinitialize_groups(first, ["features"], seed=3)
    reinitialize_groups(second, ["features"], seed=3)

    drawn = values(first.groups["features"].variables)
    for a, b in zip(drawn, values(second.groups["features"].variables), strict=True):
        assert bitwise_equal(a, b)
    # Each variable from its own initializer: Glorot kernel, zero bias, and
    # BatchNormalization's ones and zeros (statistics included).
    kernel, bias, gamma, beta, mean, variance = drawn
    limit = np.sqrt(6 / (3 * 3 * 1 + 3 * 3 * 4))
    assert np.all(np.abs(kernel) <= limit) and np.unique(kernel).size == kernel.size
    assert not bias.any() and not beta.any() and not mean.any()
    assert np.all(gamma == 1) and np.all(variance == 1)


def test_another_seed_gives_other_weights_and_each_variable_its_own_draw():
    model = make_model()
    reinitialize_groups(model, ["features", "classifier"], seed=1)
    one = values(model.weights)
    reinitialize_groups(model, ["features", "classifier"], seed=2)
    two = values(model.weights)

    kernels = [0, 2, 4]  # conv, dense, dense
    for index in kernels:
        assert one[index].tobytes() != two[index].tobytes()
    # Two same-shaped variables of one draw are not the same numbers.
    twins = LayerGroup("a", [layers.Dense(4)], input_shape=(4,)) + LayerGroup(
        "b", [layers.Dense(4), layers.Dense(4)]
    )
    reinitialize_groups(twins, ["b"], seed=1)
    first, _, second, _ = values(twins.groups["b"].variables)
    assert first.tobytes() != second.tobytes()


def test_the_drawn_groups_change_and_the_other_groups_stay_bitwise():
    model = trained_model()
    features = snapshot(model.groups["features"].variables)
    head = snapshot(model.groups["classifier"].variables)

    reinitialize_groups(model, 1, seed=0)  # 1: the first group, 'features'.

    after = snapshot(model.groups["classifier"].variables)
    assert all(bitwise_equal(after[p], v) for p, v in head.items())
    moved = snapshot(model.groups["features"].variables)
    # The trained kernel, bias and moving statistics all moved.
    assert all(not np.array_equal(moved[p], v) for p, v in features.items())


def test_a_trained_model_redrawn_predicts_as_a_new_model_drawn_with_the_seed():
    x, y = make_data()
    predictions = []
    for model in (trained_model(), make_model(batch_norm=True)):
        reinitialize_groups(model, ["features", "classifier"], seed=9)
        predictions.append(model.predict(x, verbose=0))

    assert bitwise_equal(*predictions)


def test_the_layer_s_own_initializers_are_used_generically():
    lstm = layers.LSTM(3, recurrent_initializer="orthogonal")
    model = LayerGroup(
        "seq",
        [lstm, layers.Dense(4, kernel_initializer=keras.initializers.Constant(0.5))],
        input_shape=(5, 2),
    ) + LayerGroup(
        "conv",
        [
            layers.Reshape((2, 2, 1)),
            layers.DepthwiseConv2D(1, depthwise_initializer="ones"),
            layers.SeparableConv2D(
                2, 1, pointwise_initializer=keras.initializers.RandomNormal(5, 0.01)
            ),
            layers.Flatten(),
            layers.Embedding(3, 2, embeddings_initializer="ones"),
        ],
    )
    for variable in model.weights:
        variable.assign(np.full(variable.shape, -7.0, "float32"))

    reinitialize_groups(model, ["seq", "conv"], seed=4)

    kernel, recurrent, bias, dense_kernel, _ = values(model.groups["seq"].variables)
    np.testing.assert_allclose(recurrent @ recurrent.T, np.eye(3), atol=1e-5)
    # unit_forget_bias: the forget gate's bias starts at one, as Keras builds it.
    assert bias.tolist() == [0.0] * 3 + [1.0] * 3 + [0.0] * 6
    assert np.all(dense_kernel == 0.5) and np.all(kernel != -7)
    depthwise, _, _, pointwise, _, embeddings = values(model.groups["conv"].variables)
    assert np.all(depthwise == 1) and np.all(embeddings == 1)
    assert np.all(np.abs(pointwise - 5) < 0.1)


def test_a_variable_without_an_initializer_is_named_and_nothing_is_written():
    class Scaled(layers.Layer):
        def build(self, input_shape):
            self.scale = self.add_weight(shape=(1,), initializer="ones", name="scale")

        def call(self, x):
            return x * self.scale

    model = LayerGroup("body", [layers.Dense(2)], input_shape=(3,)) + LayerGroup(
        "odd", [Scaled(name="scaled")]
    )
    before = values(model.weights)

    with pytest.raises(
        ValueError,
        match=r"variable '\S*scaled/scale' of layer 'scaled' \(Scaled, group 'odd'\)"
        r": the layer has no initializer for it. Looked for \['scale_initializer'\]",
    ):
        reinitialize_groups(model, ["body", "odd"], seed=0)
    assert all(
        bitwise_equal(a, b) for a, b in zip(values(model.weights), before, strict=True)
    )


def test_an_initializer_that_is_a_plain_function_is_refused():
    dense = layers.Dense(2, kernel_initializer=lambda shape, dtype=None: np.ones(shape))
    model = LayerGroup("body", [dense], input_shape=(3,)) + LayerGroup(
        "head", [layers.Dense(1)]
    )

    with pytest.raises(TypeError, match=r"`kernel_initializer` is <function"):
        reinitialize_groups(model, ["body"], seed=0)


@pytest.mark.parametrize(
    "seed, error, match",
    [
        (-1, ValueError, r"integer >= 0. Received: seed=-1"),
        (1.5, TypeError, r"Expected `seed` to be an integer. Received: seed=1.5"),
        (True, TypeError, r"Received: seed=True"),
        (None, TypeError, r"Received: seed=None"),
    ],
)
def test_a_bad_seed_is_refused(seed, error, match):
    model = make_model()
    with pytest.raises(error, match=match):
        reinitialize_groups(model, ["features"], seed=seed)


def test_an_unknown_group_is_refused_before_anything_is_written():
    model = make_model()
    before = values(model.weights)

    with pytest.raises(
        ValueError,
        match=r"Unknown group 'featurez'. Expected one of \['features', "
        r"'classifier'\]. Received: groups=\['features', 'featurez'\]",
    ):
        reinitialize_groups(model, ["features", "featurez"], seed=0)
    with pytest.raises(ValueError, match=r"number from 0 to 2"):
        reinitialize_groups(model, 3, seed=0)
    assert all(
        bitwise_equal(a, b) for a, b in zip(values(model.weights), before, strict=True)
    )
