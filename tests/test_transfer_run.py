import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import (
    NUM_CLASSES,
    bitwise_equal,
    fine_tune_checked,
    make_data,
    make_model,
    snapshot,
)
from tiny import run_options

from transferkit import ClassSubset, TransferRun

SPARSE = "sparse_categorical_crossentropy"


def make_run(model, optimizer="sgd", loss=SPARSE, **kwargs):
    kwargs.setdefault("verbose", 0)
    return TransferRun(model, optimizer=optimizer, loss=loss, **run_options(kwargs))


OPTIMIZERS = {
    "factory": lambda: keras.optimizers.Adadelta(learning_rate=1.0),
    "instance": keras.optimizers.Adam(learning_rate=0.01),
    "string": "rmsprop",
    "adamw_weight_decay": keras.optimizers.AdamW(learning_rate=0.01, weight_decay=0.5),
}


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "batch_norm"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_fine_tuning_leaves_frozen_weights_bitwise_unchanged(optimizer, batch_norm):
    model = make_model(batch_norm=batch_norm)
    run = make_run(model, optimizer=optimizer)
    data = make_data()
    run.train(data, epochs=1)

    result = fine_tune_checked(run, data)

    assert result.frozen_groups == ("features",)
    assert result.frozen_unchanged is True
    assert result.changed_variables == ()


def test_frozen_batch_norm_statistics_hold_still_while_trainable_ones_move():
    model = make_model(batch_norm=True)
    run = make_run(model)
    data = make_data()
    batch_norm = model.groups["features"][1]
    initial = snapshot(batch_norm.non_trainable_weights)

    run.train(data, epochs=1)
    trained = snapshot(batch_norm.non_trainable_weights)
    run.fine_tune(data, freeze="features", epochs=2)
    fine_tuned = snapshot(batch_norm.non_trainable_weights)

    assert len(initial) == 2  # moving_mean, moving_variance
    for path in initial:
        assert not np.array_equal(trained[path], initial[path])  # Training moves them,
        assert bitwise_equal(fine_tuned[path], trained[path])  # frozen they hold.


