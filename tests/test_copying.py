"""Groups between models as copies: `clone_model`, `copy_groups`, and the
refusal of a new model over the layers of a compiled one."""

import keras
import numpy as np
import pytest
from conftest import make_data, make_model
from keras import layers

from transferkit import (
    GroupedSequential,
    LayerGroup,
    TransferRun,
    attach_groups,
    clone_model,
    copy_groups,
)


def values(variables):
    return [keras.ops.convert_to_numpy(v) for v in variables]


def assert_bitwise(left, right):
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        assert a.tobytes() == b.tobytes()


@pytest.fixture
def trained():
    """A model trained by a run: compiled, with a built optimizer."""
    model = make_model(batch_norm=True)
    model.class_names = ["a", "b", "c"]
    run = TransferRun(
        model, optimizer="adam", loss="sparse_categorical_crossentropy", verbose=0
    )
    run.train(make_data(), epochs=1)
    model.groups["features"].trainable = False
    return model


def head():
    return LayerGroup("new_head", [layers.Dense(3, activation="softmax")])


def test_keras_clone_model_works_on_a_trained_composed_model(trained):
    clone = keras.models.clone_model(trained)  # Was: TypeError, optimizer_variables.

    assert len(clone.layers) == len(trained.layers)
    assert clone.compiled
    x, _ = make_data(4)
    assert clone.predict(x, verbose=0).shape == (4, 3)


def test_clone_keeps_groups_flags_names_and_weights_bitwise(trained):
    clone = clone_model(trained)

    assert isinstance(clone, GroupedSequential)
    assert list(clone.groups) == list(trained.groups)
    assert clone.class_names == ("a", "b", "c")
    assert [w.trainable for w in clone.weights] == [
        w.trainable for w in trained.weights
    ]
    assert_bitwise(values(clone.weights), values(trained.weights))
    shared = {id(v) for v in clone.weights} & {id(v) for v in trained.weights}
    assert not shared
    x, _ = make_data(6)
    np.testing.assert_array_equal(
        clone.predict(x, verbose=0), trained.predict(x, verbose=0)
    )


def test_training_a_clone_leaves_the_source_bitwise_as_it_was(trained):
    before = values(trained.weights)
    clone = clone_model(trained)
    clone.groups["features"].trainable = True
    TransferRun(
        clone, optimizer="sgd", loss="sparse_categorical_crossentropy", verbose=0
    ).train(make_data(), epochs=1)

    assert_bitwise(values(trained.weights), before)
    assert any(
        a.tobytes() != b.tobytes()
        for a, b in zip(values(clone.weights), before, strict=True)
    )


def test_clone_without_weights_is_newly_initialised(trained):
    clone = clone_model(trained, weights=False)

    kernel = clone.groups["features"][0].kernel
    assert (
        keras.ops.convert_to_numpy(kernel).tobytes()
        != values([trained.layers[0].kernel])[0].tobytes()
    )


def test_a_cloned_group_composes_with_a_new_head(trained):
    model = clone_model(trained).groups["features"] + head()

    x, _ = make_data(2)
    assert model.predict(x, verbose=0).shape == (2, 3)
    assert not {id(v) for v in model.weights} & {id(v) for v in trained.weights}


def test_clone_of_a_model_split_from_a_backbone_keeps_its_groups():
    inputs = keras.Input((6,))
    x = layers.Dense(5, name="low")(inputs)
    backbone = keras.Model(inputs, layers.Dense(4, name="high")(x), name="net")
    bottom, top = LayerGroup.split(backbone, at=["low"], names=["bottom", "top"])
    model = bottom + top + head()

    clone = clone_model(model)

    assert list(clone.groups) == ["bottom", "top", "new_head"]
    assert_bitwise(
        values(clone.groups["bottom"].variables),
        values(model.groups["bottom"].variables),
    )


def test_clone_refuses_a_model_given_groups_in_place():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, layers.Dense(2, name="d")(inputs))
    attach_groups(model, LayerGroup.match(model, {"all": "d"}))

    with pytest.raises(TypeError, match="keras.models.clone_model"):
        clone_model(model)


def test_a_group_of_a_trained_model_is_not_silently_shared(trained):
    with pytest.raises(ValueError, match=r"Group 'features' holds layer .* compiled"):
        trained.groups["features"] + head()
    with pytest.raises(ValueError, match=r"clone_model\(source\)"):
        trained + LayerGroup("extra", [layers.Dense(2)])


def test_sharing_on_purpose_is_allowed_and_shares(trained):
    model = GroupedSequential([trained.groups["features"], head()], share_layers=True)

    assert model.layers[0] is trained.layers[0]


def test_a_run_refuses_a_model_sharing_layers_with_a_compiled_one():
    features = LayerGroup("features", [layers.Flatten()], input_shape=(8, 8, 1))
    body = LayerGroup("body", [layers.Dense(3)])
    first, second = features + body, features + body  # Uncompiled: allowed.
    TransferRun(first, optimizer="sgd", loss="mse", verbose=0)
    first.compile(optimizer="sgd", loss="mse")

    with pytest.raises(ValueError, match="Group 'features' holds layer"):
        TransferRun(second, optimizer="sgd", loss="mse", verbose=0)


def test_copy_groups_copies_the_first_n_groups_bitwise_as_copies(trained):
    target = make_model(batch_norm=True)
    head_before = values(target.groups["classifier"].variables)

    copy_groups(trained, target, 1)

    assert_bitwise(
        values(target.groups["features"].variables),
        values(trained.groups["features"].variables),
    )
    assert_bitwise(values(target.groups["classifier"].variables), head_before)
    source_before = values(trained.weights)
    target.groups["features"].variables[0].assign(
        np.zeros(target.groups["features"].variables[0].shape)
    )
    assert_bitwise(values(trained.weights), source_before)


def test_copy_groups_by_name_includes_batch_norm_statistics(trained):
    target = make_model(batch_norm=True)
    copy_groups(trained, target, ["features"])

    moving = [v for v in target.groups["features"].variables if "moving" in v.path]
    assert moving
    assert_bitwise(
        values(target.groups["features"].variables),
        values(trained.groups["features"].variables),
    )


@pytest.mark.parametrize(
    "groups, error, message",
    [
        (["nope"], ValueError, "has no group 'nope'"),
        (3, ValueError, "a number from 0 to 2"),
        ("features", TypeError, "list of group names"),
        (["features", "features"], ValueError, "named twice"),
    ],
)
def test_copy_groups_refuses_bad_names(trained, groups, error, message):
    with pytest.raises(error, match=message):
        copy_groups(trained, make_model(batch_norm=True), groups)


def test_copy_groups_checks_every_layout_before_writing(trained):
    target = make_model(batch_norm=False)  # 'features' lacks BatchNormalization.
    before = values(target.weights)

    with pytest.raises(ValueError, match="Group 'features' holds variables of shapes"):
        copy_groups(trained, target, ["classifier", "features"])
    assert_bitwise(values(target.weights), before)


def test_an_older_compile_config_with_optimizer_positions_still_loads(trained):
    config = keras.models.Model.get_compile_config(trained)
    config["optimizer_variables"] = list(range(len(trained.trainable_weights)))
    model = make_model(batch_norm=True)

    model.compile_from_config(config)

    assert model.optimizer.built
