"""The catalogue of `keras.applications` backbones: every entry names a
constructor that exists, refuses inputs below its `min_size` and
preprocesses as its module's `preprocess_input` does; for a few cheap
families, built at their smallest size with `weights=None`, each stage
boundary is crossed by one tensor alone, so the stages run one after the
other. (Every entry was checked that way once, by a script, at its smallest
size; the larger models would take minutes here.)"""

import importlib

import keras
import numpy as np
import pytest

from transferkit import LayerGroup
from transferkit.backbones.catalogue import CATALOGUE, BackboneSpec, spec
from transferkit.layers.preprocessing import MODES, ImagenetPreprocessing

BUILT = [
    "MobileNetV2",
    "MobileNetV3Small",
    "ResNet50",
    "ConvNeXtTiny",
]
"""The families built here, each in seconds: rows of blocks (MobileNetV2, as
EfficientNet is cut), residual stages, and the two where Keras operations
that are not layers run between the layers (MobileNetV3's hard-swish,
ConvNeXt's residual adds). Every entry of the catalogue, EfficientNet and
DenseNet included, was checked once the same way by a script (all 33 split
and composed back bitwise); the suite keeps one of each pattern."""

# One process for the module: each backbone is built once.
pytestmark = pytest.mark.xdist_group("catalogue")


def build(entry: BackboneSpec, size: int | None = None) -> keras.Model:
    size = size or entry.min_size
    constructor = getattr(keras.applications, entry.constructor)
    return constructor(
        include_top=False,
        weights=None,
        input_shape=(size, size, 3),
        **entry.options,
    )


def pixels(size, samples=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, size=(samples, size, size, 3)).astype("float32")


def stage_by_stage(base: keras.Model, cuts, x):
    """`base`'s output on `x`, computed by one model per stage, each from
    the tensor of the cut before it to the next: Keras refuses such a model
    where a tensor from before a cut is used after it."""
    start = base.input
    for cut in [*cuts, None]:
        end = base.output if cut is None else base.get_layer(cut).output
        x = keras.Model(start, end)(x, training=False)
        start = end
    return keras.ops.convert_to_numpy(x)


@pytest.fixture(scope="module", params=BUILT)
def built(request):
    entry = spec(request.param)
    base = build(entry)
    x = pixels(entry.min_size)
    return entry, base, x, keras.ops.convert_to_numpy(base(x, training=False))


def test_names_are_keras_applications_constructors_in_catalogue_order():
    for name, entry in CATALOGUE.items():
        assert entry.name == name == entry.constructor
        assert callable(getattr(keras.applications, entry.constructor))
    assert list(CATALOGUE)[:3] == [
        "MobileNetV2",
        "MobileNetV3Small",
        "MobileNetV3Large",
    ]


def test_entries_are_well_formed():
    for entry in CATALOGUE.values():
        assert entry.stages, entry.name
        assert all(isinstance(stage, str) and stage for stage in entry.stages)
        assert len(set(entry.stages)) == len(entry.stages), entry.name
        assert entry.preprocessing is None or entry.preprocessing in MODES
        assert 32 <= entry.min_size <= entry.image_size
        assert set(entry.options) <= {"alpha"}


def test_the_required_families_are_there():
    required = (
        "MobileNetV2 MobileNetV3Small MobileNetV3Large EfficientNetB0 "
        "EfficientNetB1 EfficientNetB2 EfficientNetB3 EfficientNetV2B0 "
        "EfficientNetV2B1 EfficientNetV2B2 EfficientNetV2B3 EfficientNetV2S "
        "ResNet50 ResNet50V2 InceptionV3 ConvNeXtTiny DenseNet121"
    ).split()
    assert set(required) <= set(CATALOGUE)
    sizes = {name: CATALOGUE[name].image_size for name in required}
    assert sizes["EfficientNetB3"] == sizes["EfficientNetV2B3"] == 300
    assert sizes["EfficientNetV2S"] == 384
    assert sizes["InceptionV3"] == 299


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_an_input_below_min_size_is_refused(name):
    # Keras checks the size before it makes any layer, so this is cheap.
    entry = spec(name)
    with pytest.raises(ValueError, match="at least"):
        build(entry, entry.min_size - 1)


@pytest.mark.parametrize(
    "constructor", sorted({entry.constructor for entry in CATALOGUE.values()})
)
def test_preprocessing_is_the_modules_preprocess_input(constructor):
    entry = next(e for e in CATALOGUE.values() if e.constructor == constructor)
    module = getattr(keras.applications, constructor).__module__
    preprocess_input = importlib.import_module(module).preprocess_input
    x = pixels(8)

    got = keras.ops.convert_to_numpy(preprocess_input(x.copy()))

    if entry.preprocessing is None:  # The model preprocesses inside.
        np.testing.assert_array_equal(got, x)
    else:
        want = ImagenetPreprocessing(entry.preprocessing)(x)
        np.testing.assert_allclose(got, keras.ops.convert_to_numpy(want), atol=1e-4)


def test_split_at_the_stages_composes_into_the_backbone(built):
    entry, base, x, want = built
    names = [f"stage_{i}" for i in range(len(entry.stages) + 1)]

    groups = LayerGroup.split(base, at=list(entry.stages), names=names)
    model = groups[0]
    for group in groups[1:]:
        model = model + group

    assert [group[-1].name for group in groups[:-1]] == list(entry.stages)
    assert groups[-1][-1] is base.layers[-1]
    got = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_one_tensor_crosses_each_stage_boundary(built):
    entry, base, x, want = built

    np.testing.assert_allclose(stage_by_stage(base, entry.stages, x), want, atol=1e-5)


def test_a_cut_that_two_tensors_cross_is_refused_by_the_stage_check():
    # Inside a residual block the block's input crosses the cut as well.
    base = build(spec("ResNet50"))

    with pytest.raises(ValueError, match="not connected to `inputs`"):
        stage_by_stage(base, ["conv2_block3_1_relu"], pixels(32))


def test_models_that_preprocess_inside_start_with_their_preprocessing(built):
    entry, base, _, _ = built
    first = {type(layer).__name__ for layer in base.layers[1:3]}

    assert (entry.preprocessing is None) == bool(first & {"Rescaling", "Normalization"})


def test_spec_finds_names_exactly_or_by_case():
    assert spec("EfficientNetB0") is CATALOGUE["EfficientNetB0"]
    assert spec("mobilenetv2") is CATALOGUE["MobileNetV2"]


def test_an_unknown_name_is_refused_with_names_like_it():
    with pytest.raises(
        ValueError,
        match=r"^Unknown backbone 'MobileNetV4'\. Names like it: \['MobileNetV2', "
        r".*\]\. Expected one of \['MobileNetV2', 'MobileNetV3Small', .*'DenseNet121'.*\]\. "
        r"Received: backbone='MobileNetV4'$",
    ):
        spec("MobileNetV4")


def test_a_name_like_none_is_refused_with_every_name():
    with pytest.raises(
        ValueError,
        match=r"^Unknown backbone 'vgg'\. Expected one of \['MobileNetV2', .*\]\. "
        r"Received: backbone='vgg'$",
    ):
        spec("vgg")


def test_a_name_that_is_not_a_string_is_refused():
    with pytest.raises(TypeError, match=r"Received: backbone=50 \(of type int\)"):
        spec(50)
