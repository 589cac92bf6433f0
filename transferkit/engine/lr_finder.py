"""A learning-rate sweep over what a phase would train (fastai's `lr_find`).

`run.find_learning_rate(data, freeze=[...])` trains the groups that such a
phase would train with a fresh optimizer of the phase, one batch a step,
while the learning rate grows exponentially from `min_lr` to `max_lr`; it
records the loss of every batch and stops early once the smoothed loss
exceeds `divergence` times its lowest (or is not finite). Where the phase
would compute its frozen front once (the feature cache), the sweep trains
on the cached features too, so a sweep over a frozen backbone costs little
more than computing them.

The suggestion follows fastai's "steepest" rule: the rate where the smoothed
loss falls fastest against the logarithm of the rate, before its minimum;
`minimum_rate` is given beside it. A suggestion is only ever a rate the sweep
tried, at a step where the loss fell and every loss so far was finite; where
there is none (the loss never fell, or the first step's was not finite),
`suggested` is `None` and `rule` says why.

Afterwards everything is as it was: every variable of the model (weights,
BatchNorm statistics, random-seed states), the trainable flags, the model's
compiled optimizer (the sweep trains a model of the same layers compiled
with its own), and the random state of Python, NumPy and Keras' global
seed generator; the batches are drawn from a generator of the sweep's own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

__all__ = [
    "InMemoryBatches",
    "LearningRateSweep",
    "check_settings",
    "suggest_rate",
    "sweep_learning_rate",
]


@dataclasses.dataclass(frozen=True)
class LearningRateSweep:
    """What a sweep measured."""

    learning_rates: tuple[float, ...]
    losses: tuple[float, ...]
    """The loss of each step's batch, at the rate of that step."""
    smoothed: tuple[float, ...]
    """`losses` smoothed by an exponential moving average, bias-corrected."""
    suggested: float | None
    """The rate where the smoothed loss falls fastest (`rule`), or `None`
    where the loss never fell (`rule` says why)."""
    minimum_rate: float | None
    """The rate of the lowest smoothed loss, or `None` with no suggestion."""
    rule: str
    stopped: str
    """Why the sweep ended: after its steps, or where the loss diverged."""
    trained: tuple[str, ...]
    """The groups the sweep trained (those the phase would train)."""
    cache: str
    """Whether the sweep trained on the feature cache, and why (not)."""
    seconds: float
    cache_seconds: float = 0.0
    """Of `seconds`, those spent computing the feature cache."""

    @classmethod
    def of(
        cls, found, trained, cache: str, seconds: float, cache_seconds: float = 0.0
    ) -> LearningRateSweep:
        """The sweep of `found`, `(rates, losses, smoothed, stopped)`."""
        rates, losses, smoothed, stopped = found
        steepest, lowest = suggest_rate(rates, smoothed)
        rule = "steepest descent of the smoothed loss before its minimum"
        if steepest is None:
            rule = (
                f"none: the smoothed loss never fell over the rates tried "
                f"({rates[0]:.3g} to {rates[-1]:.3g}) while finite; lower min_lr, "
                "or check the data and the loss"
            )
        return cls(
            learning_rates=tuple(rates),
            losses=tuple(losses),
            smoothed=tuple(smoothed),
            suggested=steepest,
            minimum_rate=lowest,
            rule=rule,
            stopped=stopped,
            trained=tuple(trained),
            cache=cache,
            seconds=seconds,
            cache_seconds=cache_seconds,
        )

    def plot(self, path: str | Path | None = None):
        """The loss against the learning rate (log scale), the suggestion
        marked; saved to `path` when given. Needs matplotlib (the `plots`
        extra)."""
        from transferkit.records.plots import plot_learning_rate_sweep

        figure = plot_learning_rate_sweep(self)
        if path is not None:
            figure.savefig(path, dpi=110, bbox_inches="tight")
        return figure


