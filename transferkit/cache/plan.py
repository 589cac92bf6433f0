"""Which of a phase's layers the feature cache computes once, and why.

When the leading groups of a `Sequential` model are frozen, their output for a
sample is the same on every step of a phase, provided that no layer among them
draws random numbers or behaves differently in training (read from each
layer's traced graph, `transferkit.groups.behaviour`): a frozen
`BatchNormalization` runs in inference mode and is cached, a `Dropout`, a
`GaussianNoise` or a random augmentation layer draws new noise each step and
is not. Groups with nothing to train (preprocessing such as `Rescaling` or a
`Lambda` of `preprocess_input`, pooling) count with the frozen groups. The
cache covers those leading layers up to the first one whose output varies;
that layer and everything after it run on every step, exactly as without the
cache. A dataset is cached only when asked (`cache_datasets`), finite, and
free of random operations (or declared deterministic).

Every decision carries a short code beside its sentence (`CachePlan.code`,
`PhaseResult.cache_code`), listed in `CODES`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import keras
import tensorflow as tf

from transferkit.cache.cuts import Cuts, graph_of
from transferkit.groups import tree
from transferkit.groups.behaviour import (
    dataset_opaque_operations,
    dataset_random_operations,
    first_varying_layer,
    input_spec,
    same_in_training,
    training_behaviour,
    trains_nothing,
)
from transferkit.groups.model_groups import groups_of

__all__ = ["CODES", "CachePlan", "has_own_fit", "plan_cache", "plan_phase_cache"]


def has_own_fit(model: keras.Model) -> bool:
    """Whether `model`'s class overrides Keras' `fit`, as a keras-hub task
    does to preprocess the data: training it by its `train_step` alone, or
    on cached features, would skip what that `fit` does."""
    return type(model).fit is not keras.Model.fit


CODES = {
    "covers_frozen": "cached: every leading frozen group (and groups with "
    "nothing to train between them)",
    "augmented_views": "cached as K fixed augmented views of every sample "
    "(augmented_views=K), one drawn per sample and epoch",
    "moved_back": "cached up to the nearest cut of a backbone that one tensor crosses",
    "random_layer": "stops at a layer that draws random numbers",
    "training_layer": "stops at a layer that behaves differently in training",
    "no_single_tensor_cut": "no cut of the backbone before the stop is crossed "
    "by one tensor",
    "off": "feature_cache=False",
    "nothing_frozen": "no group is frozen",
    "not_sequential": "the model is not a Sequential",
    "inside_layer": "the cache stops before a layer whose blocks run inside "
    "its call (cut points inside it cannot end the cache)",
    "own_fit": "the model's own fit does more than train_step (a keras-hub "
    "task's preprocessing)",
    "frozen_not_first": "a group that trains comes before the frozen groups",
    "dataset_not_declared": "a tf.data.Dataset, and cache_datasets=False",
    "dataset_endless": "an endless tf.data.Dataset",
    "dataset_random": "the dataset's pipeline draws random numbers",
    "dataset_opaque": "the dataset's pipeline runs Python code the cache cannot "
    "read (tf.py_function, tf.numpy_function, Dataset.from_generator)",
    "dataset_steps": "an epoch is steps_per_epoch batches of the dataset",
    "too_large": "the cache would exceed feature_cache_memory where it may "
    "not use files",
}
"""What each `CachePlan.code` means."""


@dataclasses.dataclass(frozen=True)
class CachePlan:
    """Which leading layers of a model a phase can serve from the cache."""

    layers: int
    """Leading layers of the model's groups whose output is cached (layers
    of a backbone counted one by one); 0 when the cache cannot be used."""

    reason: str
    """Why the cache stops where it does, or why it cannot be used."""

    code: str
    """The reason as a key of `CODES`, e.g. `"random_layer"`."""

    front: tuple[keras.Layer, ...] = ()
    """What computes the cached features, applied in order: leading layers
    of the model, the last possibly a model from a backbone's input to the
    cut."""

    rest: tuple[keras.Layer, ...] = ()
    """What trains on the features, in order: the rest of the model, the
    first possibly a model from the cut to the backbone's output."""

    span: str = ""
    """The first and last cached layer, e.g. `"conv2d..max_pooling2d"`."""

    views: int = 1
    """Augmented views of each training sample the cache holds."""

    augmenting: int = 0
    """Leading entries of `front` that run in training mode for the views:
    the augmentation layers in front of the frozen groups."""


