"""How a model's images were loaded in training, to load new ones the same way.

`keras.utils.image_dataset_from_directory` decodes each file, resizes it to
`image_size` with `interpolation` (bilinear by default; `crop_to_aspect_ratio`
or `pad_to_aspect_ratio` keep its aspect), with `color_mode` channels, as
float32 in [0, 255]. A model trained on such a dataset answers best for new
images loaded the same way: `keras.utils.load_img` resizes with "nearest" by
default, and a preprocessing function mapped over the dataset
(`preprocess_input`) is not in the model.

`recipe_of_dataset` reads the recipe from the dataset itself: the image
size and channels from its element spec, the interpolation, crop and pad
from the operations of its serialized pipeline, and whether a `map` after
loading changes the images. A `TransferRun` records it with the model
(`GroupedSequential.input_recipe`, saved in the `.keras` file), and
predictions on files (`transferkit.serving.predictions`) and exports use it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf

__all__ = ["COLOR_MODES", "InputRecipe", "recipe_of_dataset"]

COLOR_MODES = {1: "grayscale", 3: "rgb", 4: "rgba"}
"""`color_mode` of `image_dataset_from_directory` by channel count."""

_RESIZE_OPS = {
    "ResizeBilinear": "bilinear",
    "ResizeNearestNeighbor": "nearest",
    "ResizeBicubic": "bicubic",
    "ResizeArea": "area",
}
"""The interpolation of each resize operation; "ScaleAndTranslate" (the
other methods, and antialiasing) says its own in `kernel_type`."""


@dataclasses.dataclass(frozen=True)
class InputRecipe:
    """How images are loaded for a model, as `image_dataset_from_directory`
    loads them."""

    image_size: tuple[int, int]
    """`(height, width)` every image is resized to."""

    color_mode: str = "rgb"
    """`"rgb"`, `"grayscale"` or `"rgba"`."""

    interpolation: str = "bilinear"
    """The resize method, one of `tf.image.resize`'s."""

    crop_to_aspect_ratio: bool = False
    """Whether the largest centred crop of the target aspect is resized."""

    pad_to_aspect_ratio: bool = False
    """Whether the image is padded with zeros to the target aspect first."""

    pipeline_preprocessing: bool = False
    """Whether the training pipeline changed the images after loading (a
    `map`, e.g. `preprocess_input`), which files loaded by this recipe
    would lack."""

    def __post_init__(self):
        if self.color_mode not in COLOR_MODES.values():
            raise ValueError(
                "Expected `color_mode` to be one of "
                f"{list(COLOR_MODES.values())}. Received: {self.color_mode!r}"
            )
        size = tuple(self.image_size)
        if len(size) != 2 or not all(isinstance(d, int) and d > 0 for d in size):
            raise ValueError(
                "Expected `image_size` to be (height, width), two ints > 0. "
                f"Received: image_size={self.image_size!r}"
            )
        object.__setattr__(self, "image_size", size)

    @property
    def channels(self) -> int:
        return {mode: n for n, mode in COLOR_MODES.items()}[self.color_mode]

    def to_config(self) -> dict[str, Any]:
        """JSON-ready fields, for a model's config and files beside an export."""
        config = dataclasses.asdict(self)
        config["image_size"] = list(self.image_size)
        return config

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> InputRecipe:
        return cls(**{**config, "image_size": tuple(config["image_size"])})

    def describe(self) -> str:
        """E.g. `"96x96 rgb, bilinear"`."""
        height, width = self.image_size
        aspect = (
            ", cropped to aspect"
            if self.crop_to_aspect_ratio
            else ", padded to aspect"
            if self.pad_to_aspect_ratio
            else ""
        )
        return f"{height}x{width} {self.color_mode}, {self.interpolation}{aspect}"

    def load(self, path: tf.Tensor) -> tf.Tensor:
        """The image at `path`, a float32 `(height, width, channels)` tensor,
        as `image_dataset_from_directory` loads it."""
        image = tf.io.read_file(path)
        image = tf.image.decode_image(
            image, channels=self.channels, expand_animations=False
        )
        if self.crop_to_aspect_ratio:
            image = keras.preprocessing.image.smart_resize(
                image, self.image_size, interpolation=self.interpolation
            )
        elif self.pad_to_aspect_ratio:
            image = tf.image.resize_with_pad(
                image, *self.image_size, method=self.interpolation
            )
        else:
            image = tf.image.resize(image, self.image_size, method=self.interpolation)
        image.set_shape((*self.image_size, self.channels))
        return image

    def dataset(self, paths: Sequence[str], batch_size: int) -> tf.data.Dataset:
        """Batches of the images at `paths`, in order."""
        return (
            tf.data.Dataset.from_tensor_slices(list(map(str, paths)))
            .map(self.load, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size)
            .prefetch(tf.data.AUTOTUNE)
        )


