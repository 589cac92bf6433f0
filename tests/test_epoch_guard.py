"""The epoch guard and what a result says: a non-finite loss stops the phase
and keeps the last finite checkpoint; results count the epochs that ran;
empty data is refused."""

import json
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import Crash, CrashAfterEpoch, Epochs, make_data, tiny_run

import transferkit
from transferkit.engine.epoch_guard import non_finite_variables
from transferkit.errors import NonFiniteError
from transferkit.records.report import build_report, format_markdown

make_run = tiny_run


class Poison(keras.callbacks.Callback):
    """Makes the head's last kernel NaN when epoch `epoch` begins, as a
    learning rate that blows up would."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            kernel = self.model.groups["classifier"][-1].kernel
            kernel.assign(np.full(kernel.shape, np.nan, "float32"))


def strict(text):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_a_nan_loss_stops_the_phase_and_keeps_the_last_finite_epoch(tmp_path):
    data = make_data()
    run = make_run(tmp_path)
    message = (
        "Phase 'train' stopped in epoch 2: the loss became nan within steps 1-3 "
        "(one call) of 3. The epoch was not recorded and nothing non-finite was "
        "saved. "
        f"{str(tmp_path)!r} keeps epoch 1 of phase 'train', its last finite "
        "checkpoint."
    )
    with pytest.raises(NonFiniteError, match=re.escape(message)):
        run.train(data, epochs=3, callbacks=[Poison(1)])

    state = strict((tmp_path / "run.json").read_text())
    assert state["phases"][0]["epochs_done"] == 1
    assert state["phases"][0]["stopped"].startswith("Phase 'train' stopped")
    saved = keras.models.load_model(tmp_path / state["checkpoint"])
    assert not non_finite_variables(saved)

    # Resumed with a lower learning rate, from the last good epoch.
    epochs = Epochs()
    again = make_run(tmp_path)
    result = again.train(
        data,
        epochs=3,
        optimizer=keras.optimizers.Adam(learning_rate=1e-4),
        callbacks=[epochs],
    )
    assert epochs.seen == [1, 2]
    assert result.epochs == 3 and np.isfinite(result.history["loss"]).all()
    assert not non_finite_variables(again.model)
    state = strict((tmp_path / "run.json").read_text())
    learning_rate = state["phases"][0]["spec"]["optimizer"]["learning_rate"]
    assert learning_rate == pytest.approx(1e-4)
    # Other changes stay refused: only the optimizer's settings may change.
    with pytest.raises(ValueError, match="holds a different plan"):
        make_run(tmp_path).train(data, epochs=4)


def test_a_retry_in_the_same_process_reloads_the_weights_of_the_phase_start(
    tmp_path,
):
    data = make_data()
    run = make_run(tmp_path)
    with pytest.raises(NonFiniteError, match="keeps the weights from the start"):
        run.train(data, epochs=2, callbacks=[Poison(0)])
    assert non_finite_variables(run.model)

    result = run.train(data, epochs=2)

    assert not non_finite_variables(run.model)
    assert result.epochs == 2 and np.isfinite(result.history["loss"]).all()


def test_without_a_folder_the_error_says_the_model_holds_the_bad_weights():
    with pytest.raises(NonFiniteError, match="build the model again"):
        make_run().train(
            make_data(),
            epochs=2,
            callbacks=[keras.callbacks.TerminateOnNaN(), Poison(0)],
        )


def test_a_callback_that_stops_early_is_reported_with_the_epochs_run(tmp_path):
    # Any loss is "no improvement" by a margin of 100: stops after epoch 2.
    stop = keras.callbacks.EarlyStopping(monitor="loss", min_delta=100, patience=1)
    run = make_run(tmp_path)

    result = run.train(make_data(), epochs=15, callbacks=[stop])

    assert (result.epochs, result.planned_epochs) == (2, 15)
    assert result.stopped_early == "a callback set stop_training after epoch 2 of 15"
    assert len(result.history["loss"]) == 2
    report = build_report([result], dataset="tiny", total_seconds=1.0)
    phase = report["phases"][0]
    assert phase["samples_per_second"] == pytest.approx(48 * 2 / result.seconds)
    assert (
        "| epochs | 2 of 15 (a callback set stop_training after epoch 2 of 15) |"
        in (format_markdown(report))
    )
    assert transferkit.saved_phases(tmp_path) == [("train", 2, 15, True)]


def test_a_retry_after_a_crash_resumes_from_the_epoch_it_loads(tmp_path):
    data = make_data()
    run = make_run(tmp_path, checkpoint_every=3)
    with pytest.raises(Crash):
        run.train(data, epochs=8, callbacks=[CrashAfterEpoch(4)])

    epochs = Epochs()
    result = run.train(data, epochs=8, callbacks=[epochs])

    assert epochs.seen == [3, 4, 5, 6, 7]
    assert result.epochs == 8 and len(result.history["loss"]) == 8


# Keras' fit warns before the guard refuses the epoch.
@pytest.mark.filterwarnings("ignore:Your input ran out of data")
def test_empty_data_is_refused(tmp_path):
    x, y = make_data()
    run = make_run(tmp_path)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "Expected at least one sample in `data`. Received: x of shape (0, 8, 8, 1)"
        ),
    ):
        run.train((x[:0], y[:0]), epochs=3)
    empty = tf.data.Dataset.from_tensor_slices((x[:0], y[:0])).batch(8)
    with pytest.raises(ValueError, match="an empty tf.data.Dataset .cardinality 0"):
        run.train(empty, epochs=3)
    nothing = (
        tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda x, y: y > 99).batch(8)
    )
    with pytest.raises(ValueError, match="Received a tf.data.Dataset that gave none"):
        run.train(nothing, epochs=3)  # Read once, before the phase starts.
    assert transferkit.saved_phases(tmp_path) == []
    once = iter([(x[:8], y[:8])])  # Its first batch, then nothing in epoch 1.
    spent = tf.data.Dataset.from_generator(
        lambda: once,
        output_signature=(
            tf.TensorSpec((None, *x.shape[1:]), x.dtype),
            tf.TensorSpec((None,), y.dtype),
        ),
    )
    with pytest.raises(ValueError, match="`data` gave no batches in epoch 1"):
        run.train(spent, epochs=3)
    assert transferkit.saved_phases(tmp_path) == [("train", 0, 3, False)]


def test_a_dataset_of_samples_alone_and_freeze_none_are_refused():
    x, _ = make_data()
    run = make_run()
    with pytest.raises(TypeError, match=r"Expected `data` to yield \(x, y\) batches"):
        run.train(tf.data.Dataset.from_tensor_slices(x).batch(8), epochs=1)
    with pytest.raises(
        TypeError,
        match=re.escape(
            "Expected `freeze` to be a group name or a list of group names, e.g. "
            "['features']. Received: freeze=None"
        ),
    ):
        run.fine_tune(make_data(), freeze=None, epochs=1)
