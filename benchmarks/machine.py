"""The machine a benchmark ran on, in one line: CPU model, cores, the
bfloat16 and AMX flags (which decide whether bfloat16 is fast), and the
versions of TensorFlow and Keras."""

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
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}"
    )
