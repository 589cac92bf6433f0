"""The image task's default recipe against the Keras transfer-learning
guide's, on real pretrained weights and the same image folder.

- "Keras guide": augmentation layers in front of the frozen backbone
  (`base(x, training=False)`), global pooling, `Dropout(0.2)`, a softmax
  layer, `fit` with Adam for `--epochs`; then the whole backbone unfrozen
  and trained at `Adam(1e-5)` for `--fine-tune-epochs` (the guide's two
  steps), fresh augmentation draws every step.
- "transferkit task": `transferkit.train_image_classifier` with its
  defaults, the same epochs.

Each variant runs in its own process (`--seeds` gives repeats); the table
gives the training seconds (from the first step to the last, data loading
and model building apart), the process's seconds and peak memory, and the
test accuracy.

The backbone: a keras-hub preset folder (`--preset`, e.g. real ImageNet
EfficientNet-Lite0 weights in timm's layout, which a user's clone does not
have: this benchmark is opt-in), or a catalogue name with a weights file
(`--backbone MobileNetV2 --weights FILE`). The images: `--images DIR` (with
`train/` and `test/` class folders), else MNIST digits 5-9 (`--data` in
Keras' `mnist.npz` layout, else the shipped sample) written as PNGs.

    python benchmarks/image_task.py --preset /tmp/lite0 --size 128 \\
        --data ../shared/data/mnist-10k.npz

It also prints the time of `transferkit train` from a fresh process to a
first trained model (`--command`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backbone import run_process  # noqa: E402 (one way to run a variant)
from machine import cpu_line  # noqa: E402

DIGITS = ("five", "six", "seven", "eight", "nine")


def write_digits(root: Path, data: str | None, per_class: int, test: int) -> Path:
    """MNIST digits 5-9 as 64x64 RGB PNGs in `root/train` and `root/test`."""
    import tensorflow as tf

    from transferkit.datasets import mnist

    digits = mnist.load(data)
    for split, x, y, count in (
        ("train", digits.x_train, digits.y_train, per_class),
        ("test", digits.x_test, digits.y_test, test),
    ):
        for offset, name in enumerate(DIGITS):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            images = x[y == 5 + offset][:count, :, :, None].astype("float32")
            rgb = tf.cast(tf.repeat(tf.image.resize(images, (64, 64)), 3, -1), "uint8")
            for index, image in enumerate(rgb):
                path = folder / f"{index:04d}.png"
                path.write_bytes(tf.io.encode_png(image).numpy())
    return root


def guide(args) -> dict:
    """The Keras guide's two steps, timed."""
    import keras
    from keras import layers

    from transferkit.backbones import load_backbone

    keras.utils.set_random_seed(args.seed)
    backbone = load_backbone(
        args.preset or args.backbone,
        weights=args.weights if not args.preset else "imagenet",
        image_size=args.size,
    )
    size = backbone.image_size
    load = dict(image_size=(size, size), batch_size=32, verbose=False)
    train = keras.utils.image_dataset_from_directory(
        Path(args.folder) / "train", seed=args.seed, **load
    )
    test = keras.utils.image_dataset_from_directory(
        Path(args.folder) / "test", shuffle=False, **load
    )
    inputs = keras.Input((size, size, 3))
    x = layers.RandomFlip("horizontal")(inputs)
    x = layers.RandomRotation(0.1)(x)
    x = layers.RandomZoom(0.1)(x)
    x = backbone.groups[0].layers[0](x)  # The backbone's own preprocessing.
    body = backbone.model
    body.trainable = False
    x = body(x, training=False)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.2)(x)
    outputs = layers.Dense(len(DIGITS), activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    fit = dict(validation_data=test, verbose=0)
    start = time.perf_counter()
    loss = dict(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), **loss)
    model.fit(train, epochs=args.epochs, **fit)
    head_seconds = time.perf_counter() - start
    _, head_accuracy = model.evaluate(test, verbose=0)
    start = time.perf_counter()
    if args.fine_tune_epochs:
        body.trainable = True
        model.compile(optimizer=keras.optimizers.Adam(1e-5), **loss)
        model.fit(train, epochs=args.fine_tune_epochs, **fit)
    seconds = head_seconds + time.perf_counter() - start
    _, accuracy = model.evaluate(test, verbose=0)
    return {
        "seconds": seconds,
        "accuracy": float(accuracy),
        "head_accuracy": float(head_accuracy),
    }


def task(args) -> dict:
    """`train_image_classifier` with its defaults, timed."""
    import transferkit

    options = {
        "epochs": args.epochs,
        "fine_tune_epochs": args.fine_tune_epochs,
        **json.loads(args.options or "{}"),
    }
    start = time.perf_counter()
    fitted = transferkit.train_image_classifier(
        Path(args.folder) / "train",
        test=Path(args.folder) / "test",
        backbone=args.preset or args.backbone,
        weights="imagenet" if args.preset else args.weights,
        image_size=args.size,
        seed=args.seed,
        verbose=0,
        **options,
    )
    report = fitted.report
    training = sum(phase["seconds"] for phase in report["phases"])
    return {
        "seconds": training,
        "accuracy": report["test"]["accuracy"],
        "head_accuracy": report["phases"][0]["test_accuracy"],
        "call_seconds": time.perf_counter() - start,
    }


