"""The frozen-prefix feature cache: exact, skipped with a reason, spilled to
disk when large."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import (
    IMAGE_SHAPE,
    bitwise_equal,
    image_folder,
    make_data,
    make_model,
    snapshot,
)
from keras import layers
from tiny import run_options

from transferkit import LayerGroup, Speed, TransferRun
from transferkit.backbones import load_backbone
from transferkit.cache.features import FeatureCache, FeatureFile
from transferkit.cache.plan import plan_cache

SPARSE = "sparse_categorical_crossentropy"


def fine_tuned(model, data, *, epochs=3, batch_size=None, **kwargs):
    """Trains `model` one epoch, then fine-tunes it with 'features' frozen;
    returns the fine-tuning result."""
    kwargs.setdefault("verbose", 0)
    run = TransferRun(
        model,
        optimizer=lambda: keras.optimizers.Adam(0.01),
        loss=SPARSE,
        metrics=["accuracy"],
        batch_size=batch_size or len(data[0]),
        seed=7,
        **run_options(kwargs),
    )
    run.train(data, epochs=1)
    return run.fine_tune(data, freeze=["features"], epochs=epochs, validation_data=data)


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "batch_norm"])
def test_cached_and_uncached_fine_tuning_give_the_same_head(batch_norm):
    # One batch per epoch, so both paths see the same batches.
    data = make_data(samples=64)
    weights = []
    for feature_cache in (True, False):
        keras.utils.set_random_seed(3)
        model = make_model(batch_norm=batch_norm)
        result = fine_tuned(model, data, feature_cache=feature_cache)
        weights.append(
            [
                list(snapshot(model.groups[name].variables).values())
                for name in ("classifier", "features")
            ]
        )
        if feature_cache:
            assert result.cached_layers == len(model.groups["features"])
            assert "in memory" in result.cache
        else:
            assert result.cached_layers == 0
            assert result.cache == "not used: turned off (feature_cache=False)"
        assert result.frozen_unchanged is True
    (cached_head, cached_frozen), (plain_head, plain_frozen) = weights
    for cached, plain in zip(cached_head, plain_head, strict=True):
        np.testing.assert_allclose(cached, plain, rtol=1e-5, atol=1e-6)
    for cached, plain in zip(cached_frozen, plain_frozen, strict=True):
        assert bitwise_equal(cached, plain)


def test_the_cache_changes_the_weights_it_trains(data):
    model = make_model()
    result = fine_tuned(model, data, epochs=1)
    before = snapshot(model.groups["classifier"].variables)
    run = TransferRun(model, optimizer="sgd", loss=SPARSE, verbose=0)
    second = run.fine_tune(data, freeze=["features"], epochs=1)

    after = snapshot(model.groups["classifier"].variables)
    assert result.cached_layers == second.cached_layers == 3
    assert all(not np.array_equal(before[p], after[p]) for p in before)


def dropout_model(position):
    """'features' of Conv2D, ReLU, Flatten with a Dropout at `position`."""
    feature_layers = [layers.Conv2D(4, 3), layers.Activation("relu"), layers.Flatten()]
    feature_layers.insert(position, layers.Dropout(0.5, name="noisy"))
    features = LayerGroup("features", feature_layers, input_shape=IMAGE_SHAPE)
    head = LayerGroup("classifier", [layers.Dense(3, activation="softmax")])
    return features + head


def test_the_cache_stops_before_a_stochastic_layer_in_the_frozen_groups(data):
    model = dropout_model(position=2)

    result = fine_tuned(model, data, epochs=1)

    assert result.cached_layers == 2
    assert "layers conv2d" in result.cache
    assert "stops before layer 'noisy' (Dropout), which" in result.cache
    assert result.cache_code == "random_layer"
    assert result.frozen_unchanged is True


def test_a_frozen_prefix_that_starts_with_a_stochastic_layer_is_not_cached(data):
    result = fine_tuned(dropout_model(position=0), data, epochs=1)

    assert result.cached_layers == 0
    assert result.cache_code == "random_layer"
    assert result.cache == (
        "not used: the first frozen layer 'noisy' (Dropout), which draws random "
        "numbers in training"
    )


def test_frozen_groups_that_do_not_start_the_model_are_not_cached(data):
    model = make_model()
    run = TransferRun(model, optimizer="sgd", loss=SPARSE, verbose=0)

    result = run.fine_tune(data, freeze=["classifier"], epochs=1)

    assert result.cached_layers == 0
    assert result.cache_code == "frozen_not_first"
    assert result.cache == (
        "not used: the frozen groups ['classifier'] do not start the model (group "
        "'features', before them, trains)"
    )


@pytest.mark.parametrize(
    "layer, code",
    [
        (layers.GaussianNoise(0.1), "random_layer"),
        (layers.RandomFlip(seed=1), "random_layer"),
        (layers.BatchNormalization(), None),
    ],
    ids=["noise", "augmentation", "frozen_batch_norm"],
)
def test_the_plan_names_what_depends_on_training(layer, code):
    features = LayerGroup(
        "features", [layer, layers.Flatten()], input_shape=IMAGE_SHAPE
    )
    model = features + LayerGroup("classifier", [layers.Dense(3)])
    features.trainable = False

    plan = plan_cache(model, ["features"])

    if code is None:
        assert plan.layers == 2
        assert plan.code == "covers_frozen"
    else:
        assert plan.layers == 0
        assert plan.code == code
        assert "draws random numbers in training" in plan.reason


def test_a_dataset_is_not_cached(data):
    model = make_model()
    run = TransferRun(model, optimizer="sgd", loss=SPARSE, verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices(data).batch(16)

    result = run.fine_tune(dataset, freeze=["features"], epochs=1)

    assert result.cache_code == "dataset_not_declared"
    assert result.cache == (
        "not used: `data` is a tf.data.Dataset, which may change from epoch to "
        "epoch; pass cache_datasets=True if it is finite and gives the same "
        "samples every epoch"
    )


def test_a_cache_over_the_memory_bound_goes_to_disk_and_gives_the_same_head(
    tmp_path,
):
    data = make_data(samples=64)
    heads = []
    for limit in (2**30, 0):
        keras.utils.set_random_seed(3)
        model = make_model()
        folder = tmp_path / f"run-{limit}"
        result = fine_tuned(model, data, feature_cache_memory=limit, directory=folder)
        heads.append(list(snapshot(model.groups["classifier"].variables).values()))
        where = "in memory" if limit else f"on disk in {str(folder)!r}"
        assert where in result.cache
        assert result.cache_code == "covers_frozen"
        assert not list(folder.glob("*cache-*"))  # Deleted after the phase.
    for in_memory, on_disk in zip(*heads, strict=True):
        np.testing.assert_allclose(in_memory, on_disk, rtol=1e-5)


def test_a_cache_on_disk_without_a_directory_uses_a_temporary_folder(data):
    result = fine_tuned(make_model(), data, epochs=1, feature_cache_memory=0)

    folder = result.cache.split("on disk in '")[1].split("'")[0]
    assert "transferkit-cache-" in folder
    assert not tf.io.gfile.exists(folder)


def test_a_feature_file_reads_rows_in_the_order_asked(tmp_path):
    rows = np.arange(40, dtype="float32").reshape(10, 2, 2)
    features = FeatureFile(tmp_path / "f.bin", rows.shape[1:], rows.dtype)
    features.append(rows[:6])
    features.append(rows[6:])

    indices = np.array([7, 2, 9, 2, 0])
    np.testing.assert_array_equal(features.read(indices), rows[indices])
    features.close()
    assert not (tmp_path / "f.bin").exists()


def test_cached_features_equal_the_frozen_layers_in_inference(data):
    model = make_model(batch_norm=True)
    prefix = list(model.groups["features"])
    x = data[0]

    cache = FeatureCache(prefix, {"train": x}, memory_limit=2**30)

    expected = x
    for layer in prefix:
        expected = layer(expected, training=False)
    np.testing.assert_allclose(cache.features["train"], expected, rtol=1e-6)
    assert cache.nbytes == expected.shape.num_elements() * 4
    cache.close()


def image_model():
    features = LayerGroup(
        "features",
        [layers.Rescaling(1 / 255), layers.Conv2D(4, 3), layers.Flatten()],
        input_shape=(12, 12, 3),
    )
    return features + LayerGroup("classifier", [layers.Dense(3, activation="softmax")])


def folder_run(path, **kwargs):
    dataset = keras.utils.image_dataset_from_directory(
        path, image_size=(12, 12), batch_size=24, shuffle=False, verbose=False
    )
    keras.utils.set_random_seed(4)
    model = image_model()
    run = TransferRun(
        model,
        optimizer=lambda: keras.optimizers.SGD(0.01),
        loss=SPARSE,
        verbose=0,
        **run_options(kwargs),
    )
    result = run.fine_tune(
        dataset, freeze="features", epochs=2, validation_data=dataset
    )
    return model, result


def test_an_image_folder_dataset_is_cached_when_the_user_opts_in(tmp_path):
    path = image_folder(tmp_path / "images")

    cached_model, cached = folder_run(path, cache_datasets=True)
    plain_model, plain = folder_run(path)

    assert re.fullmatch(
        r"0\.\d MiB in memory; layers rescaling\w*\.\.flatten\w*: covers the "
        r"frozen groups",
        cached.cache,
    )
    assert cached.cached_layers == 3
    assert (cached.cache_code, plain.cache_code) == (
        "covers_frozen",
        "dataset_not_declared",
    )
    assert cached.frozen_unchanged and plain.frozen_unchanged
    # One batch an epoch: the same gradient, summed in another order.
    for a, b in zip(cached_model.weights, plain_model.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        cached.history["val_loss"], plain.history["val_loss"], rtol=1e-5
    )


def test_a_cached_dataset_keeps_its_labels_with_its_samples(tmp_path):
    path = image_folder(tmp_path / "images")
    dataset = keras.utils.image_dataset_from_directory(
        path, image_size=(12, 12), batch_size=5, shuffle=True, seed=1, verbose=False
    )
    identity = [layers.Flatten()]

    cache = FeatureCache(identity, {"train": dataset}, memory_limit=2**20)

    # Each class has its own pixel range: the label follows from the sample.
    features = cache.features["train"].numpy()
    labels = cache.labels["train"]
    assert len(features) == len(labels) == 24 and cache.batch_sizes["train"] == 5
    np.testing.assert_array_equal(labels, (features.min(axis=1) // 60).astype(int))


def mobilenet_v3_phase(feature_cache):
    """MobileNetV3Small (random weights, 32x32) cut at its catalogue stages
    under a small head, fine-tuned one epoch with all stages but the last
    frozen; returns the model and the phase's result."""
    keras.utils.set_random_seed(3)
    backbone = load_backbone("MobileNetV3Small", weights=None, image_size=32)
    model = backbone.groups[0]
    for group in backbone.groups[1:]:
        model = model + group
    model = model + LayerGroup(
        "head",
        [layers.GlobalAveragePooling2D(), layers.Dense(3, activation="softmax")],
    )
    rng = np.random.default_rng(0)
    y = np.arange(32) % 3
    x = rng.uniform(0, 255, size=(32, 32, 32, 3)).astype("float32")
    run = TransferRun(
        model,
        optimizer=lambda: keras.optimizers.SGD(0.05),
        loss=SPARSE,
        batch_size=16,
        verbose=0,
        seed=3,
        speed=Speed(feature_cache=feature_cache),
    )
    result = run.fine_tune((x, y), freeze=backbone.stages[:-1], epochs=1)
    return model, result


