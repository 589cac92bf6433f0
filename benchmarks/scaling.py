"""Times the reference example on one device, on two logical CPU devices
(MirroredStrategy) and on two worker processes (MultiWorkerMirroredStrategy,
127.0.0.1 ports), and prints each phase's seconds and accuracy.

    python benchmarks/scaling.py --data ../shared/data/mnist-10k.npz --repeats 3

On a CPU, logical devices and local workers share the same cores: the table
shows what a strategy costs in synchronisation, not what more hardware gains.
Each configuration runs `examples/mnist_digits.py --out DIR` in its own
processes (the two workers with one `TF_CONFIG` each and one shared DIR);
the phase seconds come from the chief's `report.json`.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mnist_digits.py"
CONFIGURATIONS = {
    "one device": 0,
    "MirroredStrategy, 2 logical CPU devices": 1,
    "MultiWorkerMirroredStrategy, 2 workers": 2,
}
"""Each configuration: 0 one process, 1 one process with two logical CPU
devices, 2 two worker processes."""


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run(kind: int, data: Path, epochs: int, folder: Path, options=()) -> dict:
    """Runs the example as `kind` says; returns the process seconds and the
    chief's report."""
    command = [sys.executable, str(EXAMPLE), "--data", str(data), "--out", str(folder)]
    command += ["--epochs", str(epochs), "--verbose", "0", *options]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    paths = [str(ROOT), env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    environments = [env]
    if kind == 1:
        command += ["--strategy", "mirrored", "--cpu-devices", "2"]
    elif kind == 2:
        command += ["--strategy", "multi-worker"]
        cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
        environments = [
            {
                **env,
                "TF_CONFIG": json.dumps(
                    {"cluster": cluster, "task": {"type": "worker", "index": index}}
                ),
            }
            for index in range(2)
        ]
    start = time.perf_counter()
    processes = [
        subprocess.Popen(
            command, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for e in environments
    ]
    errors = [process.communicate()[1] for process in processes]
    seconds = time.perf_counter() - start
    for process, error in zip(processes, errors, strict=True):
        if process.returncode:
            raise RuntimeError(f"{' '.join(command)} failed:\n{error}")
    report = json.loads((folder / "report.json").read_text())
    return {"process": seconds, "phases": report["phases"]}


def table(results: dict[str, list[dict]]) -> str:
    def median(name, key):
        return statistics.median(key(r) for r in results[name])

    header = [
        "configuration",
        "phase 1 s",
        "phase 2 s",
        "process s",
        "test acc 0-4",
        "test acc 5-9",
        "phase 2 training loop",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, runs in results.items():
        cells = [
            name,
            f"{median(name, lambda r: r['phases'][0]['seconds']):.1f}",
            f"{median(name, lambda r: r['phases'][1]['seconds']):.1f}",
            f"{median(name, lambda r: r['process']):.1f}",
            f"{median(name, lambda r: r['phases'][0]['test_accuracy']):.2%}",
            f"{median(name, lambda r: r['phases'][1]['test_accuracy']):.2%}",
            runs[0]["phases"][1]["training_loop"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
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
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument(
        "--fast", action="store_true", help="pass --fast to every configuration"
    )
    args = parser.parse_args(argv)
    options = ["--fast"] if args.fast else []

    sample = importlib.resources.files("transferkit.datasets") / "mnist_sample.npz"
    with (
        tempfile.TemporaryDirectory() as scratch,
        importlib.resources.as_file(sample) as sample_path,
    ):
        data = Path(args.data) if args.data else sample_path
        results: dict[str, list[dict]] = {name: [] for name in CONFIGURATIONS}
        for repeat in range(args.repeats):  # Interleaved: drift hits all.
            for name, kind in CONFIGURATIONS.items():
                folder = Path(scratch) / f"run{repeat}-{kind}"
                results[name].append(run(kind, data, args.epochs, folder, options))
            print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr)
    text = (
        f"Data: {args.data or 'transferkit sample'}; {args.epochs} + {args.epochs} "
        f"epochs{' --fast' * args.fast}; median of {args.repeats}\n\n" + table(results)
    )
    print(text)
    return text


if __name__ == "__main__":
    main()
