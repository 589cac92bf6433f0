"""The machine a benchmark ran on, in one line: CPU model, cores, the
bfloat16 and AMX flags (which decide whether bfloat16 is fast), whether
TensorFlow runs oneDNN's CPU kernels (it turns them on by itself only on
CPUs with AVX-512 features; `TF_ENABLE_ONEDNN_OPTS=1` turns them on
elsewhere), and the versions of TensorFlow and Keras."""

from __future__ import annotations

import os
from pathlib import Path

FLAGS = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8")


def cpu_line() -> str:
    import keras
    import tensorflow as tf

    model, flags = "unknown CPU", set()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    present = [flag for flag in FLAGS if flag in flags]
    return (
        f"CPU: {model}, {len(os.sched_getaffinity(0))} cores; flags: "
        f"{', '.join(present) or 'none of ' + ', '.join(FLAGS)}; "
        f"oneDNN {onednn()}; TensorFlow {tf.__version__}, Keras {keras.__version__}"
    )


def onednn() -> str:
    """ "on" or "off": whether this process's TensorFlow runs oneDNN's
    kernels ("unknown" where TensorFlow does not say)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return "unknown"
    return "on" if _pywrap_util_port.IsMklEnabled() else "off"
