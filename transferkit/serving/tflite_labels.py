"""Class names inside a `.tflite`, as TFLite metadata.

A LiteRT export of a model with class names carries them the way TensorFlow
Lite Model Maker and tflite_support's `MetadataPopulator` write them, so
that LiteRT's metadata readers (the Task Library's `ImageClassifier`,
`MetadataDisplayer`, Android Studio's ML binding) find them:

- a `ModelMetadata` flatbuffer (`metadata_schema.fbs`, file identifier
  `"M001"`) in a buffer of its own, named `"TFLITE_METADATA"` in the model's
  `metadata` list; its one `SubGraphMetadata` describes the input (`"image"`)
  and the output, whose `AssociatedFile` `labels.txt` is of type
  `TENSOR_AXIS_LABELS`;
- `labels.txt` itself (one class name per line, in class-id order) in a zip
  archive (stored, not compressed) appended to the flatbuffer: the `.tflite`
  is also a zip file, and `zipfile.ZipFile(path).read("labels.txt")` reads it.

Only the few metadata tables this needs are written here, by hand, with the
`flatbuffers` package (a TensorFlow dependency; tflite_support is not one).
The model itself is read and written with TensorFlow's own TFLite schema
(`tensorflow.lite.tools.flatbuffer_utils`), which keeps every other table and
buffer as it was: the interpreter's outputs are bitwise those of the file
before.

>>> from transferkit.serving import read_tflite_labels
>>> read_tflite_labels("exported/model.tflite")  # doctest: +SKIP
['cat', 'dog', 'fish']
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np
from flatbuffers import encode, number_types, packer
from flatbuffers.table import Table

from transferkit.serving.targets import LABELS_FILE
from transferkit.version import __version__

__all__ = [
    "METADATA_IDENTIFIER",
    "METADATA_NAME",
    "embed_model_labels",
    "read_tflite_labels",
    "with_labels",
]

METADATA_NAME = "TFLITE_METADATA"
"""The name of the model's `metadata` entry that holds the metadata buffer,
as `MetadataPopulator.METADATA_FIELD_NAME`."""

METADATA_IDENTIFIER = b"M001"
"""`metadata_schema.fbs`'s `file_identifier`."""

MIN_PARSER_VERSION = "1.0.0"
"""The oldest metadata parser that reads every field written here (what
tflite_support's `GetMinimumMetadataParserVersion` computes for them)."""

_TFLITE_IDENTIFIER = b"TFL3"

# metadata_schema.fbs enums.
_TENSOR_AXIS_LABELS = 2  # AssociatedFileType
_RGB, _GRAYSCALE = 1, 2  # ColorSpaceType
_FEATURE_PROPERTIES, _IMAGE_PROPERTIES = 1, 2  # union ContentProperties
_NORMALIZATION_OPTIONS = 1  # union ProcessUnitOptions


def embed_model_labels(path: Path, model: Any, labels: Sequence[str]) -> None:
    """Rewrites the `.tflite` at `path` (an export of `model`) with `labels`
    (its class names) as TFLite metadata: the input described from the
    model's input shape and recipe."""
    recipe = getattr(model, "input_recipe", None) or {}
    channels = model.input_shape[-1]
    if recipe:
        height, width = recipe["image_size"]
        image = (
            f"An image of {height}x{width} pixels ({recipe['color_mode']}), "
            "float32, as `image_dataset_from_directory` loads it."
        )
    else:
        image = f"The model's input, of shape {tuple(model.input_shape[1:])}."
    path.write_bytes(
        with_labels(
            path.read_bytes(),
            labels,
            name=model.name,
            image=image,
            channels=channels,
            # Pixel values in [0, 255], unchanged after loading: a reader
            # feeding uint8 pixels must not scale them.
            raw_pixels=bool(recipe) and not recipe.get("pipeline_preprocessing"),
        )
    )


