"""Named groups of layers that compose into a `keras.Sequential`."""

from __future__ import annotations

import types
from collections.abc import Iterable, Iterator, Mapping, Sequence

import keras

__all__ = ["GroupedSequential", "LayerGroup"]


def _is_input_tensor(value: object) -> bool:
    """Whether `value` is a tensor made by `keras.Input(...)`."""
    history = getattr(value, "_keras_history", None)
    return history is not None and isinstance(history[0], keras.layers.InputLayer)


class LayerGroup(Sequence):
    """A named, ordered list of Keras layers: the unit that is frozen.

    Groups compose with `+` into a `GroupedSequential`, a `keras.Sequential`
    whose `groups` attribute remembers which layers belong to which group.
    A `TransferRun` then freezes and unfreezes groups by name.

    Args:
        name: the group's name, unique within a model. Names such as
            `"features"` or `"classifier"` read best in reports.
        layers: the group's layers, in order. The first element may be a
            `keras.Input(...)` tensor, which sets the model's input shape.
        input_shape: shape of one sample (without the batch axis), for a
            group that starts a model. Defaults to `None`: the shape comes
            from a leading `keras.Input`, or from the first data the model
            sees.

    Example:

    >>> import keras
    >>> from keras import layers
    >>> from transferkit import LayerGroup
    >>> features = LayerGroup(
    ...     "features", [layers.Conv2D(8, 3), layers.Flatten()],
    ...     input_shape=(28, 28, 1))
    >>> head = LayerGroup("head", [layers.Dense(5, activation="softmax")])
    >>> model = features + head
    >>> list(model.groups)
    ['features', 'head']
    >>> model.output_shape
    (None, 5)
    """

    def __init__(
        self,
        name: str,
        layers: Iterable[keras.layers.Layer],
        input_shape: Sequence[int | None] | None = None,
    ):
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"Expected `name` to be a non-empty string. Received: name={name!r}"
            )
        if isinstance(layers, keras.layers.Layer) or not isinstance(layers, Iterable):
            raise TypeError(
                f"Expected `layers` to be a list of Keras layers for group "
                f"'{name}'. Received: layers={layers!r}"
            )
        layers = list(layers)
        if layers and _is_input_tensor(layers[0]):
            if input_shape is not None:
                raise ValueError(
                    f"Group '{name}' got both a `keras.Input` and "
                    "`input_shape`; give the input shape once. Received: "
                    f"input_shape={input_shape!r}"
                )
            input_shape = tuple(layers.pop(0).shape[1:])
        if not layers:
            raise ValueError(
                f"Group '{name}' needs at least one layer. Received: layers=[]"
            )
        seen = set()
        for position, layer in enumerate(layers):
            if _is_input_tensor(layer):
                raise ValueError(
                    f"A `keras.Input` may only be the first element of group "
                    f"'{name}'. Received one at position {position}."
                )
            if not isinstance(layer, keras.layers.Layer):
                raise TypeError(
                    f"Group '{name}' accepts only Keras layers. Received: "
                    f"{layer!r} (of type {type(layer).__name__}) at position "
                    f"{position}."
                )
            if id(layer) in seen:
                raise ValueError(
                    f"Layer '{layer.name}' appears twice in group '{name}'."
                )
            seen.add(id(layer))
        self._name = name
        self._layers = tuple(layers)
        self._input_shape = (
            None if input_shape is None else _check_input_shape(name, input_shape)
        )

    @property
    def name(self) -> str:
        """The group's name."""
        return self._name

    @property
    def layers(self) -> tuple[keras.layers.Layer, ...]:
        """The group's layers, in order."""
        return self._layers

    @property
    def input_shape(self) -> tuple[int | None, ...] | None:
        """Shape of one input sample, or `None` if the group sets none."""
        return self._input_shape

    @property
    def trainable(self) -> bool:
        """`True` unless every layer of the group is frozen.

        Setting it sets `trainable` on every layer of the group. As always in
        Keras, compile the model again for the change to take effect.
        """
        return any(layer.trainable for layer in self._layers)

    @trainable.setter
    def trainable(self, value: bool) -> None:
        for layer in self._layers:
            layer.trainable = bool(value)

    @property
    def variables(self) -> list[keras.Variable]:
        """Every variable of the group, trainable and not (e.g. BatchNorm
        moving statistics), without duplicates."""
        seen = set()
        variables = []
        for layer in self._layers:
            for variable in layer.weights:
                if id(variable) not in seen:
                    seen.add(id(variable))
                    variables.append(variable)
        return variables

    def __len__(self) -> int:
        return len(self._layers)

    def __getitem__(self, index):
        return self._layers[index]

    def __iter__(self) -> Iterator[keras.layers.Layer]:
        return iter(self._layers)

    def __add__(self, other: LayerGroup | GroupedSequential) -> GroupedSequential:
        if isinstance(other, GroupedSequential):
            return GroupedSequential((self,) + other._layer_groups)
        return GroupedSequential([self, other])

    def __repr__(self) -> str:
        names = ", ".join(layer.name for layer in self._layers)
        shape = (
            f", input_shape={self._input_shape}"
            if self._input_shape is not None
            else ""
        )
        return f"LayerGroup({self._name!r}, [{names}]{shape})"


