"""Forgetting, measured: a phase's `also_evaluate` sets, evaluated with the
whole model after every epoch, in the logs, the history, the result, the
run folder, the report and the learning curves; and never a weight or a
random draw changed by them."""

import json
import math
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import (
    Crash,
    CrashAfterEpoch,
    bitwise_equal,
    load_script,
    make_data,
    make_model,
    shipped_digits,
)
from tiny import run_options

from transferkit import ClassSubset, TransferRun
from transferkit.errors import CheckpointError
from transferkit.records.report import build_report, format_markdown, format_phase

LOSS = "sparse_categorical_crossentropy"
OLD = "digits 0-4"
KEY = "digits_0_4"


def make_run(directory=None, seed=None, metrics=("accuracy",), **options):
    """A quiet tiny run, Dropout in its head, so that training draws; its
    model built from one seed, as a fresh process would build it."""
    keras.utils.set_random_seed(3)
    return TransferRun(
        make_model(dropout=True),
        optimizer="adam",
        loss=LOSS,
        metrics=list(metrics),
        batch_size=8,
        verbose=0,
        directory=directory,
        seed=seed,
        **run_options(options),
    )


def old_data():
    """Another task's samples: other images, the same three class ids."""
    return make_data(24, seed=7)


class EvaluateAfterEachEpoch(keras.callbacks.Callback):
    """The user's own check: `model.evaluate` on `data` at each epoch's end,
    beside the logs the callback was given."""

    def __init__(self, data):
        super().__init__()
        self.data, self.evaluated, self.logs = data, [], []

    def on_epoch_end(self, epoch, logs=None):
        x, y = self.data
        self.logs.append(dict(logs))
        self.evaluated.append(
            self.model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
        )


PHASES = {
    "train, transferkit's loop": dict(freeze=None, options={}),
    "fine-tune, cache and lean step": dict(
        freeze=["features"], options={"lean_step": True}
    ),
    "train with fit": dict(freeze=None, options={"training_loop": "fit"}),
}


@pytest.mark.parametrize("phase", PHASES.values(), ids=list(PHASES))
def test_the_metric_is_evaluate_on_the_old_data_at_every_epoch(phase):
    run = make_run(**phase["options"])
    check = EvaluateAfterEachEpoch(old_data())
    options = dict(epochs=2, also_evaluate={OLD: old_data()}, callbacks=[check])
    if phase["freeze"]:
        run.train(make_data(40), epochs=1)
        result = run.fine_tune(make_data(40), freeze=phase["freeze"], **options)
        assert result.cached_layers > 0  # A trainer model of later layers trained.
    else:
        result = run.train(make_data(40), **options)

    # The same model, weights, batches and computation as the callback's own
    # `evaluate`: equal to the last bit, not to a tolerance.
    assert result.history[f"{KEY}_loss"] == [e["loss"] for e in check.evaluated]
    assert result.history[f"{KEY}_accuracy"] == [e["accuracy"] for e in check.evaluated]
    assert [logs[f"{KEY}_loss"] for logs in check.logs] == result.history[
        f"{KEY}_loss"
    ]  # The callbacks saw them in the epoch's logs.
    assert result.also_evaluated == {OLD: check.evaluated[-1]}
    assert len(set(result.history[f"{KEY}_loss"])) == 2  # Measured anew each epoch.


