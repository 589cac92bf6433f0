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

from transferkit import LayerGroup, TransferRun
from transferkit.cache_plan import CODES, plan_cache
from transferkit.layer_behaviour import (
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
    results = {}
    for cache_datasets in (True, "deterministic"):
        run = TransferRun(
            grouped(),
            optimizer="sgd",
            loss=SPARSE,
            verbose=0,
            cache_datasets=cache_datasets,
        )
        results[cache_datasets] = run.fine_tune(dataset, freeze="features", epochs=1)

    uncached, declared = results[True], results["deterministic"]
    assert (uncached.cached_layers, uncached.cache_code) == (0, "dataset_random")
    assert "StatelessRandomUniformV2" in uncached.cache
    assert "cache_datasets='deterministic'" in uncached.cache
    assert declared.cached_layers > 0 and declared.cache_code == "covers_frozen"


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
            feature_cache=feature_cache,
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
