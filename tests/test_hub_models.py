"""Groups over the models people fine-tune today, trained in place:
keras-hub tasks and backbones (tiny configurations, built offline), blocks
held inside a layer, groups by pattern, layer-wise learning-rate decay."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import in_place_run

from transferkit import LayerGroup, TransferRun, attach_groups
from transferkit.groups import tree as model_tree
from transferkit.groups.model_groups import group_paths
from transferkit.run.schedules import layer_decay

keras_hub = pytest.importorskip("keras_hub")


def tiny_vit(**kwargs):
    return keras_hub.models.ViTBackbone(
        image_shape=(8, 8, 1),
        patch_size=4,
        num_layers=3,
        num_heads=2,
        hidden_dim=8,
        mlp_dim=16,
        **kwargs,
    )


def vit_task(preprocessor=None):
    return keras_hub.models.ViTImageClassifier(
        backbone=tiny_vit(), num_classes=3, preprocessor=preprocessor
    )


def images(samples=24, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(samples) % 3
    x = rng.normal(size=(samples, 8, 8, 1)).astype("float32") + y[:, None, None, None]
    return x, y


def values(variables):
    return [np.array(v.numpy()) for v in variables]


def run_of(model, groups, **kwargs):
    return in_place_run(model, groups, **kwargs)


def test_a_vit_task_trains_in_place_with_its_lower_blocks_frozen_bitwise():
    task = vit_task()
    backbone = task.backbone.name
    bottom, top = LayerGroup.split(
        task, at=f"{backbone}/vit_encoder/transformer_block_2", names=["bottom", "top"]
    )
    assert [layer.name for layer in bottom][-2:] == [
        "transformer_block_1",
        "transformer_block_2",
    ]
    assert top[0].name == "transformer_block_3"
    frozen_before = values(bottom.variables)
    trained_before = values(top.variables)
    result = run_of(task, [bottom, top]).fine_tune(images(), freeze="bottom", epochs=2)
    assert result.frozen_groups == ("bottom",)
    assert result.frozen_unchanged is True
    for before, after in zip(frozen_before, values(bottom.variables), strict=True):
        assert before.tobytes() == after.tobytes()
    moved = [
        not np.array_equal(a, b)
        for a, b in zip(trained_before, values(top.variables), strict=True)
    ]
    assert all(moved)
    assert result.trainable_params == sum(int(np.prod(v.shape)) for v in top.variables)


def test_a_task_with_preprocessing_trains_through_its_own_fit_in_every_loop():
    converter = keras_hub.layers.ViTImageConverter(image_size=(8, 8), scale=0.5)
    preprocessor = keras_hub.models.ViTImageClassifierPreprocessor(converter)
    task = vit_task(preprocessor)
    seen = []
    original = task.preprocess_samples

    def counted(*args, **kwargs):
        seen.append(1)
        return original(*args, **kwargs)

    task.preprocess_samples = counted
    groups = LayerGroup.split(
        task, at=f"{task.backbone.name}/vit_encoder", names=["backbone", "head"]
    )
    result = run_of(task, groups).fine_tune(images(), freeze="backbone", epochs=1)
    assert seen, "the task's preprocessing never ran"
    assert result.training_loop_code == "fit_own"
    assert result.cache_code == "own_fit"


def test_a_dinov2_backbone_is_cut_between_the_blocks_of_its_encoder():
    backbone = keras_hub.models.DINOV2Backbone(
        patch_size=4,
        num_layers=2,
        hidden_dim=8,
        num_heads=2,
        intermediate_dim=16,
        image_shape=(8, 8, 1),
        position_embedding_shape=(8, 8),
    )
    bottom, top = LayerGroup.split(
        backbone, at="encoder/layers_0", names=["bottom", "top"]
    )
    assert [layer.name for layer in top] == ["layers_1", "layernorm"]
    inputs = keras.Input((8, 8, 1))
    features = backbone({"images": inputs})
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(features[:, 0])
    model = keras.Model(inputs, outputs)
    head = LayerGroup("head", [model.get_layer("head")])
    # The backbone's groups hold its paths; the model holds the backbone.
    groups = LayerGroup.from_paths(
        model,
        {
            name: [f"{backbone.name}/{path}" for path in paths]
            for name, paths in {
                "bottom": ["embeddings", "encoder/layers_0"],
                "top": ["encoder/layers_1", "layernorm"],
            }.items()
        }
        | {"head": ["head"]},
    )
    assert [g.name for g in groups] == ["bottom", "top", "head"]
    assert groups[2][0] is head[0]
    before = values(groups[0].variables)
    result = run_of(model, groups).fine_tune(images(), freeze="bottom", epochs=1)
    assert result.frozen_unchanged is True
    after = values(groups[0].variables)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(before, after, strict=True))


def test_an_unknown_block_path_is_refused_with_the_paths_like_it():
    backbone = tiny_vit()
    with pytest.raises(ValueError) as raised:
        LayerGroup.split(
            backbone, at="vit_encoder/transformer_block_9", names=["a", "b"]
        )
    message = str(raised.value)
    assert "has no layer at the path 'vit_encoder/transformer_block_9'" in message
    assert "'vit_encoder/transformer_block_1'" in message
    assert "Received: at='vit_encoder/transformer_block_9'" in message


def test_groups_by_pattern_number_the_blocks_and_keep_layers_without_weights():
    backbone = tiny_vit()
    groups = LayerGroup.match(
        backbone,
        {
            "embed": "vit_patching_and_embedding",
            "block": r"vit_encoder/transformer_block_(\d+)",
            "norm": "vit_encoder/ln",
        },
    )
    assert [g.name for g in groups] == [
        "embed",
        "block_1",
        "block_2",
        "block_3",
        "norm",
    ]
    # The input layer joins the first group; the encoder's dropout the block
    # before it.
    assert [layer.name for layer in groups[3]] == ["transformer_block_3", "dropout"]
    assert groups[0][0].name == "images"
    with pytest.raises(ValueError, match="has weights, but no pattern matches it"):
        LayerGroup.match(backbone, {"block": r"vit_encoder/transformer_block_(\d+)"})
    with pytest.raises(ValueError, match="matches nothing|matches the pattern"):
        LayerGroup.match(backbone, {"block": "vit_encoder/no_such_block"})


def test_a_bert_backbone_refuses_composition_in_the_librarys_words():
    bert = tiny_bert()
    bottom, top = LayerGroup.split(bert, at="transformer_layer_0", names=["a", "b"])
    with pytest.raises(ValueError, match=r"takes 3 inputs .* Train the model in place"):
        bottom + top


def test_groups_cut_inside_a_layer_compose_save_and_load_with_their_paths(tmp_path):
    backbone = tiny_vit()
    bottom, top = LayerGroup.split(
        backbone, at="vit_encoder/transformer_block_1", names=["bottom", "top"]
    )
    pool = LayerGroup(
        "head", [keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(3)]
    )
    model = bottom + top + pool
    bottom.trainable = False
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert list(loaded.groups) == ["bottom", "top", "head"]
    names = [[layer.name for layer in g] for g in loaded.groups.values()]
    assert names[:2] == [[layer.name for layer in g] for g in (bottom, top)]
    assert not loaded.groups["bottom"].trainable
    assert loaded.groups["top"].trainable
    x = images(4)[0]
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0)
    )


def test_a_run_in_place_resumes_from_its_folder_with_the_same_groups(tmp_path):
    keras.utils.set_random_seed(3)
    task = vit_task()
    at = f"{task.backbone.name}/vit_encoder/transformer_block_2"
    groups = LayerGroup.split(task, at=at, names=["bottom", "top"])
    with run_of(task, groups, directory=tmp_path) as run:
        first = run.fine_tune(images(), freeze="bottom", epochs=1)
    saved = values(task.weights)
    with run_of(task, groups, directory=tmp_path) as again:
        replayed = again.fine_tune(images(), freeze="bottom", epochs=1)
    assert replayed == first
    assert all(
        a.tobytes() == b.tobytes()
        for a, b in zip(saved, values(task.weights), strict=True)
    )
    assert (
        group_paths(task)["top"][0]
        == f"{task.backbone.name}/vit_encoder/transformer_block_3"
    )


def test_groups_must_cover_every_layer_with_weights_of_the_model():
    task = vit_task()
    partial = LayerGroup("backbone", [task.backbone])  # Not the head's Dense.
    with pytest.raises(ValueError, match=r"has weights but is in no group"):
        run_of(task, [partial])


def test_layer_decay_gives_each_block_its_own_rate_exactly():
    inputs = keras.Input((4,))
    x = inputs
    for index in range(3):
        x = keras.layers.Dense(4, name=f"block_{index}")(x)
    outputs = keras.layers.Dense(2, name="head")(x)
    model = keras.Model(inputs, outputs)
    groups = LayerGroup.match(model, {"block": r"block_(\d)", "head": "head"})
    multipliers = layer_decay([g.name for g in groups], 0.5)
    assert multipliers == {
        "block_0": 0.125,
        "block_1": 0.25,
        "block_2": 0.5,
        "head": 1.0,
    }
    rng = np.random.default_rng(0)
    x_data = rng.normal(size=(8, 4)).astype("float32")
    y_data = rng.normal(size=(8, 2)).astype("float32")
    before = {g.name: values(g.variables) for g in groups}
    with tf.GradientTape() as tape:
        loss = keras.losses.MeanSquaredError()(y_data, model(x_data))
    gradients = tape.gradient(loss, model.trainable_variables)
    gradient_of = {
        id(v): g.numpy()
        for v, g in zip(model.trainable_variables, gradients, strict=True)
    }
    run = TransferRun(
        attach_groups(model, groups),
        optimizer=keras.optimizers.SGD(0.1),
        loss="mse",
        batch_size=8,
        verbose=0,
    )
    run.train((x_data, y_data), epochs=1, lr_multipliers=multipliers)
    for group in groups:
        rate = 0.1 * multipliers[group.name]
        for variable, old in zip(group.variables, before[group.name], strict=True):
            expected = old - rate * gradient_of[id(variable)]
            np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-6, atol=1e-7)


def test_layer_decay_refuses_a_decay_outside_zero_to_one():
    with pytest.raises(ValueError, match=r"decay.*Received: decay=1.5"):
        layer_decay(["a", "b"], 1.5)


def test_model_tree_paths_name_layers_from_the_model_down():
    task = vit_task()
    paths = dict(model_tree.walk(task))
    block = f"{task.backbone.name}/vit_encoder/transformer_block_1"
    assert paths[block].name == "transformer_block_1"
    assert model_tree.find_layer(task, block + "/mha").name == "mha"
    assert model_tree.position(task, paths[block])[-1] == 0


def test_a_composed_vit_caches_up_to_the_encoder_whose_call_no_cut_enters():
    backbone = tiny_vit()
    bottom, top = LayerGroup.split(
        backbone, at="vit_encoder/transformer_block_2", names=["bottom", "top"]
    )
    head = LayerGroup(
        "head",
        [
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(3, activation="softmax"),
        ],
    )
    model = bottom + top + head
    before = values(bottom.variables)
    result = TransferRun(
        model,
        optimizer="adam",
        loss="sparse_categorical_crossentropy",
        verbose=0,
    ).fine_tune(images(), freeze="bottom", epochs=1)
    assert result.cache_code == "inside_layer"
    assert result.cached_layers == 2  # The input and the patch embedding.
    assert "stops before 'vit_encoder'" in result.cache
    assert result.frozen_unchanged is True
    after = values(bottom.variables)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(before, after, strict=True))


def tiny_bert():
    return keras_hub.models.BertBackbone(
        vocabulary_size=20,
        num_layers=2,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=6,
    )


def token_data(samples=24, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(samples) % 3
    ids = rng.integers(1, 20, size=(samples, 6)).astype("int32")
    ids[:, 0] = y + 1  # The label, in the first token.
    x = {
        "token_ids": ids,
        "segment_ids": np.zeros((samples, 6), "int32"),
        "padding_mask": np.ones((samples, 6), "int32"),
    }
    return x, y


def test_a_bert_classifier_trains_in_place_on_dicts_through_its_fit_and_ours():
    bert = tiny_bert()
    task = keras_hub.models.BertTextClassifier(
        backbone=bert, num_classes=3, preprocessor=None, activation="softmax"
    )
    inputs = bert.input
    pooled = bert(inputs)["pooled_output"]
    own = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(pooled))
    for model, loop in ((task, "fit_own"), (own, "own")):
        at = f"{bert.name}/transformer_layer_0"
        bottom, top = LayerGroup.split(model, at=at, names=["bottom", "top"])
        before = values(bottom.variables)
        run = run_of(model, [bottom, top])
        result = run.fine_tune(
            token_data(), freeze="bottom", epochs=1, validation_data=token_data(9, 1)
        )
        assert result.training_loop_code == loop
        assert result.frozen_unchanged is True
        assert "accuracy" not in result.metrics and np.isfinite(result.metrics["loss"])
        after = values(bottom.variables)
        assert all(
            a.tobytes() == b.tobytes() for a, b in zip(before, after, strict=True)
        )
        assert np.isfinite(run.evaluate(token_data(6, 2))["loss"])


def test_dict_data_with_other_inputs_than_the_model_is_refused_by_name():
    bert = tiny_bert()
    inputs = bert.input
    model = keras.Model(inputs, keras.layers.Dense(3)(bert(inputs)["pooled_output"]))
    run = run_of(model, LayerGroup.split(model, at=[], names=["all"]))
    x, y = token_data()
    del x["segment_ids"]
    with pytest.raises(
        ValueError,
        match=r"a dict of the model's inputs, \['padding_mask', 'segment_ids', 'token_ids'\]\. Received: \['padding_mask', 'token_ids'\]",
    ):
        run.train((x, y), epochs=1)
    x, y = token_data()
    x["token_ids"] = x["token_ids"][:10]
    with pytest.raises(
        ValueError, match=r"one row per sample, the same number\. Received: lengths"
    ):
        run.train((x, y), epochs=1)