def plan_phase_cache(
    model: keras.Model,
    frozen: Sequence[str],
    data: dict[str, tf.data.Dataset | object],
    *,
    enabled: bool,
    cache_datasets: bool | str,
    views: int = 1,
    steps_per_epoch: int | None = None,
) -> CachePlan:
    """The cache plan of a phase: `plan_cache`, unless the cache is off or a
    dataset among `data` (by argument name, `None` where absent) may not be
    cached.

    Args:
        model: the model.
        frozen: names of the frozen groups.
        data: the phase's samples by argument name (`"data"`,
            `"validation_data"`): arrays, datasets or `None`.
        enabled: the run's `feature_cache`.
        cache_datasets: the run's `cache_datasets`.
        views: the run's `augmented_views`. Defaults to `1`.
        steps_per_epoch: the phase's `steps_per_epoch`. Defaults to `None`.
    """
    if not enabled:
        return CachePlan(0, "turned off (feature_cache=False)", "off")
    if steps_per_epoch is not None:
        return CachePlan(
            0,
            "`data` is read steps_per_epoch batches an epoch, not once",
            "dataset_steps",
        )
    for argument, x in data.items():
        if not isinstance(x, tf.data.Dataset):
            continue
        if not cache_datasets:
            return CachePlan(
                0,
                f"`{argument}` is a tf.data.Dataset, which may change from epoch "
                "to epoch; pass cache_datasets=True if it is finite and gives "
                "the same samples every epoch",
                "dataset_not_declared",
            )
        if x.cardinality() == tf.data.INFINITE_CARDINALITY:
            return CachePlan(
                0, f"`{argument}` is an endless tf.data.Dataset", "dataset_endless"
            )
        operations = dataset_random_operations(x)
        if operations and cache_datasets != "deterministic":
            return CachePlan(
                0,
                f"`{argument}` draws random numbers in its pipeline "
                f"({', '.join(operations)}): cached, every epoch would see the "
                "first epoch's draws. Put augmentation layers in the model "
                "instead, or pass cache_datasets='deterministic' if the "
                "pipeline gives the same samples every epoch all the same",
                "dataset_random",
            )
        opaque = dataset_opaque_operations(x)
        if opaque and cache_datasets != "deterministic":
            return CachePlan(
                0,
                f"`{argument}` runs Python code in its pipeline ({', '.join(opaque)}: "
                "a tf.py_function, tf.numpy_function or Dataset.from_generator), "
                "whose draws the cache cannot see: cached, every epoch could see "
                "the first epoch's samples. Pass cache_datasets='deterministic' if "
                "the pipeline gives the same samples every epoch",
                "dataset_opaque",
            )
    return plan_cache(model, frozen, views)


