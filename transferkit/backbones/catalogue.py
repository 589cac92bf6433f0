"""The catalogue of `keras.applications` backbones: for each family, its
constructor, the image size its ImageNet weights were made for, the
preprocessing its `preprocess_input` does, and its stage boundaries as cut
points (fastai's `model_meta`, timm's `group_matcher`).

Each stage boundary is a layer whose output is the only tensor that crosses
it (nothing computed before it is used after it), so that
`LayerGroup.split(base, at=list(spec.stages), names=...)` cuts the backbone
into stages that run one after the other, and a feature cache can end at any
of them. In MobileNetV3 (its hard-swish) and ConvNeXt (its residual adds)
Keras operations that are not layers run between the layers, so a check of
what crosses a cut walks `model.operations`, not `model.layers`. The stem
joins the first stage and the last stage ends at the model's last layer
(with `include_top=False`), so "fine-tune the top k stages" trains the last
k groups. Every entry was checked by building it with `weights=None`: the
sizes, the stage names and that one tensor crosses each
(`tests/test_catalogue.py` repeats the check for the smaller families).

>>> from transferkit.backbones.catalogue import spec
>>> spec("MobileNetV2").image_size
224
>>> spec("ResNet50").stages
('conv2_block3_out', 'conv3_block4_out', 'conv4_block6_out')
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping

__all__ = ["CATALOGUE", "BackboneSpec", "spec"]


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """A `keras.applications` family and where to cut it."""

    name: str
    """The catalogue's name, e.g. `"MobileNetV2"`, `"EfficientNetB0"`."""

    constructor: str
    """The constructor's name in `keras.applications`."""

    image_size: int
    """The (square) input size its ImageNet weights were made for: the
    default size."""

    min_size: int
    """The smallest (square) input it builds from."""

    preprocessing: str | None
    """The `ImagenetPreprocessing` mode of its `preprocess_input` for pixel
    values 0-255 (`"tf"`, `"torch"`, `"caffe"`), or `None` when the model
    preprocesses its inputs itself (EfficientNet, EfficientNetV2, ConvNeXt,
    MobileNetV3 take pixels 0-255)."""

    stages: tuple[str, ...]
    """Names of the layers that end each stage but the last, bottom first:
    the cut points that split the backbone into `len(stages) + 1` groups,
    each crossed by one tensor."""

    options: Mapping = dataclasses.field(default_factory=dict)
    """Further constructor arguments."""


def _specs(
    entries: Mapping[str, tuple[int, tuple[str, ...]]],
    *,
    min_size: int,
    preprocessing: str | None,
    options: Mapping | None = None,
) -> dict[str, BackboneSpec]:
    """The entries of one family, `{name: (image_size, stages)}`, whose
    members share the rest."""
    return {
        name: BackboneSpec(
            name=name,
            constructor=name,
            image_size=image_size,
            min_size=min_size,
            preprocessing=preprocessing,
            stages=stages,
            options=dict(options or {}),
        )
        for name, (image_size, stages) in entries.items()
    }


def _rows(blocks: tuple[int, ...], single: str = "project_bn") -> tuple[str, ...]:
    """The ends of an EfficientNet's rows of blocks, but the last, from the
    number of blocks in each (`block1a`, `block1b`, ..., `block2a`, ...):
    the last block's residual add, or the `single` layer that ends a row of
    one block, which has none."""
    return tuple(
        f"block{row}{chr(ord('a') + count - 1)}_add"
        if count > 1
        else f"block{row}a_{single}"
        for row, count in enumerate(blocks, start=1)
    )


