"""How a phase of a `TransferRun` runs, step by step.

`Phases` is the part of `TransferRun` that runs one phase: `_run_phase`
reads top to bottom, and each of its steps is a method below, most of them
handing over to a module of its own: `training_data` checks and prepares the
data, `optimizers` makes the phase's optimizer, `plan` and `run_state`
record and resume the plan, `training` trains, `freeze_proof` checks the
frozen variables, and `phase_result` holds what the phase did. (Keras' own
`Model` is built the same way, on a `Trainer` base class.)
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf

from transferkit.arguments import (
    is_non_negative_number,
    require_choice,
    require_count,
    require_epochs,
)
from transferkit.errors import NonFiniteError
from transferkit.freeze_proof import (
    changed_held,
    changed_variables,
    count_params,
    digest_held,
    held_variables,
)
from transferkit.input_recipe import recipe_of_dataset
from transferkit.layer_group import LayerGroup
from transferkit.lora import Adaptation, adapt, check_lora, merge
from transferkit.model_groups import groups_of
from transferkit.optimizers import (
    OptimizerSpec,
    check_optimizer_spec,
    fresh_optimizer,
    fuse_updates,
    scale_learning_rates,
)
from transferkit.phase_result import PhaseResult
from transferkit.plan import phase_spec
from transferkit.run_record import PhaseRecord
from transferkit.training import Training, train_phase
from transferkit.training_data import (
    Data,
    PhaseData,
    check_same_classes,
    prepare_data,
)

__all__ = ["BATCH_NORM", "Phases", "batch_norm_policy"]

BATCH_NORM = ("inference", "train")
"""What a phase's `backbone_batch_norm` accepts."""


def _under_strategy(method: Callable) -> Callable:
    """`method` of a `TransferRun`, run inside its strategy's scope."""

    @functools.wraps(method)
    def in_scope(self, *args, **kwargs):
        with self._distribution.scope():
            return method(self, *args, **kwargs)

    return in_scope


