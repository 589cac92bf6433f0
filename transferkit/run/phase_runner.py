"""How a phase of a `TransferRun` runs, step by step.

`PhaseRunner` owns what the phases of a run share: the model, the run's
settings (`RunSettings`), its folder's state, its strategy, the results so
far and a cache kept from a learning-rate sweep; it sets all of them in its
own constructor. `PhaseRunner.run` takes one `PhaseRequest` (what the user
asked of the phase) and reads top to bottom; each step is a method below,
most of them handing over to a room of its own: `transferkit.data` checks
and prepares the data, `transferkit.engine.optimizers` makes the phase's
optimizer, the phase's `PhaseSpec` is its entry in the plan, which
`transferkit.run_folder` records and resumes, `transferkit.phases.training`
trains, and the freeze proof checks the frozen variables.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf

from transferkit.data.input_recipe import recipe_of_dataset
from transferkit.data.prepare import (
    Data,
    PhaseData,
    check_same_classes,
    prepare_data,
)
from transferkit.engine.also_evaluate import AlsoEvaluate, check_also_evaluate
from transferkit.engine.distribution import Distribution
from transferkit.engine.optimizers import (
    OptimizerSpec,
    check_optimizer_spec,
    fresh_optimizer,
    fuse_updates,
    scale_learning_rates,
)
from transferkit.engine.seeding import EpochSeeds, reseed
from transferkit.errors import NonFiniteError
from transferkit.groups.layer_group import LayerGroup
from transferkit.groups.model_groups import groups_of
from transferkit.layers.lora import Adaptation, adapt, check_lora, merge
from transferkit.phases.batch_norm import batch_norm_policy
from transferkit.phases.freeze_proof import (
    changed_held,
    changed_variables,
    count_params,
    digest_held,
    held_variables,
)
from transferkit.phases.plan import PhaseSpec
from transferkit.phases.training import Training, TrainingOptions, train_phase
from transferkit.records.phase_result import PhaseResult
from transferkit.records.run_record import PhaseRecord
from transferkit.run.settings import BATCH_NORM, PhaseRequest, RunSettings
from transferkit.run_folder.state import RunState
from transferkit.utils.checks import (
    is_non_negative_number,
    require_choice,
    require_count,
    require_epochs,
)

# `batch_norm_policy` lives in `transferkit.phases.batch_norm`; named here
# too for `transferkit.run.tools`, which imports it from this module.
__all__ = ["PhaseRunner", "batch_norm_policy"]


class PhaseRunner:
    """Runs the phases of one run, and holds what they share.

    Args:
        model: the model, with groups.
        settings: the run's settings, checked.
        state: the run's state (its folder, or none), opened.
        distribution: the run's strategy.
    """

    def __init__(
        self,
        model: keras.Model,
        settings: RunSettings,
        state: RunState,
        distribution: Distribution,
    ):
        self.model = model
        self.settings = settings
        self.state = state
        self.distribution = distribution
        self.results: list[PhaseResult] = []
        self.earlier_seconds = 0.0
        """Seconds earlier processes spent on the phases run or replayed."""
        self.kept_cache = None
        """A cache a learning-rate sweep kept for the next phase, or `None`."""
        speed = settings.speed
        self.training_options = TrainingOptions(
            precision=settings.precision,
            feature_cache=speed.feature_cache,
            feature_cache_memory=speed.feature_cache_memory,
            # The other workers' caches stay out of the chief's folder.
            cache_folder=state.path if state.writes else None,
            lean_step=speed.lean_step,
            cache_datasets=speed.cache_datasets,
            training_loop=speed.training_loop,
            steps_per_execution=speed.steps_per_execution,
            distribution=distribution,
        )

    @property
    def frozen_groups(self) -> tuple[str, ...]:
        """Names of the groups all of whose layers are frozen now."""
        return tuple(
            name for name, group in groups_of(self.model).items() if not group.trainable
        )

    def drop_kept_cache(self) -> None:
        """Frees a cache a learning-rate sweep kept for the next phase."""
        kept, self.kept_cache = self.kept_cache, None
        if kept is not None:
            kept.close()

    def run(
        self,
        request: PhaseRequest,
        data: Data,
        *,
        validation_data: Data | None = None,
        callbacks: Sequence[keras.callbacks.Callback] | None = None,
        verbose: str | int | None = None,
    ) -> PhaseResult:
        """One phase, start to end, under the run's strategy; each step is a
        method below. A phase that fails goes back to its last saved epoch,
        where a retry resumes."""
        with self.distribution.scope():
            started = time.perf_counter()
            spec, train, validation, optimizer, also = self._plan(
                request, data, validation_data
            )
            record = self.state.recorded_phase(len(self.results), spec.to_json())
            if record is not None and record.result is not None:
                return self._replay(record, request.freeze, verbose)
            return self._run(
                record, spec, request, train, (validation, also), optimizer,
                callbacks, verbose, started,
            )  # fmt: skip

    def _plan(
        self, request: PhaseRequest, data: Data, validation_data: Data | None
    ) -> tuple[
        PhaseSpec, PhaseData, PhaseData | None, keras.optimizers.Optimizer, AlsoEvaluate
    ]:
        """Checks `request` and the data; returns the phase's entry in the
        plan, its data, its fresh optimizer and the sets it also evaluates
        (not in the plan: they change no weight, so a resumed phase may
        evaluate others)."""
        epochs = require_epochs(request.epochs)
        name = self._phase_name(request.kind, request.name)
        multipliers = self.check_multipliers(request.lr_multipliers)
        require_choice(request.backbone_batch_norm, "backbone_batch_norm", BATCH_NORM)
        views = require_count(request.augmented_views, "augmented_views")
        frozen_names = [*self.frozen_groups, *(g.name for g in request.freeze)]
        ranks = check_lora(request.lora, groups_of(self.model), frozen_names)
        steps = request.steps_per_epoch
        if steps is not None:
            steps = require_count(steps, "steps_per_epoch")
        train, validation = self.prepare_phase_data(
            data, validation_data, steps, request.class_weight
        )
        also = AlsoEvaluate(
            self.model,
            {
                label: self.prepare(given, f"also_evaluate[{label!r}]")
                for label, given in check_also_evaluate(request.also_evaluate).items()
            },
            self.distribution,
        )
        optimizer = self.make_optimizer(request.optimizer, multipliers)
        spec = PhaseSpec.of(
            kind=request.kind,
            name=name,
            epochs=epochs,
            freeze=request.freeze,
            data=train,
            optimizer=optimizer,
            loss=self.settings.loss,
            precision=self.settings.precision,
            lr_multipliers=multipliers,
            backbone_batch_norm=request.backbone_batch_norm,
            augmented_views=views,
            lora=ranks,
        )
        return spec, train, validation, optimizer, also

    def _run(
        self, record, spec, request, train, held_out, optimizer, callbacks,
        verbose, started,
    ) -> PhaseResult:  # fmt: skip
        """Freezes, adapts, trains and proves the freeze; saves the phase's
        start and end. On any error, goes back to the last save. `held_out`
        is `(validation data, AlsoEvaluate)`."""
        frozen = self.freeze_for_phase(request.freeze)
        adaptation = Adaptation()
        self._reseed("start")
        try:
            adaptation = adapt(groups_of(self.model).values(), spec.lora)
            with batch_norm_policy(self.model, spec.backbone_batch_norm) as batch_norm:
                held = self._held(frozen, adaptation)
                record = self.state.start_phase(
                    record, spec.to_json(), frozen, digest_held(held)
                )
                self.earlier_seconds += record.seconds
                elapsed = _stopwatch(started, earlier=record.seconds)
                training = self._attempt(
                    record, spec, train, held_out, optimizer, callbacks,
                    verbose, elapsed,
                )  # fmt: skip
                result = self._result(
                    record, spec, train, frozen, training, batch_norm, elapsed(),
                    held, held_out[1],
                )  # fmt: skip
            if merge(adaptation):  # Before the save: every phase ends plain.
                self._compile_merged(request.optimizer, spec.lr_multipliers)
            self.state.finish_phase(record, result)
        except BaseException as error:
            merge(adaptation)
            replacement = self._failed(error)
            if replacement is error:
                raise
            raise replacement from None
        self.results.append(result)
        return result

    def _attempt(
        self, record, spec, train, held_out, optimizer, callbacks, verbose, elapsed
    ) -> Training:
        """Compiles, loads the phase's last saved epoch and trains."""
        self._compile(optimizer)
        with self.distribution.lost_workers(
            f"training phase '{record.name}'", self.state.resume_message()
        ):
            self._restore(record, optimizer)
            training = self._train(
                record, spec, train, held_out, optimizer, callbacks, verbose,
                elapsed,
            )  # fmt: skip
        if training.interrupted:
            raise KeyboardInterrupt(self.state.interrupted_message(record))
        return training

    def _compile_merged(self, optimizer, multipliers) -> None:
        """Compiles the model again once LoRA adapters are merged, with a
        fresh optimizer built for its variables: the phase's one was built
        for the adapters, which are gone, and a model saved with it would
        not load its optimizer."""
        fresh = self.make_optimizer(optimizer, multipliers)
        self._compile(fresh)
        fresh.build(self.model.trainable_variables)

    def _held(self, frozen, adaptation) -> dict[str, keras.Variable]:
        """The variables held still inside the groups the phase trains."""
        trained = [g for g in groups_of(self.model).values() if g not in frozen]
        return held_variables(self.model, trained, adaptation.frozen)

    def _failed(self, error: BaseException) -> BaseException:
        """What a failed phase raises, once the run has gone back to what it
        last saved: `error`, or for a non-finite loss and a Ctrl-C that
        stopped at once, an error that says what was kept."""
        stopped = str(error) if isinstance(error, NonFiniteError) else ""
        self.state.rollback(stopped)
        if not self.state.phases:  # The phase's start was never saved.
            return error
        record = self.state.phases[-1]
        if isinstance(error, NonFiniteError):
            return NonFiniteError(f"{error} {self.state.kept_message(record)}")
        if isinstance(error, KeyboardInterrupt) and not str(error):
            return KeyboardInterrupt(self.state.interrupted_message(record))
        return error

    def prepare_phase_data(
        self,
        data: Data,
        validation_data: Data | None,
        steps_per_epoch: int | None,
        class_weight: Any = None,
    ) -> tuple[PhaseData, PhaseData | None]:
        train = self.prepare(data, "data", steps_per_epoch, class_weight)
        validation = (
            None
            if validation_data is None
            else self.prepare(validation_data, "validation_data")
        )
        check_same_classes(train, validation)
        self._adopt_class_names(train, validation)
        if isinstance(data, tf.data.Dataset):
            recipe = recipe_of_dataset(data)
            if recipe is not None and hasattr(self.model, "input_recipe"):
                self.model.input_recipe = recipe.to_config()
        return train, validation

    def _adopt_class_names(
        self, train: PhaseData, validation: PhaseData | None
    ) -> None:
        """Gives the model the class names its data carries, or raises if
        they differ from those it has."""
        known = getattr(self.model, "class_names", None)
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
            self.model.class_names = known = names

    def prepare(
        self,
        data: Data,
        argument: str,
        steps_per_epoch: int | None = None,
        class_weight: Any = None,
    ) -> PhaseData:
        return prepare_data(
            data,
            argument,
            model=self.model,
            loss=self.settings.loss,
            batch_size=self.settings.batch_size,
            check_finite=self.settings.check_finite,
            steps_per_epoch=steps_per_epoch,
            class_weight=class_weight,
        )

    def make_optimizer(
        self, override: OptimizerSpec | None, multipliers: Mapping[str, float]
    ) -> keras.optimizers.Optimizer:
        """A fresh optimizer for the phase, with the lean step's fused kernels
        and the groups' learning-rate multipliers."""
        if override is not None:
            check_optimizer_spec(override, "optimizer")
        optimizer = fresh_optimizer(
            self.settings.optimizer if override is None else override
        )
        if self.training_options.lean_step:
            fuse_updates(optimizer)
        groups = groups_of(self.model)
        scale_learning_rates(
            optimizer,
            [(v, m) for name, m in multipliers.items() for v in groups[name].variables],
        )
        return optimizer

    def check_multipliers(
        self, multipliers: Mapping[str, float] | None
    ) -> dict[str, float]:
        if multipliers is None:
            return {}
        if not isinstance(multipliers, Mapping):
            raise TypeError(
                "Expected `lr_multipliers` to map group names to numbers, e.g. "
                f"{{'top': 0.1}}. Received: lr_multipliers={multipliers!r}"
            )
        self.groups_named(list(multipliers), "lr_multipliers")
        for value in multipliers.values():
            if not is_non_negative_number(value):
                raise ValueError(
                    "Expected learning-rate multipliers to be finite numbers >= 0. "
                    f"Received: lr_multipliers={dict(multipliers)!r}"
                )
        return {name: float(value) for name, value in multipliers.items()}

    def _replay(
        self,
        record: PhaseRecord,
        freeze: Sequence[LayerGroup],
        verbose: str | int | None = None,
    ) -> PhaseResult:
        """A finished phase of a resumed run: its flags set as the plan set
        them (the weights are loaded already) and its saved result, with a
        line that says so, unless quiet (as the phase header)."""
        for group in freeze:
            group.trainable = False
        if (self.settings.verbose if verbose is None else verbose) != 0:
            print(self.state.finished_message(record), flush=True)
        result = record.result
        self.earlier_seconds += result.seconds
        self.results.append(result)
        return result

    def freeze_for_phase(self, freeze: Sequence[LayerGroup]) -> list[LayerGroup]:
        """Freezes `freeze`; returns every frozen group. Leaves the model as
        it was and raises if nothing would be left to train."""
        previous = {id(g): [layer.trainable for layer in g] for g in freeze}
        for group in freeze:
            group.trainable = False
        if not self.model.trainable_weights:
            message = (
                "Nothing left to train: every layer with weights is frozen "
                f"(frozen groups: {list(self.frozen_groups)}). Unfreeze a "
                "group with `run.unfreeze(name)`."
            )
            for group in freeze:
                for layer, trainable in zip(group, previous[id(group)], strict=True):
                    layer.trainable = trainable
            raise ValueError(message)
        return [groups_of(self.model)[name] for name in self.frozen_groups]

    def _compile(self, optimizer: keras.optimizers.Optimizer) -> None:
        # Compiled even when a trainer model trains: `evaluate`, the
        # checkpoints, resuming and the callbacks use the whole model.
        self.model.compile(**self.compile_args(optimizer))

    def compile_args(self, optimizer: keras.optimizers.Optimizer) -> dict[str, Any]:
        return {
            "optimizer": optimizer,
            "loss": self.settings.loss,
            "metrics": self.settings.metrics,
            "jit_compile": self.settings.speed.jit_compile,
            "steps_per_execution": self.settings.speed.steps_per_execution,
        }

    def _restore(
        self, record: PhaseRecord, optimizer: keras.optimizers.Optimizer
    ) -> None:
        """Loads the last saved epoch of a resumed phase (with its optimizer
        state), and seeds what the phase draws before its first epoch."""
        if record.epochs_done:
            optimizer.build(self.model.trainable_variables)
        self.state.restore(record)
        self._reseed("fill")

    def _reseed(self, point: str) -> None:
        """With a seed, every random state from it, the phase's position and
        `point` (`transferkit.engine.seeding`)."""
        if self.settings.seed is not None:
            reseed(self.model, self.settings.seed, len(self.results), point)

    def _epoch_seeds(self) -> list[keras.callbacks.Callback]:
        if self.settings.seed is None:
            return []
        return [EpochSeeds(self.model, self.settings.seed, len(self.results))]

    def _train(
        self,
        record: PhaseRecord,
        spec: PhaseSpec,
        train: PhaseData,
        held_out: tuple[PhaseData | None, AlsoEvaluate],
        optimizer: keras.optimizers.Optimizer,
        callbacks: Sequence[keras.callbacks.Callback] | None,
        verbose: str | int | None,
        elapsed: Callable[[], float],
    ) -> Training:
        """Trains the phase; `held_out` is its validation data and the sets
        it also evaluates."""

        def on_epoch_end(epoch, logs, interrupted):
            self.state.end_epoch(record, epoch, logs, elapsed(), save=interrupted)

        earlier = record.cache_seconds  # Of the sessions before a resume.
        kept, self.kept_cache = self.kept_cache, None

        def on_cache(seconds):
            record.cache_seconds = earlier + seconds

        return train_phase(
            self.model,
            self.compile_args(optimizer),
            train=train,
            validation=held_out[0],
            also_evaluate=held_out[1],
            frozen=record.frozen_groups,
            epochs=record.epochs,
            initial_epoch=record.epochs_done,
            callbacks=[*(callbacks or ()), *self._epoch_seeds()],
            verbose=self.settings.verbose if verbose is None else verbose,
            on_epoch_end=on_epoch_end,
            options=dataclasses.replace(
                self.training_options, augmented_views=spec.augmented_views
            ),
            phase=record.name,
            on_cache=on_cache,
            kept=kept,
        )

    def _result(
        self,
        record: PhaseRecord,
        spec: PhaseSpec,
        train: PhaseData,
        frozen: Sequence[LayerGroup],
        training: Training,
        batch_norm: str,
        seconds: float,
        held: Mapping[str, keras.Variable],
        also: AlsoEvaluate,
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
            trainable_params=count_params(self.model.trainable_weights),
            non_trainable_params=count_params(self.model.non_trainable_weights),
            frozen_groups=tuple(group.name for group in frozen),
            frozen_unchanged=(not changed) if frozen or held else None,
            changed_variables=changed,
            classes=train.classes,
            class_names=getattr(self.model, "class_names", None),
            precision=self.settings.precision,
            steps_per_execution=self.settings.speed.steps_per_execution,
            cached_layers=training.cached_layers,
            cache=training.cache,
            cache_seconds=record.cache_seconds,
            lean_step=training.lean_step,
            training_loop=training.loop,
            training_loop_code=training.loop_code,
            cache_code=training.cache_code,
            lr_multipliers=dict(spec.lr_multipliers),
            batch_norm=batch_norm,
            lora=dict(spec.lora),
            held_variables=len(held),
            also_evaluated=also.final(history),
        )

    def _phase_name(self, kind: str, name: str | None) -> str:
        taken = {result.name for result in self.results}
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

    def groups_named(self, names: Iterable[str], argument: str) -> list[LayerGroup]:
        groups = groups_of(self.model)
        names = list(names)
        for name in names:
            if not isinstance(name, str) or name not in groups:
                raise ValueError(
                    f"Unknown group {name!r}. Expected one of {list(groups)}. "
                    f"Received: {argument}={names}"
                )
        return [groups[name] for name in names]


def _stopwatch(started: float, *, earlier: float) -> Callable[[], float]:
    """Seconds since `started`, plus `earlier` ones (of interrupted sessions)."""
    return lambda: earlier + time.perf_counter() - started
