"""The BatchNormalization policy of a phase: what `backbone_batch_norm`
does to the BatchNormalization layers of groups split from a backbone.

With `"inference"` they are frozen for the phase, so they normalise with
their moving statistics, as the backbone was trained to be used; with
`"train"` they are left as they are. Either way the phase's result says
what was done.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras

from transferkit.groups.model_groups import groups_of

__all__ = ["batch_norm_policy"]


@contextlib.contextmanager
def batch_norm_policy(model: keras.Model, mode: str) -> Iterator[str]:
    """For the block: with `mode="inference"`, the trainable BatchNormalization
    layers of groups split from a backbone, those nested inside their layers
    too (a block layer holding its own), are frozen, so they run in inference
    mode; yields what was done, for the result."""
    layers = [
        sublayer
        for group in groups_of(model).values()
        if group.source is not None
        for layer in group
        for sublayer in layer._flatten_layers(include_self=True)
        if isinstance(sublayer, keras.layers.BatchNormalization) and sublayer.trainable
    ]
    if not layers:
        yield ""
        return
    if mode == "train":
        yield f"{len(layers)} layers of backbone groups trained"
        return
    for layer in layers:
        layer.trainable = False
    try:
        yield f"{len(layers)} layers of backbone groups in inference mode"
    finally:
        for layer in layers:
            layer.trainable = True
