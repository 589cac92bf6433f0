"""Optimizers for phases: what a run accepts, a fresh one per phase, and
fused update kernels.

Keras fixes the set of variables an optimizer updates when the optimizer is
built, so every phase of a run, whose trainable set differs from the last
one's, needs an optimizer of its own. A run therefore keeps an optimizer
*spec* (a name, an instance to copy, or a factory) and makes a new, unbuilt
optimizer from it for each phase.

`scale_learning_rates` gives some variables a multiple of the optimizer's
learning rate (per-group learning rates). `fuse_updates` makes Adadelta, SGD
(with or without momentum) and Adam (without AMSGrad) apply their updates
with TensorFlow's fused kernels, which compute the same formulas in one pass
over each variable; the lean training step uses it.
"""

from __future__ import annotations

import json
import types
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import keras
import tensorflow as tf

__all__ = [
    "OptimizerSpec",
    "check_optimizer_spec",
    "fresh_optimizer",
    "fuse_updates",
    "has_fused_kernel",
    "optimizer_fingerprint",
    "scale_learning_rates",
]

OptimizerSpec: TypeAlias = (
    str | keras.optimizers.Optimizer | Callable[[], keras.optimizers.Optimizer]
)
"""An optimizer name, an optimizer to copy, or a factory of new ones."""


def check_optimizer_spec(spec: Any, argument: str) -> None:
    """Raises unless `spec` is an `OptimizerSpec`; warns for `"adadelta"`,
    whose Keras 3 learning rate (0.001) barely moves a model.

    Raises:
        TypeError: if `spec` is none of the accepted forms.
        ValueError: if `spec` is an unknown optimizer name.
    """
    if isinstance(spec, str):
        keras.optimizers.get(spec)  # Raises for an unknown name.
        if spec.lower() == "adadelta":
            warnings.warn(
                "`optimizer='adadelta'` uses Keras 3's default "
                "learning_rate=0.001; Keras 2 used 1.0, and training with "
                "0.001 barely moves. Pass `lambda: "
                "keras.optimizers.Adadelta(learning_rate=1.0)` for the Keras 2 "
                "behaviour.",
                UserWarning,
                stacklevel=3,
            )
    elif not (isinstance(spec, keras.optimizers.Optimizer) or callable(spec)):
        raise TypeError(
            f"Expected `{argument}` to be an optimizer name, an optimizer, or "
            "a function that returns a new optimizer. Received: "
            f"{argument}={spec!r}"
        )


def fresh_optimizer(spec: OptimizerSpec) -> keras.optimizers.Optimizer:
    """A new, unbuilt optimizer for one phase.

    Raises:
        TypeError: if a factory returns something other than an optimizer.
        ValueError: if a factory returns an optimizer that was already built.
    """
    if isinstance(spec, str):
        return keras.optimizers.get(spec)
    if isinstance(spec, keras.optimizers.Optimizer):
        return type(spec).from_config(spec.get_config())
    optimizer = spec()
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(
            "Expected the optimizer factory to return a Keras optimizer. "
            f"Received: {optimizer!r}"
        )
    if optimizer.built:
        raise ValueError(
            "The optimizer factory returned an optimizer that was already "
            "used; Keras cannot reuse a built optimizer for a new set of "
            "trainable weights. Return a new one on each call, e.g. "
            "`lambda: keras.optimizers.Adadelta(learning_rate=1.0)`."
        )
    return optimizer


def optimizer_fingerprint(optimizer: keras.optimizers.Optimizer) -> dict[str, Any]:
    """The optimizer's class and settings, JSON-ready, as a plan records them."""
    config = dict(optimizer.get_config())
    config.pop("name", None)
    return json.loads(
        json.dumps({"class": type(optimizer).__name__, **config}, default=str)
    )


def scale_learning_rates(
    optimizer: keras.optimizers.Optimizer,
    multipliers: Sequence[tuple[keras.Variable, float]],
) -> None:
    """Makes `optimizer` update each listed variable with its learning rate
    times the variable's multiplier (1.0 for variables not listed).

    The optimizer's own update, and its weight decay, receive the scaled
    learning rate, so every optimizer, adaptive ones included, updates those
    variables exactly as it would with that learning rate; a schedule's rate
    is scaled at every step. A multiplier of 0 skips the variable: it, and
    its optimizer slots, stay bitwise as they are. The optimizer keeps its
    class, settings and variables, so checkpoints are unchanged. Call this
    after `fuse_updates`, if at all.

    Args:
        optimizer: the phase's optimizer, built or not.
        multipliers: `(variable, multiplier)` pairs.
    """
    # Keras hands the update a Keras variable or its TensorFlow variable;
    # `_var_key` names both alike.
    scale = {
        optimizer._var_key(variable): float(multiplier)
        for variable, multiplier in multipliers
    }
    if not scale or all(value == 1.0 for value in scale.values()):
        return
    update = optimizer.update_step

    def update_step(self, gradient, variable, learning_rate):
        multiplier = scale.get(self._var_key(variable), 1.0)
        if multiplier == 0.0:
            return
        if multiplier != 1.0:
            learning_rate = learning_rate * multiplier
        update(gradient, variable, learning_rate)

    def apply_weight_decay(self, variables):
        if self.weight_decay is None:
            return

        def decay(distribution, variables):
            for variable in variables:
                if isinstance(variable, keras.Variable):
                    variable = variable.value
                multiplier = scale.get(self._var_key(variable), 1.0)
                if multiplier == 0.0 or not self._use_weight_decay(variable):
                    continue

                def decay_one(variable, multiplier=multiplier):
                    # As Keras' own, with the scaled learning rate.
                    lr = tf.cast(self.learning_rate, variable.dtype)
                    if multiplier != 1.0:
                        lr = lr * multiplier
                    wd = tf.cast(self.weight_decay, variable.dtype)
                    variable.assign_sub(variable * wd * lr)

                distribution.extended.update(variable, decay_one, group=False)

        tf.__internal__.distribute.interim.maybe_merge_call(
            decay, self._distribution_strategy, variables
        )

    optimizer.update_step = types.MethodType(update_step, optimizer)
    optimizer._apply_weight_decay = types.MethodType(apply_weight_decay, optimizer)


def fuse_updates(optimizer: keras.optimizers.Optimizer) -> bool:
    """Makes `optimizer` apply its update with one fused TensorFlow kernel per
    variable, where one exists for it; returns whether it does.

    The optimizer keeps its class, settings and variables (so checkpoints
    are unchanged); only its `update_step` changes. Clipping, weight decay
    and EMA, which Keras applies around `update_step`, work as before.
    Sparse gradients take the original path.
    """
    fused = _fused_kernel(optimizer)
    if fused is None:
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


def has_fused_kernel(optimizer: keras.optimizers.Optimizer) -> bool:
    """Whether `fuse_updates` has a fused kernel for `optimizer`."""
    return _fused_kernel(optimizer) is not None


def _fused_kernel(optimizer):
    kind = type(optimizer)
    if kind is keras.optimizers.Adadelta:
        return _adadelta
    if kind is keras.optimizers.SGD:
        return _sgd
    if kind is keras.optimizers.Adam and not optimizer.amsgrad:
        return _adam
    return None


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
