"""`TransferRun`: train, freeze named groups, recompile, fine-tune, and
prove the freeze.

`TransferRun` is the face of the library: it checks the run's options,
opens its folder and composes a `PhaseRunner` (`transferkit.run.
phase_runner`), which runs each phase step by step, and the run's tools
(`transferkit.run.tools`: evaluate, predict, the learning-rate sweep).
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf

from transferkit.data.prepare import Data
from transferkit.engine.distribution import Distribution
from transferkit.engine.inference import Predictions
from transferkit.engine.lr_finder import LearningRateSweep
from transferkit.engine.optimizers import OptimizerSpec, check_optimizer_spec
from transferkit.errors import CheckpointError
from transferkit.groups.model_groups import check_model
from transferkit.layers.precision import apply_precision, resolve_precision
from transferkit.phases.speed import Speed
from transferkit.records.freeze_search import FreezeSearch
from transferkit.records.phase_result import PhaseResult
from transferkit.run import freeze_search, tools
from transferkit.run.phase_runner import PhaseRequest, PhaseRunner, RunSettings
from transferkit.run.reporting import write_run_report
from transferkit.run_folder.state import RunState
from transferkit.serving.predictions import FilePredictions
from transferkit.utils.checks import require_count, require_flags, require_seed

__all__ = ["TransferRun"]


def _delegates(function: Callable) -> Callable:
    """Gives a method that hands over to `function(runner, ...)` the
    function's documentation and signature (with `self` for the runner), so
    that `help(run.find_learning_rate)` shows them."""

    def decorate(method: Callable) -> Callable:
        method.__doc__ = function.__doc__
        parameters = list(inspect.signature(function).parameters.values())
        self = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        method.__signature__ = inspect.signature(function).replace(
            parameters=[self, *parameters[1:]]
        )
        return method

    return decorate


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
            any Keras model given groups with `attach_groups` (a
            keras-hub task or backbone, a functional model with several
            inputs), trained in place.
        optimizer: the optimizer of every phase: a name such as `"adam"`, an
            optimizer instance, which is copied from its config for each
            phase, or a zero-argument factory that returns a new optimizer.
        loss: a Keras loss. With `"categorical_crossentropy"` (or another
            categorical loss) integer labels are one-hot encoded to the
            model's output width.
        metrics: Keras metrics, e.g. `["accuracy"]`. Defaults to `None`.
        batch_size: samples per step for array data. Defaults to `32`.
        verbose: Keras' `fit` verbosity for every phase. Defaults to `"auto"`.
        directory: a folder that keeps the run. After every epoch (see
            `checkpoint_every`), and at the start and end of every phase, the
            model (weights, trainable flags, optimizer state), the phase
            results and the random-seed state are saved there, atomically.
            Running the same plan again with the same folder resumes:
            finished phases return their saved results without training, an
            interrupted phase goes on from its last saved epoch. The run
            holds the folder's lock (one writing process at a time) until
            `close()`, the end of a `with` block, or the process; opening
            deletes only files the run made. Defaults to `None` (nothing is
            saved).
        checkpoint_every: with a `directory`, save after every this many
            epochs of a phase; the end of every phase, and an epoch stopped
            by Ctrl-C, are always saved. Raise it when saving a large model
            costs more than the epochs it would spare after a crash.
            Defaults to `1`.
        seed: makes the run repeatable, and a resumed run bitwise equal to
            one that never stopped (with transferkit's loop). Python, NumPy,
            TensorFlow and the seed generators of the model's layers are
            seeded from `seed`, the phase's position and the epoch, at the
            start of each phase and of each epoch
            (`transferkit.engine.seeding`). Seed the model's construction
            yourself (`keras.utils.set_random_seed`) before building it.
            Defaults to `None`.
        check_finite: check array data for NaN and infinite values before
            each phase (one pass over the data). Defaults to `False`.
        precision: `"float32"`, `"mixed_bfloat16"`, `"mixed_float16"`, or
            `"auto"`: mixed float16 with a GPU, mixed bfloat16 on a CPU with
            bfloat16 instructions, float32 otherwise. Under a mixed policy
            every layer but the last computes in 16 bits, while weights,
            optimizer state and the output stay float32. Defaults to
            `"float32"` (the model's policies are left as they are).
        strategy: a `tf.distribute.MirroredStrategy` (the GPUs of one
            machine) or a `tf.distribute.MultiWorkerMirroredStrategy`
            (several machines, one process each; see `docs/scaling.md`).
            Build the model inside `strategy.scope()`; the run makes each
            phase's optimizer, compiles, caches and trains under it.
            `batch_size` stays the global batch, split evenly among the
            replicas. With several workers, each trains on its own shard of
            array data (every `workers`-th sample), only the chief writes
            `directory`, which every worker reads to resume (so it must be
            shared), and a worker that stops makes the others raise
            `transferkit.errors.WorkerLostError`. Defaults to `None` (one
            device).
        speed: how fast the phases run, a `transferkit.Speed`: the feature
            cache, transferkit's own loop, the lean step, steps per call,
            XLA. Each computes the same function at another cost, so none is
            recorded in the plan. Defaults to `None`: `Speed()`, the feature
            cache and transferkit's own loop on.

    The model's own facts stay on the model: its groups (composed with `+`,
    or given to a model trained in place with `attach_groups(model,
    groups)`) and its class names (`model.class_names = [...]`, or those
    of the first dataset that carries them; data with other names is
    refused).

    Callbacks see this run's model as `self.model`, also while the feature
    cache or the lean step trains a model of its later layers: a
    `ModelCheckpoint` saves the whole model, `EarlyStopping(
    restore_best_weights=True)` restores all of it.

    Ctrl-C during a phase finishes the current epoch, saves it (with a
    `directory`), and raises `KeyboardInterrupt` saying how to resume; a
    second Ctrl-C stops at once. A non-finite loss or weight stops the phase
    with `NonFiniteError` before the epoch is saved, so the folder keeps the
    last finite epoch.

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
        directory: str | os.PathLike | None = None,
        checkpoint_every: int = 1,
        strategy: tf.distribute.Strategy | None = None,
        precision: str = "float32",
        speed: Speed | None = None,
        seed: int | None = None,
        check_finite: bool = False,
        verbose: str | int = "auto",
    ):
        self._started = time.perf_counter()  # This process's share of the run.
        check_model(model)
        speed = Speed.of(speed)
        batch_size = require_count(batch_size, "batch_size")
        checkpoint_every = require_count(checkpoint_every, "checkpoint_every")
        require_flags(check_finite=check_finite)
        distribution = _distribution(strategy, model, batch_size, speed)
        policy, self.precision_reason = resolve_precision(precision)
        check_optimizer_spec(optimizer, "optimizer")
        settings = RunSettings(
            optimizer=optimizer,
            loss=loss,
            metrics=list(metrics) if metrics is not None else None,
            batch_size=batch_size,
            verbose=verbose,
            seed=require_seed(seed),
            check_finite=check_finite,
            precision=policy,
            speed=speed,
        )
        apply_precision(model, policy)
        state = RunState(
            model,
            directory,
            checkpoint_every=checkpoint_every,
            writer=distribution.is_chief,
        )
        self._distribution = distribution
        self._state = state
        self._closed = False
        self._searches: list[FreezeSearch] = []
        self._open_folder(directory)
        self._searches = freeze_search.load_searches(state.path)
        self._runner = PhaseRunner(model, settings, state, distribution)

    def _open_folder(self, directory) -> None:
        """Opens the run folder: the lock first, then the saved state, read
        and checked, with the checkpoint loaded; with several workers, all of
        them compare what they read; only then the clean-up."""
        with self._distribution.scope():
            self._state.open()
        try:
            self._check_workers_agree(directory)
            self._state.clean_up()
        except BaseException:
            self._state.close()
            raise

    def close(self) -> None:
        """Releases the run folder's lock, so that another process may write
        it; the results and the model stay usable, but no phase can run.
        Also done when a `with TransferRun(...) as run:` block ends, and by
        the operating system when the process ends."""
        self._closed = True
        self._runner.drop_kept_cache()
        self._state.close()

    def __enter__(self) -> TransferRun:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(
                "This TransferRun is closed: its folder's lock was released. "
                "Make a new TransferRun with the same directory to go on."
            )

    def _check_workers_agree(self, directory) -> None:
        """With several workers: waits until all of them have read the run
        folder (before the chief writes to it), and raises if one of them
        read another state than the chief."""
        distribution = self._distribution
        if not distribution.multi_worker:
            return
        mine = self._state.fingerprint() if directory is not None else 0
        if not distribution.agree(mine):
            raise CheckpointError(
                "The workers read different states of the run folder "
                f"{str(directory)!r} (this is worker {distribution.worker} of "
                f"{distribution.workers}): every worker resumes from the chief's "
                "folder, so it must be the same folder for all of them (a shared "
                "file system), or absent on all. Nothing was overwritten."
            )

    @property
    def model(self) -> keras.Model:
        """The model being trained."""
        return self._runner.model

    @property
    def speed(self) -> Speed:
        """How fast the phases run (`transferkit.Speed`)."""
        return self._runner.settings.speed

    @property
    def strategy(self) -> tf.distribute.Strategy | None:
        """The `tf.distribute` strategy the run trains under, or `None`."""
        return self._distribution.strategy

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the run's folder and reports: always,
        but for the workers other than the chief of a multi-worker run."""
        return self._distribution.is_chief

    @property
    def precision(self) -> str:
        """The dtype policy the model computes in; `precision_reason` says
        why (`"as asked"`, or what `"auto"` found)."""
        return self._runner.settings.precision

    @property
    def results(self) -> list[PhaseResult]:
        """One `PhaseResult` per finished phase, in order."""
        return list(self._runner.results)

    @property
    def earlier_seconds(self) -> float:
        """Seconds that earlier processes spent on the phases this run has
        run or replayed from its `directory` (0 for a fresh run): added to
        this process's time, the whole run's."""
        return self._runner.earlier_seconds

    @property
    def saved_phases(self) -> list[tuple[str, int, int, bool]]:
        """`(name, epochs_done, epochs, finished)` per phase recorded in the
        run's `directory`, e.g. to tell the user what a rerun resumes. To read
        a folder that another process writes, without a model or a lock,
        use `transferkit.saved_phases(directory)`."""
        return [phase.summary for phase in self._state.phases]

    @property
    def frozen_groups(self) -> tuple[str, ...]:
        """Names of the groups all of whose layers are frozen now."""
        return self._runner.frozen_groups

    def freeze(self, *names: str) -> None:
        """Freezes the named groups until `unfreeze`.

        Takes effect at the next phase, which recompiles the model.

        Raises:
            ValueError: if a name is not a group of the model.
        """
        for group in self._runner.groups_named(names, "freeze"):
            group.trainable = False

    def unfreeze(self, *names: str) -> None:
        """Makes every layer of the named groups trainable again.

        Raises:
            ValueError: if a name is not a group of the model.
        """
        for group in self._runner.groups_named(names, "unfreeze"):
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
        lr_multipliers: Mapping[str, float] | None = None,
        backbone_batch_norm: str = "inference",
        steps_per_epoch: int | None = None,
        class_weight: Mapping[Any, float] | str | None = None,
        lora: Mapping[str, int] | None = None,
        augmented_views: int = 1,
        also_evaluate: Mapping[str, Data] | None = None,
    ) -> PhaseResult:
        """Runs one phase with the groups frozen as they are now.

        Args:
            data: training data: a `ClassSubset`, an `(x, y)` or `(x, y,
                sample_weight)` tuple of arrays, or a batched
                `tf.data.Dataset` of either.
            epochs: epochs to train.
            validation_data: evaluated after every epoch, in the same forms as
                `data`; its final metrics land in the result's `metrics`.
                Defaults to `None`.
            name: the phase's name. Defaults to `"train"` (with a suffix if
                the run already has a phase of that name).
            optimizer: overrides the run's optimizer for this phase only.
                Defaults to `None` (the run's).
            callbacks: Keras callbacks for `fit`; they see `model` as
                `self.model`. Defaults to `None`.
            verbose: overrides the run's verbosity. Defaults to `None`.
            lr_multipliers: learning-rate multipliers by group name, e.g.
                `{"top": 0.1}`: the phase's optimizer updates those groups'
                variables with its learning rate (or schedule) times the
                multiplier, exactly as with that rate, whatever the optimizer;
                0 leaves a group as it is. Other groups use 1.0. Defaults to
                `None`.
            backbone_batch_norm: `"inference"` keeps the BatchNormalization
                layers of trainable groups split from a backbone
                (`LayerGroup.split`) frozen, and so in inference mode, as the
                Keras fine-tuning guide advises for a pretrained backbone;
                `"train"` trains them (as for a backbone trained from
                scratch). Other groups' BatchNormalization layers train as
                usual. Defaults to `"inference"`.
            steps_per_epoch: batches per epoch of a `tf.data.Dataset`, as in
                `fit`: the epoch ends after that many, and the next one goes
                on from there; required for an endless dataset (`repeat()`),
                which is refused without it. Not for arrays. Defaults to
                `None`: one pass over the dataset.
            class_weight: `{class: weight}` (class ids, or the run's class
                names), as in `fit`: each training sample's loss is weighed
                by its class's weight; classes left out weigh 1.0. Or
                `"balanced"`: `n / (k * n_c)` from the training labels. Not
                with sample weights in the data. Defaults to `None`.
            lora: `{group: rank}`: adapt those groups with LoRA instead of
                training them, their base weights proven unchanged and the
                adapters merged at the phase's end (`transferkit.layers.lora`).
                Defaults to `None`.
            augmented_views: behind augmentation layers, which otherwise turn
                the feature cache off, cache this many augmented views of each
                training sample; each epoch trains on one of them (recorded in
                the plan: not the same computation as fresh draws, see
                docs/image-folders.md). Defaults to `1`: no views.
            also_evaluate: data sets, by name, that the whole model is also
                evaluated on after every epoch (in inference mode), beside
                `validation_data`, which `metrics` reports: e.g. `{"digits
                0-4": old}` for what fine-tuning costs on an old task
                (docs/forgetting.md). In the forms of `validation_data`, labels
                within the model's outputs; logged as `digits_0_4_loss`, ...,
                the final values in `also_evaluated`. Defaults to `None`.

        Returns:
            The phase's `PhaseResult`, also appended to `results`.
        """
        request = PhaseRequest.of("train", locals())
        return self._run(request, data, validation_data, callbacks, verbose)

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
        lr_multipliers: Mapping[str, float] | None = None,
        backbone_batch_norm: str = "inference",
        steps_per_epoch: int | None = None,
        class_weight: Mapping[Any, float] | str | None = None,
        lora: Mapping[str, int] | None = None,
        augmented_views: int = 1,
        also_evaluate: Mapping[str, Data] | None = None,
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
            lr_multipliers: as for `train`. Defaults to `None`.
            backbone_batch_norm: as for `train`. Defaults to `"inference"`.
            steps_per_epoch: as for `train`. Defaults to `None`.
            class_weight: as for `train`. Defaults to `None`.
            lora: as for `train`. Defaults to `None`.
            augmented_views: as for `train`. Defaults to `1`.
            also_evaluate: as for `train`, e.g. the old task's data.
                Defaults to `None`.

        Returns:
            The phase's `PhaseResult`, also appended to `results`.

        Raises:
            ValueError: if a name is not a group of the model, or nothing
                would be left to train.
        """
        if isinstance(freeze, str):
            names = (freeze,)
        elif isinstance(freeze, Iterable):
            names = tuple(freeze)
        else:
            raise TypeError(
                "Expected `freeze` to be a group name or a list of group names, "
                f"e.g. ['features']. Received: freeze={freeze!r}"
            )
        groups = self._runner.groups_named(names, "freeze")
        request = PhaseRequest.of("fine_tune", {**locals(), "freeze": tuple(groups)})
        return self._run(request, data, validation_data, callbacks, verbose)

    def _run(self, request, data, validation_data, callbacks, verbose) -> PhaseResult:
        self._check_open()
        return self._runner.run(
            request,
            data,
            validation_data=validation_data,
            callbacks=callbacks,
            verbose=verbose,
        )

    @_delegates(tools.find_learning_rate)
    def find_learning_rate(self, data: Data, **options: Any) -> LearningRateSweep:
        self._check_open()
        return tools.find_learning_rate(self._runner, data, **options)

    @_delegates(freeze_search.search_freeze)
    def search_freeze(self, data: Data, **options: Any) -> FreezeSearch:
        self._check_open()
        search = freeze_search.search_freeze(self._runner, data, **options)
        self._searches.append(search)
        if self._distribution.is_chief:
            freeze_search.save_searches(self._state.path, self._searches)
        return search

    @_delegates(tools.predict)
    def predict(self, data: Any, **options: Any) -> Predictions | FilePredictions:
        return tools.predict(self._runner, data, **options)

    @_delegates(tools.evaluate)
    def evaluate(self, data: Data) -> dict[str, Any]:
        return tools.evaluate(self._runner, data)

    def report(
        self,
        test_data: Any = None,
        *,
        dataset: str | None = None,
        settings: Mapping[str, Any] | None = None,
        directory: str | os.PathLike | None = None,
        count: int = 8,
        batch_size: int = 128,
    ) -> dict[str, Any]:
        """The run's report, written into its folder: one call.

        Every finished phase (as `build_report` records them); with
        `test_data`, the last phase's accuracy and loss on it, its confusion
        matrix and its `count` worst mistakes (named by file for an image
        folder), from one pass over it; and the run's total time: this
        process's since the run was made, plus what earlier processes spent
        on the phases it resumed or restored from the folder. Written (as
        `report.json`, `report.md` and the figures, atomically) into
        `directory`, by the chief only.

        Args:
            test_data: labelled data to evaluate the model on: a folder of
                class folders, a dataset, `(x, y)` arrays or a `ClassSubset`.
                Defaults to `None` (no evaluation).
            dataset: where the data came from, in words. Defaults to `None`:
                the test folder's path.
            settings: anything else the report should keep (the options of
                your script). Defaults to `None`.
            directory: where to write. Defaults to `None`: the run's folder,
                and nowhere for a run without one.
            count: mistakes to keep. Defaults to `8`.
            batch_size: samples per step of the evaluation. Defaults to `128`.

        Returns:
            The report (`transferkit.load_report` reads it back).
        """
        where = directory if directory is not None else self._state.path
        if directory is None and where is not None:
            self._check_open()  # Its folder may be another process's now.
        return write_run_report(
            self._runner,
            test_data,
            started=self._started,
            dataset=dataset,
            settings=settings,
            directory=where,
            count=count,
            batch_size=batch_size,
            writes=self._distribution.is_chief,
            searches=self._searches,
        )


def _distribution(
    strategy: tf.distribute.Strategy | None,
    model: keras.Model,
    batch_size: int,
    speed: Speed,
) -> Distribution:
    """The run's `Distribution`, checked against the model and settings."""
    distribution = Distribution(strategy)
    distribution.check_model(model)
    distribution.check_batch_size(batch_size)
    if distribution.multi_worker and speed.training_loop == "fit":
        raise ValueError(
            "Keras 3's fit fails under MultiWorkerMirroredStrategy "
            "(keras-team/keras#20585); transferkit trains such a run with "
            "its own loop. Expected training_loop='auto'. Received: "
            "training_loop='fit'"
        )
    return distribution
