"""Cutting a built model into groups: at cut points (`LayerGroup.split`) or
by patterns over layer paths (`LayerGroup.match`).

A cut point is a path (`transferkit.groups.tree`): a name of one of the
model's layers (`"mixed8"`), or names joined by `/` that reach a layer
held inside another (`"vit_encoder/transformer_block_2"`). A cut inside a
layer opens it: its place in the order is taken by the layers it holds,
so the groups are the model's layers with every opened layer replaced by
its own, in order (its *leaves*), each held by exactly one group.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import keras

from transferkit.groups import tree

__all__ = ["leaves_at", "match_groups", "split_groups"]


def split_groups(model: keras.Model, at: Any, names: Any) -> list[tuple[str, list]]:
    """`(name, layers)` of each group of `LayerGroup.split(model, at=at,
    names=names)`, and the leaves they hold, in order."""
    _check_model(model)
    points: list[Any] = list(at) if isinstance(at, list | tuple) else [at]
    names = [names] if isinstance(names, str) else list(names)
    if len(names) != len(points) + 1:
        raise ValueError(
            f"Expected {len(points) + 1} group names for {len(points)} cut "
            f"point{'s' if len(points) != 1 else ''}. Received: names={names}"
        )
    for point in points:
        if isinstance(point, bool) or not isinstance(point, str | int):
            raise TypeError(
                "Expected each cut point to be a layer path (names joined by "
                f"'/') or an integer. Received: {point!r}"
            )
    leaves = leaves_at(model, [p for p in points if isinstance(p, str)])
    ends = [_cut_position(model, leaves, point) for point in points]
    bounds = [0, *ends, len(leaves)]
    for index, (start, end) in enumerate(zip(bounds, bounds[1:], strict=False)):
        if end <= start:
            raise ValueError(
                f"Cut points must be in increasing order, inside model "
                f"'{model.name}' ({len(leaves)} layers), and leave every "
                f"group a layer; group '{names[index]}' would be empty. "
                f"Received: at={points}"
            )
    groups = [
        (name, leaves[start:end])
        for name, start, end in zip(names, bounds, bounds[1:], strict=False)
    ]
    return groups, leaves


def leaves_at(model: keras.Model, paths: Sequence[str]) -> list[keras.Layer]:
    """The model's layers, with every layer on the way down to one of
    `paths` opened into the layers it holds, in order."""
    opened: set[int] = set()
    for path in paths:
        names = path.split("/")
        for depth in range(1, len(names)):
            container = tree.find_layer(model, "/".join(names[:depth]))
            _check_openable(container, path)
            opened.add(id(container))
        tree.find_layer(model, path)  # Raises for an unknown last name.

    def expand(layer):
        if id(layer) not in opened:
            return [layer]
        return [leaf for child in tree.children(layer) for leaf in expand(child)]

    leaves, seen = [], set()
    for layer in tree.children(model):
        for leaf in expand(layer):
            if id(leaf) not in seen:  # A task's input is its backbone's.
                seen.add(id(leaf))
                leaves.append(leaf)
    return leaves


def _check_openable(container: keras.Layer, path: str) -> None:
    """Raises if a cut inside `container` would leave some of its variables
    in no group: those it made itself, beside the layers it holds."""
    own = tree.own_variables(container)
    if own:
        raise ValueError(
            f"Layer '{container.name}' holds variables of its own "
            f"({[v.name for v in own][:5]}) beside the layers inside it, so a "
            "cut inside it would leave them in no group. Cut before or after "
            f"'{container.name}' instead. Received: at={path!r}"
        )


def _cut_position(model: keras.Model, leaves: list, point: Any) -> int:
    """How many of `leaves` come before the cut at `point`: an integer counts
    the model's own layers; a path ends the group with that layer."""
    if isinstance(point, int):
        count = len(tree.children(model))
        if not 0 < point < count:
            raise ValueError(
                f"A cut point must be between 1 and {count - 1} for model "
                f"'{model.name}' ({count} layers). Received: at={point}"
            )
        top = tree.children(model)[point]
        return next(i for i, leaf in enumerate(leaves) if _under(model, leaf, top))
    target = tree.find_layer(model, point)
    return next(i for i, leaf in enumerate(leaves) if leaf is target) + 1


