"""Mixed precision: which policy, what it changes, and what it must not."""

import keras
import numpy as np
import pytest
from conftest import fine_tune_checked, make_data, make_model

from transferkit import Speed, TransferRun
from transferkit.layers import precision as precision_module
from transferkit.layers.precision import resolve_precision

SPARSE = "sparse_categorical_crossentropy"


def test_mixed_bfloat16_computes_in_16_bits_but_the_output_stays_float32(data):
    model = make_model()
    run = TransferRun(
        model, optimizer="adam", loss=SPARSE, verbose=0, precision="mixed_bfloat16"
    )

    assert run.precision == "mixed_bfloat16"
    assert [layer.compute_dtype for layer in model.layers] == ["bfloat16"] * (
        len(model.layers) - 1
    ) + ["float32"]
    assert {v.dtype for v in model.weights} == {"float32"}
    assert model.predict(data[0][:4], verbose=0).dtype == np.float32


@pytest.mark.parametrize("feature_cache", [True, False], ids=["cache", "no_cache"])
def test_frozen_weights_stay_bitwise_unchanged_under_mixed_precision(feature_cache):
    model = make_model(batch_norm=True, dropout=True)
    run = TransferRun(
        model,
        optimizer=lambda: keras.optimizers.Adadelta(1.0),
        loss=SPARSE,
        verbose=0,
        precision="mixed_bfloat16",
        speed=Speed(feature_cache=feature_cache),
    )
    data = make_data()
    run.train(data, epochs=1)

    result = fine_tune_checked(run, data)

    assert result.frozen_unchanged is True
    assert result.precision == "mixed_bfloat16"
    assert (result.cached_layers > 0) is feature_cache


def test_float32_leaves_the_models_own_policies_alone():
    model = make_model()
    model.layers[0].dtype_policy = "mixed_bfloat16"

    TransferRun(model, optimizer="sgd", loss=SPARSE, precision="float32")

    assert model.layers[0].dtype_policy.name == "mixed_bfloat16"
    assert model.layers[1].dtype_policy.name == "float32"


def test_auto_picks_by_what_the_machine_has(monkeypatch):
    monkeypatch.setattr(
        precision_module.tf.config, "list_physical_devices", lambda kind: []
    )
    monkeypatch.setattr(precision_module, "cpu_bfloat16_flags", lambda: ())
    assert resolve_precision("auto")[0] == "float32"

    monkeypatch.setattr(
        precision_module, "cpu_bfloat16_flags", lambda: ("avx512_bf16",)
    )
    assert resolve_precision("auto") == (
        "mixed_bfloat16",
        "the CPU has avx512_bf16",
    )

    monkeypatch.setattr(
        precision_module.tf.config, "list_physical_devices", lambda kind: ["gpu:0"]
    )
    assert resolve_precision("auto")[0] == "mixed_float16"


def test_an_unknown_precision_names_what_is_accepted(model):
    with pytest.raises(ValueError, match=r"Expected one of \['float32', .*'auto'\]"):
        TransferRun(model, optimizer="sgd", loss=SPARSE, precision="fp16")


def test_a_plan_records_its_precision(tmp_path, data):
    run = TransferRun(
        make_model(),
        optimizer="sgd",
        loss=SPARSE,
        verbose=0,
        directory=tmp_path,
        precision="mixed_bfloat16",
    )
    run.train(data, epochs=1)

    other = TransferRun(
        make_model(), optimizer="sgd", loss=SPARSE, verbose=0, directory=tmp_path
    )
    with pytest.raises(ValueError, match="precision: recorded 'mixed_bfloat16'"):
        other.train(data, epochs=1)
