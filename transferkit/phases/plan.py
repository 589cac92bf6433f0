"""The plan of a run: what each phase is, and how a saved plan is compared.

A run folder is resumed only by the same plan: the same model architecture,
and for every phase the same kind, name, epochs, frozen groups, data, batch
size, optimizer settings, loss and precision. `PhaseSpec` is a phase's
entry of the plan as JSON-ready values; `differences` names every field in
which a saved entry and the current one differ.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from typing import Any

import keras

from transferkit.data.prepare import PhaseData, loss_name
from transferkit.engine.optimizers import optimizer_fingerprint
from transferkit.groups import tree
from transferkit.groups.layer_group import LayerGroup
from transferkit.groups.model_groups import groups_of

__all__ = ["PhaseSpec", "data_fingerprint", "differences", "model_fingerprint"]


def _since(default: Any) -> Any:
    """A field added after the first run folders were written: left out of
    the plan at its default, so that they resume."""
    if isinstance(default, dict):
        return dataclasses.field(
            default_factory=lambda: dict(default), metadata={"since": True}
        )
    return dataclasses.field(default=default, metadata={"since": True})


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory()


@dataclasses.dataclass(frozen=True)
class PhaseSpec:
    """A phase's entry in the plan: everything that makes the phase what it
    is, and nothing of how fast it runs.

    A run folder resumes a phase only where the saved entry equals this
    one (`differences` names every field that does not). The entry is this
    value's `to_json()`, made from its fields alone: an option added to a
    phase is a field here, and so in the plan, or it is not an option of
    the plan at all. Fields marked `since` were added after the first
    folders were written; they are left out of the JSON at their default,
    so that those folders resume.
    """

    kind: str
    """`"train"` or `"fine_tune"`."""

    name: str
    """The phase's name, unique in the run."""

    epochs: int
    """Epochs to train."""

    freeze: tuple[str, ...]
    """The groups the phase freezes in addition to those frozen before."""

    data: dict[str, Any]
    """The training data's fingerprint (`data_fingerprint`)."""

    batch_size: int | None
    """Samples per step (`None` for a batched dataset)."""

    optimizer: dict[str, Any]
    """The phase's optimizer: class and settings."""

    loss: str
    """The loss, by name."""

    precision: str = _since("float32")
    """The run's dtype policy."""

    lr_multipliers: dict[str, float] = _since({})
    """Learning-rate multipliers by group."""

    backbone_batch_norm: str = _since("inference")
    """`"inference"` or `"train"`."""

    augmented_views: int = _since(1)
    """Augmented views per sample cached for the phase; 1: none."""

    lora: dict[str, int] = _since({})
    """LoRA ranks by group."""

    @classmethod
    def of(
        cls,
        *,
        kind: str,
        name: str,
        epochs: int,
        freeze: Sequence[LayerGroup],
        data: PhaseData,
        optimizer: keras.optimizers.Optimizer,
        loss: Any,
        **options: Any,
    ) -> PhaseSpec:
        """The entry of a phase that trains on `data` with `optimizer` (the
        phase's fresh one); `options` are the fields marked `since`."""
        return cls(
            kind=kind,
            name=name,
            epochs=epochs,
            freeze=tuple(group.name for group in freeze),
            data=data_fingerprint(data),
            batch_size=data.batch_size,
            optimizer=optimizer_fingerprint(optimizer),
            loss=loss_name(loss),
            **options,
        )

    def to_json(self) -> dict[str, Any]:
        """The plan entry, JSON-ready: every field, those marked `since` only
        where they differ from their default."""
        entry = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.metadata.get("since") and value == _default(field):
                continue
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, dict):
                value = dict(sorted(value.items()))
            entry[field.name] = value
        return json.loads(json.dumps(entry))


def model_fingerprint(model: keras.Model) -> str:
    """A digest of the model's architecture: layer types and settings, groups.

    Layer names (Keras numbers them per process), trainable flags (they
    change between phases) and dtype policies (the plan records the run's
    precision) are left out.
    """
    layers = [_layer_fingerprint(layer) for layer in model.layers]
    groups = [
        [name, [_position(model, layer) for layer in group]]
        for name, group in groups_of(model).items()
    ]
    text = json.dumps([layers, groups], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _layer_fingerprint(layer: keras.Layer) -> list:
    """`[type, settings]`; for a nested model (a backbone), `[type, [its
    layers' fingerprints]]`, since its config names layers, and Keras numbers
    some names (`input_layer_3`) per process."""
    if isinstance(layer, keras.Model):
        return [type(layer).__name__, [_layer_fingerprint(x) for x in layer.layers]]
    config = dict(layer.get_config())
    for key in ("name", "trainable", "dtype"):
        config.pop(key, None)
    return [type(layer).__name__, config]


def _position(model: keras.Model, layer: keras.Layer) -> int | list[int]:
    """The index of `layer` in `model.layers`, or its position further down
    (`transferkit.groups.tree.position`): `[i, j]` for the `j`-th layer of a
    backbone at `model.layers[i]`."""
    if any(layer is outer for outer in model.layers):
        return model.layers.index(layer)
    return tree.position(model, layer)


def differences(recorded: Any, current: Any, prefix: str = "") -> list[str]:
    """`"key: recorded A, now B"` for every leaf where two plans differ."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        return [
            difference
            for key in dict.fromkeys([*recorded, *current])
            for difference in differences(
                recorded.get(key), current.get(key), f"{prefix}{key}."
            )
        ]
    if recorded == current:
        return []
    return [f"{prefix[:-1]}: recorded {recorded!r}, now {current!r}"]


def data_fingerprint(data: PhaseData) -> dict[str, Any]:
    """What identifies a phase's data in a plan: size, classes, and digests
    of the labels and of the samples (every byte of both), and of the
    weights where there are any."""
    if data.is_dataset:
        fingerprint = {"type": "dataset"}
        if data.steps_per_epoch is not None:
            fingerprint["steps_per_epoch"] = data.steps_per_epoch
    else:
        fingerprint = {
            "samples": data.samples,
            "classes": list(data.classes) if data.classes else None,
            "labels_sha256": data.labels_sha256,
            "samples_sha256": data.samples_sha256,
        }
    # Recorded only when set, so that folders from before they existed resume.
    if data.class_weights is not None:
        fingerprint["class_weights"] = list(data.class_weights)
    if data.sample_weight is not None:
        fingerprint["sample_weight_sha256"] = data.sample_weight_sha256
    return fingerprint
