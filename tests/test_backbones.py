"""Pretrained backbones: groups cut out of a `keras.applications` model,
composed with a new head, saved and loaded, cached at a cut inside the
backbone, and fine-tuned with their BatchNormalization in inference mode."""

import warnings

import keras
import numpy as np
import pytest
from conftest import bitwise_equal
from keras import layers

from transferkit import LayerGroup, Speed, TransferRun
from transferkit.cache.plan import plan_cache

SPARSE = "sparse_categorical_crossentropy"


def mobilenet():
    return keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None
    )


def head(classes=3):
    return LayerGroup(
        "head",
        [layers.GlobalAveragePooling2D(), layers.Dense(classes, activation="softmax")],
    )


def backbone_model(cut="block_12_add"):
    bottom, top = LayerGroup.split(mobilenet(), at=cut, names=["bottom", "top"])
    return bottom + top + head()


def images(samples=24, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(samples) % 3
    x = rng.normal(size=(samples, 32, 32, 3)).astype("float32") + y[:, None, None, None]
    return x, y


def weights_of(model):
    return [np.array(keras.ops.convert_to_numpy(w)) for w in model.weights]


def test_split_cuts_at_names_inclusively_and_at_integers():
    base = mobilenet()
    names = [layer.name for layer in base.layers]

    bottom, middle, top = LayerGroup.split(
        base, at=["block_2_add", 100], names=["bottom", "middle", "top"]
    )

    assert bottom[-1].name == "block_2_add"
    assert len(bottom) == names.index("block_2_add") + 1
    assert list(middle) == base.layers[len(bottom) : 100]
    assert [*bottom, *middle, *top] == base.layers
    assert bottom.source is base and head().source is None


def test_inception_v3_splits_at_mixed8_into_the_recipes_249_layers():
    base = keras.applications.InceptionV3(
        input_shape=(75, 75, 3), include_top=False, weights=None
    )

    bottom, top = LayerGroup.split(base, at="mixed8", names=["bottom", "top"])
    model = bottom + top + head()
    bottom.trainable = False  # As a phase that freezes it.

    assert len(bottom) == 249 and bottom[-1].name == "mixed8"
    assert len(bottom) + len(top) == len(base.layers)
    plan = plan_cache(model, ["bottom"])
    assert plan.layers == 249
    assert plan.reason.startswith("ends at 'mixed8' in 'inception_v3'")
    # The cached front and the rest compute what the model does.
    x = np.random.default_rng(0).normal(size=(2, 75, 75, 3)).astype("float32")
    features = x
    for layer in plan.front:
        features = layer(features, training=False)
    out = features
    for layer in plan.rest:
        out = layer(out, training=False)
    np.testing.assert_allclose(out, model(x, training=False), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "at, names, error, message",
    [
        (
            "block_12_addd",
            ["a", "b"],
            ValueError,
            r"no layer at the path 'block_12_addd' .*Paths like it: \['block_12_add'",
        ),
        (
            ["block_12_add", "block_2_add"],
            ["a", "b", "c"],
            ValueError,
            r"increasing order.*group 'b' would be empty",
        ),
        (
            "block_12_add",
            ["a"],
            ValueError,
            r"Expected 2 group names for 1 cut point\. Received: names=\['a'\]",
        ),
        (500, ["a", "b"], ValueError, r"between 1 and 153 .* Received: at=500"),
        (
            1.5,
            ["a", "b"],
            TypeError,
            r"a layer path \(names joined by '/'\) or an integer\. Received: 1\.5",
        ),
    ],
)
def test_bad_cut_points_name_the_value(at, names, error, message):
    with pytest.raises(error, match=message):
        LayerGroup.split(mobilenet(), at=at, names=names)


def test_an_unbuilt_model_or_a_layer_cannot_be_split():
    with pytest.raises(ValueError, match="is not built"):
        LayerGroup.split(keras.Sequential([layers.Dense(2)]), at=1, names=["a", "b"])
    with pytest.raises(TypeError, match="Expected `model` to be a Keras model"):
        LayerGroup.split(layers.Dense(2), at=1, names=["a", "b"])


def test_the_backbone_appears_once_with_its_weights():
    base = mobilenet()
    bottom, top = LayerGroup.split(base, at="block_12_add", names=["bottom", "top"])
    before = weights_of(base)

    model = bottom + top + head()

    assert model.layers[0] is base
    assert list(model.groups) == ["bottom", "top", "head"]
    assert all(
        bitwise_equal(a, b)
        for a, b in zip(before, weights_of(model)[: len(before)], strict=True)
    )
    x, _ = images(2)
    np.testing.assert_array_equal(
        model.layers[0](x), base(x)
    )  # The same layer object, the same function.


def test_groups_of_a_backbone_must_all_be_composed_in_order():
    bottom, top = LayerGroup.split(
        mobilenet(), at="block_12_add", names=["bottom", "top"]
    )
    with pytest.raises(
        ValueError,
        match=r"must all be composed.*\['bottom'\] hold 116 of its 154 layers",
    ):
        bottom + head()
    with pytest.raises(ValueError, match="must all be composed"):
        top + bottom + head()


def test_a_users_functional_model_gets_groups_the_same_way():
    inputs = keras.Input((6,))
    hidden = layers.Dense(4, name="hidden")(inputs)
    outputs = layers.Dense(2, name="out")(hidden)
    own = keras.Model(inputs, outputs, name="own")

    lower, upper = LayerGroup.split(own, at="hidden", names=["lower", "upper"])
    model = lower + upper
    run = TransferRun(model, optimizer="sgd", loss="mse", verbose=0)
    result = run.fine_tune(
        (np.ones((8, 6), "float32"), np.zeros((8, 2), "float32")),
        freeze="lower",
        epochs=1,
    )

    assert result.frozen_unchanged is True
    assert result.cache.endswith(
        "layers hidden: ends at 'hidden' in 'own', covers the frozen groups"
    )


def small_backbone():
    inputs = keras.Input((6, 6, 3))
    hidden = layers.Conv2D(4, 3, name="hidden")(inputs)
    outputs = layers.Conv2D(4, 3, name="out")(hidden)
    return keras.Model(inputs, outputs, name="small")


def test_groups_in_front_of_split_groups_compose_in_any_bracketing():
    def groups():
        augment = LayerGroup(
            "augment",
            [layers.RandomFlip(), layers.Rescaling(0.5)],
            input_shape=(6, 6, 3),
        )
        bottom, top = LayerGroup.split(
            small_backbone(), at="hidden", names=["bottom", "top"]
        )
        return augment, bottom, top, head()

    augment, bottom, top, last = groups()
    left = augment + bottom + top + last
    augment, bottom, top, last = groups()
    right = augment + (bottom + (top + last))
    augment, bottom, top, last = groups()
    middle = (augment + bottom) + (top + last)

    for model in (left, right, middle):
        assert list(model.groups) == ["augment", "bottom", "top", "head"]
        assert [type(layer).__name__ for layer in model.layers] == [
            "RandomFlip",
            "Rescaling",
            "Functional",
            "GlobalAveragePooling2D",
            "Dense",
        ]
    pending = groups()[0] + groups()[1]
    with pytest.raises(
        ValueError,
        match=r"groups \['augment', 'bottom'\] that are not one yet: 1 of the 3 "
        r"layers of model 'small' are missing",
    ):
        TransferRun(pending, optimizer="sgd", loss="mse")


def test_a_composed_backbone_saves_and_loads_with_groups_flags_and_predictions(
    tmp_path,
):
    model = backbone_model()
    model.groups["bottom"].trainable = False
    path = tmp_path / "model.keras"
    model.save(path)

    loaded = keras.saving.load_model(path)  # No custom_objects.

    assert list(loaded.groups) == ["bottom", "top", "head"]
    assert [g.trainable for g in loaded.groups.values()] == [False, True, True]
    assert loaded.groups["bottom"].source is loaded.layers[0]
    assert len(loaded.trainable_weights) == len(model.trainable_weights)
    x, _ = images(4)
    np.testing.assert_array_equal(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0)
    )


def fine_tune_top(feature_cache, cut="block_12_add", **options):
    keras.utils.set_random_seed(3)
    model = backbone_model(cut)
    run = TransferRun(
        model,
        optimizer=lambda: keras.optimizers.SGD(0.05),
        loss=SPARSE,
        batch_size=8,
        verbose=0,
        seed=3,
        speed=Speed(feature_cache=feature_cache),
    )
    result = run.fine_tune(images(), freeze="bottom", epochs=1, **options)
    return model, result


def test_a_cache_inside_the_backbone_gives_bitwise_the_same_weights():
    cached_model, cached = fine_tune_top(True)
    plain_model, plain = fine_tune_top(False)

    assert cached.cached_layers == 116
    assert cached.cache.endswith(
        "layers Conv1..block_12_add: ends at 'block_12_add' in "
        "'mobilenetv2_0.35_32', covers the frozen groups"
    )
    assert plain.cache == "not used: turned off (feature_cache=False)"
    assert cached.frozen_unchanged is True and plain.frozen_unchanged is True
    assert all(
        bitwise_equal(a, b)
        for a, b in zip(weights_of(cached_model), weights_of(plain_model), strict=True)
    )


def test_a_cut_crossed_by_two_tensors_moves_the_cache_back():
    # block_4_expand's input is block_3_project_BN, which block_4_add uses too.
    _, result = fine_tune_top(True, cut="block_4_expand")

    assert result.cache.endswith(
        "ends at 'block_3_project_BN' in 'mobilenetv2_0.35_32', covers the "
        "frozen groups; moved back from 'block_4_expand', where 2 tensors cross "
        "the cut (from ['block_4_expand', 'block_3_project_BN'])"
    )
    assert result.frozen_unchanged is True


