"""A search over what to freeze: one short fine-tune per candidate cut, each
from the same weights, and the run left as it was.

How many groups to freeze is the central question of transfer, and the one
every fine-tuning library leaves to its user. A run's groups name the
candidate cuts; `search_freeze` trains each candidate as `run.fine_tune(data,
freeze=candidate, epochs=epochs)` would from the run's present weights
(bitwise, with a seed, on CPU float32), on a scratch runner that writes no
folder and records no phase, restoring every variable, trainable flag and
random state after each. The frozen prefix's features are computed once: the
candidates run from the shallowest cut to the deepest, and each cut's
feature cache is carried on from the one before through the groups in
between (`transferkit.cache.chain`), instead of being computed from the data
again.

`TransferRun.search_freeze` calls it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from transferkit.cache.chain import extend_cache, extension, lend
from transferkit.data.prepare import Data
from transferkit.engine import lr_finder
from transferkit.engine.optimizers import OptimizerSpec
from transferkit.errors import CheckpointError
from transferkit.groups.behaviour import trains_nothing
from transferkit.groups.model_groups import groups_of
from transferkit.phases.training import build_phase_cache
from transferkit.records.freeze_search import (
    FreezeCandidate,
    FreezeSearch,
    candidates_of,
    metric_mode,
)
from transferkit.records.layout import FREEZE_SEARCH_FILE
from transferkit.run.phase_runner import PhaseRunner
from transferkit.run.settings import PhaseRequest
from transferkit.run_folder.state import RunState
from transferkit.utils.checks import require_epochs
from transferkit.utils.io import atomic_write, dumps

__all__ = ["load_searches", "save_searches", "search_freeze"]

CARRIED = "carried on from the cut before"

PHASE = (
    "epochs",
    "optimizer",
    "lr_multipliers",
    "class_weight",
    "backbone_batch_norm",
    "augmented_views",
)
"""The arguments of `search_freeze` that each candidate's phase takes."""


@dataclasses.dataclass(frozen=True)
class _Cut:
    """One candidate: the groups it freezes, as the run names them."""

    frozen: tuple[str, ...]
    depth: int


def search_freeze(
    runner: PhaseRunner,
    data: Data,
    *,
    validation_data: Data,
    epochs: int,
    candidates: Sequence[Any] | None = None,
    metric: str = "loss",
    optimizer: OptimizerSpec | None = None,
    lr_multipliers: Mapping[str, float] | None = None,
    class_weight: Any = None,
    backbone_batch_norm: str = "inference",
    augmented_views: int = 1,
    verbose: str | int | None = None,
) -> FreezeSearch:
    """Tries each candidate cut for `epochs` from the run's present weights,
    and leaves the run exactly as it was.

    Each candidate is what `run.fine_tune(data, freeze=row.frozen,
    epochs=epochs, ...)` would give now (bitwise, for a run with a seed on
    CPU float32): a fresh optimizer, the same seeds, the same phase. Groups
    frozen now stay frozen in every candidate, as in `fine_tune`. Then train
    the one you choose: `run.fine_tune(data, freeze=search.best.frozen,
    ...)`.

    Args:
        data: training data, as for `train`.
        validation_data: the data that chooses; as for `train`. Required.
        epochs: epochs per candidate.
        candidates: the cuts to try; each an int `n` (the first `n` groups
            with weights), a group name (the groups with weights up to and
            including it), or a list of group names (those). Groups without
            weights (preprocessing, augmentation) are left as they are.
            Defaults to `None`: every prefix of the groups that hold
            weights, from all but the last one down to none.
        metric: the validation metric that chooses `best`, e.g.
            `"accuracy"`; lowest wins for a loss or an error, highest for
            the rest. Defaults to `"loss"`.
        optimizer: as for `train`. Defaults to `None` (the run's).
        lr_multipliers: as for `train`. Defaults to `None`.
        class_weight: as for `train`. Defaults to `None`.
        backbone_batch_norm: as for `train`. Defaults to `"inference"`.
        augmented_views: as for `train`. Defaults to `1`.
        verbose: as for `train`. Defaults to `None` (the run's).

    Returns:
        A `FreezeSearch`: `rows` (frozen groups, trainable parameters,
        seconds, validation metrics, freeze proof, the whole `PhaseResult`),
        `best`, `table()` and `plot(path)`.
    """
    _check_run(runner, validation_data)
    epochs = require_epochs(epochs)
    mode = _check_metric(metric, runner.settings.metrics)
    cuts = _cuts(runner, candidates)
    began = time.perf_counter()
    # The data checked (and the model's class names taken) before any phase.
    runner.prepare_phase_data(data, validation_data, None, class_weight)
    scratch = _scratch(runner, verbose)
    options = dataclasses.replace(
        scratch.training_options, augmented_views=augmented_views
    )
    phase = {name: value for name, value in locals().items() if name in PHASE}
    with _compile_kept(runner):
        rows = _try(scratch, cuts, phase, (data, validation_data), options, metric,
                    verbose)  # fmt: skip
    carried_count = sum(CARRIED in row.cache for row in rows.values())
    return FreezeSearch(
        rows=tuple(rows[cut] for cut in cuts),
        metric=metric,
        mode=mode,
        epochs=epochs,
        seconds=time.perf_counter() - began,
        shared_cache=(
            f"{carried_count} of {len(cuts)} candidates' features carried on "
            "from a shallower cut"
        ),
    )


def _try(scratch, cuts, phase, given, options, metric, verbose):
    """Each cut's `FreezeCandidate`, the cuts tried from the shallowest to
    the deepest, each one's features carried on from the one before."""
    rows: dict[_Cut, FreezeCandidate] = {}
    carrier = CarriedCache(scratch.model, options)
    try:
        for cut in sorted(cuts, key=lambda cut: len(cut.frozen)):
            _say(scratch, verbose, cut, len(rows), len(cuts))
            result = _candidate(scratch, cut, phase, *given, carrier)
            rows[cut] = FreezeCandidate(
                frozen=result.frozen_groups,
                depth=cut.depth,
                trainable_params=result.trainable_params,
                seconds=result.seconds,
                metrics=dict(result.metrics),
                frozen_unchanged=result.frozen_unchanged,
                cache=result.cache,
                history=dict(result.history),
                result=result,
            )
            _check_metric_found(metric, result.metrics)
    finally:
        carrier.free()
    return rows


class CarriedCache:
    """Hands each candidate's phase its features, in place of the cache it
    would fill: carried on from the last cut's where its cached layers
    continue those (`transferkit.cache.chain`), else computed as the phase
    would (at the same point, so with the same random state); kept after
    the phase (which closes only a lent view) for the next cut.

    The phase takes it as it takes a learning-rate sweep's kept cache."""

    def __init__(self, model, options):
        self._model, self._options = model, options
        self._source = None  # (FeatureCache, CachePlan) of the last cut.

    def take(self, plan, train, validation):
        if not plan.layers:
            return None
        cache, origin = None, CARRIED
        if self._source is not None:
            layers = extension(self._source[1].front, plan.front)
            if layers is not None:
                limit = self._options.feature_cache_memory
                cache = extend_cache(self._source[0], layers, memory_limit=limit)
        if cache is None:
            cache, plan = build_phase_cache(
                self._model, plan, train, validation, self._options
            )
            origin = "computed for the search"
        if cache is None or cache.on_disk:
            self.free()
            return cache  # Files are not carried on: the phase frees them.
        if self._source is not None and self._source[0] is not cache:
            self.free()
        self._source = (cache, plan)
        view = lend(cache)
        view.origin = origin
        return view

    def close(self) -> None:
        """Nothing: the search frees the cache once every cut has run."""

    def free(self) -> None:
        source, self._source = self._source, None
        if source is not None:
            source[0].close()


def _check_run(runner: PhaseRunner, validation_data: Data | None) -> None:
    if runner.distribution.strategy is not None:
        raise ValueError(
            "The freeze search runs on one device; search with a run made "
            "without `strategy`, then train with it."
        )
    if validation_data is None:
        raise ValueError(
            "Expected `validation_data`: the search chooses the cut by the "
            "candidates' validation metrics. Received: validation_data=None"
        )


def _check_metric(metric: Any, metrics: Sequence[Any] | None) -> str:
    """`metric`'s mode; raises before any training for a name that the
    run's metrics (all given by name) cannot produce."""
    if not isinstance(metric, str) or not metric:
        raise ValueError(
            f"Expected `metric` to be a metric's name, e.g. 'loss' or "
            f"'accuracy'. Received: metric={metric!r}"
        )
    named = [m for m in metrics or () if isinstance(m, str)]
    if metric != "loss" and len(named) == len(metrics or ()) and metric not in named:
        raise ValueError(
            f"Unknown metric {metric!r}: the run's validation metrics are "
            f"{['loss', *named]}. Expected one of them."
        )
    return metric_mode(metric)


def _check_metric_found(metric: str, found: Mapping[str, float]) -> None:
    if metric not in found:
        raise ValueError(
            f"Unknown metric {metric!r}: the candidates' validation metrics "
            f"are {sorted(found)}. Expected one of them."
        )


def _cuts(runner: PhaseRunner, candidates: Sequence[Any] | None) -> list[_Cut]:
    """The candidates as cuts, each once (by the groups frozen in it, with
    those frozen now), the user's order kept; defaults that would leave
    nothing to train are left out, a given one is refused."""
    groups = groups_of(runner.model)
    names = list(groups)
    weighted = [name for name in names if not trains_nothing(groups[name])]
    if candidates is None:
        given = candidates_of(weighted)
    elif isinstance(candidates, str) or not isinstance(candidates, Sequence):
        raise TypeError(
            "Expected `candidates` to be a list of cuts: each an int, a group "
            "name or a list of group names, e.g. [1, 2] or [['features']]. "
            f"Received: candidates={candidates!r}"
        )
    else:
        given = [_frozen_of(entry, names, weighted) for entry in candidates]
    now = set(runner.frozen_groups)
    cuts: dict[tuple[str, ...], _Cut] = {}
    for frozen in given:
        every = tuple(name for name in names if name in now or name in frozen)
        if all(name in every for name in weighted):
            if candidates is None:
                continue
            raise ValueError(
                f"The candidate {list(frozen)} leaves nothing to train: every "
                f"group with weights would be frozen ({weighted}). Expected "
                "cuts that leave a group to train."
            )
        depth = sum(name in every for name in weighted)
        cuts.setdefault(every, _Cut(every, depth))
    if not cuts:
        raise ValueError(
            f"No candidate to try: the model has {len(weighted)} group(s) with "
            f"weights ({weighted}), and the groups frozen now are {sorted(now)}."
        )
    return list(cuts.values())


def _frozen_of(entry: Any, names: list[str], weighted: list[str]) -> tuple:
    """The groups one entry of `candidates` freezes."""
    if isinstance(entry, int) and not isinstance(entry, bool):
        if not 0 <= entry < len(weighted):
            raise ValueError(
                f"A candidate {entry} would freeze the first {entry} groups with "
                f"weights; the model has {len(weighted)} ({weighted}). Expected "
                f"0 to {len(weighted) - 1}."
            )
        return tuple(weighted[:entry])
    if isinstance(entry, str):
        if entry not in names:
            raise ValueError(
                f"Unknown group {entry!r} in `candidates`. Expected one of {names}."
            )
        end = names.index(entry)
        return tuple(name for name in weighted if names.index(name) <= end)
    if isinstance(entry, Sequence) and all(isinstance(n, str) for n in entry):
        unknown = [n for n in entry if n not in names]
        if unknown:
            raise ValueError(
                f"Unknown group(s) {unknown} in `candidates`. Expected names "
                f"from {names}."
            )
        return tuple(entry)
    raise TypeError(
        "Expected each candidate to be an int, a group name or a list of group "
        f"names. Received: {entry!r}"
    )


def _scratch(runner: PhaseRunner, verbose: str | int | None) -> PhaseRunner:
    """A runner over the same model and settings that keeps no folder, with
    the run's results before it, so that its phases take the seeds of the
    run's next phase."""
    settings = runner.settings
    if verbose is not None:
        settings = dataclasses.replace(settings, verbose=verbose)
    scratch = PhaseRunner(
        runner.model, settings, RunState(runner.model, None), runner.distribution
    )
    scratch.results = list(runner.results)
    return scratch


def _candidate(scratch, cut, phase, data, validation_data, carrier):
    """The cut's phase on the scratch runner, from the run's weights; every
    variable, flag and random state restored after it."""
    taken = {result.name for result in scratch.results}
    name, suffix = f"search_freeze_{cut.depth}", 2
    while name in taken:
        name, suffix = f"search_freeze_{cut.depth}_{suffix}", suffix + 1
    freeze = tuple(scratch.groups_named(cut.frozen, "candidates"))
    request = PhaseRequest.of("fine_tune", {**phase, "freeze": freeze, "name": name})
    with lr_finder.state_kept(scratch.model):
        scratch.kept_cache = carrier
        try:
            result = scratch.run(request, data, validation_data=validation_data)
        finally:
            scratch.kept_cache = None
        scratch.results.pop()
    return result


@contextlib.contextmanager
def _compile_kept(runner: PhaseRunner) -> Iterator[None]:
    """Compiles the model again, after the block, with the optimizer it was
    compiled with before (the candidates compile it with their own)."""
    model = runner.model
    before = getattr(model, "optimizer", None) if model.compiled else None
    try:
        yield
    finally:
        if before is not None:
            model.compile(**runner.compile_args(before))


def _say(scratch, verbose, cut, done: int, count: int) -> None:
    quiet = (scratch.settings.verbose if verbose is None else verbose) == 0
    if not quiet:
        frozen = ", ".join(cut.frozen) or "nothing"
        print(
            f"Freeze search, candidate {done + 1} of {count}: frozen {frozen}",
            flush=True,
        )


def save_searches(directory: str | None, searches: Sequence[FreezeSearch]) -> None:
    """Writes the run's searches into its folder (atomically), so that the
    report of a later process on the run still shows them."""
    if directory is not None:
        records = [search.to_dict() for search in searches]
        atomic_write(Path(directory) / FREEZE_SEARCH_FILE, dumps(records))


def load_searches(directory: str | None) -> list[FreezeSearch]:
    """The searches a run folder keeps (without their phases' histories'
    `PhaseResult`s), or none."""
    path = None if directory is None else Path(directory) / FREEZE_SEARCH_FILE
    if path is None or not path.is_file():
        return []
    try:
        return [FreezeSearch.from_dict(r) for r in json.loads(path.read_text())]
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(
            f"{str(path)!r} is not a freeze search transferkit wrote ({error}). "
            "Move it out of the run folder to go on without it."
        ) from None
