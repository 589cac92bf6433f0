"""The learning-rate sweep over a frozen MobileNetV2, against one epoch of the
Keras guide's recipe.

Data: `--samples` MNIST digits 5-9 (the `--data` file, else the shipped
digits), resized to `--size` pixels, grey as RGB, pixels 0-255. Backbone:
MobileNetV2 1.0 with random weights (the costs do not depend on them).

- "Keras guide, one epoch": the transfer-learning guide's model,
  `RandomFlip("horizontal")`, `RandomRotation(0.1)`, the preprocessing,
  `base(x, training=False)` with `base.trainable = False`, pooling, Dropout
  and a Dense head, trained by `fit` in batches of 32 without the cache; the
  second epoch is timed (the first includes tracing), its first too.
- "transferkit sweep": `run.find_learning_rate(x, freeze="backbone",
  steps=--steps)` on the same data and model without augmentation; its total
  is the feature cache (one forward pass of the frozen backbone over the
  data) plus the steps on the head. The cache is kept, and the one-epoch
  `fine_tune` that follows takes it: what the sweep adds is measured as
  (sweep + fine_tune) less the same fine_tune on a fresh run without a
  sweep.

    python benchmarks/lr_sweep.py
    python benchmarks/lr_sweep.py --samples 2000 --size 96 --steps 100

Prints the CPU line and the seconds of each, with the sweep's share of the
guide's epoch.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_line  # noqa: E402


def digits(args):
    import numpy as np
    import tensorflow as tf

    from transferkit import split_classes
    from transferkit.datasets import mnist

    data = mnist.load(args.data) if args.data else mnist.load_sample()
    (subset,) = split_classes(data.x_train, data.y_train, [range(5, 10)])
    count = min(args.samples, len(subset.y))
    out = []
    for start in range(0, count, 500):
        block = subset.x[start : min(start + 500, count), :, :, None]
        block = tf.image.resize(block.astype("float32"), (args.size, args.size))
        out.append(tf.repeat(block, 3, axis=-1).numpy())
    return np.concatenate(out), subset.y[:count]


def backbone(size: int):
    import keras

    return keras.applications.MobileNetV2(
        input_shape=(size, size, 3), include_top=False, weights=None
    )


def guide_epochs(x, y, args) -> list[float]:
    """Seconds of each epoch of the guide's recipe, in `fit`."""
    import keras
    from keras import layers

    from transferkit import ImagenetPreprocessing

    base = backbone(args.size)
    base.trainable = False
    inputs = keras.Input((args.size, args.size, 3))
    h = layers.RandomFlip("horizontal")(inputs)
    h = layers.RandomRotation(0.1)(h)
    h = ImagenetPreprocessing("tf")(h)
    h = base(h, training=False)
    h = layers.GlobalAveragePooling2D()(h)
    h = layers.Dropout(0.2)(h)
    model = keras.Model(inputs, layers.Dense(5, activation="softmax")(h))
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    times: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[Timer()])
    return times


def grouped_run(size: int):
    import keras
    from keras import layers

    from transferkit import ImagenetPreprocessing, LayerGroup, TransferRun

    model = (
        LayerGroup(
            "preprocess", [ImagenetPreprocessing("tf")], input_shape=(size, size, 3)
        )
        + LayerGroup("backbone", [backbone(size)])
        + LayerGroup(
            "head",
            [
                layers.GlobalAveragePooling2D(),
                layers.Dropout(0.2),
                layers.Dense(5, activation="softmax"),
            ],
        )
    )
    return TransferRun(
        model,
        optimizer=lambda: keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        batch_size=32,
        verbose=0,
    )


def sweep_then_phase(x, y, args, sweep: bool) -> dict:
    """Seconds of a sweep (if `sweep`) and of the one-epoch `fine_tune` after
    it, on a fresh run."""
    run = grouped_run(args.size)
    record = {}
    start = time.perf_counter()
    if sweep:
        found = run.find_learning_rate((x, y), freeze="backbone", steps=args.steps)
        record.update(
            sweep=found.seconds,
            cache=found.cache_seconds,
            steps=len(found.losses),
            suggested=found.suggested,
        )
    phase = run.fine_tune((x, y), freeze="backbone", epochs=1)
    record.update(
        phase=phase.seconds,
        phase_cache=phase.cache,
        phase_cache_seconds=phase.cache_seconds,
        total=time.perf_counter() - start,
    )
    return record


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", help="an mnist.npz file (default: the shipped digits)"
    )
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args(argv)
    print(cpu_line())
    x, y = digits(args)
    print(
        f"{len(x)} digits 5-9 at {args.size}x{args.size} RGB, MobileNetV2 1.0, "
        "batches of 32"
    )
    first, second = guide_epochs(x, y, args)
    print(
        f"Keras guide, one uncached epoch: {second:.1f} s (the first, with "
        f"tracing: {first:.1f} s)"
    )
    alone = sweep_then_phase(x, y, args, sweep=False)
    after = sweep_then_phase(x, y, args, sweep=True)
    print(
        f"a one-epoch fine_tune alone: {alone['total']:.1f} s (its feature cache "
        f"{alone['phase_cache_seconds']:.1f} s)"
    )
    print(
        f"transferkit sweep of {after['steps']} steps: {after['sweep']:.1f} s, of "
        f"which the feature cache {after['cache']:.1f} s (suggested rate "
        f"{after['suggested']:.2g}); the fine_tune after it took the cache "
        f"({after['phase_cache_seconds']:.1f} s of its own) and ran "
        f"{after['phase']:.1f} s"
    )
    added = after["total"] - alone["total"]
    print(
        f"what the sweep adds to the fine_tune: {added:.1f} s, {added / second:.0%} "
        f"of the guide's epoch (the sweep alone: {after['sweep'] / second:.0%})"
    )


if __name__ == "__main__":
    main()
