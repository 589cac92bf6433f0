"""Named groups of layers that compose into a `keras.Sequential`.

Groups are made from layers (`LayerGroup("head", [...])`) or cut out of an
existing, built model (`LayerGroup.split(backbone, at="mixed8", names=...)`);
composed with `+`, a backbone's groups bring the backbone in once, as it is,
as one layer of the model.
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Iterator, Mapping, Sequence

import keras

from transferkit.groups import ownership
from transferkit.groups.composition import (
    check_class_names,
    model_layers,
    split_runs,
)
from transferkit.groups.splitting import match_groups, split_groups
from transferkit.groups.tree import find_layer, layer_paths

__all__ = ["GroupChain", "GroupedSequential", "LayerGroup", "compose"]


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
        self._source: keras.Model | None = None
        self._leaves: tuple[keras.Layer, ...] | None = None  # All of a split.

    @classmethod
    def split(
        cls,
        model: keras.Model,
        *,
        at: str | int | Sequence[str | int],
        names: Sequence[str],
    ) -> tuple[LayerGroup, ...]:
        """Cuts a built model into consecutive groups of its layers.

        The model may be functional, nested or sequential, e.g. any
        `keras.applications` backbone or keras-hub model. Each cut point ends
        a group: a layer name ends it inclusively (`at="mixed8"` puts
        InceptionV3's first 249 layers, up to and including `mixed8`, in the
        first group), an integer `n` puts `model.layers[:n]` in it. A path of
        names joined by `/` reaches a layer held inside another
        (`"vit_encoder/transformer_block_2"`, `"encoder/layers_1"`), and
        opens the layers on the way: their places go to the layers they
        hold (`transferkit.groups.splitting`). The groups hold every layer once, in
        order. Train the model in place with them
        (`TransferRun(attach_groups(model, groups), ...)`), or compose them
        with `+`, which brings `model` in as one layer, with its weights.

        Args:
            model: a built Keras model.
            at: a cut point, or a list of them in increasing order.
            names: one name per group: one more than there are cut points.

        Returns:
            The groups, in order.

        Raises:
            TypeError: if `model` is not a Keras model, or a cut point is not
                a layer path or an integer.
            ValueError: naming the bad value, for a model that is not built, an
                unknown layer path (with similar paths), a cut inside a layer
                with variables of its own, a cut point out of range or out of
                order, or a `names` count that does not match.

        Example:

        >>> import keras
        >>> base = keras.applications.MobileNetV2(
        ...     input_shape=(32, 32, 3), alpha=0.35, include_top=False,
        ...     weights=None)
        >>> bottom, top = LayerGroup.split(
        ...     base, at="block_12_add", names=["bottom", "top"])
        >>> bottom[-1].name, top[0].name
        ('block_12_add', 'block_13_expand')
        """
        groups, leaves = split_groups(model, at, names)
        return cls._of_model(model, groups, leaves)

    @classmethod
    def match(
        cls, model: keras.Model, patterns: Mapping[str, str]
    ) -> tuple[LayerGroup, ...]:
        """Groups of a built model by regular expressions over layer paths,
        as timm's `group_matcher` names a model's parameter groups.

        Each pattern must match whole paths (`transferkit.groups.tree`); a
        pattern with a capturing group makes one group per value it
        captures, named `f"{name}_{value}"`. A layer goes to the group whose
        pattern matches it or a layer around it; layers without weights
        that no pattern reaches (a dropout between blocks) join the group
        before them. Groups come in the model's order, and each must be a
        run of consecutive layers.

        Raises:
            ValueError: naming the pattern or the layer, for a pattern that
                matches nothing, a layer that two patterns match, a layer
                with weights that none matches, or a group that would not be
                consecutive.

        Example:

        >>> import keras
        >>> inputs = keras.Input((4,))
        >>> x = keras.layers.Dense(8, name="block_0")(inputs)
        >>> x = keras.layers.Dense(8, name="block_1")(x)
        >>> outputs = keras.layers.Dense(2, name="head")(x)
        >>> model = keras.Model(inputs, outputs)
        >>> [g.name for g in LayerGroup.match(
        ...     model, {"block": r"block_(\\d+)", "head": "head"})]
        ['block_0', 'block_1', 'head']
        """
        groups, leaves = match_groups(model, patterns)
        return cls._of_model(model, groups, leaves)

    @classmethod
    def from_paths(
        cls, model: keras.Model, paths: Mapping[str, Sequence[str]]
    ) -> tuple[LayerGroup, ...]:
        """The groups `{name: [layer paths]}` over `model`, e.g. those a run
        folder records (`transferkit.groups.model_groups.group_paths`) over the
        model loaded from it.

        Raises:
            ValueError: naming the path, for a layer that is not there.
        """
        groups = [
            (name, [find_layer(model, path, "paths") for path in members])
            for name, members in paths.items()
        ]
        leaves = [layer for _, layers in groups for layer in layers]
        return cls._of_model(model, groups, leaves)

    @classmethod
    def _of_model(cls, model, groups, leaves) -> tuple[LayerGroup, ...]:
        made = tuple(cls(name, layers) for name, layers in groups)
        for group in made:
            group._source = model
            group._leaves = tuple(leaves)
        return made

    @property
    def name(self) -> str:
        """The group's name."""
        return self._name

    @property
    def layers(self) -> tuple[keras.layers.Layer, ...]:
        """The group's layers, in order."""
        return self._layers

    @property
    def source(self) -> keras.Model | None:
        """The model the group was split from (`LayerGroup.split`), or
        `None` for a group of loose layers."""
        return self._source

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

    def __add__(
        self, other: LayerGroup | GroupedSequential | GroupChain
    ) -> GroupedSequential | GroupChain:
        return compose((self, *_groups_of(other)))

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
    layer objects; the layers, and so their weights, are shared. Once a model
    is compiled (trained, or ready to train), a new model over its layers is
    refused, unless `share_layers=True`: compose a copy instead
    (`transferkit.clone_model`, `transferkit.copy_groups`).

    Args:
        groups: the groups, in order. Only the first may set an input shape.
        name: the model's name. Defaults to `None` (a Keras default name).
        share_layers: whether the model may share layers with a compiled
            model. Defaults to `False`: refused, naming the group and model.
    """

    def __init__(
        self,
        groups: Sequence[LayerGroup] = (),
        name: str | None = None,
        share_layers: bool = False,
        **kwargs,
    ):
        groups = tuple(groups)
        check_groups(groups)
        if not share_layers:
            ownership.check_unshared(groups)
        layers = model_layers(groups)
        if groups and groups[0].input_shape is not None:
            layers.insert(0, keras.Input(shape=groups[0].input_shape))
        elif groups and groups[0].source is not None:
            layers.insert(0, keras.Input(shape=groups[0].source.input_shape[1:]))
        super().__init__(layers=layers, name=name, **kwargs)
        ownership.register(self)
        self._share_layers = share_layers
        self._layer_groups = groups
        self._optimizer_variables: list[int] | None = None  # From a config.
        self._class_names: tuple[str, ...] | None = None
        self.input_recipe: dict | None = None
        """How the model's images were loaded in training (an
        `InputRecipe`'s config); saved and loaded with the model. A
        `TransferRun` records it from an image dataset."""

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """The names of the model's output classes, in order; saved and
        loaded with the model. `None` until set (a `TransferRun` sets them
        from its `class_names`, or from a dataset's)."""
        return self._class_names

    @class_names.setter
    def class_names(self, names: Sequence[str] | None) -> None:
        self._class_names = None if names is None else check_class_names(names, self)

    @property
    def groups(self) -> Mapping[str, LayerGroup]:
        """Read-only, ordered mapping of group name to `LayerGroup`."""
        return types.MappingProxyType(
            {group.name: group for group in self._layer_groups}
        )

    def __add__(
        self, other: LayerGroup | GroupedSequential | GroupChain
    ) -> GroupedSequential | GroupChain:
        return compose((*self._layer_groups, *_groups_of(other)))

    def _optimizer_positions(self) -> list[int] | None:
        """The variables the optimizer was built for, by position among the
        model's weights: a phase may train fewer than are trainable after it
        (a backbone's BatchNormalization, frozen for the phase only)."""
        optimizer = getattr(self, "optimizer", None)
        built_for = getattr(optimizer, "_trainable_variables", None)  # Keras' own.
        if optimizer is None or not optimizer.built or not built_for:
            return None
        position = {id(w): i for i, w in enumerate(self.weights)}
        trained = [position.get(id(v)) for v in built_for]
        return None if None in trained else trained

    def compile_from_config(self, config):
        # The positions are in the model's config (`get_config`), not in the
        # compile config, which Keras also hands to a plain `Sequential`
        # (`keras.models.clone_model`). Run folders written before kept them
        # in the compile config.
        config = dict(config)
        trained = config.pop("optimizer_variables", None)
        trained = self._optimizer_variables if trained is None else trained
        self._optimizer_variables = None
        if trained is None:
            return super().compile_from_config(config)
        self.compile(**keras.saving.deserialize_keras_object(config))
        weights = self.weights
        self.optimizer.build([weights[i] for i in trained])

    def get_config(self):
        config = super().get_config()
        # A layer of a backbone is named by the backbone and its own name.
        config["groups"] = [_group_config(group) for group in self._layer_groups]
        if self._class_names is not None:
            config["class_names"] = list(self._class_names)
        if self.input_recipe is not None:
            config["input_recipe"] = dict(self.input_recipe)
        trained = self._optimizer_positions()
        if trained is not None:
            config["optimizer_variables"] = trained
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        group_specs = config.pop("groups", [])
        class_names = config.pop("class_names", None)
        recipe = config.pop("input_recipe", None)
        trained = config.pop("optimizer_variables", None)
        model = super().from_config(config, custom_objects=custom_objects)
        model.input_recipe = recipe
        model._optimizer_variables = trained
        by_name = {layer.name: layer for layer in model.layers}
        groups = []
        for index, (group_name, layer_names, *flags) in enumerate(group_specs):
            sources = {name[0] for name in layer_names if isinstance(name, list)}
            if sources:  # Split from the backbone named in each entry.
                (source,) = (by_name[name] for name in sources)
                # A layer's path in `source` (its name, one level down).
                layers = [find_layer(source, name[1]) for name in layer_names]
                group = LayerGroup(group_name, layers)
                group._source = source
                # Keras restores a nested model's flags from its own.
                for layer, trainable in zip(layers, flags[0], strict=True):
                    layer.trainable = trainable
            else:
                input_shape = None
                if index == 0 and model._functional is not None:
                    input_shape = tuple(model.inputs[0].shape[1:])
                layers = [by_name[layer_name] for layer_name in layer_names]
                group = LayerGroup(group_name, layers, input_shape)
            groups.append(group)
        for source in {id(g.source): g.source for g in groups if g.source}.values():
            leaves = tuple(x for g in groups if g.source is source for x in g)
            for group in groups:
                if group.source is source:
                    group._leaves = leaves
        model._layer_groups = tuple(groups)
        model._class_names = None if class_names is None else tuple(class_names)
        return model


class GroupChain:
    """Groups added together that do not make a model yet: some of the
    groups split from a model are still missing (`augment + bottom`, before
    `+ top + head`). Adding the rest gives the `GroupedSequential`, so that
    `+` composes in any bracketing."""

    def __init__(self, groups: Sequence[LayerGroup]):
        self.groups = tuple(groups)

    def __add__(self, other) -> GroupedSequential | GroupChain:
        return compose((*self.groups, *_groups_of(other)))

    def __radd__(self, other) -> GroupedSequential | GroupChain:
        return compose((*_groups_of(other), *self.groups))

    def missing(self) -> str:
        """Which split models' layers are missing, for messages."""
        return "; ".join(
            f"{run.total - run.held} of the "
            f"{run.total} layers of model '{run.source.name}'"
            for run in split_runs(self.groups)
            if not run.complete
        )

    def __repr__(self) -> str:
        names = [group.name for group in self.groups]
        return f"GroupChain({names}, missing {self.missing()})"


def compose(groups: Sequence[LayerGroup]) -> GroupedSequential | GroupChain:
    """The model of `groups`, or a `GroupChain` while groups split from a
    model hold only a stretch of its layers, in order, that groups added on
    either side may complete.

    Raises:
        ValueError: for groups that no further groups could make a model of
            (see `GroupedSequential`).
    """
    check_groups(groups)
    runs = split_runs(groups)
    sources = [id(run.source) for run in runs]
    if (
        len(set(sources)) == len(sources)
        and any(not run.complete for run in runs)
        and all(run.extendable for run in runs)
    ):
        return GroupChain(groups)
    return GroupedSequential(groups)  # Complete, or it says what is wrong.


def _groups_of(other) -> tuple[LayerGroup, ...]:
    if isinstance(other, GroupedSequential):
        return other._layer_groups
    if isinstance(other, GroupChain):
        return other.groups
    return (other,)


def _group_config(group: LayerGroup) -> list:
    """`[name, layer names]`; for a group split from a model, each layer as
    `[model name, its path in that model]`, and the layers' trainable
    flags."""
    if group.source is None:
        return [group.name, [layer.name for layer in group.layers]]
    paths = layer_paths(group.source)
    return [
        group.name,
        [[group.source.name, paths[id(layer)]] for layer in group.layers],
        [layer.trainable for layer in group.layers],
    ]


def check_groups(groups):
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
