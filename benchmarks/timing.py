"""Seconds of each epoch, for the benchmarks that time steady epochs apart
from the first (its trace, and a phase's feature cache)."""

from __future__ import annotations

import time

import keras


class EpochTimes(keras.callbacks.Callback):
    """Seconds of each epoch, in `times`."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.began = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.began)
