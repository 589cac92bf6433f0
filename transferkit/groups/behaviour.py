"""What a layer or a dataset computes, read from its traced graph.

The feature cache may compute a layer once per phase only if the layer gives
the same output on every step: it draws no random numbers and computes the
same in training as in inference. Neither can be told from a layer's class or
its `call` signature (a `Lambda` of `preprocess_input` takes no `training` and
is deterministic; a custom layer that calls `tf.random.normal` takes none
either and is not), so this module traces the layer: once with
`training=True`, once with `training=False`, and reads the two graphs. A
random operation in the training graph means noise or augmentation; two
graphs that differ mean a layer that behaves differently in training (a
trainable `BatchNormalization`). A frozen `BatchNormalization` traces the same
graph both ways, and is cached. The graphs are compared for what they
compute, not for the names each trace makes up (a custom gradient's key, a
nested `tf.function`'s name, a captured variable's placeholder); what cannot
be read without its name is compared by name, so that doubt reads as a
difference.

A `tf.data.Dataset` is read the same way: its serialized graph names every
operation of its pipeline, the functions of its `map` calls included;
`shuffle` reorders and draws no random numbers of this kind.
"""

from __future__ import annotations

import inspect
import re
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import keras
import tensorflow as tf
from tensorflow.core.framework import graph_pb2

__all__ = [
    "dataset_random_operations",
    "first_varying_layer",
    "input_spec",
    "dataset_opaque_operations",
    "random_operations",
    "same_in_training",
    "trains_nothing",
    "training_behaviour",
]

_RANDOM = re.compile(r"Random|Rng|Multinomial|TruncatedNormal|NonDeterministic")
"""Operation types that draw random numbers: `RandomUniform`,
`StatelessRandomUniformV2`, `RandomShuffle`, `RngReadAndSkip`,
`StatelessMultinomial`, `RandomDataset`, ..."""

_BEHAVIOUR: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Per layer: `(state, behaviour)`, where `state` is what the behaviour
depends on (the trainable flags and dtype policies of it and its sublayers)."""


def random_operations(graph: graph_pb2.GraphDef) -> list[str]:
    """The types of the operations in `graph` (and in its functions) that
    draw random numbers, sorted, each once."""
    nodes = list(graph.node)
    for function in graph.library.function:
        nodes.extend(function.node_def)
    return sorted({node.op for node in nodes if _RANDOM.search(node.op)})


def dataset_random_operations(dataset: tf.data.Dataset) -> list[str]:
    """The random operations a dataset's pipeline runs (see
    `random_operations`); empty for one that gives the same samples every
    epoch, in any order."""
    return random_operations(_dataset_graph(dataset))


_OPAQUE = re.compile(r"PyFunc|GeneratorDataset")
"""Operation types that run Python code, whose draws no graph shows:
`PyFunc` (`tf.numpy_function`), `EagerPyFunc` (`tf.py_function`),
`GeneratorDataset` (`Dataset.from_generator`)."""


def dataset_opaque_operations(dataset: tf.data.Dataset) -> list[str]:
    """The operations of a dataset's pipeline that run Python code, which
    may give other samples every epoch without a random operation in the
    graph; sorted, each once."""
    graph = _dataset_graph(dataset)
    nodes = [*graph.node, *(n for f in graph.library.function for n in f.node_def)]
    return sorted({node.op for node in nodes if _OPAQUE.search(node.op)})


def _dataset_graph(dataset: tf.data.Dataset) -> graph_pb2.GraphDef:
    serialized = dataset._as_serialized_graph()  # What tf.data itself saves.
    return graph_pb2.GraphDef.FromString(serialized.numpy())


def trains_nothing(layers: Sequence[keras.Layer]) -> bool:
    """Whether none of `layers` (nor any of their sublayers) holds a variable
    an optimizer could train, frozen or not: preprocessing and augmentation
    layers, pooling, `Flatten`; a `Normalization` holds only statistics."""
    return not any(
        sublayer._trainable_variables
        for layer in layers
        for sublayer in layer._flatten_layers(include_self=True)
    )


def training_behaviour(layer: keras.Layer) -> str:
    """How `layer`'s output may differ from step to step: `"draws random
    numbers"`, `"draws random numbers in training"`, `"behaves differently
    in training"`, or `""` when it computes the same function every time."""
    state = _state(layer)
    known = _BEHAVIOUR.get(layer)
    if known is not None and known[0] == state:
        return known[1]
    try:
        specs = tf.nest.map_structure(input_spec, layer.input)
        behaviour = _compare(lambda x, training: layer(x, training=training), specs)
    except Exception:  # noqa: BLE001 (a layer that cannot be traced alone)
        behaviour = _declared_behaviour(layer)
    _BEHAVIOUR[layer] = (state, behaviour)
    return behaviour


