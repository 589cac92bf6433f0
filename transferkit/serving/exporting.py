"""Export a trained model for serving, with a parity check.

`transferkit.export(model, path, format=...)` goes through Keras' own
`model.export` (`"tf_saved_model"`, `"litert"`, `"onnx"` where `tf2onnx` is
installed: the `onnx` extra), with one difference that matters for a model
trained with augmentation layers: Keras traces the model as called, and an
augmentation layer called without `training` augments, so the exported
`serve` would flip and rotate every request. transferkit exports a thin
model around it whose `call` is `model(x, training=False)`: augmentation
off, BatchNormalization and Dropout in inference mode, the same function as
the predict step (`transferkit.engine.inference`).

Beside the artifact it writes what a server needs to use it
(`metadata_path`): the class names, the input recipe (image size,
interpolation, channels; `transferkit.data.input_recipe`), the input shape and
the parity check. The check runs the exported artifact, loaded back from
disk, on samples (from the run's data, else random images in [0, 255]) and
compares its outputs with the model's; the largest difference is printed
and recorded, and a float32 export that differs by more than `tolerance`
is refused (`ExportParityError`) and removed.

For LiteRT, `quantize="dynamic"` stores weights in int8 (dynamic range
quantization); `quantize="int8"` quantizes weights and activations with a
representative dataset drawn from the given data (inputs and outputs stay
float32). Given labelled `test_data`, the accuracy before and after is
measured and recorded.

A model with class names gets them in `labels.txt` (one per line, in
class-id order) inside a SavedModel folder or beside a file export, and a
LiteRT export also carries them inside the `.tflite` as standard TFLite
metadata (`transferkit.serving.tflite_labels`; read them back with
`read_tflite_labels`). The parity check runs on that final file.

Nothing is half-written: the artifact is written beside the target and
moved into place once checked; an existing target is refused unless
`overwrite=True` (`transferkit.serving.targets` says what that replaces,
`labels.txt` included).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from transferkit.engine.inference import predict
from transferkit.errors import ExportParityError
from transferkit.serving.image_check import describe_unreadable, unreadable_images
from transferkit.serving.predictions import are_paths, image_files, model_recipe
from transferkit.serving.targets import (
    check_labels,
    check_target,
    labels_path,
    land,
    remove,
    staging_path,
    write_labels,
)
from transferkit.serving.tflite_labels import embed_model_labels
from transferkit.utils.io import atomic_write
from transferkit.version import __version__

__all__ = [
    "FORMATS",
    "QUANTIZATIONS",
    "ExportResult",
    "export",
    "load_exported",
    "metadata_path",
]

FORMATS = ("tf_saved_model", "litert", "onnx")
"""The formats `export` takes: those of Keras' `model.export` on TensorFlow
that run on a CPU server or a phone."""

QUANTIZATIONS = (None, "dynamic", "int8")
"""What `export(quantize=...)` takes (for `"litert"` only)."""

_SUFFIXES = {"litert": ".tflite", "onnx": ".onnx"}
_RANDOM_SAMPLES = 16
_REPRESENTATIVE_SAMPLES = 100


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What `export` wrote and measured."""

    path: str
    format: str
    quantization: str | None
    metadata: str
    """The JSON file beside the artifact: class names, input recipe,
    parity, accuracy."""
    parity_max_difference: float
    """Largest absolute difference between the artifact's outputs and the
    model's, on `parity_samples` samples."""
    parity_samples: int
    parity_data: str
    """`"the given samples"` or `"random images in [0, 255]"`."""
    accuracy: dict[str, float] | None
    """`{"model", "exported"}` on the test data, when given."""
    seconds: float
    labels: str | None = None
    """The `labels.txt` of the class names (inside a SavedModel folder,
    beside a file; a `.tflite` also holds them), or `None` for a model
    without class names."""

    def describe(self) -> str:
        """The summary that `export(verbose=True)` prints, as text; prints
        nothing itself."""
        lines = [
            f"Exported {self.format}"
            + (f" ({self.quantization} quantization)" if self.quantization else "")
            + f" to {self.path!r} in {self.seconds:.1f} s",
            f"Parity: largest difference {self.parity_max_difference:.3g} from "
            f"the model on {self.parity_samples} samples ({self.parity_data})",
        ]
        if self.accuracy:
            lines.append(
                f"Accuracy on the test data: model {self.accuracy['model']:.2%}, "
                f"exported {self.accuracy['exported']:.2%}"
            )
        lines.append(f"Metadata: {self.metadata}")
        if self.labels:
            inside = " (and inside the .tflite)" if self.format == "litert" else ""
            lines.append(f"Labels: {self.labels}{inside}")
        return "\n".join(lines)


