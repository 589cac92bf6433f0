"""Mixed precision for a transfer run: which policy, and applying it.

Keras fixes a layer's compute dtype through its dtype policy. A run with
`precision="mixed_bfloat16"` (or `"mixed_float16"`) sets that policy on every
layer of the model but the last, which stays `float32` so the outputs, and the
loss computed from them, keep full precision. Variables stay `float32` under
both mixed policies, so the optimizer updates full-precision weights and a
frozen weight is never rounded.
"""

from __future__ import annotations

import sys

import keras
import tensorflow as tf

__all__ = ["PRECISIONS", "apply_precision", "resolve_precision"]

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "auto")
"""The values `TransferRun(precision=...)` accepts."""

_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def resolve_precision(precision: str) -> tuple[str, str]:
    """The dtype policy for `precision`, and why it was chosen.

    `"auto"` picks `"mixed_float16"` when TensorFlow sees a GPU,
    `"mixed_bfloat16"` on a CPU with bfloat16 instructions (AMX or
    AVX512-BF16, read from `/proc/cpuinfo`), and `"float32"` otherwise.

    Args:
        precision: one of `PRECISIONS`.

    Returns:
        `(policy, reason)`, e.g. `("mixed_bfloat16", "the CPU has amx_bf16")`.

    Raises:
        ValueError: if `precision` is not one of `PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise ValueError(
            f"Unknown precision. Expected one of {list(PRECISIONS)}. "
            f"Received: precision={precision!r}"
        )
    if precision != "auto":
        return precision, "as asked"
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16", "TensorFlow sees a GPU"
    flags = cpu_bfloat16_flags()
    if flags:
        return "mixed_bfloat16", f"the CPU has {'/'.join(flags)}"
    return "float32", "no GPU, and no bfloat16 instructions found on the CPU"


def cpu_bfloat16_flags() -> tuple[str, ...]:
    """The CPU's bfloat16 instruction-set flags; empty where none are found
    or the platform does not list them (only Linux does, in `/proc/cpuinfo`)."""
    if not sys.platform.startswith("linux"):
        return ()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return tuple(f for f in _BF16_CPU_FLAGS if f in present)
    except OSError:
        pass
    return ()


def apply_precision(model: keras.Model, policy: str) -> None:
    """Sets `policy` on `model` and every layer but the last, which is kept
    `float32`. For `"float32"` nothing is touched, so a model's own policies
    stay as its author set them.

    Setting a policy on a built layer changes only its compute dtype: under
    the mixed policies variables stay `float32`.
    """
    if policy == "float32":
        return
    model.dtype_policy = policy  # Keras wraps float16 optimizers by this.
    *body, last = model.layers
    for layer in body:
        layer.dtype_policy = policy
    last.dtype_policy = "float32"
