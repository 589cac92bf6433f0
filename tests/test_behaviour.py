"""What a layer computes in training and in inference, read from two traces:
names a trace gives (a custom gradient's key, a nested function's name, a
captured variable's placeholder) are no difference; a different computation
is."""

import keras
import pytest
import tensorflow as tf
from keras import layers

from transferkit.groups.behaviour import input_spec, same_in_training
from transferkit.groups.behaviour import training_behaviour as behaviour

DIFFERS = "behaves differently in training"
RANDOM_IN_TRAINING = "draws random numbers in training"


def built(layer, shape=(6, 6, 4)):
    keras.Sequential([keras.Input(shape), layer])
    return layer


class DoubledInTraining(layers.Layer):
    def call(self, x, training=None):
        if training:
            return x * 2.0
        return x


@tf.function
def _scaled(x, training):
    return x * 2.0 if training else x


class NestedBranch(layers.Layer):
    """Branches on `training` inside a nested `tf.function`: the two traces
    differ only in the body of the function they call."""

    def call(self, x, training=None):
        return _scaled(x, bool(training))


class OtherVariable(layers.Layer):
    """Reads one variable in training and another, alike, in inference."""

    def build(self, shape):
        self.a = self.add_weight(shape=(), initializer="ones")
        self.b = self.add_weight(shape=(), initializer="ones")

    def call(self, x, training=None):
        return x * (self.a if training else self.b)


def test_swish_through_a_custom_gradient_computes_the_same():
    layer = built(layers.Activation("swish"))
    graph = (
        tf.function(lambda x: layer(x, training=True))
        .get_concrete_function(input_spec(layer.input))
        .graph.as_graph_def()
    )
    # Keras' swish is `tf.nn.silu`, a `tf.custom_gradient` that stamps a
    # unique "CustomGradient-N" on each trace.
    assert any("_gradient_op_type" in node.attr for node in graph.node)

    assert behaviour(layer) == ""
    assert same_in_training([layer], input_spec(layer.input))


@pytest.mark.parametrize(
    "make",
    [lambda: layers.Conv2D(4, 3, groups=2), lambda: layers.Conv2D(4, 3, groups=4)],
    ids=["grouped", "depthwise"],
)
def test_a_grouped_convolution_in_a_nested_xla_function_computes_the_same(make):
    layer = built(make())
    graph = (
        tf.function(lambda x: layer(x, training=True))
        .get_concrete_function(input_spec(layer.input))
        .graph.as_graph_def()
    )
    # Keras runs grouped convolutions in a nested `tf.function(jit_compile=True)`.
    calls = [node for node in graph.node if node.op == "StatefulPartitionedCall"]
    assert [call.attr["_XlaMustCompile"].b for call in calls] == [True]

    assert behaviour(layer) == ""
    assert same_in_training([layer], input_spec(layer.input))


def test_frozen_swish_and_grouped_convolutions_in_one_trace_compute_the_same():
    norm = layers.BatchNormalization()
    norm.trainable = False
    stack = [
        layers.Conv2D(8, 1),
        norm,
        layers.Activation("swish"),
        layers.Conv2D(8, 3, groups=8, padding="same"),
        layers.Activation("swish"),
    ]
    keras.Sequential([keras.Input((6, 6, 4)), *stack])

    assert same_in_training(stack, tf.TensorSpec((None, 6, 6, 4)))


@pytest.mark.parametrize(
    "make, expected",
    [
        (layers.BatchNormalization, DIFFERS),
        (DoubledInTraining, DIFFERS),
        (NestedBranch, DIFFERS),
        (OtherVariable, DIFFERS),
        (lambda: layers.Dropout(0.5), RANDOM_IN_TRAINING),
        (layers.RandomFlip, RANDOM_IN_TRAINING),
    ],
    ids=[
        "batch_norm",
        "training_argument",
        "nested_function",
        "other_variable",
        "dropout",
        "random_flip",
    ],
)
def test_a_layer_that_computes_otherwise_in_training_still_differs(make, expected):
    layer = built(make())

    assert behaviour(layer) == expected
    assert not same_in_training([layer], input_spec(layer.input))


def test_a_difference_behind_a_grouped_convolution_still_shows():
    stack = [layers.Conv2D(4, 3, groups=2), layers.Activation("swish"), NestedBranch()]
    keras.Sequential([keras.Input((6, 6, 4)), *stack])

    assert not same_in_training(stack, tf.TensorSpec((None, 6, 6, 4)))