def batch_norms(group):
    return [layer for layer in group if isinstance(layer, layers.BatchNormalization)]


@pytest.mark.parametrize("mode", ["inference", "train"])
def test_backbone_batch_norm_runs_in_inference_mode_unless_asked_to_train(mode):
    keras.utils.set_random_seed(0)
    model = backbone_model()
    top_norms = batch_norms(model.groups["top"])
    bottom = weights_of(model)[: len(model.groups["bottom"].variables)]
    before = [weights_of(n) for n in top_norms]
    run = TransferRun(model, optimizer="adam", loss=SPARSE, batch_size=8, verbose=0)

    result = run.fine_tune(
        images(), freeze="bottom", epochs=1, backbone_batch_norm=mode
    )

    after = [weights_of(n) for n in top_norms]
    held = all(
        bitwise_equal(a, b)
        for x, y in zip(before, after, strict=True)
        for a, b in zip(x, y, strict=True)
    )
    assert held is (mode == "inference")
    assert all(n.trainable for n in top_norms)  # The flags come back.
    assert result.batch_norm == (
        f"{len(top_norms)} layers of backbone groups "
        + ("in inference mode" if mode == "inference" else "trained")
    )
    assert result.frozen_unchanged is True
    assert all(
        bitwise_equal(a, b)
        for a, b in zip(bottom, weights_of(model)[: len(bottom)], strict=True)
    )


class Block(layers.Layer):
    """A block layer holding its own BatchNormalization, as keras-hub's
    blocks (`MBConvBlock`) do."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = layers.Conv2D(4, 3, padding="same")
        self.norm = layers.BatchNormalization()

    def call(self, x, training=None):
        return self.norm(self.conv(x), training=training)


def test_a_batch_norm_inside_a_block_layer_runs_in_inference_mode_too():
    inputs = keras.Input((32, 32, 3))
    hidden = layers.Conv2D(4, 3, name="hidden")(inputs)
    block = Block(name="block")
    backbone = keras.Model(inputs, block(hidden))
    bottom, top = LayerGroup.split(backbone, at="hidden", names=["bottom", "top"])
    model = bottom + top + head()
    before, kernel = weights_of(block.norm), weights_of(block.conv)[0]
    run = TransferRun(model, optimizer="adam", loss=SPARSE, batch_size=8, verbose=0)

    result = run.fine_tune(images(), freeze="bottom", epochs=1)

    assert result.batch_norm == "1 layers of backbone groups in inference mode"
    moving = [v for v in block.norm.weights if "moving" in v.path]
    assert moving and all(
        bitwise_equal(a, b) for a, b in zip(before, weights_of(block.norm), strict=True)
    )
    assert block.norm.trainable  # The flag comes back.
    assert not bitwise_equal(kernel, weights_of(block.conv)[0])  # The block trained.


def test_a_model_saved_after_a_phase_loads_without_warnings(tmp_path):
    inputs = keras.Input((6, 6, 3))
    hidden = layers.Conv2D(4, 3, name="hidden")(inputs)
    outputs = layers.BatchNormalization(name="norm")(layers.Conv2D(4, 3)(hidden))
    bottom, top = LayerGroup.split(
        keras.Model(inputs, outputs), at="hidden", names=["bottom", "top"]
    )
    model = bottom + top + head()
    run = TransferRun(
        model, optimizer="adam", loss=SPARSE, verbose=0, directory=tmp_path / "run"
    )
    x, y = images(samples=8)
    run.fine_tune((x[:, :6, :6], y), freeze="bottom", epochs=1)
    model.save(tmp_path / "model.keras")
    run.close()

    for path in [tmp_path / "model.keras", *(tmp_path / "run").glob("checkpoint-*")]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded = keras.models.load_model(path)
        assert [str(w.message) for w in caught] == []
        assert loaded.get_layer(model.layers[0].name).get_layer("norm").trainable
        saved = [v.numpy() for v in model.optimizer.variables]
        assert all(
            bitwise_equal(np.asarray(a), b.numpy())
            for a, b in zip(saved, loaded.optimizer.variables, strict=True)
        ) or path.name.startswith("checkpoint")


def test_an_unknown_batch_norm_mode_is_refused():
    run = TransferRun(backbone_model(), optimizer="sgd", loss=SPARSE, verbose=0)
    with pytest.raises(
        ValueError,
        match=r"Unknown `backbone_batch_norm`\. Expected one of \['inference', "
        r"'train'\]\. Received: backbone_batch_norm='frozen'",
    ):
        run.train(images(), epochs=1, backbone_batch_norm="frozen")
