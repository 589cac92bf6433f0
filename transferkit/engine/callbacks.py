"""The callbacks around a phase's training: Keras' own list, bound to the
user's model while another model trains, and what records each epoch.

`PhaseCallbacks` is the list `fit` would make (with `History` and the
progress bar), bound to the user's model; `EpochRecorder` hands each epoch
to the run; `StopAfterEpoch` turns the first Ctrl-C into a stop after the
current epoch.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras

__all__ = ["EpochHook", "EpochRecorder", "PhaseCallbacks", "StopAfterEpoch"]

EpochHook = Callable[[int, Mapping[str, Any], bool], None]
"""Called after every epoch with `(epoch, logs, interrupted)`."""


class PhaseCallbacks(keras.callbacks.CallbackList):
    """A phase's callbacks, as `fit` would list them (with `History` and the
    progress bar), but bound to the user's `model` while `trainer` trains.

    Batch numbers are clipped to the epoch's `steps` (and the validation's
    `validation_steps`): with several steps per execution, `fit` numbers a
    call's batches as if every call were full. A `stop_training` that a
    callback sets on `model` is passed on to `trainer`. At each epoch's end,
    `also_evaluate` adds its sets' metrics to the logs before any callback
    sees them (the progress bar, `History` and the run's recorder included).

    Args:
        callbacks: the callbacks, in order.
        model: what the callbacks see as `self.model`.
        trainer: the model whose `fit` calls them.
        verbose: `fit`'s verbosity; 0 shows no progress bar.
        epochs: the phase's last epoch.
        steps: batches per epoch; `None` when unknown.
        validation_steps: batches per validation; `None` when unknown.
        also_evaluate: called with an epoch's logs, returns the logs to add
            (`transferkit.engine.also_evaluate.AlsoEvaluate`). Defaults to
            `None`.
    """

    def __init__(
        self,
        callbacks: Sequence[keras.callbacks.Callback],
        *,
        model: keras.Model,
        trainer: keras.Model,
        verbose: str | int,
        epochs: int,
        steps: int | None,
        validation_steps: int | None = None,
        also_evaluate: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
    ):
        super().__init__(
            list(callbacks),
            add_history=True,
            add_progbar=verbose != 0,
            model=model,
            verbose=verbose,
            epochs=epochs,
            steps=steps,
        )
        self._trainer = trainer
        self._steps = steps
        self._validation_steps = validation_steps
        self._also_evaluate = also_evaluate
        if trainer is not model:
            trainer.history = model.history  # `fit` returns it.

    def on_train_begin(self, logs=None):
        self.model.stop_training = False
        super().on_train_begin(logs)

    def on_train_batch_begin(self, batch, logs=None):
        self._pass_stop()
        super().on_train_batch_begin(_clip(batch, self._steps), logs)

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(_clip(batch, self._steps), logs)
        self._pass_stop()

    def on_test_batch_begin(self, batch, logs=None):
        super().on_test_batch_begin(_clip(batch, self._validation_steps), logs)

    def on_test_batch_end(self, batch, logs=None):
        super().on_test_batch_end(_clip(batch, self._validation_steps), logs)

    def on_epoch_end(self, epoch, logs=None):
        if self._also_evaluate is not None:
            logs = {} if logs is None else logs
            logs.update(self._also_evaluate(logs))  # In place: one dict for all.
        super().on_epoch_end(epoch, logs)
        self._pass_stop()

    def _pass_stop(self):
        if self.model.stop_training:
            self._trainer.stop_training = True


def _clip(batch: int, steps: int | None) -> int:
    return batch if steps is None else min(batch, steps - 1)


class EpochRecorder(keras.callbacks.Callback):
    """Hands each epoch's logs to the run, and stops after an interrupted
    epoch."""

    def __init__(self, on_epoch_end: EpochHook):
        super().__init__()
        self._on_epoch_end = on_epoch_end
        self.interrupted = False

    def on_epoch_end(self, epoch, logs=None):
        self._on_epoch_end(epoch, dict(logs or {}), self.interrupted)
        if self.interrupted:
            self.model.stop_training = True


class StopAfterEpoch:
    """While active, the first Ctrl-C asks `recorder` to stop after the
    current epoch; a second one interrupts at once."""

    def __init__(self, recorder: EpochRecorder):
        self.recorder = recorder
        self.previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc_info):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False

    def _handle(self, signum, frame):
        if self.recorder.interrupted:
            raise KeyboardInterrupt
        self.recorder.interrupted = True
        print(
            "\nInterrupted: finishing and saving this epoch; press Ctrl-C again "
            "to stop at once.",
            file=sys.stderr,
            flush=True,
        )
