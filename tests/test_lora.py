"""LoRA as a group policy: base weights bitwise unchanged, adapters moved,
merged at the phase's end, resumed bitwise, and refusals by name."""

import keras
import numpy as np
import pytest
from conftest import Crash, CrashAfterEpoch, in_place_run

from transferkit import LayerGroup

x_data = np.random.default_rng(0).normal(size=(48, 6)).astype("float32")
y_data = np.arange(48) % 3


def dense_model():
    keras.utils.set_random_seed(7)
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8, activation="relu", name="bottom_dense")(inputs)
    x = keras.layers.Dense(8, name="top_dense")(x)
    x = keras.layers.LayerNormalization(name="top_norm")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs)
    groups = LayerGroup.split(
        model, at=["bottom_dense", "top_norm"], names=["bottom", "top", "head"]
    )
    return model, groups


def run_of(model, groups, **kwargs):
    return in_place_run(model, groups, batch_size=16, seed=0, **kwargs)


class Peek(keras.callbacks.Callback):
    """Keeps the adapters and the outputs at the end of training, before the
    adapters are merged."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def on_train_end(self, logs=None):
        self.adapters = [
            self.layer.lora_kernel_a.numpy(),
            self.layer.lora_kernel_b.numpy(),
        ]
        self.outputs = self.model(x_data, training=False).numpy()


def test_a_lora_phase_keeps_the_base_weights_bitwise_and_merges_its_adapters():
    model, (bottom, top, head) = dense_model()
    base = {v.path: v.numpy().copy() for v in top.variables}
    peek = Peek(model.get_layer("top_dense"))
    result = run_of(model, (bottom, top, head)).fine_tune(
        (x_data, y_data), freeze="bottom", epochs=2, lora={"top": 2}, callbacks=[peek]
    )
    assert result.lora == {"top": 2}
    assert result.frozen_unchanged is True and result.changed_variables == ()
    assert result.held_variables == 4  # top_dense kernel and bias, top_norm's two.
    adapters = 8 * 2 + 2 * 8  # A and B of rank 2 on an 8-by-8 kernel.
    assert result.trainable_params == adapters + 8 * 3 + 3
    assert np.abs(peek.adapters[1]).max() > 0  # B starts at zero: it moved.
    # Merged: a plain Dense whose kernel holds base + scale * A @ B.
    layer = model.get_layer("top_dense")
    assert not layer.lora_enabled and len(layer.weights) == 2
    a, b = peek.adapters
    np.testing.assert_allclose(
        # An element near zero may differ by float32 rounding of the sum.
        layer.kernel.numpy(),
        base["top_dense/kernel"] + (2 / 2) * a @ b,
        rtol=1e-6,
        atol=1e-6,
    )
    assert layer.bias.numpy().tobytes() == base["top_dense/bias"].tobytes()
    for name in ("top_norm/gamma", "top_norm/beta"):
        (variable,) = [v for v in top.variables if v.path == name]
        assert variable.numpy().tobytes() == base[name].tobytes()
    np.testing.assert_allclose(
        model(x_data, training=False).numpy(), peek.outputs, rtol=1e-5, atol=1e-6
    )
    assert all(v.trainable for v in top.variables)


def test_a_merged_model_saves_and_loads_as_a_plain_one(tmp_path):
    model, groups = dense_model()
    run_of(model, groups).fine_tune(
        (x_data, y_data), freeze="bottom", epochs=1, lora={"top": 2}
    )
    model.save(tmp_path / "merged.keras")
    loaded = keras.saving.load_model(tmp_path / "merged.keras")
    assert "lora_rank" not in loaded.get_layer("top_dense").get_config()
    np.testing.assert_array_equal(
        loaded.predict(x_data, verbose=0), model.predict(x_data, verbose=0)
    )


class Adapters(keras.callbacks.Callback):
    """The adapters of `top_dense` at the start of training and after each
    epoch."""

    def __init__(self, model):
        super().__init__()
        self.layer = model.get_layer("top_dense")
        self.seen = []

    def _keep(self):
        self.seen.append([v.numpy().copy() for v in self.layer.weights])

    def on_train_begin(self, logs=None):
        self._keep()

    def on_epoch_end(self, epoch, logs=None):
        self._keep()


def test_a_lora_phase_resumes_with_the_adapters_it_saved(tmp_path):
    # Keras' own loading of a LoRA layer sets both adapters to zero, from
    # where they never move; the run keeps them apart and loads them back.
    def phase(callbacks):
        model, groups = dense_model()
        with run_of(model, groups, directory=tmp_path) as run:
            result = run.fine_tune(
                (x_data, y_data),
                freeze="bottom",
                epochs=3,
                lora={"top": 4},
                callbacks=[callback(model) for callback in callbacks],
            )
        return model, result

    crashed = []
    with pytest.raises(Crash):
        phase(
            [
                lambda m: crashed.append(Adapters(m)) or crashed[-1],
                lambda m: CrashAfterEpoch(0),
            ]
        )
    resumed = []
    model, result = phase([lambda m: resumed.append(Adapters(m)) or resumed[-1]])
    saved, loaded = crashed[0].seen[1], resumed[0].seen[0]
    assert len(loaded) == 4  # Base kernel, bias, A and B.
    for before, after in zip(saved, loaded, strict=True):
        assert before.tobytes() == after.tobytes()
    assert np.abs(loaded[3]).max() > 0  # B, trained in epoch 0.
    assert result.frozen_unchanged is True and len(result.history["loss"]) == 3
    assert not model.get_layer("top_dense").lora_enabled


@pytest.mark.parametrize("rank", [0, -1, 1.5, True])
def test_a_rank_below_one_or_not_whole_is_refused(rank):
    model, groups = dense_model()
    with pytest.raises(
        ValueError, match=r"LoRA rank to be a whole number of at least 1"
    ):
        run_of(model, groups).fine_tune(
            (x_data, y_data), freeze="bottom", epochs=1, lora={"top": rank}
        )


def test_lora_on_an_unknown_or_frozen_group_is_refused():
    model, groups = dense_model()
    run = run_of(model, groups)
    with pytest.raises(ValueError, match=r"Unknown group 'middle'"):
        run.fine_tune((x_data, y_data), freeze="bottom", epochs=1, lora={"middle": 2})
    with pytest.raises(ValueError, match=r"Group 'bottom' is frozen for the phase"):
        run.fine_tune((x_data, y_data), freeze="bottom", epochs=1, lora={"bottom": 2})


def test_lora_on_a_layer_without_it_is_refused_by_name_and_changes_nothing():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.DepthwiseConv2D(3, name="depthwise")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs)
    groups = LayerGroup.split(model, at="depthwise", names=["body", "head"])
    images = np.random.default_rng(0).normal(size=(16, 8, 8, 2)).astype("float32")
    with pytest.raises(ValueError) as raised:
        run_of(model, groups).train((images, y_data[:16]), epochs=1, lora={"body": 2})
    assert str(raised.value).startswith(
        "Layer 'depthwise' (DepthwiseConv2D) has the kernels ['kernel'], "
        "but Keras has no LoRA for it"
    )
    assert not model.get_layer("conv").lora_enabled


def test_a_vit_task_adapts_its_top_blocks_attention_and_mlp():
    keras_hub = pytest.importorskip("keras_hub")
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(8, 8, 1),
        patch_size=4,
        num_layers=2,
        num_heads=2,
        hidden_dim=8,
        mlp_dim=16,
    )
    task = keras_hub.models.ViTImageClassifier(
        backbone=backbone, num_classes=3, preprocessor=None
    )
    at = f"{backbone.name}/vit_encoder/transformer_block_1"
    bottom, top = LayerGroup.split(task, at=at, names=["bottom", "top"])
    base = [v.numpy().copy() for v in top.variables]
    images = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype("float32")
    result = run_of(task, [bottom, top]).fine_tune(
        (images, y_data[:16]), freeze="bottom", epochs=1, lora={"top": 2}
    )
    assert result.frozen_unchanged is True
    assert result.held_variables == len(base)
    adapted = [
        v
        for v, old in zip(top.variables, base, strict=True)
        if v.numpy().tobytes() != old.tobytes()
    ]
    # Only kernels moved (merged); biases and the norms are as they were.
    assert adapted and all(v.name == "kernel" for v in adapted)