class Phases:
    """The steps of a phase; `TransferRun` holds the run's settings."""

    @_under_strategy
    def _run_phase(
        self,
        kind: str,
        data: Data,
        *,
        epochs: int,
        validation_data: Data | None,
        name: str | None,
        optimizer: OptimizerSpec | None,
        callbacks: Sequence[keras.callbacks.Callback] | None,
        verbose: str | int | None,
        lr_multipliers: Mapping[str, float] | None,
        backbone_batch_norm: str,
        freeze: Sequence[LayerGroup] = (),
        steps_per_epoch: int | None = None,
        class_weight: Any = None,
        lora: Any = None,
    ) -> PhaseResult:
        """One phase, start to end, under the run's strategy; each step is a
        method below. A phase that fails goes back to its last saved epoch,
        where a retry resumes."""
        started = time.perf_counter()
        self._check_open()
        epochs = require_epochs(epochs)
        name = self._phase_name(kind, name)
        multipliers = self._check_multipliers(lr_multipliers)
        require_choice(backbone_batch_norm, "backbone_batch_norm", BATCH_NORM)
        frozen_names = [*self.frozen_groups, *(group.name for group in freeze)]
        ranks = check_lora(lora, groups_of(self._model), frozen_names)
        if steps_per_epoch is not None:
            steps_per_epoch = require_count(steps_per_epoch, "steps_per_epoch")
        train, validation = self._prepare_phase_data(
            data, validation_data, steps_per_epoch, class_weight
        )
        phase_optimizer = self._make_optimizer(optimizer, multipliers)
        spec = self._spec(
            kind, name, epochs, freeze, train, phase_optimizer, multipliers,
            backbone_batch_norm, ranks,
        )  # fmt: skip
        record = self._state.recorded_phase(len(self._results), spec)
        if record is not None and record.result is not None:
            return self._replay(record, freeze)
        frozen = self._freeze_for_phase(freeze)
        adaptation = Adaptation()
        try:
            adaptation = adapt(groups_of(self._model).values(), ranks)
            with batch_norm_policy(self._model, backbone_batch_norm) as batch_norm:
                held = self._held(frozen, adaptation)
                record = self._state.start_phase(
                    record, spec, frozen, digest_held(held)
                )
                self._earlier_seconds += record.seconds
                elapsed = _stopwatch(started, earlier=record.seconds)
                training = self._attempt(
                    record,
                    train,
                    validation,
                    phase_optimizer,
                    callbacks,
                    verbose,
                    elapsed,
                )
                result = self._result(
                    record, train, frozen, training, batch_norm, elapsed(), held
                )
            if merge(adaptation):  # Before the save: every phase ends plain.
                self._compile_merged(optimizer, multipliers)
            self._state.finish_phase(record, result)
        except BaseException as error:
            merge(adaptation)
            replacement = self._failed(error)
            if replacement is error:
                raise
            raise replacement from None
        self._results.append(result)
        return result

    def _spec(
        self, kind, name, epochs, freeze, train, optimizer, multipliers,
        backbone_batch_norm, ranks,
    ) -> dict[str, Any]:  # fmt: skip
        """The phase's entry in the plan (`transferkit.plan.phase_spec`)."""
        return phase_spec(
            kind=kind,
            name=name,
            epochs=epochs,
            freeze=freeze,
            data=train,
            optimizer=optimizer,
            loss=self._loss,
            precision=self._policy,
            lr_multipliers=multipliers,
            backbone_batch_norm=backbone_batch_norm,
            augmented_views=self._training_options.augmented_views,
            lora=ranks,
        )

    def _attempt(
        self, record, train, validation, optimizer, callbacks, verbose, elapsed
    ) -> Training:
        """Compiles, loads the phase's last saved epoch and trains."""
        self._compile(optimizer)
        with self._distribution.lost_workers(
            f"training phase '{record.name}'", self._state.resume_message()
        ):
            self._restore(record, optimizer)
            training = self._train(
                record, train, validation, optimizer, callbacks, verbose, elapsed
            )
        if training.interrupted:
            raise KeyboardInterrupt(self._state.interrupted_message(record))
        return training

    def _compile_merged(self, optimizer, multipliers) -> None:
        """Compiles the model again once LoRA adapters are merged, with a
        fresh optimizer built for its variables: the phase's one was built
        for the adapters, which are gone, and a model saved with it would
        not load its optimizer."""
        fresh = self._make_optimizer(optimizer, multipliers)
        self._compile(fresh)
        fresh.build(self._model.trainable_variables)

    def _held(self, frozen, adaptation) -> dict[str, keras.Variable]:
        """The variables held still inside the groups the phase trains."""
        trained = [g for g in groups_of(self._model).values() if g not in frozen]
        return held_variables(self._model, trained, adaptation.frozen)

    def _failed(self, error: BaseException) -> BaseException:
        """What a failed phase raises, once the run has gone back to what it
        last saved: `error`, or for a non-finite loss and a Ctrl-C that
        stopped at once, an error that says what was kept."""
        stopped = str(error) if isinstance(error, NonFiniteError) else ""
        self._state.rollback(stopped)
        if not self._state.phases:  # The phase's start was never saved.
            return error
        record = self._state.phases[-1]
        if isinstance(error, NonFiniteError):
            return NonFiniteError(f"{error} {self._state.kept_message(record)}")
        if isinstance(error, KeyboardInterrupt) and not str(error):
            return KeyboardInterrupt(self._state.interrupted_message(record))
        return error

    def _prepare_phase_data(
        self,
        data: Data,
        validation_data: Data | None,
        steps_per_epoch: int | None,
        class_weight: Any = None,
    ) -> tuple[PhaseData, PhaseData | None]:
        train = self._prepare(data, "data", steps_per_epoch, class_weight)
        validation = (
            None
            if validation_data is None
            else self._prepare(validation_data, "validation_data")
        )
        check_same_classes(train, validation)
        self._adopt_class_names(train, validation)
        if isinstance(data, tf.data.Dataset):
            recipe = recipe_of_dataset(data)
            if recipe is not None and hasattr(self._model, "input_recipe"):
                self._model.input_recipe = recipe.to_config()
        return train, validation

    def _adopt_class_names(
        self, train: PhaseData, validation: PhaseData | None
    ) -> None:
        """Gives the model the class names its data carries, or raises if
        they differ from those it has."""
        known = getattr(self._model, "class_names", None)
        for argument, data in (("data", train), ("validation_data", validation)):
            names = None if data is None else data.class_names
            if names is None or names == known:
                continue
            if known is not None:
                raise ValueError(
                    f"`{argument}` has the classes {list(names)}, but the model's "
                    f"are {list(known)} (given as `class_names`, or from earlier "
                    "data). Load the data with the same class folders, in "
                    "`class_names=` order."
                )
            self._model.class_names = known = names

    def _prepare(
        self,
        data: Data,
        argument: str,
        steps_per_epoch: int | None = None,
        class_weight: Any = None,
    ) -> PhaseData:
        return prepare_data(
            data,
            argument,
            model=self._model,
            loss=self._loss,
            batch_size=self._batch_size,
            check_finite=self._check_finite,
            steps_per_epoch=steps_per_epoch,
            class_weight=class_weight,
        )

    def _make_optimizer(
        self, override: OptimizerSpec | None, multipliers: Mapping[str, float]
    ) -> keras.optimizers.Optimizer:
        """A fresh optimizer for the phase, with the lean step's fused kernels
        and the groups' learning-rate multipliers."""
        if override is not None:
            check_optimizer_spec(override, "optimizer")
        optimizer = fresh_optimizer(self._optimizer if override is None else override)
        if self._training_options.lean_step:
            fuse_updates(optimizer)
        groups = groups_of(self._model)
        scale_learning_rates(
            optimizer,
            [(v, m) for name, m in multipliers.items() for v in groups[name].variables],
        )
        return optimizer

    def _check_multipliers(
        self, multipliers: Mapping[str, float] | None
    ) -> dict[str, float]:
        if multipliers is None:
            return {}
        if not isinstance(multipliers, Mapping):
            raise TypeError(
                "Expected `lr_multipliers` to map group names to numbers, e.g. "
                f"{{'top': 0.1}}. Received: lr_multipliers={multipliers!r}"
            )
        self._groups_named(list(multipliers), "lr_multipliers")
        for value in multipliers.values():
            if not is_non_negative_number(value):
                raise ValueError(
                    "Expected learning-rate multipliers to be finite numbers >= 0. "
                    f"Received: lr_multipliers={dict(multipliers)!r}"
                )
        return {name: float(value) for name, value in multipliers.items()}

    def _replay(
        self, record: Mapping[str, Any], freeze: Sequence[LayerGroup]
    ) -> PhaseResult:
        """A finished phase of a resumed run: its flags set as the plan set
        them (the weights are loaded already) and its saved result."""
        for group in freeze:
            group.trainable = False
        result = record.result
        self._earlier_seconds += result.seconds
        self._results.append(result)
        return result

    def _freeze_for_phase(self, freeze: Sequence[LayerGroup]) -> list[LayerGroup]:
        """Freezes `freeze`; returns every frozen group. Leaves the model as
        it was and raises if nothing would be left to train."""
        previous = {id(g): [layer.trainable for layer in g] for g in freeze}
        for group in freeze:
            group.trainable = False
        if not self._model.trainable_weights:
            message = (
                "Nothing left to train: every layer with weights is frozen "
                f"(frozen groups: {list(self.frozen_groups)}). Unfreeze a "
                "group with `run.unfreeze(name)`."
            )
            for group in freeze:
                for layer, trainable in zip(group, previous[id(group)], strict=True):
                    layer.trainable = trainable
            raise ValueError(message)
        return [groups_of(self._model)[name] for name in self.frozen_groups]

    def _compile(self, optimizer: keras.optimizers.Optimizer) -> None:
        # Compiled even when a trainer model trains: `evaluate`, the
        # checkpoints, resuming and the callbacks use the whole model.
        self._model.compile(**self._compile_args(optimizer))

    def _compile_args(self, optimizer: keras.optimizers.Optimizer) -> dict[str, Any]:
        return {
            "optimizer": optimizer,
            "loss": self._loss,
            "metrics": self._metrics,
            "jit_compile": self._jit_compile,
            "steps_per_execution": self._steps_per_execution,
        }

    def _restore(
        self, record: PhaseRecord, optimizer: keras.optimizers.Optimizer
    ) -> None:
        """Loads the last saved epoch of a resumed phase (with its optimizer
        state), and seeds the phase from where it starts."""
        done = record.epochs_done
        if done:
            optimizer.build(self._model.trainable_variables)
        self._state.restore(record)
        if self._seed is not None:
            index = len(self._results)
            keras.utils.set_random_seed(_derived_seed(self._seed, index, done))

    def _train(
        self,
        record: PhaseRecord,
        train: PhaseData,
        validation: PhaseData | None,
        optimizer: keras.optimizers.Optimizer,
        callbacks: Sequence[keras.callbacks.Callback] | None,
        verbose: str | int | None,
        elapsed: Callable[[], float],
    ) -> Training:
        def on_epoch_end(epoch, logs, interrupted):
            self._state.end_epoch(record, epoch, logs, elapsed(), save=interrupted)

        earlier = record.cache_seconds  # Of the sessions before a resume.
        kept, self._kept_cache = getattr(self, "_kept_cache", None), None

        def on_cache(seconds):
            record.cache_seconds = earlier + seconds

        return train_phase(
            self._model,
            self._compile_args(optimizer),
            train=train,
            validation=validation,
            frozen=record.frozen_groups,
            epochs=record.epochs,
            initial_epoch=record.epochs_done,
            callbacks=list(callbacks or ()),
            verbose=self._verbose if verbose is None else verbose,
            on_epoch_end=on_epoch_end,
            options=self._training_options,
            phase=record.name,
            on_cache=on_cache,
            kept=kept,
        )

    def _result(
        self,
        record: PhaseRecord,
        train: PhaseData,
        frozen: Sequence[LayerGroup],
        training: Training,
        batch_norm: str,
        seconds: float,
        held: Mapping[str, keras.Variable],
    ) -> PhaseResult:
        """The phase's result, with the freeze proof."""
        changed = changed_variables(frozen, record.frozen_digest)
        if record.held_digest is not None:  # None: a folder from before it.
            changed += changed_held(held, record.held_digest)
        history = record.history
        done, planned = record.epochs_done, record.epochs
        return PhaseResult(
            name=record.name,
            epochs=done,
            planned_epochs=planned,
            stopped_early=(
                f"a callback set stop_training after epoch {done} of {planned}"
                if done < planned
                else ""
            ),
            train_samples=train.samples,
            seconds=seconds,
            history=history,
            metrics={
                key[len("val_") :]: values[-1]
                for key, values in history.items()
                if key.startswith("val_")
            },
            trainable_params=count_params(self._model.trainable_weights),
            non_trainable_params=count_params(self._model.non_trainable_weights),
            frozen_groups=tuple(group.name for group in frozen),
            frozen_unchanged=(not changed) if frozen or held else None,
            changed_variables=changed,
            classes=train.classes,
            class_names=getattr(self._model, "class_names", None),
            precision=self._policy,
            steps_per_execution=self._steps_per_execution,
            cached_layers=training.cached_layers,
            cache=training.cache,
            cache_seconds=record.cache_seconds,
            lean_step=training.lean_step,
            training_loop=training.loop,
            training_loop_code=training.loop_code,
            cache_code=training.cache_code,
            lr_multipliers=dict(record.spec.get("lr_multipliers", {})),
            batch_norm=batch_norm,
            lora=dict(record.spec.get("lora", {})),
            held_variables=len(held),
        )

    def _phase_name(self, kind: str, name: str | None) -> str:
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

    def _groups_named(self, names: Iterable[str], argument: str) -> list[LayerGroup]:
        groups = groups_of(self._model)
        names = list(names)
        for name in names:
            if not isinstance(name, str) or name not in groups:
                raise ValueError(
                    f"Unknown group {name!r}. Expected one of {list(groups)}. "
                    f"Received: {argument}={names}"
                )
        return [groups[name] for name in names]


@contextlib.contextmanager
def batch_norm_policy(model: keras.Model, mode: str) -> Iterator[str]:
    """For the block: with `mode="inference"`, the trainable BatchNormalization
    layers of groups split from a backbone, those nested inside their layers
    too (a block layer holding its own), are frozen, so they run in inference
    mode; yields what was done, for the result."""
    layers = [
        sublayer
        for group in groups_of(model).values()
        if group.source is not None
        for layer in group
        for sublayer in layer._flatten_layers(include_self=True)
        if isinstance(sublayer, keras.layers.BatchNormalization) and sublayer.trainable
    ]
    if not layers:
        yield ""
        return
    if mode == "train":
        yield f"{len(layers)} layers of backbone groups trained"
        return
    for layer in layers:
        layer.trainable = False
    try:
        yield f"{len(layers)} layers of backbone groups in inference mode"
    finally:
        for layer in layers:
            layer.trainable = True


def _stopwatch(started: float, *, earlier: float) -> Callable[[], float]:
    """Seconds since `started`, plus `earlier` ones (of interrupted sessions)."""
    return lambda: earlier + time.perf_counter() - started


def _derived_seed(seed: int, phase: int, epoch: int) -> int:
    text = f"{seed}/{phase}/{epoch}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "little")
