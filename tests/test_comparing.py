"""Groups of two models compared bitwise: `compare_groups`."""

import keras
import numpy as np
import pytest
from conftest import make_data, make_model
from keras import layers

from transferkit import (
    LayerGroup,
    TransferRun,
    clone_model,
    compare_groups,
    copy_groups,
    reinitialize_groups,
)


def quiet_run(model):
    return TransferRun(
        model, optimizer="adam", loss="sparse_categorical_crossentropy", verbose=0
    )


@pytest.fixture
def source():
    model = make_model(batch_norm=True)
    quiet_run(model).train(make_data(), epochs=1)
    return model


def test_copied_groups_frozen_through_a_fine_tune_still_equal_the_source(source):
    target = clone_model(source, weights=False)
    copy_groups(source, target, ["features"])
    reinitialize_groups(target, ["classifier"], seed=0)

    result = quiet_run(target).fine_tune(
        make_data(seed=1), freeze=["features"], epochs=2
    )

    assert result.frozen_unchanged is True
    frozen = compare_groups(target, source, ["features"])
    assert frozen and frozen.equal
    assert frozen.equal_groups == ("features",) and frozen.differing_groups == ()
    assert frozen.variables == 6  # kernel, bias, BatchNorm's four.
    both = compare_groups(target, source, 2)
    assert not both
    assert both.equal_groups == ("features",)
    assert both.differing_groups == ("classifier",)
    head = target.groups["classifier"].variables
    assert both.differing["classifier"] == tuple(v.path for v in head)


def test_a_fine_tuned_group_differs_and_names_its_variables(source):
    target = clone_model(source)
    target.groups["features"].trainable = True

    quiet_run(target).train(make_data(seed=1), epochs=1)

    result = compare_groups(target, source, ["features"])
    assert not result
    # Trained kernel, bias, gamma and beta, and the moving statistics.
    names = [path.rsplit("/", 1)[1] for path in result.differing["features"]]
    assert names == [
        "kernel",
        "bias",
        "gamma",
        "beta",
        "moving_mean",
        "moving_variance",
    ]
    assert str(result).startswith("equal: []; differ: 'features': ")


def test_one_moving_statistic_changed_is_found(source):
    target = clone_model(source)
    batch_norm = target.groups["features"][1]
    mean = keras.ops.convert_to_numpy(batch_norm.moving_mean)
    mean[0] = np.nextafter(mean[0], np.float32(np.inf))  # One ulp.
    batch_norm.moving_mean.assign(mean)

    result = compare_groups(target, source, ["features", "classifier"])

    assert result.differing == {"features": (batch_norm.moving_mean.path,)}
    assert result.equal_groups == ("classifier",)
    assert str(compare_groups(target, source, ["classifier"])) == (
        "groups ['classifier']: all 4 variables bitwise equal to the reference"
    )


def test_a_group_either_model_lacks_is_named(source):
    other = LayerGroup("features", [layers.Flatten()], input_shape=(8, 8, 1)) + (
        LayerGroup("head", [layers.Dense(3)])
    )

    with pytest.raises(ValueError, match=r"The model '.*' has no group 'featurez'"):
        compare_groups(source, source, ["featurez"])
    with pytest.raises(
        ValueError,
        match=r"The reference '.*' has no group 'classifier'. Its groups: "
        r"\['features', 'head'\]. Received: groups=\['classifier'\]",
    ):
        compare_groups(source, other, ["classifier"])
    with pytest.raises(
        ValueError,
        match=r"Group 'features' holds 6 variables in the model and 0 in the reference",
    ):
        compare_groups(source, other, ["features"])
