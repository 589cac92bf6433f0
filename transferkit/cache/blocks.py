"""How the feature cache is filled fast: the size of each forward pass, and
features written into their place.

Block size. The fastest forward pass of a frozen stack is neither the
largest nor the smallest batch: small ones pay each call's overhead, large
ones spill their activations out of the CPU's caches. A run fills in
fixed blocks (below). `FeatureCache(measure_blocks=True)` measures the size
instead, once, on the data itself: each candidate size runs once (to build
its kernels for that shape), then all are timed in turn over 256 samples
each, for up to four rounds, and the fastest per sample is kept for the
rest. Every block measured is part of the fill. Candidates whose largest
activation would exceed `ACTIVATION_BYTES` are not tried; measuring takes
at most a fifth of the rows (the largest candidates are dropped first), and
with too few rows for two candidates, the fixed size is taken. On a 2-core
AMD EPYC, measuring cost more than it found: its trials of the slower sizes
made the digits' fill 6.41 s, against 4.99 s in fixed blocks and 4.69 s
for the best plain forward pass (`benchmarks/cache_fill.py`).

Fixed size. A fill that does not measure (a run's, which must give the
same bits every time) takes `fixed_size`: the largest candidate whose
block's largest activation stays within `FIXED_ACTIVATION_BYTES`. In both
cases of `benchmarks/cache_fill.py` that is a size measuring found fastest:
256 digits, whose 26x26x32 activations take 21 MiB a block (128 took 14%
longer); for MobileNetV2 over 96x96 images, no candidate stays within the
budget and the smallest, 64 (56 MiB), is taken, which ran as fast as 128.

In place. The cache's rows are written into one array, allocated once and
aligned as TensorFlow aligns its own buffers, and handed to TensorFlow
without a copy (DLPack): no list of blocks, and no second copy of the cache
when they are joined.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

__all__ = [
    "ACTIVATION_BYTES",
    "FIXED_ACTIVATION_BYTES",
    "BlockSizer",
    "aligned_empty",
    "as_tensor",
    "fixed_size",
]

ACTIVATION_BYTES = 2**28
"""The most bytes a block's largest activation may take (256 MiB)."""

CANDIDATES = (64, 128, 256, 512)
"""Samples per forward pass that the fill tries (32 was the slowest of all
in every case measured)."""

SMALLEST = 32
"""The size taken when even the smallest candidate's largest activation
would exceed `ACTIVATION_BYTES`."""

FIXED_ACTIVATION_BYTES = 2**25
"""The most bytes a block's largest activation takes in a fill that does
not measure (32 MiB): blocks that stay in a server CPU's last-level cache."""

ROUND_SAMPLES = 256
"""Samples each candidate runs over in one round of measuring (at least
one pass)."""

ROUNDS = 4
"""Rounds of measuring, where the rows allow."""

_ALIGNMENT = 64  # Bytes: TensorFlow's own (EIGEN_MAX_ALIGN_BYTES).

_POPULATE_BYTES = 2**20
"""From this size on, the cache's memory is mapped with its pages made."""


def fixed_size(activation_bytes: int) -> int:
    """The samples of every block in a fill that does not measure, for
    `activation_bytes` of one sample's largest activation: the largest
    candidate within `FIXED_ACTIVATION_BYTES`, else the smallest within
    `ACTIVATION_BYTES`, else `SMALLEST`."""
    within = [s for s in CANDIDATES if s * activation_bytes <= FIXED_ACTIVATION_BYTES]
    if within:
        return within[-1]
    fitting = [s for s in CANDIDATES if s * activation_bytes <= ACTIVATION_BYTES]
    return fitting[0] if fitting else SMALLEST


def largest_activation(layers: Sequence[keras.Layer], sample_shape) -> int:
    """Elements of the largest output any of `layers` (or a layer inside a
    model among them) gives for one sample; the input's where unknown."""
    largest = math.prod(sample_shape)
    shape = (None, *sample_shape)
    for layer in layers:
        if isinstance(layer, keras.Model):
            for inner in layer._flatten_layers(include_self=False, recursive=True):
                largest = max(largest, _elements(inner))
        try:
            shape = layer.compute_output_shape(shape)
        except Exception:  # noqa: BLE001 - Any layer may not say; then stop.
            break
        if isinstance(shape, tuple | list) and all(
            isinstance(d, int | type(None)) for d in shape
        ):
            largest = max(largest, math.prod(d or 1 for d in shape[1:]))
    return largest


def _elements(layer: keras.Layer) -> int:
    """Elements of one sample of the output of a layer inside a model."""
    try:
        outputs = tf.nest.flatten(layer.output)
    except (AttributeError, ValueError):  # Not called once in a graph.
        return 0
    shapes = [tuple(getattr(output, "shape", ())) for output in outputs]
    return max((math.prod(d or 1 for d in s[1:]) for s in shapes if s), default=0)