class _Inference(keras.Model):
    """`model` called in inference mode: what the export traces."""

    def __init__(self, model: keras.Model):
        super().__init__(name=f"{model.name}_serving")
        self.served = model

    def call(self, inputs):
        return self.served(inputs, training=False)


def export(
    model: keras.Model,
    path: str | os.PathLike,
    *,
    format: str = "tf_saved_model",
    quantize: str | None = None,
    samples: Any = None,
    test_data: Any = None,
    tolerance: float = 1e-5,
    overwrite: bool = False,
    verbose: bool = True,
) -> ExportResult:
    """Exports `model` for inference and checks the artifact against it.

    Args:
        model: the trained model (e.g. `run.model`, or one loaded with
            `transferkit.serving.predictions.load_trained_model`).
        path: the artifact: a folder for `"tf_saved_model"`, a file for
            `"litert"` (`.tflite`) and `"onnx"` (`.onnx`).
        format: one of `FORMATS`. Defaults to `"tf_saved_model"`.
        quantize: `None`, `"dynamic"` or `"int8"` (`"litert"` only).
        samples: data for the parity check and the int8 representative
            dataset: arrays, `(x, y)`, a `ClassSubset`, a batched
            `tf.data.Dataset`, or image files and folders (loaded by the
            model's input recipe). Defaults to `None`: random images.
        test_data: labelled data (the same forms; for files, class folders)
            on which the accuracy of the model and of the artifact are
            measured. Defaults to `None`.
        tolerance: the largest difference a float32 export may have.
            Defaults to `1e-5`.
        overwrite: replace an existing `path` (an earlier export only), and
            a `labels.txt` of other class names beside a file export.
            Defaults to `False`.
        verbose: print what was written and measured, once (the text of
            `result.describe()`). Defaults to `True`.

    Raises:
        ValueError: for an unknown format or quantization, a quantization
            of another format than LiteRT, int8 without `samples`, an
            existing `path`, or a `labels.txt` of other class names.
        ImportError: for `"onnx"` without `tf2onnx`, naming the extra.
        ExportParityError: when a float32 artifact differs by more than
            `tolerance`; nothing is left at `path`.
    """
    started = time.perf_counter()
    _check_one_input(model)
    target = _check_arguments(path, format, quantize, overwrite, samples)
    labels = _class_names(model)
    check_labels(target, format, labels, overwrite)
    _check_tolerance(tolerance)
    test = _test_arrays(model, test_data)
    x, origin = _parity_samples(model, samples)
    partial = staging_path(target)
    try:
        _write(model, partial, format, quantize, x)
        run = load_exported(partial, format)
        difference = float(np.max(np.abs(run(x) - predict(model, x).outputs)))
        if quantize is None and not difference <= tolerance:
            _refuse_parity(format, difference, tolerance, len(x), origin, target)
        accuracy = None if test is None else _accuracy(model, run, *test)
        del run
        result = ExportResult(
            path=str(target),
            format=format,
            quantization=quantize,
            metadata=str(metadata_path(target, format)),
            parity_max_difference=difference,
            parity_samples=len(x),
            parity_data=origin,
            accuracy=accuracy,
            seconds=time.perf_counter() - started,
            labels=str(labels_path(target, format)) if labels else None,
        )
        _land(model, result, partial, target, overwrite)
    finally:
        remove(partial)
    if verbose:
        print(result.describe(), flush=True)
    return result


