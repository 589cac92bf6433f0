"""How the feature cache fills: block sizes measured on the data, rows
written into one buffer that TensorFlow reads without a copy."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from transferkit.cache import blocks
from transferkit.cache.blocks import BlockSizer, aligned_empty, as_tensor
from transferkit.cache.features import FeatureCache


def run_sizer(sizer, rows, seconds_per_sample):
    """Drives `sizer` over `rows` as a fill would; returns the sizes used."""
    used, start = [], 0
    while start < rows:
        size = sizer.next_size()
        samples = min(size, rows - start)
        sizer.observe(samples, samples * seconds_per_sample(size))
        used.append(size)
        start += samples
    return used


def test_the_sizer_tries_each_candidate_then_keeps_the_fastest():
    rates = {64: 3.0, 128: 2.0, 256: 1.0, 512: 1.5}
    sizer = BlockSizer(100_000, activation_bytes=1_000)

    used = run_sizer(sizer, 100_000, rates.get)

    assert sizer.chosen == 256
    measuring = len(used) - used[::-1].index(512)  # Up to the last 512.
    assert used[:4] == [64, 128, 256, 512]  # Each once, to build its kernels.
    rounds = blocks.ROUNDS
    assert used[4:measuring].count(64) == rounds * blocks.ROUND_SAMPLES // 64
    assert used[4:measuring].count(512) == rounds
    assert set(used[measuring:]) == {256}


def test_the_first_run_of_a_size_is_not_timed():
    # Each size's first run is slow (its kernels are built): not held against it.
    first = set()

    def rate(size):
        slow = size not in first
        first.add(size)
        return 100.0 if slow and size == 128 else {64: 3.0, 128: 1.0}.get(size, 2.0)

    sizer = BlockSizer(100_000, activation_bytes=1_000)
    run_sizer(sizer, 100_000, rate)
    assert sizer.chosen == 128


def test_measuring_takes_at_most_a_fifth_of_the_rows():
    sizer = BlockSizer(8_000, activation_bytes=1_000)
    used = run_sizer(sizer, 8_000, {64: 2.0, 128: 1.0, 256: 3.0, 512: 3.0}.get)
    assert 512 not in used  # Too costly to try on 8,000 rows.
    assert sum(used[: len(used) - used[::-1].index(256)]) <= 8_000 // 5
    assert sizer.chosen == 128


def test_with_few_rows_the_fixed_size_is_taken_without_measuring():
    sizer = BlockSizer(2_000, activation_bytes=100_000)

    used = run_sizer(sizer, 2_000, lambda size: 1.0)

    assert sizer.chosen == blocks.fixed_size(100_000) == 256
    assert set(used) == {256}


def test_the_fixed_size_keeps_a_block_within_its_activation_budget():
    budget = blocks.FIXED_ACTIVATION_BYTES
    assert blocks.fixed_size(1) == max(blocks.CANDIDATES)
    # The example's digits: 26 x 26 x 32 float32 activations.
    assert blocks.fixed_size(26 * 26 * 32 * 4) == 256
    assert blocks.fixed_size(budget // 128) == 128
    assert blocks.fixed_size(budget // 128 + 1) == 64
    # None within the budget: the smallest candidate that fits at all.
    assert blocks.fixed_size(2**20) == min(blocks.CANDIDATES)
    assert blocks.fixed_size(blocks.ACTIVATION_BYTES) == blocks.SMALLEST


def test_sizes_whose_activation_would_be_too_large_are_not_tried():
    per_sample = blocks.ACTIVATION_BYTES // 100  # Fits 64, not 128.
    sizer = BlockSizer(10**6, activation_bytes=per_sample)
    assert set(run_sizer(sizer, 10**6, lambda size: 1.0)) == {64}
    huge = BlockSizer(10**6, activation_bytes=blocks.ACTIVATION_BYTES)
    assert set(run_sizer(huge, 10**6, lambda size: 1.0)) == {blocks.SMALLEST}


@pytest.mark.parametrize("shape", [(3, 5), (2**18, 4)])
def test_the_buffer_is_aligned_and_read_by_tensorflow_without_a_copy(shape):
    array = aligned_empty(shape, np.float32)
    array[...] = 1.0
    tensor = as_tensor(array)

    assert array.ctypes.data % 64 == 0
    array[0, 0] = 7.0  # Seen through the tensor: the same memory.
    assert float(tensor[0, 0]) == 7.0
    del array
    assert float(tf.reduce_sum(tensor[1])) == shape[1]  # Kept alive by the tensor.


def test_bfloat16_rows_are_read_without_a_copy_too():
    array = aligned_empty((4, 8), tf.bfloat16.as_numpy_dtype)
    array[...] = 1.5
    tensor = as_tensor(array)
    array[1, 1] = 3.0
    assert tensor.dtype == tf.bfloat16
    assert float(tensor[1, 1]) == 3.0 and float(tensor[0, 0]) == 1.5


def test_an_unaligned_array_is_copied_with_its_values():
    base = aligned_empty((65,), np.float32)
    base[...] = np.arange(65)
    raw = base[1:].reshape(8, 8)  # 4 bytes past an aligned address.
    assert raw.ctypes.data % 64 == 4
    tensor = as_tensor(raw)
    raw[0, 0] = -1.0
    assert float(tensor[0, 0]) == 1.0  # A copy, with the values it had.
    np.testing.assert_array_equal(tensor.numpy()[1:], raw[1:])


def test_the_largest_activation_is_read_inside_a_backbone():
    inputs = keras.Input((8, 8, 1))
    wide = layers.Conv2D(16, 3, padding="same")(inputs)  # 8 * 8 * 16 a sample.
    backbone = keras.Model(inputs, layers.GlobalAveragePooling2D()(wide))
    assert blocks.largest_activation([backbone, layers.Dense(2)], (8, 8, 1)) == 1024
    plain = [layers.Conv2D(4, 3), layers.Flatten()]
    assert blocks.largest_activation(plain, (10, 10, 1)) == 8 * 8 * 4


def features_of(layers_, x, size):
    return np.concatenate(
        [
            keras.Sequential(layers_)(x[s : s + size], training=False)
            for s in range(0, len(x), size)
        ]
    )


def test_a_measured_fill_holds_each_samples_features_in_order():
    stack = [layers.Conv2D(4, 3), layers.Activation("relu"), layers.Flatten()]
    x = np.random.default_rng(0).normal(size=(5_000, 6, 6, 1)).astype("float32")

    cache = FeatureCache(stack, {"train": x}, memory_limit=2**30)

    assert cache.block_size in blocks.CANDIDATES
    np.testing.assert_allclose(
        cache.features["train"].numpy(),
        features_of(stack, x, 500),
        rtol=1e-6,
        atol=1e-6,
    )
    cache.close()


def test_views_of_a_dataset_with_a_short_last_batch_close_up():
    """Two views of 10 samples in batches of 4 (the last of 2): the rows are
    view-major, view 1 right after view 0's 10 rows."""
    stack = [layers.Flatten()]
    x = np.arange(10 * 3, dtype="float32").reshape(10, 3)
    data = tf.data.Dataset.from_tensor_slices((x, np.arange(10))).batch(4)

    cache = FeatureCache(
        stack, {"train": data}, memory_limit=2**30, views=2, augmenting=0
    )

    rows = cache.features["train"].numpy()
    assert rows.shape == (20, 3)
    np.testing.assert_array_equal(rows[:10], x)
    np.testing.assert_array_equal(rows[10:], x)
    np.testing.assert_array_equal(cache.labels["train"], np.arange(10))
    cache.close()


