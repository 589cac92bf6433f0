"""Training one phase: which model trains, on what, and with which loop.

`train_phase` decides what trains (the model itself, or a `Sequential` of
its layers from the end of the cache on, sharing their weights) and feeds
it: with transferkit's own loop (`transferkit.engine.loop`) when the data is in
memory, with Keras' `fit` otherwise. Whatever trains, the callbacks see the
user's model as `self.model`, so `ModelCheckpoint` saves the whole model and
`EarlyStopping(restore_best_weights=True)` restores all of it; and batch
numbers never run past the epoch's real step count, which `fit` would
otherwise report with `steps_per_execution` above 1.

The first Ctrl-C during training finishes and records the current epoch and
then stops; a second one stops at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np

from transferkit.cache.features import FeatureCache
from transferkit.cache.kept import KeptCache
from transferkit.cache.plan import CachePlan, has_own_fit, plan_phase_cache
from transferkit.data.prepare import PhaseData
from transferkit.data.several_inputs import map_inputs
from transferkit.engine.also_evaluate import AlsoEvaluate
from transferkit.engine.callbacks import (
    EpochHook,
    EpochRecorder,
    PhaseCallbacks,
    StopAfterEpoch,
)
from transferkit.engine.distribution import Distribution
from transferkit.engine.epoch_guard import EpochGuard
from transferkit.engine.loop import DEFAULT_STEPS_PER_CALL, DatasetLoop, InMemoryLoop
from transferkit.engine.optimizers import has_fused_kernel
from transferkit.errors import CacheTooLarge
from transferkit.groups.behaviour import trains_nothing
from transferkit.groups.model_groups import groups_of
from transferkit.layers.lean import LeanDropout, LeanSoftmax, lean_layers

__all__ = [
    "LOOP_CODES",
    "Training",
    "TrainingOptions",
    "build_phase_cache",
    "cached_labels",
    "plan_for_phase",
    "train_phase",
    "trainer_model",
]

LOOP_CODES = {
    "own": "transferkit's loop, on data in memory",
    "own_sharded_dataset": "transferkit's loop, on a dataset the strategy "
    "shards (several workers)",
    "fit_requested": "Keras fit: training_loop='fit'",
    "fit_own": "the model's own fit: it does more than train_step (a "
    "keras-hub task's preprocessing)",
    "fit_cache_on_disk": "Keras fit: the feature cache is on disk",
    "fit_dataset": "Keras fit: the data is a tf.data.Dataset",
}
"""What each `Training.loop_code` (`PhaseResult.training_loop_code`) means."""


@dataclasses.dataclass(frozen=True)
class TrainingOptions:
    """How a run trains its phases; set once per run."""

    precision: str
    """The run's dtype policy, given to a trainer model too."""

    feature_cache: bool
    """Whether frozen leading layers may be computed once per phase."""

    feature_cache_memory: int
    """Bytes of cached features held in memory; more go to files."""

    cache_folder: str | None
    """Where cache files go (the run folder); `None`: a temporary folder."""

    lean_step: bool
    """Train with `LeanDropout` and fused optimizer updates."""

    cache_datasets: bool | str = False
    """Whether a finite `tf.data.Dataset` may be cached: read once, its
    features served every epoch; `"deterministic"` also where its pipeline
    has random operations."""

    training_loop: str = "auto"
    """`"auto"`: transferkit's own loop for data in memory, else `fit`;
    `"fit"`: always Keras' `fit`."""

    steps_per_execution: int = 1
    """Steps per call into TensorFlow that the run was given."""

    augmented_views: int = 1
    """Augmented views per sample the cache may hold, with augmentation
    layers in front of the frozen groups; 1: none."""

    measure_blocks: bool = False
    """Measure the cache fill's fastest block size. Off: a run fills in
    fixed blocks (`transferkit.cache.blocks.fixed_size`), the same bits every
    time, and on a 2-core AMD EPYC faster than measuring, whose trials of
    slower sizes cost more than they found (`benchmarks/cache_fill.py`:
    4.99 s against 6.41 s for 30,000 digits)."""

    distribution: Distribution = dataclasses.field(
        default_factory=lambda: Distribution(None)
    )
    """The run's strategy; one device by default."""