def suggest_rate(
    rates: Sequence[float], smoothed: Sequence[float]
) -> tuple[float | None, float | None]:
    """`(steepest, minimum)`: the rate at the most negative slope of the
    smoothed loss against log10(rate) before its minimum (skipping the first
    tenth of the steps, where the average is still settling), and the rate
    of the minimum; over the steps before the first non-finite loss.
    `(None, None)` where the loss never fell below the first step's: every
    rate returned is one the sweep tried, where the loss fell.

    >>> rates = [10 ** (k / 4 - 4) for k in range(12)]
    >>> losses = [2.0, 2.0, 1.95, 1.8, 1.2, 0.9, 0.8, 0.75, 0.7, 1.5, 3.0, 9.0]
    >>> steepest, lowest = suggest_rate(rates, losses)
    >>> round(steepest, 6), round(lowest, 6)
    (0.001, 0.01)
    """
    rates, smoothed = np.asarray(rates, float), np.asarray(smoothed, float)
    finite = np.isfinite(smoothed)
    count = len(smoothed) if finite.all() else int(np.argmin(finite))
    rates, smoothed = rates[:count], smoothed[:count]
    if count < 2 or not smoothed.min() < smoothed[0]:
        return None, None
    lowest = int(np.argmin(smoothed))
    start = min(len(rates) // 10, max(lowest - 1, 0))
    if lowest - start < 2:
        start = 0
    slopes = np.gradient(
        smoothed[start : lowest + 1], np.log10(rates[start : lowest + 1])
    )
    steepest = int(np.argmin(slopes))
    if not slopes[steepest] < 0:
        return None, None
    return float(rates[start + steepest]), float(rates[lowest])


def check_settings(min_lr, max_lr, steps, smoothing, divergence) -> None:
    """Raises for sweep settings out of range, naming them."""
    bounds = (min_lr, max_lr)
    if not all(
        not isinstance(b, bool) and isinstance(b, int | float | np.number)
        for b in bounds
    ) or not (0 < min_lr < max_lr and math.isfinite(max_lr)):
        raise ValueError(
            "Expected finite rates 0 < min_lr < max_lr. Received: "
            f"min_lr={min_lr!r}, max_lr={max_lr!r}"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"Expected `steps` to be an int >= 2. Received: {steps!r}")
    if not 0 <= smoothing < 1:
        raise ValueError(
            f"Expected 0 <= smoothing < 1. Received: smoothing={smoothing!r}"
        )
    if not divergence > 1:
        raise ValueError(
            f"Expected divergence > 1. Received: divergence={divergence!r}"
        )


def sweep_learning_rate(
    trainer: keras.Model,
    batches: Iterator[tuple] | InMemoryBatches,
    *,
    min_lr: float,
    max_lr: float,
    steps: int,
    smoothing: float,
    divergence: float,
) -> tuple[list[float], list[float], list[float], str]:
    """Trains `trainer` (compiled with the sweep's optimizer) one batch a
    step at exponentially growing rates; returns the rates, losses, smoothed
    losses and why it stopped. Batches in memory run `_CHUNK` steps a call
    into TensorFlow; others one step a call."""
    exponents = np.arange(steps) / max(1, steps - 1)
    rates = (min_lr * (max_lr / min_lr) ** exponents).tolist()
    if isinstance(batches, InMemoryBatches):
        chunks = batches.losses(trainer, rates)
    else:
        chunks = _losses_one_by_one(trainer, batches, rates)
    losses, smoothed = [], []
    average, best = 0.0, math.inf
    for chunk in chunks:
        for loss in chunk:
            step = len(losses)
            losses.append(float(loss))
            average = smoothing * average + (1 - smoothing) * losses[-1]
            smoothed.append(average / (1 - smoothing ** (step + 1)))
            if not math.isfinite(losses[-1]):
                stopped = (
                    f"at step {step + 1} of {steps}: the loss was {losses[-1]} "
                    f"(not finite) at the rate {rates[step]:.3g}"
                )
                return rates[: step + 1], losses, smoothed, stopped
            if smoothed[-1] > divergence * best:
                stopped = (
                    f"at step {step + 1} of {steps}: the smoothed loss "
                    f"{smoothed[-1]:.4g} exceeded {divergence:g} times its lowest"
                )
                return rates[: step + 1], losses, smoothed, stopped
            best = min(best, smoothed[-1])
    return rates, losses, smoothed, f"after its {steps} steps"


_CHUNK = 25
"""Steps per call into TensorFlow for batches in memory; the divergence is
checked between calls (the steps after it are discarded)."""


def _losses_one_by_one(trainer, batches, rates) -> Iterator[list[float]]:
    step_function = tf.function(trainer.train_step)
    for rate in rates:
        trainer.optimizer.learning_rate = rate
        trainer.reset_metrics()
        yield [float(np.asarray(step_function(next(batches))["loss"]))]


class InMemoryBatches:
    """Shuffled batches of per-sample tensors in memory, gathered inside a
    compiled loop of many steps; the order is drawn from a generator of its
    own, epoch after epoch."""

    def __init__(self, tensors: Sequence[Any], batch_size: int, seed: int):
        self.tensors = [
            t if isinstance(t, tf.Tensor) else tf.constant(t) for t in tensors
        ]
        self.rows = int(self.tensors[0].shape[0])
        self.batch_size = min(batch_size, self.rows)
        self.rng = np.random.default_rng(seed)

    def losses(self, trainer, rates) -> Iterator[np.ndarray]:
        """The loss of each step at `rates`, `_CHUNK` steps a call."""
        steps = len(rates)
        needed = steps * self.batch_size
        order = np.concatenate(
            [self.rng.permutation(self.rows) for _ in range(-(-needed // self.rows))]
        )[:needed].reshape(steps, self.batch_size)
        trainer._symbolic_build(data_batch=tuple(t[:1] for t in self.tensors))
        run = tf.function(lambda order, rates: self._steps(trainer, order, rates))
        for start in range(0, steps, _CHUNK):
            chunk = slice(start, start + _CHUNK)
            yield np.asarray(
                run(tf.constant(order[chunk], tf.int32), tf.constant(rates[chunk]))
            )

    def _steps(self, trainer, order, rates):
        losses = tf.TensorArray(tf.float32, size=tf.shape(rates)[0])
        for step in tf.range(tf.shape(rates)[0]):
            trainer.optimizer.learning_rate.assign(tf.cast(rates[step], "float32"))
            for metric in trainer.metrics:
                metric.reset_state()
            batch = tuple(tf.gather(t, order[step]) for t in self.tensors)
            logs = trainer.train_step(batch)
            losses = losses.write(step, tf.cast(logs["loss"], tf.float32))
        return losses.stack()


def batches_of(arrays: Sequence[Any], batch_size: int, seed: int) -> Iterator[tuple]:
    """Endless shuffled batches of per-sample `arrays` read from the feature
    cache's files (which `read` rows) or arrays, one batch at a time, in an
    order drawn from a generator of their own."""
    rng = np.random.default_rng(seed)
    rows = len(arrays[0])
    while True:
        order = rng.permutation(rows)
        for start in range(0, rows, batch_size):
            chosen = order[start : start + batch_size]
            yield tuple(_rows(values, chosen) for values in arrays)


def _rows(values, chosen: np.ndarray) -> tf.Tensor:
    if hasattr(values, "read"):  # A FeatureFile or FeatureViews.
        return tf.constant(values.read(chosen))
    return tf.constant(np.asarray(values)[chosen])


def dataset_batches(dataset: tf.data.Dataset) -> Iterator[tuple]:
    """Endless batches of a dataset, its epochs one after another."""
    while True:
        empty = True
        for batch in dataset:
            empty = False
            yield tuple(batch)
        if empty:
            raise ValueError("The dataset yielded no batches.")


@contextlib.contextmanager
def state_kept(model: keras.Model) -> Iterator[None]:
    """Restores, after the block, every variable of `model`, its layers'
    trainable flags and the global random states."""
    variables = list({id(v): v for v in model.variables}.values())
    values = [np.array(keras.ops.convert_to_numpy(v)) for v in variables]
    flags = [(layer, layer.trainable) for layer in _all_layers(model)]
    python_state, numpy_state = random.getstate(), np.random.get_state()
    generator = _global_seed_generator()
    seed_state = None if generator is None else np.array(generator.state.numpy())
    try:
        yield
    finally:
        for layer, trainable in flags:
            layer.trainable = trainable
        for variable, value in zip(variables, values, strict=True):
            variable.assign(value)
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        if generator is not None:
            generator.state.assign(seed_state)


def _all_layers(model: keras.Model) -> list[keras.Layer]:
    return [model, *model._flatten_layers(include_self=False, recursive=True)]


def _global_seed_generator():
    """Keras' global seed generator, if one was made (by `keras.random`
    calls without a seed)."""
    from keras.src.backend.common import global_state

    return global_state.get_global_attribute("global_seed_generator")
