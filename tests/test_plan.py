"""The plan of a run: a phase's entry, and every difference named."""

import keras
from conftest import make_data, make_model

from transferkit.plan import differences, model_fingerprint, phase_spec
from transferkit.training_data import prepare_data


def spec_for(data, optimizer, **kwargs):
    model = make_model()
    prepared = prepare_data(
        data, "data", model=model, loss="categorical_crossentropy", batch_size=16
    )
    return phase_spec(
        kind="fine_tune",
        name="head",
        epochs=3,
        freeze=[model.groups["features"]],
        data=prepared,
        optimizer=optimizer,
        loss="categorical_crossentropy",
        **kwargs,
    )


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
