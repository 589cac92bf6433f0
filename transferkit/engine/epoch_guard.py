"""The epoch guard: a phase stops at a non-finite loss or weight, or at an
epoch that trained on nothing, before that epoch is recorded or saved.

Keras' `TerminateOnNaN` stops training and lets `fit` return as if it had
finished, and a checkpoint written after it holds NaN weights. The guard
instead raises `NonFiniteError` (naming the phase, the epoch and the step)
from the callbacks, before the run records the epoch: the last checkpoint,
made at an earlier epoch with finite weights, stays the folder's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from transferkit.errors import NonFiniteError

__all__ = ["EpochGuard", "NonFiniteError", "non_finite_variables"]


class EpochGuard(keras.callbacks.Callback):
    """Watches the logged loss after every batch (or call of several steps)
    and, at each epoch's end, the loss and every weight of `model`.

    Args:
        phase: the phase's name, for messages.
        model: the model whose weights must stay finite.
        steps: batches per epoch, or `None` when unknown.
        argument: the training data's argument name, for messages.
    """

    def __init__(
        self,
        phase: str,
        model: keras.Model,
        steps: int | None,
        argument: str = "data",
    ):
        super().__init__()
        self._phase = phase
        self._watched = model
        self._steps = steps
        self._argument = argument
        self._epoch = 0
        self._first = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self._first = batch  # A call of several steps starts here.

    def on_train_batch_end(self, batch, logs=None):
        loss = _loss(logs)
        if loss is not None and not math.isfinite(loss):
            first = min(self._first, batch)
            steps = (
                f"at step {batch + 1}"
                if first == batch
                else f"within steps {first + 1}-{batch + 1} (one call)"
            )
            of = f" of {self._steps}" if self._steps else ""
            self._fail(f"the loss became {loss} {steps}{of}")

    def on_epoch_end(self, epoch, logs=None):
        loss = _loss(logs)
        if loss is None:
            raise ValueError(
                f"`{self._argument}` gave no batches in epoch {epoch + 1} of "
                f"phase '{self._phase}', so nothing was trained or recorded. "
                "Expected a dataset that yields (x, y) batches every epoch; "
                "a dataset that is an iterator runs out after one epoch: build "
                "it from the data, not from an iterator."
            )
        if not math.isfinite(loss):
            self._fail(f"the epoch's loss is {loss}")
        bad = non_finite_variables(self._watched)
        if bad:
            self._fail(
                f"{len(bad)} weight{'s' * (len(bad) > 1)} became NaN or "
                f"infinite (the first: {bad[0]!r})"
            )

    def _fail(self, what: str):
        raise NonFiniteError(
            f"Phase '{self._phase}' stopped in epoch {self._epoch + 1}: {what}. "
            "The epoch was not recorded and nothing non-finite was saved."
        )


def non_finite_variables(model: keras.Model) -> list[str]:
    """Paths of `model`'s floating-point weights that hold NaN or infinity."""
    return [
        variable.path
        for variable in model.weights
        if keras.backend.is_float_dtype(variable.dtype)
        and not np.isfinite(keras.ops.convert_to_numpy(variable)).all()
    ]


def _loss(logs: Mapping[str, Any] | None) -> float | None:
    if not logs or "loss" not in logs:
        return None
    return float(np.asarray(logs["loss"]))
