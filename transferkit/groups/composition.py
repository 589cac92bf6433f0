"""The rules by which `LayerGroup`s compose into a model, read from the
groups alone: which layers the model holds, which groups split from a model
hold a stretch of its layers, and the checks of names and class names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import keras

__all__ = [
    "check_class_names",
    "check_single_tensor",
    "leaves_of",
    "model_layers",
    "split_runs",
]


def leaves_of(group) -> list[keras.Layer]:
    """All the layers that the split which made `group` cut its model into
    (`transferkit.groups.splitting`): the model's own layers, unless a cut point
    opened some of them."""
    leaves = getattr(group, "_leaves", None)
    return list(leaves) if leaves is not None else list(group.source.layers)


def check_single_tensor(source: keras.Model) -> None:
    """Raises, in the library's words, if `source` cannot be one layer of a
    `Sequential`: it takes several inputs or gives several outputs."""
    inputs = getattr(source, "_inputs", None) or []  # A functional model's.
    outputs = getattr(source, "_outputs", None) or []
    output = getattr(source, "_outputs_struct", None)
    if len(inputs) > 1 or len(outputs) > 1 or isinstance(output, dict):
        raise ValueError(
            f"Model '{source.name}' takes {len(inputs)} inputs "
            f"({[t.name for t in inputs]}) and gives {len(outputs)} outputs, "
            "but groups compose into a Sequential, one tensor from layer to "
            "layer. Train the model in place instead: "
            "TransferRun(attach_groups(model, LayerGroup.split(model, at=..., "
            "names=...)), ...), with a head of your own in the model."
        )


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
    total: int  # Layers the split cut `source` into.
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
        inner = leaves_of(groups[begin])
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
        runs.append(_Run(source, len(held), len(inner), complete, extendable))
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
        inner = leaves_of(run[0])
        if len(held) != len(inner) or any(
            a is not b for a, b in zip(held, inner, strict=True)
        ):
            raise ValueError(
                f"The groups split from model '{source.name}' must all be "
                "composed, next to each other and in their order, so that "
                "they hold each of its layers once. Received: "
                f"{[g.name for g in groups]}, of which {[g.name for g in run]} "
                f"hold {len(held)} of its {len(inner)} layers."
            )
        check_single_tensor(source)
        if any(layer is source for layer in layers):
            raise ValueError(
                f"The groups split from model '{source.name}' must stand next "
                f"to each other. Received: {[g.name for g in groups]}"
            )
        layers.append(source)
    return layers