def test_a_cut_between_non_layer_operations_ends_the_cache_exactly():
    # MobileNetV3's hard sigmoid (`x + 3.0`, `* (1 / 6)`) runs Keras
    # operations that are not layers between its layers; its stage cuts are
    # crossed by one tensor all the same.
    cached_model, cached = mobilenet_v3_phase(True)
    plain_model, plain = mobilenet_v3_phase(False)

    assert cached.cache_code == "covers_frozen"
    assert cached.cached_layers == 110
    assert cached.cache.endswith(
        "layers pixels..expanded_conv_7_add: ends at 'expanded_conv_7_add' "
        "in 'MobileNetV3Small', covers the frozen groups"
    )
    assert plain.cache_code == "off"
    assert cached.frozen_unchanged is True and plain.frozen_unchanged is True
    # The frozen stages bitwise; what trains to the tolerance of the tests
    # above (the rest of the backbone's graph runs apart from its front).
    for name, group in cached_model.groups.items():
        cached_values = snapshot(group.variables).values()
        plain_values = snapshot(plain_model.groups[name].variables).values()
        for a, b in zip(cached_values, plain_values, strict=True):
            if name in ("stage_5", "head"):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
            else:
                assert bitwise_equal(a, b)


def skipping_model(skip):
    """Conv2D 'a', 'b', 'c' split after 'b' into 'bottom' and 'top', with a
    Keras operation (not a layer) after 'c': with `skip`, an add of 'a' and
    'c' (a shortcut over the cut); else a hard sigmoid of 'c'."""
    inputs = keras.Input(IMAGE_SHAPE)
    a = layers.Conv2D(4, 3, padding="same", name="a")(inputs)
    b = layers.Conv2D(4, 3, padding="same", name="b")(a)
    c = layers.Conv2D(4, 3, padding="same", name="c")(b)
    joined = keras.ops.add(a, c) if skip else keras.ops.relu6(c + 3.0) / 6.0
    outputs = layers.Flatten(name="flat")(joined)
    bottom, top = LayerGroup.split(
        keras.Model(inputs, outputs, name="skipping"),
        at="b",
        names=["bottom", "top"],
    )
    model = bottom + top + LayerGroup("classifier", [layers.Dense(3)])
    bottom.trainable = False
    return model


