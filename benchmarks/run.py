"""Times the reference experiment: plain Keras 3 against transferkit.

Runs, interleaved and each in its own process, the plain Keras script
(`benchmarks/plain_keras_transfer.py`) and transferkit's example
(`examples/mnist_digits.py --out`, which checkpoints every epoch and writes a
report) without and with `--fast`, and with `--fast --precision float32` (what
`--fast` gives on a CPU without bfloat16 instructions), on the same data, seed
and epochs, and
prints the medians: seconds per phase and for the whole process, test
accuracy per phase, peak memory, and the plain script's times as multiples
of each variant's (its speed-up).

    python benchmarks/run.py --data ../shared/data/mnist-10k.npz --repeats 3
    python benchmarks/run.py --synthesize 70000 --repeats 1

`--variants plain-onednn,fast-eigen` adds the plain script with oneDNN's
CPU kernels on (`TF_ENABLE_ONEDNN_OPTS=1`) and `--fast` with them off: on a
CPU where TensorFlow leaves oneDNN off (one without AVX-512 features),
`--fast` turns it on, and these tell its share from transferkit's.

`--synthesize N` times an MNIST-sized set of N digits (6/7 train, 1/7 test)
made by repeating the data's digits with small random shifts: for timing
only, its accuracies mean little.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PLAIN = ROOT / "benchmarks" / "plain_keras_transfer.py"
EXAMPLE = ROOT / "examples" / "mnist_digits.py"
VARIANTS = {
    "plain Keras 3": None,
    "transferkit": (),
    "transferkit --fast": ("--fast",),
    # What --fast gives where the CPU has no bfloat16 instructions.
    "transferkit --fast --precision float32": ("--fast", "--precision", "float32"),
    # Where TensorFlow leaves oneDNN off (CPUs without AVX-512), --fast turns
    # it on; these two tell its share from transferkit's.
    "plain Keras 3, TF_ENABLE_ONEDNN_OPTS=1": None,
    "transferkit --fast, TF_ENABLE_ONEDNN_OPTS=0": ("--fast",),
}
"""Each variant's example options; `None` for the plain script."""

ENVIRONMENTS = {
    "plain Keras 3, TF_ENABLE_ONEDNN_OPTS=1": {"TF_ENABLE_ONEDNN_OPTS": "1"},
    "transferkit --fast, TF_ENABLE_ONEDNN_OPTS=0": {"TF_ENABLE_ONEDNN_OPTS": "0"},
}
"""What a variant's process finds in its environment beside the caller's."""

VARIANT_KEYS = dict(
    zip(
        ("plain", "default", "fast", "fast-float32", "plain-onednn", "fast-eigen"),
        VARIANTS,
        strict=True,
    )
)
"""The variants by the names `--variants` takes."""

DEFAULT_VARIANTS = ("plain", "default", "fast", "fast-float32")
"""The variants run when `--variants` is not given."""


