"""Forgetting, measured: what fine-tuning on the digits 5-9 costs on 0-4.

The reference experiment (`examples/mnist_digits.py`'s model, Adadelta(1.0),
batch 128, seed 0): train on the digits 0-4, then fine-tune the head on 5-9
with the features frozen, evaluating the old digits 0-4 after every epoch
(`also_evaluate=`). The head keeps its 5 outputs, so output k, which meant
digit k, comes to mean digit 5+k: the first table shows the old task's
accuracy falling epoch by epoch.

Then the recipe that keeps both: the model trained on 0-4 with its head
grown to 10 outputs (`grow_head`, the old units' weights kept), fine-tuned
(features frozen) on 5-9 alone, on 5-9 with a few hundred old digits
replayed, and on all of 0-9, each evaluated on the test digits 0-4 and 5-9
after every epoch.

    python benchmarks/forgetting.py --data ../shared/data/mnist-10k.npz

Prints the tables that docs/forgetting.md quotes; with `--out DIR`, also the
reports and learning curves of the runs, a folder each.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import keras
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "examples"))

import mnist_digits  # noqa: E402
from machine import cpu_line  # noqa: E402

from transferkit import TransferRun, clone_model, grow_head, split_classes  # noqa: E402
from transferkit.datasets import mnist  # noqa: E402
from transferkit.records import build_report, write_report  # noqa: E402

OLD, NEW = "digits 0-4", "digits 5-9"
VARIANTS = ("5-9", "5-9 + replay", "0-9")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="a Keras-layout mnist.npz (default: the sample)")
    parser.add_argument("--epochs", type=int, default=5, help="of each phase")
    parser.add_argument(
        "--replay", type=int, default=500, help="old training digits replayed"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="a folder for the runs' reports and figures")
    return parser.parse_args(argv)


def make_run(model, seed: int) -> TransferRun:
    """The reference example's run: Adadelta(1.0), batches of 128."""
    return TransferRun(
        model,
        optimizer=lambda: keras.optimizers.Adadelta(1.0),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
        batch_size=128,
        verbose=0,
        seed=seed,
    )


def halves(data):
    """`{"train": (low, high), "test": (low, high)}` as `ClassSubset`s
    (labels 0-4 in each), and the same as `(x, y)` with the original labels."""
    parts = {}
    for part in ("train", "test"):
        x = mnist_digits.to_model_input(getattr(data, f"x_{part}"))
        y = getattr(data, f"y_{part}")
        parts[part] = split_classes(x, y, [range(5), range(5, 10)])
    original = {
        part: [(half.x, np.asarray(half.classes)[half.y]) for half in pair]
        for part, pair in parts.items()
    }
    return parts, original


def save(run, args, name: str, dataset: str) -> None:
    if args.out:
        report = build_report(run.results, dataset=dataset, total_seconds=0.0)
        write_report(Path(args.out) / name, report)


def forgetting(args, parts, dataset):
    """Train on 0-4, then fine-tune the same 5 outputs on 5-9, the old
    digits evaluated after every epoch. Returns the model trained on 0-4,
    grown to 10 outputs before the fine-tuning, and the table's rows."""
    (low, high), (low_test, high_test) = parts["train"], parts["test"]
    keras.utils.set_random_seed(args.seed)
    run = make_run(mnist_digits.build_model(), args.seed)
    first = run.train(low, epochs=args.epochs, validation_data=low_test)
    keras.utils.set_random_seed(args.seed)  # The new units' draw.
    grown = grow_head(run.model, 10)  # New layers: the fine-tuning leaves it.
    second = run.fine_tune(
        high, freeze=["features"], epochs=args.epochs, validation_data=high_test,
        also_evaluate={OLD: low_test},
    )  # fmt: skip
    save(run, args, "reference", dataset)
    rows = [("trained on 0-4", first.metrics["accuracy"], None)]
    old, new = second.history["digits_0_4_accuracy"], second.history["val_accuracy"]
    rows += [
        (f"fine-tuned on 5-9, epoch {epoch}", o, n)
        for epoch, (o, n) in enumerate(zip(old, new, strict=True), start=1)
    ]
    return grown, rows


def growing(args, grown, original, dataset):
    """Each variant fine-tunes its own copy of the grown model (features
    frozen); the accuracy on both halves before, and after every epoch."""
    (x_low, y_low), (x_high, y_high) = original["train"]
    tests = dict(zip((OLD, NEW), original["test"], strict=True))
    before = [accuracy(grown, *tests[name]) for name in (OLD, NEW)]
    rows = [("grown to 10 outputs", "-", *before)]
    for variant in VARIANTS:
        old = {"5-9": 0, "5-9 + replay": args.replay, "0-9": len(y_low)}[variant]
        x = np.concatenate([x_high, x_low[:old]])
        y = np.concatenate([y_high, y_low[:old]])
        run = make_run(clone_model(grown), args.seed)
        result = run.fine_tune(
            (x, y), freeze=["features"], epochs=args.epochs, also_evaluate=tests
        )
        save(run, args, "grown " + variant, dataset)
        history = result.history
        rows += [
            (
                f"fine-tuned on {variant} ({len(y)})",
                epoch + 1,
                history["digits_0_4_accuracy"][epoch],
                history["digits_5_9_accuracy"][epoch],
            )
            for epoch in range(result.epochs)
        ]
    return rows


def accuracy(model, x, y) -> float:
    predicted = np.argmax(model.predict(x, batch_size=512, verbose=0), axis=-1)
    return float(np.mean(predicted == y))


def main(argv=None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    data = mnist.load(args.data) if args.data else mnist.load_sample()
    parts, original = halves(data)
    (low, high), (low_test, high_test) = parts["train"], parts["test"]
    print(
        f"Training digits: {len(low.y)} of 0-4, {len(high.y)} of 5-9; test: "
        f"{len(low_test.y)} and {len(high_test.y)}; {args.epochs} epochs a phase"
    )
    grown, rows = forgetting(args, parts, data.source)
    print("\nThe reference experiment: one 5-output head, features frozen")
    print(f"{'':<36}{'0-4 accuracy':>14}{'5-9 accuracy':>14}")
    for label, old, new in rows:
        shown = "-" if new is None else f"{new:.2%}"
        print(f"{label:<36}{old:>14.2%}{shown:>14}")
    rows = growing(args, grown, original, data.source)
    print("\nThe head grown to 10 outputs after 0-4, features frozen")
    print(f"{'':<36}{'epoch':>6}{'0-4 accuracy':>14}{'5-9 accuracy':>14}")
    for label, epoch, old, new in rows:
        print(f"{label:<36}{epoch!s:>6}{old:>14.2%}{new:>14.2%}")
    print(f"\n{time.perf_counter() - started:.0f} s; {cpu_line()}; {data.source}")


if __name__ == "__main__":
    main()
