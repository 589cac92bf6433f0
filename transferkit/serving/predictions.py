"""Predictions on image files and folders, loaded as in training.

`predict_files(model, ["photo.png", "new_images/"])` loads every image with
the model's `input_recipe` (the size, interpolation, channels and aspect
handling that its training data had; `transferkit.data.input_recipe`), runs the
predict step (`transferkit.engine.inference`) in batches, and gives each file's
class probabilities and predicted class name. A folder laid out by class
(`folder/cat/*.png`, `folder/dog/*.png`, as `image_dataset_from_directory`
reads it) is labelled by its sub-folders: the result then has the accuracy
and the confusion matrix too.

`load_trained_model(path)` opens a `.keras` file or a run folder (its last
checkpoint) for predictions and export, without compiling it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from transferkit.data.input_recipe import InputRecipe
from transferkit.engine.inference import Predictions, predict, predict_function
from transferkit.serving.image_check import describe_unreadable, unreadable_images
from transferkit.utils.checks import require_count

__all__ = [
    "IMAGE_EXTENSIONS",
    "FilePredictions",
    "are_paths",
    "image_files",
    "model_recipe",
    "predict_files",
]

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
"""The files `image_dataset_from_directory` reads, and so these."""


@dataclasses.dataclass(frozen=True)
class FilePredictions(Predictions):
    """Predictions on files: `outputs` (class probabilities), `labels` (the
    class id of each file's class folder, where all have one) and:"""

    files: tuple[str, ...] = ()
    """Each file's path, in the order of `outputs`."""

    class_names: tuple[str, ...] = ()
    """The model's class names (`"0"`, `"1"`... where it has none)."""

    skipped: tuple[tuple[str, str], ...] = ()
    """`(path, why)` of each file skipped as not a readable image (empty,
    not an image, damaged); not in `files`."""

    @property
    def predicted_names(self) -> list[str]:
        return [self.class_names[i] for i in self.predicted]

    @property
    def accuracy(self) -> float | None:
        """The share of files whose class folder was predicted; `None`
        without class folders."""
        if self.labels is None:
            return None
        return float(np.mean(self.predicted == self.labels))

    def confusion(self) -> dict[str, Any] | None:
        """`{"classes", "matrix"}` as in the report (`matrix[i][j]` counts
        files of class `i` predicted as `j`); `None` without class folders."""
        if self.labels is None:
            return None
        size = len(self.class_names)
        counts = np.bincount(self.labels * size + self.predicted, minlength=size**2)
        return {
            "classes": list(self.class_names),
            "matrix": counts.reshape(size, size).tolist(),
        }

    def records(self) -> list[dict[str, Any]]:
        """One JSON-ready record per file: its path, predicted class, that
        class's probability, the probability of every class, and its class
        folder's name where it has one."""
        records = []
        for index, path in enumerate(self.files):
            row = self.outputs[index]
            probabilities = zip(self.class_names, map(float, row), strict=True)
            record = {
                "file": path,
                "predicted": self.class_names[int(np.argmax(row))],
                "probability": float(np.max(row)),
                "probabilities": dict(probabilities),
            }
            if self.labels is not None:
                record["true"] = self.class_names[int(self.labels[index])]
            records.append(record)
        return records

    def to_csv(self) -> str:
        """A header line, then one line per file: file, predicted,
        probability, (true,) then one column per class."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        true = ["true"] if self.labels is not None else []
        writer.writerow(["file", "predicted", "probability", *true, *self.class_names])
        for record in self.records():
            writer.writerow(
                [record["file"], record["predicted"], f"{record['probability']:.6f}"]
                + ([record["true"]] if true else [])
                + [f"{p:.6f}" for p in record["probabilities"].values()]
            )
        return out.getvalue()

    def to_json(self) -> str:
        summary = {"predictions": self.records()}
        if self.skipped:
            summary["skipped"] = [{"file": f, "why": why} for f, why in self.skipped]
        if self.labels is not None:
            summary["accuracy"] = self.accuracy
            summary["confusion_matrix"] = self.confusion()
        return json.dumps(summary, indent=2)

    def table(self) -> str:
        """A table for people: file, predicted class, probability; with
        class folders, the accuracy below it."""
        width = max([len("file"), *map(len, self.files)])
        lines = [f"{'file':<{width}}  {'predicted':<12} probability"]
        for record in self.records():
            mark = ""
            if "true" in record and record["true"] != record["predicted"]:
                mark = f"  (true: {record['true']})"
            lines.append(
                f"{record['file']:<{width}}  {record['predicted']:<12} "
                f"{record['probability']:.3f}{mark}"
            )
        if self.labels is not None:
            right = int(np.sum(self.predicted == self.labels))
            lines.append(
                f"\nAccuracy: {self.accuracy:.2%} ({right} of {len(self.files)} "
                "files in class folders)"
            )
        lines += self.skipped_lines()
        return "\n".join(lines)

    def skipped_lines(self) -> list[str]:
        """What was skipped, for people; empty when nothing was."""
        if not self.skipped:
            return []
        lines = [f"\nSkipped {len(self.skipped)} files that are no readable image:"]
        return lines + [f"  {path}: {why}" for path, why in self.skipped]


def predict_files(
    model: keras.Model,
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    recipe: InputRecipe | None = None,
    batch_size: int = 32,
    preprocess: Callable[[tf.Tensor], tf.Tensor] | None = None,
    strict: bool = False,
) -> FilePredictions:
    """The model's predictions for image files and folders.

    Args:
        model: a trained classifier.
        paths: image files, and folders: of images, or of class folders of
            images (then the files are labelled by their class folder).
        recipe: how to load the images. Defaults to `None`: the model's
            `input_recipe`, recorded from its training data.
        batch_size: images per step. Defaults to `32`.
        preprocess: a function applied to each batch after loading, for a
            model whose training pipeline changed the images after loading
            (e.g. `keras.applications.mobilenet_v2.preprocess_input` in a
            `map`). Defaults to `None`.
        strict: refuse the whole call if any file is no readable image,
            instead of skipping it (and listing it in `skipped`). Defaults
            to `False`.

    Raises:
        ValueError: for a model without a recipe (none given), a recipe
            that does not fit the model's input, a pipeline preprocessing
            not given as `preprocess`, a path that does not exist, class
            folders that are not the model's classes, or no images at all.
    """
    batch_size = require_count(batch_size, "batch_size")
    recipe = recipe or model_recipe(model)
    _check_recipe(recipe, model, preprocess)
    files, folders = image_files(paths)
    files, folders, skipped = _readable(files, folders, strict)
    names, labels = _labels(model, folders)
    dataset = recipe.dataset(files, batch_size)
    if preprocess is not None:
        dataset = dataset.map(preprocess)
    spec = tf.TensorSpec((None, *recipe.image_size, recipe.channels), tf.float32)
    outputs = predict(model, dataset, function=predict_function(model, spec))
    return FilePredictions(
        outputs=outputs.outputs,
        labels=labels,
        files=tuple(map(str, files)),
        class_names=names,
        skipped=skipped,
    )


def _readable(files, folders, strict: bool):
    """The files that decode as images, their folders, and `(path, why)` of
    the others; raises with `strict`, or when none is readable."""
    bad = unreadable_images(files)
    if bad and (strict or len(bad) == len(files)):
        raise ValueError(
            f"{len(bad)} of {len(files)} files are no readable image: "
            f"{describe_unreadable(files, bad)}. Nothing was predicted"
            + (
                "; remove them, or pass strict=False to skip them."
                if len(bad) < len(files)
                else "."
            )
        )
    keep = [i for i in range(len(files)) if i not in bad]
    skipped = tuple((str(files[i]), why) for i, why in bad.items())
    return [files[i] for i in keep], [folders[i] for i in keep], skipped


def _labels(model, folders) -> tuple[tuple[str, ...], np.ndarray | None]:
    """The class names, and each file's class id where every file lies in a
    class folder: by the model's class names, or for a model without names,
    by the folders' sorted names as `image_dataset_from_directory` numbers
    them."""
    width = int(model.output_shape[-1])
    names = tuple(getattr(model, "class_names", None) or ())
    labelled = all(folder is not None for folder in folders)
    if not names and labelled and len(set(folders)) == width:
        names = tuple(sorted(set(folders)))
    names = names or tuple(str(i) for i in range(width))
    if not labelled:
        return names, None
    unknown = sorted(set(folders) - set(names))
    if unknown:
        raise ValueError(
            f"The class folders {unknown} are not classes of the model "
            f"({list(names)}). Name class folders by the model's classes, or "
            "pass folders of images without class folders."
        )
    return names, np.array([names.index(folder) for folder in folders])


def model_recipe(model: keras.Model) -> InputRecipe:
    """The model's `input_recipe`, or raises saying how to give one."""
    config = getattr(model, "input_recipe", None)
    if config is None:
        shape = tuple(model.input_shape[1:])
        raise ValueError(
            f"Model '{model.name}' has no input recipe: it was not trained by a "
            "TransferRun on an image dataset (image_dataset_from_directory). Pass "
            f"recipe=InputRecipe(image_size={shape[:2]}, color_mode=...) for its "
            f"input of shape {shape}."
        )
    return InputRecipe.from_config(config)


def _check_recipe(recipe: InputRecipe, model: keras.Model, preprocess) -> None:
    expected = tuple(model.input_shape[1:])
    loaded = (*recipe.image_size, recipe.channels)
    if len(expected) != 3 or any(
        e is not None and e != s for e, s in zip(expected, loaded, strict=True)
    ):
        raise ValueError(
            f"The recipe loads images of shape {loaded} ({recipe.describe()}), but "
            f"model '{model.name}' takes {expected}."
        )
    if recipe.pipeline_preprocessing and preprocess is None:
        raise ValueError(
            "The model was trained on a dataset whose pipeline changed the images "
            "after loading them (a `map`, e.g. preprocess_input); files loaded "
            "for predictions would lack that. Put the preprocessing in the model "
            "(a layer in front, e.g. keras.layers.Rescaling or a Lambda), or pass "
            "preprocess= the same function."
        )


def image_files(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
) -> tuple[list[Path], list[str | None]]:
    """Every image file under `paths`, in order, and the class folder of
    each: for a folder of class folders, the sub-folder's name; `None` for
    an image given by itself or lying directly in a given folder."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    files: list[Path] = []
    folders: list[str | None] = []
    for path in map(Path, paths):
        if path.is_file():
            files.append(path)
            folders.append(None)
        elif path.is_dir():
            for file in sorted(p for p in path.rglob("*") if _is_image(p)):
                files.append(file)
                inside = file.relative_to(path).parts
                folders.append(inside[0] if len(inside) > 1 else None)
        else:
            raise ValueError(f"No such file or folder: {str(path)!r}")
    if not files:
        raise ValueError(
            f"No images ({', '.join(IMAGE_EXTENSIONS)}) in {[str(p) for p in paths]}"
        )
    return files, folders


def are_paths(data: Any) -> bool:
    """Whether `data` names files or folders: a path, or a non-empty list or
    tuple of paths (a tuple of arrays is `(x, y)` data)."""
    if isinstance(data, bytes) or (
        isinstance(data, list | tuple) and any(isinstance(i, bytes) for i in data)
    ):
        raise TypeError(
            "Expected paths as text (str or pathlib.Path). Received bytes; "
            "decode them first, e.g. path.decode()."
        )
    if isinstance(data, str | os.PathLike):
        return True
    return (
        isinstance(data, Sequence)
        and bool(data)
        and all(isinstance(item, str | os.PathLike) for item in data)
    )


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS
