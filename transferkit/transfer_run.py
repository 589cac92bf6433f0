"""Train, freeze named groups, recompile, fine-tune, and check the freeze."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeAlias

import keras
import numpy as np
import tensorflow as tf

from transferkit.class_subset import ClassSubset
from transferkit.feature_cache import CachePlan, FeatureCache, plan_cache
from transferkit.layer_group import LayerGroup
from transferkit.lean_step import LeanDropout, fuse_updates, lean_layers
from transferkit.precision import apply_precision, resolve_precision
from transferkit.run_directory import CheckpointError, RunDirectory, seed_states

__all__ = ["PhaseResult", "TransferRun"]

OptimizerSpec: TypeAlias = (
    str | keras.optimizers.Optimizer | Callable[[], keras.optimizers.Optimizer]
)
"""An optimizer name, an optimizer to copy, or a factory of new ones."""

Data: TypeAlias = ClassSubset | tuple | tf.data.Dataset
"""A `ClassSubset`, an `(x, y)` tuple of arrays, or a batched
`tf.data.Dataset` of `(x, y)`."""


# PhaseResult fields held as tuples, stored as JSON lists.
_TUPLE_FIELDS = ("frozen_groups", "changed_variables", "classes")


@dataclasses.dataclass(frozen=True)
class PhaseResult:
    """What one phase of a `TransferRun` did, measured and checked."""

    name: str
    """The phase's name, unique within its run (`"train"`, `"fine_tune"`)."""

    epochs: int
    """Epochs the phase trained for."""

    train_samples: int | None
    """Training samples per epoch; `None` for a `tf.data.Dataset`."""

    seconds: float
    """Wall-clock seconds of the whole phase: compile, fit and checks."""

    history: dict[str, list[float]]
    """Per-epoch values from Keras' `History`, e.g. `{"loss": [...],
    "val_accuracy": [...]}`."""

    metrics: dict[str, float]
    """Final validation metrics, without the `val_` prefix, e.g.
    `{"loss": 0.03, "accuracy": 0.99}`; empty without validation data."""

    trainable_params: int
    """Parameters the optimizer updated in this phase."""

    non_trainable_params: int
    """Parameters held fixed in this phase (frozen layers, BatchNorm
    statistics)."""

    frozen_groups: tuple[str, ...]
    """Groups all of whose layers were frozen during the phase."""

    frozen_unchanged: bool | None
    """Whether every variable of the frozen groups (trainable or not) is
    bitwise identical after the phase; `None` when no group was frozen."""

    changed_variables: tuple[str, ...] = ()
    """Paths of frozen variables that changed; empty when none did."""

    classes: tuple[int, ...] | None = None
    """Original class ids of the training data, when it was a
    `ClassSubset`."""

    precision: str = "float32"
    """The dtype policy the model computed in (`"float32"`,
    `"mixed_bfloat16"`, `"mixed_float16"`)."""

    steps_per_execution: int = 1
    """Training steps per call into TensorFlow."""

    cached_layers: int = 0
    """Leading layers of the model computed once, before training, from the
    feature cache; 0 when the cache was not used."""

    cache: str = ""
    """Where the cache was held (e.g. `"270.0 MiB in memory, layers
    conv2d..max_pooling2d; stops before layer 'dropout' (Dropout) ..."`), or
    why it was not used (e.g. `"not used: no group is frozen"`)."""

    cache_seconds: float = 0.0
    """Seconds spent computing the cache (part of `seconds`)."""

    lean_step: str = ""
    """What the lean training step changed (e.g. `"2 Dropout layers on bit
    masks; fused Adadelta updates"`); empty when it was off."""

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> PhaseResult:
        """The inverse of `to_dict`."""
        record = dict(record)
        for key in _TUPLE_FIELDS:
            if record[key] is not None:
                record[key] = tuple(record[key])
        return cls(**record)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary of the record."""
        record = dataclasses.asdict(self)
        for key in _TUPLE_FIELDS:
            if record[key] is not None:
                record[key] = list(record[key])
        return record


class TransferRun:
    """Trains a grouped model in phases, freezing groups between them.

    Each phase freezes what it is told to, recompiles the model with a fresh
    optimizer (Keras fixes the trainable set at `compile()`, and a built
    optimizer cannot take a different set of variables), fits, and then
    proves the freeze: every variable of every frozen group, BatchNorm
    moving statistics included, is compared bitwise with its value before
    the phase.

    A frozen `BatchNormalization` runs in inference mode, so its statistics
    stay put. A frozen `Dropout` still drops during training: Dropout has no
    weights, and `trainable` does not switch it off.

    Args:
        model: a model composed from `LayerGroup`s (`features + head`), or
            any Keras model with a `groups` mapping of name to `LayerGroup`.
        optimizer: the optimizer of every phase: a name such as `"adam"`, an
            optimizer instance, which is copied from its config for each
            phase, or a zero-argument factory that returns a new optimizer.
        loss: a Keras loss. With `"categorical_crossentropy"` (or another
            categorical loss) integer labels are one-hot encoded to the
            model's output width.
        metrics: Keras metrics, e.g. `["accuracy"]`. Defaults to `None`.
        batch_size: samples per step for array data. Defaults to `32`.
        jit_compile: passed to `compile()`. Defaults to `False`: measure
            before enabling XLA; on CPUs it can be slower.
        verbose: Keras' `fit` verbosity for every phase. Defaults to `"auto"`.
        directory: a folder that keeps the run. After every epoch, and at
            the start and end of every phase, the model (weights, trainable
            flags, optimizer state), the phase results and the random-seed
            state are saved there, atomically. Running the same plan again
            with the same folder resumes: finished phases return their saved
            results without training, an interrupted phase goes on from its
            last saved epoch. Defaults to `None` (nothing is saved).
        seed: makes the run repeatable. Each phase starts by seeding Python,
            NumPy and TensorFlow from `seed`, the phase's position and the
            epoch it starts at. Seed the model's construction yourself
            (`keras.utils.set_random_seed`) before building it. Defaults to
            `None`.
        check_finite: check array data for NaN and infinite values before
            each phase (one pass over the data). Defaults to `False`.
        precision: `"float32"`, `"mixed_bfloat16"`, `"mixed_float16"`, or
            `"auto"`: mixed float16 with a GPU, mixed bfloat16 on a CPU with
            bfloat16 instructions, float32 otherwise. Under a mixed policy
            every layer but the last computes in 16 bits, while weights,
            optimizer state and the output stay float32. Defaults to
            `"float32"` (the model's policies are left as they are).
        feature_cache: when the frozen groups start a `Sequential` model,
            compute their output once per phase (in inference mode) and
            train the rest of the model on it, for training and validation
            data given as arrays. The cache stops before the first frozen
            layer whose output depends on `training` or on random numbers
            (Dropout, noise, augmentation, a trainable BatchNormalization),
            so the phase computes the same function as without it. Each
            `PhaseResult.cache` says what was cached, or why nothing was.
            Defaults to `True`.
        feature_cache_memory: bytes of cached features held in memory; a
            larger cache goes to files in `directory` (or a temporary
            folder), deleted at the end of the phase, and is read back one
            batch at a time. Defaults to `2**30` (1 GiB).
        steps_per_execution: training steps per call into TensorFlow
            (`compile(steps_per_execution=...)`); more steps per call cost
            less Python overhead per step. Batch-level callbacks then run
            once per call. Defaults to `1`.
        lean_step: train a `Sequential` model with `Dropout` masks drawn
            from random bits instead of floats (the same keep probability)
            and with TensorFlow's fused update kernels for Adadelta, SGD
            and Adam (the same formulas). The model itself keeps Keras'
            layers; see `transferkit.lean_step`. Defaults to `False`.

    Ctrl-C during a phase finishes the current epoch, saves it (with a
    `directory`), and raises `KeyboardInterrupt` saying how to resume; a
    second Ctrl-C stops at once.

    Example:

    >>> import keras, numpy as np
    >>> from keras import layers
    >>> from transferkit import LayerGroup, TransferRun
    >>> features = LayerGroup("features", [layers.Dense(8, activation="relu")],
    ...                       input_shape=(4,))
    >>> head = LayerGroup("head", [layers.Dense(3, activation="softmax")])
    >>> run = TransferRun(features + head, optimizer="adam",
    ...                   loss="sparse_categorical_crossentropy", verbose=0)
    >>> x, y = np.random.rand(64, 4), np.random.randint(0, 3, 64)
    >>> first = run.train((x, y), epochs=1)
    >>> second = run.fine_tune((x, y), freeze=["features"], epochs=1)
    >>> second.frozen_groups, second.frozen_unchanged
    (('features',), True)
    """

    def __init__(
        self,
        model: keras.Model,
        *,
        optimizer: OptimizerSpec,
        loss: Any,
        metrics: Sequence[Any] | None = None,
        batch_size: int = 32,
        jit_compile: bool = False,
        verbose: str | int = "auto",
        directory: str | os.PathLike | None = None,
        seed: int | None = None,
        check_finite: bool = False,
        precision: str = "float32",
        feature_cache: bool = True,
        feature_cache_memory: int = 2**30,
        steps_per_execution: int = 1,
        lean_step: bool = False,
    ):
        groups = getattr(model, "groups", None)
        if not isinstance(model, keras.Model) or not isinstance(groups, Mapping):
            raise TypeError(
                "Expected a Keras model composed from `LayerGroup`s, e.g. "
                "`features + classifier`. Received: model of type "
                f"{type(model).__name__}"
            )
        if not groups:
            raise ValueError(
                "Expected a model with at least one group. Received a model with none."
            )
        _require_count(batch_size, "batch_size")
        _require_count(steps_per_execution, "steps_per_execution")
        _require_count(feature_cache_memory, "feature_cache_memory", minimum=0)
        for argument, value in (
            ("feature_cache", feature_cache),
            ("lean_step", lean_step),
        ):
            if not isinstance(value, bool):
                raise TypeError(
                    f"Expected `{argument}` to be True or False. Received: "
                    f"{argument}={value!r}"
                )
        policy, self.precision_reason = resolve_precision(precision)
        _check_optimizer_spec(optimizer, "optimizer")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(
                f"Expected `seed` to be an integer. Received: seed={seed!r}"
            )
        self._model = model
        self._optimizer = optimizer
        self._loss = loss
        self._metrics = list(metrics) if metrics is not None else None
        self._batch_size = batch_size
        self._jit_compile = jit_compile
        self._verbose = verbose
        self._seed = seed
        self._check_finite = check_finite
        self._policy = policy
        self._feature_cache = feature_cache
        self._feature_cache_memory = feature_cache_memory
        self._steps_per_execution = steps_per_execution
        self._lean_step = lean_step
        apply_precision(model, policy)
        self._results: list[PhaseResult] = []
        self._directory = None if directory is None else RunDirectory(directory)
        self._state = self._open_state()

    @property
    def model(self) -> keras.Model:
        """The model being trained."""
        return self._model

    @property
    def precision(self) -> str:
        """The dtype policy the model computes in; `precision_reason` says
        why (`"as asked"`, or what `"auto"` found)."""
        return self._policy

    @property
    def results(self) -> list[PhaseResult]:
        """One `PhaseResult` per finished phase, in order."""
        return list(self._results)

    @property
    def saved_phases(self) -> list[tuple[str, int, int, bool]]:
        """`(name, epochs_done, epochs, finished)` per phase recorded in the
        run's `directory`, e.g. to tell the user what a rerun resumes."""
        return [
            (
                phase["spec"]["name"],
                phase["epochs_done"],
                phase["spec"]["epochs"],
                phase["result"] is not None,
            )
            for phase in self._state["phases"]
        ]

    @property
    def frozen_groups(self) -> tuple[str, ...]:
        """Names of the groups all of whose layers are frozen now."""
        return tuple(
            name for name, group in self._model.groups.items() if not group.trainable
        )

    def freeze(self, *names: str) -> None:
        """Freezes the named groups until `unfreeze`.

        Takes effect at the next phase, which recompiles the model.

        Raises:
            ValueError: if a name is not a group of the model.
        """
        for group in self._groups_named(names, "freeze"):
            group.trainable = False

    def unfreeze(self, *names: str) -> None:
        """Makes every layer of the named groups trainable again.

        Raises:
            ValueError: if a name is not a group of the model.
        """
        for group in self._groups_named(names, "unfreeze"):
            group.trainable = True

    def train(
        self,
        data: Data,
        *,
        epochs: int,
        validation_data: Data | None = None,
        name: str | None = None,
        optimizer: OptimizerSpec | None = None,
        callbacks: Sequence[keras.callbacks.Callback] | None = None,
        verbose: str | int | None = None,
    ) -> PhaseResult:
        """Runs one phase with the groups frozen as they are now.

        Args:
            data: training data: a `ClassSubset`, an `(x, y)` tuple of
                arrays, or a batched `tf.data.Dataset` of `(x, y)`.
            epochs: epochs to train.
            validation_data: evaluated after every epoch, in the same forms as
                `data`; its final metrics land in the result's `metrics`.
                Defaults to `None`.
            name: the phase's name. Defaults to `"train"` (with a suffix if
                the run already has a phase of that name).
            optimizer: overrides the run's optimizer for this phase only.
                Defaults to `None` (the run's).
            callbacks: Keras callbacks for `fit`. Defaults to `None`.
            verbose: overrides the run's verbosity. Defaults to `None`.

        Returns:
            The phase's `PhaseResult`, also appended to `results`.
        """
        return self._run_phase(
            "train",
            data,
            epochs=epochs,
            validation_data=validation_data,
            name=name,
            optimizer=optimizer,
            callbacks=callbacks,
            verbose=verbose,
        )

    def fine_tune(
        self,
        data: Data,
        *,
        freeze: str | Iterable[str],
        epochs: int,
        validation_data: Data | None = None,
        name: str | None = None,
        optimizer: OptimizerSpec | None = None,
        callbacks: Sequence[keras.callbacks.Callback] | None = None,
        verbose: str | int | None = None,
    ) -> PhaseResult:
        """Freezes the named groups, then runs one phase like `train`.

        Groups frozen earlier stay frozen; `unfreeze` releases them.

        Args:
            data: training data, as for `train`.
            freeze: the group name, or names, to freeze, e.g.
                `["features"]`.
            epochs: epochs to train.
            validation_data: as for `train`. Defaults to `None`.
            name: the phase's name. Defaults to `"fine_tune"`.
            optimizer: as for `train`. Defaults to `None` (the run's).
            callbacks: as for `train`. Defaults to `None`.
            verbose: as for `train`. Defaults to `None`.

        Returns:
            The phase's `PhaseResult`, also appended to `results`.

        Raises:
            ValueError: if a name is not a group of the model, or nothing
                would be left to train.
        """
        names = (freeze,) if isinstance(freeze, str) else tuple(freeze)
        groups = self._groups_named(names, "freeze")
        return self._run_phase(
            "fine_tune",
            data,
            epochs=epochs,
            validation_data=validation_data,
            name=name,
            optimizer=optimizer,
            callbacks=callbacks,
            verbose=verbose,
            freeze=groups,
        )

    def evaluate(self, data: Data) -> dict[str, float]:
        """Evaluates the model as last compiled, e.g. on a test set.

        Args:
            data: as for `train`.

        Returns:
            A dictionary of metric name to value, e.g. `{"loss": ...,
            "accuracy": ...}`.
        """
        if not getattr(self._model, "compiled", False):
            raise RuntimeError(
                "The model has not been compiled yet; run a phase first."
            )
        inputs, _, _ = self._fit_inputs(data, "data")
        return self._model.evaluate(
            *inputs,
            batch_size=self._batch_size_for(data),
            verbose=0,
            return_dict=True,
        )

    def _run_phase(
        self,
        kind,
        data,
        *,
        epochs,
        validation_data,
        name,
        optimizer,
        callbacks,
        verbose,
        freeze=(),
    ):
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(
                "Expected `epochs` to be a positive integer. Received: "
                f"epochs={epochs!r}"
            )
        name = self._phase_name(kind, name)
        if optimizer is not None:
            _check_optimizer_spec(optimizer, "optimizer")
        start = time.perf_counter()
        inputs, train_samples, classes = self._fit_inputs(data, "data")
        validation = None
        if validation_data is not None:
            validation, _, val_classes = self._fit_inputs(
                validation_data, "validation_data"
            )
            if classes and val_classes and classes != val_classes:
                raise ValueError(
                    "The validation data holds other classes than the "
                    f"training data. Received: classes {classes} for `data` "
                    f"and {val_classes} for `validation_data`"
                )
            # fit takes a dataset as it is, arrays as an (x, y) tuple.
            validation = validation[0] if len(validation) == 1 else validation
        fresh_optimizer = _fresh_optimizer(
            self._optimizer if optimizer is None else optimizer
        )
        fused = self._lean_step and fuse_updates(fresh_optimizer)
        spec = {
            "kind": kind,
            "name": name,
            "epochs": epochs,
            "freeze": [group.name for group in freeze],
            "data": _data_fingerprint(data, train_samples, classes),
            "batch_size": self._batch_size_for(data),
            "optimizer": _optimizer_fingerprint(fresh_optimizer),
            "loss": _loss_name(self._loss),
        }
        if self._policy != "float32":  # Recorded only when set, as runs before.
            spec["precision"] = self._policy
        index = len(self._results)
        record = self._recorded_phase(index, spec)
        if record is not None and record["result"] is not None:
            for group in freeze:  # Replay the plan's flags; the weights are loaded.
                group.trainable = False
            result = PhaseResult.from_dict(record["result"])
            self._results.append(result)
            return result

        previous = {id(g): [layer.trainable for layer in g] for g in freeze}
        for group in freeze:
            group.trainable = False
        if not self._model.trainable_weights:
            message = (
                "Nothing left to train: every layer with weights is frozen "
                f"(frozen groups: {list(self.frozen_groups)}). Unfreeze a "
                "group with `run.unfreeze(name)`."
            )
            for group in freeze:  # Leave the model as it was.
                for layer, trainable in zip(group, previous[id(group)], strict=True):
                    layer.trainable = trainable
            raise ValueError(message)
        frozen_names = self.frozen_groups
        frozen = [self._model.groups[n] for n in frozen_names]
        if record is None:
            record = {
                "spec": spec,
                "frozen_groups": list(frozen_names),
                "frozen_digest": _digest(frozen),
                "epochs_done": 0,
                "seconds": 0.0,
                "history": {},
                "result": None,
            }
            self._state["phases"].append(record)
            self._checkpoint()  # The phase's starting point.
        elif record["frozen_groups"] != list(frozen_names):
            raise CheckpointError(
                f"Phase '{name}' in {self._state_file()} was interrupted with "
                f"the groups {record['frozen_groups']} frozen, but now "
                f"{list(frozen_names)} are. Freeze the same groups to resume it."
            )

        compile_args = {
            "optimizer": fresh_optimizer,
            "loss": self._loss,
            "metrics": self._metrics,
            "jit_compile": self._jit_compile,
            "steps_per_execution": self._steps_per_execution,
        }
        # Compiled even when the cache trains a head model: `evaluate`, the
        # checkpoints and resuming use the whole model and this optimizer.
        self._model.compile(**compile_args)
        done = record["epochs_done"]
        if done:  # Resume: the optimizer state of the last saved epoch.
            fresh_optimizer.build(self._model.trainable_variables)
            self._directory.restore(self._model, self._state)
        if self._seed is not None:
            keras.utils.set_random_seed(_derived_seed(self._seed, index, done))
        seconds_before = record["seconds"]  # Of earlier, interrupted sessions.
        recorder = _EpochRecorder(
            record, lambda: seconds_before + time.perf_counter() - start, self
        )
        plan = self._plan_cache(data, validation_data, frozen_names)
        cache, cache_seconds, lean_count = None, 0.0, 0
        if done < epochs:
            trainer, train_args, cache = self._fit_setup(
                plan, data, inputs, validation, compile_args
            )
            cache_seconds = cache.seconds if cache is not None else 0.0
            lean_count = sum(isinstance(x, LeanDropout) for x in trainer.layers)
            try:
                with _StopAfterEpoch(recorder):
                    trainer.fit(
                        **train_args,
                        # A dataset shuffles itself; Keras warns if asked to.
                        shuffle=isinstance(train_args["x"], np.ndarray),
                        initial_epoch=done,
                        epochs=epochs,
                        callbacks=[recorder, *(callbacks or ())],
                        verbose=self._verbose if verbose is None else verbose,
                    )
            finally:
                if cache is not None:
                    cache.close()
            if recorder.interrupted:
                raise KeyboardInterrupt(self._interrupted_message(record, epochs))

        before, after = record["frozen_digest"], _digest(frozen)
        changed = tuple(
            variable.path
            for group in frozen
            for variable, old, new in zip(
                group.variables, before[group.name], after[group.name], strict=True
            )
            if old != new
        )
        history = record["history"]
        result = PhaseResult(
            name=name,
            epochs=epochs,
            train_samples=train_samples,
            seconds=seconds_before + time.perf_counter() - start,
            history=history,
            metrics={
                key[len("val_") :]: values[-1]
                for key, values in history.items()
                if key.startswith("val_")
            },
            trainable_params=_count(self._model.trainable_weights),
            non_trainable_params=_count(self._model.non_trainable_weights),
            frozen_groups=frozen_names,
            frozen_unchanged=(not changed) if frozen else None,
            changed_variables=changed,
            classes=classes,
            precision=self._policy,
            steps_per_execution=self._steps_per_execution,
            cached_layers=plan.layers if cache is not None else 0,
            cache=self._describe_cache(plan, cache),
            cache_seconds=cache_seconds,
            lean_step="; ".join(
                [f"{lean_count} Dropout layers on bit masks"] * bool(lean_count)
                + [f"fused {type(fresh_optimizer).__name__} updates"] * fused
            ),
        )
        record["result"] = result.to_dict()
        record["seconds"] = result.seconds
        if self._directory is not None:
            self._directory.write_state(self._state)
        self._results.append(result)
        return result

    def _plan_cache(self, data, validation_data, frozen_names) -> CachePlan:
        if not self._feature_cache:
            return CachePlan(0, "turned off (feature_cache=False)")
        for argument, value in (("data", data), ("validation_data", validation_data)):
            if isinstance(value, tf.data.Dataset):
                return CachePlan(0, f"`{argument}` is a tf.data.Dataset, not arrays")
        return plan_cache(self._model, frozen_names)

    def _fit_setup(self, plan, data, inputs, validation, compile_args):
        """`(trainer, fit arguments, cache)`: the model that `fit` trains and
        what it trains on. That is the model itself on the phase's data,
        unless the cache or the lean step asks for a trainer model of shared
        layers; the cache (`None` when not used) feeds it features."""
        fit_args = {
            "x": inputs[0],
            "y": inputs[1] if len(inputs) > 1 else None,
            "batch_size": self._batch_size_for(data),
            "validation_data": validation,
        }
        cache = None
        if plan.layers:
            arrays = {"train": inputs[0]}
            if validation is not None:
                arrays["validation"] = validation[0]
            cache = FeatureCache(
                self._model.layers[: plan.layers],
                arrays,
                memory_limit=self._feature_cache_memory,
                folder=None if self._directory is None else self._directory.path,
            )
            fit_args = {
                "x": cache.dataset("train", inputs[1], self._batch_size, shuffle=True)
            }
            if validation is not None:
                fit_args["validation_data"] = cache.dataset(
                    "validation", validation[1], self._batch_size, shuffle=False
                )
        if cache is None and not (
            self._lean_step and isinstance(self._model, keras.Sequential)
        ):
            return self._model, fit_args, None
        trainer = self._trainer(plan.layers if cache else 0, cache)
        trainer.compile(**compile_args)
        return trainer, fit_args, cache

    def _trainer(self, start, cache) -> keras.Sequential:
        """A model of the layers from `start` on, sharing their weights, that
        takes the cache's features (or the model's input when `start` is 0),
        with lean layers if asked for."""
        layers = self._model.layers[start:]
        if self._lean_step:
            layers = lean_layers(layers)
        head = keras.Sequential(
            [
                keras.Input(cache.sample_shape, dtype=cache.dtype)
                if cache is not None
                else keras.Input(self._model.input_shape[1:]),
                *layers,
            ],
            name=f"{self._model.name}_trainer",
        )
        if self._policy != "float32":
            head.dtype_policy = self._policy  # Keras scales float16 losses by it.
        return head

    def _describe_cache(self, plan, cache) -> str:
        if not plan.layers:
            return f"not used: {plan.reason}"
        cached = self._model.layers[: plan.layers]
        names = (
            cached[0].name
            if len(cached) == 1
            else (f"{cached[0].name}..{cached[-1].name}")
        )
        where = cache.describe() if cache is not None else "not needed (resumed)"
        return f"{where}; layers {names}: {plan.reason}"

    def _open_state(self) -> dict[str, Any]:
        """The run's state: loaded from `directory` (weights restored), or new."""
        fingerprint = _model_fingerprint(self._model)
        fresh: dict[str, Any] = {"model": fingerprint, "checkpoint": None, "phases": []}
        if self._directory is None:
            return fresh
        state = self._directory.load_state()
        self._directory.remove_orphans(state)
        if state is None:
            return fresh
        if state.get("model") != fingerprint:
            raise CheckpointError(
                f"{self._state_file()} holds a run of a different model (other "
                "layers, groups or shapes). Nothing was overwritten; use another "
                "folder for this model."
            )
        if state.get("checkpoint"):
            if not self._model.built:
                raise CheckpointError(
                    f"Cannot resume {self._state_file()} into a model that is not "
                    "built; give the first group an `input_shape`."
                )
            self._directory.restore(self._model, state)
        return state

    def _recorded_phase(self, index, spec):
        """The saved record of phase `index`, checked against `spec`."""
        phases = self._state["phases"]
        if self._directory is None:
            del phases[index:]  # Without a folder, a failed phase starts anew.
        if index >= len(phases):
            return None
        recorded = phases[index]["spec"]
        differences = _differences(recorded, json.loads(json.dumps(spec)))
        if differences:
            raise CheckpointError(
                f"{self._state_file()} holds a different plan: its phase "
                f"{index + 1} ('{recorded['name']}') differs in "
                f"{'; '.join(differences)}. Nothing was overwritten; run the same "
                "plan to resume, or use another folder."
            )
        return phases[index]

    def _checkpoint(self) -> None:
        if self._directory is not None:
            self._state["seed_states"] = seed_states(self._model)
            self._directory.save(self._model, self._state)

    def _state_file(self) -> str:
        return repr(str(self._directory.state_path)) if self._directory else "the run"

    def _interrupted_message(self, record, epochs) -> str:
        where = (
            f"Saved in {str(self._directory.path)!r}; run the same plan with "
            "the same directory to resume."
            if self._directory is not None
            else "Nothing was saved: pass `directory=` to keep progress."
        )
        return (
            f"Interrupted phase '{record['spec']['name']}' after epoch "
            f"{record['epochs_done']} of {epochs}. {where}"
        )

    def _phase_name(self, kind, name):
        taken = {result.name for result in self._results}
        if name is None:
            name, suffix = kind, 2
            while name in taken:
                name, suffix = f"{kind}_{suffix}", suffix + 1
            return name
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"Expected `name` to be a non-empty string. Received: name={name!r}"
            )
        if name in taken:
            raise ValueError(
                f"The run already has a phase named '{name}'. Phase names "
                f"must be unique; taken: {sorted(taken)}"
            )
        return name

    def _groups_named(self, names, argument) -> list[LayerGroup]:
        groups = self._model.groups
        for name in names:
            if not isinstance(name, str) or name not in groups:
                raise ValueError(
                    f"Unknown group {name!r}. Expected one of {list(groups)}. "
                    f"Received: {argument}={list(names)}"
                )
        return [groups[name] for name in names]

    def _batch_size_for(self, data):
        return None if isinstance(data, tf.data.Dataset) else self._batch_size

    def _fit_inputs(self, data, argument):
        """`(inputs, train_samples, classes)` for `fit`, labels prepared."""
        if isinstance(data, tf.data.Dataset):
            self._ensure_built(data.element_spec[0].shape[1:])
            return (self._prepare_dataset(data, argument),), None, None
        if isinstance(data, ClassSubset):
            x, y, classes = data.x, data.y, data.classes
        elif isinstance(data, tuple) and len(data) == 2:
            (x, y), classes = data, None
        else:
            raise TypeError(
                f"Expected `{argument}` to be a ClassSubset, an (x, y) tuple "
                "or a batched tf.data.Dataset. Received: "
                f"{type(data).__name__}"
            )
        if len(x) != len(y):
            raise ValueError(
                f"Expected x and y of the same length in `{argument}`. "
                f"Received: len(x)={len(x)}, len(y)={len(y)}"
            )
        self._ensure_built(tuple(np.shape(x)[1:]))
        self._check_input_shape(np.shape(x), argument)
        if self._check_finite:
            origin = data.indices if isinstance(data, ClassSubset) else None
            _require_finite(x, f"`{argument}` (x)", origin)
            _require_finite(y, f"`{argument}` (y)", origin)
        return (x, self._prepare_labels(np.asarray(y), argument)), len(x), classes

    def _ensure_built(self, sample_shape):
        if not self._model.built:
            self._model.build((None,) + tuple(sample_shape))

    def _check_input_shape(self, shape, argument):
        expected = tuple(self._model.input_shape[1:])
        received = tuple(shape[1:])
        if len(expected) != len(received) or any(
            e is not None and e != r for e, r in zip(expected, received, strict=True)
        ):
            raise ValueError(
                f"The samples in `{argument}` have shape {received}, but the "
                f"model expects {expected}. Reshape the data, e.g. "
                f"x.reshape((-1,) + {expected})."
            )

    def _output_width(self):
        return int(self._model.output_shape[-1])

    def _prepare_labels(self, y, argument):
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            return y  # one-hot or other targets: Keras checks them.
        width = self._output_width()
        bad = (y < 0) | (y >= width)
        if bad.any():
            raise ValueError(
                f"Labels in `{argument}` must be class ids in [0, {width - 1}] "
                f"for a model with {width} outputs. Received: "
                f"{sorted(set(y[bad].tolist()))[:5]}"
            )
        if _expects_one_hot(self._loss):
            return keras.utils.to_categorical(y, width).astype("float32")
        return y

    def _prepare_dataset(self, dataset, argument):
        spec = dataset.element_spec
        if not isinstance(spec, tuple) or len(spec) < 2:
            raise TypeError(
                f"Expected `{argument}` to yield (x, y) batches. Received a "
                f"dataset with element_spec={spec}"
            )
        y_spec = spec[1]
        if not (
            _expects_one_hot(self._loss)
            and y_spec.dtype.is_integer
            and y_spec.shape.rank == 1
        ):
            return dataset
        width = self._output_width()

        def one_hot(x, y, *rest):
            checks = [
                tf.debugging.assert_non_negative(y),
                tf.debugging.assert_less(
                    y,
                    tf.cast(width, y.dtype),
                    message=f"Labels in `{argument}` must be class ids in "
                    f"[0, {width - 1}]",
                ),
            ]
            with tf.control_dependencies(checks):
                return (x, tf.one_hot(y, width)) + rest

        return dataset.map(one_hot)


