"""Two worker processes under MultiWorkerMirroredStrategy, on 127.0.0.1
ports: identical models, frozen groups unchanged, a resume after both are
killed, and a clear error when one of them dies.

Each test starts `tests/worker.py` twice; every wait is bounded."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("worker.py")
TIMEOUT = 240
"""Seconds a test waits for its workers at most."""


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ",".join(map(str, ports))


class Cluster:
    """Two workers of one run, started together."""

    def __init__(self, tmp_path, *options):
        self.tmp_path = tmp_path
        self.directory = tmp_path / "run"
        self.options = [str(option) for option in options]
        self.processes = []
        self.outputs = []

    def start(self, directories=None):
        """Starts both workers, each with its folder of `directories` (by
        default both with the run's one)."""
        directories = directories or [self.directory] * 2
        ports = free_ports(2)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
        self.processes, self.outputs = [], []
        for index in range(2):
            out = self.tmp_path / f"worker{index}.npz"
            out.unlink(missing_ok=True)
            log = open(self.tmp_path / f"worker{index}.log", "w")  # noqa: SIM115
            self.outputs.append(out)
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, str(WORKER), str(index), ports]
                    + ["--directory", str(directories[index]), "--out", str(out)]
                    + self.options,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=WORKER.parent,
                )
            )
            log.close()
        return self

    def wait(self, *indices, timeout=TIMEOUT):
        """Exit statuses of the workers `indices` (all by default)."""
        deadline = time.monotonic() + timeout
        statuses = []
        for index in indices or range(len(self.processes)):
            left = max(1, deadline - time.monotonic())
            try:
                statuses.append(self.processes[index].wait(timeout=left))
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(
                    f"worker {index} still running after {timeout} s:\n"
                    f"{self.log(index)}"
                )
        return statuses

    def kill(self, *indices):
        for index in indices or range(len(self.processes)):
            process = self.processes[index]
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()

    def log(self, index):
        return (self.tmp_path / f"worker{index}.log").read_text()

    def epochs_saved(self, phase):
        """Epochs of phase `phase` (0, 1) that the chief's run.json records."""
        try:
            state = json.loads((self.directory / "run.json").read_text())
        except (OSError, ValueError):
            return 0
        phases = state.get("phases", [])
        return phases[phase]["epochs_done"] if len(phases) > phase else 0

    def wait_for_epochs(self, phase, epochs, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while self.epochs_saved(phase) < epochs:
            if time.monotonic() > deadline or any(
                p.poll() is not None for p in self.processes
            ):
                self.kill()
                pytest.fail(
                    f"phase {phase} did not reach {epochs} saved epochs:\n"
                    f"{self.log(0)}\n{self.log(1)}"
                )
            time.sleep(0.1)

    def finish(self):
        statuses = self.wait()
        assert statuses == [0, 0], f"{self.log(0)}\n{self.log(1)}"
        return [Output(np.load(out)) for out in self.outputs]


class Output:
    """What a worker wrote at the end."""

    def __init__(self, archive):
        self.weights = [archive[f"arr_{i}"] for i in range(len(archive.files) - 3)]
        self.results = json.loads(str(archive["results"]))
        self.evaluation = json.loads(str(archive["evaluation"]))
        self.is_chief = bool(archive["is_chief"])


def assert_same_model(chief, other):
    assert len(chief.weights) == len(other.weights) > 0
    for a, b in zip(chief.weights, other.weights, strict=True):
        assert a.tobytes() == b.tobytes()


def test_two_workers_train_one_model_and_only_the_chief_writes(tmp_path):
    # The first phase trains on arrays, sharded per worker; the second on a
    # dataset, which the strategy shards.
    cluster = Cluster(tmp_path, "--refusals", "--dataset").start()
    chief, other = cluster.finish()

    assert (chief.is_chief, other.is_chief) == (True, False)
    assert_same_model(chief, other)
    for ours, theirs in zip(chief.results, other.results, strict=True):
        assert ours["history"] == theirs["history"]  # Metrics of all replicas.
    train, fine_tune = chief.results
    assert train["training_loop"] == (
        "transferkit's, 4 steps per call; MultiWorkerMirroredStrategy, 2 workers "
        "of 1 replica, this one worker 0 (the chief)"
    )
    assert fine_tune["frozen_unchanged"] is True
    assert fine_tune["cache"].startswith("not used: `data` is a tf.data.Dataset")
    assert fine_tune["training_loop"] == (
        "transferkit's, 32 steps per call; MultiWorkerMirroredStrategy, 2 workers "
        "of 1 replica, this one worker 0 (the chief); the dataset sharded by the "
        "strategy"
    )
    assert len(fine_tune["history"]["loss"]) == 3
    assert chief.evaluation == other.evaluation
    assert chief.evaluation["loss"] == pytest.approx(fine_tune["metrics"]["loss"])
    # The chief's folder holds its state, one checkpoint and its lock.
    assert sorted(p.name for p in cluster.directory.iterdir()) == [
        "checkpoint-000007.keras",
        "run.json",
        "run.lock",
    ]
    refused = [line for line in cluster.log(1).splitlines() if "REFUSED" in line]
    assert refused == [
        "REFUSED Keras 3's fit fails under MultiWorkerMirroredStrategy "
        "(keras-team/keras#20585); transferkit trains such a run with its own "
        "loop. Expected training_loop='auto'. Received: training_loop='fit'",
    ]


def test_killing_both_workers_mid_phase_resumes_from_the_chiefs_folder(tmp_path):
    options = ("--epochs", 2, 12, "--epoch-seconds", 0.3)
    cluster = Cluster(tmp_path, *options).start()
    cluster.wait_for_epochs(phase=1, epochs=3)
    cluster.kill()
    saved = cluster.epochs_saved(phase=1)
    assert 3 <= saved < 12

    # A worker that does not see the chief's folder stops them both.
    cluster.start(directories=[cluster.directory, tmp_path / "elsewhere"])
    assert cluster.wait() == [3, 3]
    for index in range(2):
        assert (
            "ERROR CheckpointError: The workers read different states of the run "
            f"folder '{[cluster.directory, tmp_path / 'elsewhere'][index]}' (this "
            f"is worker {index} of 2): every worker resumes from the chief's folder"
        ) in cluster.log(index)
    assert cluster.epochs_saved(phase=1) == saved

    chief, other = cluster.start().finish()

    assert f"PHASE fine_tune: resuming after epoch {saved} of 12" in cluster.log(1)
    assert "PHASE train: finished" in cluster.log(0)
    assert_same_model(chief, other)
    fine_tune = chief.results[1]
    assert fine_tune["frozen_unchanged"] is True
    assert fine_tune["cache"].startswith("0.0 MiB in memory")  # Each worker's shard.
    assert len(fine_tune["history"]["loss"]) == 12
    for ours, theirs in zip(chief.results, other.results, strict=True):
        assert ours["history"] == theirs["history"]
        assert ours["frozen_unchanged"] == theirs["frozen_unchanged"]


@pytest.mark.parametrize("dead, survivor", [(1, 0), (0, 1)], ids=["worker", "chief"])
def test_a_worker_that_dies_stops_the_other_with_a_clear_error(
    tmp_path, dead, survivor
):
    cluster = Cluster(tmp_path, "--epochs", 2, 200, "--epoch-seconds", 0.1).start()
    cluster.wait_for_epochs(phase=1, epochs=2)
    cluster.kill(dead)

    [status] = cluster.wait(survivor, timeout=120)

    log = cluster.log(survivor)
    assert status == 3, log
    assert (
        f"ERROR WorkerLostError: Worker {survivor} of 2 stopped while training "
        "phase 'fine_tune': another worker of the cluster stopped answering"
    ) in log
    assert (
        "Start every worker again with the same command to resume from the "
        f"last saved epoch in '{cluster.directory}'."
    ) in log