# MobileNetV2, MobileNetV3 and EfficientNet(V2) share one plan: stages are
# the papers' rows of blocks of one output width (timm's `blocks.N`), not the
# resolutions, of which /16 has two rows here. A stage ends at its last
# block's residual add, or at its projection where that block has none; the
# stem joins the first stage, the final 1x1 conv the last. MobileNetV3 and
# EfficientNet(V2) rescale and normalize inside the model (V3 and V2 with
# `include_preprocessing=True`, their default), so they take pixels 0-255.
_MOBILENETS = {
    **_specs(
        {
            "MobileNetV2": (
                224,
                (
                    "expanded_conv_project_BN",
                    "block_2_add",
                    "block_5_add",
                    "block_9_add",
                    "block_12_add",
                    "block_15_add",
                ),
            )
        },
        min_size=32,
        preprocessing="tf",
        options={"alpha": 1.0},
    ),
    **_specs(
        {
            "MobileNetV3Small": (
                224,
                (
                    "expanded_conv_project_bn",
                    "expanded_conv_2_add",
                    "expanded_conv_5_add",
                    "expanded_conv_7_add",
                ),
            ),
            "MobileNetV3Large": (
                224,
                (
                    "expanded_conv_add",
                    "expanded_conv_2_add",
                    "expanded_conv_5_add",
                    "expanded_conv_9_add",
                    "expanded_conv_11_add",
                ),
            ),
        },
        min_size=32,
        preprocessing=None,
        options={"alpha": 1.0},
    ),
}

# EfficientNet: seven rows of blocks; the top stage is row 7 and `top_conv`.
_EFFICIENTNETS = _specs(
    {
        "EfficientNetB0": (224, _rows((1, 2, 2, 3, 3, 4))),
        "EfficientNetB1": (240, _rows((2, 3, 3, 4, 4, 5))),
        "EfficientNetB2": (260, _rows((2, 3, 3, 4, 4, 5))),
        "EfficientNetB3": (300, _rows((2, 3, 3, 5, 5, 6))),
        "EfficientNetB4": (380, _rows((2, 4, 4, 6, 6, 8))),
        "EfficientNetB5": (456, _rows((3, 5, 5, 7, 7, 9))),
        "EfficientNetB6": (528, _rows((3, 6, 6, 8, 8, 11))),
        "EfficientNetB7": (600, _rows((4, 7, 7, 10, 10, 13))),
    },
    min_size=32,
    preprocessing=None,
)

# EfficientNetV2: six rows (B0-B3, S) or seven (M, L). B0's first row is one
# fused block without a residual add; it ends at its projection's activation.
_EFFICIENTNETS_V2 = _specs(
    {
        "EfficientNetV2B0": (224, _rows((1, 2, 2, 3, 5), "project_activation")),
        "EfficientNetV2B1": (240, _rows((2, 3, 3, 4, 6))),
        "EfficientNetV2B2": (260, _rows((2, 3, 3, 4, 6))),
        "EfficientNetV2B3": (300, _rows((2, 3, 3, 5, 7))),
        "EfficientNetV2S": (384, _rows((2, 4, 4, 6, 9))),
        "EfficientNetV2M": (480, _rows((3, 5, 5, 7, 14, 18))),
        "EfficientNetV2L": (480, _rows((4, 7, 7, 10, 19, 25))),
    },
    min_size=32,
    preprocessing=None,
)


def _resnet_stages(conv3: int, conv4: int) -> tuple[str, ...]:
    """The ends of a ResNet's conv2, conv3 and conv4 stages, of 3, `conv3`
    and `conv4` blocks."""
    return ("conv2_block3_out", f"conv3_block{conv3}_out", f"conv4_block{conv4}_out")


# ResNets: the paper's stages conv2..conv5; the stem (conv1, pool1) joins
# conv2. V1 halves the resolution in each stage's first block, V2 in its last
# (so a V2 stage ends at a lower resolution than it began); V2 ends with
# `post_bn`/`post_relu`, in its top stage.
_RESNETS = {
    **_specs(
        {
            "ResNet50": (224, _resnet_stages(4, 6)),
            "ResNet101": (224, _resnet_stages(4, 23)),
            "ResNet152": (224, _resnet_stages(8, 36)),
        },
        min_size=32,
        preprocessing="caffe",
    ),
    **_specs(
        {
            "ResNet50V2": (224, _resnet_stages(4, 6)),
            "ResNet101V2": (224, _resnet_stages(4, 23)),
            "ResNet152V2": (224, _resnet_stages(8, 36)),
        },
        min_size=32,
        preprocessing="tf",
    ),
}

