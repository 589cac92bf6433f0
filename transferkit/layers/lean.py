"""A leaner training step: cheaper Dropout masks and softmax (and, from
`transferkit.engine.optimizers`, fused optimizer updates).

On a CPU, a training step of a small dense head costs more in bookkeeping
than in arithmetic. These parts of that cost can go without changing what
is computed:

- Keras' `Dropout` draws one random float per element and compares it with
  the rate. `LeanDropout` draws the same Bernoulli mask from random bits.
  For a rate of `m / 2**b` with `b` at most 3 (0.5, 0.25, 0.125, 0.75...) it
  draws only `b` random bits per element, as `b` bit planes, and combines
  them with a few bitwise operations on whole words (an element is kept
  when its `b`-bit number is at least `m`); otherwise it compares one random
  byte, two or four per element with the threshold (the keep probability is
  then exact for multiples of 1/256 or 1/65536, and within 2**-32 for other
  rates). The kept elements are scaled by `1 / (1 - rate)` in the layer's
  compute dtype, as Keras' `Dropout` scales them. It draws its seeds from
  the replaced layer's seed generator, so a seeded run stays repeatable and
  a checkpoint keeps its state.
- Keras' softmax `Activation` runs TensorFlow's softmax kernel, which on a
  CPU with oneDNN costs far more per call than its few hundred elements
  need. `LeanSoftmax` computes the same function from `exp` and sums. Keras'
  crossentropy losses compute from the logits either way.
- Keras' optimizers update each variable with several separate operations.
  `transferkit.engine.optimizers.fuse_updates` makes Adadelta, SGD (with or without
  momentum) and Adam (without AMSGrad) use TensorFlow's fused kernels, which
  apply the same formulas in one pass over each variable.

Each lean layer keeps the dtype policy of the layer it stands in for, so
under mixed precision it computes in 16 bits as that layer would.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

__all__ = ["LeanDropout", "LeanSoftmax", "lean_layers"]

_PLANE_BITS = 3
"""The most random bits per element drawn as bit planes. Each plane costs
a few operations on whole words, so beyond this a byte per element (one
comparison) is cheaper."""

_BIT_OF_BYTE = np.left_shift(np.uint8(1), np.arange(8, dtype=np.uint8))[:, None]
"""Column of the eight one-bit masks of a byte."""


class LeanDropout(keras.layers.Layer):
    """Dropout with masks drawn from random bits; see the module docstring.

    Args:
        dropout: the `keras.layers.Dropout` to stand in for; its rate, seed
            generator and dtype policy are used.
    """

    def __init__(self, dropout: keras.layers.Dropout, **kwargs):
        kwargs.setdefault("dtype", dropout.dtype_policy)
        super().__init__(name=f"{dropout.name}_lean", **kwargs)
        self.rate = float(dropout.rate)
        self.seed_generator = dropout.seed_generator
        # Random bits per element: the fewest that make the rate exact.
        self.bits = next(
            (bits for bits in range(1, 33) if (self.rate * 2**bits).is_integer()), 32
        )
        # An element is kept when its random `bits`-bit number is at least
        # this (which a rate just below 1 would round past the largest).
        self.threshold = min(round(self.rate * 2**self.bits), 2**self.bits - 1)

    def call(self, inputs, training=False):
        if not training or self.rate == 0:
            return inputs
        seed = self.seed_generator.next()
        seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)
        size = tf.size(inputs)
        if self.bits <= _PLANE_BITS:
            keep = self._keep_from_planes(seed, size)
        else:
            keep = self._keep_from_words(seed, size)
        keep = tf.reshape(keep, tf.shape(inputs))
        return inputs * _scaled_mask(keep, 1 / (1 - self.rate), inputs.dtype)

    def _keep_from_planes(self, seed, size):
        """`size` keep flags from `bits` planes of random words: bit `i` of
        plane `j` is bit `j` (most significant first) of element `i`'s
        number, and the comparison with the threshold runs on whole words."""
        words = (size + 31) // 32
        planes = tf.random.stateless_uniform(
            [self.bits, words], seed=seed, minval=None, maxval=None, dtype=tf.uint32
        )
        greater, equal = None, None  # None: no bits set, and all bits set.
        for index in range(self.bits):
            plane = planes[index]
            if (self.threshold >> (self.bits - 1 - index)) & 1:
                equal = plane if equal is None else equal & plane
            else:
                above = plane if equal is None else equal & plane
                greater = above if greater is None else greater | above
                below = tf.bitwise.invert(plane)
                equal = below if equal is None else equal & below
        # The threshold is odd (the fewest bits), so `equal` is set.
        packed = equal if greater is None else greater | equal
        # Each byte to eight flags, by broadcasting it against one bit each.
        packed = tf.reshape(tf.bitcast(packed, tf.uint8), [1, -1])
        flags = tf.bitwise.bitwise_and(tf.tile(packed, [8, 1]), _BIT_OF_BYTE) != 0
        return tf.reshape(flags, [-1])[:size]

    def _keep_from_words(self, seed, size):
        """`size` keep flags from one random byte, two or four per element."""
        bits = next(bits for bits in (8, 16, 32) if bits >= self.bits)
        threshold = self.threshold << (bits - self.bits)
        per_word = 32 // bits
        words = tf.random.stateless_uniform(
            [(size + per_word - 1) // per_word],
            seed=seed,
            minval=None,
            maxval=None,
            dtype=tf.uint32,
        )
        if bits < 32:
            unsigned = tf.uint8 if bits == 8 else tf.uint16
            words = tf.reshape(tf.bitcast(words, unsigned), [-1])[:size]
        return words >= threshold

    def compute_output_shape(self, input_shape):
        return input_shape


def _scaled_mask(keep, scale: float, dtype):
    """`scale` where `keep`, else 0, in `dtype`. For 16- and 32-bit floats it
    is built by multiplying integers by the bit pattern of `scale`, which
    costs less than float arithmetic on a CPU (bfloat16 has no vector
    multiply there); the values are the same."""
    scale = tf.cast(scale, dtype)
    unsigned = {2: tf.uint16, 4: tf.uint32}.get(tf.as_dtype(dtype).size)
    if unsigned is None or not tf.as_dtype(dtype).is_floating:
        return tf.cast(keep, dtype) * scale
    pattern = tf.bitcast(scale, unsigned)
    return tf.bitcast(tf.cast(keep, unsigned) * pattern, dtype)


class LeanSoftmax(keras.layers.Layer):
    """The softmax of the last axis from `exp` and sums; see the module
    docstring. Its output carries its logits, as Keras' softmax does, so
    that crossentropy losses compute from them.

    Args:
        activation: the `keras.layers.Activation("softmax")` to stand in
            for; its dtype policy is used.
    """

    def __init__(self, activation: keras.layers.Activation, **kwargs):
        kwargs.setdefault("dtype", activation.dtype_policy)
        super().__init__(name=f"{activation.name}_lean", **kwargs)

    def call(self, inputs):
        exponentials = tf.exp(inputs - tf.reduce_max(inputs, axis=-1, keepdims=True))
        outputs = exponentials / tf.reduce_sum(exponentials, axis=-1, keepdims=True)
        outputs._keras_logits = inputs
        return outputs

    def compute_output_shape(self, input_shape):
        return input_shape


def lean_layers(layers) -> list[keras.Layer]:
    """`layers` with each plain `Dropout` (no `noise_shape`) replaced by a
    `LeanDropout` that shares its seed generator, and each softmax
    `Activation` by a `LeanSoftmax`; other layers as they are."""
    return [_lean(layer) for layer in layers]


def _lean(layer: keras.Layer) -> keras.Layer:
    if type(layer) is keras.layers.Dropout and layer.noise_shape is None:
        return LeanDropout(layer)
    if (
        type(layer) is keras.layers.Activation
        and layer.activation is keras.activations.softmax
    ):
        return LeanSoftmax(layer)
    return layer
