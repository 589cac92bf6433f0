"""The learning-rate sweep: what a phase would train, on the feature cache
where the phase would use it, a suggestion by a stated rule, and the run
left bitwise as it was."""

import re

import keras
import numpy as np
import pytest
from conftest import bitwise_equal, make_data, make_model, snapshot
from tiny import run_options

from transferkit import TransferRun
from transferkit.engine.lr_finder import suggest_rate


def make_run(**kwargs):
    keras.utils.set_random_seed(0)
    return TransferRun(
        make_model(dropout=True, batch_norm=True),
        optimizer=lambda: keras.optimizers.SGD(0.05),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        batch_size=16,
        verbose=0,
        seed=3,
        **run_options(kwargs),
    )


def test_a_sweep_leaves_the_model_optimizer_and_random_state_bitwise_unchanged():
    data = make_data()
    run, twin = make_run(), make_run()
    run.train(data, epochs=1)
    twin.train(data, epochs=1)
    model = run.model
    before = snapshot(model.variables)
    optimizer = model.optimizer
    slots = snapshot(optimizer.variables)
    flags = [layer.trainable for layer in model.layers]
    numpy_state = np.random.get_state()[1].copy()

    sweep = run.find_learning_rate(data, freeze="features", steps=30)

    assert sweep.trained == ("classifier",)
    assert 0 < sweep.cache_seconds < sweep.seconds
    assert re.fullmatch(
        r"the feature cache \(layers conv2d(_\d+)?..flatten(_\d+)?\): covers the "
        r"frozen groups; kept for the next phase",
        sweep.cache,
    )
    after = snapshot(model.variables)
    assert after.keys() == before.keys()
    assert all(bitwise_equal(after[k], before[k]) for k in before)
    assert model.optimizer is optimizer
    assert all(
        bitwise_equal(v, slots[k]) for k, v in snapshot(optimizer.variables).items()
    )
    assert [layer.trainable for layer in model.layers] == flags
    assert np.array_equal(np.random.get_state()[1], numpy_state)
    assert run.frozen_groups == () and len(run.results) == 1
    # The next phase takes the sweep's cache, and trains bitwise as it does
    # without the sweep.
    ours = run.fine_tune(data, freeze="features", epochs=1)
    twin.fine_tune(data, freeze="features", epochs=1)
    assert "MiB in memory, computed by the learning-rate sweep" in ours.cache
    assert ours.cache_seconds == 0.0
    ours, theirs = snapshot(run.model.weights), snapshot(twin.model.weights)
    pairs = zip(ours.values(), theirs.values(), strict=True)
    assert all(bitwise_equal(a, b) for a, b in pairs)


def test_a_kept_cache_serves_only_a_phase_with_the_same_layers_weights_and_data():
    data = make_data()
    other = make_data(seed=1)
    run = make_run()
    for change in ("data", "weights", "frozen groups"):
        run.find_learning_rate(data, freeze="features", steps=5)
        if change == "weights":
            kernel = run.model.groups["features"][0].kernel
            kernel.assign(kernel * 1.01)
        if change == "frozen groups":
            result = run.train(data, epochs=1)  # Nothing frozen: no cache.
            assert result.cache_code == "nothing_frozen"
            continue
        result = run.fine_tune(
            other if change == "data" else data, freeze="features", epochs=1
        )
        run.unfreeze("features")
        assert "learning-rate sweep" not in result.cache, change
        assert result.cache_seconds > 0, change
    assert run._runner.kept_cache is None


def test_the_sweep_trains_only_what_the_phase_would_and_moves_it():
    data = make_data()
    run = make_run()
    seen = {}

    class Watch(keras.optimizers.SGD):
        def apply(self, grads, trainable_variables=None):
            seen["variables"] = [
                v.path for v in (trainable_variables or self._trainable_variables)
            ]
            return super().apply(grads, trainable_variables)

    sweep = run.find_learning_rate(
        data, freeze="features", optimizer=lambda: Watch(0.01), steps=20, max_lr=1.0
    )

    assert seen["variables"] and all("dense" in path for path in seen["variables"])
    assert len(sweep.learning_rates) == len(sweep.losses) == len(sweep.smoothed)
    rates = np.array(sweep.learning_rates)
    assert rates[0] == pytest.approx(1e-7) and np.all(np.diff(np.log(rates)) > 0)
    assert sweep.rule == "steepest descent of the smoothed loss before its minimum"
    assert sweep.learning_rates[0] <= sweep.suggested <= sweep.minimum_rate