def _refuse_parity(format, difference, tolerance, samples, origin, target) -> None:
    raise ExportParityError(
        f"The {format} export's outputs differ from the model's by up to "
        f"{difference:.3g} on {samples} samples ({origin}), more than "
        f"tolerance={tolerance:g}; nothing was written to {str(target)!r}."
    )


def _land(
    model, result: ExportResult, partial: Path, target: Path, overwrite: bool
) -> None:
    """Writes the labels and the metadata (inside a SavedModel folder before
    it moves; beside a file before it lands), then moves the artifact into
    place."""
    folder = partial if result.format == "tf_saved_model" else target
    if result.labels:
        labels = _class_names(model)
        write_labels(labels_path(folder, result.format), labels, overwrite)
    _write_metadata(model, result, metadata_path(folder, result.format))
    land(partial, target, result.format, overwrite)


def _class_names(model) -> list[str]:
    return [str(name) for name in getattr(model, "class_names", None) or ()]


def _check_arguments(path, format, quantize, overwrite, samples) -> Path:
    if format not in FORMATS:
        raise ValueError(
            f"Expected `format` to be one of {list(FORMATS)}. Received: {format!r}"
        )
    if quantize not in QUANTIZATIONS:
        raise ValueError(
            f"Expected `quantize` to be one of {list(QUANTIZATIONS)}. "
            f"Received: {quantize!r}"
        )
    if quantize is not None and format != "litert":
        raise ValueError(
            f"Post-training quantization is for format='litert'. Received: "
            f"format={format!r}, quantize={quantize!r}"
        )
    if quantize == "int8" and samples is None:
        raise ValueError(
            "quantize='int8' calibrates the activations on representative data: "
            "pass samples= from the run's data (e.g. its test folder or arrays); "
            "random images would calibrate it for noise."
        )
    if format == "onnx":
        try:
            import tf2onnx  # noqa: F401
        except ImportError:
            raise ImportError(
                "format='onnx' needs tf2onnx (and onnxruntime for the parity "
                "check): pip install 'transferkit[onnx]'"
            ) from None
    target = Path(path)
    suffix = _SUFFIXES.get(format)
    if suffix is not None and target.suffix != suffix:
        raise ValueError(
            f"A {format} export is one file ending in {suffix!r}. Received: "
            f"path={str(target)!r}"
        )
    check_target(target, format, overwrite)
    return target


def _write(model, path: Path, format: str, quantize, x: np.ndarray) -> None:
    serving = _Inference(model)
    serving(x[:1])  # Built, as Keras' export needs.
    signature = [tf.TensorSpec((None, *x.shape[1:]), tf.float32, name="inputs")]
    options: dict[str, Any] = {}
    if quantize is not None:
        options["optimizations"] = [tf.lite.Optimize.DEFAULT]
    if quantize == "int8":
        rows = x[:_REPRESENTATIVE_SAMPLES]
        options["representative_dataset"] = lambda: ([row[None]] for row in rows)
        options["target_spec"] = {
            "supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        }
    try:
        with _quiet():
            serving.export(
                str(path),
                format=format,
                input_signature=signature,
                verbose=False,
                **options,
            )
        labels = _class_names(model)
        if format == "litert" and labels:  # Before the parity check reads it.
            embed_model_labels(path, model, labels)
    except (OSError, tf.errors.ResourceExhaustedError, tf.errors.UnknownError) as error:
        # A full disk surfaces as TensorFlow's ResourceExhaustedError.
        reason = str(getattr(error, "message", error)).strip().splitlines()[0]
        raise OSError(
            f"Could not write the {format} export in {str(path.parent)!r} "
            f"({reason}); nothing was written, and what stood at the target is "
            "as it was. Free space there, or export elsewhere."
        ) from error


def load_exported(path: str | os.PathLike, format: str) -> Callable:
    """A function from a float32 batch to the exported artifact's outputs
    (NumPy), read back from `path`: `tf.saved_model.load` for a SavedModel,
    the LiteRT interpreter (`ai_edge_litert`, else TensorFlow's), an
    `onnxruntime` session."""
    path = str(path)
    if format == "tf_saved_model":
        loaded = tf.saved_model.load(path)
        return lambda x: np.asarray(loaded.serve(tf.constant(x)))
    if format == "litert":
        return _litert_runner(path)
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: np.asarray(x, "float32")})[0]


