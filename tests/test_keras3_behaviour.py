"""The Keras 3 behaviours that docs/keras3-pitfalls.md describes, pinned."""

import keras
import numpy as np
import pytest
from conftest import make_data, make_model
from keras import layers


def test_adadelta_defaults_to_a_learning_rate_of_0_001():
    assert keras.optimizers.Adadelta().learning_rate.numpy() == pytest.approx(1e-3)
    assert keras.optimizers.get("adadelta").learning_rate.numpy() == pytest.approx(1e-3)


def test_freezing_without_recompiling_keeps_training_the_frozen_layers():
    model = make_model()
    x, y = make_data()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, verbose=0)
    kernel = model.groups["features"][0].kernel
    before = keras.ops.convert_to_numpy(kernel).copy()

    model.groups["features"].trainable = False  # No recompile: no effect.
    model.fit(x, y, epochs=1, verbose=0)

    assert not np.array_equal(keras.ops.convert_to_numpy(kernel), before)


def test_a_built_optimizer_refuses_variables_it_was_not_built_with():
    model = make_model()
    x, y = make_data()
    optimizer = keras.optimizers.Adam()
    model.groups["features"].trainable = False
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, verbose=0)

    model.groups["features"].trainable = True
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="can only be called for the variables"):
        model.fit(x, y, epochs=1, verbose=0)


def test_a_reused_optimizer_carries_its_state_into_the_next_phase():
    model = make_model()
    x, y = make_data()
    optimizer = keras.optimizers.Adam()
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)

    model.groups["features"].trainable = False
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)

    assert int(optimizer.iterations.numpy()) == 6  # 3 steps each phase.


def test_frozen_dropout_still_drops_in_training():
    dropout = layers.Dropout(0.5)
    dropout.trainable = False
    out = keras.ops.convert_to_numpy(dropout(np.ones((1, 1000)), training=True))
    assert 300 < np.count_nonzero(out == 0) < 700


def test_frozen_batch_norm_normalizes_with_its_moving_statistics():
    batch_norm = layers.BatchNormalization()
    x = np.random.default_rng(0).normal(5.0, 3.0, size=(64, 4)).astype("float32")
    batch_norm.build(x.shape)
    batch_norm.trainable = False

    trained_mode = keras.ops.convert_to_numpy(batch_norm(x, training=True))
    inference = keras.ops.convert_to_numpy(batch_norm(x, training=False))

    np.testing.assert_array_equal(trained_mode, inference)
    assert np.allclose(keras.ops.convert_to_numpy(batch_norm.moving_mean), 0)