@dataclasses.dataclass(frozen=True)
class Training:
    """What training a phase did, for its `PhaseResult`."""

    cached_layers: int
    """Leading layers computed once, from the cache; 0 when not used."""

    cache: str
    """Where the cache lived, or why it was not used."""

    cache_seconds: float
    """Seconds spent computing the cache."""

    lean_step: str
    """What the lean step changed; empty when it was off."""

    interrupted: bool
    """Whether Ctrl-C stopped the phase after an epoch."""

    loop: str = ""
    """Which loop trained, and why (e.g. `"transferkit's, 32 steps per
    call"`, `"Keras fit: `data` is a tf.data.Dataset"`)."""

    cache_code: str = ""
    """`cache` as a code of `transferkit.cache.plan.CODES`."""

    loop_code: str = ""
    """`loop` as a code of `LOOP_CODES`."""


def train_phase(
    model: keras.Model,
    compile_args: Mapping[str, Any],
    *,
    train: PhaseData,
    validation: PhaseData | None,
    frozen: Sequence[str],
    epochs: int,
    initial_epoch: int,
    callbacks: Sequence[keras.callbacks.Callback],
    verbose: str | int,
    on_epoch_end: EpochHook,
    options: TrainingOptions,
    phase: str = "",
    on_cache: Callable[[float], None] = lambda seconds: None,
    kept: KeptCache | None = None,
    also_evaluate: AlsoEvaluate | None = None,
) -> Training:
    """Trains `model`, compiled with `compile_args`, from `initial_epoch` to
    `epochs`.

    Args:
        model: the user's model, compiled for the phase.
        compile_args: what `model` was compiled with; a trainer model is
            compiled with the same (the same optimizer instance).
        train: the phase's training data.
        validation: its validation data, or `None`.
        frozen: names of the frozen groups.
        epochs: the epoch to stop after.
        initial_epoch: epochs already done (a resumed phase).
        callbacks: the user's callbacks.
        verbose: `fit`'s verbosity.
        on_epoch_end: records and saves each epoch.
        options: the run's training options.
        phase: the phase's name, for the epoch guard's messages.
        on_cache: called with the cache's seconds, once it is built.
        kept: a learning-rate sweep's cache, used if it holds this phase's
            features (`transferkit.cache.kept`), else freed.
        also_evaluate: data sets `model` itself is evaluated on at each
            epoch's end, their metrics added to the epoch's logs.

    Raises:
        NonFiniteError: from the epoch guard, at a non-finite loss or weight.
        ValueError: from the epoch guard, at an epoch without batches.
    """
    fused = options.lean_step and has_fused_kernel(compile_args["optimizer"])
    plan = plan_for_phase(model, options, train, validation, frozen)
    if initial_epoch >= epochs:  # Resumed after its last epoch was saved.
        if kept is not None:
            kept.close()
        return _summary(plan, None, _lean([], fused, compile_args["optimizer"]))
    _announce(verbose, phase, model, frozen, epochs, initial_epoch, plan)
    given = train, validation
    train, validation = _shard(train, options), _shard(validation, options)
    cache, plan = _phase_cache(model, plan, kept, train, validation, options, verbose)
    try:
        on_cache(cache.seconds if cache else 0.0)
        layers = plan.rest if cache else model.layers
        trainer = trainer_model(model, layers, cache, options, compile_args)
        recorder = EpochRecorder(on_epoch_end)
        loop, *why = _loop(trainer, train, validation, cache, callbacks, options, given)
        phase_callbacks = _phase_callbacks(
            model, trainer, recorder, callbacks, verbose, epochs, phase,
            steps=_epoch_steps(loop, train, validation), also_evaluate=also_evaluate,
        )  # fmt: skip
        with StopAfterEpoch(recorder):
            epochs_from = {"initial_epoch": initial_epoch, "epochs": epochs}
            if loop is not None:
                loop.fit(**epochs_from, callbacks=phase_callbacks)
            else:
                fit_data = _fit_data(train, validation, cache, verbose, trainer)
                trainer.fit(**fit_data, **epochs_from, callbacks=phase_callbacks)
    finally:
        if cache is not None:
            cache.close()
    lean = _lean(trainer.layers, fused, compile_args["optimizer"])
    return _summary(plan, cache, lean, recorder.interrupted, why)


def _phase_callbacks(
    model, trainer, recorder, callbacks, verbose, epochs, phase, *, steps,
    also_evaluate,
) -> PhaseCallbacks:  # fmt: skip
    """The phase's callbacks, bound to the user's `model` while `trainer`
    trains: the epoch guard, the recorder, the user's; `steps` are batches
    per epoch and per validation (`_epoch_steps`)."""
    # The guard sees each epoch before the recorder saves it.
    return PhaseCallbacks(
        [EpochGuard(phase, model, steps["steps"]), recorder, *callbacks],
        model=model,
        trainer=trainer,
        verbose=verbose,
        epochs=epochs,
        also_evaluate=also_evaluate,
        **steps,
    )


