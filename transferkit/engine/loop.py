"""transferkit's own training loop, for data already in memory.

Keras' `fit` feeds every step through a `tf.data` iterator and returns to
Python after every step (or every `steps_per_execution` steps). For a phase
whose data is in memory (arrays, or the feature cache's features), this loop
instead runs many steps per call into TensorFlow: each call takes a slice of
the epoch's permutation of the rows, gathers each batch from the tensors, and
runs Keras' own `train_step` on it, inside one compiled `tf.while_loop`.

It keeps what `fit` gives: the callbacks (epoch hooks, batch hooks once per
call with the number of the call's last batch, `stop_training`), the
progress bar, the `History`, the validation metrics (`val_` prefixed, from
Keras' own `test_step`), seeded repeatability (the permutation is drawn from
TensorFlow's global generator, which a seeded run seeds at the start of
every epoch, so that a resumed epoch draws what it drew before), and, through the
callbacks the run adds, checkpoints and Ctrl-C after the epoch.

Under a strategy (`transferkit.engine.distribution`) each step's global batch is
split among the replicas: each gathers its own rows of the batch and runs
`train_step` through `strategy.run`, and Keras' optimizer sums the gradients
across them, as in `fit`. With several workers, each holds its own shard of
the rows and takes its part of every global batch from it; all workers run
the same number of steps. The logs are the metrics of all replicas together
(their variables summed across the cluster), the same on every worker, and
the moving statistics of trainable BatchNormalization layers, which Keras 3
updates on each replica from its own rows, are averaged across the replicas
after every call (an average of moving averages is the moving average of the
averages, so this is the same as averaging them every step).
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from transferkit.data.several_inputs import first_input, map_inputs
from transferkit.engine.distribution import Distribution

__all__ = ["DEFAULT_STEPS_PER_CALL", "DatasetLoop", "InMemoryLoop", "shard_evaluation"]

DEFAULT_STEPS_PER_CALL = 32
"""Steps per call when no callback needs to see every batch: Python's share
of a step is then a thirty-second of a call's overhead."""


