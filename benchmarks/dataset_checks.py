"""What checking a dataset costs, against the phase it guards.

Writes `--samples` PNG images (`--size` pixels, five classes) into class
folders in a temporary folder, loads them with
`keras.utils.image_dataset_from_directory`, and times, in one process:

- the checks a phase runs on a dataset before training
  (`transferkit.data.prepare.prepare_data`: element spec, first batch,
  class names), median of `--repeats`;
- one phase that trains a small head on a frozen MobileNetV2 (alpha 0.35),
  uncached, on that dataset.

    python benchmarks/dataset_checks.py
    python benchmarks/dataset_checks.py --samples 2000 --size 96

Prints both and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def write_folder(root: Path, samples: int, size: int) -> None:
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    for index in range(samples):
        folder = root / f"class_{index % 5}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, size=(size, size, 3)).astype("uint8")
        (folder / f"{index}.png").write_bytes(tf.io.encode_png(pixels).numpy())


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=1000, help="default: 1000")
    parser.add_argument("--size", type=int, default=96, help="default: 96")
    parser.add_argument("--epochs", type=int, default=1, help="default: 1")
    parser.add_argument("--repeats", type=int, default=5, help="default: 5")
    args = parser.parse_args(argv)

    import keras
    from keras import layers

    from transferkit import LayerGroup, TransferRun
    from transferkit.data.prepare import prepare_data

    with tempfile.TemporaryDirectory() as folder:
        write_folder(Path(folder), args.samples, args.size)
        dataset = keras.utils.image_dataset_from_directory(
            folder, image_size=(args.size, args.size), batch_size=32, verbose=False
        )
        base = keras.applications.MobileNetV2(
            input_shape=(args.size, args.size, 3),
            alpha=0.35,
            include_top=False,
            weights=None,
        )
        model = LayerGroup("backbone", [base], input_shape=base.input_shape[1:]) + (
            LayerGroup(
                "head",
                [
                    layers.GlobalAveragePooling2D(),
                    layers.Dense(5, activation="softmax"),
                ],
            )
        )
        loss = "sparse_categorical_crossentropy"
        checks = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            prepare_data(dataset, "data", model=model, loss=loss, batch_size=32)
            checks.append(time.perf_counter() - start)
        run = TransferRun(model, optimizer="adam", loss=loss, verbose=0)
        result = run.fine_tune(dataset, freeze="backbone", epochs=args.epochs)
    check = statistics.median(checks)
    text = (
        f"{args.samples} PNG images of {args.size}x{args.size}, MobileNetV2 0.35 "
        f"frozen, {args.epochs} epoch uncached\n"
        f"checks: {check * 1000:.1f} ms (median of {args.repeats}); phase: "
        f"{result.seconds:.1f} s; checks / phase: {check / result.seconds:.2%}"
    )
    print(text)
    return text


if __name__ == "__main__":
    main()
