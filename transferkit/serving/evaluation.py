"""How a trained model does on labelled data: its confusion matrix and its
most confidently wrong samples (fastai's `plot_top_losses`).

`confusion_matrix(model, data, phase=...)` counts true against predicted
class, for the report (`build_report(..., confusion=...)`).

`top_losses(model, data, phase=...)` runs the predict step over labelled data
and keeps the misclassified samples with the highest loss, `-log p(true
class)`: the ones the model got wrong while most sure of itself. They are
where mislabelled images, confusable classes and preprocessing mistakes
show first. For an image folder (a path, or a dataset from
`image_dataset_from_directory`, whose files are read again in order with
the dataset's recipe) each sample is named by its file.

The report lists them beside the confusion matrix (`build_report(...,
top_losses=...)`) and draws them (`write_report(..., images=...)`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from transferkit.data.class_subset import ClassSubset
from transferkit.data.input_recipe import recipe_of_dataset
from transferkit.engine.inference import predict
from transferkit.serving.predictions import are_paths, model_recipe, predict_files

__all__ = ["TopLosses", "confusion_matrix", "evaluation", "top_losses"]


@dataclasses.dataclass(frozen=True)
class TopLosses:
    """The worst mistakes on some data, and their images."""

    phase: str
    classes: list[Any]
    rows: list[dict[str, Any]]
    """Per mistake, worst first: `index` (position in the data), `file`
    (for image files), `true`, `predicted`, `probability` (of the predicted
    class), `true_probability` and `loss`."""
    wrong: int
    total: int
    images: np.ndarray | None = None
    """The mistakes' samples, for the figure (not in the report's JSON)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "classes": self.classes,
            "wrong": self.wrong,
            "total": self.total,
            "rows": self.rows,
        }


def top_losses(
    model: keras.Model,
    data: Any,
    *,
    phase: str,
    count: int = 8,
    class_names: Sequence[str] | None = None,
    batch_size: int = 128,
) -> TopLosses:
    """The `count` misclassified samples of `data` with the highest loss.

    Args:
        model: a classifier with softmax outputs.
        data: labelled data: a `ClassSubset`, `(x, y)` arrays, a batched
            `tf.data.Dataset` of `(x, y)`, or image class folders.
        phase: the phase the list belongs to.
        count: mistakes to keep. Defaults to `8`.
        class_names: names for the classes. Defaults to the model's, else a
            `ClassSubset`'s original ids, else 0, 1, ...
        batch_size: samples per step for arrays. Defaults to `128`.
    """
    files, predictions = _labelled_predictions(model, data, batch_size)
    return _top_of(model, data, files, predictions, phase, count, class_names)


def evaluation(
    model: keras.Model,
    data: Any,
    *,
    phase: str,
    count: int = 8,
    batch_size: int = 128,
) -> tuple[TopLosses, dict[str, Any], dict[str, float]]:
    """The top losses, the confusion matrix and the accuracy and mean loss
    (`-log p(true class)`) of `model` on labelled `data`, from one pass over
    it (`top_losses` and `confusion_matrix` each make their own)."""
    files, predictions = _labelled_predictions(model, data, batch_size)
    top = _top_of(model, data, files, predictions, phase, count, None)
    truth, predicted = predictions.labels, predictions.predicted
    size = int(predictions.outputs.shape[-1])
    confusion = {
        "phase": phase,
        "classes": top.classes,
        "matrix": _counts(truth, predicted, size),
    }
    metrics = {
        "accuracy": float(np.mean(predicted == truth)),
        "loss": float(np.mean(_losses(predictions)[1])),
    }
    return top, confusion, metrics


def _counts(truth: np.ndarray, predicted: np.ndarray, size: int) -> list:
    """`counts[i][j]`: samples of class i predicted as class j."""
    matrix = np.bincount(truth * size + predicted, minlength=size * size)
    return matrix.reshape(size, size).tolist()


def _losses(predictions) -> tuple[np.ndarray, np.ndarray]:
    """Each sample's probability of its true class, and its loss
    `-log p(true class)`."""
    outputs, truth = predictions.outputs, predictions.labels
    true_probability = outputs[np.arange(len(truth)), truth]
    return true_probability, -np.log(np.clip(true_probability, 1e-12, 1.0))