def _phase_cache(model, plan, kept, train, validation, options, verbose):
    """`(cache or None, plan)`: a sweep's kept cache where it holds the
    phase's features, else one built for the phase (`build_phase_cache`)."""
    cache = None if kept is None else kept.take(plan, train, validation)
    if cache is not None:
        return cache, plan
    return build_phase_cache(model, plan, train, validation, options, verbose)


def _summary(
    plan, cache, lean: str, interrupted: bool = False, loop=("", "")
) -> Training:
    """What training did, for the phase's result; `loop` is `(why, code)`."""
    return Training(
        cached_layers=plan.layers if cache is not None else 0,
        cache=_describe_cache(plan, cache),
        cache_seconds=cache.seconds if cache is not None else 0.0,
        lean_step=lean,
        interrupted=interrupted,
        loop=loop[0],
        cache_code=plan.code,
        loop_code=loop[1],
    )


def _loop(trainer, train, validation, cache, callbacks, options, given):
    """`(loop, why, code)`: transferkit's loop for a dataset under several
    workers (which the strategy shards, so it takes the data as `given`) or
    for data in memory, else `(None, why, code)`: `fit` trains. The codes are
    those of `LOOP_CODES`."""
    if cache is None and _needs_dataset_loop(*given, options):
        return _dataset_loop(trainer, *given, callbacks, options)
    return _in_memory_loop(trainer, train, validation, cache, callbacks, options)


def _epoch_steps(loop, train, validation) -> dict[str, int | None]:
    """Batches per epoch and per validation (`None` where unknown), as the
    loop or `fit` runs them, for the progress bar and the batch numbers."""
    if loop is not None:
        held = loop.validation_steps if validation is not None else None
        return {"steps": loop.steps, "validation_steps": held}
    held = validation.steps if validation is not None else None
    return {"steps": train.steps, "validation_steps": held}


def _in_memory_loop(trainer, train, validation, cache, callbacks, options):
    """`(InMemoryLoop, why, code)` when the phase's data is in memory, else
    `(None, why, code)`: `fit` trains."""
    distribution = options.distribution
    if options.training_loop == "fit":
        return None, "Keras fit: training_loop='fit'", "fit_requested"
    if has_own_fit(trainer):
        why = f"{type(trainer).__name__}.fit: the model's own fit, which does "
        return None, why + "more than train_step", "fit_own"
    if cache is not None and cache.on_disk:
        return None, "Keras fit: the feature cache is on disk", "fit_cache_on_disk"
    for name, data in (("data", train), ("validation_data", validation)):
        if cache is None and data is not None and data.is_dataset:
            return None, f"Keras fit: `{name}` is a tf.data.Dataset", "fit_dataset"
    steps = _steps_per_call(callbacks, options)
    if cache is None:
        x, y, weights = train.x, train.y, train.sample_weight
        batch_size = train.batch_size
        held = None if validation is None else validation.arrays
    else:
        x = cache.features["train"]
        y, weights, batch_size = cached_labels(cache, "train", train)
        held = None
        if validation is not None:
            labels, held_weights, _ = cached_labels(cache, "validation", validation)
            held = (cache.features["validation"], labels)
            held += () if held_weights is None else (held_weights,)
    loop = InMemoryLoop(
        trainer,
        x,
        y,
        sample_weight=weights,
        batch_size=batch_size,
        steps_per_call=steps,
        validation=held,
        distribution=distribution,
        views=1 if cache is None else cache.views,
    )
    return loop, _describe_loop(loop, distribution.describe()), "own"


def _steps_per_call(callbacks, options) -> int:
    # A callback that watches batches sees each one, as in fit.
    steps = options.steps_per_execution
    if not any(_watches_batches(callback) for callback in callbacks):
        steps = max(steps, DEFAULT_STEPS_PER_CALL)
    return steps


def _needs_dataset_loop(train, validation, options) -> bool:
    """Whether a phase trains on a dataset (uncached) where `fit` cannot:
    with several workers."""
    return options.distribution.multi_worker and any(
        data is not None and data.is_dataset for data in (train, validation)
    )


