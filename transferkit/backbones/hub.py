"""keras-hub image backbones as transferkit backbones: a preset (a local
folder such as timm's `config.json` + `model.safetensors`, an `hf://` or
`kaggle://` handle, or a preset name) read with `Backbone.from_preset`, its
`ImageConverter`'s scale and offset as the `preprocess` group, and its
stages found from its layer names.

keras-hub stays optional: it is imported here only, when a preset is asked
for. A model that holds a keras-hub backbone needs `import keras_hub`
before it is loaded again (`keras.saving.load_model`, a run folder).
"""

from __future__ import annotations

import os
import re

import keras
from keras import layers

from transferkit.backbones.backbone import Backbone
from transferkit.groups.layer_group import LayerGroup

__all__ = ["load_hub_backbone", "stage_ends"]

_STAGE = re.compile(r"^(?:block|stack|stage)_?(\d+)")


def stage_ends(model: keras.Model) -> list[str]:
    """The layers that end each numbered stage but the last: the last layer
    named `block<N>...`, `stack<N>...` or `stage<N>...` for each N (the stem
    joins the first stage, what follows the last N joins the last)."""
    last: dict[int, str] = {}
    for layer in model.layers:
        match = _STAGE.match(layer.name)
        if match:
            last[int(match.group(1))] = layer.name
    return [last[n] for n in sorted(last)][:-1]


def load_hub_backbone(source: str, *, weights, image_size: int | None):
    """The keras-hub preset `source` as a `Backbone` (see `load_backbone`)."""
    hub = _import_hub(source)
    if weights not in ("imagenet", None):
        raise ValueError(
            f"A keras-hub preset brings its own weights: expected weights="
            f"'imagenet' (the preset's) or None (random). To use a weights "
            f"file, make it a preset folder. Received: weights={weights!r}"
        )
    try:
        model = hub.models.Backbone.from_preset(
            source, load_weights=weights is not None
        )
        converter = hub.layers.ImageConverter.from_preset(source)
    except Exception as error:  # keras-hub raises many kinds, offline too.
        raise OSError(_unreadable(source, error)) from error
    size = image_size or _converter_size(converter) or 224
    scale, offset = _scale_offset(converter)
    preprocess = LayerGroup(
        "preprocess",
        [layers.Rescaling(scale=scale, offset=offset, name="pixels_to_inputs")],
        input_shape=(size, size, 3),
    )
    model(keras.ops.zeros((1, size, size, 3)))  # Builds it at this size.
    ends = stage_ends(model)
    names = [f"stage_{i + 1}" for i in range(len(ends) + 1)]
    stages = LayerGroup.split(model, at=ends, names=names)
    return Backbone(
        name=source,
        groups=(preprocess, *stages),
        image_size=size,
        weights="the preset's" if weights else "none (random)",
        preprocessing=f"x * {_short(scale)} + {_short(offset)} (its ImageConverter)",
        model=model,
        library="keras-hub",
    )


def _import_hub(source: str):
    try:
        import keras_hub
    except ImportError as error:
        raise ImportError(
            f"{source!r} is not a backbone of transferkit's catalogue, so it "
            "was read as a keras-hub preset, which needs keras-hub: pip "
            "install 'transferkit[hub]'. For the catalogue's names see "
            "transferkit.backbones.names()."
        ) from error
    return keras_hub


def _unreadable(source: str, error: BaseException) -> str:
    reason = str(error).splitlines()[0][:200] if str(error) else repr(error)
    if os.path.isdir(source):
        where = f"the folder {source!r}"
        way = (
            "it must hold a keras-hub preset (config.json, model.weights.h5 "
            "...) or timm's layout (config.json and model.safetensors)"
        )
    else:
        where = f"the keras-hub preset {source!r}"
        way = (
            "a preset name or hf:// handle needs network access once (keras-hub "
            "keeps it in its cache); offline, download it elsewhere and pass the "
            "folder; or use a catalogue name with weights=PATH"
        )
    return f"Could not read {where} ({reason}). Ways out: {way}."


def _converter_size(converter) -> int | None:
    size = getattr(converter, "image_size", None)
    return int(size[0]) if size else None


def _scale_offset(converter) -> tuple:
    scale = getattr(converter, "scale", None)
    offset = getattr(converter, "offset", None)
    return (
        1.0 / 255.0 if scale is None else _plain(scale),
        0.0 if offset is None else _plain(offset),
    )


def _plain(value):
    values = [float(v) for v in keras.ops.convert_to_numpy(value).reshape(-1)]
    return values[0] if len(set(values)) == 1 else values


def _short(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(f"{v:.4g}" for v in value) + "]"
    return f"{value:.4g}"