def _require_count(value, argument, minimum=1) -> None:
    """Raises unless `value` is an integer >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(
            f"Expected `{argument}` to be an integer. Received: {argument}={value!r}"
        )
    if value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(
            f"Expected `{argument}` to be {what}. Received: {argument}={value}"
        )


def _loss_name(loss) -> str:
    """`loss` as a snake_case name: `"categorical_crossentropy"` for the
    string, the `CategoricalCrossentropy` object or the function alike."""
    if isinstance(loss, str):
        return loss
    if isinstance(loss, keras.losses.Loss):
        return re.sub(r"(?<!^)(?=[A-Z])", "_", type(loss).__name__).lower()
    return getattr(loss, "__name__", type(loss).__name__)


def _expects_one_hot(loss) -> bool:
    """Whether `loss` is a categorical loss that takes one-hot targets."""
    name = _loss_name(loss)
    return "categorical" in name and "sparse" not in name


def _optimizer_fingerprint(optimizer) -> dict[str, Any]:
    """The optimizer's class and settings, as a plan records them."""
    config = dict(optimizer.get_config())
    config.pop("name", None)
    return json.loads(
        json.dumps({"class": type(optimizer).__name__, **config}, default=str)
    )


def _check_optimizer_spec(spec, argument):
    if isinstance(spec, str):
        keras.optimizers.get(spec)  # Raises for an unknown name.
        if spec.lower() == "adadelta":
            warnings.warn(
                "`optimizer='adadelta'` uses Keras 3's default "
                "learning_rate=0.001; Keras 2 used 1.0, and training with "
                "0.001 barely moves. Pass `lambda: "
                "keras.optimizers.Adadelta(learning_rate=1.0)` for the Keras 2 "
                "behaviour.",
                UserWarning,
                stacklevel=3,
            )
    elif not (isinstance(spec, keras.optimizers.Optimizer) or callable(spec)):
        raise TypeError(
            f"Expected `{argument}` to be an optimizer name, an optimizer, or "
            "a function that returns a new optimizer. Received: "
            f"{argument}={spec!r}"
        )