def plan_cache(model: keras.Model, frozen: Sequence[str], views: int = 1) -> CachePlan:
    """The leading layers of `model` a phase can compute once.

    The frozen groups that start the model (with any groups that have
    nothing to train among and after them) are covered up to the first
    layer whose output draws random numbers or depends on `training`.
    Inside a backbone (groups from `LayerGroup.split`), the cache ends at a
    layer whose output alone carries everything the rest of the backbone
    needs (a cut crossed by one tensor, such as InceptionV3's `mixedN` or a
    ResNet stage's output; `transferkit.cache.cuts`, which counts what Keras
    operations that are not layers use too); elsewhere it moves back to the
    nearest such layer.

    Args:
        model: a `Sequential` model with `groups`.
        frozen: names of the groups frozen for the phase.
        views: with augmentation layers in front of the frozen groups, cache
            this many augmented views of every sample, if above 1 (see
            `TransferRun`'s `augmented_views`). Defaults to `1`.

    Returns:
        A `CachePlan`; its `layers` is 0 when the frozen groups do not start
        the model, the model is not a `Sequential`, a layer before the first
        frozen one varies, or no cut before it is crossed by one tensor.
    """
    if not frozen:
        return CachePlan(0, "no group is frozen", "nothing_frozen")
    if has_own_fit(model):
        return CachePlan(
            0,
            f"the model's own fit ({type(model).__name__}.fit) does more than "
            "train_step, so its layers see what that fit makes of the data",
            "own_fit",
        )
    if not isinstance(model, keras.Sequential):
        return CachePlan(
            0,
            f"the model is a {type(model).__name__}, not a Sequential",
            "not_sequential",
        )
    prefix, first_frozen = [], None
    for name, group in groups_of(model).items():
        if name in frozen:
            first_frozen = len(prefix) if first_frozen is None else first_frozen
        elif not trains_nothing(group):
            break
        prefix.extend(group)
    if first_frozen is None:
        trains = next(n for n in groups_of(model) if n not in frozen)
        return CachePlan(
            0,
            f"the frozen groups {list(frozen)} do not start the model (group "
            f"'{trains}', before them, trains)",
            "frozen_not_first",
        )
    whole = _cut(
        model, prefix, len(prefix), "covers the frozen groups", "covers_frozen"
    )
    if whole.layers and same_in_training(whole.front, input_spec(model.inputs[0])):
        return whole
    index, behaviour = first_varying_layer(prefix)
    if index == len(prefix):
        return whole
    layer = prefix[index]
    code = "random_layer" if "random" in behaviour else "training_layer"
    stop = f"layer '{layer.name}' ({type(layer).__name__}), which {behaviour}"
    if index < first_frozen and views > 1:
        viewed = _augmented_views(model, prefix, first_frozen, views)
        if viewed is not None:
            return viewed
    if index <= first_frozen:
        if index == first_frozen:
            return CachePlan(0, f"the first frozen {stop}", code)
        return CachePlan(0, f"{stop}, comes before the frozen groups", code)
    return _cut(model, prefix, index, f"stops before {stop}", code)


def _augmented_views(
    model: keras.Model, prefix: list, first_frozen: int, views: int
) -> CachePlan | None:
    """The plan that caches `views` augmented views, when the layers in
    front of the frozen groups (the model's first layers) only draw random
    numbers or compute the same in training, and the frozen layers after
    them can be cached; else `None`."""
    front = prefix[:first_frozen]
    if any(a is not b for a, b in zip(front, model.layers, strict=False)):
        return None  # Inside a backbone.
    behaviours = [training_behaviour(layer) for layer in front]
    if any(b and "random" not in b for b in behaviours):
        return None
    index, behaviour = first_varying_layer(prefix[first_frozen:])
    end = first_frozen + index
    drawn = [layer.name for layer, b in zip(front, behaviours, strict=True) if b]
    reason = (
        f"{views} fixed augmented views: {', '.join(drawn)} drew {views} times "
        "per sample, once for the phase; each epoch trains on one view of each "
        "sample, not on fresh draws"
    )
    if behaviour:
        layer = prefix[end]
        reason += (
            f"; stops before layer '{layer.name}' ({type(layer).__name__}), "
            f"which {behaviour}"
        )
    plan = _cut(model, prefix, end, reason, "augmented_views")
    if plan.layers <= first_frozen:
        return None
    return dataclasses.replace(plan, views=views, augmenting=first_frozen)