def _under(model, leaf, top) -> bool:
    """Whether `leaf` is `top` or held inside it."""
    return leaf is top or any(layer is leaf for _, layer in tree.walk(top))


def match_groups(
    model: keras.Model, patterns: Mapping[str, str]
) -> tuple[list[tuple[str, list]], list]:
    """`(name, layers)` of each group of `LayerGroup.match`, and the leaves
    they hold, in the model's order.

    Each pattern is a regular expression over whole layer paths. A pattern
    with a capturing group makes one group per value it captures, named
    `f"{name}_{value}"` (timm's `group_matcher` numbers blocks the same
    way): `{"block": r"encoder/layers_(\\d+)"}` gives `block_0`, `block_1`...
    """
    _check_model(model)
    if not isinstance(patterns, Mapping) or not patterns:
        raise TypeError(
            "Expected `patterns` to map group names to regular expressions over "
            "layer paths, e.g. {'embed': 'embeddings', 'block': "
            f"r'encoder/layers_(\\d+)'}}. Received: patterns={patterns!r}"
        )
    found: dict[str, list] = {}
    owner: dict[int, str] = {}
    for name, pattern in patterns.items():
        try:
            compiled = re.compile(pattern)
        except (re.error, TypeError) as error:
            raise ValueError(
                f"Group {name!r} has a pattern that is not a regular "
                f"expression ({error}). Received: {pattern!r}"
            ) from None
        hits = tree.matching(model, compiled.pattern)
        if not hits:
            raise ValueError(
                f"No layer path of model '{model.name}' matches the pattern "
                f"{pattern!r} of group {name!r}. Paths: "
                f"{[p for p, _ in tree.walk(model)][:8]}..."
            )
        for path, layer in hits:
            groups = compiled.fullmatch(path).groups()
            key = name if not groups else f"{name}_{'_'.join(groups)}"
            if id(layer) in owner and owner[id(layer)] != key:
                raise ValueError(
                    f"Layer {path!r} matches the patterns of groups "
                    f"{owner[id(layer)]!r} and {key!r}; a layer may belong to "
                    "one group only."
                )
            owner[id(layer)] = key
            found.setdefault(key, []).append((path, layer))
    matched = [path for hits in found.values() for path, _ in hits]
    leaves = leaves_at(model, matched)
    groups = _groups_of_leaves(model, leaves, owner)
    return groups, leaves


def _groups_of_leaves(model, leaves, owner) -> list[tuple[str, list]]:
    """The groups in the order of `leaves`: each leaf goes to the group of
    the pattern that matched it or a layer above it; one without weights
    that no pattern reaches (a dropout between blocks) to the group before
    it; one with weights is refused."""
    paths = tree.layer_paths(model)
    ancestors = _ancestors(model)
    groups: dict[str, list] = {}
    pending, last = [], None
    for leaf in leaves:
        key = owner.get(id(leaf)) or next(
            (owner[a] for a in ancestors.get(id(leaf), ()) if a in owner), None
        )
        if key is None and leaf.weights:
            raise ValueError(
                f"Layer {paths[id(leaf)]!r} of model '{model.name}' has "
                "weights, but no pattern matches it or a layer around it: "
                "every layer with weights belongs to a group. Add a pattern "
                "for it."
            )
        if key is None:
            if last is None:
                pending.append(leaf)
            else:
                groups[last].append(leaf)
            continue
        if key != last and key in groups:
            raise ValueError(
                f"Group {key!r} would hold layers that are not next to each "
                f"other (layer {paths[id(leaf)]!r} comes after layers of other "
                "groups): a group is a run of consecutive layers."
            )
        groups.setdefault(key, []).extend([*pending, leaf])
        pending, last = [], key
    return list(groups.items())


def _ancestors(model) -> dict[int, list[int]]:
    """The ids of the layers above each layer, nearest first."""
    above: dict[int, list[int]] = {}

    def visit(layer, trail):
        for child in tree.children(layer):
            above.setdefault(id(child), trail)
            visit(child, [id(child), *trail])

    visit(model, [])
    return above


def _check_model(model: Any) -> None:
    if not isinstance(model, keras.Model):
        raise TypeError(
            "Expected `model` to be a Keras model to split. Received: "
            f"{type(model).__name__}"
        )
    if not model.built:
        raise ValueError(
            f"Model '{model.name}' is not built; build it (or call it on "
            "data) before splitting it into groups."
        )