def test_a_cut_crossed_by_a_shortcut_through_an_operation_is_not_used():
    plan = plan_cache(skipping_model(skip=True), ["bottom"])

    assert plan.code == "moved_back"
    assert plan.layers == 2
    assert plan.reason == (
        "ends at 'a' in 'skipping', covers the frozen groups; moved back from "
        "'b', where 2 tensors cross the cut (from ['b', 'a'])"
    )


def test_a_cut_before_operations_that_use_its_output_alone_is_used():
    model = skipping_model(skip=False)
    x = make_data(samples=4)[0]
    expected = keras.ops.convert_to_numpy(model(x, training=False))

    plan = plan_cache(model, ["bottom"])

    assert (plan.code, plan.layers, plan.span) == ("covers_frozen", 3, "a..b")
    for layer in plan.front + plan.rest:
        x = layer(x, training=False)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(x), expected)


def test_a_split_sequential_is_cached_up_to_its_cut():
    inner = keras.Sequential(
        [
            keras.Input(IMAGE_SHAPE),
            layers.Conv2D(4, 3, name="a"),
            layers.Conv2D(4, 3, name="b"),
            layers.Flatten(name="flat"),
        ],
        name="inner",
    )
    bottom, top = LayerGroup.split(inner, at="a", names=["bottom", "top"])
    model = bottom + top + LayerGroup("classifier", [layers.Dense(3)])
    bottom.trainable = False
    x = make_data(samples=4)[0]
    expected = keras.ops.convert_to_numpy(model(x, training=False))

    plan = plan_cache(model, ["bottom"])

    assert (plan.code, plan.layers, plan.span) == ("covers_frozen", 1, "a")
    for layer in plan.front + plan.rest:
        x = layer(x, training=False)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(x), expected)
