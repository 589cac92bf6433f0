"""The plan of a run: a phase's entry, and every difference named."""

import dataclasses
import inspect

import keras
from conftest import make_data, make_model

from transferkit import TransferRun
from transferkit.data.prepare import prepare_data
from transferkit.phases.plan import PhaseSpec, differences, model_fingerprint
from transferkit.run.settings import PhaseRequest


def spec_for(data, optimizer, **kwargs):
    model = make_model()
    prepared = prepare_data(
        data, "data", model=model, loss="categorical_crossentropy", batch_size=16
    )
    return PhaseSpec.of(
        kind="fine_tune",
        name="head",
        epochs=3,
        freeze=[model.groups["features"]],
        data=prepared,
        optimizer=optimizer,
        loss="categorical_crossentropy",
        **kwargs,
    ).to_json()


def test_a_phase_entry_records_what_makes_the_phase():
    spec = spec_for(make_data(), keras.optimizers.SGD(0.1), precision="float32")
    assert spec["freeze"] == ["features"] and spec["batch_size"] == 16
    assert spec["data"]["samples"] == 48 and len(spec["data"]["labels_sha256"]) == 64
    assert spec["optimizer"]["class"] == "SGD" and "precision" not in spec


def test_differences_name_every_changed_leaf():
    x, y = make_data()
    recorded = spec_for((x, y), keras.optimizers.SGD(0.1), precision="float32")
    current = spec_for(
        (x, y[::-1].copy()), keras.optimizers.SGD(0.2), precision="mixed_bfloat16"
    )

    found = differences(recorded, current)

    assert any(d.startswith("optimizer.learning_rate: recorded 0.1") for d in found)
    assert "precision: recorded None, now 'mixed_bfloat16'" in found
    assert [d.split(":")[0] for d in found] == [
        "data.labels_sha256",
        "optimizer.learning_rate",
        "precision",
    ]
    assert differences(recorded, recorded) == []


def test_the_model_fingerprint_ignores_names_and_flags_but_not_layers():
    first, second = make_model(), make_model()
    second.groups["features"].trainable = False
    assert model_fingerprint(first) == model_fingerprint(second)
    assert model_fingerprint(first) != model_fingerprint(make_model(batch_norm=True))


def test_every_option_of_a_phase_spec_is_in_its_entry_when_set():
    """The plan entry is made from the spec's fields alone: a field added
    after the first folders is left out at its default (they resume) and
    recorded as soon as it is set; every other field is always there."""
    base = PhaseSpec.of(
        kind="train",
        name="train",
        epochs=1,
        freeze=[],
        data=prepare_data(
            make_data(),
            "data",
            model=make_model(),
            loss="sparse_categorical_crossentropy",
            batch_size=8,
        ),
        optimizer=keras.optimizers.SGD(0.1),
        loss="sparse_categorical_crossentropy",
    )
    changed = {
        "precision": "mixed_bfloat16",
        "lr_multipliers": {"features": 0.1},
        "backbone_batch_norm": "train",
        "augmented_views": 3,
        "lora": {"classifier": 4},
    }
    since = [f.name for f in dataclasses.fields(PhaseSpec) if f.metadata.get("since")]
    assert sorted(since) == sorted(changed)  # A new field needs a case here.
    entry = base.to_json()
    assert not set(since) & set(entry)
    assert set(entry) == {f.name for f in dataclasses.fields(PhaseSpec)} - set(since)
    for name, value in changed.items():
        assert dataclasses.replace(base, **{name: value}).to_json()[name] == value


def test_train_and_fine_tune_pass_every_phase_option_to_the_request():
    """`PhaseRequest.of` takes a phase's options from the call's arguments
    by name: each option of the request is an argument of both methods."""
    options = {f.name for f in dataclasses.fields(PhaseRequest)} - {"kind", "freeze"}
    for method in (TransferRun.train, TransferRun.fine_tune):
        assert options <= set(inspect.signature(method).parameters), method
    assert "freeze" in inspect.signature(TransferRun.fine_tune).parameters
