"""The training engine, below any notion of a phase: transferkit's own
compiled loop, the callbacks around it, the NaN guard, optimizers, the
predict step, the learning-rate sweep's steps and the `tf.distribute`
strategy. Internal; imports `data`, `records` and below.
"""

__all__: list[str] = []
