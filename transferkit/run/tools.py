"""What a `TransferRun` offers besides its phases: evaluating the model,
predicting with it, and sweeping a phase's learning rate.

Each is a function of the run's `PhaseRunner`: it uses the run's model,
settings and strategy through the runner's own methods, and changes nothing
of the run (a learning-rate sweep restores every variable and random
state). `TransferRun.evaluate`, `predict` and `find_learning_rate` call
them."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping
from typing import Any

import keras
import numpy as np

from transferkit.cache.kept import KeptCache
from transferkit.data.prepare import Data
from transferkit.data.several_inputs import prepare_inputs
from transferkit.engine import inference, lr_finder
from transferkit.engine.inference import Predictions
from transferkit.engine.loop import shard_evaluation
from transferkit.engine.optimizers import OptimizerSpec
from transferkit.groups.model_groups import groups_of
from transferkit.phases.training import (
    build_phase_cache,
    cached_labels,
    plan_for_phase,
    trainer_model,
)
from transferkit.run.phase_runner import PhaseRunner, batch_norm_policy
from transferkit.serving.predictions import FilePredictions, are_paths, predict_files
from transferkit.utils.checks import require_count

__all__ = ["evaluate", "find_learning_rate", "predict"]


def find_learning_rate(
    runner: PhaseRunner,
    data: Data,
    *,
    freeze: str | Iterable[str] = (),
    optimizer: OptimizerSpec | None = None,
    lr_multipliers: Mapping[str, float] | None = None,
    class_weight: Any = None,
    validation_data: Data | None = None,
    keep_cache: bool = True,
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    steps: int = 100,
    smoothing: float = 0.98,
    divergence: float = 4.0,
    seed: int = 0,
) -> lr_finder.LearningRateSweep:
    """Sweeps the learning rate of the phase `fine_tune(data,
    freeze=freeze, ...)` (or `train(data)`, with `freeze=()`) would run,
    and leaves the run exactly as it was (`transferkit.engine.lr_finder`).

    Args:
        data: training data, as for `train`.
        freeze: groups frozen for the sweep, beside those frozen now.
        optimizer: the phase's optimizer, as for `train`; its rate must
            be a number, which the sweep sets. Defaults to the run's.
        lr_multipliers: as for `train`.
        class_weight: as for `train`.
        validation_data: the phase's validation data, if it will have
            any: the sweep does not use it, but caches its features
            beside the training data's, so that the phase can take the
            whole cache. Defaults to `None`.
        keep_cache: keep the sweep's feature cache (in memory) for the
            run's next phase, which uses it where it holds that phase's
            features (the same frozen layers, weights and data;
            `transferkit.cache.kept`), and frees it otherwise. Defaults
            to `True`.
        min_lr: the first step's rate. Defaults to `1e-7`.
        max_lr: the last step's rate. Defaults to `10.0`.
        steps: steps (batches) at most. Defaults to `100`.
        smoothing: the loss average's factor. Defaults to `0.98`.
        divergence: stop once the smoothed loss exceeds this many times
            its lowest. Defaults to `4.0`.
        seed: seeds the sweep's own batch order. Defaults to `0`.

    Returns:
        A `LearningRateSweep`: rates, losses, the suggested rate and the
        rule, and `plot()` for the figure.
    """
    if runner.distribution.strategy is not None:
        raise ValueError(
            "The learning-rate sweep runs on one device; sweep with a run "
            "made without `strategy`, then train with it."
        )
    settings = (min_lr, max_lr, steps, smoothing, divergence, seed)
    lr_finder.check_settings(*settings[:5])
    names = (freeze,) if isinstance(freeze, str) else tuple(freeze)
    groups = runner.groups_named(names, "freeze")
    started = time.perf_counter()
    train, validation = runner.prepare_phase_data(
        data, validation_data, None, class_weight
    )
    multipliers = runner.check_multipliers(lr_multipliers)
    with lr_finder.state_kept(runner.model):
        frozen = runner.freeze_for_phase(groups)
        trained = tuple(
            n for n in groups_of(runner.model) if n not in runner.frozen_groups
        )
        with batch_norm_policy(runner.model, "inference"):
            optimizer = runner.make_optimizer(optimizer, multipliers)
            found, cache, cache_seconds = _sweep(
                runner, train, validation, frozen, optimizer, settings, keep_cache
            )
    seconds = time.perf_counter() - started
    return lr_finder.LearningRateSweep.of(found, trained, cache, seconds, cache_seconds)


def _sweep(runner: PhaseRunner, train, validation, frozen, optimizer, settings, keep):
    """`((rates, losses, smoothed, stopped), what the cache did, the
    seconds it took)`."""
    min_lr, max_lr, steps, smoothing, divergence, seed = settings
    if isinstance(
        optimizer._learning_rate, keras.optimizers.schedules.LearningRateSchedule
    ):
        raise ValueError(
            "The sweep sets the learning rate itself; its optimizer has a "
            "schedule. Pass optimizer= one with a constant rate."
        )
    runner.drop_kept_cache()
    options = dataclasses.replace(runner.training_options, lean_step=False)
    names = [group.name for group in frozen]
    plan = plan_for_phase(runner.model, options, train, validation, names)
    cache, plan = build_phase_cache(runner.model, plan, train, validation, options)
    try:
        compile_args = {**runner.compile_args(optimizer), "metrics": None}
        trainer, batches = _sweep_batches(
            runner, train, cache, plan, options, compile_args, seed
        )
        found = lr_finder.sweep_learning_rate(
            trainer,
            batches,
            min_lr=min_lr,
            max_lr=max_lr,
            steps=steps,
            smoothing=smoothing,
            divergence=divergence,
        )
    except BaseException:
        if cache is not None:
            cache.close()
        raise
    if cache is None:
        return found, f"no feature cache: {plan.reason}", 0.0
    where = f"the feature cache (layers {plan.span}): {plan.reason}"
    if keep and not cache.on_disk:
        runner.kept_cache = KeptCache.of(cache, plan, train, validation)
        return found, f"{where}; kept for the next phase", cache.seconds
    cache.close()
    return found, where, cache.seconds


def _sweep_batches(
    runner: PhaseRunner, train, cache, plan, options, compile_args, seed
):
    """The model the sweep trains, and its batches: of the cached
    features (in memory or files), or of the data itself."""
    batch_size = train.batch_size or runner.settings.batch_size
    if cache is None:
        trainer = keras.Sequential(runner.model.layers, name="sweep")
        trainer.compile(**compile_args)
        if train.is_dataset:
            return trainer, lr_finder.dataset_batches(train.x)
        return trainer, lr_finder.InMemoryBatches(train.arrays, batch_size, seed)
    trainer = trainer_model(runner.model, plan.rest, cache, options, compile_args)
    labels, weights, batch_size = cached_labels(cache, "train", train)
    arrays = [cache.features["train"], labels]
    arrays += [] if weights is None else [weights]
    if cache.on_disk:
        return trainer, lr_finder.batches_of(arrays, batch_size, seed)
    return trainer, lr_finder.InMemoryBatches(arrays, batch_size, seed)


def predict(
    runner: PhaseRunner,
    data: Any,
    *,
    batch_size: int | None = None,
    **file_options: Any,
) -> Predictions | FilePredictions:
    """The model's predictions, in inference mode (augmentation off).

    Args:
        data: image files or folders (a path, or a list of paths), loaded
            as the training images were (`transferkit.serving.predictions.
            predict_files`, whose options `file_options` passes on);
            or samples as arrays, `(x, y)`, a `ClassSubset`, or a
            batched `tf.data.Dataset`.
        batch_size: samples per step. Defaults to the run's.

    Returns:
        `FilePredictions` for files (file names, class names,
        probabilities; accuracy and confusion matrix for class folders),
        else `Predictions` (`outputs`, `predicted`, `labels`).
    """
    if batch_size is None:
        batch_size = runner.settings.batch_size
    batch_size = require_count(batch_size, "batch_size")
    if isinstance(data, list | tuple) and not data:
        raise ValueError(
            "Expected something to predict: image files or folders, or samples. "
            f"Received: an empty {type(data).__name__}"
        )
    if are_paths(data):
        return predict_files(runner.model, data, batch_size=batch_size, **file_options)
    if file_options:
        raise TypeError(
            f"{sorted(file_options)} apply to image files; `data` holds samples."
        )
    samples = data[0] if isinstance(data, tuple) else data
    if isinstance(samples, Mapping):  # Inputs by name: checked as for training.
        prepare_inputs(
            samples, runner.model, "data", lambda value, _: np.asarray(value)
        )
    return inference.predict(runner.model, data, batch_size=batch_size)


def evaluate(runner: PhaseRunner, data: Data) -> dict[str, Any]:
    """Evaluates the model as last compiled, e.g. on a test set.

    Args:
        data: as for `train`.

    Returns:
        A dictionary of metric name to value, e.g. `{"loss": ...,
        "accuracy": ...}`.
    """
    if not getattr(runner.model, "compiled", False):
        raise RuntimeError("The model has not been compiled yet; run a phase first.")
    prepared = runner.prepare(data, "data")
    distribution = runner.distribution
    if not distribution.multi_worker:
        with distribution.scope():
            return runner.model.evaluate(
                prepared.x,
                prepared.y,
                sample_weight=prepared.sample_weight,
                batch_size=prepared.batch_size,
                verbose=0,
                return_dict=True,
            )
    if prepared.is_dataset:
        raise ValueError(
            "Expected arrays or a `ClassSubset` to evaluate a multi-worker "
            "run (Keras 3's evaluate fails under MultiWorkerMirroredStrategy). "
            "Received: a tf.data.Dataset"
        )
    # Each worker evaluates its shard; the metrics are of all of them.
    with distribution.scope(), distribution.lost_workers("evaluating"):
        loop = shard_evaluation(
            runner.model, prepared.arrays, prepared.batch_size, distribution
        )
        return loop.evaluate()
