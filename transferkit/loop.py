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
TensorFlow's global generator, which a seeded run seeds), and, through the
callbacks the run adds, checkpoints and Ctrl-C after the epoch.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf

__all__ = ["DEFAULT_STEPS_PER_CALL", "InMemoryLoop"]

DEFAULT_STEPS_PER_CALL = 32
"""Steps per call when no callback needs to see every batch: Python's share
of a step is then a thirty-second of a call's overhead."""


class InMemoryLoop:
    """Trains a compiled Keras model on in-memory tensors, many steps a call.

    Args:
        model: the compiled model to train (its optimizer, loss and metrics).
        x: training samples, an array or a tensor.
        y: training labels as the loss takes them.
        batch_size: samples per step; the epoch's last batch may be smaller.
        steps_per_call: training steps per call into TensorFlow.
        validation: `(x, y)` evaluated after every epoch, or `None`.
    """

    def __init__(
        self,
        model: keras.Model,
        x: Any,
        y: Any,
        *,
        batch_size: int,
        steps_per_call: int,
        validation: tuple[Any, Any] | None = None,
    ):
        self.model = model
        self.x, self.y = _tensor(x), _tensor(y)
        self.rows = int(self.x.shape[0])
        self.batch_size = batch_size
        self.steps = math.ceil(self.rows / batch_size)
        self.steps_per_call = max(1, min(steps_per_call, self.steps))
        self.validation: tuple[tf.Tensor, tf.Tensor] | None = None
        self.validation_steps = 0
        if validation is not None:
            self.validation = (_tensor(validation[0]), _tensor(validation[1]))
            self.validation_steps = math.ceil(
                int(self.validation[0].shape[0]) / batch_size
            )
        # Keras builds the optimizer and metrics while tracing `fit`'s step;
        # inside this loop's `tf.while_loop` no variable may be created, so
        # build them first, as `fit` does under a distribution strategy.
        model._symbolic_build(data_batch=(self.x[:1], self.y[:1]))
        jit = model.jit_compile is True
        self._train = tf.function(self._train_steps, jit_compile=jit)
        self._test = tf.function(self._test_steps, jit_compile=jit)

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
            order = tf.random.shuffle(tf.range(self.rows, dtype=tf.int32))
            for first in range(0, self.steps, self.steps_per_call):
                count = min(self.steps_per_call, self.steps - first)
                callbacks.on_train_batch_begin(first)
                self._train(self.x, self.y, order, _int(first), _int(count))
                callbacks.on_train_batch_end(first + count - 1, self._logs())
                if model.stop_training:
                    break
            logs = self._logs()
            if self.validation is not None:
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
        if self.validation is None:
            raise ValueError("This loop was given no validation data.")
        x, y = self.validation
        model = self.model
        model.reset_metrics()
        if callbacks is not None:
            callbacks.on_test_begin()
        for first in range(0, self.validation_steps, self.steps_per_call):
            count = min(self.steps_per_call, self.validation_steps - first)
            if callbacks is not None:
                callbacks.on_test_batch_begin(first)
            self._test(x, y, _int(first), _int(count))
            if callbacks is not None:
                callbacks.on_test_batch_end(first + count - 1, self._logs())
        logs = self._logs()
        if callbacks is not None:
            callbacks.on_test_end(logs)
        return logs

    def _train_steps(self, x, y, order, first, count):
        size = tf.shape(order)[0]
        for step in tf.range(first, first + count):
            start = step * self.batch_size
            rows = order[start : tf.minimum(size, start + self.batch_size)]
            self.model.train_step((tf.gather(x, rows), tf.gather(y, rows)))

    def _test_steps(self, x, y, first, count):
        size = tf.shape(x)[0]
        for step in tf.range(first, first + count):
            start = step * self.batch_size
            end = tf.minimum(size, start + self.batch_size)
            self.model.test_step((x[start:end], y[start:end]))

    def _logs(self) -> dict[str, float]:
        return {
            key: float(np.asarray(value))
            for key, value in self.model.get_metrics_result().items()
        }


def _int(value: int) -> tf.Tensor:
    """A step number as a tensor, so that each value does not retrace."""
    return tf.constant(value, tf.int32)


def _tensor(values) -> tf.Tensor:
    return values if isinstance(values, tf.Tensor) else tf.constant(values)
