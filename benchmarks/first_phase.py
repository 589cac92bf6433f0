"""A step of the first phase (the whole convnet trains, no cache) in Keras'
`fit` against transferkit's own loop, with Keras' layers and with the lean
step.

Trains the reference example's model (`examples/mnist_digits.py`: two
Conv2D(32, 3), pooling, Dropout, Dense(128), Dropout, Dense(5)) with
Adadelta(1.0), batch 128, in float32, through `TransferRun.train` as the
example does, on `--samples` digits 0-4, in three ways, round after round
(so that the machine's drift touches each alike): `fit`
(`Speed(training_loop="fit")`), transferkit's loop, and the loop with the
lean step. Each round trains a fresh model for `--epochs` epochs; the first
epoch (tracing) is not counted, and each figure is the median over rounds of
the milliseconds per step of the later epochs. Whether TensorFlow runs
oneDNN's kernels is printed with the CPU; set `TF_ENABLE_ONEDNN_OPTS` to
compare.

    python benchmarks/first_phase.py --data ../shared/data/mnist-10k.npz
    TF_ENABLE_ONEDNN_OPTS=1 python benchmarks/first_phase.py --data ...
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import keras

from transferkit import Speed, TransferRun, split_classes

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "examples")]
import mnist_digits  # noqa: E402
from machine import cpu_line  # noqa: E402
from timing import EpochTimes  # noqa: E402

BATCH = 128
WAYS = {
    "Keras' fit": Speed(training_loop="fit", steps_per_execution=32),
    "transferkit's loop": Speed(training_loop="auto", steps_per_execution=32),
    "transferkit's loop, lean step": Speed(
        training_loop="auto", steps_per_execution=32, lean_step=True
    ),
}


def step_ms(speed: Speed, x, y, epochs: int, seed: int) -> float:
    """Milliseconds per step of the later epochs of one fresh run."""
    keras.utils.set_random_seed(seed)
    run = TransferRun(
        mnist_digits.build_model(),
        optimizer=lambda: keras.optimizers.Adadelta(1.0),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
        batch_size=BATCH,
        verbose=0,
        seed=seed,
        speed=speed,
    )
    timer = EpochTimes()
    run.train((x, y), epochs=epochs, callbacks=[timer])
    steps = -(-len(x) // BATCH)
    return statistics.median(timer.times[1:]) / steps * 1e3


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", help="a Keras-layout mnist.npz (default: the sample)")
    parser.add_argument("--samples", type=int, default=8192, help="digits per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="the first not counted")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error(
            f"--epochs must be at least 2 (the first is not counted), got {args.epochs}"
        )

    from transferkit.datasets import mnist

    data = mnist.load(args.data) if args.data else mnist.load_sample()
    low = split_classes(
        mnist_digits.to_model_input(data.x_train), data.y_train, [range(5)]
    )[0]
    x, y = low.x[: args.samples], low.y[: args.samples]
    timings: dict[str, list[float]] = {way: [] for way in WAYS}
    for round_ in range(args.rounds):
        for way, speed in WAYS.items():
            timings[way].append(step_ms(speed, x, y, args.epochs, seed=round_))
    fit = statistics.median(timings["Keras' fit"])
    lines = [
        cpu_line(),
        "",
        f"The example's whole convnet, float32, batch {BATCH}, {len(x):,} digits an "
        f"epoch; median of {args.rounds} rounds of the later epochs' steps",
        "",
        "| training | ms per step | against fit |",
        "|---|---|---|",
    ]
    for way, values in timings.items():
        ms = statistics.median(values)
        lines.append(f"| {way} | {ms:.1f} | {fit / ms:.2f}x |")
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
