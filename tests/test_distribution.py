"""Runs under a `tf.distribute` strategy: two replicas on the two logical CPU
devices that `conftest` makes, against the same run on one device."""

import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import (
    Crash,
    CrashAfterEpoch,
    Epochs,
    bitwise_equal,
    make_data,
    make_model,
    snapshot,
)
from keras import layers
from tiny import run_options

from transferkit import LayerGroup, TransferRun
from transferkit.engine.distribution import Distribution, local_values

SPARSE = "sparse_categorical_crossentropy"


def scope(strategy):
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def make_run(strategy, model=make_model, **kwargs):
    """A seeded run whose model is built under `strategy` (or on one device)."""
    keras.utils.set_random_seed(0)
    with scope(strategy):
        built = model()
    kwargs = {
        "verbose": 0,
        "seed": 1,
        "batch_size": 16,
        "optimizer": lambda: keras.optimizers.SGD(0.05, momentum=0.9),
        **kwargs,
    }
    return TransferRun(
        built,
        loss=SPARSE,
        metrics=["accuracy"],
        strategy=strategy,
        **run_options(kwargs),
    )


def two_phases(run, data, epochs=2):
    first = run.train(data, epochs=epochs, validation_data=data)
    second = run.fine_tune(data, freeze="features", epochs=epochs, validation_data=data)
    return first, second


def assert_replicas_identical(model):
    for variable in model.variables:
        copies = local_values(variable)
        assert len(copies) == 2, variable.path
        assert bitwise_equal(copies[0], copies[1]), variable.path


def model_with_batch_norm_in_the_head():
    features = LayerGroup(
        "features",
        [layers.Conv2D(4, 3), layers.BatchNormalization(), layers.Flatten()],
        input_shape=(8, 8, 1),
    )
    head = LayerGroup(
        "classifier",
        [
            layers.Dense(8),
            layers.BatchNormalization(),
            layers.Activation("relu"),
            layers.Dense(3, activation="softmax"),
        ],
    )
    return features + head


def test_two_replicas_train_what_one_device_trains(strategy):
    # 48 samples in batches of 16: every step's batch splits 8 + 8, so the
    # summed gradients are the one-device gradients up to rounding.
    data = make_data()
    one, two = make_run(None), make_run(strategy)
    single = two_phases(one, data)
    mirrored = two_phases(two, data)

    assert_replicas_identical(two.model)
    for a, b in zip(one.model.weights, two.model.weights, strict=True):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(a), local_values(b)[0], rtol=1e-4, atol=1e-6
        )
    for ours, reference in zip(mirrored, single, strict=True):
        assert ours.history.keys() == reference.history.keys()
        for key in ours.history:
            np.testing.assert_allclose(
                ours.history[key], reference.history[key], rtol=1e-4
            )
    assert mirrored[1].frozen_unchanged is True
    assert mirrored[1].cached_layers > 0
    assert mirrored[1].training_loop == (
        "transferkit's, 3 steps per call; MirroredStrategy, 2 replicas"
    )


def test_frozen_groups_stay_bitwise_on_every_replica(strategy):
    run = make_run(strategy, model=lambda: make_model(batch_norm=True, dropout=True))
    run.train(make_data(), epochs=1)
    frozen = run.model.groups["features"].variables
    before = [local_values(v) for v in frozen]
    head = snapshot(run.model.groups["classifier"].variables)

    result = run.fine_tune(make_data(), freeze="features", epochs=2)

    assert result.frozen_unchanged is True and result.changed_variables == ()
    for variable, copies in zip(frozen, before, strict=True):
        for old, new in zip(copies, local_values(variable), strict=True):
            assert bitwise_equal(old, new), variable.path
    moved = snapshot(run.model.groups["classifier"].variables)
    assert all(not np.array_equal(moved[p], v) for p, v in head.items())
    assert_replicas_identical(run.model)


def test_trainable_batch_norm_statistics_agree_across_replicas(strategy):
    # Keras 3 updates each replica's moving statistics from its own half of
    # the batch; the loop averages them after every call, so the replicas
    # stay one model.
    run = make_run(strategy, model=model_with_batch_norm_in_the_head)
    statistics = run.model.layers[4].non_trainable_variables
    before = [local_values(v)[0] for v in statistics]

    run.fine_tune(make_data(), freeze="features", epochs=3)

    assert [v.name for v in statistics] == ["moving_mean", "moving_variance"]
    for variable, start in zip(statistics, before, strict=True):
        assert not np.array_equal(local_values(variable)[0], start), variable.path
    assert_replicas_identical(run.model)


def test_an_uneven_last_batch_and_an_empty_replica_still_train(strategy):
    # 40 samples in batches of 32: the last batch has 8 rows, 4 per replica;
    # 33 samples: the last has 1 row, and the second replica gets none.
    for samples in (40, 33):
        run = make_run(strategy, batch_size=32)
        result = run.fine_tune(make_data(samples=samples), freeze="features", epochs=2)
        assert result.frozen_unchanged is True
        assert np.isfinite(result.history["loss"]).all()
        assert_replicas_identical(run.model)


def test_an_interrupted_mirrored_run_resumes_from_its_folder(strategy, tmp_path):
    data = make_data()
    with pytest.raises(Crash):
        make_run(strategy, directory=tmp_path).fine_tune(
            data, freeze="features", epochs=4, callbacks=[CrashAfterEpoch(1)]
        )

    epochs = Epochs()
    run = make_run(strategy, directory=tmp_path)
    result = run.fine_tune(data, freeze="features", epochs=4, callbacks=[epochs])

    assert epochs.seen == [2, 3]
    assert len(result.history["loss"]) == 4
    assert result.frozen_unchanged is True
    assert local_values(run.model.optimizer.iterations)[0] == 4 * 3  # 3 an epoch.
    assert_replicas_identical(run.model)


