"""Schedules: several phases in one call, each an ordinary phase with its
own result, freeze proof and resume."""

import keras
import pytest
from conftest import IMAGE_SHAPE, Epochs, make_data
from keras import layers
from tiny import run_options

from transferkit import LayerGroup, TransferRun
from transferkit.run.schedules import gradual_unfreezing, head_then_all, spread


def three_groups():
    return (
        LayerGroup(
            "bottom", [layers.Conv2D(4, 3), layers.Flatten()], input_shape=IMAGE_SHAPE
        )
        + LayerGroup("middle", [layers.Dense(8, activation="relu")])
        + LayerGroup("head", [layers.Dense(3, activation="softmax")])
    )


def make_run(**kwargs):
    return TransferRun(
        three_groups(),
        optimizer=lambda: keras.optimizers.Adam(0.01),
        loss="sparse_categorical_crossentropy",
        batch_size=16,
        verbose=0,
        **run_options(kwargs),
    )


def test_head_then_all_trains_the_head_then_everything_at_spread_rates():
    run = make_run()

    head, everything = head_then_all(run, make_data(), head_epochs=1, epochs=2)

    assert [r.name for r in run.results] == ["head", "all"]
    assert head.frozen_groups == ("bottom", "middle") and head.frozen_unchanged
    assert head.cached_layers == 3  # Conv2D, Flatten and Dense, computed once.
    assert everything.frozen_groups == () and everything.epochs == 2
    assert everything.lr_multipliers == {"bottom": 0.001, "middle": 0.01, "head": 0.1}


def test_gradual_unfreezing_unfreezes_one_group_per_stage_from_the_top():
    run = make_run()

    results = gradual_unfreezing(run, make_data(), epochs=1)

    assert [r.name for r in results] == ["head", "unfreeze_middle", "unfreeze_bottom"]
    assert [r.frozen_groups for r in results] == [("bottom", "middle"), ("bottom",), ()]
    assert all(r.frozen_unchanged is not False for r in results)
    assert [r.cached_layers for r in results] == [3, 2, 0]


def test_a_schedule_resumes_from_its_folder(tmp_path):
    data = make_data()
    head_then_all(make_run(directory=tmp_path), data, head_epochs=1, epochs=2)

    epochs = Epochs()
    again = make_run(directory=tmp_path)
    results = head_then_all(again, data, head_epochs=1, epochs=2, callbacks=[epochs])

    assert epochs.seen == []  # Both stages finished: nothing trains.
    assert [r.name for r in results] == ["head", "all"]


def test_spread_grows_geometrically_to_the_head():
    assert spread(["a", "b", "c", "d"], lowest=0.001) == {
        "a": 0.001,
        "b": 0.01,
        "c": 0.1,
        "d": 1.0,
    }
    assert spread(["head"], lowest=0.1, highest=0.5) == {"head": 0.5}
    with pytest.raises(ValueError, match="positive multipliers"):
        spread(["a", "b"], lowest=0)


def test_bad_stage_counts_are_refused():
    with pytest.raises(
        ValueError, match=r"`stages` between 1 and 3 .* Received: stages=4"
    ):
        gradual_unfreezing(make_run(), make_data(), epochs=1, stages=4)


def test_schedules_give_a_group_with_nothing_to_train_no_stage_and_no_rung():
    def augmented_run():
        model = (
            LayerGroup("augment", [layers.RandomFlip(seed=2)], input_shape=IMAGE_SHAPE)
            + LayerGroup("bottom", [layers.Conv2D(4, 3), layers.Flatten()])
            + LayerGroup("middle", [layers.Dense(8, activation="relu")])
            + LayerGroup("head", [layers.Dense(3, activation="softmax")])
        )
        return TransferRun(
            model,
            optimizer="sgd",
            loss="sparse_categorical_crossentropy",
            batch_size=48,
            verbose=0,
        )

    stages = gradual_unfreezing(augmented_run(), make_data(), epochs=1)
    _, everything = head_then_all(augmented_run(), make_data(), head_epochs=1, epochs=1)

    assert [r.name for r in stages] == ["head", "unfreeze_middle", "unfreeze_bottom"]
    assert everything.lr_multipliers == {"bottom": 0.001, "middle": 0.01, "head": 0.1}
