"""The plan of a run: what each phase is, and how a saved plan is compared.

A run folder is resumed only by the same plan: the same model architecture,
and for every phase the same kind, name, epochs, frozen groups, data, batch
size, optimizer settings, loss and precision. `phase_spec` writes a phase's
entry of the plan as JSON-ready values; `differences` names every field in
which a saved entry and the current one differ.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import keras

from transferkit import model_tree
from transferkit.layer_group import LayerGroup
from transferkit.model_groups import groups_of
from transferkit.optimizers import optimizer_fingerprint
from transferkit.training_data import PhaseData, loss_name

__all__ = ["differences", "model_fingerprint", "phase_spec"]


def phase_spec(
    *,
    kind: str,
    name: str,
    epochs: int,
    freeze: Sequence[LayerGroup],
    data: PhaseData,
    optimizer: keras.optimizers.Optimizer,
    loss: Any,
    precision: str,
    lr_multipliers: dict[str, float] | None = None,
    backbone_batch_norm: str = "inference",
    augmented_views: int = 1,
    lora: dict[str, int] | None = None,
) -> dict[str, Any]:
    """A phase's entry in the plan, JSON-ready.

    Args:
        kind: `"train"` or `"fine_tune"`.
        name: the phase's name.
        epochs: epochs to train.
        freeze: the groups the phase freezes in addition to those frozen.
        data: the phase's training data.
        optimizer: the phase's fresh optimizer (its class and settings).
        loss: the loss, recorded by name.
        precision: the run's dtype policy; recorded only when not
            `"float32"`, so that folders from before mixed precision resume.
        lr_multipliers: learning-rate multipliers by group; recorded only
            when given. Defaults to `None`.
        backbone_batch_norm: `"inference"` or `"train"`; recorded only when
            `"train"`. Defaults to `"inference"`.
        augmented_views: the run's `augmented_views`; recorded only when
            above 1 (the views are part of what a phase computes). Defaults
            to `1`.
        lora: LoRA ranks by group; recorded only when given. Defaults to
            `None`.
    """
    spec = {
        "kind": kind,
        "name": name,
        "epochs": epochs,
        "freeze": [group.name for group in freeze],
        "data": _data_fingerprint(data),
        "batch_size": data.batch_size,
        "optimizer": optimizer_fingerprint(optimizer),
        "loss": loss_name(loss),
    }
    # Recorded only when set, so that folders from before they existed resume.
    if precision != "float32":
        spec["precision"] = precision
    if lr_multipliers:
        spec["lr_multipliers"] = dict(sorted(lr_multipliers.items()))
    if backbone_batch_norm != "inference":
        spec["backbone_batch_norm"] = backbone_batch_norm
    if augmented_views > 1:
        spec["augmented_views"] = augmented_views
    if lora:
        spec["lora"] = dict(sorted(lora.items()))
    return json.loads(json.dumps(spec))


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
    (`transferkit.model_tree.position`): `[i, j]` for the `j`-th layer of a
    backbone at `model.layers[i]`."""
    if any(layer is outer for outer in model.layers):
        return model.layers.index(layer)
    return model_tree.position(model, layer)


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


def _data_fingerprint(data: PhaseData) -> dict[str, Any]:
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