def test_a_diverging_loss_ends_the_sweep_early():
    data = make_data()
    sweep = make_run().find_learning_rate(data, min_lr=1e-3, max_lr=1e6, steps=100)
    assert len(sweep.losses) < 100
    assert sweep.stopped.startswith(
        f"at step {len(sweep.losses)} of 100: the smoothed loss"
    )


def test_the_suggestion_is_the_steepest_fall_before_the_minimum():
    rates = np.logspace(-6, 0, 61)
    # The loss falls fastest at 1e-4, is lowest at 1e-2, then diverges.
    loss = (
        2 - np.tanh(2 * (np.log10(rates) + 4)) + np.maximum(0, np.log10(rates) + 2) ** 2
    )
    steepest, lowest = suggest_rate(rates, loss)
    assert steepest == pytest.approx(1e-4, rel=0.13)
    assert lowest == pytest.approx(1e-2, rel=0.13)


def test_a_suggestion_is_only_a_rate_tried_where_the_loss_fell():
    rates = list(np.logspace(-7, -5, 20))
    assert suggest_rate(rates, [1.0] * 20) == (None, None)  # Never fell.
    assert suggest_rate(rates, [np.nan] + [1.0] * 19) == (None, None)
    rising = list(np.linspace(1.0, 2.0, 20))
    assert suggest_rate(rates, rising) == (None, None)
    falls_then_nan = [2.0, 1.5, 1.0, 0.8, np.nan, 0.1] + [0.1] * 14
    steepest, lowest = suggest_rate(rates, falls_then_nan)
    assert steepest in rates[:4] and lowest == rates[3]  # Before the NaN only.


def test_a_sweep_stops_at_a_non_finite_loss_and_suggests_nothing():
    x, y = make_data()
    x = np.full_like(x, np.nan)
    sweep = make_run().find_learning_rate((x, y), steps=10)
    assert sweep.stopped == (
        f"at step 1 of 10: the loss was nan (not finite) at the rate "
        f"{sweep.learning_rates[0]:.3g}"
    )
    assert sweep.suggested is None and sweep.minimum_rate is None
    assert sweep.rule.startswith("none: the smoothed loss never fell")


def test_non_finite_sweep_bounds_are_refused():
    run = make_run()
    for bounds in ({"max_lr": float("inf")}, {"min_lr": float("nan")}):
        with pytest.raises(
            ValueError, match=r"Expected finite rates 0 < min_lr < max_lr"
        ):
            run.find_learning_rate(make_data(), **bounds)


def test_bad_sweep_settings_are_refused():
    run = make_run()
    with pytest.raises(
        ValueError,
        match=r"Expected finite rates 0 < min_lr < max_lr. Received: min_lr=1.0, max_lr=0.1",
    ):
        run.find_learning_rate(make_data(), min_lr=1.0, max_lr=0.1)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9)
    with pytest.raises(ValueError, match="its optimizer has a schedule"):
        run.find_learning_rate(
            make_data(), optimizer=lambda: keras.optimizers.SGD(schedule)
        )
    with pytest.raises(
        ValueError,
        match=r"Unknown group .nothing.. Expected one of \[.features., .classifier.\]",
    ):
        run.find_learning_rate(make_data(), freeze="nothing")


@pytest.mark.parametrize("where", ["a dataset", "a cache on disk"])
def test_the_sweep_runs_on_datasets_and_on_a_cache_on_disk(tmp_path, where):
    import tensorflow as tf

    x, y = make_data()
    if where == "a dataset":
        run, data = make_run(), tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    else:
        run, data = make_run(feature_cache_memory=0, directory=tmp_path / "run"), (x, y)
    before = snapshot(run.model.variables)

    sweep = run.find_learning_rate(data, freeze="features", steps=8, max_lr=1.0)

    assert len(sweep.losses) == 8 and np.all(np.isfinite(sweep.losses))
    expected = "no feature cache" if where == "a dataset" else "the feature cache"
    assert sweep.cache.startswith(expected)
    after = snapshot(run.model.variables)
    assert all(bitwise_equal(after[k], before[k]) for k in before)
    assert run._runner.kept_cache is None  # Only a cache in memory is kept.


def test_the_sweep_draws_its_figure(tmp_path):
    sweep = make_run().find_learning_rate(make_data(), steps=10, max_lr=1.0)
    sweep.plot(tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
