"""Predictions on a folder of images: transferkit's `predict_files` against
the dataset path (`image_dataset_from_directory` + `model.predict`).

Both load the same PNG files (real MNIST digits from the `--data` file, else
those that ship with transferkit, written as 28x28 grey PNGs in class
folders), resize them to `--size` pixels as RGB with bilinear interpolation,
and run a MobileNetV2 (alpha 1.0, random weights: the cost does not depend on
them) with its preprocessing layer and a 5-class head, in batches of 32.
Each path runs `--repeats` times, alternately; the first call of each
includes tracing and is reported apart. The outputs of the two paths are
compared too.

    python benchmarks/predict_files.py
    python benchmarks/predict_files.py --images 1000 --size 96

Prints the CPU line, then images per second of each path (median of the
steady repeats) and the largest difference between their outputs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_line  # noqa: E402


def write_folder(root: Path, args) -> Path:
    import numpy as np
    import tensorflow as tf

    from transferkit.datasets import mnist

    data = mnist.load(args.data) if args.data else mnist.load_sample()
    written = 0
    for index, (image, label) in enumerate(zip(data.x_test, data.y_test, strict=True)):
        if label >= 5 or written >= args.images:
            continue
        folder = root / f"digit_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        png = tf.io.encode_png(np.asarray(image, "uint8")[:, :, None])
        (folder / f"{index}.png").write_bytes(png.numpy())
        written += 1
    return root


def build_model(size: int):
    import keras
    from keras import layers

    from transferkit import ImagenetPreprocessing, LayerGroup

    base = keras.applications.MobileNetV2(
        input_shape=(size, size, 3), include_top=False, weights=None
    )
    preprocess = LayerGroup(
        "preprocess", [ImagenetPreprocessing("tf")], input_shape=(size, size, 3)
    )
    backbone = LayerGroup("backbone", [base])
    head = LayerGroup(
        "head",
        [layers.GlobalAveragePooling2D(), layers.Dense(5, activation="softmax")],
    )
    return preprocess + backbone + head


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", help="an mnist.npz file (default: the shipped digits)"
    )
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import keras
    import numpy as np

    from transferkit import predict_files
    from transferkit.data.input_recipe import recipe_of_dataset

    print(cpu_line())
    with tempfile.TemporaryDirectory() as folder:
        root = write_folder(Path(folder), args)
        model = build_model(args.size)

        def dataset():
            return keras.utils.image_dataset_from_directory(
                root,
                image_size=(args.size, args.size),
                batch_size=32,
                shuffle=False,
                verbose=False,
            )

        first = dataset()
        model.input_recipe = recipe_of_dataset(first).to_config()
        model.class_names = tuple(first.class_names)
        count = len(first.file_paths)
        paths = {
            "image_dataset_from_directory + model.predict": lambda: model.predict(
                dataset(), verbose=0
            ),
            "transferkit predict_files": lambda: (
                predict_files(model, root, batch_size=32).outputs
            ),
        }
        seconds = {name: [] for name in paths}
        outputs = {}
        for _ in range(args.repeats + 1):
            for name, run in paths.items():
                start = time.perf_counter()
                outputs[name] = run()
                seconds[name].append(time.perf_counter() - start)
    print(
        f"{count} PNG files, {args.size}x{args.size} RGB, MobileNetV2 1.0, "
        "batches of 32"
    )
    for name, times in seconds.items():
        steady = statistics.median(times[1:])
        print(
            f"{name}: {count / steady:.1f} images/s steady "
            f"(first call {times[0]:.2f} s, then "
            f"{', '.join(f'{t:.2f}' for t in times[1:])} s)"
        )
    ours, theirs = outputs.values()
    print(f"largest difference between the outputs: {np.abs(ours - theirs).max():.3g}")


if __name__ == "__main__":
    main()
