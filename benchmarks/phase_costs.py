"""Where a fine-tuning phase's seconds go, part by part.

Runs the reference example's two phases (`examples/mnist_digits.py`'s model,
Adadelta(1.0), batch 128, 5 + 5 epochs) as `--fast` does, with a run folder,
and splits the second phase's seconds: the data check, the cache's forward
pass, the first epoch's extra (tracing and first run of the loop's
functions), the other epochs, the checkpoints, the freeze digests, and the
rest (compiling, building the trainer model). Then the phase's floor on
this machine: the best plain forward pass of the frozen layers over the
digits the cache holds (`cache_fill.py`'s, at the fastest of batches 128,
256 and 512), the head's arithmetic for every training step and the
forward matmul of every validation step (`head_step.py`'s floor), and the
phase against it.

    python benchmarks/phase_costs.py --data ../shared/data/mnist-10k.npz
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from transferkit import Speed

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import cache_fill  # noqa: E402
import head_step  # noqa: E402
from machine import cpu_line  # noqa: E402
from timing import EpochTimes  # noqa: E402


def seconds(function, *args, **kwargs) -> float:
    """Seconds of one call of `function`."""
    began = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - began


def phase_floor(model, result, cached, validation_samples) -> dict[str, float]:
    """Seconds of the phase's floor, part by part: the frozen layers' best
    plain forward pass over the `cached` digits (training and validation),
    and the head's matmuls for the steps the phase ran."""
    layers = list(model.groups["features"].layers)
    forward = {
        batch: cache_fill.forward_seconds(layers, cached, batch)[0]
        for batch in (128, 256, 512)
    }
    best = min(forward, key=forward.get)
    policy = result.precision
    train = head_step.time_floor(result.train_samples, 3, policy)
    validate = head_step.time_floor(result.train_samples, 3, policy, backward=False)
    epochs = len(result.history["loss"])
    steps = -(-result.train_samples // 128) * epochs
    validation_steps = -(-validation_samples // 128) * epochs
    return {
        f"the frozen layers' forward pass over {len(cached):,} digits "
        f"(batch {best})": forward[best],
        f"{steps:,} training steps' matmuls ({train:.2f} ms each)": steps * train / 1e3,
        f"{validation_steps:,} validation steps' matmul ({validate:.2f} ms each)": (
            validation_steps * validate / 1e3
        ),
    }


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="a Keras-layout mnist.npz (default: the sample)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--precision", default="auto")
    parser.add_argument(
        "--first-phase-samples",
        type=int,
        default=None,
        help="digits 0-4 the first phase trains on (default: all; fewer "
        "shortens the run, and the second phase costs the same)",
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "examples"))
    import mnist_digits

    from transferkit import TransferRun, split_classes
    from transferkit.data.prepare import prepare_data
    from transferkit.datasets import mnist
    from transferkit.phases.freeze_proof import digest
    from transferkit.run_folder.directory import RunDirectory

    data = mnist.load(args.data) if args.data else mnist.load_sample()
    x = mnist_digits.to_model_input(data.x_train)
    x_test = mnist_digits.to_model_input(data.x_test)
    low, high = split_classes(x, data.y_train, [range(5), range(5, 10)])
    low_test, high_test = split_classes(x_test, data.y_test, [range(5), range(5, 10)])
    keras.utils.set_random_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        run = TransferRun(
            mnist_digits.build_model(),
            optimizer=lambda: keras.optimizers.Adadelta(1.0),
            loss="categorical_crossentropy",
            metrics=["accuracy"],
            batch_size=128,
            verbose=0,
            directory=folder,
            seed=0,
            precision=args.precision,
            speed=Speed(steps_per_execution=32, lean_step=True),
        )
        first = slice(args.first_phase_samples)
        run.train(
            (low.x[first], low.y[first]), epochs=args.epochs, validation_data=low_test
        )
        epochs = EpochTimes()
        result = run.fine_tune(
            high,
            freeze="features",
            epochs=args.epochs,
            validation_data=high_test,
            callbacks=[epochs],
        )
        # The same work again, alone: the phase checks its data, digests the
        # frozen group twice and saves at its start, after each epoch but the
        # last, and at its end.
        model = run.model
        options = {
            "model": model,
            "loss": "categorical_crossentropy",
            "batch_size": 128,
        }
        checking = seconds(prepare_data, high, "data", **options) + seconds(
            prepare_data, high_test, "validation_data", **options
        )
        digests = 2 * seconds(digest, [model.groups["features"]])
        state = {"model": "", "checkpoint": None, "phases": []}
        timing = RunDirectory(Path(folder) / "timing")
        timing.open()
        checkpoint = seconds(timing.save, model, state)
        timing.close()
    later = float(np.median(epochs.times[1:])) if len(epochs.times) > 1 else 0.0
    parts = {
        "checking the data": checking,
        "the cache's forward pass": result.cache_seconds,
        "first epoch's extra (tracing, first run)": epochs.times[0] - later,
        f"{len(epochs.times)} epochs at the later epochs' pace": later
        * len(epochs.times),
        f"{args.epochs + 1} checkpoints": checkpoint * (args.epochs + 1),
        "freeze digests, before and after": digests,
    }
    parts["the rest (compiling, the trainer model)"] = result.seconds - sum(
        parts.values()
    )
    floors = phase_floor(
        model, result, np.concatenate([high.x, high_test.x]), len(high_test.x)
    )
    lines = [
        cpu_line(),
        "",
        f"Fine-tuning phase, {result.train_samples:,} digits, {result.precision}, "
        f"{result.training_loop}: {result.seconds:.2f} s",
        "",
        "| part | seconds |",
        "|---|---|",
    ]
    lines += [f"| {name} | {seconds:.2f} |" for name, seconds in parts.items()]
    floor = sum(floors.values())
    lines += ["", "| the phase's floor | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds:.2f} |" for name, seconds in floors.items()]
    lines += [
        f"| in all | {floor:.2f} |",
        "",
        f"The phase: {result.seconds:.2f} s, {result.seconds / floor:.2f}x its floor",
    ]
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
