"""Times one training step of the example's head on cached features.

The fine-tuning phase of the reference example trains Dropout, Flatten,
Dense(128), ReLU, Dropout, Dense(5), softmax on the cached output of the
frozen convolutions (12 x 12 x 32 per digit). This script times a step of
that head, with Keras' layers or the lean step's (`LeanDropout`,
`LeanSoftmax`), Keras' Adadelta updates or the fused ones, in float32 and
mixed bfloat16, in Keras' `fit` and in transferkit's own loop, against the
step's arithmetic floor (its two large matmuls alone), and the forward pass
of the frozen layers that fills the cache, and prints tables in
milliseconds.

    python benchmarks/head_step.py
    python benchmarks/head_step.py --samples 2000 --repeats 1
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import time

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from transferkit.engine.loop import InMemoryLoop
from transferkit.engine.optimizers import fuse_updates
from transferkit.layers.lean import lean_layers

BATCH = 128
FEATURES = (12, 12, 32)


@contextlib.contextmanager
def global_policy(policy: str):
    """Keras' global dtype policy set to `policy` for the block, then float32."""
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield keras.mixed_precision.global_policy().compute_dtype
    finally:
        keras.mixed_precision.set_global_policy("float32")


def head(lean: bool, dtype: str) -> keras.Sequential:
    """The example's head on cached features; with `lean`, the layers that
    a lean run trains (`transferkit.layers.lean.lean_layers`)."""
    body = [
        layers.Dropout(0.25),
        layers.Flatten(),
        layers.Dense(128),
        layers.Activation("relu"),
        layers.Dropout(0.5),
        layers.Dense(5),
        layers.Activation("softmax", dtype="float32"),
    ]
    return keras.Sequential(
        [keras.Input(FEATURES, dtype=dtype), *(lean_layers(body) if lean else body)]
    )


def compile_head(model, *, fused: bool, xla: bool = False) -> None:
    """Compiles `model` as the example's fine-tuning phase does: Adadelta(1.0)
    (with the fused update when `fused`), crossentropy, accuracy, 32 steps
    per execution (and XLA when `xla`)."""
    optimizer = keras.optimizers.Adadelta(1.0)
    if fused:
        fuse_updates(optimizer)
    model.compile(
        optimizer=optimizer,
        loss="categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=32,
        jit_compile=xla,
    )


def loop_epoch(model, features, labels):
    """A function that trains `model` one epoch in transferkit's own loop."""
    runner = InMemoryLoop(model, features, labels, batch_size=BATCH, steps_per_call=32)
    callbacks = keras.callbacks.CallbackList([], model=model)

    def epoch():
        runner.fit(epochs=1, initial_epoch=0, callbacks=callbacks)

    return epoch