def test_it_is_in_the_result_the_report_and_the_figure():
    x, y = make_data(60, classes=6)
    low, high = (ClassSubset.select(x, y, classes=c) for c in ([0, 1, 2], [3, 4, 5]))
    run = TransferRun(
        make_model(), optimizer="sgd", loss="categorical_crossentropy",
        metrics=["accuracy"], verbose=0,
    )  # fmt: skip
    run.train(low, epochs=1, validation_data=low)
    # The old classes (0-2) and the new ones (3-5) share the head's 3 outputs.
    result = run.fine_tune(
        high, freeze="features", epochs=2, validation_data=high,
        also_evaluate={OLD: low, "new train": high},
    )  # fmt: skip
    history = result.history
    assert result.also_evaluated == {
        OLD: {
            "loss": history[f"{KEY}_loss"][-1],
            "accuracy": history[f"{KEY}_accuracy"][-1],
        },
        "new train": {
            "loss": history["new_train_loss"][-1],
            "accuracy": history["new_train_accuracy"][-1],
        },
    }
    assert result.metrics == {
        "loss": history["val_loss"][-1],
        "accuracy": history["val_accuracy"][-1],
    }
    assert type(result).from_dict(result.to_dict()) == result

    report = build_report(run.results, dataset="tiny", total_seconds=1.0)
    phase = report["phases"][1]
    assert phase["also_evaluated"] == result.also_evaluated
    old = result.also_evaluated[OLD]
    row = f"on digits 0-4     loss {old['loss']:.4f}, accuracy {old['accuracy']:.2%}"
    assert row in format_phase(phase)
    assert f"| on digits 0-4 | loss {old['loss']:.4f}," in format_markdown(report)

    pytest.importorskip("matplotlib")
    from transferkit.records.plots import plot_learning_curves

    loss_axis, accuracy_axis = plot_learning_curves(report).axes
    lines = {line.get_label(): line for line in accuracy_axis.get_lines()}
    # Phase two's epochs 2 and 3, after the first phase's epoch 1.
    assert list(lines[OLD].get_xdata()) == [2, 3]
    assert list(lines[OLD].get_ydata()) == history[f"{KEY}_accuracy"]
    assert list(lines["new train"].get_ydata()) == history["new_train_accuracy"]
    assert lines[OLD].get_color() != lines["new train"].get_color()
    losses = {line.get_label(): line for line in loss_axis.get_lines()}
    assert list(losses[OLD].get_ydata()) == history[f"{KEY}_loss"]
    legend = [text.get_text() for text in accuracy_axis.get_legend().get_texts()]
    assert legend == ["train", "validation", OLD, "new train"]


def test_older_results_and_reports_read_without_it():
    run = make_run()
    result = run.train(make_data(16), epochs=1)
    saved = result.to_dict()
    del saved["also_evaluated"]  # As a result saved before the field existed.

    assert type(result).from_dict(saved).also_evaluated == {}
    phase = build_report([result], dataset="tiny", total_seconds=1.0)["phases"][0]
    del phase["also_evaluated"]
    assert not [line for line in format_phase(phase).splitlines() if "  on " in line]


def test_another_task_s_class_names_are_taken_but_its_labels_must_fit():
    run = make_run()
    model = run.model
    model.class_names = ["a", "b", "c"]
    x, y = old_data()
    old = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    old.class_names = ["cat", "dog", "bird"]  # Not the model's: not refused.

    result = run.train(make_data(16), epochs=1, also_evaluate={"pets": old})

    expected = model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    assert result.also_evaluated == {"pets": expected}
    assert model.class_names == ("a", "b", "c")
    with pytest.raises(
        ValueError,
        match=r"Labels in `also_evaluate\['digits 0-9'\]` must be class ids in "
        r"\[0, 2\] for a model with 3 outputs. Received: \[3, 4",
    ):
        run.train(make_data(16), epochs=1, also_evaluate={"digits 0-9": (x, y + 2)})
    with pytest.raises(ValueError, match=r"also_evaluate\['flat'\]"):
        run.train(make_data(16), epochs=1, also_evaluate={"flat": (x[:, 0], y)})
    assert len(run.results) == 1  # Refused before training.


