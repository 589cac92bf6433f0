"""This CPU's arithmetic throughput, and the reference example's arithmetic.

Prints, for float32 and bfloat16: a 4096 x 4096 matmul, the example's second
convolution (3x3, 32 to 32 channels, 26 x 26 maps, batch 128) forward, and
the head's first matmul (128 x 4608 by 4608 x 128), each in GFLOP/s; and the
multiply-adds of one sample in each part of the example, from which a phase's
achieved GFLOP/s follows (its FLOPs over its seconds).

    python benchmarks/throughput.py
"""

from __future__ import annotations

import argparse
import time

import tensorflow as tf

# Multiply-adds per sample of the reference convnet's layers, forward.
CONV1 = 26 * 26 * 32 * (3 * 3 * 1)
CONV2 = 24 * 24 * 32 * (3 * 3 * 32)
DENSE1 = 4608 * 128
DENSE2 = 128 * 5


def flops_per_sample() -> dict[str, float]:
    """MFLOP (2 per multiply-add) of one sample in each kind of step."""
    forward = CONV1 + CONV2 + DENSE1 + DENSE2
    # Backward: every weight gradient, and the input gradients that reach a
    # trainable layer (none into conv1's input, nor into a frozen prefix).
    everything = forward + CONV1 + 2 * CONV2 + 2 * DENSE1 + 2 * DENSE2
    head_forward = DENSE1 + DENSE2
    head = head_forward + DENSE1 + 2 * DENSE2
    return {
        "train step, all layers (phase 1)": 2 * everything / 1e6,
        "train step, frozen convolutions run forward (plain phase 2)": 2
        * (forward + DENSE1 + 2 * DENSE2)
        / 1e6,
        "forward of the convolutions (the cache, once)": 2 * (CONV1 + CONV2) / 1e6,
        "train step of the head on cached features": 2 * head / 1e6,
        "forward, all layers (validation)": 2 * forward / 1e6,
        "forward of the head (validation on the cache)": 2 * head_forward / 1e6,
    }


def gflops(function, flops: float, repeats: int) -> float:
    function()  # Traces; not timed.
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function().numpy()
        best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


def throughput(dtype: tf.DType, repeats: int) -> dict[str, float]:
    def loop(body, times):
        @tf.function
        def run():
            out = body()
            for _ in tf.range(times - 1):
                out += body()
            return tf.reduce_sum(out)

        return run

    big = tf.cast(tf.random.normal((4096, 4096)), dtype)
    maps = tf.cast(tf.random.normal((128, 26, 26, 32)), dtype)
    kernel = tf.cast(tf.random.normal((3, 3, 32, 32)), dtype)
    rows = tf.cast(tf.random.normal((128, 4608)), dtype)
    weights = tf.cast(tf.random.normal((4608, 128)), dtype)
    return {
        "matmul 4096x4096": gflops(
            loop(lambda: tf.matmul(big, big), 4), 4 * 2 * 4096**3, repeats
        ),
        "conv 3x3 32->32 on 26x26, batch 128": gflops(
            loop(lambda: tf.nn.conv2d(maps, kernel, 1, "VALID"), 20),
            20 * 2 * 128 * CONV2,
            repeats,
        ),
        "matmul 128x4608 by 4608x128": gflops(
            loop(lambda: tf.matmul(rows, weights), 200),
            200 * 2 * 128 * 4608 * 128,
            repeats,
        ),
    }


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="best of (default: 5)")
    args = parser.parse_args(argv)
    measured = {
        name: throughput(dtype, args.repeats)
        for name, dtype in (("float32", tf.float32), ("bfloat16", tf.bfloat16))
    }
    lines = ["| operation | float32 GFLOP/s | bfloat16 GFLOP/s |", "|---|---|---|"]
    for operation in measured["float32"]:
        lines.append(
            f"| {operation} | {measured['float32'][operation]:.0f} "
            f"| {measured['bfloat16'][operation]:.0f} |"
        )
    lines += ["", "| one sample | MFLOP |", "|---|---|"]
    lines += [f"| {name} | {value:.2f} |" for name, value in flops_per_sample().items()]
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
