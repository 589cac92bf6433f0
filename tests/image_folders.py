"""Tiny image folders for the task and command tests: real digits from the
shipped sample, as 32x32 RGB PNGs in class folders."""

from pathlib import Path

import numpy as np
import tensorflow as tf

from transferkit.datasets import mnist

CLASSES = ("a_zero", "b_one", "c_two")  # Sorted, as Keras orders folders.


def write_folders(root: Path, train=(16, 16, 16), test=8, loose=4) -> dict:
    """`root/train/<class>/`, `root/test/<class>/` and `root/loose/`, with
    `train[i]` training images of class i; returns the paths."""
    data = mnist.load_sample()
    images = {
        digit: data.x_train[data.y_train == digit] for digit in range(len(CLASSES))
    }
    paths = {"train": root / "train", "test": root / "test", "loose": root / "loose"}
    for digit, name in enumerate(CLASSES):
        pool = images[digit]
        _write(paths["train"] / name, pool[: train[digit]])
        _write(paths["test"] / name, pool[train[digit] : train[digit] + test])
    _write(paths["loose"], images[1][-loose:])
    return paths


def _write(folder: Path, digits: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rgb = tf.image.resize(digits[..., None].astype("float32"), (32, 32))
    rgb = tf.cast(tf.repeat(rgb, 3, axis=-1), tf.uint8)
    for index, image in enumerate(rgb):
        (folder / f"{index:03d}.png").write_bytes(tf.io.encode_png(image).numpy())


def weights_file(folder: Path) -> Path:
    """A MobileNetV2 weights file without its top, as a user brings one
    offline (random weights: the tests check the plumbing, not accuracy)."""
    import keras

    path = folder / "mobilenet_v2_notop.weights.h5"
    if not path.exists():
        keras.utils.set_random_seed(1)
        base = keras.applications.MobileNetV2(
            input_shape=(32, 32, 3), include_top=False, weights=None
        )
        base.save_weights(path)
    return path
