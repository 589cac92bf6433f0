"""The rules by which `LayerGroup`s compose into a model, read from the
groups alone: which layers the model holds, which groups split from a model
hold a stretch of its layers, and the checks of names and class names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import keras

__all__ = ["check_class_names", "model_layers", "split_runs"]


def check_class_names(names: Any, model: keras.Model) -> tuple[str, ...]:
    """`names` as a tuple of distinct strings, one per output of `model`."""
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise TypeError(
            "Expected `class_names` to be a list of strings, one per output. "
            f"Received: class_names={names!r}"
        )
    names = tuple(names)
    width = model.output_shape[-1] if model.built else None
    if (
        not all(isinstance(name, str) and name for name in names)
        or len(set(names)) != len(names)
        or (width is not None and len(names) != width)
    ):
        raise ValueError(
            f"Expected `class_names` to be {width or 'the'} distinct, non-empty "
            f"strings, one per output of model '{model.name}'. Received: "
            f"class_names={list(names)}"
        )
    return names


@dataclasses.dataclass(frozen=True)
class _Run:
    """Groups next to each other, split from one model."""

    source: keras.Model
    held: int  # Layers of `source` the groups hold.
    complete: bool  # They hold all of its layers, in order.
    extendable: bool  # Groups added beside them could complete them.


def split_runs(groups: Sequence) -> list[_Run]:
    runs = []
    position = 0
    while position < len(groups):
        source = groups[position].source
        if source is None:
            position += 1
            continue
        begin, held = position, []
        while position < len(groups) and groups[position].source is source:
            held.extend(groups[position].layers)
            position += 1
        inner = list(source.layers)
        start = next((i for i, x in enumerate(inner) if x is held[0]), -1)
        stretch = inner[start : start + len(held)]
        in_order = len(stretch) == len(held) and all(
            a is b for a, b in zip(held, stretch, strict=True)
        )
        extendable = (
            in_order
            and (start == 0 or begin == 0)
            and (start + len(held) == len(inner) or position == len(groups))
        )
        complete = in_order and len(held) == len(inner)
        runs.append(_Run(source, len(held), complete, extendable))
    return runs


def model_layers(groups: Sequence) -> list[keras.Layer]:
    """The model's layers: each group's layers, or, for groups split from a
    model, that model once, where its first group stands.

    Raises:
        ValueError: if the groups split from one model are not all there,
            together and in their order.
    """
    layers: list[keras.Layer] = []
    position = 0
    while position < len(groups):
        if groups[position].source is None:
            layers.extend(groups[position].layers)
            position += 1
            continue
        source: keras.Model = groups[position].source
        run = []
        while position < len(groups) and groups[position].source is source:
            run.append(groups[position])
            position += 1
        held = [layer for group in run for layer in group.layers]
        if len(held) != len(source.layers) or any(
            a is not b for a, b in zip(held, source.layers, strict=True)
        ):
            raise ValueError(
                f"The groups split from model '{source.name}' must all be "
                "composed, next to each other and in their order, so that "
                "they hold each of its layers once. Received: "
                f"{[g.name for g in groups]}, of which {[g.name for g in run]} "
                f"hold {len(held)} of its {len(source.layers)} layers."
            )
        if any(layer is source for layer in layers):
            raise ValueError(
                f"The groups split from model '{source.name}' must stand next "
                f"to each other. Received: {[g.name for g in groups]}"
            )
        layers.append(source)
    return layers
