"""Transfer schedules: several phases in one call, each an ordinary phase.

Two recipes from fastai and Lightning, on a `TransferRun` whose model's
groups run from the bottom (the input side) to the head, its last group:

- `head_then_all`: train the head on the frozen rest, then unfreeze and
  train everything at a lower learning rate, spread from the bottom group to
  the head (fastai's `fine_tune`, with discriminative learning rates);
- `gradual_unfreezing`: train the head, then unfreeze one more group per
  stage, from the top down (ULMFiT's gradual unfreezing, Lightning's
  `BackboneFinetuning`).

Each stage is a phase of the run with its own `PhaseResult`, freeze proof,
checkpoints and resume: calling the same schedule again with the same run
folder skips the finished stages and resumes the interrupted one. Groups
with nothing to train (preprocessing, augmentation) are no stage of their
own and take no rung of the learning rates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from transferkit.data.prepare import Data
from transferkit.groups.behaviour import trains_nothing
from transferkit.groups.model_groups import groups_of
from transferkit.records.phase_result import PhaseResult

if TYPE_CHECKING:
    from transferkit.run.transfer_run import TransferRun

__all__ = ["gradual_unfreezing", "head_then_all", "layer_decay", "spread"]


def spread(
    groups: Sequence[str], lowest: float, highest: float = 1.0
) -> dict[str, float]:
    """Learning-rate multipliers that grow geometrically from `lowest`, for
    the first (bottom) group, to `highest`, for the last (the head).

    >>> spread(["bottom", "top", "head"], lowest=0.01)
    {'bottom': 0.01, 'top': 0.1, 'head': 1.0}

    Raises:
        ValueError: if `groups` is empty or the bounds are not positive.
    """
    groups = list(groups)
    if not groups:
        raise ValueError("Expected at least one group name. Received: groups=[]")
    if not (lowest > 0 and highest > 0):
        raise ValueError(
            "Expected positive multipliers. Received: "
            f"lowest={lowest!r}, highest={highest!r}"
        )
    if len(groups) == 1:
        return {groups[0]: float(highest)}
    ratio = (highest / lowest) ** (1 / (len(groups) - 1))
    values = [lowest * ratio**position for position in range(len(groups))]
    values[-1] = highest  # Exactly, whatever the rounding on the way.
    return {
        name: float(f"{value:.6g}") for name, value in zip(groups, values, strict=True)
    }


def layer_decay(groups: Sequence[str], decay: float) -> dict[str, float]:
    """Layer-wise learning-rate decay (BEiT's, timm's `layer_decay`): the
    last group (the head) trains at 1.0, each group below it at `decay`
    times the one above it. Pass the result as `lr_multipliers`; each is
    exact for its group, whatever the optimizer (`transferkit.engine.optimizers`).
    Cut a transformer into one group per block (`LayerGroup.match(model,
    {"block": r"encoder/layers_(\\d+)", ...})`) for a rate per block.

    >>> layer_decay(["embed", "block_0", "block_1", "head"], 0.5)
    {'embed': 0.125, 'block_0': 0.25, 'block_1': 0.5, 'head': 1.0}

    Raises:
        ValueError: if `groups` is empty or `decay` is not in (0, 1].
    """
    groups = list(groups)
    if not groups:
        raise ValueError("Expected at least one group name. Received: groups=[]")
    if (
        isinstance(decay, bool)
        or not isinstance(decay, int | float)
        or not (0 < decay <= 1)
    ):
        raise ValueError(
            "Expected `decay` to be a number in (0, 1], e.g. 0.75: each group "
            f"below the head trains at that times the rate above it. Received: "
            f"decay={decay!r}"
        )
    depth = len(groups) - 1
    return {
        name: float(f"{decay ** (depth - position):.6g}")
        for position, name in enumerate(groups)
    }


def head_then_all(
    run: TransferRun,
    data: Data,
    *,
    head_epochs: int,
    epochs: int,
    learning_rate_scale: float = 0.1,
    lowest: float = 0.01,
    validation_data: Data | None = None,
    **phase_options: Any,
) -> list[PhaseResult]:
    """Trains the head on the frozen rest, then everything at a lower rate.

    1. Phase `"head"`: every group but the head is frozen; `head_epochs`.
    2. Phase `"all"`: every group unfrozen; `epochs`, with learning-rate
       multipliers `spread(groups, lowest * learning_rate_scale,
       learning_rate_scale)`: the head at `learning_rate_scale` times the
       optimizer's rate, the bottom group `1 / lowest` times lower still.

    The first stage caches the frozen groups' output, as any phase would;
    in the second, nothing is frozen. A backbone's BatchNormalization stays
    in inference mode in both (`backbone_batch_norm`).

    Args:
        run: the run; its model's groups in order from the bottom to the head.
        data: training data, as for `TransferRun.train`.
        head_epochs: epochs of the head-only stage.
        epochs: epochs of the stage with everything unfrozen.
        learning_rate_scale: the head's multiplier in the second stage.
            Defaults to `0.1`.
        lowest: the bottom group's multiplier relative to the head's.
            Defaults to `0.01`.
        validation_data: as for `TransferRun.train`. Defaults to `None`.
        **phase_options: passed to every phase (`callbacks`, `verbose`,
            `optimizer`, `backbone_batch_norm`).

    Returns:
        The two stages' results.
    """
    names = _with_weights(run)
    below = _below(names)
    first = run.fine_tune(
        data,
        freeze=below,
        epochs=head_epochs,
        validation_data=validation_data,
        name="head",
        **phase_options,
    )
    run.unfreeze(*groups_of(run.model))
    second = run.train(
        data,
        epochs=epochs,
        validation_data=validation_data,
        name="all",
        lr_multipliers=spread(names, lowest * learning_rate_scale, learning_rate_scale),
        **phase_options,
    )
    return [first, second]


def gradual_unfreezing(
    run: TransferRun,
    data: Data,
    *,
    epochs: int,
    stages: int | None = None,
    lr_multipliers: dict[str, float] | None = None,
    validation_data: Data | None = None,
    **phase_options: Any,
) -> list[PhaseResult]:
    """Trains the head, then unfreezes one group more per stage, top down.

    Stage 1 (phase `"head"`) freezes every group but the head; stage `k + 1`
    (phase `"unfreeze_<group>"`) unfreezes the `k`-th group below the head.
    Groups not yet unfrozen stay frozen, so each stage caches them.

    Args:
        run: the run; its model's groups in order from the bottom to the head.
        data: training data, as for `TransferRun.train`.
        epochs: epochs of each stage.
        stages: how many stages, head included. Defaults to `None`: until
            every group is unfrozen.
        lr_multipliers: passed to every stage (e.g. `spread(...)`); groups
            still frozen ignore theirs. Defaults to `None`.
        validation_data: as for `TransferRun.train`. Defaults to `None`.
        **phase_options: passed to every phase.

    Returns:
        One result per stage.

    Raises:
        ValueError: if `stages` is not between 1 and the number of groups.
    """
    below = _below(_with_weights(run))
    stages = len(below) + 1 if stages is None else stages
    if (
        isinstance(stages, bool)
        or not isinstance(stages, int)
        or not (1 <= stages <= len(below) + 1)
    ):
        raise ValueError(
            f"Expected `stages` between 1 and {len(below) + 1} (the head, then "
            f"one stage per group below it: {below}). Received: stages={stages!r}"
        )
    options = dict(phase_options, validation_data=validation_data, epochs=epochs)
    if lr_multipliers:
        options["lr_multipliers"] = lr_multipliers
    results = [run.fine_tune(data, freeze=below, name="head", **options)]
    for group in reversed(below[len(below) - stages + 1 :]):
        run.unfreeze(group)
        results.append(run.train(data, name=f"unfreeze_{group}", **options))
    return results


def _with_weights(run: TransferRun) -> list[str]:
    """The groups of the run's model with something to train, in order:
    preprocessing and augmentation groups are no stage and take no rung."""
    return [
        name
        for name, group in groups_of(run.model).items()
        if not trains_nothing(group)
    ]


def _below(names: list[str]) -> list[str]:
    """The groups below the head (the last group)."""
    if len(names) < 2:
        raise ValueError(
            "A schedule needs a group below the head (the last group) to "
            f"freeze; the model has only {names}."
        )
    return names[:-1]