class _Loop:
    """What both loops share: the epochs with their callbacks, the logs, the
    validation, and what a strategy needs after a call.

    A loop gives `_train_calls` and `_test_calls`: each yields, call by call,
    `(first, run)`, where `first` is the number of the call's first batch
    and `run()` runs the call and returns how many steps it ran.
    """

    def __init__(self, model, *, steps_per_call, distribution):
        self.model = model
        self.distribution = distribution or Distribution(None)
        self.steps_per_call = steps_per_call
        self._distributed = self.distribution.strategy is not None
        self._statistics = self.distribution.synchronized_statistics(model)
        if self._distributed:
            self._metrics = tf.function(self._distributed_metrics)

    def fit(
        self,
        *,
        epochs: int,
        initial_epoch: int,
        callbacks: keras.callbacks.CallbackList,
    ) -> None:
        """Trains from `initial_epoch` to `epochs`, as `fit` would."""
        model = self.model
        model.stop_training = False
        callbacks.on_train_begin()
        logs = None
        for epoch in range(initial_epoch, epochs):
            model.reset_metrics()
            callbacks.on_epoch_begin(epoch)
            for first, run in self._train_calls():
                callbacks.on_train_batch_begin(first)
                count = run()
                if not count:  # A dataset that ran out.
                    break
                callbacks.on_train_batch_end(first + count - 1, self._logs())
                if model.stop_training:
                    break
            logs = self._logs()
            if self.has_validation:
                validation = self.evaluate(callbacks)
                logs.update({f"val_{key}": value for key, value in validation.items()})
            callbacks.on_epoch_end(epoch, logs)
            if model.stop_training:
                break
        if epochs > initial_epoch:
            model.optimizer.finalize_variable_values(model.trainable_weights)
        callbacks.on_train_end(logs=logs)

    def evaluate(self, callbacks: keras.callbacks.CallbackList | None = None):
        """The validation metrics, as Keras' `evaluate` computes them."""
        if not self.has_validation:
            raise ValueError("This loop was given no validation data.")
        self.model.reset_metrics()
        if callbacks is not None:
            callbacks.on_test_begin()
        for first, run in self._test_calls():
            if callbacks is not None:
                callbacks.on_test_batch_begin(first)
            count = run()
            if not count:
                break
            if callbacks is not None:
                callbacks.on_test_batch_end(first + count - 1, self._logs())
        logs = self._logs()
        if callbacks is not None:
            callbacks.on_test_end(logs)
        return logs

    @property
    def has_validation(self) -> bool:
        raise NotImplementedError

    def _train_calls(self):
        raise NotImplementedError

    def _test_calls(self):
        raise NotImplementedError

    def _functions(self, train, test):
        """`train` and `test` compiled, as the model's `jit_compile` says."""
        jit = self.model.jit_compile is True
        return tf.function(train, jit_compile=jit), tf.function(test, jit_compile=jit)

    def _logs(self) -> dict[str, float]:
        if self._distributed:
            results = self._metrics()
        else:
            results = self.model.get_metrics_result()
        return {key: float(np.asarray(value)) for key, value in results.items()}

    def _after_call(self):
        """In a call under a strategy, after its steps: the replicas' moving
        statistics averaged, so that they stay one model."""
        if self._statistics:
            self.distribution.strategy.run(self._average_statistics)

    def _average_statistics(self):
        context = tf.distribute.get_replica_context()
        means = context.all_reduce(
            tf.distribute.ReduceOp.MEAN, [v.value for v in self._statistics]
        )
        for variable, mean in zip(self._statistics, means, strict=True):
            variable.assign(mean)

    def _distributed_metrics(self):
        """`get_metrics_result()` of all replicas together: each metric's
        variables summed (or averaged, by their aggregation) across the
        cluster, then the metric's result computed from them."""
        metrics = self.model.metrics
        strategy = self.distribution.strategy

        def reduce_variables():
            context = tf.distribute.get_replica_context()
            return [
                [
                    context.all_reduce(
                        _REDUCTIONS.get(v.aggregation, _MEAN), tf.identity(v.value)
                    )
                    for v in metric.variables
                ]
                for metric in metrics
            ]

        reduced = strategy.experimental_local_results(strategy.run(reduce_variables))
        results = {}
        for metric, values in zip(metrics, reduced[0], strict=True):
            result = metric.stateless_result(list(values))
            if isinstance(result, dict):
                results.update(result)
            else:
                results[metric.name] = result
        return results


