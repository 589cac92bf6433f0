import json

import keras
import numpy as np
import pytest
from conftest import IMAGE_SHAPE, make_data, make_model
from keras import layers

from transferkit import GroupedSequential, LayerGroup, TransferRun


def dense_group(name, units=2, **kwargs):
    return LayerGroup(name, [layers.Dense(units)], **kwargs)


def test_two_groups_make_a_sequential_with_their_layers_in_order():
    conv, flatten, dense = layers.Conv2D(2, 3), layers.Flatten(), layers.Dense(3)
    features = LayerGroup("features", [conv, flatten], input_shape=(6, 6, 1))
    head = LayerGroup("head", [dense])

    model = features + head

    assert isinstance(model, keras.Sequential)
    assert model.layers == [conv, flatten, dense]
    assert list(model.groups) == ["features", "head"]
    assert model.groups["features"] is features
    assert model.groups["head"].layers == (dense,)
    assert model.output_shape == (None, 3)


def test_three_groups_compose_left_to_right_and_right_to_left():
    a = dense_group("a", input_shape=(4,))
    b, c = dense_group("b"), dense_group("c", units=5)

    left = (a + b) + c
    right = a + (b + c)

    for model in (left, right):
        assert list(model.groups) == ["a", "b", "c"]
        assert model.layers == [a[0], b[0], c[0]]
        assert model.output_shape == (None, 5)


def test_adding_a_group_shares_the_layers_and_their_weights():
    a, b, c = dense_group("a", input_shape=(4,)), dense_group("b"), dense_group("c")
    two = a + b
    three = two + c
    x = np.ones((2, 4), "float32")
    np.testing.assert_array_equal(two.predict(x, verbose=0), b[0](a[0](x)))
    assert three.layers[0] is two.layers[0]
    assert three.layers[0].kernel is two.layers[0].kernel


def test_input_shape_may_come_from_a_leading_keras_input():
    dense = layers.Dense(3)
    group = LayerGroup("g", [keras.Input(shape=(7,)), dense])

    assert group.input_shape == (7,)
    assert group.layers == (dense,)
    model = group + dense_group("h")
    assert model.input_shape == (None, 7)
    assert model.layers == [dense, model.groups["h"][0]]


def test_a_group_behaves_as_a_sequence_of_its_layers():
    first, second = layers.Dense(2), layers.Dense(3)
    group = LayerGroup("g", [first, second])

    assert len(group) == 2
    assert list(group) == [first, second]
    assert group[1] is second
    assert "Dense" not in repr(group) and "'g'" in repr(group)


def test_trainable_sets_every_layer_of_the_group():
    model = make_model(batch_norm=True)
    features = model.groups["features"]

    features.trainable = False

    assert [layer.trainable for layer in features] == [False] * len(features)
    assert all(layer.trainable for layer in model.groups["classifier"])
    assert not features.trainable
    features[0].trainable = True
    assert features.trainable  # Partly frozen is not frozen.


def test_variables_include_non_trainable_batch_norm_statistics():
    model = make_model(batch_norm=True)
    paths = [v.path.split("/")[-1] for v in model.groups["features"].variables]
    assert "moving_mean" in paths and "moving_variance" in paths
    assert len(paths) == 2 + 4  # Conv kernel and bias, BN's four.


@pytest.mark.parametrize(
    "other", [3, "head", layers.Dense(2), [layers.Dense(2)]], ids=repr
)
def test_adding_anything_but_a_group_is_a_type_error(other):
    group = dense_group("a", input_shape=(4,))
    with pytest.raises(TypeError, match="Only `LayerGroup`s can be composed"):
        group + other
    with pytest.raises(TypeError, match="Only `LayerGroup`s can be composed"):
        (group + dense_group("b")) + other


def test_duplicate_group_names_are_rejected():
    with pytest.raises(ValueError, match="Two groups are named 'a'"):
        dense_group("a", input_shape=(4,)) + dense_group("a")


def test_a_layer_in_two_groups_is_rejected():
    shared = layers.Dense(2)
    a = LayerGroup("a", [layers.Dense(2), shared], input_shape=(4,))
    b = LayerGroup("b", [shared])
    with pytest.raises(ValueError, match="'.*' is in both group 'a' and group 'b'"):
        a + b


def test_only_the_first_group_may_set_the_input_shape():
    with pytest.raises(ValueError, match="Only the first group may set an input"):
        dense_group("a", input_shape=(4,)) + dense_group("b", input_shape=(2,))


@pytest.mark.parametrize(
    "name, group_layers, kwargs, error, message",
    [
        ("", [layers.Dense(1)], {}, ValueError, "non-empty string"),
        (None, [layers.Dense(1)], {}, ValueError, "non-empty string"),
        ("g", [], {}, ValueError, "needs at least one layer"),
        ("g", layers.Dense(1), {}, TypeError, "list of Keras layers"),
        ("g", [layers.Dense(1), "relu"], {}, TypeError, "position 1"),
        (
            "g",
            [layers.Dense(1), keras.Input((3,))],
            {},
            ValueError,
            "only be the first",
        ),
        (
            "g",
            [keras.Input((3,)), layers.Dense(1)],
            {"input_shape": (3,)},
            ValueError,
            "once",
        ),
        (
            "g",
            [layers.Dense(1)],
            {"input_shape": (0, 2)},
            ValueError,
            "positive integers",
        ),
        (
            "g",
            [layers.Dense(1)],
            {"input_shape": 5},
            ValueError,
            "Received: input_shape=5",
        ),
    ],
)
def test_invalid_groups_are_rejected(name, group_layers, kwargs, error, message):
    with pytest.raises(error, match=message):
        LayerGroup(name, group_layers, **kwargs)


def test_a_layer_twice_in_one_group_is_rejected():
    dense = layers.Dense(1)
    with pytest.raises(ValueError, match="appears twice in group 'g'"):
        LayerGroup("g", [dense, dense])


def as_json(config):
    return json.loads(json.dumps(config))


def assert_same_model(loaded, model, x):
    assert type(loaded) is GroupedSequential
    assert list(loaded.groups) == list(model.groups)
    for name, group in model.groups.items():
        assert [x.name for x in loaded.groups[name]] == [x.name for x in group]
        assert [x.trainable for x in loaded.groups[name]] == [
            x.trainable for x in group
        ]
    assert loaded.groups["features"].input_shape == IMAGE_SHAPE
    # Through JSON, as saved: tuples in the live config come back as lists.
    assert as_json(loaded.get_config()) == as_json(model.get_config())
    np.testing.assert_array_equal(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0)
    )


def test_trained_model_loads_back_with_groups_flags_and_predictions(tmp_path):
    model = make_model(batch_norm=True)
    x, y = make_data()
    run = TransferRun(
        model, optimizer="adam", loss="sparse_categorical_crossentropy", verbose=0
    )
    run.train((x, y), epochs=1)  # Moves BatchNorm statistics too.
    run.fine_tune((x, y), freeze="features", epochs=1)
    path = tmp_path / "model.keras"

    model.save(path)
    loaded = keras.models.load_model(path)  # No custom_objects.

    assert_same_model(loaded, model, x)
    assert not loaded.groups["features"].trainable
    # The optimizer state came back too: one slot pair per head variable.
    assert loaded.optimizer.iterations.numpy() == model.optimizer.iterations.numpy()


def test_uncompiled_model_round_trips(tmp_path):
    model = make_model()
    model.groups["classifier"].trainable = False
    x, _ = make_data()
    path = tmp_path / "model.keras"

    model.save(path)

    assert_same_model(keras.models.load_model(path), model, x)
