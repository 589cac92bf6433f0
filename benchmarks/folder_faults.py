"""Run folders under faults: `kill -9` at random times, and two processes
started together on one folder. Prints what it found.

    python benchmarks/folder_faults.py --kill-rounds 24 --pair-rounds 16

Each kill round starts a small two-phase plan (a convnet on synthetic
16x16 images, 4 + 4 epochs, the feature cache on disk in the folder) in a
fresh folder, kills it with SIGKILL at a random moment up to `--kills`
times, then runs it to the end, and checks the folder: every phase
finished, with its planned epochs, the freeze proven, finite weights, and
nothing but `run.json`, `run.lock` and one checkpoint left. Each pair round
starts two processes on one folder at once: one must train, the other be
refused with `FolderLockedError`, and a third run must replay the plan.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from transferkit import Speed

REFUSED = 3
"""The exit status of a child whose folder another process holds."""


def child(folder: str) -> None:
    """The plan, in its own process; prints one JSON line at the end."""
    import keras
    import numpy as np
    from keras import layers

    from transferkit import LayerGroup, TransferRun
    from transferkit.engine.epoch_guard import non_finite_variables
    from transferkit.errors import FolderLockedError

    keras.utils.set_random_seed(0)
    features = LayerGroup(
        "features",
        [layers.Conv2D(16, 3, activation="relu"), layers.Flatten()],
        input_shape=(16, 16, 1),
    )
    head = LayerGroup("head", [layers.Dense(4, activation="softmax")])
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 4096)
    x = (rng.normal(size=(4096, 16, 16, 1)) + y[:, None, None, None]).astype("f4")
    try:
        run = TransferRun(
            features + head,
            optimizer="adam",
            loss="sparse_categorical_crossentropy",
            batch_size=64,
            verbose=0,
            directory=folder,
            seed=0,
            speed=Speed(feature_cache_memory=0),
        )
    except FolderLockedError as error:
        print(json.dumps({"refused": str(error)}), flush=True)
        sys.exit(REFUSED)
    print("opened", flush=True)
    replayed = all(finished for *_, finished in run.saved_phases) and bool(
        run.saved_phases
    )
    first = run.train((x, y), epochs=4)
    second = run.fine_tune((x, y), freeze="features", epochs=4)
    print(
        json.dumps(
            {
                "epochs": [first.epochs, second.epochs],
                "frozen_unchanged": second.frozen_unchanged,
                "finite": not non_finite_variables(run.model),
                "replayed": replayed,
            }
        ),
        flush=True,
    )


def start(folder: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, "--child", str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen) -> tuple[int, dict]:
    out, err = process.communicate(timeout=600)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if process.returncode not in (0, REFUSED) or not lines:
        return process.returncode, {"error": err[-2000:]}
    return process.returncode, json.loads(lines[-1])


def check_folder(folder: Path, outcome: dict) -> list[str]:
    """What is wrong with a finished run's folder and result; empty if all
    is right."""
    from transferkit import saved_phases

    problems = []
    if outcome.get("epochs") != [4, 4]:
        problems.append(f"epochs {outcome.get('epochs')}")
    if outcome.get("frozen_unchanged") is not True or not outcome.get("finite"):
        problems.append(f"result {outcome}")
    phases = saved_phases(folder)
    if phases != [("train", 4, 4, True), ("fine_tune", 4, 4, True)]:
        problems.append(f"saved phases {phases}")
    names = sorted(p.name for p in folder.iterdir())
    state = json.loads((folder / "run.json").read_text())
    if names != sorted([state["checkpoint"], "run.json", "run.lock"]):
        problems.append(f"left in the folder: {names}")
    return problems


def kill_round(folder: Path, kills: int, span: float, rng: random.Random) -> dict:
    done = 0
    for _ in range(rng.randint(1, kills)):
        process = start(folder)
        if process.stdout.readline() != "opened\n":
            finish(process)
            break
        time.sleep(rng.uniform(0, span))
        if process.poll() is None:
            process.kill()
            done += 1
        process.communicate()
    status, outcome = finish(start(folder))
    problems = (
        [f"exit {status}: {outcome}"] if status else check_folder(folder, outcome)
    )
    return {"kills": done, "problems": problems}


def pair_round(folder: Path) -> dict:
    """Two processes at once: one trains, the other is refused, or, if it
    opened the folder after the first had finished, replays it."""
    processes = start(folder), start(folder)
    first, second = (finish(process) for process in processes)
    statuses = sorted([first[0], second[0]])
    replays = [o.get("replayed") for s, o in (first, second) if s == 0]
    right = statuses == [0, REFUSED] or (
        statuses == [0, 0] and sorted(replays) == [False, True]
    )
    status, outcome = finish(start(folder))  # Replays the finished plan.
    problems = [] if right else [f"exit statuses {statuses}, replays {replays}"]
    problems += [f"replay exit {status}"] if status else check_folder(folder, outcome)
    return {"statuses": statuses, "problems": problems}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kill-rounds", type=int, default=24)
    parser.add_argument("--kills", type=int, default=4, help="at most, per round")
    parser.add_argument("--pair-rounds", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="folder-faults-") as scratch:
        began = time.perf_counter()
        process = start(Path(scratch) / "timing")
        process.stdout.readline()
        opened = time.perf_counter()
        finish(process)
        span = time.perf_counter() - opened
        print(f"An uninterrupted plan trains for {span:.1f} s after opening.")
        kills = [
            kill_round(Path(scratch) / f"kill-{i}", args.kills, span, rng)
            for i in range(args.kill_rounds)
        ]
        pairs = [
            pair_round(Path(scratch) / f"pair-{i}") for i in range(args.pair_rounds)
        ]
        elapsed = time.perf_counter() - began
    good = sum(not round_["problems"] for round_ in kills)
    print(
        f"kill -9: {sum(r['kills'] for r in kills)} kills in {len(kills)} rounds; "
        f"{good} of {len(kills)} rounds resumed to a correct, clean folder."
    )
    good = sum(not round_["problems"] for round_ in pairs)
    refused = sum(round_["statuses"] == [0, REFUSED] for round_ in pairs)
    print(
        f"Two processes at once: {good} of {len(pairs)} rounds right ({refused} "
        "with one refused at once, the rest with the second opening the folder "
        "after the first had finished and replaying it), each leaving a clean "
        "folder that replays."
    )
    for round_ in kills + pairs:
        for problem in round_["problems"]:
            print(f"  problem: {problem}")
    print(f"({elapsed:.0f} s in all)")


if __name__ == "__main__":
    main()
