"""A leaner training step: cheaper Dropout masks (and, from
`transferkit.optimizers`, fused optimizer updates).

On a CPU, a training step of a small dense head costs more in bookkeeping
than in arithmetic. Two parts of that cost can go without changing what is
computed:

- Keras' `Dropout` draws one float per element and compares it with the
  rate. `LeanDropout` draws the same Bernoulli mask from random bits: one
  byte per element when the rate is a multiple of 1/256 (0.25 and 0.5 are),
  two when it is a multiple of 1/65536, four otherwise (the keep probability
  is then exact to 2**-32). It draws its seeds from the replaced layer's
  seed generator, so a seeded run stays repeatable and a checkpoint keeps
  its state.
- Keras' optimizers update each variable with several separate operations.
  `transferkit.optimizers.fuse_updates` makes Adadelta, SGD (with or without
  momentum) and Adam (without AMSGrad) use TensorFlow's fused kernels, which
  apply the same formulas in one pass over each variable.
"""

from __future__ import annotations

import keras
import tensorflow as tf

__all__ = ["LeanDropout", "lean_layers"]


class LeanDropout(keras.layers.Layer):
    """Dropout with masks drawn from random bits; see the module docstring.

    Args:
        dropout: the `keras.layers.Dropout` to stand in for; its rate and
            seed generator are used.
    """

    def __init__(self, dropout: keras.layers.Dropout, **kwargs):
        super().__init__(name=f"{dropout.name}_lean", **kwargs)
        self.rate = float(dropout.rate)
        self.seed_generator = dropout.seed_generator
        self.bits = next(
            (bits for bits in (8, 16) if (self.rate * 2**bits).is_integer()), 32
        )
        # Keep an element when its random integer is at least this.
        self.threshold = round(self.rate * 2**self.bits)

    def call(self, inputs, training=False):
        if not training or self.rate == 0:
            return inputs
        seed = self.seed_generator.next()
        seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)
        size = tf.size(inputs)
        per_word = 32 // self.bits
        words = tf.random.stateless_uniform(
            [(size + per_word - 1) // per_word],
            seed=seed,
            minval=None,
            maxval=None,
            dtype=tf.uint32,
        )
        if self.bits < 32:
            unsigned = tf.uint8 if self.bits == 8 else tf.uint16
            words = tf.reshape(tf.bitcast(words, unsigned), [-1])[:size]
        keep = tf.reshape(words >= self.threshold, tf.shape(inputs))
        # A multiply by the scaled mask costs less than a select, both ways.
        mask = tf.cast(keep, inputs.dtype) * tf.cast(1 / (1 - self.rate), inputs.dtype)
        return inputs * mask

    def compute_output_shape(self, input_shape):
        return input_shape


def lean_layers(layers) -> list[keras.Layer]:
    """`layers` with each plain `Dropout` (no `noise_shape`) replaced by a
    `LeanDropout` that shares its seed generator; other layers as they are."""
    return [
        LeanDropout(layer)
        if type(layer) is keras.layers.Dropout and layer.noise_shape is None
        else layer
        for layer in layers
    ]