@pytest.mark.parametrize("views", [1, 2])
def test_a_dataset_whose_first_batch_is_its_smallest_is_cached_whole(views):
    x = np.arange(10 * 3, dtype="float32").reshape(10, 3)
    small = tf.data.Dataset.from_tensor_slices((x[:2], np.arange(2))).batch(2)
    large = tf.data.Dataset.from_tensor_slices((x[2:], np.arange(2, 10))).batch(4)
    data = small.concatenate(large)  # 3 batches of at most 2 promised: 6 < 10.

    cache = FeatureCache(
        [layers.Flatten()], {"train": data}, memory_limit=2**30, views=views
    )

    np.testing.assert_array_equal(
        cache.features["train"].numpy(), np.tile(x, (views, 1))
    )
    cache.close()


def test_views_of_a_dataset_of_unknown_length_are_joined_in_order():
    x = np.arange(10 * 3, dtype="float32").reshape(10, 3)
    data = (
        tf.data.Dataset.from_tensor_slices((x, np.arange(10)))
        .filter(lambda *_: True)  # Its length is now unknown.
        .batch(4)
    )
    assert int(data.cardinality()) == tf.data.UNKNOWN_CARDINALITY

    cache = FeatureCache(
        [layers.Flatten()], {"train": data}, memory_limit=2**30, views=2
    )

    np.testing.assert_array_equal(cache.features["train"].numpy(), np.tile(x, (2, 1)))
    np.testing.assert_array_equal(cache.labels["train"], np.arange(10))
    cache.close()


def test_without_measuring_every_block_takes_the_fixed_size():
    sizer = BlockSizer(100_000, activation_bytes=200_000, measure=False)
    used = run_sizer(sizer, 100_000, {64: 3.0, 128: 9.0, 256: 1.0}.get)
    assert sizer.chosen == blocks.fixed_size(200_000) == 128
    assert set(used) == {128}


def test_fixed_blocks_give_the_rows_of_a_forward_pass_in_those_blocks():
    # A matrix product's rows may differ in their last bit with the rows it
    # multiplies: fixed blocks give the same bits as that pass, every time.
    keras.utils.set_random_seed(0)
    dense = keras.Sequential([keras.Input((300,)), layers.Dense(64)])
    x = np.random.default_rng(0).random((12_000, 300), dtype=np.float32)
    cache = FeatureCache(
        dense.layers, {"train": x}, memory_limit=2**30, measure_blocks=False
    )
    size = blocks.fixed_size(300 * 4)
    expected = np.concatenate(
        [dense(x[i : i + size]).numpy() for i in range(0, len(x), size)]
    )
    assert cache.block_size == size
    np.testing.assert_array_equal(cache.features["train"].numpy(), expected)


def test_a_run_seeded_or_not_fills_in_fixed_blocks():
    from transferkit import LayerGroup, TransferRun

    def run(seed):
        model = LayerGroup("a", [layers.Dense(2)], input_shape=(3,)) + LayerGroup(
            "b", [layers.Dense(2)]
        )
        return TransferRun(model, optimizer="adam", loss="mse", seed=seed)

    assert run(0)._runner.training_options.measure_blocks is False
    assert run(None)._runner.training_options.measure_blocks is False
