"""Which composed models hold a layer, so that a layer trained in one model
is never silently shared by another.

Composing groups has always shared their layer objects (`a + b` is a model
over `a`'s and `b`'s layers, and `(a + b) + c` another over the same ones):
that is how a model is built. What must not happen by accident is a second
model over the layers of a model that is compiled (trained, or ready to
train): training either would change the other's weights. That case is
refused here, with the ways out: a copy (`clone_model`, `copy_groups`) or
sharing on purpose (`GroupedSequential(..., share_layers=True)`).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import keras

__all__ = ["check_unshared", "holder_of", "register"]

_MODELS: weakref.WeakSet = weakref.WeakSet()  # Every live GroupedSequential.


def register(model: keras.Model) -> None:
    """Records `model` as a holder of its layers while it lives."""
    _MODELS.add(model)


def holder_of(layers: Sequence[keras.Layer], besides: keras.Model | None = None):
    """`(model, layer)`: a compiled model other than `besides` that holds one
    of `layers`, with that layer; `None` if there is none."""
    wanted = {id(layer) for layer in layers}
    for model in list(_MODELS):
        if model is besides or not getattr(model, "compiled", False):
            continue
        for layer in model._flatten_layers(include_self=False, recursive=True):
            if id(layer) in wanted:
                return model, layer
    return None


def check_unshared(groups: Sequence, besides: keras.Model | None = None) -> None:
    """Raises if a layer of `groups` belongs to a compiled model other than
    `besides`, naming the group, the layer, the model and the ways out."""
    for group in groups:
        found = holder_of(group.layers, besides)
        if found is None:
            continue
        model, layer = found
        raise ValueError(
            f"Group '{group.name}' holds layer '{layer.name}' of model "
            f"'{model.name}', which is compiled (trained, or ready to train). "
            "A new model over that layer would share it and its weights: "
            "training either model would change the other. Compose a copy "
            f"instead: `transferkit.clone_model(source).groups['{group.name}']`"
            " (its weights copied, `source` being that model), or build the "
            "new model from new layers and copy the weights in with "
            f"`transferkit.copy_groups(source, new_model, ['{group.name}'])`. "
            "To share the layers on purpose: "
            "`GroupedSequential(groups, share_layers=True)`."
        )