def test_the_run_detects_a_frozen_weight_that_changed():
    model = make_model()
    run = make_run(model)
    kernel = model.groups["features"][0].kernel

    class Tamper(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            kernel.assign(kernel + 1.0)

    result = run.fine_tune(
        make_data(), freeze="features", epochs=1, callbacks=[Tamper()]
    )

    assert result.frozen_unchanged is False
    assert result.changed_variables == (kernel.path,)


def test_fine_tuning_recompiles_so_only_the_head_is_trained():
    model = make_model(batch_norm=True)
    run = make_run(model, optimizer="adam")
    data = make_data()
    first = run.train(data, epochs=1)
    first_optimizer = model.optimizer

    second = run.fine_tune(data, freeze=["features"], epochs=1)

    head_ids = [id(v) for v in model.groups["classifier"].variables]
    assert [id(v) for v in model.trainable_weights] == head_ids
    assert model.optimizer is not first_optimizer
    # Adam keeps two slots per trained variable: only the head's exist.
    slots = [v for v in model.optimizer.variables if "iteration" not in v.path]
    slots = [v for v in slots if "learning_rate" not in v.path]
    assert len(slots) == 2 * len(head_ids)
    head_params = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    assert second.trainable_params == head_params
    assert first.trainable_params + 0 > second.trainable_params
    assert second.non_trainable_params == sum(
        int(np.prod(v.shape)) for v in model.non_trainable_weights
    )


def test_an_optimizer_instance_is_copied_and_never_built():
    optimizer = keras.optimizers.Adam(learning_rate=0.02)
    model = make_model()
    run = make_run(model, optimizer=optimizer)
    run.train(make_data(), epochs=1)

    assert not optimizer.built
    assert model.optimizer is not optimizer
    assert model.optimizer.learning_rate.numpy() == pytest.approx(0.02)


def test_a_factory_that_returns_a_used_optimizer_is_rejected():
    shared = keras.optimizers.SGD()
    run = make_run(make_model(), optimizer=lambda: shared)
    run.train(make_data(), epochs=1)
    with pytest.raises(ValueError, match="already used"):
        run.fine_tune(make_data(), freeze="features", epochs=1)


def test_a_phase_may_override_the_optimizer():
    model = make_model()
    run = make_run(model, optimizer="adam")
    run.fine_tune(
        make_data(),
        freeze="features",
        epochs=1,
        optimizer=lambda: keras.optimizers.SGD(learning_rate=0.001),
    )
    assert isinstance(model.optimizer, keras.optimizers.SGD)


def test_the_adadelta_string_warns_about_its_keras_3_learning_rate():
    with pytest.warns(UserWarning, match="learning_rate=0.001; Keras 2 used 1.0"):
        make_run(make_model(), optimizer="adadelta")


@pytest.mark.parametrize("optimizer", [3, None], ids=repr)
def test_an_invalid_optimizer_is_a_type_error(optimizer):
    with pytest.raises(TypeError, match="optimizer name, an optimizer"):
        make_run(make_model(), optimizer=optimizer)


def test_integer_labels_are_one_hot_encoded_for_categorical_crossentropy():
    x, y = make_data()
    model = make_model()
    run = make_run(model, loss="categorical_crossentropy", metrics=["accuracy"])
    result = run.train((x, y), epochs=2, validation_data=(x, y))

    expected = model.evaluate(
        x, keras.utils.to_categorical(y, NUM_CLASSES), verbose=0, return_dict=True
    )
    assert result.metrics["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert result.metrics["accuracy"] == pytest.approx(expected["accuracy"])
    assert len(result.history["loss"]) == 2
    assert set(result.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}


def test_loss_objects_and_sparse_losses_take_integer_labels_too():
    for loss in (keras.losses.CategoricalCrossentropy(), SPARSE):
        result = make_run(make_model(), loss=loss).train(make_data(), epochs=1)
        assert np.isfinite(result.history["loss"][0])


@pytest.mark.parametrize("loss", ["categorical_crossentropy", SPARSE])
def test_labels_outside_the_output_width_are_rejected(loss):
    x, y = make_data()
    y[3] = NUM_CLASSES
    with pytest.raises(
        ValueError,
        match=r"class ids in \[0, 2\] for a model with 3 outputs. Received: \[3\]",
    ):
        make_run(make_model(), loss=loss).train((x, y), epochs=1)


def test_a_class_subset_records_its_classes_and_sample_count():
    x, y = make_data(samples=60, classes=6)
    subset = ClassSubset.select(x, y, classes=[5, 3, 4])
    result = make_run(make_model(), loss="categorical_crossentropy").train(
        subset, epochs=1
    )
    assert result.classes == (5, 3, 4)
    assert result.train_samples == len(subset) == 30


def test_validation_classes_must_match_the_training_classes():
    x, y = make_data(samples=60, classes=6)
    low = ClassSubset.select(x, y, classes=[0, 1, 2])
    high = ClassSubset.select(x, y, classes=[3, 4, 5])
    with pytest.raises(ValueError, match="other classes than the training data"):
        make_run(make_model()).train(high, epochs=1, validation_data=low)


def test_a_tf_data_dataset_with_integer_labels_trains_with_categorical_loss():
    x, y = make_data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    model = make_model()
    run = make_run(model, loss="categorical_crossentropy", metrics=["accuracy"])
    head = snapshot(model.groups["classifier"].variables)

    result = run.fine_tune(
        dataset, freeze="features", epochs=1, validation_data=dataset
    )

    assert result.train_samples is None
    assert result.frozen_unchanged is True
    assert 0 <= result.metrics["accuracy"] <= 1
    after = snapshot(model.groups["classifier"].variables)
    assert any(not np.array_equal(after[p], v) for p, v in head.items())


def test_a_dataset_with_labels_outside_the_output_width_fails_clearly():
    x, y = make_data()
    y[0] = 7
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    run = make_run(make_model(), loss="categorical_crossentropy")
    with pytest.raises(ValueError, match=r"class ids in \[0, 2\].*first batch: \[7\]"):
        run.train(dataset, epochs=1)


def test_an_unbuilt_model_is_built_from_the_data():
    from keras import layers

    from transferkit import LayerGroup

    model = LayerGroup("a", [layers.Dense(4)]) + LayerGroup("b", [layers.Dense(2)])
    run = make_run(model)
    x = np.random.rand(10, 3).astype("float32")
    result = run.fine_tune((x, np.arange(10) % 2), freeze="a", epochs=1)
    assert model.built and result.frozen_unchanged is True


def test_unknown_group_names_list_the_known_ones():
    run = make_run(make_model())
    message = (
        r"Unknown group 'featurez'. Expected one of \['features', 'classifier'\]. "
        r"Received: freeze=\['featurez'\]"
    )
    with pytest.raises(ValueError, match=message):
        run.fine_tune(make_data(), freeze=["featurez"], epochs=1)
    with pytest.raises(ValueError, match=message):
        run.freeze("featurez")
    with pytest.raises(ValueError, match="Received: unfreeze=\\['head'\\]"):
        run.unfreeze("head")
    assert run.results == []


def test_freezing_every_group_is_an_error_that_leaves_the_model_as_it_was():
    model = make_model()
    run = make_run(model)
    message = (
        r"Nothing left to train: .* \(frozen groups: \['features', 'classifier'\]\)"
    )
    with pytest.raises(ValueError, match=message):
        run.fine_tune(make_data(), freeze=["features", "classifier"], epochs=1)
    assert all(layer.trainable for layer in model.layers)


def test_freeze_and_unfreeze_plan_several_stages():
    model = make_model()
    run = make_run(model)
    data = make_data()

    run.freeze("features")
    first = run.train(data, epochs=1)
    run.unfreeze("features")
    run.freeze("classifier")
    second = run.train(data, epochs=1)
    run.unfreeze("classifier")
    third = run.train(data, epochs=1)

    assert [r.name for r in run.results] == ["train", "train_2", "train_3"]
    assert first.frozen_groups == ("features",) and first.frozen_unchanged
    assert second.frozen_groups == ("classifier",) and second.frozen_unchanged
    assert third.frozen_groups == () and third.frozen_unchanged is None
    assert run.results == [first, second, third]


def test_phase_results_are_complete_records():
    run = make_run(make_model(), metrics=["accuracy"])
    data = make_data()
    result = run.fine_tune(
        data, freeze="features", epochs=2, validation_data=data, name="head"
    )
    record = result.to_dict()
    assert record["name"] == "head" and record["epochs"] == 2
    assert record["train_samples"] == 48 and record["seconds"] > 0
    assert record["frozen_groups"] == ["features"]
    assert set(record["metrics"]) == {"loss", "accuracy"}
    assert record["metrics"]["loss"] == record["history"]["val_loss"][-1]
    with pytest.raises(ValueError, match="already has a phase named 'head'"):
        run.train(data, epochs=1, name="head")


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"epochs": 0}, ValueError, "Received: epochs=0"),
        ({"epochs": 1, "name": ""}, ValueError, "non-empty string"),
    ],
)
def test_invalid_phase_options_are_rejected(kwargs, error, message):
    with pytest.raises(error, match=message):
        make_run(make_model()).train(make_data(), **kwargs)