def _dataset_loop(trainer, train, validation, callbacks, options):
    """`(DatasetLoop, why, code)` for a multi-worker phase with a dataset, whose
    strategy shards it; arrays beside it go in as a dataset too."""
    if train.steps_per_epoch is not None:
        raise ValueError(
            "transferkit's loop for several workers reads a dataset to its "
            "end each epoch; it takes no steps_per_epoch. Pass a finite "
            f"dataset (e.g. `dataset.take({train.steps_per_epoch})`). Received: "
            f"steps_per_epoch={train.steps_per_epoch}"
        )
    train = train.as_dataset(shuffle=True)
    if validation is not None:
        validation = validation.as_dataset(shuffle=False)
    loop = DatasetLoop(
        trainer,
        train.x,
        steps_per_call=_steps_per_call(callbacks, options),
        validation=None if validation is None else validation.x,
        distribution=options.distribution,
    )
    where = f"{options.distribution.describe()}; the dataset sharded by the strategy"
    return loop, _describe_loop(loop, where), "own_sharded_dataset"


def _describe_loop(loop, where: str) -> str:
    steps = loop.steps_per_call
    why = f"transferkit's, {steps} step{'s' * (steps != 1)} per call"
    return f"{why}; {where}" if where else why


def _shard(data: PhaseData | None, options: TrainingOptions) -> PhaseData | None:
    """This worker's share of `data` when several workers train: every
    `workers`-th sample of arrays, every `workers`-th batch of a dataset (which
    the cache then reads); `data` itself on one machine."""
    distribution = options.distribution
    if data is None or not distribution.multi_worker:
        return data
    if data.is_dataset:
        return dataclasses.replace(
            data, x=data.x.shard(distribution.workers, distribution.worker)
        )
    weights = data.sample_weight
    return dataclasses.replace(
        data,
        x=map_inputs(distribution.shard, data.x),
        y=distribution.shard(data.y),
        sample_weight=None if weights is None else distribution.shard(weights),
    )


def _watches_batches(callback) -> bool:
    base = keras.callbacks.Callback
    return any(
        getattr(type(callback), hook) is not getattr(base, hook)
        for hook in (
            "on_train_batch_begin",
            "on_train_batch_end",
            "on_batch_end",
            "on_batch_begin",
        )
    )


def plan_for_phase(model, options, train, validation, frozen) -> CachePlan:
    """The cache plan of a phase with the groups `frozen` on its data, under
    the run's options (`transferkit.cache.plan.plan_phase_cache`)."""
    data = {"data": train.x}
    if validation is not None:
        data["validation_data"] = validation.x
    return plan_phase_cache(
        model,
        frozen,
        data,
        enabled=options.feature_cache,
        cache_datasets=options.cache_datasets,
        views=options.augmented_views,
        steps_per_epoch=train.steps_per_epoch,
    )


def _announce(verbose, phase, model, frozen, epochs, initial_epoch, plan) -> None:
    """Prints the line that opens a phase's progress output, unless quiet."""
    if verbose == 0:
        return
    done = f", resumed after epoch {initial_epoch}" if initial_epoch else ""
    # A group of preprocessing alone trains nothing: named apart, not as
    # training, so that the header lists only what the optimizer changes.
    open_groups = [(n, g) for n, g in groups_of(model).items() if n not in frozen]
    empty = [name for name, group in open_groups if trains_nothing(group)]
    trains = [name for name, _ in open_groups if name not in empty]
    weightless = f"; no weights: {', '.join(empty)}" if empty else ""
    cache = (
        f"layers {plan.span} computed once ({plan.reason})"
        if plan.layers
        else f"not used ({plan.reason})"
    )
    print(
        f"Phase '{phase}': {epochs} epoch{'s' * (epochs != 1)}{done}; frozen: "
        f"{', '.join(frozen) or 'nothing'}; trains: "
        f"{', '.join(trains) or 'nothing'}{weightless}; feature cache: {cache}",
        flush=True,
    )


