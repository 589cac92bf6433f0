"""Augmentation and preprocessing around the feature cache: what a layer or a
dataset computes is read from its graph, so that the cache is exact or says
plainly why it was not used."""

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import IMAGE_SHAPE, bitwise_equal, make_data, snapshot
from keras import layers

from transferkit import LayerGroup, Speed, TransferRun
from transferkit.cache.plan import CODES, plan_cache
from transferkit.groups.behaviour import (
    dataset_random_operations,
    training_behaviour,
    trains_nothing,
)

SPARSE = "sparse_categorical_crossentropy"


class Noisy(layers.Layer):
    """Draws `tf.random` numbers on every call, and takes no `training`."""

    def call(self, x):
        return x + tf.random.normal(tf.shape(x))


class DoubledInTraining(layers.Layer):
    """Deterministic, but computes otherwise in training."""

    def call(self, x, training=None):
        return x * 2.0 if training else x


def frozen_batch_norm():
    layer = layers.BatchNormalization()
    layer.trainable = False
    return layer


@pytest.mark.parametrize(
    "make, behaviour",
    [
        (lambda: layers.Dense(2), ""),
        (lambda: layers.Rescaling(1 / 255), ""),
        (lambda: layers.Lambda(keras.applications.mobilenet_v2.preprocess_input), ""),
        (frozen_batch_norm, ""),
        (layers.BatchNormalization, "behaves differently in training"),
        (DoubledInTraining, "behaves differently in training"),
        (lambda: layers.Dropout(0.5), "draws random numbers in training"),
        (lambda: layers.RandomFlip(), "draws random numbers in training"),
        (Noisy, "draws random numbers"),
    ],
    ids=[
        "dense",
        "rescaling",
        "lambda_preprocess_input",
        "frozen_batch_norm",
        "batch_norm",
        "training_argument",
        "dropout",
        "random_flip",
        "custom_random",
    ],
)
def test_what_a_layer_computes_is_read_from_its_graph(make, behaviour):
    layer = make()
    keras.Sequential([keras.Input((4, 4, 3)), layer])

    assert training_behaviour(layer) == behaviour


def test_a_datasets_random_operations_are_found_and_shuffling_is_not_one():
    x, y = make_data(samples=8)
    plain = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(8).batch(4)
    flip = layers.RandomFlip()

    augmented = plain.map(lambda x, y: (flip(x, training=True), y))
    legacy = plain.map(lambda x, y: (tf.image.random_flip_left_right(x), y))

    assert dataset_random_operations(plain) == []
    assert "StatelessRandomUniformV2" in dataset_random_operations(augmented)
    assert dataset_random_operations(legacy) == ["RandomUniform"]


def test_an_augmenting_dataset_runs_uncached_and_says_why():
    x, y = make_data(samples=16)
    flip = layers.RandomFlip()
    dataset = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .batch(8)
        .map(lambda x, y: (flip(x, training=True), y))
    )
    uncached, declared = fine_tuned_declaring(dataset)

    assert (uncached.cached_layers, uncached.cache_code) == (0, "dataset_random")
    assert "StatelessRandomUniformV2" in uncached.cache
    assert "cache_datasets='deterministic'" in uncached.cache
    assert declared.cached_layers > 0 and declared.cache_code == "covers_frozen"


def test_a_dataset_that_runs_python_code_runs_uncached_unless_declared():
    """Noise drawn by NumPy inside a tf.py_function, or by a generator, is
    no random operation of the graph; the cache cannot see it, so it does
    not cache such a pipeline unless told it gives the same samples."""
    x, y = make_data(samples=16)

    def noisy(images):
        return images + np.random.normal(size=images.shape).astype("float32")

    def generated():
        for index in range(16):
            yield noisy(x[index]), y[index]

    mapped = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .batch(8)
        .map(lambda x, y: (tf.py_function(noisy, [x], tf.float32), y))
        .map(lambda x, y: (tf.ensure_shape(x, (None, *IMAGE_SHAPE)), y))
    )
    generator = tf.data.Dataset.from_generator(
        generated,
        output_signature=(
            tf.TensorSpec(IMAGE_SHAPE, tf.float32),
            tf.TensorSpec((), tf.int64),
        ),
    ).batch(8)
    generator = generator.apply(tf.data.experimental.assert_cardinality(2))
    for dataset, operation in ((mapped, "EagerPyFunc"), (generator, "PyFunc")):
        uncached, declared = fine_tuned_declaring(dataset)
        assert (uncached.cached_layers, uncached.cache_code) == (0, "dataset_opaque")
        assert operation in uncached.cache and "whose draws the cache" in uncached.cache
        assert declared.cache_code == "covers_frozen"


