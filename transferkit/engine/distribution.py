"""A run under a `tf.distribute` strategy: several devices, several machines.

`Distribution` is what a `TransferRun` needs to know of its strategy: how
many replicas share a step and how many of them are on this machine, which
worker this process is and whether it is the chief (the one that writes the
run's folder), which rows of the data are this worker's, and how to wait
for the other workers. Without a strategy it describes one device, and
every method is a no-op or the identity.

Two strategies are accepted:

- `tf.distribute.MirroredStrategy`: the devices of one machine (GPUs, or
  logical CPU devices), one process;
- `tf.distribute.MultiWorkerMirroredStrategy`: several machines, one process
  per machine, each started with its own `TF_CONFIG`. Keras 3's `fit` fails
  under it (keras-team/keras#20585), so transferkit trains such a run with
  its own loop (`transferkit.engine.loop`).

Others (`TPUStrategy`, `ParameterServerStrategy`, `CentralStorageStrategy`,
`OneDeviceStrategy`) are refused with a message rather than failing deep
inside TensorFlow.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from transferkit.errors import WorkerLostError

__all__ = [
    "Distribution",
    "is_chief",
    "local_values",
    "replica_copies",
]

_LOST_WORKER = (
    tf.errors.UnavailableError,
    tf.errors.CancelledError,
    tf.errors.DeadlineExceededError,
    tf.errors.AbortedError,
)
"""What TensorFlow raises in a collective when a peer is gone: its health
check aborts the collectives with `UnavailableError`; a collective cut off
mid-transfer may end with any of these."""


class Distribution:
    """The run's strategy, as the phases need it.

    Args:
        strategy: a `tf.distribute.MirroredStrategy` or
            `tf.distribute.MultiWorkerMirroredStrategy`, or `None` for one
            device.

    Raises:
        TypeError: for another kind of strategy.
    """

    def __init__(self, strategy: tf.distribute.Strategy | None):
        if strategy is not None and not isinstance(
            strategy,
            (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy),
        ):
            raise TypeError(
                "Expected `strategy` to be a tf.distribute.MirroredStrategy (the "
                "devices of one machine) or a "
                "tf.distribute.MultiWorkerMirroredStrategy (several machines). "
                f"Received: strategy of type {type(strategy).__name__}"
            )
        self.strategy = strategy
        self.replicas = 1 if strategy is None else strategy.num_replicas_in_sync
        self.local_replicas = (
            1 if strategy is None else len(strategy.extended.worker_devices)
        )
        self.workers = self.replicas // self.local_replicas
        self.worker, self.is_chief = _task(strategy)

    @property
    def multi_worker(self) -> bool:
        """Whether the run spans several worker processes."""
        return self.workers > 1

    @property
    def first_replica(self) -> int:
        """The number, in the whole cluster, of this worker's first replica
        (TensorFlow numbers them worker by worker)."""
        return self.worker * self.local_replicas

    @property
    def host(self) -> str:
        """This worker's CPU, where the data is held and batches gathered."""
        if self.strategy is None:
            return "/device:CPU:0"
        device = tf.DeviceSpec.from_string(self.strategy.extended.worker_devices[0])
        return device.replace(device_type="CPU", device_index=0).to_string()

    def describe(self) -> str:
        """E.g. `"MirroredStrategy, 2 replicas"`, `"MultiWorkerMirroredStrategy,
        2 workers of 1 replica, this one worker 1"`; `""` for one device."""
        if self.strategy is None:
            return ""
        name = (
            "MultiWorkerMirroredStrategy"
            if isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy)
            else type(self.strategy).__name__
        )
        if not self.multi_worker:
            return f"{name}, {_count(self.replicas, 'replica')}"
        return (
            f"{name}, {self.workers} workers of "
            f"{_count(self.local_replicas, 'replica')}, this one worker "
            f"{self.worker}{' (the chief)' * self.is_chief}"
        )

    def scope(self) -> contextlib.AbstractContextManager:
        """The strategy's scope: variables and optimizers made inside it are
        mirrored on every replica."""
        if self.strategy is None:
            return contextlib.nullcontext()
        return self.strategy.scope()

    def check_model(self, model: keras.Model) -> None:
        """Raises unless the model's variables were made under the strategy.

        Raises:
            ValueError: naming a variable made outside `strategy.scope()`.
        """
        if self.strategy is None:
            return
        for variable in model.variables:
            if not self.strategy.extended.variable_created_in_scope(
                getattr(variable, "value", variable)
            ):
                raise ValueError(
                    "The model's variables must be created under the strategy: "
                    "build the model (and split any backbone) inside `with "
                    f"strategy.scope():`. Received: variable '{variable.path}' "
                    "made outside it."
                )

    def check_batch_size(self, batch_size: int) -> None:
        """Raises unless `batch_size` (the global batch) divides evenly among
        the replicas.

        Raises:
            ValueError: naming the batch size and the replica count.
        """
        if batch_size % self.replicas:
            raise ValueError(
                f"Expected `batch_size` to be a multiple of the strategy's "
                f"{self.replicas} replicas: it is the global batch, split evenly "
                f"among them. Received: batch_size={batch_size}"
            )

    def shard(self, values: Any) -> Any:
        """This worker's rows of an array (every `workers`-th, from its own
        number), so that no two workers hold the same sample; all of them on
        one worker."""
        if not self.multi_worker or values is None:
            return values
        return values[self.worker :: self.workers]

    def most_rows(self, rows: int) -> int:
        """The largest of every worker's `rows` (an all-gather); `rows` on
        one machine."""
        if not self.multi_worker:
            return rows
        return max(_from_every_replica(self.strategy, rows))

    def agree(self, number: int) -> bool:
        """Whether every worker passed the same `number` (e.g. a fingerprint
        of what it read); returns once all of them have called it, so it is
        also a barrier."""
        if not self.multi_worker:
            return True
        with self.lost_workers("comparing the run's state with the other workers"):
            return set(_from_every_replica(self.strategy, number)) == {number}

    @contextlib.contextmanager
    def lost_workers(self, doing: str, resume: str = "") -> Iterator[None]:
        """Turns TensorFlow's errors for a vanished peer into a
        `WorkerLostError` that says what was being done and, with `resume`,
        how to go on."""
        if not self.multi_worker:
            yield
            return
        try:
            yield
        except _LOST_WORKER as error:
            said = _what_happened(error.message)
            raise WorkerLostError(
                f"Worker {self.worker} of {self.workers} stopped while {doing}: "
                "another worker of the cluster stopped answering "
                f"({type(error).__name__}: {said}). "
                "TensorFlow cannot go on with fewer workers, so this one stops "
                f"too.{' ' + resume if resume else ''}"
            ) from error

    def synchronized_statistics(self, model: keras.Model) -> list[keras.Variable]:
        """Variables that each replica updates on its own and that must agree:
        the moving statistics of the model's trainable BatchNormalization
        layers (Keras 3 updates each replica's copy from its own batch)."""
        if self.strategy is None:
            return []
        return [
            variable
            for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
            for variable in layer.non_trainable_variables
        ]


