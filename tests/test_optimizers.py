"""Optimizers for phases: fresh ones from a spec, per-variable learning-rate
multipliers exact for every optimizer, and fused update kernels that follow
Keras' formulas."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import bitwise_equal

from transferkit.engine.optimizers import (
    check_optimizer_spec,
    fresh_optimizer,
    fuse_updates,
    optimizer_fingerprint,
    scale_learning_rates,
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


SCALED = {
    "sgd": lambda lr: keras.optimizers.SGD(lr),
    "momentum": lambda lr: keras.optimizers.SGD(lr, momentum=0.9, nesterov=True),
    "adam": lambda lr: keras.optimizers.Adam(lr),
    "adamw": lambda lr: keras.optimizers.AdamW(lr, weight_decay=0.1),
    "adadelta": lambda lr: keras.optimizers.Adadelta(lr),
    "rmsprop": lambda lr: keras.optimizers.RMSprop(lr),
    "ftrl": lambda lr: keras.optimizers.Ftrl(lr),
    "schedule": lambda lr: keras.optimizers.Adam(
        keras.optimizers.schedules.ExponentialDecay(lr, decay_steps=1, decay_rate=0.5)
    ),
}


def trained(make, lr, multipliers=(), fused=False, steps=3):
    """Two variables after `steps` updates of one optimizer."""
    rng = np.random.default_rng(1)
    variables = [
        keras.Variable(rng.normal(size=(5, 3)).astype("float32")) for _ in "ab"
    ]
    optimizer = make(lr)
    if fused:
        fuse_updates(optimizer)
    scale_learning_rates(optimizer, [(variables[i], m) for i, m in multipliers])
    for _ in range(steps):
        gradients = [
            tf.constant(rng.normal(size=(5, 3)).astype("float32")) for _ in "ab"
        ]
        optimizer.apply_gradients(zip(gradients, variables, strict=True))
    return [keras.ops.convert_to_numpy(v) for v in variables], optimizer


@pytest.mark.parametrize("make", SCALED.values(), ids=SCALED.keys())
def test_a_multiplier_is_exactly_that_learning_rate_for_every_optimizer(make):
    (scaled_a, scaled_b), _ = trained(make, 0.1, [(0, 0.5)])
    (half_a, _), _ = trained(make, 0.05)
    (_, plain_b), _ = trained(make, 0.1)

    assert bitwise_equal(scaled_a, half_a)  # Variable a: lr 0.1 x 0.5 = 0.05.
    assert bitwise_equal(scaled_b, plain_b)  # Variable b: untouched by it.


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "adadelta"])
def test_multipliers_compose_with_fused_kernels(name):
    (scaled_a, _), _ = trained(SCALED[name], 0.1, [(0, 0.5)], fused=True)
    (half_a, _), _ = trained(SCALED[name], 0.05, fused=True)
    assert bitwise_equal(scaled_a, half_a)


def test_a_zero_multiplier_leaves_the_variable_and_its_slots_alone():
    start = np.random.default_rng(1).normal(size=(5, 3)).astype("float32")
    (frozen, moved), optimizer = trained(SCALED["adamw"], 0.1, [(0, 0.0)])

    assert bitwise_equal(frozen, start)
    assert not np.array_equal(moved, frozen)
    moments = [optimizer._momentums, optimizer._velocities]
    assert [bool(np.any(keras.ops.convert_to_numpy(m[0]))) for m in moments] == [
        False,
        False,
    ]
    assert all(np.any(keras.ops.convert_to_numpy(m[1])) for m in moments)