def time_step(samples, repeats, *, lean, fused, policy, loop=False, xla=False):
    """Milliseconds per training step, in Keras' `fit` (compiled by XLA
    with `xla`) or (`loop`) in transferkit's own loop: the best of `repeats`
    epochs, the figure least disturbed by other work on the machine."""
    with global_policy(policy) as dtype:
        rng = np.random.default_rng(0)
        features = tf.cast(rng.random((samples, *FEATURES), np.float32), dtype)
        labels = tf.one_hot(rng.integers(0, 5, samples), 5)
        data = (
            tf.data.Dataset.from_tensor_slices((features, labels))
            .batch(BATCH)
            .prefetch(tf.data.AUTOTUNE)
        )
        model = head(lean, dtype)
        compile_head(model, fused=fused, xla=xla)
        if loop:
            epoch = loop_epoch(model, features, labels)
        else:

            def epoch():
                model.fit(data, epochs=1, shuffle=False, verbose=0)

        epoch()  # Traces; not timed.
        steps = -(-samples // BATCH)
        timings = []
        for _ in range(repeats):
            start = time.perf_counter()
            epoch()
            timings.append((time.perf_counter() - start) / steps * 1e3)
    return min(timings)


def time_floor(samples, repeats, policy, *, backward: bool = True) -> float:
    """Milliseconds per step of the head's arithmetic alone: the first Dense
    layer's forward and weight-gradient matmuls (batch x 4608 by 4608 x 128,
    and its transpose), which hold 99.7% of the head's multiply-adds, run
    back to back in a compiled loop over the epoch's batches; with
    `backward=False`, the forward matmul alone (a validation step's)."""
    with global_policy(policy) as dtype:
        rng = np.random.default_rng(0)
        steps = -(-samples // BATCH)
        x = tf.cast(rng.random((BATCH, 4608), np.float32), dtype)
        w = tf.cast(rng.random((4608, 128), np.float32), dtype)
        g = tf.cast(rng.random((BATCH, 128), np.float32), dtype)

        @tf.function
        def epoch():
            total = tf.zeros((4608, 128), dtype)
            for _ in tf.range(steps):
                y = tf.matmul(x, w)
                if backward:
                    total += tf.matmul(x, g + y[:, :1] * 0, transpose_a=True)
                else:
                    total += y[:1, :1]
            return total

        epoch()
        timings = []
        for _ in range(repeats):
            start = time.perf_counter()
            epoch().numpy()
            timings.append((time.perf_counter() - start) / steps * 1e3)
    return min(timings)


def time_prefix(samples, policy) -> float:
    """Milliseconds per 1,000 digits of the frozen layers' forward pass."""
    with global_policy(policy):
        prefix = keras.Sequential(
            [
                keras.Input((28, 28, 1)),
                layers.Conv2D(32, 3),
                layers.Activation("relu"),
                layers.Conv2D(32, 3),
                layers.Activation("relu"),
                layers.MaxPooling2D(2),
            ]
        )
        images = np.random.default_rng(0).random((samples, 28, 28, 1), np.float32)
        prefix.predict(images[:1024], batch_size=1024, verbose=0)
        start = time.perf_counter()
        prefix.predict(images, batch_size=1024, verbose=0)
        return (time.perf_counter() - start) / samples * 1e6


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--samples", type=int, default=29_184, help="per epoch")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs")
    parser.add_argument(
        "--xla",
        action="store_true",
        help="also time Keras' fit with jit_compile=True (Keras' layers, on at "
        "most 4,096 samples an epoch: slow on a CPU)",
    )
    args = parser.parse_args(argv)

    lines = [
        "| precision | Dropout and softmax | Adadelta update | ms per step, fit "
        "| ms per step, transferkit's loop | loop / arithmetic floor |",
        "|---|---|---|---|---|---|",
    ]
    floors = {
        policy: time_floor(args.samples, args.repeats, policy)
        for policy in ("float32", "mixed_bfloat16")
    }
    for policy, lean, fused in itertools.product(
        ("float32", "mixed_bfloat16"), (False, True), (False, True)
    ):
        options = {"lean": lean, "fused": fused, "policy": policy}
        fit = time_step(args.samples, args.repeats, **options)
        loop = time_step(args.samples, args.repeats, loop=True, **options)
        lines.append(
            f"| {policy} | {'lean' if lean else 'Keras'} "
            f"| {'fused' if fused else 'Keras'} | {fit:.2f} | {loop:.2f} "
            f"| {loop / floors[policy]:.2f}x |"
        )
    lines += ["", "| precision | arithmetic floor, ms per step |", "|---|---|"]
    lines += [f"| {policy} | {ms:.2f} |" for policy, ms in floors.items()]
    lines += ["", "| precision | frozen layers, ms per 1,000 digits |", "|---|---|"]
    for policy in ("float32", "mixed_bfloat16"):
        lines.append(f"| {policy} | {time_prefix(args.samples, policy):.0f} |")
    if args.xla:
        samples = min(args.samples, 4096)
        lines += [
            "",
            f"| precision | ms per step, fit with XLA ({samples} samples) "
            "| ms per step, fit without |",
            "|---|---|---|",
        ]
        for policy in ("float32", "mixed_bfloat16"):
            keras_layers = {"lean": False, "fused": False, "policy": policy}
            with_xla = time_step(samples, 1, xla=True, **keras_layers)
            without = time_step(samples, 1, **keras_layers)
            lines.append(f"| {policy} | {with_xla:.2f} | {without:.2f} |")
    text = (
        f"Head of the example, batch {BATCH}, {args.samples} samples per epoch, "
        f"32 steps per execution, best of {args.repeats} epochs\n\n" + "\n".join(lines)
    )
    print(text)
    return text


if __name__ == "__main__":
    main()
