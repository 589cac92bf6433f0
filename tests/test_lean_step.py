"""The lean training step: the same Dropout distribution on bit masks, and
runs that use it with fused optimizer updates."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import bitwise_equal, fine_tune_checked, make_data, make_model
from keras import layers
from tiny import run_options

from transferkit import TransferRun
from transferkit.layers.lean import LeanDropout, LeanSoftmax, lean_layers

SPARSE = "sparse_categorical_crossentropy"


@pytest.mark.parametrize(
    "rate, bits",
    [
        (0.5, 1),
        (0.25, 2),
        (0.75, 2),
        (0.375, 3),
        (3 / 2**8, 8),
        (3 / 2**16, 16),
        (0.1, 32),
    ],
)
def test_lean_dropout_keeps_each_element_with_probability_one_minus_rate(rate, bits):
    lean = LeanDropout(layers.Dropout(rate, seed=1))
    x = tf.ones((400, 1001))  # Not a multiple of 32 elements a word.

    y = lean(x, training=True).numpy()

    assert lean.bits == bits
    kept = y != 0
    assert set(np.unique(y[kept])) == {np.float32(1 / (1 - rate))}
    # Binomial: 400,400 draws, 6 standard deviations either way.
    spread = 6 * np.sqrt(rate * (1 - rate) / kept.size)
    assert abs(kept.mean() - (1 - rate)) < spread + 1e-6


@pytest.mark.parametrize("rate", [0.25, 0.5, 0.1])
def test_lean_dropout_keeps_elements_independently(rate):
    # Neighbours, elements of one random byte or word, and rows of the
    # expansion: each pair is kept together with probability (1 - rate)**2.
    kept = (
        LeanDropout(layers.Dropout(rate, seed=2))(tf.ones((1000, 1000)), training=True)
        .numpy()
        .ravel()
        != 0
    )
    words = -(-kept.size // 32)
    for offset in (1, 7, 8, 31, 32, 4 * words):
        together = (kept[:-offset] & kept[offset:]).mean()
        p = (1 - rate) ** 2
        assert abs(together - p) < 6 * np.sqrt(p * (1 - p) / kept.size), offset


def test_lean_dropout_with_a_rate_just_below_one_keeps_its_threshold_in_range():
    lean = LeanDropout(layers.Dropout(1 - 2**-40))

    y = lean(tf.ones((100, 100)), training=True).numpy()

    assert (lean.bits, lean.threshold) == (32, 2**32 - 1)
    assert np.isfinite(y).all() and (y == 0).mean() > 0.999


def test_lean_dropout_computes_in_the_replaced_layers_dtype():
    dropout = layers.Dropout(0.25, seed=4)
    dropout.dtype_policy = "mixed_bfloat16"
    lean = LeanDropout(dropout)
    x = tf.cast(tf.random.stateless_uniform((64, 256), seed=(1, 2)) + 0.1, "bfloat16")

    y = lean(x, training=True)

    assert lean.compute_dtype == "bfloat16" and y.dtype == tf.bfloat16
    # Kept elements are scaled in bfloat16, as Keras' Dropout scales them.
    scaled = (x * tf.cast(1 / 0.75, "bfloat16")).numpy()
    kept = y.numpy() != 0
    assert 0.7 < kept.mean() < 0.8
    assert bitwise_equal(y.numpy()[kept], scaled[kept])


def test_lean_dropout_passes_inputs_through_in_inference():
    x = tf.random.normal((8, 5))
    assert bitwise_equal(
        LeanDropout(layers.Dropout(0.5))(x, training=False).numpy(), x.numpy()
    )


def test_lean_dropout_draws_from_the_replaced_layers_seed_generator():
    dropout = layers.Dropout(0.5, seed=3)
    lean = LeanDropout(dropout)
    state = keras.ops.convert_to_numpy(dropout.seed_generator.state).copy()

    first = lean(tf.ones((4, 64)), training=True).numpy()
    second = lean(tf.ones((4, 64)), training=True).numpy()

    assert not np.array_equal(first, second)
    assert not np.array_equal(
        keras.ops.convert_to_numpy(dropout.seed_generator.state), state
    )


def test_lean_layers_replace_only_plain_dropout_and_softmax_activations():
    plain, spatial = layers.Dropout(0.5), layers.SpatialDropout1D(0.5)
    shaped, dense = layers.Dropout(0.5, noise_shape=(None, 1)), layers.Dense(2)
    softmax, relu = layers.Activation("softmax"), layers.Activation("relu")
    dense_softmax = layers.Dense(2, activation="softmax")

    lean = lean_layers([plain, spatial, shaped, dense, softmax, relu, dense_softmax])

    assert isinstance(lean[0], LeanDropout)
    assert isinstance(lean[4], LeanSoftmax)
    assert lean[1:4] + lean[5:] == [spatial, shaped, dense, relu, dense_softmax]


def test_lean_softmax_gives_keras_softmax_and_the_same_loss_and_gradients():
    keras.utils.set_random_seed(3)
    body = [layers.Dense(16, activation="relu"), layers.Dense(4)]
    softmax = layers.Activation("softmax", dtype="float32")
    model = keras.Sequential([keras.Input((8,)), *body, softmax])
    lean = keras.Sequential([keras.Input((8,)), *lean_layers([*body, softmax])])
    x = tf.random.stateless_normal((32, 8), seed=(3, 4))
    y = tf.one_hot(tf.range(32) % 4, 4)
    loss = keras.losses.CategoricalCrossentropy()

    def loss_and_gradients(network):
        with tf.GradientTape() as tape:
            value = loss(y, network(x))
        return value, tape.gradient(value, network.trainable_variables)

    assert isinstance(lean.layers[-1], LeanSoftmax)
    np.testing.assert_allclose(lean(x), model(x), rtol=1e-6, atol=1e-7)
    (expected, expected_gradients), (value, gradients) = map(
        loss_and_gradients, (model, lean)
    )
    # The loss is computed from the logits both ways: bitwise the same.
    assert bitwise_equal(value.numpy(), expected.numpy())
    assert all(
        bitwise_equal(a.numpy(), b.numpy())
        for a, b in zip(gradients, expected_gradients, strict=True)
    )


def lean_run(model, **kwargs):
    return TransferRun(
        model,
        optimizer=lambda: keras.optimizers.Adadelta(1.0),
        loss=SPARSE,
        verbose=0,
        seed=5,
        **run_options({"lean_step": True, **kwargs}),
    )


def test_a_lean_run_keeps_the_freeze_and_says_what_it_changed():
    model = make_model(dropout=True)
    run = lean_run(model)
    data = make_data()
    first = run.train(data, epochs=1)

    result = fine_tune_checked(run, data)

    assert first.lean_step == "1 Dropout layers on bit masks; fused Adadelta updates"
    assert result.lean_step == first.lean_step
    assert result.frozen_unchanged is True
    # The model keeps Keras' own layer; the lean one stood in for training.
    assert isinstance(model.groups["classifier"][1], layers.Dropout)


def test_seeded_lean_runs_repeat_bitwise():
    weights = []
    for _ in range(2):
        keras.utils.set_random_seed(9)
        model = make_model(dropout=True)
        run = lean_run(model, precision="mixed_bfloat16")
        run.train(make_data(), epochs=2)
        weights.append([keras.ops.convert_to_numpy(v) for v in model.weights])
    assert all(bitwise_equal(a, b) for a, b in zip(*weights, strict=True))