def with_labels(
    tflite: bytes,
    labels: Sequence[str],
    *,
    name: str = "image_classifier",
    image: str = "The model's input image",
    channels: int | None = None,
    raw_pixels: bool = False,
) -> bytes:
    """`tflite` (a model's flatbuffer) with `labels` as its TFLite metadata
    and `labels.txt` packed after it, as `MetadataPopulator` writes them.

    Args:
        tflite: the bytes of a `.tflite` file of one subgraph (without
            packed files).
        labels: the class names, in class-id order.
        name: the metadata's model name. Defaults to `"image_classifier"`.
        image: the input's description. Defaults to `"The model's input
            image"`.
        channels: the input's channels: 3 is recorded as RGB, 1 as
            grayscale. Defaults to `None`: no color space.
        raw_pixels: whether the input takes pixel values in [0, 255]
            unscaled, recorded as the normalization mean 0, std 1 that the
            Task Library needs for a float input. Defaults to `False`.

    Returns:
        The new file's bytes.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
    outputs = len(model.subgraphs[0].outputs)
    metadata = _model_metadata(name, len(labels), outputs, image, channels, raw_pixels)
    buffer = schema.BufferT(data=np.frombuffer(metadata, np.uint8))
    entries = list(model.metadata or [])
    known = [e for e in entries if (e.name or b"").decode() == METADATA_NAME]
    if known:  # Replaced in place, as MetadataPopulator does.
        model.buffers[known[0].buffer] = buffer
    else:
        model.buffers = [*(model.buffers or []), buffer]
        entries.append(
            schema.MetadataT(name=METADATA_NAME, buffer=len(model.buffers) - 1)
        )
    model.metadata = entries
    packed = flatbuffer_utils.convert_object_to_bytearray(model)
    return _append_zip(packed, LABELS_FILE, "".join(f"{x}\n" for x in labels))


def _append_zip(data: bytes, name: str, text: str) -> bytes:
    """`data` followed by a zip archive of one stored file, as
    `MetadataPopulator._populate_associated_files` writes it (`ZipFile` in
    append mode on a file that is no zip yet), dated 1980-01-01 so that one
    model gives the same bytes."""
    stream = io.BytesIO(data)
    with zipfile.ZipFile(stream, "a", compression=zipfile.ZIP_STORED) as archive:
        entry = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
        entry.external_attr = 0o644 << 16
        archive.writestr(entry, text)
    return stream.getvalue()


def _model_metadata(
    name: str,
    classes: int,
    outputs: int,
    image: str,
    channels: int | None,
    raw_pixels: bool,
) -> bytes:
    """The `ModelMetadata` flatbuffer: one subgraph, the image in, the
    scores out with `labels.txt` on the first output."""
    b = flatbuffers.Builder(1024)
    # A table's strings, vectors and sub-tables are built before it.
    labels_file = _table(
        b,
        {
            0: b.CreateString(LABELS_FILE),  # AssociatedFile.name
            1: b.CreateString("The class names, one per line, in class-id order."),
        },
        {2: _TENSOR_AXIS_LABELS},  # AssociatedFile.type
    )
    scores = _tensor(
        b,
        "scores",
        f"One score per class, {classes} in the order of labels.txt.",
        _content(b, _FEATURE_PROPERTIES, _table(b, {})),
        {6: _vector(b, [labels_file])},  # TensorMetadata.associated_files
    )
    others = [
        _tensor(b, f"output_{i}", "Another output of the model.", None, {})
        for i in range(1, outputs)
    ]
    color = {3: _RGB, 1: _GRAYSCALE}.get(channels)
    properties = _table(b, {}, {0: color} if color else {})  # .color_space
    extra = {4: _vector(b, [_normalization(b)])} if raw_pixels else {}
    picture = _tensor(  # TensorMetadata.process_units: 4
        b, "image", image, _content(b, _IMAGE_PROPERTIES, properties), extra
    )
    subgraph = _table(
        b,
        {
            2: _vector(b, [picture]),  # SubGraphMetadata.input_tensor_metadata
            3: _vector(b, [scores, *others]),  # .output_tensor_metadata
        },
    )
    root = _table(
        b,
        {
            0: b.CreateString(name),  # ModelMetadata.name
            1: b.CreateString(  # .description
                f"Classifies an image into one of {classes} classes (labels.txt); "
                f"exported by transferkit {__version__}."
            ),
            3: _vector(b, [subgraph]),  # .subgraph_metadata
            7: b.CreateString(MIN_PARSER_VERSION),  # .min_parser_version
        },
    )
    b.Finish(root, file_identifier=METADATA_IDENTIFIER)
    return bytes(b.Output())


def _tensor(b, name: str, description: str, content, more: dict) -> int:
    """A `TensorMetadata`: name 0, description 1, content 3, and `more`
    (process_units 4, associated_files 6)."""
    offsets = {0: b.CreateString(name), 1: b.CreateString(description), **more}
    if content is not None:
        offsets[3] = content
    return _table(b, offsets)


def _content(b, kind: int, properties: int) -> int:
    """A `Content` of the union `content_properties`: its type in field 0,
    the table in field 1."""
    return _table(b, {1: properties}, {0: kind})


def _normalization(b) -> int:
    """A `ProcessUnit` (union `options`: type 0, table 1) of
    `NormalizationOptions` mean [0.0] (field 0), std [1.0] (field 1)."""
    mean, std = (_floats(b, [value]) for value in (0.0, 1.0))
    return _table(b, {1: _table(b, {0: mean, 1: std})}, {0: _NORMALIZATION_OPTIONS})


def _floats(b, values: Sequence[float]) -> int:
    b.StartVector(4, len(values), 4)
    for value in reversed(values):
        b.PrependFloat32(value)
    return b.EndVector()


def _vector(b, tables: Sequence[int]) -> int:
    b.StartVector(4, len(tables), 4)
    for table in reversed(tables):
        b.PrependUOffsetTRelative(table)
    return b.EndVector()


def _table(b, offsets: dict[int, int], bytes_: dict[int, int] | None = None) -> int:
    """A table of `offsets` (strings, vectors, tables built before) and
    one-byte enums `bytes_`, each by its field id in the schema."""
    fields = [*offsets, *(bytes_ or {})]
    b.StartObject(max(fields, default=-1) + 1)
    for field, offset in offsets.items():
        b.PrependUOffsetTRelativeSlot(field, offset, 0)
    for field, value in (bytes_ or {}).items():
        b.PrependInt8Slot(field, value, 0)
    return b.EndObject()


def read_tflite_labels(path: str | os.PathLike) -> list[str]:
    """The class names packed in a `.tflite` file, as its TFLite metadata
    names them: the `TENSOR_AXIS_LABELS` file of the first output that has
    one, read from the zip archive after the model.

    Args:
        path: a `.tflite` file, e.g. one written by
            `transferkit.export(..., format="litert")` from a model with
            class names.

    Returns:
        The class names, one per line of the labels file, in class-id order.

    Raises:
        ValueError: for a file that is no TFLite model, or one without
            labels in its metadata, naming the path.
    """
    data = Path(path).read_bytes()
    metadata = _metadata_buffer(data, str(path))
    name = _labels_file_name(metadata, str(path))
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            text = archive.read(name).decode("utf-8")
    except (zipfile.BadZipFile, KeyError) as error:
        raise ValueError(
            f"The TFLite metadata of {str(path)!r} names the labels file {name!r}, "
            f"but the file packed after the model holds none ({error}). Export "
            "the model again, or pack the file with tflite_support's "
            "MetadataPopulator."
        ) from None
    return text.splitlines()


def _metadata_buffer(data: bytes, path: str) -> bytes:
    """The bytes of the model's `"TFLITE_METADATA"` buffer."""
    from tensorflow.lite.python import schema_py_generated as schema

    if data[4:8] != _TFLITE_IDENTIFIER:
        raise ValueError(
            f"Expected a TFLite model (file identifier {_TFLITE_IDENTIFIER!r}). "
            f"Received: {path!r}, whose identifier is {data[4:8]!r}"
        )
    model = schema.Model.GetRootAs(data, 0)
    for index in range(model.MetadataLength()):
        entry = model.Metadata(index)
        if (entry.Name() or b"").decode() == METADATA_NAME:
            buffer = model.Buffers(entry.Buffer())
            if buffer.Offset() > 1:  # Stored after the flatbuffer (> 2 GB).
                return data[buffer.Offset() : buffer.Offset() + buffer.Size()]
            return buffer.DataAsNumpy().tobytes()
    raise ValueError(
        f"{path!r} holds no TFLite metadata (no {METADATA_NAME!r} entry), so no "
        "labels: export it from a model with class names "
        "(`model.class_names = [...]`), or read the labels.txt beside it."
    )


