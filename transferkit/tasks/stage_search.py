"""The image task's "top" stage with the number of stages chosen by a
search: `ImageRecipe(fine_tune_stages="search")`, or `transferkit train
--search-freeze`.

After the "head" stage, every candidate (the top 0, 1, ... `SEARCHED`
stages of the backbone training with the head) runs as the "top" stage
would, for `fine_tune_epochs` from the head's weights (`TransferRun.
search_freeze`, which leaves the run as it was); the one with the lowest
validation loss then runs as the "top" stage. Candidates are chosen on the
validation data, never on the test folder: with a test folder alone, the
task holds out `DEFAULT_SPLIT` of the training folder to validate on.

A resumed run takes the stages its folder recorded for "top" instead of
searching again (a search on other weights could choose others, and the
phase would not resume).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from transferkit.run_folder.state import recorded_spec

if TYPE_CHECKING:
    from transferkit.tasks.image_classifier import ImageClassifierTask

__all__ = ["SEARCHED", "searched_top"]

SEARCHED = 3
"""The most top stages a candidate trains (fewer for a shallower backbone)."""


def searched_top(task: ImageClassifierTask, common: dict[str, Any], optimizer):
    """Runs the "top" stage with the stages a freeze search chose (or that
    the run folder recorded), and returns the stages it trained."""
    recipe, run = task.recipe, task.run
    stages = task.backbone.stages
    rates = {stage: recipe.fine_tune_rate for stage in stages}
    run.unfreeze(*stages)
    frozen = _recorded(task.out)
    if frozen is None:
        count = min(SEARCHED, len(stages))
        candidates = [list(stages[: len(stages) - k]) for k in range(count + 1)]
        task.freeze_search = run.search_freeze(
            task.data.train,
            epochs=recipe.fine_tune_epochs,
            candidates=candidates,
            optimizer=optimizer,
            lr_multipliers=rates,
            **common,
        )
        frozen = task.freeze_search.best.frozen
    run.fine_tune(
        task.data.train,
        freeze=[name for name in frozen if name in stages],
        epochs=recipe.fine_tune_epochs,
        name="top",
        optimizer=optimizer,
        lr_multipliers=rates,
        **common,
    )
    return tuple(stage for stage in stages if stage not in frozen)


def _recorded(out: str | None) -> Sequence[str] | None:
    """The groups the folder's "top" stage froze, if it recorded one."""
    spec = None if out is None else recorded_spec(out, "top")
    return None if spec is None else tuple(spec["freeze"])