def test_invalid_data_is_rejected_with_what_is_accepted():
    run = make_run(make_model())
    x, y = make_data()
    with pytest.raises(
        TypeError, match=r"ClassSubset, an \(x, y\) or \(x, y, sample_weight\) tuple"
    ):
        run.train([x, y], epochs=1)
    with pytest.raises(ValueError, match=r"len\(x\)=47, len\(y\)=48"):
        run.train((x[1:], y), epochs=1)
    with pytest.raises(
        ValueError, match=r"shape \(64, 1\), but the model expects \(8, 8, 1\)"
    ):
        run.train((x.reshape(48, 64, 1), y), epochs=1)


def test_the_model_must_be_composed_from_groups():
    with pytest.raises(TypeError, match="composed from `LayerGroup`s"):
        TransferRun(
            keras.Sequential([keras.layers.Dense(1)]), optimizer="sgd", loss="mse"
        )
    with pytest.raises(ValueError, match="positive integer. Received: batch_size=0"):
        make_run(make_model(), batch_size=0)


def test_evaluate_uses_the_last_compiled_model():
    run = make_run(make_model(), loss="categorical_crossentropy", metrics=["accuracy"])
    with pytest.raises(RuntimeError, match="run a phase first"):
        run.evaluate(make_data())
    run.train(make_data(), epochs=1)
    scores = run.evaluate(make_data())
    assert set(scores) == {"loss", "accuracy"}


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_check_finite_names_the_samples_with_nan_or_infinity(bad):
    x, y = make_data()
    x[5, 0, 0, 0] = bad
    x[9, 3, 2, 0] = bad
    run = make_run(make_model(), check_finite=True)
    with pytest.raises(
        ValueError,
        match=r"NaN or infinite values in `data` \(x\): 2 samples, the first at index 5",
    ):
        run.train((x, y), epochs=1)
    with pytest.raises(ValueError, match=r"in `validation_data` \(x\)"):
        run.train(make_data(), epochs=1, validation_data=(x, y))
    assert run.results == []