class BlockSizer:
    """The size of each forward pass over `rows` samples: each candidate
    once to build its kernels; then rounds in which each runs over at least
    `ROUND_SAMPLES` samples, timed (round after round, so that the machine's
    drift touches every candidate alike); then the fastest per sample.

    With `measure=False`, every pass takes `fixed_size(activation_bytes)`:
    the same blocks, run after run. A matrix product's rows can differ in
    their last bit with the number of rows it multiplies (a `Dense(128)`
    over 1,600 inputs, on a 2-core AMD EPYC, gave bitwise the same rows in
    blocks of 64 and 256, other ones in blocks of 128 and 512), so a run,
    which must repeat bit for bit, fills with fixed blocks.

    Args:
        rows: the samples to fill.
        activation_bytes: bytes of one sample's largest activation.
        measure: measure the fastest size. Defaults to `True`.
    """

    def __init__(self, rows: int, activation_bytes: int, measure: bool = True):
        fitting = [
            size for size in CANDIDATES if size * activation_bytes <= ACTIVATION_BYTES
        ] or [SMALLEST]
        # Measuring costs what the slower sizes lose: at most a fifth of the
        # rows, in as many rounds as fit, largest candidates dropped first.
        trials: list[tuple[int, bool]] = []
        tried = list(fitting) if measure else []
        while len(tried) > 1 and not trials:
            warm = [(size, False) for size in tried]
            one = [(size, True) for size in tried for _ in range(_runs(size))]
            rounds = min(ROUNDS, (rows // 5 - _samples(warm)) // _samples(one))
            if rounds >= 1:
                trials = warm + one * rounds
            else:
                tried = tried[:-1]
        self._trials = trials
        self._timed: dict[int, list[float]] = {}  # [seconds, samples]
        self.chosen: int | None = None
        """The size kept, once measured (or taken without measuring)."""
        if not trials:
            self.chosen = fixed_size(activation_bytes)

    def next_size(self) -> int:
        """The size of the next forward pass."""
        if self._trials:
            return self._trials[0][0]
        if self.chosen is None:
            self.chosen = min(self._timed, key=lambda s: _rate(self._timed[s]))
        return self.chosen

    def observe(self, samples: int, seconds: float) -> None:
        """Records a forward pass of `samples` that took `seconds`."""
        if not self._trials or samples != self._trials[0][0]:
            return  # Measured already, or the data's short last block.
        size, timed = self._trials.pop(0)
        if timed:
            total = self._timed.setdefault(size, [0.0, 0])
            total[0] += seconds
            total[1] += samples


def _runs(size: int) -> int:
    """Passes of `size` in one round: at least `ROUND_SAMPLES` samples."""
    return max(1, -(-ROUND_SAMPLES // size))


def _samples(trials) -> int:
    return sum(size for size, _ in trials)


def _rate(total: list[float]) -> float:
    return total[0] / total[1]


def aligned_empty(shape: Sequence[int], dtype) -> np.ndarray:
    """An array for the cache's rows, aligned as TensorFlow's buffers are.

    On Linux, an anonymous mapping with its pages made at once
    (`MAP_POPULATE`): page-aligned, and written without a page fault per
    4 KiB. Faulting the pages in one by one, as the rows are written, cost
    2.1 s for a cache of 527 MiB, against 0.35 s populated
    (`benchmarks/cache_fill.py`, a 2-core AMD EPYC). Elsewhere, NumPy's.
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    populate = getattr(mmap, "MAP_POPULATE", 0)
    if populate and nbytes >= _POPULATE_BYTES:
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate
        try:
            buffer = mmap.mmap(-1, nbytes, flags=flags)
        except OSError:
            pass  # E.g. a limit on mappings: NumPy's memory then.
        else:
            return np.frombuffer(buffer, dtype).reshape(tuple(shape))
    raw = np.empty(nbytes + _ALIGNMENT, np.uint8)
    offset = (-raw.ctypes.data) % _ALIGNMENT
    return raw[offset : offset + nbytes].view(dtype).reshape(tuple(shape))


def as_tensor(array: np.ndarray) -> tf.Tensor:
    """`array` as a TensorFlow tensor over the same memory (no copy): an
    aligned, contiguous array through DLPack (bfloat16 as its bits, cast
    back in place), else a copy."""
    aligned = array.flags.c_contiguous and array.ctypes.data % _ALIGNMENT == 0
    if aligned and array.size > 0:
        try:
            if tf.as_dtype(array.dtype) == tf.bfloat16:  # Unknown to DLPack.
                bits = tf.experimental.dlpack.from_dlpack(
                    array.view(np.uint16).__dlpack__()
                )
                return tf.bitcast(bits, tf.bfloat16)
            return tf.experimental.dlpack.from_dlpack(array.__dlpack__())
        except (AttributeError, BufferError, TypeError, ValueError, tf.errors.OpError):
            pass
    return tf.constant(array)
