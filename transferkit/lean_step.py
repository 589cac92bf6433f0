"""A leaner training step: cheaper Dropout masks, fused optimizer updates.

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
  `fuse_updates` makes Adadelta, SGD (with or without momentum) and Adam
  (without AMSGrad) use TensorFlow's fused kernels, which apply the same
  formulas in one pass over each variable.
"""

from __future__ import annotations

import types

import keras
import tensorflow as tf

__all__ = ["LeanDropout", "fuse_updates", "lean_layers"]


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


def fuse_updates(optimizer: keras.optimizers.Optimizer) -> bool:
    """Makes `optimizer` apply its update with one fused TensorFlow kernel per
    variable, where one exists for it; returns whether it does.

    The optimizer keeps its class, settings and variables (so checkpoints
    are unchanged); only its `update_step` changes. Clipping, weight decay
    and EMA, which Keras applies around `update_step`, work as before.
    Sparse gradients take the original path.
    """
    kind = type(optimizer)
    if kind is keras.optimizers.Adadelta:
        fused = _adadelta
    elif kind is keras.optimizers.SGD:
        fused = _sgd
    elif kind is keras.optimizers.Adam and not optimizer.amsgrad:
        fused = _adam
    else:
        return False
    original = optimizer.update_step

    def update_step(self, gradient, variable, learning_rate):
        if isinstance(gradient, tf.IndexedSlices):
            return original(gradient, variable, learning_rate)
        dtype = variable.dtype
        fused(
            self,
            tf.cast(gradient, dtype),
            variable,
            tf.cast(learning_rate, dtype),
            dtype,
        )

    optimizer.update_step = types.MethodType(update_step, optimizer)
    return True


def _handle(variable):
    """The resource handle of a TensorFlow or Keras variable."""
    return variable.handle if hasattr(variable, "handle") else variable.value.handle


def _adadelta(self, gradient, variable, lr, dtype):
    index = self._get_variable_index(variable)
    tf.raw_ops.ResourceApplyAdadelta(
        var=_handle(variable),
        accum=_handle(self._accumulated_grads[index]),
        accum_update=_handle(self._accumulated_delta_vars[index]),
        lr=lr,
        rho=tf.cast(self.rho, dtype),
        epsilon=tf.cast(self.epsilon, dtype),
        grad=gradient,
    )


def _sgd(self, gradient, variable, lr, dtype):
    if self.momentum == 0:
        tf.raw_ops.ResourceApplyGradientDescent(
            var=_handle(variable), alpha=lr, delta=gradient
        )
        return
    tf.raw_ops.ResourceApplyKerasMomentum(
        var=_handle(variable),
        accum=_handle(self.momentums[self._get_variable_index(variable)]),
        lr=lr,
        grad=gradient,
        momentum=tf.cast(self.momentum, dtype),
        use_nesterov=self.nesterov,
    )


def _adam(self, gradient, variable, lr, dtype):
    index = self._get_variable_index(variable)
    step = tf.cast(self.iterations + 1, dtype)
    tf.raw_ops.ResourceApplyAdam(
        var=_handle(variable),
        m=_handle(self._momentums[index]),
        v=_handle(self._velocities[index]),
        beta1_power=tf.pow(tf.cast(self.beta_1, dtype), step),
        beta2_power=tf.pow(tf.cast(self.beta_2, dtype), step),
        lr=lr,
        beta1=tf.cast(self.beta_1, dtype),
        beta2=tf.cast(self.beta_2, dtype),
        epsilon=tf.cast(self.epsilon, dtype),
        grad=gradient,
    )