@pytest.mark.parametrize(
    "sets, error, message",
    [
        (
            [("old", None)],
            TypeError,
            r"Expected `also_evaluate` to map names to data sets, e\.g\. \{'digits "
            r"0-4': \(x_old, y_old\)\}\. Received: also_evaluate of type list",
        ),
        (
            {3: None},
            TypeError,
            r"Expected the names in `also_evaluate` to be text, e\.g\. 'digits "
            r"0-4'\. Received: 3",
        ),
        (
            {"--": None},
            ValueError,
            r"Expected each name in `also_evaluate` to hold a letter or a digit: "
            r"it names the history keys \(e\.g\. 'digits 0-4' -> "
            r"'digits_0_4_accuracy'\)\. Received: '--'",
        ),
        (
            {"val old": None},
            ValueError,
            r"The name 'val old' in `also_evaluate` would give the history keys "
            r"'val_old_\.\.\.', which read as the validation data's",
        ),
        (
            {"old": None, "old test": None},
            ValueError,
            r"The names 'old' and 'old test' in `also_evaluate` give history keys "
            r"that cannot be told apart \('old_\.\.\.' and 'old_test_\.\.\.'\)",
        ),
        (
            {"old-digits": None, "old digits": None},
            ValueError,
            r"The names 'old-digits' and 'old digits' in `also_evaluate` give "
            r"history keys that cannot be told apart",
        ),
    ],
    ids=["not a mapping", "not text", "no letter", "val", "prefix", "same key"],
)
def test_bad_names_are_refused_before_training(sets, error, message):
    run = make_run()
    with pytest.raises(error, match=message):
        run.train(make_data(16), epochs=1, also_evaluate=sets)
    assert run.results == []


