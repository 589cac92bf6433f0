"""Transfer learning on MNIST: digits 0-4, then 5-9 with frozen features.

The classic Keras example `mnist_transfer_cnn.py`, on transferkit:

1. Train a small convnet on the digits 0-4.
2. Freeze its convolutional layers ("features") and fine-tune only the dense
   head ("classifier") on the digits 5-9, relabeled 0-4.

The original reports 99.2% test accuracy on 5-9 after transfer, on the full
MNIST set. Adadelta runs with learning_rate=1.0: that was Keras 2's default,
which the original relied on; Keras 3's default of 0.001 leaves this model
near chance after 5 epochs.

    python examples/mnist_digits.py --out runs/mnist
    python examples/mnist_digits.py --data mnist.npz --epochs 1

Without `--data`, MNIST is downloaded once by `keras.datasets.mnist`; when
that is not possible the example says so and runs on the 10,000 real digits
shipped with transferkit.

With `--out DIR` the run is kept in DIR: a checkpoint after every epoch, and
at the end `report.json`, `report.md` and PNG figures. Running the same
command again after a crash, a kill or Ctrl-C resumes where it stopped.

`--forgetting` also evaluates the old digits 0-4 after every fine-tuning
epoch: the head keeps its 5 outputs, so the report's "on digits 0-4" row and
line show what the transfer costs on the old task (docs/forgetting.md).

`--strategy mirrored` trains on every GPU of the machine (or, with
`--cpu-devices N`, on N logical devices of the CPU, to try it without a GPU);
`--strategy multi-worker` trains on several machines, one process each, every
one started with the same command and its own `TF_CONFIG`
(see docs/scaling.md).

`--fast` also runs TensorFlow's CPU operations on oneDNN's kernels, which
TensorFlow turns on by itself only on CPUs with AVX-512 features: on a
2-core AMD EPYC with AVX2 alone they took a quarter off the first phase's
steps (docs/performance.md). They are chosen as TensorFlow loads, so the
example looks for `--fast` before its imports; `TF_ENABLE_ONEDNN_OPTS=0`
keeps TensorFlow's own choice.
"""

from __future__ import annotations

import os
import sys


def prefer_onednn(argv, environ) -> bool:
    """With `--fast` in `argv`, sets `TF_ENABLE_ONEDNN_OPTS=1` in `environ`
    unless it is set already; whether it did."""
    if "--fast" not in argv or "TF_ENABLE_ONEDNN_OPTS" in environ:
        return False
    environ["TF_ENABLE_ONEDNN_OPTS"] = "1"
    return True


if "tensorflow" not in sys.modules:  # Too late once TensorFlow is loaded.
    prefer_onednn(sys.argv[1:], os.environ)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

from transferkit import LayerGroup, Speed, TransferRun, split_classes  # noqa: E402
from transferkit.datasets import mnist  # noqa: E402
from transferkit.records import (  # noqa: E402
    build_report,
    ensure_writable,
    figures_line,
    format_phase,
    format_top_losses,
    write_report,
)
from transferkit.run import PRECISIONS, is_chief  # noqa: E402
from transferkit.serving import confusion_matrix, top_losses  # noqa: E402

FAST_STEPS_PER_EXECUTION = 32
STRATEGIES = ("none", "mirrored", "multi-worker")


def build_model() -> keras.Sequential:
    """The original example's convnet, as two groups."""
    features = LayerGroup(
        "features",
        [
            layers.Conv2D(32, 3, padding="valid"),
            layers.Activation("relu"),
            layers.Conv2D(32, 3),
            layers.Activation("relu"),
            layers.MaxPooling2D(2),
            layers.Dropout(0.25),
            layers.Flatten(),
        ],
        input_shape=(28, 28, 1),
    )
    classifier = LayerGroup(
        "classifier",
        [
            layers.Dense(128),
            layers.Activation("relu"),
            layers.Dropout(0.5),
            layers.Dense(5),
            layers.Activation("softmax"),
        ],
    )
    return features + classifier


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 images (n, 28, 28) -> float32 in [0, 1], shape (n, 28, 28, 1)."""
    # In float32 throughout: 20x faster than dividing in float64 and casting,
    # with the same values.
    return np.divide(images.reshape(-1, 28, 28, 1), np.float32(255), dtype="float32")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data",
        metavar="PATH",
        help="a Keras-layout mnist.npz, or a folder with the four MNIST IDX "
        "files (gzipped or not). Default: download with keras.datasets.mnist, "
        "else the embedded sample.",
    )
    parser.add_argument(
        "--epochs",
        type=_positive_int,
        default=5,
        help="epochs of each phase (default: 5)",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=128,
        help="samples per step (default: 128)",
    )
    parser.add_argument(
        "--learning-rate",
        type=_positive_float,
        default=1.0,
        help="Adadelta's learning rate (default: 1.0, as in Keras 2; Keras 3's "
        "default is 0.001)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for Python, NumPy and TensorFlow (default: 0)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="folder that keeps the run: checkpoints (a rerun resumes), "
        "report.json, report.md and figures (default: no files)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        default=1,
        metavar="N",
        help="with --out, save a checkpoint every N epochs; the end of each "
        "phase is always saved (default: 1)",
    )
    parser.add_argument(
        "--no-check-finite",
        dest="check_finite",
        action="store_false",
        help="skip the check for NaN and infinite values in the data",
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="every speed-up that keeps the accuracy: the lean training step "
        "(Dropout on bit masks, softmax from exp and sums, fused optimizer "
        "updates), --precision auto and "
        f"--steps-per-execution {FAST_STEPS_PER_EXECUTION}, unless given; and "
        "oneDNN's CPU kernels, unless TF_ENABLE_ONEDNN_OPTS is set",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="dtype policy: auto picks mixed_bfloat16 on a CPU with bfloat16 "
        "instructions, mixed_float16 on a GPU (default: float32, or auto "
        "with --fast)",
    )
    parser.add_argument(
        "--steps-per-execution",
        type=_positive_int,
        help="training steps per call into TensorFlow (default: 1, or "
        f"{FAST_STEPS_PER_EXECUTION} with --fast)",
    )
    parser.add_argument(
        "--no-feature-cache",
        dest="feature_cache",
        action="store_false",
        help="run the frozen layers on every step of the fine-tuning instead "
        "of once (the cache is exact, and on by default)",
    )
    parser.add_argument(
        "--forgetting",
        action="store_true",
        help="also evaluate the old digits 0-4 after every fine-tuning epoch "
        "(docs/forgetting.md); the whole model's forward pass over their test "
        "digits, each epoch",
    )
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="none",
        help="none: one device; mirrored: every GPU of this machine (or the "
        "--cpu-devices); multi-worker: the machines that TF_CONFIG lists "
        "(default: none)",
    )
    parser.add_argument(
        "--cpu-devices",
        type=_positive_int,
        metavar="N",
        help="split the CPU into N logical devices, for --strategy mirrored on "
        "a machine without GPUs (they share the same cores)",
    )
    parser.add_argument(
        "--verbose",
        choices=["auto", "0", "1", "2"],
        default="auto",
        help="Keras progress output (default: auto)",
    )
    args = parser.parse_args(argv)
    if args.precision is None:
        args.precision = "auto" if args.fast else "float32"
    if args.steps_per_execution is None:
        args.steps_per_execution = FAST_STEPS_PER_EXECUTION if args.fast else 1
    if args.cpu_devices and args.strategy != "mirrored":
        parser.error("--cpu-devices goes with --strategy mirrored")
    return args


def make_strategy(name: str, cpu_devices: int | None):
    """The `tf.distribute` strategy `--strategy` names, or `None`. Made before
    anything else runs in TensorFlow, as multi-worker training requires."""
    import tensorflow as tf

    if name == "multi-worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        if cpu_devices:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_devices
            )
            return tf.distribute.MirroredStrategy(
                [f"/cpu:{index}" for index in range(cpu_devices)]
            )
        return tf.distribute.MirroredStrategy()
    return None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, received {text!r}"
        )
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(
            f"expected a positive number, received {text!r}"
        )
    return value


def report_settings(args, run, strategy, resumed: bool, sample: bool) -> dict:
    """The command line's settings, as the report keeps them."""
    return {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "optimizer": f"Adadelta(learning_rate={args.learning_rate})",
        "embedded_sample": sample,
        # total_seconds adds the earlier processes' time on the phases.
        "resumed": resumed,
        "fast": args.fast,
        "precision": run.precision,
        "precision_reason": run.precision_reason,
        "feature_cache": args.feature_cache,
        "steps_per_execution": args.steps_per_execution,
        "lean_step": args.fast,
        # As this process's TensorFlow loaded (unset: TensorFlow's choice).
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "strategy": args.strategy,
        "forgetting": args.forgetting,
        "replicas": 1 if strategy is None else strategy.num_replicas_in_sync,
    }


def main(argv=None) -> dict:
    """Runs the experiment; returns the report (also written with --out)."""
    args = parse_args(argv)
    start = time.perf_counter()
    strategy = make_strategy(args.strategy, args.cpu_devices)
    chief = strategy is None or is_chief(strategy)
    if args.out and chief:
        ensure_writable(args.out)  # Fail before training, not after.
    keras.utils.set_random_seed(args.seed)

    data = mnist.load(args.data)
    if data.notice:
        print(data.notice, flush=True)
    x_train, x_test = to_model_input(data.x_train), to_model_input(data.x_test)
    digit_lists = [range(0, 5), range(5, 10)]
    low_train, high_train = split_classes(x_train, data.y_train, digit_lists)
    low_test, high_test = split_classes(x_test, data.y_test, digit_lists)
    del x_train, x_test  # The subsets hold their own copies.

    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = build_model()
    run = TransferRun(
        model,
        optimizer=lambda: keras.optimizers.Adadelta(args.learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
        batch_size=args.batch_size,
        verbose=args.verbose if args.verbose == "auto" else int(args.verbose),
        directory=args.out,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        check_finite=args.check_finite,
        precision=args.precision,
        strategy=strategy,
        speed=Speed(
            feature_cache=args.feature_cache,
            steps_per_execution=args.steps_per_execution,
            lean_step=args.fast,
        ),
    )
    if run.precision != "float32":
        print(f"Precision: {run.precision} ({run.precision_reason}).", flush=True)
    resumed = bool(run.saved_phases)
    for name, done, epochs, finished in run.saved_phases:
        state = "finished" if finished else f"resuming after epoch {done} of {epochs}"
        print(f"Phase '{name}' in {args.out}: {state}.", flush=True)
    run.train(low_train, epochs=args.epochs, validation_data=low_test)
    last = run.fine_tune(
        high_train,
        freeze=["features"],
        epochs=args.epochs,
        validation_data=high_test,
        # The old task through the same 5 outputs: what the transfer costs.
        also_evaluate={"digits 0-4": low_test} if args.forgetting else None,
    )

    mistakes = top_losses(
        run.model, high_test, phase=last.name, batch_size=args.batch_size
    )
    report = build_report(
        run.results,
        dataset=data.source,
        total_seconds=time.perf_counter() - start + run.earlier_seconds,
        settings=report_settings(args, run, strategy, resumed, data.is_sample),
        confusion=confusion_matrix(
            run.model, high_test, phase=last.name, batch_size=args.batch_size
        ),
        top_losses=mistakes,
    )
    print()
    for phase in report["phases"]:
        print(format_phase(phase), end="\n\n")
    print(f"Total: {report['total_seconds']:.1f} s on {data.source}")
    print("\n" + "\n".join(format_top_losses(report)))
    if args.out and run.is_chief:
        images = {"top_losses": mistakes.images}
        json_path, md_path = write_report(args.out, report, images=images)
        print(f"Wrote {json_path} and {md_path}")
        print(figures_line(report))
    run.close()  # Another process may now write the folder.
    return report


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt as interrupt:
        print(f"\n{interrupt or 'Interrupted.'}", file=sys.stderr)
        sys.exit(130)
    except (OSError, ValueError, FloatingPointError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
