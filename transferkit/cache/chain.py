"""Features carried on from one cut to a deeper one, and a cache lent out.

A search over what to freeze (`transferkit.run.freeze_search`) trains one
candidate per cut. The features at a deeper cut are the features at a
shallower one carried through the layers in between, so each cut's cache is
computed from the one before instead of from the data: the frozen prefix is
run once in all, not once per candidate. On the CPUs measured the forward
pass gives each sample's row bitwise the same whatever the block it runs in
(docs/performance.md), and the layers in between run as they would inside the
longer stack, so the carried features equal the ones a phase would compute
(a test compares them bitwise, and so does `benchmarks/freeze_search.py`).

A phase closes the cache it trained on; `lend` gives it a view whose `close`
frees nothing, so that the next cut can still be carried on from it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from transferkit.cache.blocks import aligned_empty, as_tensor
from transferkit.cache.features import FeatureCache
from transferkit.errors import CacheTooLarge

__all__ = ["extend_cache", "extension", "lend"]


def extension(
    before: Sequence[keras.Layer], after: Sequence[keras.Layer]
) -> list[keras.Layer] | None:
    """The layers that carry the output of the cached stack `before` to
    that of the deeper stack `after`, or `None` when `after` does not
    continue `before`.

    Either `after` starts with `before`'s very layers, or both end in a
    front of the same backbone (the cache moved back to one of its cuts:
    a `keras.Model` from the backbone's input to a tensor inside it,
    `transferkit.cache.plan`): then the bridge is a model of the
    backbone's own layers from the first cut's tensor to the second's."""
    count = len(before)
    if len(after) < count:
        return None
    if all(a is b for a, b in zip(before, after, strict=False)):
        return list(after[count:])
    if not count or any(a is not b for a, b in zip(before[:-1], after, strict=False)):
        return None
    first, second = before[-1], after[count - 1]
    if not (isinstance(first, keras.Model) and isinstance(second, keras.Model)):
        return None
    if len(first.inputs) != 1 or first.inputs[0] is not second.inputs[0]:
        return None
    start, end = first.outputs[0], second.outputs[0]
    if start is end:
        return list(after[count:])
    try:
        bridge = keras.Model(start, end, name=f"{second.name}_from_{first.name}")
    except (ValueError, TypeError):  # `end` does not follow from `start` alone.
        return None
    return [bridge, *after[count:]]


def extend_cache(
    cache: FeatureCache, layers: Sequence[keras.Layer], *, memory_limit: int
) -> FeatureCache | None:
    """The features of `cache` carried through `layers` (in inference
    mode), in memory, in the blocks a phase's own fill would take; `None`
    when `cache` is in files or the result would not fit in `memory_limit`
    (the phase then computes its own)."""
    if cache.on_disk or not cache.features:
        return None
    if not layers:
        return lend(cache)
    began = time.perf_counter()
    # Each view apart, as the phase's fill computes it: a block never spans
    # two views, so every block multiplies as many rows as the fill's does.
    inputs = {
        f"{name}/{view}": part
        for name, features in cache.features.items()
        for view, part in enumerate(_views(features.numpy(), cache.views_of(name)))
    }
    try:
        extended = FeatureCache(
            layers,
            inputs,
            memory_limit=memory_limit,
            disk=False,
            measure_blocks=cache.measure_blocks,
        )
    except CacheTooLarge:
        return None
    computed = extended.features
    extended.features = {}
    for name in cache.features:
        parts = [computed[f"{name}/{v}"] for v in range(cache.views_of(name))]
        extended.features[name] = parts[0] if len(parts) == 1 else _joined(parts)
    extended.views = cache.views
    for name in ("labels", "sample_weights", "batch_sizes"):
        setattr(extended, name, dict(getattr(cache, name)))
    extended.seconds = time.perf_counter() - began
    return extended


def _views(features: np.ndarray, views: int) -> list[np.ndarray]:
    rows = len(features) // views
    return [features[view * rows : (view + 1) * rows] for view in range(views)]


def _joined(parts) -> tf.Tensor:
    """The views' features in one buffer that TensorFlow reads without a
    copy, view after view."""
    arrays = [part.numpy() for part in parts]
    out = aligned_empty((sum(map(len, arrays)), *arrays[0].shape[1:]), arrays[0].dtype)
    return as_tensor(np.concatenate(arrays, out=out))


def lend(cache: FeatureCache) -> FeatureCache:
    """A view of the in-memory `cache` that a phase may train on and close
    without freeing it."""
    view = copy.copy(cache)
    for name in ("features", "labels", "sample_weights", "batch_sizes"):
        setattr(view, name, dict(getattr(cache, name)))
    view._temporary = None
    return view