def run_process(command: list[str], environment=None) -> tuple[float, float, str]:
    """Runs `command` (with `environment` added to this process's
    variables); returns wall seconds, its peak RSS in MiB and stdout."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(environment or {})}
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), env.get("PYTHONPATH")])
    )
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        # wait4 reports this child's own peak memory (Linux: in KiB).
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if process.returncode:
        raise RuntimeError(
            f"{' '.join(command)} failed with {process.returncode}:\n{stderr}"
        )
    return seconds, usage.ru_maxrss / 1024, stdout


def time_plain(data: Path, epochs: int, seed: int, environment=None) -> dict:
    command = [sys.executable, str(PLAIN), "--data", str(data)]
    command += ["--epochs", str(epochs), "--seed", str(seed)]
    seconds, peak, stdout = run_process(command, environment)
    phases = json.loads(stdout.strip().splitlines()[-1])["phases"]
    return {"process": seconds, "peak_mib": peak, "phases": phases}


def time_transferkit(
    data: Path, epochs: int, seed: int, folder: Path, options=(), environment=None
) -> dict:
    command = [sys.executable, str(EXAMPLE), "--data", str(data), "--out", str(folder)]
    command += ["--epochs", str(epochs), "--seed", str(seed), "--verbose", "0"]
    command += list(options)
    seconds, peak, _ = run_process(command, environment)
    report = json.loads((folder / "report.json").read_text())
    return {"process": seconds, "peak_mib": peak, "phases": report["phases"]}


def synthesize(source: Path, size: int, target: Path, seed: int) -> Path:
    """An MNIST-layout file of `size` digits, repeated from `source` with
    random shifts of up to two pixels."""
    rng = np.random.default_rng(seed)
    with np.load(source) as data:
        images = np.concatenate([data["x_train"], data["x_test"]])
        labels = np.concatenate([data["y_train"], data["y_test"]])
    pick = rng.integers(0, len(images), size)
    shifted = np.empty((size, 28, 28), np.uint8)
    shifts = rng.integers(-2, 3, (size, 2))
    for index, (source_index, (dy, dx)) in enumerate(zip(pick, shifts, strict=True)):
        shifted[index] = np.roll(images[source_index], (dy, dx), axis=(0, 1))
    split = size * 6 // 7
    np.savez(
        target,
        x_train=shifted[:split],
        y_train=labels[pick[:split]],
        x_test=shifted[split:],
        y_test=labels[pick[split:]],
    )
    return target


def table(results: dict[str, list[dict]]) -> str:
    def median(variant, key):
        return statistics.median(key(run) for run in results[variant])

    rows = []
    plain_times = plain_accuracy = None
    for variant in results:
        phase1 = median(variant, lambda r: r["phases"][0]["seconds"])
        phase2 = median(variant, lambda r: r["phases"][1]["seconds"])
        total = median(variant, lambda r: r["process"])
        accuracy = median(variant, lambda r: r["phases"][1]["test_accuracy"])
        if plain_times is None:
            plain_times, plain_accuracy = (phase1, phase2, total), accuracy
        rows.append(
            [
                variant,
                f"{phase1:.1f}",
                f"{phase2:.1f}",
                f"{total:.1f}",
                f"{median(variant, lambda r: r['phases'][0]['test_accuracy']):.2%}",
                f"{accuracy:.2%}",
                f"{(accuracy - plain_accuracy) * 100:+.2f}",
                f"{median(variant, lambda r: r['peak_mib']):.0f}",
                f"{plain_times[0] / phase1:.2f}x",
                f"{plain_times[1] / phase2:.2f}x",
                f"{plain_times[2] / total:.2f}x",
            ]
        )
    header = [
        "variant",
        "phase 1 s",
        "phase 2 s",
        "process s",
        "test acc 0-4",
        "test acc 5-9",
        "5-9 vs plain (pp)",
        "peak MiB",
        "phase 1 speed-up",
        "phase 2 speed-up",
        "process speed-up",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "--data", help="a Keras-layout mnist.npz (default: transferkit's sample)"
    )
    parser.add_argument("--synthesize", type=int, metavar="N", help="time N digits")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help="comma-separated, of "
        + ", ".join(VARIANT_KEYS)
        + " (default: "
        + ",".join(DEFAULT_VARIANTS)
        + "; the first is the baseline)",
    )
    args = parser.parse_args(argv)
    chosen = {}
    for key in args.variants.split(","):
        if key not in VARIANT_KEYS:
            parser.error(
                f"unknown variant {key!r}; expected one of {list(VARIANT_KEYS)}"
            )
        chosen[VARIANT_KEYS[key]] = VARIANTS[VARIANT_KEYS[key]]

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        sample = importlib.resources.files("transferkit.datasets") / "mnist_sample.npz"
        with importlib.resources.as_file(sample) as sample_path:
            data = Path(args.data) if args.data else sample_path
            if args.synthesize:
                data = synthesize(
                    data, args.synthesize, scratch / "synth.npz", args.seed
                )
            results: dict[str, list[dict]] = {name: [] for name in chosen}
            for repeat in range(args.repeats):  # Interleaved: drift hits all.
                for index, (name, options) in enumerate(chosen.items()):
                    environment = ENVIRONMENTS.get(name)
                    if options is None:
                        timing = time_plain(data, args.epochs, args.seed, environment)
                    else:
                        folder = scratch / f"run{repeat}-{index}"
                        timing = time_transferkit(
                            data, args.epochs, args.seed, folder, options, environment
                        )
                    results[name].append(timing)
                print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr)
    text = (
        f"Data: {args.data or 'transferkit sample'}"
        + (f", synthesized to {args.synthesize} digits" if args.synthesize else "")
        + f"; {args.epochs} + {args.epochs} epochs; median of {args.repeats}\n\n"
        + table(results)
    )
    print(text)
    return text


if __name__ == "__main__":
    main()