def _fresh_optimizer(spec) -> keras.optimizers.Optimizer:
    """A new, unbuilt optimizer for one phase."""
    if isinstance(spec, str):
        return keras.optimizers.get(spec)
    if isinstance(spec, keras.optimizers.Optimizer):
        return type(spec).from_config(spec.get_config())
    optimizer = spec()
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(
            "Expected the optimizer factory to return a Keras optimizer. "
            f"Received: {optimizer!r}"
        )
    if optimizer.built:
        raise ValueError(
            "The optimizer factory returned an optimizer that was already "
            "used; Keras cannot reuse a built optimizer for a new set of "
            "trainable weights. Return a new one on each call, e.g. "
            "`lambda: keras.optimizers.Adadelta(learning_rate=1.0)`."
        )
    return optimizer


def _digest(groups: Sequence[LayerGroup]) -> dict[str, list[str]]:
    """SHA-256 of every variable of each group, in the group's variable order.

    Keyed by group name and position, not by variable path: Keras numbers
    paths per process, and a resumed run compares against digests saved by
    another process.
    """
    digests: dict[str, list[str]] = {}
    for group in groups:
        digests[group.name] = []
        for variable in group.variables:
            value = np.ascontiguousarray(keras.ops.convert_to_numpy(variable))
            digest = hashlib.sha256(value.tobytes())
            digest.update(f"{value.dtype}{value.shape}".encode())
            digests[group.name].append(digest.hexdigest())
    return digests