def test_datasets_train_with_fit_under_mirrored_strategy(strategy):
    x, y = make_data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    run = make_run(strategy)

    result = run.fine_tune(dataset, freeze="features", epochs=2)

    assert result.training_loop == "Keras fit: `data` is a tf.data.Dataset"
    assert result.frozen_unchanged is True
    assert_replicas_identical(run.model)


def test_evaluate_under_a_strategy_matches_one_device(strategy):
    data = make_data()
    one, two = make_run(None), make_run(strategy)
    for run in (one, two):
        run.fine_tune(data, freeze="features", epochs=1)

    assert two.evaluate(data) == pytest.approx(one.evaluate(data), rel=1e-4)


def test_a_model_built_outside_the_strategy_is_refused(strategy):
    with pytest.raises(
        ValueError,
        match=r"The model's variables must be created under the strategy: build "
        r"the model \(and split any backbone\) inside `with strategy.scope\(\):`\. "
        r"Received: variable 'grouped_sequential.*/kernel' made outside it\.",
    ):
        TransferRun(make_model(), optimizer="sgd", loss=SPARSE, strategy=strategy)


def test_a_batch_that_does_not_split_evenly_is_refused(strategy):
    with pytest.raises(
        ValueError,
        match=r"Expected `batch_size` to be a multiple of the strategy's 2 "
        r"replicas: it is the global batch, split evenly among them\. "
        r"Received: batch_size=15",
    ):
        make_run(strategy, batch_size=15)


def test_other_strategies_are_refused():
    with pytest.raises(
        TypeError,
        match=r"Expected `strategy` to be a tf.distribute.MirroredStrategy .* "
        r"Received: strategy of type OneDeviceStrategy",
    ):
        TransferRun(
            make_model(),
            optimizer="sgd",
            loss=SPARSE,
            strategy=tf.distribute.OneDeviceStrategy("/cpu:0"),
        )


def test_shards_of_several_workers_cover_the_rows_once():
    rows = np.arange(11)
    shards = []
    for worker in range(3):
        distribution = Distribution(None)
        distribution.workers, distribution.worker = 3, worker
        shards.append(distribution.shard(rows))

    assert [len(shard) for shard in shards] == [4, 4, 3]
    assert sorted(np.concatenate(shards).tolist()) == rows.tolist()


def test_the_lean_step_and_mixed_precision_work_under_a_strategy(strategy):
    run = make_run(
        strategy,
        model=lambda: make_model(dropout=True),
        lean_step=True,
        precision="mixed_bfloat16",
        optimizer=lambda: keras.optimizers.Adadelta(1.0),
    )

    first, second = two_phases(run, make_data())

    assert second.lean_step == "1 Dropout layers on bit masks; fused Adadelta updates"
    assert second.frozen_unchanged is True
    assert np.isfinite(second.history["loss"]).all()
    assert_replicas_identical(run.model)


def test_a_backbone_fine_tunes_at_its_cut_on_two_replicas(strategy):
    # The backbone's top trains with its BatchNormalization in inference
    # mode, on the features cached at the cut, the same on both replicas.
    def backbone():
        base = keras.applications.MobileNetV2(
            input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None
        )
        bottom, top = LayerGroup.split(base, at="block_12_add", names=["bottom", "top"])
        pooled = [
            layers.GlobalAveragePooling2D(),
            layers.Dense(3, activation="softmax"),
        ]
        return bottom + top + LayerGroup("head", pooled)

    run = make_run(strategy, model=backbone, batch_size=8)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 32, 32, 3)).astype("float32")

    result = run.fine_tune((x, np.arange(24) % 3), freeze="bottom", epochs=1)

    assert result.cached_layers == 116
    assert result.batch_norm.endswith("in inference mode")
    assert result.frozen_unchanged is True
    assert_replicas_identical(run.model)


def test_several_workers_leave_a_cache_too_large_for_memory_unbuilt():
    # Their loop trains from memory alone, so the phase runs uncached.
    from transferkit.cache.plan import plan_cache
    from transferkit.phases.training import TrainingOptions, _shard, build_phase_cache

    distribution = Distribution(None)
    distribution.workers = 2
    options = TrainingOptions(
        precision="float32",
        feature_cache=True,
        feature_cache_memory=1024,
        cache_folder=None,
        lean_step=False,
        distribution=distribution,
    )
    model = make_model()
    run = TransferRun(model, optimizer="sgd", loss=SPARSE)
    prepared = run._runner.prepare(make_data(), "data")
    model.groups["features"].trainable = False

    cache, plan = build_phase_cache(
        model, plan_cache(model, ["features"]), _shard(prepared, options), None, options
    )

    assert cache is None and plan.layers == 0
    assert plan.reason == (
        "its 13.5 KiB would exceed feature_cache_memory (1.0 KiB); transferkit's "
        "loop, which trains every multi-worker run, takes its data from memory: "
        "raise `feature_cache_memory` to cache"
    )


def test_learning_rate_multipliers_reach_every_replica(strategy):
    # A multiplier of 0 leaves a group that trains bitwise as it was.
    run = make_run(strategy)
    features = run.model.groups["features"].variables
    before = [local_values(v) for v in features]
    head = snapshot(run.model.groups["classifier"].variables)

    run.train(make_data(), epochs=1, lr_multipliers={"features": 0.0})

    for variable, copies in zip(features, before, strict=True):
        for old, new in zip(copies, local_values(variable), strict=True):
            assert bitwise_equal(old, new), variable.path
    moved = snapshot(run.model.groups["classifier"].variables)
    assert all(not np.array_equal(moved[p], v) for p, v in head.items())
