"""LoRA as a group policy: a phase may adapt a group instead of training or
freezing it.

`run.fine_tune(data, freeze=[...], lora={"top": 8})` adapts every layer of
the group `top` that has Keras' `enable_lora` (`Dense`, `EinsumDense`,
`Embedding`, `Conv1D`/`2D`/`3D`) with rank-8 adapters: its kernel (or
embeddings) stays as it is, and the phase trains two small matrices whose
product, scaled by `lora_alpha / rank`, is added to it. Every other
variable of the group (biases, normalization, a class token) is frozen for
the phase, so the group's base weights are all proven unchanged, bitwise,
by the freeze proof, while the adapters move. A layer whose kernel Keras
cannot adapt (`DepthwiseConv2D`, `SeparableConv2D`) is refused by name.

At the end of the phase, once the proof is taken, the adapters are folded
into the kernels and removed (`merge`): every phase ends on a plain model,
so the model saved with the phase's result, a resumed run and an export
are the same plain model. During the phase, checkpoints hold each adapted
layer's base kernel and adapters apart (Keras' own saving of a LoRA layer
writes the merged kernel, and its loading sets both adapters to zero, from
which they can never move again), so that a phase resumed from an epoch
goes on with exactly the adapters it saved.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import keras

from transferkit.groups import tree

__all__ = ["Adaptation", "adapt", "check_lora", "merge"]

_ADAPTERS = {
    # Public weight: (base variable attribute, adapter A, adapter B).
    "kernel": ("_kernel", "lora_kernel_a", "lora_kernel_b"),
    "embeddings": ("_embeddings", "lora_embeddings_a", "lora_embeddings_b"),
}


_HELD: dict[int, keras.Variable] = {}
"""The variables `adapt` froze, until `merge` releases them: adapting a
group again (the phase after a resumed run adapted it to load its
checkpoint) finds them frozen and still holds them."""


def check_lora(lora: Any, groups: Mapping, frozen: Sequence[str]) -> dict[str, int]:
    """`lora` as `{group name: rank}`, checked: known groups that the phase
    does not freeze, and whole-number ranks of at least 1."""
    if lora is None:
        return {}
    if not isinstance(lora, Mapping):
        raise TypeError(
            "Expected `lora` to map group names to ranks, e.g. {'top': 8}. "
            f"Received: lora={lora!r}"
        )
    for name, rank in lora.items():
        if name not in groups:
            raise ValueError(
                f"Unknown group {name!r}. Expected one of {list(groups)}. "
                f"Received: lora={dict(lora)!r}"
            )
        if name in frozen:
            raise ValueError(
                f"Group {name!r} is frozen for the phase; a group is frozen, "
                f"trained or adapted. Received: lora={dict(lora)!r}"
            )
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(
                "Expected each LoRA rank to be a whole number of at least 1, "
                f"e.g. 8. Received: lora={dict(lora)!r}"
            )
    return {name: int(rank) for name, rank in lora.items()}


@dataclasses.dataclass
class Adaptation:
    """What `adapt` did to a model's groups, for the phase and `merge`."""

    layers: list = dataclasses.field(default_factory=list)
    """The adapted layers."""

    frozen: list = dataclasses.field(default_factory=list)
    """The variables frozen for the phase: every base weight of the adapted
    groups (the adapted kernels included)."""


def adapt(groups: Sequence, ranks: Mapping[str, int]) -> Adaptation:
    """Adds rank-`ranks[group]` adapters to every adaptable layer of each
    named group, and freezes the rest of its variables. Groups adapted
    already (and not merged since) are taken as they are.

    Raises:
        ValueError: naming the layer, for a layer with a kernel that Keras
            cannot adapt, or one with LoRA already enabled (from outside the
            run) at another rank; nothing is changed then.
    """
    plan = [
        (layer, ranks[group.name])
        for group in groups
        if group.name in ranks
        for layer in tree.layers_under(group)
    ]
    for layer, rank in plan:
        _check_adaptable(layer, rank)
    adaptation = Adaptation()
    for layer, rank in plan:
        own = tree.own_variables(layer)
        if _adaptable(layer):
            if not layer.lora_enabled:
                layer.enable_lora(rank)
            _keep_adapters_apart(layer)
            adaptation.layers.append(layer)
            adapters = {id(getattr(layer, n)) for n in _names(layer)[2:]}
            own = [v for v in tree.own_variables(layer) if id(v) not in adapters]
        for variable in own:
            if variable.trainable:
                variable.trainable = False
                _HELD[id(variable)] = variable
            if id(variable) in _HELD or variable is _base(layer):
                adaptation.frozen.append(variable)
    return adaptation


def merge(adaptation: Adaptation) -> bool:
    """Folds each adapted layer's adapters into its kernel, removes them,
    and makes the frozen base weights trainable again: the layers are plain
    Keras layers, which save and export as any other. Returns whether there
    was anything to merge."""
    merged = bool(adaptation.layers or adaptation.frozen)
    for layer in adaptation.layers:
        public, base, *adapters = _names(layer)
        base_variable = getattr(layer, base)
        base_variable.assign(getattr(layer, public))  # The merged kernel.
        layer._tracker.unlock()
        removed = {id(getattr(layer, name)) for name in adapters}
        layer._trainable_variables = [
            v for v in layer._trainable_variables if id(v) not in removed
        ]
        for name in adapters:
            object.__delattr__(layer, name)
        layer.lora_enabled = False
        layer.lora_rank = None
        layer._tracker.lock()
        for name in ("save_own_variables", "load_own_variables"):
            layer.__dict__.pop(name, None)
    for variable in adaptation.frozen:
        variable.trainable = True
        _HELD.pop(id(variable), None)
    adaptation.layers.clear()
    adaptation.frozen.clear()
    return merged


def _adaptable(layer) -> bool:
    return hasattr(layer, "enable_lora") and any(
        hasattr(layer, base) for base, *_ in _ADAPTERS.values()
    )


def _names(layer) -> tuple[str, str, str, str]:
    """`(public weight, base, adapter A, adapter B)` of an adaptable layer."""
    for public, names in _ADAPTERS.items():
        if hasattr(layer, names[0]):
            return (public, *names)
    raise AssertionError(layer)


def _base(layer):
    return getattr(layer, _names(layer)[1]) if _adaptable(layer) else None


def _check_adaptable(layer, rank: int) -> None:
    own = tree.own_variables(layer)
    if _adaptable(layer):
        if layer.lora_enabled and layer.lora_rank != rank:
            raise ValueError(
                f"Layer '{layer.name}' has LoRA of rank {layer.lora_rank} "
                f"enabled already; the phase asks for rank {rank}."
            )
        return
    kernels = [v.name for v in own if "kernel" in v.name]
    if kernels:
        raise ValueError(
            f"Layer '{layer.name}' ({type(layer).__name__}) has the kernels "
            f"{kernels}, but Keras has no LoRA for it (enable_lora is for Dense, "
            "EinsumDense, Embedding and Conv1D/2D/3D). Freeze or train the group "
            "that holds it, or cut it into a group of its own."
        )


def _keep_adapters_apart(layer) -> None:
    """Makes `layer` save and load its base kernel and adapters as they are,
    while it is adapted, instead of Keras' merged kernel and zeroed
    adapters."""
    if "save_own_variables" in layer.__dict__:
        return

    def save_own_variables(store):
        for index, variable in enumerate(layer.weights):
            store[str(index)] = variable.numpy()

    def load_own_variables(store):
        for index, variable in enumerate(layer.weights):
            variable.assign(store[str(index)])

    layer.save_own_variables = save_own_variables
    layer.load_own_variables = load_own_variables
