"""The Keras guide's recipe with augmentation in front, against augmented views.

The transfer-learning guide trains a new head on a frozen backbone behind
augmentation layers (`RandomFlip("horizontal")`, `RandomRotation(0.1)`), so
every step of every epoch runs the backbone on a fresh draw. transferkit's
`augmented_views=K` runs the frozen backbone on K augmented draws of every
sample once, then trains each epoch on one view per sample. This script
measures both on real images, each variant in its own process:

- "Keras guide": `base.trainable = False`, `base(x, training=False)` behind
  the augmentation layers, `fit` with validation every epoch;
- "transferkit, K views": the same layers as groups, the backbone frozen,
  `fine_tune(..., augmented_views=K)` with validation.

Images: MNIST digits (the `--data` file in Keras' `mnist.npz` layout, else
the digits that ship with transferkit), resized to `--size` pixels, grey as
RGB, scaled to [-1, 1] as MobileNetV2 expects. A random MobileNetV2 gives
features that carry nothing (every variant at chance), and ImageNet's
weights need a download, so the backbone is first pretrained on the digits
0-4, as `examples/pretrained_backbone.py` does (`--pretrain-epochs`, in a
process of its own, its weights kept in a temporary file); the variants then
train a head for the digits 5-9 on it, frozen. `--weights imagenet` skips
the pretraining.

    python benchmarks/augmented_views.py
    python benchmarks/augmented_views.py --views 2 4 --data ../shared/data/mnist-10k.npz

Prints a table: training seconds, process seconds, peak memory, the last
epoch's validation accuracy, and the speed-up over the guide.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backbone import run_process  # noqa: E402 (one way to run a variant)


def images(args: argparse.Namespace, digits: range):
    """`(x_train, y_train, x_test, y_test)` of `digits`, relabeled from 0:
    RGB images in [-1, 1], at most `--samples` to train, half that to test."""
    import numpy as np
    import tensorflow as tf

    from transferkit import split_classes
    from transferkit.datasets import mnist

    data = mnist.load(args.data) if args.data else mnist.load_sample()

    def prepare(x, y, count):
        (subset,) = split_classes(x, y, [digits])
        out = []
        for start in range(0, min(count, len(subset.x)), 500):  # Bounded memory.
            end = min(start + 500, count)
            block = tf.constant(subset.x[start:end, :, :, None], tf.float32)
            block = tf.image.resize(block, (args.size, args.size))
            out.append(tf.image.grayscale_to_rgb(block).numpy() / 127.5 - 1)
        return np.concatenate(out).astype("float32"), subset.y[:count]

    count = args.samples if digits.start else 2 * args.samples
    return (
        *prepare(data.x_train, data.y_train, count),
        *prepare(data.x_test, data.y_test, args.samples // 2),
    )


def pretrain(args: argparse.Namespace) -> dict:
    """Trains MobileNetV2 and a head on the digits 0-4; keeps the backbone's
    weights in `--weights-file`."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(args.seed)
    x, y, x_test, y_test = images(args, range(0, 5))
    base = keras.applications.MobileNetV2(
        input_shape=(args.size, args.size, 3), include_top=False, weights=None
    )
    for layer in base.layers:  # As the example does, for a short training.
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = 0.9
    model = keras.Sequential(
        [base, layers.GlobalAveragePooling2D(), layers.Dense(5, activation="softmax")]
    )
    model.compile(
        optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    start = time.perf_counter()
    history = model.fit(
        x, y, batch_size=args.batch_size, epochs=args.pretrain_epochs,
        validation_data=(x_test, y_test), verbose=0,
    )  # fmt: skip
    base.save_weights(args.weights_file)
    return {
        "seconds": time.perf_counter() - start,
        "accuracy": history.history["val_accuracy"][-1],
    }


def run_variant(args: argparse.Namespace) -> dict:
    """Trains the variant; its seconds and last validation accuracy."""
    import keras
    from keras import layers

    from transferkit import LayerGroup, TransferRun

    if args.variant == "pretrain":
        return pretrain(args)
    keras.utils.set_random_seed(args.seed)
    x, y, x_test, y_test = images(args, range(5, 10))
    shape = (args.size, args.size, 3)
    base = keras.applications.MobileNetV2(
        input_shape=shape, include_top=False, weights=args.weights_file
    )
    augment = [layers.RandomFlip("horizontal"), layers.RandomRotation(0.1)]
    head = [
        layers.GlobalAveragePooling2D(),
        layers.Dropout(0.2),
        layers.Dense(5, activation="softmax"),
    ]
    if args.variant == "guide":
        base.trainable = False
        inputs = keras.Input(shape)
        features = base(keras.Sequential(augment)(inputs), training=False)
        model = keras.Model(inputs, keras.Sequential(head)(features))
        model.compile(
            optimizer="adam",
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        start = time.perf_counter()
        history = model.fit(
            x, y, batch_size=args.batch_size, epochs=args.epochs,
            validation_data=(x_test, y_test), verbose=0,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        return {
            "seconds": seconds,
            "accuracy": history.history["val_accuracy"][-1],
            "samples": [len(x), len(x_test)],
        }
    model = (
        LayerGroup("augment", augment, input_shape=shape)
        + LayerGroup("backbone", [base])
        + LayerGroup("head", head)
    )
    run = TransferRun(
        model,
        optimizer="adam",
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        batch_size=args.batch_size,
        verbose=0,
    )
    result = run.fine_tune(
        (x, y),
        freeze="backbone",
        epochs=args.epochs,
        validation_data=(x_test, y_test),
        augmented_views=int(args.variant),
    )
    return {
        "seconds": result.seconds,
        "accuracy": result.metrics["accuracy"],
        "cache": result.cache.split(";")[0],
        "cache_seconds": result.cache_seconds,
    }


def table(results: dict[str, list[dict]]) -> str:
    """One row per variant: means over the seeds (accuracy with its standard
    deviation)."""
    header = ["variant", "training s", "process s", "peak MiB"]
    header += ["val accuracy (mean ± sd)", "speed-up", "cache"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def mean(records, key):
        return statistics.mean(record[key] for record in records)

    guide = mean(results["Keras guide"], "seconds")
    for name, records in results.items():
        accuracy = [record["accuracy"] for record in records]
        spread = statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0
        lines.append(
            f"| {name} | {mean(records, 'seconds'):.1f} "
            f"| {mean(records, 'process_seconds'):.1f} "
            f"| {max(r['peak_mib'] for r in records):,.0f} "
            f"| {statistics.mean(accuracy):.2%} ± {spread:.2%} "
            f"| {guide / mean(records, 'seconds'):.2f}x "
            f"| {records[0].get('cache', 'fresh draws every step')} |"
        )
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=96, help="image side (default: 96)")
    parser.add_argument("--samples", type=int, default=2000, help="default: 2000")
    parser.add_argument("--epochs", type=int, default=10, help="default: 10")
    parser.add_argument("--pretrain-epochs", type=int, default=3, help="default: 3")
    parser.add_argument("--batch-size", type=int, default=32, help="default: 32")
    parser.add_argument("--views", type=int, nargs="+", default=[2], help="default: 2")
    parser.add_argument("--data", help="MNIST in mnist.npz layout (default: shipped)")
    parser.add_argument("--weights", default="pretrain", help="pretrain or imagenet")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="one run each (default: 0)"
    )
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--weights-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        print(json.dumps(run_variant(args)))
        return ""
    common = [
        "--size", str(args.size), "--samples", str(args.samples),
        "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
        "--pretrain-epochs", str(args.pretrain_epochs),
    ] + (["--data", args.data] if args.data else [])  # fmt: skip
    variants = {"Keras guide": "guide"}
    variants.update({f"transferkit, {k} views": str(k) for k in args.views})
    results, lines = {}, []
    with tempfile.TemporaryDirectory() as folder:
        weights = args.weights
        if weights != "imagenet":
            weights = str(Path(folder) / "pretrained.weights.h5")
            trained = run_process(
                [*common, "--variant", "pretrain", "--weights-file", weights]
                + ["--seed", str(args.seeds[0])],
                script=__file__,
            )
            lines.append(
                f"backbone pretrained on the digits 0-4 for {args.pretrain_epochs} "
                f"epochs: {trained['seconds']:.1f} s, {trained['accuracy']:.2%} "
                "validation accuracy"
            )
        for seed in args.seeds:
            for name, variant in variants.items():
                argv = [*common, "--variant", variant, "--weights-file", weights]
                record = run_process([*argv, "--seed", str(seed)], script=__file__)
                results.setdefault(name, []).append(record)
                print(
                    f"{name}, seed {seed}: {record['seconds']:.1f} s, "
                    f"{record['accuracy']:.2%}",
                    file=sys.stderr,
                    flush=True,
                )
    train, held = results["Keras guide"][0]["samples"]
    text = "\n".join(
        [
            f"MobileNetV2 1.0 at {args.size}x{args.size}, a head for the digits 5-9: "
            f"{train} MNIST digits, {args.epochs} epochs, batch "
            f"{args.batch_size}, validation on {held}; seeds "
            f"{', '.join(map(str, args.seeds))}",
            *lines,
            "",
            table(results),
        ]
    )
    print(text)
    return text


if __name__ == "__main__":
    main()
