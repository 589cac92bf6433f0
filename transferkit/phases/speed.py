"""`Speed`: how fast a run computes its phases, never what they compute.

Every option here computes the same function at another cost, so none of
them is recorded in a run's plan: a run folder may be resumed with other
speed settings. What changes the experiment (the optimizer, the loss, the
batch size, a phase's augmented views) is an option of the run or of the
phase, and is in the plan.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transferkit.utils.checks import require_choice, require_count, require_flags

__all__ = ["TRAINING_LOOPS", "Speed"]

TRAINING_LOOPS = ("auto", "fit")
"""What `Speed(training_loop=...)` accepts."""


@dataclasses.dataclass(frozen=True)
class Speed:
    """The run's speed settings: the same function, at another cost.

    Each phase's `PhaseResult` says what each setting did and why
    (`cache`/`cache_code`, `training_loop`/`training_loop_code`,
    `lean_step`), so a setting that could not apply is never silent.

    Example:

    >>> from transferkit import Speed
    >>> Speed(lean_step=True, steps_per_execution=32)
    Speed(feature_cache=True, feature_cache_memory=1073741824, \
cache_datasets=False, lean_step=True, training_loop='auto', \
steps_per_execution=32, jit_compile=False)
    """

    feature_cache: bool = True
    """When the frozen groups start the model, compute their output once per
    phase (in inference mode) and train the rest of the model on it, for
    array data (and datasets, with `cache_datasets`). The cache stops before
    the first frozen layer whose output depends on `training` or on random
    numbers (Dropout, noise, augmentation, a trainable BatchNormalization),
    so the phase computes the same function as without it; inside a
    backbone split into groups, it ends at a layer whose output is all that
    the rest of the backbone needs. Defaults to `True`."""

    feature_cache_memory: int = 2**30
    """Bytes of cached features held in memory; a larger cache goes to files
    in the run's `directory` (or a temporary folder), deleted at the end of
    the phase, and is read back one batch at a time. Defaults to `2**30`
    (1 GiB)."""

    cache_datasets: bool | str = False
    """Let the feature cache read a `tf.data.Dataset` once (training and
    validation data alike) and serve its features every epoch, shuffled.
    `True` caches a finite dataset whose pipeline draws no random numbers
    (read from its graph; shuffling is not one of them); one that does
    (augmentation in a `map`) runs uncached, and the result says why.
    `"deterministic"` declares that the pipeline gives the same samples
    every epoch even so (a fixed-seed crop), and caches it. Defaults to
    `False`: a dataset runs uncached, and the result says why."""

    lean_step: bool = False
    """Train a `Sequential` model with `Dropout` masks drawn from random
    bits instead of floats (the same keep probability), softmax
    `Activation` layers computed from `exp` and sums (the loss, computed
    from the logits, is bitwise the same), and TensorFlow's fused update
    kernels for Adadelta, SGD and Adam (the same formulas). The model itself
    keeps Keras' layers (`transferkit.layers.lean`). Defaults to `False`."""

    training_loop: str = "auto"
    """`"auto"` trains a phase whose data is in memory (arrays, or the
    feature cache's features) with transferkit's own compiled loop
    (`transferkit.engine.loop`): many steps per call, batches gathered by a
    per-epoch permutation, callbacks, progress bar, History and validation
    as with `fit`; other phases (a `tf.data.Dataset`, a cache on disk) use
    `fit`. `"fit"` always uses Keras' `fit`. Defaults to `"auto"`."""

    steps_per_execution: int = 1
    """Training steps per call into TensorFlow
    (`compile(steps_per_execution=...)`): more steps per call cost less
    Python overhead per step. Batch-level callbacks then run once per call.
    Defaults to `1`."""

    jit_compile: bool = False
    """Passed to `compile()`. Defaults to `False`: measure before enabling
    XLA; on the CPUs measured it was slower in every case."""

    def __post_init__(self) -> None:
        require_flags(
            feature_cache=self.feature_cache,
            lean_step=self.lean_step,
            jit_compile=self.jit_compile,
        )
        require_count(self.feature_cache_memory, "feature_cache_memory", minimum=0)
        require_choice(
            self.cache_datasets, "cache_datasets", (False, True, "deterministic")
        )
        require_choice(self.training_loop, "training_loop", TRAINING_LOOPS)
        require_count(self.steps_per_execution, "steps_per_execution")
        # NumPy integers become Python ones, as everywhere in a run.
        for name in ("feature_cache_memory", "steps_per_execution"):
            object.__setattr__(self, name, int(getattr(self, name)))

    @classmethod
    def of(cls, speed: Any) -> Speed:
        """`speed` checked: a `Speed`, or `None` for the defaults."""
        if speed is None:
            return cls()
        if not isinstance(speed, Speed):
            raise TypeError(
                "Expected `speed` to be a `transferkit.Speed`, e.g. "
                f"Speed(lean_step=True). Received: speed={speed!r}"
            )
        return speed
