"""One way to walk a model: every layer and variable named by its path.

A model is a tree of layers: a functional or sequential model holds its
`layers`, and any layer holds the layers it tracks (a keras-hub
`ViTEncoder` its transformer blocks, a block its attention and dense
layers). A layer's path is the names of the layers from the model down to
it, joined by `/` (`"vit_encoder/transformer_block_2"`, or, in a keras-hub
task, `"vi_t_backbone/vit_encoder/transformer_block_2"`); a variable's is
its layer's path and its name (`".../mha/query/kernel"`). These are the
paths of Keras' own `layer.path` and `variable.path`, counted from the
model being walked rather than from where the layer was built, so that the
same path names the same layer in a backbone alone and in a task around it.

Splitting (`LayerGroup.split`), groups by pattern (`LayerGroup.match`), the
plan's fingerprint and the messages all name layers this way.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator

import keras

__all__ = [
    "children",
    "find_layer",
    "layer_paths",
    "layers_under",
    "own_variables",
    "position",
    "positions",
    "walk",
]


def children(layer: keras.Layer) -> list[keras.Layer]:
    """The layers `layer` holds directly, in order: a model's `layers`
    (a functional model's input layers included), any other layer's
    tracked sublayers."""
    if isinstance(layer, keras.Model):
        return list(layer.layers)
    return list(layer._flatten_layers(include_self=False, recursive=False))


def walk(model: keras.Layer, prefix: str = "") -> Iterator[tuple[str, keras.Layer]]:
    """`(path, layer)` for every layer under `model`, depth first, a layer
    before the layers it holds; a layer held twice is given once."""
    seen: set[int] = set()

    def visit(layer, path):
        for child in children(layer):
            if id(child) in seen:
                continue
            seen.add(id(child))
            child_path = f"{path}/{child.name}" if path else child.name
            yield child_path, child
            yield from visit(child, child_path)

    yield from visit(model, prefix)


def layer_paths(model: keras.Layer) -> dict[int, str]:
    """The path of every layer under `model`, by the layer's `id`."""
    return {id(layer): path for path, layer in walk(model)}


def find_layer(model: keras.Layer, path: str, argument: str = "at") -> keras.Layer:
    """The layer at `path` under `model`.

    Raises:
        ValueError: naming the path, with the paths most like it, if no
            layer is there.
    """
    paths = {p: layer for p, layer in walk(model)}
    if path in paths:
        return paths[path]
    near = difflib.get_close_matches(path, list(paths), n=5, cutoff=0.6)
    if not near:
        parent = path.rpartition("/")[0]
        near = [p for p in paths if p.rpartition("/")[0] == parent][:5]
    raise ValueError(
        f"Model '{model.name}' has no layer at the path {path!r} (paths are layer "
        f"names joined by '/', from the model down). Paths like it: "
        f"{near or [p for p in paths if '/' not in p][-5:]}. "
        f"Received: {argument}={path!r}"
    )


def matching(model: keras.Layer, pattern: str) -> list[tuple[str, keras.Layer]]:
    """`(path, layer)` of every layer whose whole path matches the regular
    expression `pattern`, in the walk's order."""
    compiled = re.compile(pattern)
    return [(p, layer) for p, layer in walk(model) if compiled.fullmatch(p)]


def positions(model: keras.Layer) -> dict[int, list[int]]:
    """Where every layer under `model` is, by the layer's `id`: the index of
    each layer on the way down among its parent's `children`, a path that
    does not depend on the names Keras numbers per process (`dense_3`). A
    layer held twice is placed where the walk meets it first."""
    found: dict[int, list[int]] = {}

    def visit(parent, trail):
        for index, child in enumerate(children(parent)):
            if id(child) not in found:
                found[id(child)] = [*trail, index]
                visit(child, [*trail, index])

    visit(model, [])
    return found


def position(model: keras.Layer, layer: keras.Layer) -> list[int]:
    """Where `layer` is under `model` (see `positions`).

    Raises:
        ValueError: if `layer` is not under `model`.
    """
    found = positions(model).get(id(layer))
    if found is None:
        raise ValueError(f"Layer '{layer.name}' is not in model '{model.name}'.")
    return found


def layers_under(layers) -> list[keras.Layer]:
    """Every layer of `layers` and every layer they hold, each once, in the
    walk's order."""
    seen: set[int] = set()
    found = []
    for top in layers:
        for layer in (top, *(x for _, x in walk(top))):
            if id(layer) not in seen:
                seen.add(id(layer))
                found.append(layer)
    return found


def own_variables(layer: keras.Layer) -> list[keras.Variable]:
    """The variables `layer` itself made (not those of the layers it
    holds): a container layer has none of its own."""
    held = {id(variable) for child in children(layer) for variable in child.variables}
    return [variable for variable in layer.weights if id(variable) not in held]
