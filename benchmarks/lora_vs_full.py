"""LoRA on the top blocks of `examples/vit_digits.py`'s ViT against
fine-tuning the same blocks fully: trainable parameters, seconds per epoch
(steady: the first epoch, with its trace, apart), peak memory of the process
and accuracy on the digits 5-9. Each way runs in a process of its own, from
the same pretrained weights, so that its peak memory is its own.

    python benchmarks/lora_vs_full.py [--epochs 3] [--pretrain-epochs 4]
        [--blocks 4] [--hidden 32] [--rank 4]

Needs keras-hub (`pip install 'transferkit[hub]'`).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--way", choices=["pretrain", "full", "lora"])
    parser.add_argument("--weights", help="pretrained weights (.weights.h5)")
    return parser.parse_args(argv)


def child(args) -> dict:
    """One way, in this process: pretrain and save, or transfer and measure."""
    import keras
    import vit_digits
    from timing import EpochTimes

    keras.utils.set_random_seed(0)
    options = vit_digits.parse_args(
        ["--blocks", str(args.blocks), "--epochs", str(args.epochs)]
    )
    task = vit_digits.build_task(None, args.blocks)
    low, low_test, high, high_test = vit_digits.digits(None, 28)
    run = vit_digits.make_run(task, options)
    if args.way == "pretrain":
        run.train(low, epochs=args.pretrain_epochs, validation_data=low_test)
        task.save_weights(args.weights)
        return {}
    task.load_weights(args.weights)
    names = [group.name for group in vit_digits.block_groups(task)]
    way = vit_digits.transfer_ways(names)["LoRA rank 4 on the top blocks"]
    phase = {"freeze": way["freeze"]}
    if args.way == "lora":
        phase["lora"] = dict.fromkeys(way["lora"], args.rank)
    clock = EpochTimes()

    result = run.fine_tune(
        high,
        epochs=args.epochs,
        validation_data=high_test,
        callbacks=[clock],
        **phase,
    )
    steady = clock.times[1:]  # The first epoch traces.
    return {
        "trainable_params": result.trainable_params,
        "first_epoch_s": clock.times[0],
        "steady_epoch_s": sorted(steady)[len(steady) // 2] if steady else None,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "accuracy": result.metrics["accuracy"],
        "frozen_unchanged": result.frozen_unchanged,
        "held_variables": result.held_variables,
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.way is not None:
        print(json.dumps(child(args)))
        return
    from machine import cpu_line

    with tempfile.TemporaryDirectory() as folder:
        weights = str(Path(folder) / "pretrained.weights.h5")
        rows = {}
        for way in ("pretrain", "full", "lora"):
            command = [sys.executable, __file__, *(argv or sys.argv[1:])]
            command += ["--way", way, "--weights", weights]
            output = subprocess.run(command, capture_output=True, text=True)
            if output.returncode:
                sys.exit(output.stderr[-3000:])
            rows[way] = json.loads(output.stdout.strip().splitlines()[-1])
    print(cpu_line())
    print(
        "| top blocks | trainable parameters | first epoch s | steady epoch s | "
        "peak RSS MiB | accuracy on 5-9 | base proven |"
    )
    print("|---|---|---|---|---|---|---|")
    for way in ("full", "lora"):
        row = rows[way]
        steady = row["steady_epoch_s"]
        print(
            f"| {'fine-tuned fully' if way == 'full' else f'LoRA rank {args.rank}'} "
            f"| {row['trainable_params']:,} | {row['first_epoch_s']:.2f} | "
            f"{'-' if steady is None else f'{steady:.2f}'} | "
            f"{row['peak_rss_mib']:.0f} | {row['accuracy']:.2%} | "
            f"{row['frozen_unchanged']} |"
        )


if __name__ == "__main__":
    main()