def _cut(
    model: keras.Model, prefix: list, end: int, reason: str, code: str
) -> CachePlan:
    """The plan that caches `prefix[:end]`, or less where a backbone's graph
    is crossed by more than one tensor after `prefix[end - 1]`, or where that
    layer is held inside a layer of the backbone (a block of a ViT's
    encoder), whose call no cut can enter."""
    outer = list(model.layers)
    inside = _inside_layer(outer, prefix, end)
    if inside is not None:
        end, container = inside
        note = (
            f"stops before '{container}', whose layers run inside its call, "
            "where no cut can enter"
        )
        if end == 0:
            return CachePlan(0, note, "inside_layer")
        plan = _cut(model, prefix, end, f"{reason}; {note}", code)
        return dataclasses.replace(plan, code="inside_layer") if plan.layers else plan
    last = prefix[end - 1]
    index, backbone = _holder(outer, last)
    inner = list(backbone.layers) if backbone is not last else [last]
    position = next(j for j, layer in enumerate(inner) if layer is last)
    if position == len(inner) - 1:  # After a layer of the model, or a whole backbone.
        return CachePlan(
            end,
            reason,
            code,
            tuple(outer[: index + 1]),
            tuple(outer[index + 1 :]),
            _span(prefix[:end]),
        )
    found, note = _single_tensor_cut(backbone, inner, position)
    if found is not None:
        cut, tensor, graph = found
        layer = inner[cut]
        front = keras.Model(graph.input, tensor, name=f"{layer.name}_front")
        rest = keras.Model(tensor, graph.output, name=f"{layer.name}_rest")
        cached = end - (position - cut)
        return CachePlan(
            cached,
            f"ends at '{layer.name}' in '{backbone.name}', {reason}{note}",
            "moved_back" if note and code == "covers_frozen" else code,
            (*outer[:index], front),
            (rest, *outer[index + 1 :]),
            _span(prefix[:cached]),
        )
    before = next(i for i, layer in enumerate(prefix) if layer is inner[0])
    if before == 0:
        return CachePlan(
            0,
            f"no cut in '{backbone.name}' up to '{last.name}' is crossed by "
            "one tensor alone",
            "no_single_tensor_cut",
        )
    return CachePlan(
        before,
        f"stops before '{backbone.name}': no cut in it up to '{last.name}' is "
        "crossed by one tensor alone",
        "no_single_tensor_cut",
        tuple(outer[:index]),
        tuple(outer[index:]),
        _span(prefix[:before]),
    )


def _single_tensor_cut(backbone: keras.Model, inner: list, position: int):
    """`((cut, tensor, graph), note)`: the last of `inner[: position + 1]`
    (the backbone's layers) after which one tensor alone, its own output,
    crosses the backbone's graph, and a note when that is not
    `inner[position]`; `(None, "")` for a backbone without a graph (a
    subclassed model), or when no such layer comes before."""
    if graph_of(backbone) is None:
        return None, ""
    cuts = Cuts(backbone)
    last = inner[position]
    note = ""
    if cuts.single(last) is None:
        count = len(cuts.crossing(last))
        note = (
            f"; moved back from '{last.name}', where {count} "
            f"{'tensor crosses' if count == 1 else 'tensors cross'} the cut "
            f"(from {cuts.producers(last)})"
        )
    for cut in range(position, -1, -1):
        if isinstance(inner[cut], keras.layers.InputLayer):
            continue  # A cut there would cache nothing.
        tensor = cuts.single(inner[cut])
        if tensor is not None:
            return (cut, tensor, cuts.graph), note
    return None, ""


def _holder(outer, layer) -> tuple[int, keras.Layer] | None:
    """`(i, outer[i])` where `outer[i]` is `layer`, or a backbone whose own
    layers hold it; `None` when `layer` is deeper (inside a layer)."""
    return next(
        (
            (i, x)
            for i, x in enumerate(outer)
            if layer is x
            or (isinstance(x, keras.Model) and any(layer is y for y in x.layers))
        ),
        None,
    )


def _inside_layer(outer, prefix, end):
    """`(end, name)`: where the cached prefix must end instead of `end`, and
    the layer it stops before, when `prefix[end - 1]` is held inside a layer
    rather than by the model or a backbone in it; else `None`."""

    def placed(layer):
        return _holder(outer, layer) is not None

    if placed(prefix[end - 1]):
        return None
    moved = end
    while moved and not placed(prefix[moved - 1]):
        moved -= 1
    container = next(
        (
            inner.name
            for backbone in outer
            if isinstance(backbone, keras.Model)
            for inner in backbone.layers
            if any(x is prefix[moved] for _, x in tree.walk(inner))
        ),
        prefix[moved].name,
    )
    return moved, container


def _span(layers) -> str:
    named = [
        layer for layer in layers if not isinstance(layer, keras.layers.InputLayer)
    ]
    if len(named) == 1:
        return named[0].name
    return f"{named[0].name}..{named[-1].name}"
