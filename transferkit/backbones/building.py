"""`load_backbone`: a named pretrained backbone, built with its weights and
cut into groups at its stage boundaries.

A name of the catalogue (`transferkit.backbones.catalogue`) builds a
`keras.applications` model; anything else that names a keras-hub preset (a
local preset folder, an `hf://` or `kaggle://` handle, a preset name) is
read by keras-hub (`transferkit.backbones.hub`). Either way the result is
the same: a `preprocess` group that takes pixel values 0-255, then one group
per stage (`stage_1` ... `stage_n`), so that "fine-tune the top k stages"
is `run.unfreeze(*backbone.top(k))`.

The weights: `"imagenet"` (Keras' download, kept in `~/.keras/models/`), a
weights file of the backbone without its top, or `None` (random). Offline
or on a bad file, the error names what was tried and every way out.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras
from keras import layers

from transferkit.backbones.backbone import Backbone
from transferkit.backbones.catalogue import CATALOGUE, BackboneSpec, spec
from transferkit.groups.layer_group import LayerGroup
from transferkit.layers.preprocessing import ImagenetPreprocessing

__all__ = ["Backbone", "is_hub_source", "load_backbone", "names"]

_HANDLES = ("hf://", "kaggle://", "modelscope://", "gs://")


def is_hub_source(name: str) -> bool:
    """Whether `name` is read by keras-hub: a folder, a handle, or a name
    outside the catalogue that looks like a preset (lower case)."""
    if name in CATALOGUE or name.lower() in {n.lower() for n in CATALOGUE}:
        return False
    return (
        name.startswith(_HANDLES)
        or os.path.isdir(name)
        or re.fullmatch(r"[a-z0-9][a-z0-9_.\-]*", name) is not None
    )


def load_backbone(
    name: str = "MobileNetV2",
    *,
    weights: str | os.PathLike | None = "imagenet",
    image_size: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> Backbone:
    """Builds a pretrained backbone and cuts it into its stages.

    Args:
        name: a catalogue name (`"MobileNetV2"`, `"EfficientNetB0"`, ...;
            `transferkit.backbones.names()`), or a keras-hub preset: a
            local preset folder, an `hf://` handle or a preset name (needs
            `pip install 'transferkit[hub]'`). Defaults to `"MobileNetV2"`.
        weights: `"imagenet"` (downloaded once into `~/.keras/models/`), the
            path of a weights file of the backbone without its top, or
            `None` for random weights. A keras-hub preset brings its own
            weights: pass `"imagenet"` (read as "the preset's") or `None`.
            Defaults to `"imagenet"`.
        image_size: the square input size. Defaults to `None`: the size
            the weights were made for.
        options: further constructor arguments of a catalogue backbone,
            e.g. `{"alpha": 0.35}` (MobileNet's width). Defaults to `None`.

    Returns:
        A `Backbone`: its groups, size and the facts a report keeps.

    Raises:
        ValueError: for an unknown name, a size the backbone cannot take,
            or weights it cannot use, naming the value and what is accepted.
        OSError: when the weights cannot be had (offline, a missing or bad
            file), naming what was tried and the ways out.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"Expected `backbone` to be a name such as 'MobileNetV2' or a "
            f"keras-hub preset. Received: backbone={name!r}"
        )
    if is_hub_source(name):
        from transferkit.backbones import hub

        if options:
            raise ValueError(
                f"Constructor options are for catalogue backbones; a keras-hub "
                f"preset is built from its config. Received: options={options!r}"
            )
        return hub.load_hub_backbone(name, weights=weights, image_size=image_size)
    family = spec(name)
    if options:
        family = dataclasses.replace(family, options={**family.options, **options})
    size = _check_size(family, image_size)
    model = _build(family, weights, size)
    return Backbone(
        name=family.name,
        groups=_grouped(model, family, size),
        model=model,
        image_size=size,
        weights=_weights_words(weights),
        preprocessing=(
            f"{family.name} preprocess_input ({family.preprocessing!r} mode)"
            if family.preprocessing
            else "inside the backbone (pixels 0-255 in)"
        ),
    )


