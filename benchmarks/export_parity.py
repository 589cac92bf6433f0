"""Exports checked against the model: parity and accuracy of every format.

Trains the shipped examples into temporary run folders, each in a process
of its own, and exports their models with `transferkit.export` in every
format (SavedModel, LiteRT float32, LiteRT with dynamic-range and with full
int8 quantization, ONNX where tf2onnx is installed):

- "cnn": `examples/mnist_digits.py` (the reference CNN on 28x28 digits);
- "mobilenetv2": `examples/pretrained_backbone.py` offline (MobileNetV2 1.0
  at 32x32, pretrained on the digits 0-4, then transferred to 5-9; its
  preprocessing is its first layer).

Each model is checked on the run's own test data, the digits 5-9 of the
test split: the parity check (largest difference between the artifact's
outputs and `model(x, training=False)`) on 256 of them, the accuracy of the
model and of the artifact on all of them, the int8 representative data drawn
from the first 100.

    python benchmarks/export_parity.py
    python benchmarks/export_parity.py --data ../shared/data/mnist-10k.npz --models cnn

For the MobileNetV2, it also exports the model behind the Keras guide's
augmentation layers with Keras' own `model.export`, and compares its `serve`
with `predict`, and converts that SavedModel to LiteRT.

Prints the CPU line and a table per model.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_line  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = [
    ("tf_saved_model", None, "saved_model"),
    ("litert", None, "model.tflite"),
    ("litert", "dynamic", "dynamic.tflite"),
    ("litert", "int8", "int8.tflite"),
    ("onnx", None, "model.onnx"),
]


def train(model: str, out: Path, args) -> None:
    data = ["--data", args.data] if args.data else []
    if model == "cnn":
        command = [str(ROOT / "examples" / "mnist_digits.py"), "--epochs", "5"]
    else:
        command = [
            str(ROOT / "examples" / "pretrained_backbone.py"),
            *("--pretrain-epochs", str(args.pretrain_epochs)),
            *("--epochs", "1"),
        ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [sys.executable, *command, *data, "--out", str(out), "--verbose", "0"],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_digits(model: str, args):
    """The run's test data: digits 5-9 of the test split, relabeled 0-4, as
    the example feeds them to the model."""
    import numpy as np
    import tensorflow as tf

    from transferkit import split_classes
    from transferkit.datasets import mnist

    data = mnist.load(args.data) if args.data else mnist.load_sample()
    if model == "cnn":
        x = data.x_test[..., None].astype("float32") / 255
    else:  # 32x32 RGB, pixels 0-255: the model preprocesses them.
        block = tf.image.resize(data.x_test[..., None].astype("float32"), (32, 32))
        x = tf.repeat(block, 3, axis=-1).numpy()
    (test,) = split_classes(x, data.y_test, [range(5, 10)])
    return np.asarray(test.x), np.asarray(test.y)


def measure(model_name: str, folder: Path, args) -> list[str]:
    from transferkit import export, load_trained_model

    train(model_name, folder / "run", args)
    model = load_trained_model(folder / "run")
    x, y = test_digits(model_name, args)
    lines = [
        f"{model_name}: {len(x)} test digits 5-9, input {tuple(x.shape[1:])}",
        "| format | quantization | parity (max difference) | model accuracy "
        "| exported accuracy | size KiB | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for format, quantize, name in VARIANTS:
        path = folder / name
        try:
            result = export(
                model,
                path,
                format=format,
                quantize=quantize,
                samples=x[:256] if quantize != "int8" else x[:100],
                test_data=(x, y),
                verbose=False,
            )
        except (ImportError, ValueError) as error:
            lines.append(f"| {format} | {quantize or '-'} | refused: {error} |||||")
            continue
        size = _size(path) / 1024
        accuracy = result.accuracy
        lines.append(
            f"| {format} | {quantize or '-'} | {result.parity_max_difference:.3g} "
            f"| {accuracy['model']:.2%} | {accuracy['exported']:.2%} "
            f"| {size:,.0f} | {result.seconds:.1f} |"
        )
    if model_name == "mobilenetv2":
        lines += ["", *keras_own_export(model, folder, x, y)]
    return lines


def keras_own_export(model, folder: Path, x, y) -> list[str]:
    """The model behind the guide's augmentation layers, exported by Keras'
    own `model.export`, whose `serve` is the model as called (augmenting);
    then converted to LiteRT from that SavedModel."""
    import warnings

    import keras
    import numpy as np
    import tensorflow as tf

    augmented = keras.Sequential(
        [
            keras.Input(model.input_shape[1:]),
            keras.layers.RandomFlip("horizontal"),
            keras.layers.RandomRotation(0.1),
            model,
        ]
    )
    expected = augmented.predict(x, verbose=0)
    augmented.export(str(folder / "keras_own"), verbose=False)
    served = tf.saved_model.load(str(folder / "keras_own"))
    outputs = np.concatenate(
        [served.serve(x[i : i + 256]).numpy() for i in range(0, len(x), 256)]
    )
    changed = np.mean(outputs.argmax(1) != expected.argmax(1))
    lines = [
        "Keras' own model.export of the model behind RandomFlip and "
        f"RandomRotation(0.1): serve differs from predict by up to "
        f"{np.abs(outputs - expected).max():.3g}, {changed:.1%} of the predicted "
        f"classes change, accuracy {np.mean(outputs.argmax(1) == y):.2%} against "
        f"{np.mean(expected.argmax(1) == y):.2%}"
    ]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converter = tf.lite.TFLiteConverter.from_saved_model(
                str(folder / "keras_own")
            )
            converter.convert()
        lines.append("its conversion to LiteRT: succeeded")
    except Exception as error:  # noqa: BLE001 (the converter's own errors)
        text = str(error)
        ops = sorted(set(re.findall(r"'tf\.(\w+)' op is neither a custom op", text)))
        ops += sorted(set(re.findall(r"\ttf\.(\w+)\(", text)) - set(ops))
        lines.append(
            "its conversion to LiteRT fails: "
            + (
                f"ops neither built in nor flex: {', '.join(ops)}"
                if ops
                else text[:200]
            )
        )
    return lines


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", help="an mnist.npz file (default: the shipped digits)"
    )
    parser.add_argument(
        "--models",
        nargs="+",
        choices=("cnn", "mobilenetv2"),
        default=["cnn", "mobilenetv2"],
    )
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    args = parser.parse_args(argv)
    print(cpu_line())
    for model in args.models:
        with tempfile.TemporaryDirectory() as folder:
            print("\n".join(measure(model, Path(folder), args)), end="\n\n", flush=True)


if __name__ == "__main__":
    main()
