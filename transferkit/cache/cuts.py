"""Where a functional model's graph can be cut in two: the tensors that cross
a cut after one of its operations.

A cut after an operation splits `model.operations` (Keras' order, inputs
first: an operation comes after every one whose output it uses) into what
runs before it, that operation included, and what runs after it. A tensor
crosses the cut when it is computed before and used after (by an operation,
or as the model's output). A cache can end at the cut only when one tensor
crosses it, the operation's own output: then nothing computed before it is
used after it, and `keras.Model(model.input, tensor)` and
`keras.Model(tensor, model.output)` compute the model between them.

The walk goes over `operations`, not `layers`: in MobileNetV3 (the
`x + 3.0` and `* (1 / 6)` of its hard sigmoid) and ConvNeXt (its residual
adds), Keras operations that are not layers run between the layers, and
what they use crosses cuts too. An operation called more than once in the
graph stands where Keras puts it, by its deepest call, so a cut between two
of its calls is crossed by the earlier call's output too.
"""

from __future__ import annotations

import keras

__all__ = ["Cuts", "graph_of"]


def graph_of(model: keras.Model) -> keras.Model | None:
    """The functional graph that runs `model`: the model itself when it is
    functional, a built `Sequential`'s own, or `None` for a subclassed model,
    whose `call` no cut can enter."""
    if isinstance(model, keras.Sequential):
        model = getattr(model, "_functional", None)
    return model if hasattr(model, "_nodes_by_depth") else None


class Cuts:
    """The cuts of a functional model's graph and the tensors that cross them.

    Args:
        model: a functional model (a backbone) or a built `Sequential`.

    Raises:
        TypeError: for a model without a graph (a subclassed model).

    Example:

    >>> inputs = keras.Input((4,))
    >>> hidden = keras.layers.Dense(4, name="hidden")(inputs)
    >>> skipped = keras.layers.Dense(4, name="skipped")(hidden)
    >>> outputs = keras.ops.add(hidden, skipped)
    >>> cuts = Cuts(keras.Model(inputs, outputs))
    >>> cuts.producers(cuts.graph.get_layer("skipped"))
    ['hidden', 'skipped']
    >>> cuts.single(cuts.graph.get_layer("hidden")) is hidden
    True
    """

    def __init__(self, model: keras.Model):
        graph = graph_of(model)
        if graph is None:
            raise TypeError(
                f"Expected a functional model or a built Sequential, whose "
                f"graph can be cut. Received: model '{model.name}' "
                f"({type(model).__name__})"
            )
        self.graph = graph  # The model, or a Sequential's own graph.
        operations = graph.operations
        self._positions = {id(op): i for i, op in enumerate(operations)}
        # Keras keeps an operation's calls in every graph it was called in;
        # only those of this graph count.
        nodes = {id(n) for level in graph._nodes_by_depth.values() for n in level}
        # (user, tensor, producer): positions in `operations`, in the order
        # the graph uses them; the outputs are used after every operation.
        self._uses = [
            (user, tensor, self._position(tensor))
            for user, op in enumerate(operations)
            for node in op._inbound_nodes
            if id(node) in nodes
            for tensor in node.input_tensors
        ]
        self._uses += [
            (len(operations), tensor, self._position(tensor))
            for tensor in graph.outputs
        ]

    def _position(self, tensor) -> int:
        """Where `tensor`'s producer stands; -1 for a tensor made outside the
        graph (the input of a model built on another model's tensors)."""
        return self._positions.get(id(tensor._keras_history.operation), -1)

    def crossing(self, operation: keras.Operation) -> list[keras.KerasTensor]:
        """The tensors computed at or before `operation` that are used after
        it (the model's outputs included), in the order first used.

        Raises:
            ValueError: if `operation` is not one of the model's.
        """
        if id(operation) not in self._positions:
            raise ValueError(
                f"Operation '{operation.name}' is not in the graph of model "
                f"'{self.graph.name}'. Expected one of its `operations`."
            )
        cut = self._positions[id(operation)]
        crossing = {}
        for user, tensor, producer in self._uses:
            if producer <= cut < user:
                crossing.setdefault(id(tensor), tensor)
        return list(crossing.values())

    def producers(self, operation: keras.Operation) -> list[str]:
        """The names of the operations whose outputs cross the cut after
        `operation`, in the order first used."""
        names = [t._keras_history.operation.name for t in self.crossing(operation)]
        return list(dict.fromkeys(names))

    def single(self, operation: keras.Operation) -> keras.KerasTensor | None:
        """`operation`'s output, when it alone crosses the cut after
        `operation`; else `None`."""
        crossing = self.crossing(operation)
        if len(crossing) != 1:
            return None
        (tensor,) = crossing
        return tensor if tensor._keras_history.operation is operation else None
