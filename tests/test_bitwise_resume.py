"""A seeded run killed anywhere and resumed ends bitwise equal to one that
never stopped (transferkit's own loop, CPU, float32).

The kill is an exception from a callback, at an epoch's end (after its
checkpoint) or in the middle of an epoch; the resumed run is built afresh, as
a new process would build it, after other random draws, and continues from
the run folder. Each test compares every weight, optimizer variable and
seed state with an uninterrupted run's, bitwise.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import Crash, make_data, make_model
from keras import layers
from tiny import run_options

from transferkit import LayerGroup, TransferRun

SEED = 11
LOSS = "sparse_categorical_crossentropy"


class Kill(keras.callbacks.Callback):
    """Raises `Crash` at the end of `epoch`, or after its batch `batch`."""

    def __init__(self, epoch, batch=None):
        super().__init__()
        self.epoch, self.batch, self.current = epoch, batch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_epoch_end(self, epoch, logs=None):
        if self.batch is None and epoch == self.epoch:
            raise Crash(f"killed after epoch {epoch}")

    def on_train_batch_end(self, batch, logs=None):
        if self.batch is not None and (self.current, batch) == (self.epoch, self.batch):
            raise Crash(f"killed in epoch {self.epoch}, after batch {batch}")


def augmented_model():
    """Augmentation in the model, in front of frozen features: with
    `augmented_views`, the cache holds views drawn at its fill."""
    augment = LayerGroup(
        "augment",
        [layers.RandomFlip("horizontal"), layers.RandomTranslation(0.1, 0.1)],
        input_shape=(8, 8, 1),
    )
    features = LayerGroup("features", [layers.Conv2D(4, 3), layers.Flatten()])
    head = LayerGroup(
        "classifier",
        [
            layers.Dense(8, activation="relu"),
            layers.Dropout(0.3),
            layers.Dense(3, activation="softmax"),
        ],
    )
    return augment + features + head


PLANS = {
    # Train everything, then fine-tune the head: Dropout, BatchNormalization.
    "default": dict(
        model=lambda: make_model(batch_norm=True, dropout=True),
        phases=[dict(epochs=2), dict(epochs=3, freeze=["features"])],
        options={},
    ),
    # The head on cached augmented views of frozen features.
    "cache_views": dict(
        model=augmented_model,
        phases=[dict(epochs=3, freeze=["features"], augmented_views=2)],
        options={"feature_cache": True},
    ),
    # A LoRA phase after a plain one.
    "lora": dict(
        model=lambda: make_model(dropout=True),
        phases=[dict(epochs=1), dict(epochs=3, lora={"classifier": 2})],
        options={},
    ),
}


def run_plan(name, directory, kill=None, seed=SEED):
    """Builds the model from the seed, as a fresh process would, and runs the
    plan's phases; `kill` is `(phase, Kill)`."""
    recipe = PLANS[name]
    keras.utils.set_random_seed(seed)
    run = TransferRun(
        recipe["model"](), optimizer="adam", loss=LOSS, batch_size=8, verbose=0,
        directory=directory, seed=seed, **run_options(recipe["options"]),
    )  # fmt: skip
    data = make_data(40)
    for index, phase in enumerate(recipe["phases"]):
        phase = dict(phase)
        freeze = phase.pop("freeze", None)
        callbacks = [kill[1]] if kill and kill[0] == index else []
        if freeze:
            run.fine_tune(data, freeze=freeze, callbacks=callbacks, **phase)
        else:
            run.train(data, callbacks=callbacks, **phase)
    return run


def state(run):
    model = run.model
    values = [*model.variables, *model.optimizer.variables]
    return [keras.ops.convert_to_numpy(v) for v in values]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return {
        name: state(run_plan(name, tmp_path_factory.mktemp(name))) for name in PLANS
    }


KILLS = [
    ("default", 0, 1, None),  # The end of phase 1.
    ("default", 0, 1, 2),  # Mid-epoch.
    ("default", 1, 0, None),  # A boundary inside phase 2.
    ("default", 1, 2, 1),  # Mid-way through the last epoch.
    ("cache_views", 0, 0, None),
    ("cache_views", 0, 1, 2),
    ("lora", 1, 0, None),
    ("lora", 1, 1, 2),
]


@pytest.mark.parametrize(
    "plan, phase, epoch, batch",
    KILLS,
    ids=[
        f"{p}-phase{i}-epoch{e}" + ("" if b is None else f"-batch{b}")
        for p, i, e, b in KILLS
    ],
)
def test_a_killed_and_resumed_run_is_bitwise_an_uninterrupted_one(
    tmp_path, uninterrupted, plan, phase, epoch, batch
):
    with pytest.raises(Crash):
        run_plan(plan, tmp_path, kill=(phase, Kill(epoch, batch)))
    np.random.random(7)  # The new process's random states are its own.
    tf.random.uniform([3])

    resumed = state(run_plan(plan, tmp_path))

    expected = uninterrupted[plan]
    assert len(resumed) == len(expected)
    differ = [
        i
        for i, (a, b) in enumerate(zip(resumed, expected, strict=True))
        if a.tobytes() != b.tobytes()
    ]
    assert not differ, f"{len(differ)} of {len(expected)} variables differ"


def test_runs_of_other_seeds_differ(tmp_path, uninterrupted):
    other = state(run_plan("default", tmp_path, seed=SEED + 1))
    assert any(
        a.tobytes() != b.tobytes()
        for a, b in zip(other, uninterrupted["default"], strict=True)
    )