def recipe_of_dataset(dataset: tf.data.Dataset) -> InputRecipe | None:
    """The recipe a dataset of image files was loaded with, or `None` for a
    dataset that does not read and decode images (arrays, generators)."""
    spec = dataset.element_spec
    images = spec[0] if isinstance(spec, tuple) else spec
    shape = getattr(images, "shape", None)
    if shape is None or shape.rank != 4 or shape[-1] not in COLOR_MODES:
        return None
    if not reads_image_files(dataset):
        return None  # Its graph may hold arrays: not serialized for nothing.
    functions = _functions(dataset)
    loader = next((f for f in functions if _ops(f).get("ReadFile")), None)
    if loader is None or not _ops(loader).get("DecodeImage"):
        return None
    size = (int(shape[1]), int(shape[2]))
    interpolation = _interpolation(loader)
    ops = _ops(loader)
    pad = bool(ops.get("Pad"))
    slices = ops.get("StridedSlice", 0) - _resize_slices(interpolation, size)
    return InputRecipe(
        image_size=size,
        color_mode=COLOR_MODES[int(shape[-1])],
        interpolation=interpolation,
        crop_to_aspect_ratio=not pad and slices > 0,
        pad_to_aspect_ratio=pad,
        pipeline_preprocessing=any(
            _changes_images(f, isinstance(spec, tuple))
            for f in functions
            if f is not loader
        ),
    )


def reads_image_files(dataset: tf.data.Dataset) -> bool:
    """Whether `dataset` is, or is made from, a dataset of image files that
    `image_dataset_from_directory` returned (which carries `file_paths`),
    walking its inputs without running or serializing anything."""
    pending, seen = [dataset], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(getattr(current, "file_paths", None), list):
            return True
        pending.extend(current._inputs())
    return False


def _functions(dataset: tf.data.Dataset) -> list:
    graph = tf.compat.v1.GraphDef()
    graph.ParseFromString(dataset._as_serialized_graph().numpy())
    return list(graph.library.function)


def _ops(function) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in function.node_def:
        counts[node.op] = counts.get(node.op, 0) + 1
    return counts


def _interpolation(loader) -> str:
    for node in loader.node_def:
        if node.op in _RESIZE_OPS:
            return _RESIZE_OPS[node.op]
        if node.op == "ScaleAndTranslate":
            return node.attr["kernel_type"].s.decode()
    return "bilinear"


def _resize_slices(interpolation: str, size: tuple[int, int]) -> int:
    """The `StridedSlice` operations of `tf.image.resize` itself with this
    method, so that those a crop adds can be told apart."""
    resize = tf.function(
        lambda image: tf.image.resize(image, size, method=interpolation)
    ).get_concrete_function(tf.TensorSpec((None, None, 3), tf.uint8))
    return sum(op.type == "StridedSlice" for op in resize.graph.get_operations())


def _changes_images(function, elements_are_tuples: bool) -> bool:
    """Whether a `map` function of the pipeline returns other images than it
    was given (a function of labels alone, which takes one argument where
    the elements are tuples, does not)."""
    inputs = [arg.name for arg in function.signature.input_arg]
    if not inputs or not function.signature.output_arg:
        return False
    if elements_are_tuples and len(inputs) == 1:
        return False
    nodes = {node.name: node for node in function.node_def}
    tensor = function.ret[function.signature.output_arg[0].name]
    while True:
        name = tensor.split(":")[0]
        if name == inputs[0]:
            return False
        node = nodes.get(name)
        if node is None or node.op != "Identity":
            return True
        tensor = node.input[0]