def _count(variables) -> int:
    return int(sum(np.prod(v.shape, dtype=np.int64) for v in variables))


class _EpochRecorder(keras.callbacks.Callback):
    """Records each epoch into the phase record and checkpoints it."""

    def __init__(self, record, elapsed, run):
        super().__init__()
        self.record = record
        self.elapsed = elapsed
        self.run = run
        self.interrupted = False

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.record["history"].setdefault(key, []).append(float(value))
        self.record["epochs_done"] = epoch + 1
        self.record["seconds"] = self.elapsed()
        self.run._checkpoint()
        if self.interrupted:
            self.model.stop_training = True


class _StopAfterEpoch:
    """While active, the first Ctrl-C asks `recorder` to stop after the
    current epoch; a second one interrupts at once."""

    def __init__(self, recorder):
        self.recorder = recorder
        self.previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc_info):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False

    def _handle(self, signum, frame):
        if self.recorder.interrupted:
            raise KeyboardInterrupt
        self.recorder.interrupted = True
        print(
            "\nInterrupted: finishing and saving this epoch; press Ctrl-C again "
            "to stop at once.",
            file=sys.stderr,
            flush=True,
        )


def _require_finite(array, what: str, origin=None, chunk: int = 4096) -> None:
    """Raises if a floating-point `array` holds NaN or infinity; checks
    `chunk` samples at a time to keep memory flat. `origin` maps positions
    to those in the source data (a `ClassSubset`'s `indices`)."""
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.floating):
        return
    bad = [
        start + int(offset)
        for start in range(0, len(array), chunk)
        for offset in np.flatnonzero(
            ~np.isfinite(array[start : start + chunk])
            .reshape(len(array[start : start + chunk]), -1)
            .all(axis=1)
        )
    ]
    if bad:
        source = "" if origin is None else f" ({origin[bad[0]]} in the source data)"
        raise ValueError(
            f"NaN or infinite values in {what}: {len(bad)} "
            f"sample{'s' if len(bad) > 1 else ''}, the first "
            f"at index {bad[0]}{source}. Clean or drop them, or pass "
            "check_finite=False to skip this check."
        )