def _litert_runner(path: str) -> Callable:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # TensorFlow's own, deprecated in favour of it.
        Interpreter = tf.lite.Interpreter
    with _quiet():
        interpreter = Interpreter(model_path=path)
    entry = interpreter.get_input_details()[0]["index"]
    exit_ = interpreter.get_output_details()[0]["index"]

    def run(x):
        outputs = []
        for row in np.asarray(x, "float32"):  # One at a time: any batch size.
            interpreter.resize_tensor_input(entry, (1, *row.shape))
            interpreter.allocate_tensors()
            interpreter.set_tensor(entry, row[None])
            interpreter.invoke()
            outputs.append(interpreter.get_tensor(exit_)[0])
        return np.stack(outputs)

    return run


@contextlib.contextmanager
def _quiet():
    """Hides the converters' deprecation and NumPy warnings, which concern
    their own code."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


def _parity_samples(model, samples) -> tuple[np.ndarray, str]:
    """Float32 samples for the check: from `samples`, else random images."""
    if samples is None:
        shape = tuple(model.input_shape[1:])
        if None in shape:
            shape = tuple(model_recipe(model).image_size) + shape[-1:]
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 255, (_RANDOM_SAMPLES, *shape)).astype("float32")
        return x, "random images in [0, 255]"
    x = _arrays(model, samples, "samples")[0].astype("float32")
    _check_samples(model, x)
    return x, "the given samples"


def _check_one_input(model: keras.Model) -> None:
    """Raises for a model of several inputs (a dict of token ids and masks,
    say): export traces one batch of images."""
    try:
        inputs = keras.tree.flatten(model.inputs) if model.inputs else []
    except (AttributeError, ValueError):  # A subclassed model never called.
        return
    if len(inputs) > 1:
        names = [getattr(x, "name", "?") for x in inputs]
        raise ValueError(
            f"export serves a model of one input; model '{model.name}' takes "
            f"{len(inputs)} ({names}). Nothing was written. Export it with Keras' "
            "own model.export(path, format=...), whose input signature follows "
            "the model's."
        )


def _check_tolerance(tolerance: Any) -> None:
    if isinstance(tolerance, bool) or not isinstance(
        tolerance, int | float | np.number
    ):
        raise TypeError(
            "Expected `tolerance` to be a number, the largest difference a "
            f"float32 export may have, e.g. 1e-5. Received: tolerance={tolerance!r}"
        )
    if np.isnan(tolerance):
        raise ValueError(f"Expected `tolerance` to be a number. Received: {tolerance}")


def _test_arrays(model: keras.Model, test_data: Any) -> tuple | None:
    """`(x, y)` of `test_data`, loaded before any export work; raises for
    data without labels, or image files that are not in class folders named
    as the model's classes."""
    if test_data is None:
        return None
    if are_paths(test_data):
        _check_test_folders(model, image_files(test_data)[1])
    x, y = _arrays(model, test_data, "test_data")
    if y is None:
        raise ValueError(
            "Expected labelled `test_data` (x, y), a dataset of (x, y), or class "
            "folders, for the accuracy before and after export."
        )
    return x, y


def _check_test_folders(model: keras.Model, folders: list) -> None:
    """Raises unless every test image lies in a class folder named as one
    of the model's classes."""
    names = list(getattr(model, "class_names", None) or ())
    unknown = sorted({folder for folder in folders if folder is not None} - set(names))
    loose = sum(folder is None for folder in folders)
    if unknown or loose:
        found = (
            f"the folders {unknown} are not among them"
            if unknown
            else f"{loose} images lie outside class folders"
        )
        raise ValueError(
            "Expected `test_data` as class folders named as the model's classes "
            f"{names or '(the model has no class names)'}, for the accuracy "
            f"before and after export; {found}. Nothing was written."
        )


