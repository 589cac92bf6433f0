"""Every random state of a seeded phase, derived from the run's seed, the
phase's position and a point in the phase: so that a run killed anywhere and
resumed from its last checkpoint ends bitwise equal to one that never
stopped.

A point is `"start"` (before LoRA adapters are made), `"fill"` (before the
feature cache is filled, after a resumed phase loaded its checkpoint), or an
epoch's number (at its start, before the loop draws its order). At each,
Python, NumPy and TensorFlow are seeded (`keras.utils.set_random_seed`), and
so is the state of every seed generator of the model's layers (Dropout,
random augmentation), which would otherwise carry on from wherever the
process that trained last left it. What a phase draws between two points
then depends only on the weights and the optimizer state, which the
checkpoint holds exactly.
"""

from __future__ import annotations

import hashlib

import keras
import numpy as np

__all__ = ["EpochSeeds", "derived_seed", "reseed"]


def derived_seed(seed: int, *parts: object) -> int:
    """A 31-bit seed from `seed` and `parts`, the same in every process."""
    text = "/".join(str(part) for part in (seed, *parts)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "little") >> 1


def seed_generators(model: keras.Model) -> list:
    """The model's layers' seed generators, each once (a lean Dropout shares
    the replaced layer's), in the order of its layers."""
    found, seen = [], set()
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for generator in getattr(layer, "_seed_generators", ()):
            if id(generator) not in seen:
                seen.add(id(generator))
                found.append(generator)
    return found


def reseed(model: keras.Model, seed: int, phase: int, point: object) -> None:
    """Seeds Python, NumPy, TensorFlow and `model`'s seed generators from
    `seed`, the phase's position and `point`."""
    keras.utils.set_random_seed(derived_seed(seed, phase, point))
    for number, generator in enumerate(seed_generators(model)):
        state = generator.state
        value = derived_seed(seed, phase, point, number)
        state.assign(np.array([value, 0], dtype=state.dtype))


class EpochSeeds(keras.callbacks.Callback):
    """Reseeds at the start of every epoch (`reseed` with the epoch's
    number), after the other callbacks' `on_epoch_begin`."""

    def __init__(self, model: keras.Model, seed: int, phase: int):
        super().__init__()
        self._owner, self._seed, self._phase = model, seed, phase

    def on_epoch_begin(self, epoch, logs=None):
        reseed(self._owner, self._seed, self._phase, epoch)
