"""Times transfer on a frozen `keras.applications` backbone.

Two comparisons, each variant in its own process, on the same random images
(the weights and the data do not matter for timing):

- A new head on the frozen backbone for `--epochs` epochs: the Keras
  transfer-learning guide's recipe (`base.trainable = False`,
  `x = base(inputs, training=False)`, then `fit`, which runs the backbone
  forward on every step of every epoch) against transferkit
  (`fine_tune(freeze=[bottom, top])`, which computes the backbone's output
  once, then trains the head with its own loop).
- The top-blocks stage: the backbone split at its cut, the bottom frozen,
  the top and the head training for `--epochs` epochs, with the feature
  cache (computed once up to the cut) and without it.

    python benchmarks/backbone.py
    python benchmarks/backbone.py --backbone MobileNetV2 --size 96 --samples 2000

Prints a table: seconds of the training call (transferkit's phase seconds,
which also hold compiling, the cache and the freeze check), seconds of the
whole process, its peak memory, and each pair's speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from transferkit import Speed

ROOT = Path(__file__).resolve().parents[1]

CUTS = {
    "MobileNetV2": "block_12_add",
    "InceptionV3": "mixed8",
    "ResNet50": "conv4_block6_out",
}
VARIANTS = {
    "head: Keras guide": "guide",
    "head: transferkit": "head",
    "top: uncached": "top_uncached",
    "top: cached": "top_cached",
}
"""Each row's variant, as `--variant` takes it."""


def run_variant(args: argparse.Namespace) -> dict:
    """Builds the model, trains the variant, returns its seconds."""
    import keras
    import numpy as np
    from keras import layers

    from transferkit import LayerGroup, TransferRun

    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    x = rng.random((args.samples, args.size, args.size, 3), dtype="float32")
    y = rng.integers(0, 10, args.samples)
    base = getattr(keras.applications, args.backbone)(
        input_shape=(args.size, args.size, 3), include_top=False, weights=None
    )
    if args.variant == "guide":
        base.trainable = False
        inputs = keras.Input((args.size, args.size, 3))
        features = base(inputs, training=False)
        pooled = layers.GlobalAveragePooling2D()(features)
        model = keras.Model(inputs, layers.Dense(10, activation="softmax")(pooled))
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        start = time.perf_counter()
        model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0)
        return {"seconds": time.perf_counter() - start}
    bottom, top = LayerGroup.split(
        base, at=CUTS[args.backbone], names=["bottom", "top"]
    )
    head = LayerGroup(
        "head",
        [layers.GlobalAveragePooling2D(), layers.Dense(10, activation="softmax")],
    )
    run = TransferRun(
        bottom + top + head,
        optimizer="adam",
        loss="sparse_categorical_crossentropy",
        batch_size=args.batch_size,
        verbose=0,
        speed=Speed(feature_cache=args.variant != "top_uncached"),
    )
    frozen = ["bottom", "top"] if args.variant == "head" else ["bottom"]
    result = run.fine_tune((x, y), freeze=frozen, epochs=args.epochs)
    return {
        "seconds": result.seconds,
        "cache": result.cache,
        "cache_seconds": result.cache_seconds,
        "loop": result.training_loop,
    }


def run_process(argv: list[str], script: str = __file__) -> dict:
    """Runs `script` (this one) for one variant; its result, wall seconds and
    peak RSS."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), env.get("PYTHONPATH")])
    )
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, script, *argv],
            stdout=out,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        lines = out.read().decode().strip().splitlines()
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"variant {argv} failed")
    record = json.loads(lines[-1])
    record.update(process_seconds=seconds, peak_mib=usage.ru_maxrss / 1024)
    return record


def table(results: dict[str, dict]) -> str:
    header = ["variant", "training s", "process s", "peak MiB", "speed-up", "cache"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    pairs = {"head: transferkit": "head: Keras guide", "top: cached": "top: uncached"}
    for name, record in results.items():
        base = results.get(pairs.get(name, name))
        speed = f"{base['seconds'] / record['seconds']:.2f}x" if base else "1.00x"
        cache = record.get("cache", "-").split(";")[0]
        lines.append(
            f"| {name} | {record['seconds']:.1f} | {record['process_seconds']:.1f} "
            f"| {record['peak_mib']:,.0f} | {speed} | {cache} |"
        )
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", choices=sorted(CUTS), default="MobileNetV2")
    parser.add_argument("--size", type=int, default=96, help="image side (default: 96)")
    parser.add_argument("--samples", type=int, default=2000, help="default: 2000")
    parser.add_argument("--epochs", type=int, default=10, help="default: 10")
    parser.add_argument("--batch-size", type=int, default=64, help="default: 64")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--variant", choices=sorted(VARIANTS.values()), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.variant:
        print(json.dumps(run_variant(args)))
        return ""
    common = [
        "--backbone", args.backbone, "--size", str(args.size),
        "--samples", str(args.samples), "--epochs", str(args.epochs),
        "--batch-size", str(args.batch_size), "--seed", str(args.seed),
    ]  # fmt: skip
    results = {}
    for name, variant in VARIANTS.items():
        results[name] = run_process([*common, "--variant", variant])
        print(f"{name}: {results[name]['seconds']:.1f} s", file=sys.stderr, flush=True)
    text = (
        f"{args.backbone} at {args.size}x{args.size}, {args.samples} images, "
        f"{args.epochs} epochs, batch {args.batch_size}\n\n{table(results)}"
    )
    print(text)
    return text


if __name__ == "__main__":
    main()
