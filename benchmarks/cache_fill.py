"""The feature cache's fill against the best plain forward pass of the same
frozen layers over the same data, and the fill's memory peak against the
cache's size.

Two cases: the reference example's frozen `features` (two Conv2D(32, 3), the
pooling) over 30,000 digits, as its fine-tuning phase fills them; and, with
`--backbone`, MobileNetV2 (alpha 0.35, random weights) cut after block 13
over 96x96x3 images. The plain forward pass is a `tf.function` of the layers
in inference mode, timed over the same array at several batch sizes (its
outputs dropped: the floor, with nothing kept); `model.predict` at batch 128
is printed beside it. Each figure is the median of `--repeats` runs; the
memory peak is the process's resident high-water mark during the fill
(reset before it through `/proc/self/clear_refs`), over what it held before.

    python benchmarks/cache_fill.py --data ../shared/data/mnist-10k.npz
    python benchmarks/cache_fill.py --backbone --samples 2000
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from machine import cpu_line

from transferkit.cache.blocks import largest_activation
from transferkit.cache.features import FeatureCache

ROOT = Path(__file__).resolve().parents[1]
BATCHES = (32, 64, 128, 256, 512, 1024)


def digits_case(data: str | None, samples: int):
    sys.path.insert(0, str(ROOT / "examples"))
    import mnist_digits

    from transferkit.datasets import mnist

    loaded = mnist.load(data) if data else mnist.load_sample()
    x = mnist_digits.to_model_input(loaded.x_train)
    x = np.resize(x, (samples, *x.shape[1:]))  # Repeats the digits: same cost.
    model = mnist_digits.build_model()
    layers = list(model.groups["features"].layers)
    return "the example's frozen features, 28x28x1 digits", layers, x


def backbone_case(samples: int):
    backbone = keras.applications.MobileNetV2(
        input_shape=(96, 96, 3), alpha=0.35, include_top=False, weights=None
    )
    cut = backbone.get_layer("block_13_expand_relu").output
    bottom = keras.Model(backbone.input, cut, name="bottom")
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (samples, 96, 96, 3)).astype("float32")
    return "MobileNetV2 (alpha 0.35) to block 13, 96x96x3 images", [bottom], x


def forward_seconds(layers, x, batch: int) -> tuple[float, float]:
    """Seconds of a plain compiled forward pass over `x` at `batch`, and of
    tracing it with a first batch."""
    began = time.perf_counter()

    @tf.function(input_signature=[tf.TensorSpec((None, *x.shape[1:]), x.dtype)])
    def forward(inputs):
        for layer in layers:
            inputs = layer(inputs, training=False)
        return inputs  # Its output is made, as a fill makes it, then dropped.

    forward(tf.constant(x[:batch]))  # Traced apart from the timing.
    tracing = time.perf_counter() - began
    began = time.perf_counter()
    for start in range(0, len(x), batch):
        forward(tf.constant(x[start : start + batch]))
    return time.perf_counter() - began, tracing


def predict_seconds(layers, x) -> float:
    model = keras.Sequential([keras.Input(x.shape[1:]), *layers])
    model.predict(x[:128], batch_size=128, verbose=0)
    began = time.perf_counter()
    model.predict(x, batch_size=128, verbose=0)
    return time.perf_counter() - began


def activation_elements(layers, sample_shape) -> int:
    """Elements of every layer's output for one sample (of a model among
    `layers`, its inner layers'): what one block's forward pass makes."""
    total, shape = 0, (None, *sample_shape)
    for layer in layers:
        if isinstance(layer, keras.Model):
            for inner in layer._flatten_layers(include_self=False, recursive=True):
                outputs = tf.nest.flatten(inner.output)
                total += sum(math.prod(o.shape[1:]) for o in outputs)
            continue
        shape = layer.compute_output_shape(shape)
        total += math.prod(shape[1:])
    return total


def resident(field: str = "VmRSS") -> int:
    """Bytes of the process's resident memory (`VmRSS`) or its high-water
    mark (`VmHWM`), from `/proc/self/status`."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def fill(layers, x, measure=True) -> tuple[float, int, int, int, float]:
    """`(seconds, peak bytes over the start, cache bytes, block size,
    seconds tracing)` of one fill, in measured blocks or (`measure=False`,
    as a run fills) fixed ones."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # The peak is then the process's, and only an upper bound.
    before = resident()
    began = time.perf_counter()
    cache = FeatureCache(
        layers, {"train": x}, memory_limit=2**40, measure_blocks=measure
    )
    seconds = time.perf_counter() - began
    peak = resident("VmHWM") - before
    nbytes, block, tracing = cache.nbytes, cache.block_size, cache.trace_seconds
    cache.close()
    return seconds, peak, nbytes, block, tracing


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="a Keras-layout mnist.npz (default: the sample)")
    parser.add_argument(
        "--backbone",
        action="store_true",
        help="MobileNetV2 over 96x96 images instead of the digits",
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=None,
        help="samples (default: 30,000 digits, 2,000 images)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    if args.backbone:
        name, layers, x = backbone_case(args.samples or 2000)
    else:
        name, layers, x = digits_case(args.data, args.samples or 30000)
    fill(layers, x[:256])  # Traces the fill's functions apart from the timing.
    # Interleaved, so that the machine's drift touches every figure alike.
    timings = {batch: [] for batch in BATCHES}
    fills, fixed, predicts = [], [], []
    for _ in range(args.repeats):
        for batch in BATCHES:
            timings[batch].append(forward_seconds(layers, x, batch))
        fills.append(fill(layers, x))
        fixed.append(fill(layers, x, measure=False))
        predicts.append(predict_seconds(layers, x))
    forward = {b: statistics.median(t[0] for t in runs) for b, runs in timings.items()}
    predict = statistics.median(predicts)
    seconds = statistics.median(f[0] for f in fills)
    steady = statistics.median(f[0] - f[4] for f in fills)
    steady_fixed = statistics.median(f[0] - f[4] for f in fixed)
    peak, nbytes = max(f[1] for f in fills + fixed), fills[0][2]
    best = min(forward, key=forward.get)
    traced = forward[best] + statistics.median(t[1] for t in timings[best])
    activation = largest_activation(layers, x.shape[1:]) * x.itemsize
    every = activation_elements(layers, x.shape[1:]) * x.itemsize
    block = max(f[3] for f in fills + fixed)
    lines = [
        cpu_line(),
        f"{name}: {len(x):,} samples; the cache holds {nbytes / 2**20:,.1f} MiB",
        "",
        "| pass | seconds |",
        "|---|---|",
        *[f"| plain forward, batch {b} | {s:.2f} |" for b, s in forward.items()],
        f"| model.predict, batch 128 | {predict:.2f} |",
        f"| the cache's fill (blocks of {', '.join(str(f[3]) for f in fills)}) "
        f"| {seconds:.2f} |",
        f"| the fill after tracing its forward pass | {steady:.2f} |",
        f"| a run's fill, fixed blocks of {fixed[0][3]}, after tracing "
        f"| {steady_fixed:.2f} |",
        "",
        f"Fill / best plain forward (batch {best}, traced apart): "
        f"{steady / forward[best]:.2f}x after its trace, "
        f"{steady_fixed / forward[best]:.2f}x in fixed blocks "
        "(target: at most 1.10x); "
        f"with the traces of both, {seconds:.2f} s against {traced:.2f} s: "
        f"{seconds / traced:.2f}x",
        f"Fill's memory peak over its start: {peak / 2**20:,.1f} MiB, for a cache of "
        f"{nbytes / 2**20:,.1f} MiB ({peak / max(nbytes, 1):.2f}x); a block of "
        f"{block} samples' largest activation: {block * activation / 2**20:,.1f} MiB, "
        f"all its activations: {block * every / 2**20:,.1f} MiB (target: the "
        "cache plus one block)",
    ]
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