def test_a_sweep_before_a_phase_with_augmented_views_runs_and_keeps_them():
    """The sweep takes no views (they are the phase's), so it runs on the
    data as it is; the phase after it still caches its augmented views."""
    data = make_data(samples=24)
    model = grouped([front("augment", layers.RandomFlip(name="flip"))])
    run = TransferRun(model, optimizer="sgd", loss=SPARSE, verbose=0)

    sweep = run.find_learning_rate(data, freeze="features", steps=5)
    result = run.fine_tune(data, freeze="features", epochs=1, augmented_views=2)

    assert len(sweep.learning_rates) == 5
    assert (result.cached_layers, result.cache_code) == (3, "augmented_views")


def fine_tuned_declaring(dataset):
    """The results of one fine-tuning phase on `dataset` with
    `cache_datasets=True`, and of one with `"deterministic"`."""
    results = []
    for cache_datasets in (True, "deterministic"):
        run = TransferRun(
            grouped(),
            optimizer="sgd",
            loss=SPARSE,
            verbose=0,
            speed=Speed(cache_datasets=cache_datasets),
        )
        results.append(run.fine_tune(dataset, freeze="features", epochs=1))
    return results


def grouped(front=(), features=None):
    """`front` groups, then 'features' (frozen by the tests) and a head."""
    features = LayerGroup(
        "features",
        features or [layers.Conv2D(4, 3), layers.Flatten()],
        input_shape=None if front else IMAGE_SHAPE,
    )
    head = LayerGroup("classifier", [layers.Dense(3, activation="softmax")])
    model = features + head
    for group in reversed(front):
        model = group + model
    return model


def front(name, *front_layers):
    return LayerGroup(name, list(front_layers), input_shape=IMAGE_SHAPE)


def test_preprocessing_in_front_needs_no_freezing_and_is_cached():
    model = grouped([front("scale", layers.Rescaling(0.5))])

    plan = plan_cache(model, ["features"])

    assert trains_nothing(model.groups["scale"])
    assert (plan.layers, plan.code) == (3, "covers_frozen")
    assert plan.span.startswith("rescaling")


def test_a_lambda_of_preprocess_input_is_cached():
    preprocess = layers.Lambda(keras.applications.mobilenet_v2.preprocess_input)
    model = grouped(features=[preprocess, layers.Conv2D(4, 3), layers.Flatten()])

    plan = plan_cache(model, ["features"])

    assert (plan.layers, plan.code) == (3, "covers_frozen")


@pytest.mark.parametrize(
    "layer, code, behaviour",
    [
        (Noisy(), "random_layer", "draws random numbers"),
        (DoubledInTraining(), "training_layer", "behaves differently in training"),
    ],
    ids=["custom_random", "training_argument"],
)
def test_a_custom_layer_that_varies_stops_the_cache(layer, code, behaviour):
    model = grouped(features=[layers.Conv2D(4, 3), layer, layers.Flatten()])

    plan = plan_cache(model, ["features"])

    assert (plan.layers, plan.code) == (1, code)
    assert plan.reason.endswith(f"({type(layer).__name__}), which {behaviour}")


def test_augmentation_in_front_turns_the_cache_off_with_the_reason():
    model = grouped([front("augment", layers.RandomFlip(name="flip"))])

    plan = plan_cache(model, ["features"])

    assert (plan.layers, plan.code) == (0, "random_layer")
    assert plan.reason == (
        "layer 'flip' (RandomFlip), which draws random numbers in training, "
        "comes before the frozen groups"
    )