def _labelled_predictions(model, data, batch_size):
    files = _by_file(model, data, batch_size)
    predictions = (
        files if files is not None else predict(model, data, batch_size=batch_size)
    )
    if predictions.labels is None:
        raise ValueError(
            "Expected labelled data for the top losses: (x, y), a dataset of "
            "(x, y), a ClassSubset, or class folders."
        )
    return files, predictions


def _top_of(model, data, files, predictions, phase, count, class_names) -> TopLosses:
    outputs, truth = predictions.outputs, predictions.labels
    true_probability, loss = _losses(predictions)
    wrong = np.flatnonzero(predictions.predicted != truth)
    worst = wrong[np.argsort(-loss[wrong], kind="stable")][:count]
    names = list(class_names or getattr(model, "class_names", None) or ())
    if not names:
        size = outputs.shape[-1]
        names = (
            list(data.classes) if isinstance(data, ClassSubset) else list(range(size))
        )
    names = [n.item() if isinstance(n, np.generic) else n for n in names]  # JSON.
    rows = []
    for index in worst:
        row = {
            "index": int(index),
            "true": names[truth[index]],
            "predicted": names[predictions.predicted[index]],
            "probability": float(outputs[index].max()),
            "true_probability": float(true_probability[index]),
            "loss": float(loss[index]),
        }
        if files is not None:
            row = {"file": files.files[index], **row}
        rows.append(row)
    return TopLosses(
        phase=phase,
        classes=names,
        rows=rows,
        wrong=len(wrong),
        total=len(truth),
        images=_images(model, data, None if files is None else files.files, worst),
    )


def _by_file(model, data, batch_size):
    """`FilePredictions` for image files, or for a dataset of them read again
    in file order with its recipe (so that each sample has its name); else
    `None`."""
    if are_paths(data):
        return predict_files(model, data, batch_size=batch_size)
    paths = getattr(data, "file_paths", None)
    if not isinstance(data, tf.data.Dataset) or not isinstance(paths, list):
        return None
    recipe = recipe_of_dataset(data)
    if recipe is None or recipe.pipeline_preprocessing:
        return None
    names = list(getattr(data, "class_names", None) or ())
    folders = [Path(path).parent.name for path in paths]
    if not names or not set(folders) <= set(names):
        return None
    predictions = predict_files(model, paths, recipe=recipe, batch_size=batch_size)
    labels = np.array([names.index(folder) for folder in folders])
    return dataclasses.replace(predictions, labels=labels)


def _images(model, data, files, worst) -> np.ndarray | None:
    """The samples at `worst`: from arrays, or loaded again from their files."""
    if not len(worst):
        return None
    if files is not None:
        if isinstance(data, tf.data.Dataset):
            recipe = recipe_of_dataset(data)
        else:
            recipe = model_recipe(model)
        return np.concatenate(list(recipe.dataset([files[i] for i in worst], 64)))
    if isinstance(data, ClassSubset):
        return np.asarray(data.x)[worst]
    if isinstance(data, tuple):
        return np.asarray(data[0])[worst]
    return None


def confusion_matrix(
    model: keras.Model,
    data: ClassSubset | tuple | Any,
    *,
    phase: str,
    batch_size: int = 128,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Counts of true against predicted class on `data`.

    Args:
        model: a classifier, one output per class.
        data: labelled data: a `ClassSubset` (classes shown by their original
            ids), an `(x, y)` tuple of arrays, or a batched `tf.data.Dataset`
            of `(x, y)`, its labels class ids or one-hot rows.
        phase: the name of the phase the matrix belongs to.
        batch_size: samples per forward pass for arrays. Defaults to `128`.
        class_names: the classes' names, for the labels. Defaults to `None`:
            the model's `class_names`, else a `ClassSubset`'s original ids,
            else 0, 1, ...

    Returns:
        `{"phase", "classes", "matrix"}`: `matrix[i][j]` counts samples of
        `classes[i]` predicted as `classes[j]`.
    """
    predictions = predict(model, data, batch_size=batch_size)
    predicted, truth = predictions.predicted, predictions.labels
    if isinstance(data, ClassSubset):
        size = data.num_classes
    elif getattr(model, "built", False) and getattr(model, "outputs", None):
        size = int(model.output_shape[-1])
    else:
        size = int(max(truth.max(), predicted.max())) + 1
    names = class_names or getattr(model, "class_names", None)
    if names is None:
        names = data.classes if isinstance(data, ClassSubset) else range(size)
    return {
        "phase": phase,
        "classes": list(names),
        "matrix": _counts(truth, predicted, size),
    }
