"""A feature cache handed from a learning-rate sweep to the next phase.

A sweep over a frozen backbone computes the backbone's features once, which
costs about one forward pass over the data: most of an uncached epoch.
The phase that follows a sweep usually freezes the same groups and trains
on the same data, so it would compute the very same features again. The
sweep therefore keeps its cache (in memory) for the run's next phase, which
uses it when everything the features depend on is the same:

- the cached stretch of layers (its span and length), the augmented views;
- the values of every variable of those layers, by digest (the sweep
  restores them bitwise; anything that changed them in between, such as
  `load_weights`, makes the cache stale);
- the data: arrays by the digests of their samples, labels and weights; a
  `tf.data.Dataset` by being the same object (`cache_datasets` decides, as
  for any phase, whether it may be cached at all); and the same validation
  data, cached beside it.

The next phase takes it or discards it; either way it is then freed.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import keras
import numpy as np

from transferkit.cache.features import FeatureCache
from transferkit.cache.plan import CachePlan
from transferkit.data.prepare import PhaseData

__all__ = ["KeptCache", "data_key", "plan_key"]


@dataclasses.dataclass
class KeptCache:
    """A sweep's feature cache, with what it was computed from."""

    cache: FeatureCache
    plan: tuple
    data: tuple
    weights: str

    @classmethod
    def of(cls, cache, plan: CachePlan, train, validation) -> KeptCache:
        return cls(cache, plan_key(plan), data_key(train, validation), _digest(plan))

    def take(self, plan: CachePlan, train, validation) -> FeatureCache | None:
        """The cache, if it holds the features this phase would compute;
        else `None`, and the cache is freed."""
        if (
            plan_key(plan) == self.plan
            and data_key(train, validation) == self.data
            and _digest(plan) == self.weights
        ):
            self.cache.seconds = 0.0  # Spent by the sweep, not the phase.
            self.cache.origin = "computed by the learning-rate sweep"
            return self.cache
        self.close()
        return None

    def close(self) -> None:
        self.cache.close()


def plan_key(plan: CachePlan) -> tuple:
    return (plan.layers, plan.span, plan.views, plan.augmenting)


def data_key(train: PhaseData, validation: PhaseData | None) -> tuple:
    return tuple(_data(data) for data in (train, validation))


def _data(data: PhaseData | None):
    if data is None:
        return None
    if data.is_dataset:
        return ("dataset", data.source)  # The object itself: compared by identity.
    return (
        data.samples_sha256,
        data.labels_sha256,
        data.sample_weight_sha256,
        data.batch_size,
    )


def _digest(plan: CachePlan) -> str:
    """A digest of the values of every variable of the cached layers."""
    digest = hashlib.sha256()
    for variable in _variables(plan.front):
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(variable)))
    return digest.hexdigest()


def _variables(layers: Sequence[keras.Layer]) -> list:
    seen: dict[int, object] = {}
    for layer in layers:
        for variable in layer.weights:
            seen.setdefault(id(variable), variable)
    return list(seen.values())