class InMemoryLoop(_Loop):
    """Trains a compiled Keras model on in-memory tensors, many steps a call.

    Args:
        model: the compiled model to train (its optimizer, loss and metrics).
        x: training samples, an array or a tensor (with several workers,
            this worker's shard).
        y: training labels as the loss takes them.
        sample_weight: one weight per training sample, or `None`.
        batch_size: samples per step, for all replicas together; the epoch's
            last batch may be smaller.
        steps_per_call: training steps per call into TensorFlow.
        validation: `(x, y)` or `(x, y, sample_weight)` evaluated after
            every epoch, or `None`.
        distribution: the run's strategy. Defaults to `None` (one device).
        views: views of each sample that `x` holds (row `k * samples + i`
            is view `k` of sample `i`; `y` has one label per sample); each
            epoch trains on one view of each sample, drawn anew. Defaults to
            `1`.
    """

    def __init__(
        self,
        model: keras.Model,
        x: Any,
        y: Any,
        *,
        batch_size: int,
        steps_per_call: int,
        sample_weight: Any = None,
        validation: tuple | None = None,
        distribution: Distribution | None = None,
        views: int = 1,
    ):
        super().__init__(
            model, steps_per_call=steps_per_call, distribution=distribution
        )
        self.x = map_inputs(_tensor, x)  # One array, or one per input.
        self.views = views
        self.rows = int(first_input(self.x).shape[0]) // views  # Samples per epoch.
        # A label (and weight) for every row.
        self.per_sample = tuple(
            _tile(_tensor(values), views)
            for values in (y, sample_weight)
            if values is not None
        )
        self.batch_size = batch_size
        # Each worker's part of a global batch.
        self._worker_batch = batch_size // self.distribution.workers
        self.steps = self._steps(self.rows)
        self.steps_per_call = max(1, min(steps_per_call, self.steps))
        self.validation: tuple[tf.Tensor, ...] | None = None
        self.validation_steps = 0
        if validation is not None:
            self.validation = tuple(map_inputs(_tensor, v) for v in validation)
            rows = int(first_input(self.validation[0]).shape[0])
            self.validation_steps = self._steps(rows)
        # Keras builds the optimizer and metrics while tracing `fit`'s step;
        # inside this loop's `tf.while_loop` no variable may be created, so
        # build them first, as `fit` does under a distribution strategy.
        with self.distribution.scope():
            model._symbolic_build(
                data_batch=tuple(
                    map_inputs(lambda t: t[:1], t) for t in (self.x, *self.per_sample)
                )
            )
        self._train, self._test = self._functions(
            self._step_calls(model.train_step, ordered=True),
            self._step_calls(model.test_step, ordered=False),
        )

    @property
    def has_validation(self) -> bool:
        return self.validation is not None

    def _steps(self, rows: int) -> int:
        """Steps per epoch: with several workers, as many as the worker with
        the most rows needs, so that every worker runs the same steps."""
        if self.distribution.multi_worker:
            rows = self.distribution.most_rows(rows)
        return math.ceil(rows / self._worker_batch)

    def _train_calls(self):
        order = tf.random.shuffle(tf.range(self.rows, dtype=tf.int32))
        if self.views > 1:
            view = tf.random.uniform([self.rows], 0, self.views, tf.int32)
            order += self.rows * view
        return self._calls(self._train, self.steps, order, self.x, *self.per_sample)

    def _test_calls(self):
        return self._calls(self._test, self.validation_steps, *self.validation)

    def _calls(self, function, steps, *tensors):
        for first in range(0, steps, self.steps_per_call):
            count = min(self.steps_per_call, steps - first)

            def run(first=first, count=count):
                function(_int(first), _int(count), *tensors)
                return count

            yield first, run

    def _step_calls(self, step, *, ordered: bool):
        """A call of `count` steps of Keras' `step` (`train_step` or
        `test_step`) from step `first` on the per-sample `data` tensors
        (samples, labels, and weights where given): each step's rows are the
        next batch of the epoch's `order` (`ordered`, which the call then
        takes first) or of the rows as they lie. Under a strategy each
        replica gathers its share of the worker's rows, and a training call
        ends by averaging the replicas' moving statistics."""
        distributed = self._distributed
        batch = self._worker_batch if distributed else self.batch_size

        def replica_step(rows, *data):
            step(self._replica_batch_of(rows, data))

        def steps(first, count, *tensors):
            order, data = (tensors[0], tensors[1:]) if ordered else (None, tensors)
            size = tf.shape(first_input(data[0]) if order is None else order)[0]
            for index in tf.range(first, first + count):
                start = tf.minimum(size, index * batch)
                end = tf.minimum(size, start + batch)
                rows = tf.range(start, end) if order is None else order[start:end]
                if distributed:
                    self.distribution.strategy.run(replica_step, args=(rows, *data))
                else:
                    step(_gathered(data, rows))
            if distributed and ordered:
                self._after_call()

        return steps

    def _replica_batch_of(self, rows, data):
        """This replica's consecutive share of the worker's `rows`, gathered
        where the data is held. A full batch gives every replica the same
        count; a last, smaller one is split as evenly as it goes (a replica
        may get none at all, and Keras' losses then add nothing)."""
        context = tf.distribute.get_replica_context()
        local = context.replica_id_in_sync_group - self.distribution.first_replica
        count, replicas = tf.shape(rows)[0], self.distribution.local_replicas
        mine = rows[local * count // replicas : (local + 1) * count // replicas]
        with tf.device(self.distribution.host):
            return _gathered(data, mine)


def shard_evaluation(
    model, arrays: tuple, batch_size: int, distribution
) -> InMemoryLoop:
    """A loop that evaluates `model` on this worker's shard of `arrays`
    (`(x, y)` or `(x, y, sample_weight)`), its metrics those of all workers:
    how a multi-worker run evaluates (Keras 3's `evaluate` fails there).
    Make it, and call its `evaluate`, under the strategy's scope."""
    held = tuple(distribution.shard(values) for values in arrays)
    return InMemoryLoop(
        model,
        *held[:2],
        batch_size=batch_size,
        steps_per_call=DEFAULT_STEPS_PER_CALL,
        validation=held,
        distribution=distribution,
    )


class DatasetLoop(_Loop):
    """Trains a compiled Keras model on a `tf.data.Dataset` under a strategy,
    many steps a call: for runs that `fit` cannot train (several workers).

    The strategy distributes the dataset (`experimental_distribute_dataset`):
    with several workers it shards it by its auto-shard policy (by file where
    the dataset reads files, else by element; see `docs/scaling.md`), and
    every global batch is split among the replicas. A worker's call stops
    where the dataset runs out, at the same step on every worker.

    Args:
        model: the compiled model to train.
        dataset: batches of `(x, y)`, of the global batch size.
        steps_per_call: training steps per call into TensorFlow.
        validation: a dataset evaluated after every epoch, or `None`.
        distribution: the run's strategy.
    """

    steps = None
    validation_steps = None

    def __init__(
        self,
        model: keras.Model,
        dataset: tf.data.Dataset,
        *,
        steps_per_call: int,
        validation: tf.data.Dataset | None = None,
        distribution: Distribution,
    ):
        super().__init__(
            model, steps_per_call=steps_per_call, distribution=distribution
        )
        strategy = self.distribution.strategy
        self.dataset = strategy.experimental_distribute_dataset(dataset)
        self.validation = (
            None
            if validation is None
            else strategy.experimental_distribute_dataset(validation)
        )
        with self.distribution.scope():
            model._symbolic_build(data_batch=_one_of(dataset.element_spec))
        self._train, self._test = self._functions(
            self._dataset_train_steps, self._dataset_test_steps
        )

    @property
    def has_validation(self) -> bool:
        return self.validation is not None

    def _train_calls(self):
        return self._iterate(self._train, self.dataset)

    def _test_calls(self):
        return self._iterate(self._test, self.validation)

    def _iterate(self, function, dataset):
        iterator, first, ran = iter(dataset), 0, self.steps_per_call

        def run():
            nonlocal ran
            ran = int(function(iterator, _int(self.steps_per_call)))
            return ran

        while ran == self.steps_per_call:  # Until a call comes up short.
            yield first, run
            first += ran

    def _dataset_train_steps(self, iterator, count):
        return self._dataset_steps(self.model.train_step, iterator, count, train=True)

    def _dataset_test_steps(self, iterator, count):
        return self._dataset_steps(self.model.test_step, iterator, count, train=False)

    def _dataset_steps(self, step, iterator, count, *, train):
        strategy = self.distribution.strategy
        done = tf.constant(0)
        for _ in tf.range(count):
            batch = iterator.get_next_as_optional()
            if not batch.has_value():
                break
            strategy.run(step, args=(batch.get_value(),))
            done += 1
        if train:
            self._after_call()
        return done


_MEAN = tf.distribute.ReduceOp.MEAN
_REDUCTIONS = {"sum": tf.distribute.ReduceOp.SUM, "mean": _MEAN}
"""How each aggregation of a Keras variable combines across replicas."""


def _one_of(spec):
    """One sample of zeros shaped by a dataset's `element_spec`, to build a
    model's optimizer and metrics before training."""
    return tf.nest.map_structure(lambda s: tf.zeros([1, *s.shape[1:]], s.dtype), spec)


def _gathered(data: tuple, rows: tf.Tensor) -> tuple:
    """The `rows` of every tensor of `data` (samples, one tensor or one per
    input; labels; weights)."""
    return tuple(map_inputs(lambda t: tf.gather(t, rows), values) for values in data)


def _int(value: int) -> tf.Tensor:
    """A step number as a tensor, so that each value does not retrace."""
    return tf.constant(value, tf.int32)


def _tile(values: tf.Tensor, views: int) -> tf.Tensor:
    """Per-sample `values` repeated for each of `views` views of the rows."""
    if views == 1:
        return values
    return tf.tile(values, [views] + [1] * (len(values.shape) - 1))


def _tensor(values) -> tf.Tensor:
    return values if isinstance(values, tf.Tensor) else tf.constant(values)