def command_seconds(args, folder: Path) -> float:
    """`transferkit train` in a fresh process to a first trained model."""
    out = folder / "command-run"
    source = args.preset or args.backbone
    command = [
        sys.executable, "-m", "transferkit", "train", str(folder / "train"),
        "--out", str(out), "--test", str(folder / "test"), "--backbone", source,
        "--image-size", str(args.size), "--epochs", str(args.epochs),
        "--fine-tune-epochs", str(args.fine_tune_epochs), "--verbose", "0",
    ] + ([] if args.preset else ["--weights", args.weights])  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _field(item: str) -> tuple[str, object]:
    name, _, value = item.partition("=")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def table(results: dict[str, list[dict]]) -> str:
    header = ["variant", "training s", "process s", "peak MiB"]
    header += ["accuracy after the head", "test accuracy"]
    header.append("speed-up")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    guide_seconds = statistics.median(r["seconds"] for r in results["Keras guide"])
    for name, records in results.items():
        seconds = statistics.median(r["seconds"] for r in records)
        accuracy = [r["accuracy"] for r in records]
        spread = statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0
        lines.append(
            f"| {name} | {seconds:.1f} "
            f"| {statistics.median(r['process_seconds'] for r in records):.1f} "
            f"| {max(r['peak_mib'] for r in records):,.0f} "
            f"| {statistics.mean(r['head_accuracy'] for r in records):.2%} "
            f"| {statistics.mean(accuracy):.2%} ± {spread:.2%} "
            f"| {guide_seconds / seconds:.2f}x |"
        )
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", help="a keras-hub preset folder")
    parser.add_argument("--backbone", default="MobileNetV2", help="without --preset")
    parser.add_argument("--weights", default="imagenet", help="without --preset")
    parser.add_argument("--images", help="a folder with train/ and test/")
    parser.add_argument("--data", help="MNIST in mnist.npz layout (default: shipped)")
    parser.add_argument("--per-class", type=int, default=200, help="default: 200")
    parser.add_argument("--test-per-class", type=int, default=100, help="default: 100")
    parser.add_argument("--size", type=int, default=128, help="default: 128")
    parser.add_argument("--epochs", type=int, default=10, help="default: 10")
    parser.add_argument("--fine-tune-epochs", type=int, default=5, help="default: 5")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="default: 0")
    parser.add_argument("--command", action="store_true", help="time the command")
    parser.add_argument(
        "--recipes",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE[,FIELD=VALUE]",
        help="more task variants, each with recipe fields changed, e.g. "
        "augmented_views=1 fine_tune_stages=0,fine_tune_epochs=0",
    )
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--options", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        print(json.dumps({"guide": guide, "task": task}[args.variant](args)))
        return ""
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.images or write_digits(
            Path(scratch), args.data, args.per_class, args.test_per_class
        ))  # fmt: skip
        common = [
            "--folder", str(folder), "--size", str(args.size),
            "--epochs", str(args.epochs),
            "--fine-tune-epochs", str(args.fine_tune_epochs),
        ] + (["--preset", args.preset] if args.preset else [
            "--backbone", args.backbone, "--weights", args.weights])  # fmt: skip
        variants = [("Keras guide", "guide", {}), ("transferkit task", "task", {})]
        for recipe in args.recipes:
            changed = dict(_field(item) for item in recipe.split(","))
            variants.append((f"task, {recipe}", "task", changed))
        results = {name: [] for name, _, _ in variants}
        for seed in args.seeds:  # Interleaved, so that drift hits all.
            for name, variant, changed in variants:
                record = run_process(
                    [*common, "--variant", variant, "--seed", str(seed)]
                    + ["--options", json.dumps(changed)],
                    script=__file__,
                )
                results[name].append(record)
                print(f"{name}, seed {seed}: {json.dumps(record)}", flush=True)
        text = "\n".join([
            cpu_line(),
            f"{args.preset or args.backbone} at {args.size}x{args.size}; images: "
            f"{args.images or 'MNIST digits 5-9 as 64x64 RGB PNGs'} "
            f"({args.per_class} a class to train, {args.test_per_class} to test); "
            f"{args.epochs} + {args.fine_tune_epochs} epochs; seeds {args.seeds}",
            table(results),
        ])  # fmt: skip
        if args.command:
            seconds = command_seconds(args, folder)
            text += f"\n`transferkit train` to a trained model: {seconds:.1f} s"
    print(text)
    return text


if __name__ == "__main__":
    main()
