"""transferkit's own loop: the same training as `fit`, many steps a call,
with what `fit` gives (callbacks, History, validation, stop_training, seeds,
checkpoints and resume)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import (
    Batches,
    Crash,
    CrashAfterEpoch,
    Epochs,
    bitwise_equal,
    make_data,
    make_model,
    snapshot,
)
from tiny import run_options

from transferkit import TransferRun

SPARSE = "sparse_categorical_crossentropy"


def make_run(loop="auto", dropout=True, **kwargs):
    kwargs = {"verbose": 0, "seed": 1, "batch_size": 16, **kwargs}
    keras.utils.set_random_seed(0)
    return TransferRun(
        make_model(dropout=dropout),
        optimizer=lambda: keras.optimizers.SGD(0.05),
        loss=SPARSE,
        metrics=["accuracy"],
        **run_options({"training_loop": loop, **kwargs}),
    )


def two_phases(run, data, **kwargs):
    first = run.train(data, epochs=2, validation_data=data, **kwargs)
    second = run.fine_tune(
        data, freeze="features", epochs=2, validation_data=data, **kwargs
    )
    return first, second


def weights(model):
    return [np.array(keras.ops.convert_to_numpy(w)) for w in model.weights]


def test_on_full_batches_the_loop_and_fit_train_the_same_model():
    # One batch an epoch: the same samples every step, in another order, so
    # the sums differ by rounding alone (without Dropout, whose masks would
    # fall on other samples).
    data = make_data()
    loop_run = make_run(dropout=False, batch_size=48)
    fit_run = make_run("fit", dropout=False, batch_size=48)

    loop = two_phases(loop_run, data)
    fit = two_phases(fit_run, data)

    assert [r.training_loop for r in loop] == [
        "transferkit's, 1 step per call",
        "transferkit's, 1 step per call",
    ]
    assert [r.training_loop for r in fit] == ["Keras fit: training_loop='fit'"] * 2
    for a, b in zip(weights(loop_run.model), weights(fit_run.model), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for ours, keras_ in zip(loop, fit, strict=True):
        assert ours.history.keys() == keras_.history.keys()
        for key in ours.history:
            np.testing.assert_allclose(
                ours.history[key], keras_.history[key], rtol=1e-5
            )
        assert ours.frozen_unchanged is keras_.frozen_unchanged


def test_the_loop_repeats_bitwise_from_the_same_seed():
    data = make_data()
    first, second = make_run(), make_run()
    two_phases(first, data)
    two_phases(second, data)
    assert all(
        bitwise_equal(a, b)
        for a, b in zip(weights(first.model), weights(second.model), strict=True)
    )


def test_the_loop_runs_many_steps_per_call_unless_a_callback_watches_batches():
    data = make_data(samples=96)  # 6 batches of 16.
    quiet = make_run().train(data, epochs=1, callbacks=[Epochs()])
    watcher = Batches()
    watched = make_run().train(data, epochs=1, callbacks=[watcher])
    grouped = make_run(steps_per_execution=4).train(
        data, epochs=1, callbacks=[Batches()]
    )

    assert quiet.training_loop == "transferkit's, 6 steps per call"  # The epoch.
    assert watched.training_loop == "transferkit's, 1 step per call"
    assert watcher.train == [0, 1, 2, 3, 4, 5]
    assert grouped.training_loop == "transferkit's, 4 steps per call"


def test_early_stopping_and_stop_training_end_the_phase():
    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True

    result = make_run().train(make_data(), epochs=5, callbacks=[StopAfterFirstEpoch()])

    assert len(result.history["loss"]) == 1
    assert (result.epochs, result.planned_epochs) == (1, 5)


def test_validation_metrics_are_keras_own():
    x, y = make_data()
    run = make_run()
    result = run.fine_tune((x, y), freeze="features", epochs=1, validation_data=(x, y))

    expected = run.model.evaluate(x, y, verbose=0, return_dict=True)
    assert result.metrics["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert result.metrics["accuracy"] == pytest.approx(expected["accuracy"])


def test_a_crash_in_the_loop_resumes_from_the_last_epoch(tmp_path):
    data = make_data()
    with pytest.raises(Crash):
        make_run(directory=tmp_path).train(
            data, epochs=3, callbacks=[CrashAfterEpoch(1)]
        )

    epochs = Epochs()
    result = make_run(directory=tmp_path).train(data, epochs=3, callbacks=[epochs])

    assert epochs.seen == [2]
    assert len(result.history["loss"]) == 3
    assert result.training_loop.startswith("transferkit's")


def test_datasets_and_disk_caches_fall_back_to_fit_and_say_why(tmp_path):
    x, y = make_data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    from_dataset = make_run().train(dataset, epochs=1)
    on_disk = make_run(feature_cache_memory=0, directory=tmp_path).fine_tune(
        (x, y), freeze="features", epochs=1
    )

    assert from_dataset.training_loop == "Keras fit: `data` is a tf.data.Dataset"
    assert on_disk.training_loop == "Keras fit: the feature cache is on disk"
    assert on_disk.frozen_unchanged is True


def test_the_loop_keeps_the_freeze_and_trains_the_head_on_the_cache():
    run = make_run()
    run.train(make_data(), epochs=1)
    frozen = snapshot(run.model.groups["features"].variables)
    head = snapshot(run.model.groups["classifier"].variables)

    result = run.fine_tune(make_data(), freeze="features", epochs=2)

    assert result.cached_layers > 0 and result.training_loop.startswith("transferkit's")
    after = snapshot(run.model.groups["features"].variables)
    assert all(bitwise_equal(after[p], v) for p, v in frozen.items())
    moved = snapshot(run.model.groups["classifier"].variables)
    assert all(not np.array_equal(moved[p], v) for p, v in head.items())


def test_an_unknown_training_loop_is_refused():
    with pytest.raises(
        ValueError,
        match=r"Unknown `training_loop`\. Expected one of \['auto', 'fit'\]\. "
        r"Received: training_loop='mine'",
    ):
        make_run("mine")


def test_tensorboard_and_model_checkpoint_work_with_the_loop(tmp_path):
    run = make_run()
    callbacks = [
        keras.callbacks.TensorBoard(log_dir=str(tmp_path / "logs")),
        keras.callbacks.ModelCheckpoint(tmp_path / "best.keras"),
    ]

    result = run.train(
        make_data(), epochs=2, validation_data=make_data(), callbacks=callbacks
    )

    assert result.training_loop.startswith("transferkit's")
    events = list((tmp_path / "logs").rglob("events.out.tfevents.*"))
    assert {path.parent.name for path in events} >= {"train", "validation"}
    loaded = keras.models.load_model(tmp_path / "best.keras")
    assert list(loaded.groups) == ["features", "classifier"]