def _check_size(family: BackboneSpec, image_size: int | None) -> int:
    if image_size is None:
        return family.image_size
    if isinstance(image_size, bool) or not isinstance(image_size, int):
        raise ValueError(
            f"Expected `image_size` to be an integer. Received: "
            f"image_size={image_size!r}"
        )
    if image_size < family.min_size:
        raise ValueError(
            f"{family.name} builds from images of at least {family.min_size}x"
            f"{family.min_size} (its ImageNet weights were made at "
            f"{family.image_size}x{family.image_size}). Received: "
            f"image_size={image_size}"
        )
    return image_size


def _grouped(model: keras.Model, family: BackboneSpec, size: int):
    preprocess = LayerGroup(
        "preprocess",
        [ImagenetPreprocessing(family.preprocessing)]
        if family.preprocessing
        else [layers.Identity(name="pixels")],
        input_shape=(size, size, 3),
    )
    names = [f"stage_{i + 1}" for i in range(len(family.stages) + 1)]
    stages = LayerGroup.split(model, at=list(family.stages), names=names)
    return (preprocess, *stages)


def _build(family: BackboneSpec, weights, size: int) -> keras.Model:
    constructor = getattr(keras.applications, family.constructor)
    accepted = set(inspect.signature(constructor).parameters)
    unknown = sorted(set(family.options) - accepted)
    if unknown:
        raise ValueError(
            f"{family.name} takes no option {unknown[0]!r}. Its constructor's "
            f"options: {sorted(accepted - {'weights', 'include_top'})}. "
            f"Received: options={dict(family.options)!r}"
        )
    options = dict(
        input_shape=(size, size, 3), include_top=False, **dict(family.options)
    )
    if weights is None:
        return constructor(weights=None, **options)
    if weights == "imagenet":
        try:
            return constructor(weights="imagenet", **options)
        except Exception as error:
            # Keras' get_file raises a bare Exception ("URL fetch failure
            # on ...") when the download fails; anything else is no download.
            if isinstance(error, OSError) or "URL fetch failure" in str(error):
                raise OSError(_download_failed(family, error)) from error
            raise
    path = Path(os.fspath(weights))
    if not path.is_file():
        raise OSError(
            f"No weights file at {str(path)!r}. Expected `weights` to be "
            f"'imagenet', None or the path of a weights file of {family.name} "
            "without its top (e.g. one Keras downloaded into ~/.keras/models/)."
        )
    model = constructor(weights=None, **options)
    try:
        model.load_weights(str(path))
    except Exception as error:  # h5py and Keras raise many kinds.
        reason = str(error).splitlines()[0][:200] if str(error) else type(error)
        raise OSError(
            f"Could not load {str(path)!r} as the weights of {family.name} "
            f"without its top ({reason}). Ways out: a weights file saved from "
            f"keras.applications.{family.constructor}(include_top=False) at "
            f"any input size (the file Keras downloads has '_notop' in its "
            "name), weights='imagenet' with network access, or a keras-hub "
            "preset folder as the backbone."
        ) from error
    return model


def _download_failed(family: BackboneSpec, error: BaseException) -> str:
    text = str(error)
    url = re.search(r"https?://\S+?\.h5", text)
    file = url.group(0).rsplit("/", 1)[-1] if url else None
    reason = text.splitlines()[0].split(" -- ")[-1][:160] if text else repr(error)
    tried = (
        f"~/.keras/models/{file} (not there) and {url.group(0)}"
        if url
        else "Keras' cache in ~/.keras/models/ and its download"
    )
    return (
        f"Could not get the ImageNet weights of {family.name}: tried {tried} "
        f"({reason}). Ways out: run once with network access (Keras keeps "
        f"the file in ~/.keras/models/); or copy "
        f"{file or 'the weights file'} there, or pass it as "
        "weights=PATH (--weights PATH); or use a keras-hub preset folder as "
        "the backbone (backbone=FOLDER: config.json and model.safetensors); "
        "or weights=None for random weights, which a frozen backbone cannot "
        "use: only for training it whole."
    )


def _weights_words(weights) -> str:
    if weights is None:
        return "none (random)"
    if weights == "imagenet":
        return "imagenet"
    return os.fspath(weights)


def names() -> list[str]:
    """The catalogue's backbone names."""
    return list(CATALOGUE)
