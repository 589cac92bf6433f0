"""The lean training step: the same Dropout distribution on bit masks, and
runs that use it with fused optimizer updates."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import bitwise_equal, fine_tune_checked, make_data, make_model
from keras import layers

from transferkit import TransferRun
from transferkit.lean_step import LeanDropout, lean_layers

SPARSE = "sparse_categorical_crossentropy"


@pytest.mark.parametrize(
    "rate, bits", [(0.25, 8), (0.5, 8), (3 / 2**16, 16), (0.1, 32)]
)
def test_lean_dropout_keeps_each_element_with_probability_one_minus_rate(rate, bits):
    lean = LeanDropout(layers.Dropout(rate, seed=1))
    x = tf.ones((400, 1000))

    y = lean(x, training=True).numpy()

    assert lean.bits == bits
    kept = y != 0
    assert set(np.unique(y[kept])) == {np.float32(1 / (1 - rate))}
    # Binomial: 400,000 draws, 6 standard deviations either way.
    spread = 6 * np.sqrt(rate * (1 - rate) / kept.size)
    assert abs(kept.mean() - (1 - rate)) < spread + 1e-6


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


def test_lean_layers_replace_only_plain_dropout():
    plain, spatial = layers.Dropout(0.5), layers.SpatialDropout1D(0.5)
    shaped, dense = layers.Dropout(0.5, noise_shape=(None, 1)), layers.Dense(2)

    lean = lean_layers([plain, spatial, shaped, dense])

    assert isinstance(lean[0], LeanDropout)
    assert lean[1:] == [spatial, shaped, dense]


def lean_run(model, **kwargs):
    return TransferRun(
        model,
        optimizer=lambda: keras.optimizers.Adadelta(1.0),
        loss=SPARSE,
        verbose=0,
        lean_step=True,
        seed=5,
        **kwargs,
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