def _check_samples(model: keras.Model, x: np.ndarray) -> None:
    """Raises, before any export work, for no samples or samples of another
    shape than the model takes (an artifact traced on them would take only
    that shape)."""
    if len(x) == 0:
        raise ValueError(
            "Expected at least one sample in `samples` for the parity check. "
            "Received: none. Pass the run's data, or leave `samples` out for "
            "random images."
        )
    expected = tuple(model.input_shape[1:])
    if len(expected) != len(x.shape[1:]) or any(
        want is not None and want != got
        for want, got in zip(expected, x.shape[1:], strict=False)
    ):
        raise ValueError(
            f"The samples have shape {tuple(x.shape[1:])}, but the model takes "
            f"{expected}; nothing was written. Pass samples of the model's input "
            "size (image files are loaded by its recipe)."
        )


def _readable_files(data: Any, argument: str) -> tuple[list[Path], list]:
    """The image files of `data` and their class folders; raises, naming
    them, if any is no readable image."""
    files, folders = image_files(data)
    bad = unreadable_images(files)
    if bad:
        raise ValueError(
            f"{len(bad)} of {len(files)} files of `{argument}` are no readable "
            f"image: {describe_unreadable(files, bad)}. Nothing was written; "
            "remove them from the folder."
        )
    return files, folders


def _arrays(model, data, argument: str) -> tuple[np.ndarray, np.ndarray | None]:
    """`(x, class ids or None)` of data in any form `export` takes."""
    from transferkit.data.class_subset import ClassSubset

    if are_paths(data):
        recipe = model_recipe(model)
        files, folders = _readable_files(data, argument)
        x = np.concatenate([b.numpy() for b in recipe.dataset(files, 64)])
        names = list(getattr(model, "class_names", None) or ())
        if all(f is not None for f in folders) and set(folders) <= set(names):
            return x, np.array([names.index(f) for f in folders])
        return x, None
    if isinstance(data, ClassSubset):
        return np.asarray(data.x), np.asarray(data.y)
    if isinstance(data, tuple):
        return np.asarray(data[0]), np.asarray(data[1])
    if isinstance(data, tf.data.Dataset):
        batches = list(data)
        if isinstance(batches[0], tuple):
            x = np.concatenate([np.asarray(b[0]) for b in batches])
            return x, np.concatenate([np.asarray(b[1]) for b in batches])
        return np.concatenate([np.asarray(b) for b in batches]), None
    return np.asarray(data), None


def _accuracy(model, run, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from transferkit.data.sample_weights import class_ids

    truth = class_ids(y)
    ours = predict(model, x).predicted
    theirs = np.argmax(run(x.astype("float32")), axis=-1)
    return {
        "model": float(np.mean(ours == truth)),
        "exported": float(np.mean(theirs == truth)),
        "samples": len(truth),
    }


def metadata_path(path: str | os.PathLike, format: str) -> Path:
    """Where `export` writes its metadata: `transferkit.json` inside a
    SavedModel folder, `<file>.json` beside a file."""
    path = Path(path)
    if format == "tf_saved_model":
        return path / "transferkit.json"
    return path.with_name(f"{path.name}.json")


def _write_metadata(model, result: ExportResult, where: Path) -> None:

    recipe = getattr(model, "input_recipe", None)
    metadata = {
        "transferkit_version": __version__,
        "format": result.format,
        "quantization": result.quantization,
        "input_shape": list(model.input_shape[1:]),
        "class_names": list(getattr(model, "class_names", None) or ()) or None,
        "input_recipe": dict(recipe) if recipe else None,
        "serving": "model(x, training=False): augmentation off",
        "parity": {
            "max_difference": result.parity_max_difference,
            "samples": result.parity_samples,
            "data": result.parity_data,
        },
        "accuracy": result.accuracy,
        # Beside this file; for LiteRT also in the .tflite's TFLite metadata.
        "labels": Path(result.labels).name if result.labels else None,
        "labels_in_artifact": bool(result.labels) and result.format == "litert",
    }
    atomic_write(where, json.dumps(metadata, indent=2) + "\n")