def test_a_name_whose_keys_the_logs_hold_is_refused():
    run = make_run(metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc_top")])
    with pytest.raises(
        ValueError,
        match=r"The name 'acc' in `also_evaluate` gives history keys 'acc_\.\.\.', "
        r"but the epoch's logs already hold \['acc_top'\]\. Pick another name\.",
    ):
        run.train(make_data(16), epochs=1, also_evaluate={"acc": old_data()})


def state(run):
    return [
        keras.ops.convert_to_numpy(v)
        for v in [*run.model.variables, *run.model.optimizer.variables]
    ]


def two_phases(run, also=None, callbacks=()):
    data = make_data(40)
    run.train(data, epochs=1, also_evaluate=also)
    return run.fine_tune(
        data, freeze=["features"], epochs=2, also_evaluate=also,
        callbacks=list(callbacks),
    )  # fmt: skip


@pytest.mark.parametrize("seeded", [False], ids=["no seed"])
def test_weights_are_bitwise_the_same_with_and_without_it(seeded):
    """Without `seed=`, the random states run on from one epoch into the
    next, so any number the evaluation drew would move every later draw
    (Dropout, the batch order). (Seeded, each epoch starts from its own
    seeds, which would hide such a draw: the unseeded run is the check.)"""
    states, histories = [], []
    for also in (None, {OLD: old_data()}):
        run = make_run(seed=5 if seeded else None)
        result = two_phases(run, also)
        states.append(state(run))
        histories.append(result.history)

    assert all(bitwise_equal(a, b) for a, b in zip(*states, strict=True))
    plain, evaluated = histories
    assert {k: v for k, v in evaluated.items() if not k.startswith(KEY)} == plain
    assert set(evaluated) - set(plain) == {f"{KEY}_loss", f"{KEY}_accuracy"}


def test_a_resumed_phase_keeps_the_history_and_may_change_its_sets(tmp_path):
    def fine_tune(folder, also, crash=False):
        run = make_run(tmp_path / folder, seed=5)
        return run.fine_tune(
            make_data(40), freeze=["features"], epochs=2, also_evaluate=also,
            callbacks=[CrashAfterEpoch(0)] if crash else [],
        )  # fmt: skip

    also = {OLD: old_data()}
    whole = fine_tune("whole", also)
    with pytest.raises(Crash):
        fine_tune("resumed", also, crash=True)

    resumed = fine_tune("resumed", also)

    assert resumed.history == whole.history
    assert resumed.also_evaluated == whole.also_evaluated
    saved = json.loads((tmp_path / "resumed" / "run.json").read_text())
    assert (
        saved["phases"][0]["history"][f"{KEY}_accuracy"]
        == (whole.history[f"{KEY}_accuracy"])
    )

    # Resumed with another set: one value per epoch under every key, NaN
    # where a set was not evaluated, and the folder reads back.
    with pytest.raises(Crash):
        fine_tune("changed", also, crash=True)
    changed = fine_tune("changed", {"new": old_data()})
    history = changed.history
    assert math.isnan(history["new_loss"][0]) and not math.isnan(history["new_loss"][1])
    assert history[f"{KEY}_loss"][0] == whole.history[f"{KEY}_loss"][0]
    assert math.isnan(history[f"{KEY}_loss"][1])
    assert changed.also_evaluated == {"new": {
        "loss": history["new_loss"][-1], "accuracy": history["new_accuracy"][-1]
    }}  # fmt: skip
    try:
        again = make_run(tmp_path / "changed", seed=5)
    except CheckpointError as error:  # pragma: no cover - the failure shown
        pytest.fail(f"the folder no longer reads: {error}")
    assert again.saved_phases == [("fine_tune", 2, 2, True)]


def test_evaluating_draws_no_random_number_and_changes_no_weight():
    from transferkit.data.prepare import prepare_data
    from transferkit.engine.also_evaluate import AlsoEvaluate
    from transferkit.engine.distribution import Distribution

    model = make_model(dropout=True)
    model.compile(optimizer="adam", loss=LOSS, metrics=["accuracy"])
    prepared = prepare_data(old_data(), "old", model=model, loss=LOSS, batch_size=8)
    evaluate = AlsoEvaluate(model, {OLD: prepared}, Distribution(None))
    before = [keras.ops.convert_to_numpy(v) for v in model.variables]

    def draws(evaluating):
        keras.utils.set_random_seed(9)
        logs = evaluate({}) if evaluating else None
        generator = keras.random.SeedGenerator(1)
        return logs, [
            tf.random.uniform([4]).numpy(),
            tf.random.shuffle(tf.range(8)).numpy(),
            np.random.random(3),
            keras.random.uniform([2], seed=generator).numpy(),
            *[g.state.numpy() for g in model.layers[-2]._seed_generators],
        ]

    _, plain = draws(False)
    logs, evaluated = draws(True)

    assert set(logs) == {f"{KEY}_loss", f"{KEY}_accuracy"}
    assert all(bitwise_equal(a, b) for a, b in zip(plain, evaluated, strict=True))
    after = [keras.ops.convert_to_numpy(v) for v in model.variables]
    assert all(bitwise_equal(a, b) for a, b in zip(before, after, strict=True))


def test_it_evaluates_on_two_replicas(strategy):
    with strategy.scope():
        model = make_model()
    run = TransferRun(
        model, optimizer="adam", loss=LOSS, metrics=["accuracy"], batch_size=8,
        verbose=0, strategy=strategy,
    )  # fmt: skip
    check = EvaluateAfterEachEpoch(old_data())

    result = run.train(
        make_data(16), epochs=1, also_evaluate={OLD: old_data()}, callbacks=[check]
    )

    assert result.also_evaluated == {OLD: check.evaluated[-1]}


def test_the_example_measures_forgetting_when_asked(tmp_path):
    example = load_script(Path(__file__).parents[1] / "examples" / "mnist_digits.py")
    digits = shipped_digits(tmp_path / "few.npz", train=300, test=100)

    report = example.main(
        ["--data", str(digits), "--epochs", "1", "--verbose", "0", "--forgetting"]
    )

    train, fine_tune = report["phases"]
    assert fine_tune["also_evaluated"] == {
        OLD: {
            "loss": fine_tune["history"][f"{KEY}_loss"][0],
            "accuracy": fine_tune["history"][f"{KEY}_accuracy"][0],
        }
    }
    assert train["also_evaluated"] == {} and report["settings"]["forgetting"] is True