def _labels_file_name(metadata: bytes, path: str) -> str:
    """The name of the first output's `TENSOR_AXIS_LABELS` file."""
    if metadata[4:8] != METADATA_IDENTIFIER:
        raise ValueError(
            f"The {METADATA_NAME} buffer of {path!r} is no TFLite metadata "
            f"(identifier {metadata[4:8]!r}, expected {METADATA_IDENTIFIER!r})."
        )
    root = Table(metadata, encode.Get(packer.uoffset, metadata, 0))
    for subgraph in _tables(root, 3):  # ModelMetadata.subgraph_metadata
        for tensor in _tables(subgraph, 3):  # .output_tensor_metadata
            for file in _tables(tensor, 6):  # TensorMetadata.associated_files
                if _int8(file, 2) == _TENSOR_AXIS_LABELS:  # AssociatedFile.type
                    return _string(file, 0)  # AssociatedFile.name
    raise ValueError(
        f"The TFLite metadata of {path!r} names no labels file (an output's "
        "associated file of type TENSOR_AXIS_LABELS)."
    )


def _tables(table: Table, field: int) -> list[Table]:
    """The tables of a vector field (none where it is absent)."""
    offset = table.Offset(4 + 2 * field)
    if not offset:
        return []
    start = table.Vector(offset)
    return [
        Table(table.Bytes, table.Indirect(start + 4 * i))
        for i in range(table.VectorLen(offset))
    ]


def _int8(table: Table, field: int) -> int:
    offset = table.Offset(4 + 2 * field)
    if not offset:
        return 0
    return table.Get(number_types.Int8Flags, table.Pos + offset)


def _string(table: Table, field: int) -> str:
    offset = table.Offset(4 + 2 * field)
    return table.String(table.Pos + offset).decode() if offset else ""
