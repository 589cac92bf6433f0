"""Where a training step of the example spends its time, operation by
operation.

Trains the head that `head_step.py` times (on cached features, as the
fine-tuning phase does), or with `--whole` the example's whole convnet on
images (as the first phase does), with the lean step's layers, fused
Adadelta and mixed bfloat16 unless told otherwise, in transferkit's own
loop, one epoch under TensorFlow's profiler, and prints the operations that
took the most time, in microseconds per step. The profile is read with
`xprof` (`pip install xprof`), which is not one of transferkit's
dependencies. Times are the operations' own ("self") time
summed over TensorFlow's threads, so on 2 cores they add up to as much as
twice the step's wall time; the idle row is the threads' time waiting.

    python benchmarks/step_profile.py
    python benchmarks/step_profile.py --whole --samples 8192
    python benchmarks/step_profile.py --precision float32 --keras-layers
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "examples")]
import head_step  # noqa: E402
import mnist_digits  # noqa: E402

from transferkit.layers.lean import lean_layers  # noqa: E402
from transferkit.layers.precision import apply_precision  # noqa: E402

IMAGE = (28, 28, 1)


def whole(lean: bool, policy: str) -> keras.Sequential:
    """The example's convnet in `policy` as a run sets it; with `lean`, the
    layers a lean run trains."""
    model = mnist_digits.build_model()
    apply_precision(model, policy)
    if not lean:
        return model
    return keras.Sequential([keras.Input(IMAGE), *lean_layers(model.layers)])


def profile_epoch(samples, policy, lean, folder, *, images) -> float:
    """Trains the head (or, with `images`, the whole convnet) for one traced
    epoch, then one epoch under the profiler, which writes to `folder`;
    returns that epoch's seconds."""
    with head_step.global_policy(policy) as dtype:
        rng = np.random.default_rng(0)
        if images:
            features = tf.constant(rng.random((samples, *IMAGE), np.float32))
            model = whole(lean, policy)
        else:
            shape = (samples, *head_step.FEATURES)
            features = tf.cast(rng.random(shape, np.float32), dtype)
            model = head_step.head(lean, dtype)
        labels = tf.one_hot(rng.integers(0, 5, samples), 5)
        head_step.compile_head(model, fused=lean)
        epoch = head_step.loop_epoch(model, features, labels)
        epoch()  # Traces.
        tf.profiler.experimental.start(folder)
        began = time.perf_counter()
        epoch()
        seconds = time.perf_counter() - began
        tf.profiler.experimental.stop()
    return seconds


def operations(folder: str) -> list[dict]:
    """Rows of xprof's operation statistics for the profile in `folder`."""
    from xprof.convert import raw_to_tool_data

    paths = glob.glob(f"{folder}/plugins/profile/*/*.xplane.pb")
    data, _ = raw_to_tool_data.xspace_to_tool_data(paths, "framework_op_stats", {})
    table = json.loads(data)[0]
    ids = [column["id"] for column in table["cols"]]
    return [
        dict(zip(ids, (cell.get("v") for cell in row["c"]), strict=True))
        for row in table["rows"]
    ]


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--samples", type=int, default=29_184, help="per epoch")
    parser.add_argument("--precision", default="mixed_bfloat16")
    parser.add_argument(
        "--keras-layers",
        action="store_true",
        help="Keras' Dropout, softmax and Adadelta updates instead of the lean ones",
    )
    parser.add_argument(
        "--whole",
        action="store_true",
        help="the whole convnet on images instead of the head on features",
    )
    parser.add_argument("--top", type=int, default=20, help="operations listed")
    args = parser.parse_args(argv)
    lean = not args.keras_layers
    with tempfile.TemporaryDirectory() as folder:
        seconds = profile_epoch(
            args.samples, args.precision, lean, folder, images=args.whole
        )
        rows = operations(folder)
    steps = -(-args.samples // head_step.BATCH)
    wall = seconds / steps * 1e3
    rows.sort(key=lambda row: -row["total_self_time"])
    busy = sum(row["total_self_time"] for row in rows if row["type"] != "IDLE")
    lines = [
        f"{'Whole-model' if args.whole else 'Head'} step, {args.precision}, "
        f"{'lean' if lean else 'Keras'} layers, "
        f"batch {head_step.BATCH}, {steps} steps: {wall:.2f} ms per step "
        f"(wall), {busy / steps / 1e3:.2f} ms of the threads' time busy",
        "",
        "| operation | where | us per step |",
        "|---|---|---|",
    ]
    for row in rows[: args.top]:
        where = "/".join(
            part
            for part in row["operation"].split("/")
            if part not in ("while", "body", "_1") and part
        )
        lines.append(
            f"| {row['type']} | {where} | {row['total_self_time'] / steps:.0f} |"
        )
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