def test_check_finite_looks_at_every_chunk_of_a_large_array():
    x = np.zeros((10_000, 4), "float32")
    x[9_999, 3] = np.nan
    from transferkit.data.prepare import require_finite

    with pytest.raises(ValueError, match="1 sample, the first at index 9999"):
        require_finite(x, "x", chunk=128)
    require_finite(np.zeros((3, 2), np.uint8), "integers are always finite")


def test_fewer_samples_than_one_batch_train_as_one_small_batch():
    x, y = make_data(samples=5)
    model = make_model()
    run = make_run(model, batch_size=128)
    head = snapshot(model.groups["classifier"].variables)

    result = run.fine_tune((x, y), freeze="features", epochs=2)

    assert result.train_samples == 5 and result.frozen_unchanged
    after = snapshot(model.groups["classifier"].variables)
    assert any(not np.array_equal(after[p], v) for p, v in head.items())


def one_sgd_step(lr_multipliers):
    """Each weight's change over one SGD step of the tiny model, and the
    starting weights."""
    keras.utils.set_random_seed(0)
    model = make_model()
    start = [np.array(keras.ops.convert_to_numpy(w)) for w in model.weights]
    run = make_run(model, optimizer=lambda: keras.optimizers.SGD(0.1), batch_size=48)
    result = run.train(make_data(), epochs=1, lr_multipliers=lr_multipliers)
    end = [np.array(keras.ops.convert_to_numpy(w)) for w in model.weights]
    return [e - s for e, s in zip(end, start, strict=True)], start, result


def test_a_head_multiplier_of_one_half_halves_the_heads_step_alone():
    full, start, _ = one_sgd_step(None)
    half, _, result = one_sgd_step({"classifier": 0.5})

    assert result.lr_multipliers == {"classifier": 0.5}
    features = len(make_model().groups["features"].variables)
    for index, (a, b, w) in enumerate(zip(full, half, start, strict=True)):
        assert np.any(a)
        if index < features:
            assert bitwise_equal(b, a)  # Exactly as much.
        else:  # Exactly half, but for the rounding of w - step.
            ulp = np.spacing(np.abs(w).max() + np.abs(a).max())
            assert np.abs(b - 0.5 * a).max() <= ulp


def test_bad_multipliers_are_refused():
    run = make_run(make_model())
    with pytest.raises(
        ValueError,
        match=r"Unknown group 'haed'\. Expected one of \['features', 'classifier'\]\. "
        r"Received: lr_multipliers=\['haed'\]",
    ):
        run.train(make_data(), epochs=1, lr_multipliers={"haed": 0.5})
    with pytest.raises(ValueError, match=r"finite numbers >= 0\. Received: .*-1"):
        run.train(make_data(), epochs=1, lr_multipliers={"classifier": -1})
    with pytest.raises(TypeError, match="map group names to numbers"):
        run.train(make_data(), epochs=1, lr_multipliers=0.5)
    assert run.results == []


def test_multipliers_are_part_of_the_plan_and_survive_a_resume(tmp_path):
    from conftest import Crash, CrashAfterEpoch

    from transferkit.errors import CheckpointError

    data = make_data()
    model = make_model()
    features = snapshot(model.groups["features"].variables)
    with pytest.raises(Crash):
        make_run(model, directory=tmp_path).train(
            data,
            epochs=3,
            lr_multipliers={"features": 0.0},
            callbacks=[CrashAfterEpoch(0)],
        )

    resumed = make_run(make_model(), directory=tmp_path)
    result = resumed.train(data, epochs=3, lr_multipliers={"features": 0.0})

    assert result.lr_multipliers == {"features": 0.0}
    after = list(snapshot(resumed.model.groups["features"].variables).values())
    assert all(
        bitwise_equal(a, b) for a, b in zip(features.values(), after, strict=True)
    )
    with pytest.raises(
        CheckpointError, match=r"lr_multipliers\.features: recorded 0\.0, now 0\.5"
    ):
        make_run(make_model(), directory=tmp_path).train(
            data, epochs=3, lr_multipliers={"features": 0.5}
        )
