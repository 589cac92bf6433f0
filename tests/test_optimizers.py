"""Optimizers for phases: fresh ones from a spec, and fused update kernels
that follow Keras' formulas."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from transferkit.optimizers import (
    check_optimizer_spec,
    fresh_optimizer,
    fuse_updates,
    optimizer_fingerprint,
)


@pytest.mark.parametrize(
    "spec",
    [
        "adam",
        keras.optimizers.Adam(learning_rate=0.02),
        lambda: keras.optimizers.Adam(0.02),
    ],
    ids=["name", "instance", "factory"],
)
def test_every_spec_gives_a_new_unbuilt_optimizer_each_time(spec):
    first, second = fresh_optimizer(spec), fresh_optimizer(spec)

    assert isinstance(first, keras.optimizers.Adam)
    assert first is not second and first is not spec
    assert not first.built and not second.built
    assert optimizer_fingerprint(first) == optimizer_fingerprint(second)


def test_the_fingerprint_records_class_and_settings_but_not_the_name():
    fingerprint = optimizer_fingerprint(
        keras.optimizers.SGD(0.5, momentum=0.9, name="x")
    )
    assert fingerprint["class"] == "SGD"
    assert fingerprint["learning_rate"] == 0.5 and fingerprint["momentum"] == 0.9
    assert "name" not in fingerprint


def test_an_unknown_optimizer_name_is_refused():
    with pytest.raises(ValueError, match="nadamz"):
        check_optimizer_spec("nadamz", "optimizer")


OPTIMIZERS = {
    "adadelta": lambda: keras.optimizers.Adadelta(learning_rate=1.0),
    "sgd": lambda: keras.optimizers.SGD(learning_rate=0.1),
    "momentum": lambda: keras.optimizers.SGD(learning_rate=0.1, momentum=0.9),
    "nesterov": lambda: keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
    "adam": lambda: keras.optimizers.Adam(learning_rate=0.01),
}


@pytest.mark.parametrize("make", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_fused_updates_follow_the_same_formulas(make):
    rng = np.random.default_rng(0)
    start = rng.normal(size=(6, 4)).astype("float32")
    gradients = [rng.normal(size=(6, 4)).astype("float32") for _ in range(4)]
    results = []
    for fused in (False, True):
        variable = keras.Variable(start)
        optimizer = make()
        assert fuse_updates(optimizer) if fused else True
        for gradient in gradients:
            optimizer.apply_gradients([(tf.constant(gradient), variable)])
        results.append(keras.ops.convert_to_numpy(variable))
    assert not np.allclose(results[0], start)
    np.testing.assert_allclose(results[1], results[0], rtol=1e-5, atol=1e-6)


def test_optimizers_without_a_fused_kernel_are_left_alone():
    optimizer = keras.optimizers.RMSprop()
    update_step = optimizer.update_step

    assert fuse_updates(optimizer) is False
    assert fuse_updates(keras.optimizers.Adam(amsgrad=True)) is False
    assert optimizer.update_step == update_step