def test_a_cached_phase_behind_preprocessing_trains_as_the_uncached_one():
    data = make_data(samples=24)
    weights = {}
    for feature_cache in (True, False):
        keras.utils.set_random_seed(5)
        model = grouped([front("scale", layers.Rescaling(0.5))])
        run = TransferRun(
            model,
            optimizer="sgd",
            loss=SPARSE,
            verbose=0,
            batch_size=24,
            speed=Speed(feature_cache=feature_cache),
        )
        frozen = snapshot(model.groups["features"].variables)
        result = run.fine_tune(data, freeze="features", epochs=2)
        assert result.frozen_unchanged is True
        after = snapshot(model.groups["features"].variables)
        assert all(bitwise_equal(frozen[p], after[p]) for p in frozen)
        weights[feature_cache] = [
            w.numpy() for w in model.groups["classifier"].variables
        ]
        assert result.cached_layers == (3 if feature_cache else 0)
    for cached, plain in zip(weights[True], weights[False], strict=True):
        np.testing.assert_allclose(cached, plain, rtol=1e-5, atol=1e-6)


def test_every_code_is_documented():
    text = (Path(__file__).parents[1] / "docs" / "image-folders.md").read_text()
    assert all(f"`{code}`" in text for code in CODES)


class Offset(layers.Layer):
    """In training, adds 1000 times a random 0 or 1 to each sample: a view's
    number is readable from the output."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(3)

    def call(self, x, training=None):
        if not training:
            return x
        shape = (keras.ops.shape(x)[0], 1)
        draw = keras.random.randint(shape, 0, 2, seed=self.seed_generator)
        return x + 1000.0 * keras.ops.cast(draw, x.dtype)


@pytest.mark.parametrize("memory_limit", [2**30, 0], ids=["memory", "disk"])
def test_augmented_views_hold_k_draws_and_each_epoch_takes_one_per_sample(
    memory_limit,
):
    from transferkit.cache.features import FeatureCache

    samples = np.arange(40, dtype="float32")[:, None]
    cache = FeatureCache(
        [Offset(), layers.Identity()],
        {"train": samples, "validation": samples},
        memory_limit=memory_limit,
        views=2,
        augmenting=1,
    )
    try:
        batches = cache.dataset("train", np.arange(40), 16, shuffle=True)
        epochs = []
        for _ in range(3):
            if memory_limit:
                epochs.append(list(batches.as_numpy_iterator()))
            else:  # A PyDataset of the files, as fit reads it.
                epochs.append([batches[i] for i in range(len(batches))])
                batches.on_epoch_end()
        validation = cache.features["validation"]
        held = validation.read(np.arange(40)) if memory_limit == 0 else validation
    finally:
        cache.close()
    seen_views = set()
    for epoch in epochs:
        values = np.concatenate([x for x, _ in epoch])[:, 0]
        labels = np.concatenate([y for _, y in epoch])
        assert sorted(values % 1000) == list(range(40))  # Each sample once,
        np.testing.assert_array_equal(values % 1000, labels)  # with its label,
        seen_views |= set((values // 1000).tolist())  # in one of two views.
    assert seen_views == {0, 1}
    np.testing.assert_array_equal(np.asarray(held), samples)  # Not augmented.


def test_augmented_views_cache_the_frozen_layers_behind_augmentation():
    data = make_data(samples=24)
    model = grouped([front("augment", layers.RandomFlip(name="flip"))])
    run = TransferRun(model, optimizer="sgd", loss=SPARSE, verbose=0)
    frozen = snapshot(model.groups["features"].variables)

    result = run.fine_tune(
        data, freeze="features", epochs=2, validation_data=data, augmented_views=3
    )

    after = snapshot(model.groups["features"].variables)
    assert all(bitwise_equal(frozen[p], after[p]) for p in frozen)
    assert (result.cached_layers, result.cache_code) == (3, "augmented_views")
    assert result.cache.endswith(
        "3 fixed augmented views: flip drew 3 times per sample, once for the "
        "phase; each epoch trains on one view of each sample, not on fresh draws"
    )
    assert "MiB in memory, 3 fixed augmented views;" in result.cache
    assert result.training_loop_code == "own"