def is_chief(strategy: tf.distribute.Strategy | None) -> bool:
    """Whether this process is the one that writes a run's files under
    `strategy`: the only process of a one-machine run, the chief of a
    multi-worker one (the task of type "chief", or worker 0 where the
    cluster has none), as `TransferRun.is_chief` says once the run exists.

    Raises:
        ValueError: for a task that is neither a chief nor a worker.
    """
    return _task(strategy)[1]


def _task(strategy) -> tuple[int, bool]:
    """`(worker number, is chief)` as TensorFlow numbers the cluster: the
    chief first, if the cluster has one, then the workers."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 0, True
    resolver = strategy.cluster_resolver
    cluster = resolver.cluster_spec().as_dict()
    kind, index = resolver.task_type, resolver.task_id
    if not cluster or kind is None:
        return 0, True
    chiefs = len(cluster.get("chief", []))
    if kind == "chief":
        return 0, True
    if kind != "worker":
        raise ValueError(
            "Expected this process to be a 'chief' or a 'worker' of the "
            f"cluster in TF_CONFIG. Received: task type {kind!r}"
        )
    return index + chiefs, chiefs == 0 and index == 0


def _what_happened(message: str) -> str:
    """TensorFlow's message without the op it names first, to the end of
    its first sentence that does not go on below (a list of tasks does)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    said = re.sub(r"^\{\{[^}]*\}\}\s*", "", lines[0] if lines else "")
    if said.endswith(":") and len(lines) > 1:
        said = f"{said} {lines[1]}"
    return said


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'s' * (number != 1)}"


def _from_every_replica(strategy, number: int) -> list[int]:
    """`number` as every replica of the cluster passed it (e.g. each
    worker's rows), in replica order."""
    result = _gather(strategy)(tf.constant(number, tf.int64))
    return strategy.experimental_local_results(result)[0].numpy().tolist()


@functools.cache
def _gather(strategy):
    """A function that gathers one number of every replica of `strategy`."""

    def gather(value):
        context = tf.distribute.get_replica_context()
        return context.all_gather(value[None], axis=0)

    return tf.function(lambda value: strategy.run(gather, args=(value,)))


def replica_copies(variable: Any) -> Sequence[Any]:
    """The copies of `variable` on this worker's replicas, as TensorFlow
    variables; empty for a variable made outside a strategy."""
    return getattr(getattr(variable, "value", variable), "values", None) or ()


def local_values(variable: Any) -> Sequence[np.ndarray]:
    """The value of `variable` on each of this worker's replicas (one value
    without a strategy), for checks that the replicas agree."""
    copies = replica_copies(variable) or (getattr(variable, "value", variable),)
    return [np.array(copy.numpy()) for copy in copies]
