"""The image task's data: a folder of class folders, read with Keras'
`image_dataset_from_directory`, split or paired with a test folder, and the
facts the recipe needs (class names, images per class).

Where the data comes from decides what the model is validated and tested
on:

- a `test` folder: the report's test figures are the model's on it, and
  each stage validates on it unless a split is asked for too (as the
  reference example does);
- `validation_split=F`: that fraction of the training folder, held out with
  the recipe's seed, validates each stage (and, without a test folder, is
  what the report's test figures are measured on: `tested_on` says which);
- neither: 20% held out, as if `validation_split=0.2`;
  `validation_split=0` trains on every image and validates on nothing.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

__all__ = ["DEFAULT_SPLIT", "FolderData", "image_folders"]

DEFAULT_SPLIT = 0.2
"""The share of the training folder held out for validation when neither a
test folder nor a split is given."""


@dataclasses.dataclass(frozen=True)
class FolderData:
    """The task's datasets and what it knows of them."""

    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    """What each stage validates on: the test folder, the split, or None."""
    test: tf.data.Dataset | None
    """What the report evaluates: the test folder, else the split."""
    class_names: list[str]
    counts: list[int]
    """Training images per class, in class-id order."""
    described: dict[str, Any]
    """Where each part came from, for the report."""


def check_folders(
    train: str | os.PathLike, test: str | os.PathLike | None
) -> tuple[Path, Path | None]:
    """The training and test folders, checked (each a folder of at least two
    class folders, the same classes in both) before anything is built."""
    train_dir, classes = _class_folder(train, "train")
    if test is None:
        return train_dir, None
    test_dir, tested_classes = _class_folder(test, "test")
    if tested_classes != classes:
        raise ValueError(
            f"The test folder's classes must be the training folder's. "
            f"Training ({train_dir}): {classes}; test ({test_dir}): "
            f"{tested_classes}."
        )
    return train_dir, test_dir


def image_folders(
    train: str | os.PathLike,
    *,
    test: str | os.PathLike | None,
    validation_split: float | None,
    image_size: int,
    batch_size: int,
    seed: int,
) -> FolderData:
    """Reads the folders (see the module docstring)."""
    train_dir, test_dir = check_folders(train, test)
    split = _split(validation_split, test_dir)
    options = dict(image_size=(image_size, image_size), batch_size=batch_size)
    if split:
        training, held_out = keras.utils.image_dataset_from_directory(
            train_dir,
            validation_split=split,
            subset="both",
            seed=seed,
            verbose=False,
            **options,
        )
    else:
        training = keras.utils.image_dataset_from_directory(
            train_dir, seed=seed, verbose=False, **options
        )
        held_out = None
    names = list(training.class_names)
    tested = None
    if test_dir is not None:
        tested = keras.utils.image_dataset_from_directory(
            test_dir, shuffle=False, class_names=names, verbose=False, **options
        )
    # Keras reads images in nested folders too: a class is the first part.
    folders = Counter(
        Path(path).relative_to(train_dir).parts[0] for path in training.file_paths
    )
    return FolderData(
        train=training,
        validation=held_out if split else tested,
        test=tested if tested is not None else held_out,
        class_names=names,
        counts=[folders[name] for name in names],
        described={
            "train": str(train_dir),
            "test": None if test_dir is None else str(test_dir),
            "tested_on": (
                "the test folder"
                if test_dir is not None
                else ("the validation split" if split else None)
            ),
            "validation": (
                f"{split:.0%} of {train_dir}, held out (seed {seed})"
                if split
                else (str(test_dir) if test_dir is not None else None)
            ),
            "train_images": len(training.file_paths),
        },
    )


def _class_folder(path: str | os.PathLike, argument: str) -> tuple[Path, list]:
    folder = Path(os.fspath(path)).resolve()
    if not folder.is_dir():
        raise ValueError(
            f"Expected `{argument}` to be a folder with one subfolder of images "
            f"per class. No folder at {str(folder)!r}."
        )
    classes = sorted(  # As Keras lists them: hidden folders are no class.
        p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    if len(classes) < 2:
        raise ValueError(
            f"Expected `{argument}` ({str(folder)!r}) to hold one subfolder of "
            f"images per class, at least 2. Found: {classes}"
        )
    return folder, classes


def _split(validation_split: float | None, test_dir: Path | None) -> float:
    if validation_split is None:
        return 0.0 if test_dir is not None else DEFAULT_SPLIT
    if (
        isinstance(validation_split, bool)
        or not isinstance(validation_split, (int, float))
        or not 0 <= validation_split < 1
    ):
        raise ValueError(
            "Expected `validation_split` to be a number in [0, 1). Received: "
            f"validation_split={validation_split!r}"
        )
    return float(validation_split)