# InceptionV3: one stage per Inception block (mixed0..mixed10; the stem joins
# mixed0), not per resolution, which would make three stages with
# mixed8..mixed10 on top. Keras' fine-tuning guide trains "the top 2
# inception blocks" (from layer 249, after mixed8): the top two stages here.
# Below 75 pixels its unpadded convolutions leave nothing.
_INCEPTIONS = _specs(
    {"InceptionV3": (299, tuple(f"mixed{block}" for block in range(10)))},
    min_size=75,
    preprocessing="tf",
)


def _convnext(size: str) -> tuple[int, tuple[str, ...]]:
    """The image size and stage ends of ConvNeXt`size`: the downsampling
    layers that open stages 1, 2 and 3, named after the model's default
    `name`, e.g. `convnext_tiny`."""
    model = f"convnext_{size.lower()}"
    return 224, tuple(f"{model}_downsampling_block_{stage}" for stage in range(3))


# ConvNeXt: its four stages. A block's residual add is a Keras operation, not
# a layer, so no layer ends a stage; each cut follows the downsampling layer
# (LayerNorm, then a 2x2 strided conv) that opens the next stage, which thus
# goes with the stage below. The model normalizes its inputs itself
# (`include_preprocessing=True`, the default).
_CONVNEXTS = _specs(
    {
        f"ConvNeXt{size}": _convnext(size)
        for size in ("Tiny", "Small", "Base", "Large", "XLarge")
    },
    min_size=32,
    preprocessing=None,
)

# DenseNet: the dense blocks conv2..conv5; the stem joins conv2, and each
# transition (pool2..pool4: BN, ReLU, 1x1 conv, average pool) goes with the
# block before it, as Keras numbers it, so each cut is crossed by the
# transition's halved tensor rather than the block's wide concatenation.
_DENSENETS = _specs(
    {
        name: (224, ("pool2_pool", "pool3_pool", "pool4_pool"))
        for name in ("DenseNet121", "DenseNet169", "DenseNet201")
    },
    min_size=32,
    preprocessing="torch",
)

CATALOGUE: dict[str, BackboneSpec] = {
    **_MOBILENETS,
    **_EFFICIENTNETS,
    **_EFFICIENTNETS_V2,
    **_RESNETS,
    **_INCEPTIONS,
    **_CONVNEXTS,
    **_DENSENETS,
}
"""Every backbone the catalogue knows, by its `keras.applications` name."""


def spec(name: str) -> BackboneSpec:
    """The catalogue's entry for a backbone.

    Args:
        name: the `keras.applications` constructor's name, e.g.
            `"EfficientNetB0"`; a name that differs in case only is read as
            the catalogue's.

    Returns:
        Its `BackboneSpec`.

    Raises:
        TypeError: if `name` is not a string.
        ValueError: naming the names like it and every accepted one, if the
            catalogue has no such backbone.
    """
    if not isinstance(name, str):
        raise TypeError(
            "Expected `backbone` to be a name from the catalogue, as a string. "
            f"Received: backbone={name!r} (of type {type(name).__name__})"
        )
    if name in CATALOGUE:
        return CATALOGUE[name]
    by_case = {known.lower(): known for known in CATALOGUE}
    if name.lower() in by_case:
        return CATALOGUE[by_case[name.lower()]]
    close = difflib.get_close_matches(name.lower(), list(by_case), n=3, cutoff=0.6)
    like = f" Names like it: {[by_case[c] for c in close]}." if close else ""
    raise ValueError(
        f"Unknown backbone {name!r}.{like} Expected one of "
        f"{list(CATALOGUE)}. Received: backbone={name!r}"
    )