def build_phase_cache(
    model, plan, train, validation, options, verbose=0
) -> tuple[FeatureCache | None, CachePlan]:
    """The features of the cached layers for the phase's arrays (or `None`),
    and the plan they follow: with several workers, a cache that would not
    fit in memory is not built, since their loop trains from memory alone."""
    if not plan.layers:
        return None, plan
    arrays = {"train": train.x}
    if validation is not None:
        arrays["validation"] = validation.x
    if verbose != 0:
        print(f"Computing the feature cache (layers {plan.span})...", flush=True)
    try:
        cache = FeatureCache(
            plan.front,
            arrays,
            memory_limit=options.feature_cache_memory,
            folder=options.cache_folder,
            disk=not options.distribution.multi_worker,
            views=plan.views,
            augmenting=plan.augmenting,
            measure_blocks=options.measure_blocks,
        )
    except CacheTooLarge as error:
        return None, CachePlan(
            0,
            f"{error}; transferkit's loop, which trains every multi-worker run, "
            "takes its data from memory: raise `feature_cache_memory` to cache",
            "too_large",
        )
    if verbose != 0:
        print(
            f"Feature cache ready in {cache.seconds:.1f} s: {cache.describe()}",
            flush=True,
        )
    return cache, plan


def trainer_model(model, layers, cache, options, compile_args) -> keras.Model:
    """What `fit` trains: the model itself, unless the cache or the lean step
    asks for a model of `layers`, sharing their weights, that takes the
    cache's features (or the model's input), compiled with `compile_args`."""
    lean = options.lean_step and isinstance(model, keras.Sequential)
    if cache is None and not lean:
        return model
    if options.lean_step:
        layers = lean_layers(layers)
    trainer = keras.Sequential(
        [
            keras.Input(cache.sample_shape, dtype=cache.dtype)
            if cache is not None
            else keras.Input(model.input_shape[1:]),
            *layers,
        ],
        name=f"{model.name}_trainer",
    )
    if options.precision != "float32":
        trainer.dtype_policy = options.precision  # Keras scales float16 losses by it.
    trainer.compile(**compile_args)
    return trainer


def _batched(train, validation):
    """Arrays as datasets of batches, the training data shuffled every
    epoch, for a model's own `fit`, which may batch arrays unshuffled (a
    keras-hub task's does)."""

    def batched(data, shuffle):
        if data is None or data.is_dataset:
            return data
        return dataclasses.replace(data.as_dataset(shuffle=shuffle), batch_size=None)

    return batched(train, True), batched(validation, False)


def _fit_data(train, validation, cache, verbose, trainer) -> dict[str, Any]:
    """`fit`'s data arguments (and `verbose`): the phase's data, or the
    cache's features."""
    if cache is None and has_own_fit(trainer):
        train, validation = _batched(train, validation)
    if cache is None:
        return {
            "x": train.x,
            "y": train.y,
            "batch_size": train.batch_size,
            "sample_weight": train.sample_weight,
            "validation_data": validation.for_fit() if validation else None,
            # A dataset shuffles itself; Keras warns if asked to.
            "shuffle": isinstance(train.x, np.ndarray),
            "verbose": verbose,
            "steps_per_epoch": train.steps_per_epoch,
        }
    arguments = {
        "x": _cached(cache, "train", train, shuffle=True),
        "shuffle": False,
        "verbose": verbose,
    }
    if validation is not None:
        arguments["validation_data"] = _cached(
            cache, "validation", validation, shuffle=False
        )
    return arguments


def _cached(cache, name, data, *, shuffle):
    """Batches of the cache's features for `data`, for `fit`."""
    labels, weights, batch_size = cached_labels(cache, name, data)
    return cache.dataset(
        name, labels, batch_size, shuffle=shuffle, sample_weight=weights
    )


def cached_labels(cache, name, data):
    """`(labels, sample_weight, batch_size)` of the cached `data`: its own,
    or, for a dataset, those the cache read from it (`None`: no weights)."""
    if data.is_dataset:
        weights = cache.sample_weights.get(name)
        return cache.labels[name], weights, cache.batch_sizes[name]
    return data.y, data.sample_weight, data.batch_size


def _describe_cache(plan, cache) -> str:
    if not plan.layers:
        return f"not used: {plan.reason}"
    where = cache.describe() if cache is not None else "not needed (resumed)"
    return f"{where}; layers {plan.span}: {plan.reason}"


def _lean(layers, fused: bool, optimizer) -> str:
    dropouts = sum(isinstance(layer, LeanDropout) for layer in layers)
    softmaxes = sum(isinstance(layer, LeanSoftmax) for layer in layers)
    return "; ".join(
        [f"{dropouts} Dropout layers on bit masks"] * bool(dropouts)
        + [f"{softmaxes} softmax from exp and sums"] * bool(softmaxes)
        + [f"fused {type(optimizer).__name__} updates"] * fused
    )