def same_in_training(layers: Sequence[keras.Layer], spec: tf.TensorSpec) -> bool:
    """Whether `layers`, applied in order to inputs of `spec`, draw no random
    numbers and compute the same in training as in inference: one trace of
    all of them, to spare tracing each layer of a backbone. Remembered for
    the same layers in the same trainable state (a learning-rate sweep and
    the phase after it plan alike)."""
    key = (tuple(map(id, layers)), tuple(spec.shape), spec.dtype)
    state = tuple(_state(layer) for layer in layers)
    known = _SAME.get(key)
    if known is not None and known[0] == state and _alive(known[1], layers):
        return known[2]

    def forward(x, training):
        for layer in layers:
            x = layer(x, training=training)
        return x

    try:
        same = _compare(forward, spec) == ""
    except Exception:  # noqa: BLE001 (then each layer is traced alone)
        same = False
    for gone in [k for k, v in _SAME.items() if any(r() is None for r in v[1])]:
        del _SAME[gone]
    _SAME[key] = (state, [weakref.ref(layer) for layer in layers], same)
    return same


_SAME: dict[tuple, tuple] = {}
"""`same_in_training` by layer ids and input spec: the layers' state,
weak references to them (an id may be reused once a layer is gone), and
the answer."""


def _alive(references, layers) -> bool:
    return all(ref() is layer for ref, layer in zip(references, layers, strict=True))


def _state(layer: keras.Layer) -> tuple:
    """What a layer's behaviour depends on besides its code: the trainable
    flags and dtype policies of it and its sublayers."""
    return tuple(
        (sublayer.trainable, sublayer.dtype_policy.name)
        for sublayer in layer._flatten_layers(include_self=True)
    )


def first_varying_layer(layers: Sequence[keras.Layer]) -> tuple[int, str]:
    """`(index, behaviour)` of the first of `layers` whose output may differ
    from step to step (see `training_behaviour`); `(len(layers), "")` when
    none does."""
    for index, layer in enumerate(layers):
        behaviour = training_behaviour(layer)
        if behaviour:
            return index, behaviour
    return len(layers), ""


def _compare(call: Callable[[Any, bool], Any], specs: Any) -> str:
    """The behaviour of `call(x, training)` on inputs of `specs`."""
    functions = {
        training: tf.function(lambda x, t=training: call(x, t)).get_concrete_function(
            specs
        )
        for training in (True, False)
    }
    graphs = {training: f.graph.as_graph_def() for training, f in functions.items()}
    if random_operations(graphs[False]):
        return "draws random numbers"
    if random_operations(graphs[True]):
        return "draws random numbers in training"
    computes = {
        training: _computation(function, graphs[training])
        for training, function in functions.items()
    }
    if computes[True] != computes[False]:
        return "behaves differently in training"
    return ""


_NAMING_ATTRIBUTES = frozenset({"_gradient_op_type", "_user_specified_name"})
"""Node attributes that only name a trace: the key under which
`tf.custom_gradient` (Keras' swish) registers a gradient, a unique
"CustomGradient-N" that the forward computation never reads, and the name a
placeholder was given."""


def _computation(function, graph: graph_pb2.GraphDef) -> tuple:
    """What a traced function computes, free of the names its trace chose.

    Its nodes in order, each named by its position; a placeholder by what it
    stands for (an argument, by position, or the very tensor it captures: a
    variable's handle); a called function by its own content (a nested
    `tf.function`, such as the XLA one Keras runs grouped convolutions in,
    is named anew by every trace); and the tensors it returns. Two traces
    that read alike compute the same; what cannot be read apart from its
    name is kept by name, so that a renaming shows as a difference.
    """
    # Both traces live while they are compared, so an id names one tensor.
    captured = {
        internal.op.name: ("captures", id(external))
        for external, internal in function.graph.captures
    }
    arguments = [t for t in function.graph.inputs if t.op.name not in captured]
    roles = {t.op.name: ("argument", i) for i, t in enumerate(arguments)}
    roles.update(captured)
    library = _Library(graph.library)
    names = {node.name: ("node", i) for i, node in enumerate(graph.node)}

    def reference(ref: str) -> tuple:
        return _reference(ref, names)

    nodes = tuple(
        library.node(
            node,
            reference,
            # A placeholder that stands for nothing known never matches.
            roles.get(node.name, object()) if node.op == "Placeholder" else None,
        )
        for node in graph.node
    )
    outputs = tuple(reference(t.name) for t in function.graph.outputs)
    # Operations run for their effects, in no order of their own.
    effects = sorted(
        (reference(f"^{op.name}") for op in function.graph.control_outputs), key=repr
    )
    return nodes, outputs, tuple(effects)


