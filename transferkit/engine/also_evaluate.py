"""Data sets a phase evaluates after every epoch besides its validation data.

A phase's `also_evaluate={"digits 0-4": old}` names data sets that the
whole model (the user's, in inference mode, also while the feature cache or
the lean step trains a trainer model of its later layers) is evaluated on at
the end of every epoch: for the reference experiment, the old task's digits
while the head is fine-tuned on the new ones, which shows what the transfer
costs on the old task. Each set's loss and metrics join the epoch's logs
under `evaluated_key(name)` and the metric (`"digits_0_4_accuracy"`), before
any callback sees them, so that the progress bar shows them, `History` and
the run folder record them, and `EarlyStopping` may watch them.

Evaluating changes no weight and draws no random number (Keras' `evaluate`
takes the batches in order, and every layer runs in inference mode), so a
seeded run is bitwise the same with or without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras

from transferkit.data.prepare import PhaseData
from transferkit.engine.distribution import Distribution
from transferkit.engine.loop import InMemoryLoop, shard_evaluation
from transferkit.records.phase_result import evaluated_key, evaluated_metrics

__all__ = ["AlsoEvaluate", "check_also_evaluate"]


def check_also_evaluate(sets: Any) -> dict[str, Any]:
    """`sets` (`also_evaluate=`) as a dict of name to data, checked: a
    mapping of names, each with a letter or digit, whose history keys are
    neither the validation data's (`val_...`) nor each other's.

    Raises:
        TypeError: for anything but a mapping, or a name that is not text.
        ValueError: naming the names, for one without a letter or digit,
            one read as validation data, or two whose keys cannot be told
            apart.
    """
    if sets is None:
        return {}
    if not isinstance(sets, Mapping):
        raise TypeError(
            "Expected `also_evaluate` to map names to data sets, e.g. "
            "{'digits 0-4': (x_old, y_old)}. Received: also_evaluate of type "
            f"{type(sets).__name__}"
        )
    keys: dict[str, str] = {}
    for name in sets:
        if not isinstance(name, str):
            raise TypeError(
                "Expected the names in `also_evaluate` to be text, e.g. "
                f"'digits 0-4'. Received: {name!r}"
            )
        key = evaluated_key(name)
        if not key:
            raise ValueError(
                "Expected each name in `also_evaluate` to hold a letter or a "
                "digit: it names the history keys (e.g. 'digits 0-4' -> "
                f"'digits_0_4_accuracy'). Received: {name!r}"
            )
        if key == "val" or key.startswith("val_"):
            raise ValueError(
                f"The name {name!r} in `also_evaluate` would give the history "
                f"keys '{key}_...', which read as the validation data's "
                "('val_loss'). Pick another name, e.g. 'old task'."
            )
        for other, taken in keys.items():
            mine, theirs = key + "_", taken + "_"  # Equal, or one starts the other.
            if mine.startswith(theirs) or theirs.startswith(mine):
                raise ValueError(
                    f"The names {other!r} and {name!r} in `also_evaluate` give "
                    f"history keys that cannot be told apart ('{taken}_...' and "
                    f"'{key}_...'); rename one, e.g. 'old train' and 'old test'."
                )
        keys[name] = key
    return dict(sets)


class AlsoEvaluate:
    """Evaluates `model` on named data sets; called at each epoch's end with
    the epoch's logs, it returns the keys to add to them.

    Args:
        model: the user's model, compiled for the phase.
        sets: name -> the set, prepared like validation data (its labels
            checked against the model's outputs).
        distribution: the run's strategy; under several workers, each
            evaluates its shard of arrays and the metrics are of all of
            them, as `TransferRun.evaluate` does.

    Raises:
        ValueError: for a `tf.data.Dataset` under several workers (Keras 3's
            `evaluate` fails under `MultiWorkerMirroredStrategy`).
    """

    def __init__(
        self,
        model: keras.Model,
        sets: Mapping[str, PhaseData],
        distribution: Distribution,
    ):
        self.model = model
        self.sets = dict(sets)
        self.distribution = distribution
        self._loops: dict[str, InMemoryLoop] = {}
        for name, data in self.sets.items():
            if distribution.multi_worker and data.is_dataset:
                raise ValueError(
                    "Expected arrays or a `ClassSubset` in `also_evaluate` under "
                    "several workers (Keras 3's evaluate fails under "
                    f"MultiWorkerMirroredStrategy). Received: {name!r}, a "
                    "tf.data.Dataset"
                )

    @property
    def names(self) -> list[str]:
        """The sets' names, in the order given."""
        return list(self.sets)

    def __call__(self, logs: Mapping[str, Any]) -> dict[str, float]:
        """Each set's metrics, as `<key>_<metric>`.

        Raises:
            ValueError: if a key is taken by the epoch's own logs (a metric
                of the model's that starts with a set's key).
        """
        added = {}
        for name, data in self.sets.items():
            key = evaluated_key(name)
            taken = [k for k in logs if k.startswith(key + "_")]
            if taken:
                raise ValueError(
                    f"The name {name!r} in `also_evaluate` gives history keys "
                    f"'{key}_...', but the epoch's logs already hold {taken}. "
                    "Pick another name."
                )
            metrics = self._evaluate(name, data)
            added.update({f"{key}_{metric}": v for metric, v in metrics.items()})
        return added

    def final(self, history: Mapping[str, list[float]]) -> dict[str, dict[str, float]]:
        """The sets' metrics of the last epoch `history` records."""
        return evaluated_metrics(history, self.names)

    def _evaluate(self, name: str, data: PhaseData) -> dict[str, float]:
        distribution = self.distribution
        if not distribution.multi_worker:
            with distribution.scope():
                logs = self.model.evaluate(
                    data.x,
                    data.y,
                    sample_weight=data.sample_weight,
                    batch_size=data.batch_size,
                    steps=data.steps_per_epoch,
                    verbose=0,
                    return_dict=True,
                )
            return {metric: float(value) for metric, value in logs.items()}
        loop = self._loops.get(name)
        if loop is None:  # Each worker its shard, made and compiled once.
            with distribution.scope():
                loop = shard_evaluation(
                    self.model, data.arrays, data.batch_size, distribution
                )
            self._loops[name] = loop
        with distribution.scope(), distribution.lost_workers(f"evaluating {name!r}"):
            return loop.evaluate()
