"""Training a phase: callbacks see the user's model whatever trains, and
batch numbers stay within the epoch's real step count."""

import re

import keras
import numpy as np
import pytest
from conftest import Batches, bitwise_equal, make_data, make_model, snapshot
from tiny import run_options

from transferkit import TransferRun

SPARSE = "sparse_categorical_crossentropy"

# What trains in each case: a trainer model fed by the feature cache, a
# trainer model with the lean step's layers, and the model itself.
TRAINERS = {
    "cache": ({}, "fine_tune"),
    "lean_step": ({"lean_step": True}, "train"),
    "model": ({"feature_cache": False}, "fine_tune"),
}


def run_phase(run, kind, data, **kwargs):
    if kind == "train":
        return run.train(data, **kwargs)
    return run.fine_tune(data, freeze="features", **kwargs)


def make_run(settings=(), **kwargs):
    kwargs = {"verbose": 0, **dict(settings), **kwargs}
    return TransferRun(
        make_model(dropout=True),
        optimizer=lambda: keras.optimizers.SGD(0.05),
        loss=SPARSE,
        metrics=["accuracy"],
        batch_size=10,
        **run_options(kwargs),
    )


@pytest.mark.parametrize("settings, kind", TRAINERS.values(), ids=TRAINERS.keys())
def test_model_checkpoint_saves_the_users_whole_model(tmp_path, settings, kind):
    run = make_run(settings)
    x, y = make_data()
    path = tmp_path / "best.keras"

    result = run_phase(
        run, kind, (x, y), epochs=2, callbacks=[keras.callbacks.ModelCheckpoint(path)]
    )

    loaded = keras.models.load_model(path)
    assert list(loaded.groups) == ["features", "classifier"]
    assert [type(layer) for layer in loaded.layers] == [
        type(layer) for layer in run.model.layers
    ]
    np.testing.assert_array_equal(
        loaded.predict(x, verbose=0), run.model.predict(x, verbose=0)
    )
    assert (result.cached_layers > 0) == (kind == "fine_tune" and settings == {})


class Scores(keras.callbacks.Callback):
    """Puts a made-up `score` into the logs (lowest after epoch 1) and keeps
    the model's weights after every epoch."""

    def __init__(self, scores):
        super().__init__()
        self.scores = scores
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        logs["score"] = self.scores[epoch]
        self.weights.append(snapshot(self.model.weights))


@pytest.mark.parametrize("settings, kind", TRAINERS.values(), ids=TRAINERS.keys())
def test_early_stopping_restores_the_best_weights_and_the_run_keeps_them(
    tmp_path, settings, kind
):
    data = make_data()
    scores = Scores([3.0, 1.0, 2.0, 2.5, 3.0])
    stop = keras.callbacks.EarlyStopping(
        monitor="score", mode="min", patience=1, restore_best_weights=True
    )
    run = make_run(settings, directory=tmp_path)

    result = run_phase(run, kind, data, epochs=5, callbacks=[scores, stop])

    assert len(result.history["loss"]) == 3  # Stopped after epoch 2 (0-based).
    final = snapshot(run.model.weights)
    best, last = scores.weights[1], scores.weights[2]
    assert all(bitwise_equal(final[p], best[p]) for p in final)
    assert not all(bitwise_equal(final[p], last[p]) for p in final)
    # The folder holds the restored weights: rerunning the plan loads them.
    again = make_run(settings, directory=tmp_path)
    run_phase(again, kind, data, epochs=5, callbacks=[Scores([0.0] * 5)])
    reloaded = snapshot(again.model.weights)
    assert all(
        bitwise_equal(a, b)
        for a, b in zip(reloaded.values(), final.values(), strict=True)
    )


@pytest.mark.parametrize("settings, kind", TRAINERS.values(), ids=TRAINERS.keys())
def test_batch_numbers_and_the_progress_bar_stop_at_the_real_step_count(
    settings, kind, capsys
):
    # 48 samples in batches of 10: 5 steps an epoch, run 4 per call, so the
    # second call holds one step; Keras would number it as if it held 4.
    data = make_data()
    batches = Batches()
    run = make_run(settings, steps_per_execution=4)

    run_phase(
        run,
        kind,
        data,
        epochs=2,
        validation_data=data,
        callbacks=[batches],
        verbose=1,
    )

    assert batches.train == [3, 4, 3, 4]
    assert batches.test == [3, 4, 3, 4]
    bar = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)  # No colours.
    counts = {int(seen) for seen, _ in re.findall(r"(\d+)/(5) ", bar)}
    assert counts and max(counts) == 5
    assert not re.search(r"\b([6-9]|\d\d+)/5\b", bar)