def _reference(reference: str, nodes: dict, arguments: dict | None = None) -> tuple:
    """A node input (`"name"`, `"name:port"`, `"^name"`, or in a function
    `"argument"` and `"name:output:index"`) with its node or argument named
    by position; an unknown name is kept as it is."""
    control = reference.startswith("^")
    head, *rest = reference.lstrip("^").split(":")
    known = nodes if arguments is None or control or rest else arguments
    return (control, known.get(head, head), *rest)


class _Library:
    """The functions of a graph's library, each read as what it computes
    (see `_computation`), once."""

    def __init__(self, library) -> None:
        self._definitions = {f.signature.name: f for f in library.function}
        self._read: dict[str, tuple] = {}

    def function(self, name: str) -> tuple:
        """What the function `name` computes; a function outside the library
        (a registered op) by its name."""
        if name not in self._definitions:
            return ("named", name)
        if name not in self._read:
            # A function that calls itself while read matches nothing.
            self._read[name] = ("calls itself", object())
            self._read[name] = self._content(self._definitions[name])
        return self._read[name]

    def node(self, node, reference: Callable[[str], tuple], role=None) -> tuple:
        """What a node computes: its operation (a called function by its
        content), its inputs, device, attributes and type, and `role`."""
        called = node.op in self._definitions
        return (
            self.function(node.op) if called else node.op,
            tuple(map(reference, node.input)),
            node.device,
            self.attributes(node.attr),
            node.experimental_type.SerializeToString(deterministic=True),
            role,
        )

    def attributes(self, attributes) -> tuple:
        """Attributes, sorted, but those that only name a trace; a function
        among them by its content."""
        return tuple(
            sorted(
                (key, self._value(value))
                for key, value in attributes.items()
                if key not in _NAMING_ATTRIBUTES
            )
        )

    def _value(self, value) -> Any:
        if value.HasField("func"):
            return self._call(value.func)
        if value.list.func:
            return tuple(map(self._call, value.list.func))
        return value.SerializeToString(deterministic=True)

    def _call(self, function) -> tuple:
        return self.function(function.name), self.attributes(function.attr)

    def _content(self, function) -> tuple:
        """A `FunctionDef` read as in `_computation`: its arguments, nodes
        and results by position, its signature but for names."""
        signature = type(function.signature)()
        signature.CopyFrom(function.signature)
        signature.ClearField("name")
        signature.ClearField("control_output")
        for argument in [*signature.input_arg, *signature.output_arg]:
            argument.ClearField("name")
            argument.ClearField("description")
        arguments = {
            a.name: ("argument", i) for i, a in enumerate(function.signature.input_arg)
        }
        nodes = {node.name: ("node", i) for i, node in enumerate(function.node_def)}

        def reference(ref: str) -> tuple:
            return _reference(ref, nodes, arguments)

        returns = [function.ret[a.name] for a in function.signature.output_arg]
        effects = [
            f"^{function.control_ret[name]}"
            for name in function.signature.control_output
        ]
        return (
            signature.SerializeToString(deterministic=True),
            self.attributes(function.attr),
            tuple(
                (index, self.attributes(function.arg_attr[index].attr))
                for index in sorted(function.arg_attr)
            ),
            tuple(sorted(function.resource_arg_unique_id.items())),
            tuple(self.node(node, reference) for node in function.node_def),
            tuple(map(reference, returns)),
            tuple(sorted(map(reference, effects), key=repr)),
        )


def input_spec(tensor) -> tf.TensorSpec:
    """The spec of a symbolic input, any batch size."""
    shape = tuple(tensor.shape)
    return tf.TensorSpec((None, *shape[1:]), tf.as_dtype(tensor.dtype))


def _declared_behaviour(layer: keras.Layer) -> str:
    """What a layer that cannot be traced alone declares: a seed generator,
    a `training` argument, or a trainable `BatchNormalization`."""
    for sublayer in layer._flatten_layers(include_self=True):
        if isinstance(sublayer, keras.layers.BatchNormalization):
            if sublayer.trainable:
                return "behaves differently in training"
            continue
        if isinstance(sublayer, keras.Model):
            continue  # Its layers decide; they are in the walk.
        if any(
            isinstance(value, keras.random.SeedGenerator)
            for value in vars(sublayer).values()
        ):
            return "draws random numbers"
        if "training" in inspect.signature(sublayer.call).parameters:
            return "behaves differently in training"
    return ""