def _check_input_shape(name, input_shape) -> tuple[int | None, ...]:
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    if not shape or not all(
        dim is None or (isinstance(dim, int) and dim > 0) for dim in shape
    ):
        raise ValueError(
            f"Expected `input_shape` of group '{name}' to be a tuple of "
            "positive integers (or `None`), without the batch axis, e.g. "
            f"(28, 28, 1). Received: input_shape={input_shape!r}"
        )
    return shape


@keras.saving.register_keras_serializable(package="transferkit")
class GroupedSequential(keras.Sequential):
    """A `keras.Sequential` built from `LayerGroup`s that remembers them.

    Made by adding groups: `features + classifier`. It is a plain
    `keras.Sequential` in every other respect: it compiles, fits, saves to
    `.keras` and loads back with `keras.models.load_model` (once `transferkit`
    is imported, which registers the class), groups and trainable flags
    included.

    Adding a further group, `model + head`, returns a new model over the same
    layer objects; the layers, and so their weights, are shared.

    Args:
        groups: the groups, in order. Only the first may set an input shape.
        name: the model's name. Defaults to `None` (a Keras default name).
    """

    def __init__(
        self,
        groups: Sequence[LayerGroup] = (),
        name: str | None = None,
        **kwargs,
    ):
        groups = tuple(groups)
        _check_groups(groups)
        layers = [layer for group in groups for layer in group.layers]
        if groups and groups[0].input_shape is not None:
            layers.insert(0, keras.Input(shape=groups[0].input_shape))
        super().__init__(layers=layers, name=name, **kwargs)
        self._layer_groups = groups

    @property
    def groups(self) -> Mapping[str, LayerGroup]:
        """Read-only, ordered mapping of group name to `LayerGroup`."""
        return types.MappingProxyType(
            {group.name: group for group in self._layer_groups}
        )

    def __add__(self, other: LayerGroup) -> GroupedSequential:
        return GroupedSequential(self._layer_groups + (other,))

    def get_config(self):
        config = super().get_config()
        config["groups"] = [
            [group.name, [layer.name for layer in group.layers]]
            for group in self._layer_groups
        ]
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        group_specs = config.pop("groups", [])
        model = super().from_config(config, custom_objects=custom_objects)
        by_name = {layer.name: layer for layer in model.layers}
        groups = []
        for index, (group_name, layer_names) in enumerate(group_specs):
            input_shape = None
            if index == 0 and model._functional is not None:
                input_shape = tuple(model.inputs[0].shape[1:])
            layers = [by_name[layer_name] for layer_name in layer_names]
            groups.append(LayerGroup(group_name, layers, input_shape))
        model._layer_groups = tuple(groups)
        return model


def _check_groups(groups):
    names = set()
    owner = {}
    for index, group in enumerate(groups):
        if not isinstance(group, LayerGroup):
            raise TypeError(
                "Only `LayerGroup`s can be composed into a model. Received: "
                f"{group!r} (of type {type(group).__name__})"
            )
        if group.name in names:
            raise ValueError(
                f"Two groups are named '{group.name}'; group names must be "
                "unique within a model. Received: "
                f"{[g.name for g in groups]}"
            )
        names.add(group.name)
        if index > 0 and group.input_shape is not None:
            raise ValueError(
                f"Only the first group may set an input shape; group "
                f"'{group.name}' is at position {index}. Received: "
                f"input_shape={group.input_shape}"
            )
        for layer in group.layers:
            if id(layer) in owner:
                raise ValueError(
                    f"Layer '{layer.name}' is in both group "
                    f"'{owner[id(layer)]}' and group '{group.name}'; a layer "
                    "may belong to one group only."
                )
            owner[id(layer)] = group.name