def _derived_seed(seed: int, phase: int, epoch: int) -> int:
    text = f"{seed}/{phase}/{epoch}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "little")


def _model_fingerprint(model) -> str:
    """A digest of the model's architecture: layer types and settings, groups.

    Layer names (Keras numbers them per process), trainable flags (they
    change between phases) and dtype policies (the plan records the run's
    precision) are left out.
    """
    layers = []
    for layer in model.layers:
        config = dict(layer.get_config())
        for key in ("name", "trainable", "dtype"):
            config.pop(key, None)
        layers.append([type(layer).__name__, config])
    groups = [
        [name, [model.layers.index(layer) for layer in group]]
        for name, group in model.groups.items()
    ]
    text = json.dumps([layers, groups], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _data_fingerprint(data, samples, classes) -> dict[str, Any]:
    """What identifies a phase's data in a plan: size, classes, labels."""
    if isinstance(data, tf.data.Dataset):
        return {"type": "dataset"}
    y = np.ascontiguousarray(data.y if isinstance(data, ClassSubset) else data[1])
    return {
        "samples": samples,
        "classes": list(classes) if classes else None,
        "labels_sha256": hashlib.sha256(y.tobytes()).hexdigest(),
    }


def _differences(recorded, current, prefix="") -> list[str]:
    """`"key: recorded A, now B"` for every leaf where two plans differ."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        return [
            difference
            for key in dict.fromkeys([*recorded, *current])
            for difference in _differences(
                recorded.get(key), current.get(key), f"{prefix}{key}."
            )
        ]
    if recorded == current:
        return []
    return [f"{prefix[:-1]}: recorded {recorded!r}, now {current!r}"]
