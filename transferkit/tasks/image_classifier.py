"""The job most users come for, in one call: a folder of images to a
fine-tuned, reported model, ready to predict on files and to export.

    >>> import transferkit
    >>> task = transferkit.train_image_classifier(          # doctest: +SKIP
    ...     "photos/train", test="photos/test", out="runs/photos")
    >>> task.predict(["loose/"]).table()                    # doctest: +SKIP
    >>> task.export("photos.tflite")                        # doctest: +SKIP

`ImageClassifierTask` builds the model (augmentation, the backbone's
preprocessing and stages, a new head sized from the folder's classes), the
`TransferRun` that trains it and the datasets; `fit()` runs the recipe
(`ImageRecipe`) and writes the report. Everything underneath stays
reachable: `task.run` (the `TransferRun`), `task.model` and its groups,
`task.backbone`, `task.data`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import keras
from keras import layers

from transferkit.backbones.backbone import Backbone
from transferkit.backbones.building import load_backbone
from transferkit.groups.layer_group import LayerGroup
from transferkit.phases.speed import Speed
from transferkit.records.report import format_summary
from transferkit.run.transfer_run import TransferRun
from transferkit.run_folder.state import recorded_spec
from transferkit.serving.exporting import ExportResult, export
from transferkit.serving.predictions import FilePredictions, predict_files
from transferkit.tasks.folders import (
    DEFAULT_SPLIT,
    FolderData,
    check_folders,
    image_folders,
)
from transferkit.tasks.recipe import ImageRecipe, augmentation_layer
from transferkit.tasks.stage_search import searched_top

__all__ = ["ImageClassifierTask", "train_image_classifier"]

IMBALANCE = 1.5
"""With `class_weights="auto"`, classes are weighed (balanced) when the
largest has at least this many times the images of the smallest."""


class ImageClassifierTask:
    """A folder of images, a pretrained backbone and a recipe, ready to fit.

    Args:
        train: a folder with one subfolder of images per class.
        out: the run folder: checkpoints, `report.json`, `report.md` and the
            figures; the same call again resumes an interrupted run, or
            restores a finished one without training. Defaults to `None`
            (nothing kept).
        backbone: a catalogue name (`transferkit.backbones.names()`) or a
            keras-hub preset (a folder, an `hf://` handle, a preset name).
            Defaults to `"MobileNetV2"`.
        weights: `"imagenet"`, or a weights file of the backbone without its
            top. `None` (random weights) is refused: a head on a frozen
            random backbone learns next to nothing. Defaults to
            `"imagenet"`.
        test: a folder of the same class folders to test on; each stage
            validates on it. Defaults to `None`.
        validation_split: the share of `train` held out to validate on.
            Defaults to `None`: 0.2 without `test`, 0 with it.
        image_size: the square size images are resized to. Defaults to
            `None`: the size the backbone's weights were made for.
        backbone_options: further arguments of the backbone's constructor,
            e.g. `{"alpha": 0.35}` for a narrower MobileNet. Defaults to
            `None`.
        recipe: how to train. Defaults to `None`: `ImageRecipe()`.
        verbose: Keras' progress output, and the summary after `fit` unless
            0. Defaults to `"auto"`.
        notes: more settings for the report (the `train` command's options).
            Defaults to `None`.
        **overrides: fields of `ImageRecipe` to change, e.g. `epochs=3`.
    """

    def __init__(
        self,
        train: str | os.PathLike,
        *,
        out: str | os.PathLike | None = None,
        backbone: str = "MobileNetV2",
        weights: str | os.PathLike | None = "imagenet",
        test: str | os.PathLike | None = None,
        validation_split: float | None = None,
        image_size: int | None = None,
        backbone_options: Mapping[str, Any] | None = None,
        recipe: ImageRecipe | None = None,
        verbose: str | int = "auto",
        notes: Mapping[str, Any] | None = None,
        **overrides: Any,
    ):
        self.recipe = ImageRecipe.of(recipe, overrides)
        check_folders(train, test)  # Before any download.
        if weights is None or weights == "none":
            raise ValueError(
                "The image task trains a head on a frozen pretrained backbone; "
                "with weights=None the backbone is random and the head learns "
                "next to nothing, about chance. Pass weights='imagenet', the "
                "path of a weights file, or a keras-hub preset folder as the "
                "backbone. Received: weights=None"
            )
        self.backbone: Backbone = load_backbone(
            backbone, weights=weights, image_size=image_size, options=backbone_options
        )
        self.data: FolderData = image_folders(
            train,
            test=test,
            validation_split=_split(validation_split, test, self.recipe),
            image_size=self.backbone.image_size,
            batch_size=self.recipe.batch_size,
            seed=self.recipe.seed,
        )
        self.out = None if out is None else os.fspath(out)
        self.verbose = verbose
        self.notes = dict(notes or {})
        self.swept_rate: float | None = None  # Set by fit() with "sweep".
        self.freeze_search = None  # Set by fit() with fine_tune_stages="search".
        self.trained_stages: tuple[str, ...] = ()  # Set by fit().
        self.report: dict[str, Any] | None = None
        self.run = TransferRun(
            self._model(),
            optimizer=_adam(self.recipe.learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
            batch_size=self.recipe.batch_size,
            directory=self.out,
            seed=self.recipe.seed,
            # Images read from files are the same each epoch: cache them.
            speed=Speed(cache_datasets=True),
            verbose=verbose,
        )

    @property
    def model(self) -> keras.Model:
        """The model: `augment`, `preprocess`, `stage_1` ... `stage_n`,
        `head`."""
        return self.run.model

    @property
    def class_names(self) -> list[str]:
        return list(self.data.class_names)

    @property
    def class_weight(self) -> str | None:
        """`"balanced"` where the recipe weighs the classes, else `None`."""
        counts = [c for c in self.data.counts if c]
        imbalanced = bool(counts) and max(counts) >= IMBALANCE * min(counts)
        weighs = self.recipe.class_weights == "balanced" or (
            self.recipe.class_weights == "auto" and imbalanced
        )
        return "balanced" if weighs else None

    def _model(self) -> keras.Model:
        keras.utils.set_random_seed(self.recipe.seed)  # The head's weights.
        size = self.backbone.image_size
        groups = list(self.backbone.groups)
        if self.recipe.augmentation:
            augment = LayerGroup(
                "augment",
                [augmentation_layer(name) for name in self.recipe.augmentation],
                input_shape=(size, size, 3),
            )
            # The model's input moves in front of the augmentation.
            groups[0] = LayerGroup("preprocess", list(groups[0].layers))
            groups.insert(0, augment)
        head = [layers.GlobalAveragePooling2D()]
        if self.recipe.dropout:
            head.append(layers.Dropout(self.recipe.dropout))
        head.append(layers.Dense(len(self.data.class_names), activation="softmax"))
        model = groups[0]
        for group in groups[1:] + [LayerGroup("head", head)]:
            model = model + group
        model.class_names = self.class_names
        return model

    def fit(self) -> ImageClassifierTask:
        """Runs the recipe's stages, then writes the report (into `out`).

        1. "head": the backbone frozen, the head trains for `epochs` on the
           cached features of `augmented_views` views of each image.
        2. "top": the top `fine_tune_stages` stages train with the head, at
           `fine_tune_rate` times its rate, their BatchNormalization in
           inference mode, for `fine_tune_epochs` (skipped at 0). With
           `fine_tune_stages="search"`, the number of stages is the one a
           freeze search chose on the validation data
           (`transferkit.tasks.stage_search`; `task.freeze_search`).

        Returns:
            The task itself, with `report` set.
        """
        recipe, data, run = self.recipe, self.data, self.run
        stages = self.backbone.stages
        searching = recipe.fine_tune_stages == "search"
        top = () if searching else self.backbone.top(recipe.fine_tune_stages)
        self.trained_stages = top if recipe.fine_tune_epochs else ()
        common = dict(
            validation_data=data.validation,
            class_weight=self.class_weight,
            augmented_views=recipe.views,
        )
        optimizer = None
        if recipe.learning_rate == "sweep":
            optimizer = _adam(self._swept_rate(stages, common))
        run.fine_tune(
            data.train,
            freeze=stages,
            epochs=recipe.epochs,
            name="head",
            optimizer=optimizer,
            **common,
        )
        if recipe.fine_tune_epochs and recipe.fine_tune_stages == "search":
            self.trained_stages = searched_top(self, common, optimizer)
        elif recipe.fine_tune_epochs and top:
            run.unfreeze(*top)
            run.train(
                data.train,
                epochs=recipe.fine_tune_epochs,
                name="top",
                optimizer=optimizer,
                lr_multipliers={s: recipe.fine_tune_rate for s in top},
                **common,
            )
        self.report = run.report(
            data.test, dataset=data.described["train"], settings=self.settings()
        )
        if self.verbose != 0:
            self._print_summary()
        return self

    def _swept_rate(self, stages: Sequence[str], common: dict) -> float:
        recorded = None if self.out is None else recorded_spec(self.out, "head")
        if recorded is not None:
            # The rate swept when the run began: a sweep on the trained
            # weights would suggest another, and the run could not resume.
            self.swept_rate = float(recorded["optimizer"]["learning_rate"])
            return self.swept_rate
        sweep = self.run.find_learning_rate(
            self.data.train,
            freeze=stages,
            validation_data=common["validation_data"],
            class_weight=common["class_weight"],
            seed=self.recipe.seed,
        )
        if sweep.suggested is None:
            raise ValueError(
                f"The learning-rate sweep suggested no rate ({sweep.rule}). "
                "Pass a learning rate (learning_rate=1e-3), or look at the sweep "
                "(task.run.find_learning_rate(task.data.train).plot(path))."
            )
        self.swept_rate = sweep.suggested
        return self.swept_rate

    def settings(self) -> dict[str, Any]:
        """Every choice behind the run, for the report."""
        return {
            "task": "image_classifier",
            **self.backbone.describe(),
            **self.data.described,
            "classes": self.class_names,
            "images_per_class": dict(
                zip(self.class_names, self.data.counts, strict=True)
            ),
            "class_weight": self.class_weight or "none",
            "recipe": self.recipe.to_dict(),
            "learning_rate": self.swept_rate or self.recipe.learning_rate,
            "trained_stages": list(self.trained_stages),
            "optimizer": "Adam",
            "head": "GlobalAveragePooling2D, Dropout, Dense(softmax)",
            **self.notes,
        }

    def _print_summary(self) -> None:
        print("\n" + format_summary(self.report))
        if self.out:
            print(f"Report: {os.path.join(self.out, 'report.md')}")
        sys.stdout.flush()

    def predict(self, paths, **options: Any) -> FilePredictions:
        """Predictions on image files and folders (`predict_files`)."""
        return predict_files(self.model, paths, **options)

    def evaluate(self, data: Any = None) -> dict[str, Any]:
        """Loss and accuracy on `data` (default: the test data)."""
        if data is None and self.data.test is None:
            raise ValueError(
                "The task has no test data (no test folder, validation_split=0): "
                "pass data, e.g. task.evaluate('photos/test')."
            )
        return self.run.evaluate(self.data.test if data is None else data)

    def export(
        self,
        path: str | os.PathLike,
        *,
        format: str = "litert",
        quantize: str | None = None,
        overwrite: bool = False,
    ) -> ExportResult:
        """Exports the model (`transferkit.export`), its labels inside a
        `.tflite` and in `labels.txt`, checked against the model on the test
        images (else the training images)."""
        described = self.data.described
        folder = described["test"] or described["train"]
        return export(
            self.model,
            path,
            format=format,
            quantize=quantize,
            samples=[folder],
            test_data=[described["test"]] if described["test"] else None,
            overwrite=overwrite,
        )

    def close(self) -> None:
        """Releases the run folder (see `TransferRun.close`)."""
        self.run.close()


def train_image_classifier(
    train: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    backbone: str = "MobileNetV2",
    weights: str | os.PathLike | None = "imagenet",
    test: str | os.PathLike | None = None,
    validation_split: float | None = None,
    image_size: int | None = None,
    backbone_options: Mapping[str, Any] | None = None,
    recipe: ImageRecipe | None = None,
    verbose: str | int = "auto",
    **overrides: Any,
) -> ImageClassifierTask:
    """Trains an image classifier on a folder of class folders, in one call.

    The same as `ImageClassifierTask(train, ...).fit()`: see
    `ImageClassifierTask` for the arguments and `ImageRecipe` for the
    recipe's fields, which `**overrides` may set (e.g. `epochs=3`).

    Returns:
        The fitted task: `task.report`, `task.predict(paths)`,
        `task.export(path)`, and `task.run` for anything else.
    """
    options = {
        name: value
        for name, value in locals().items()
        if name not in ("train", "overrides")
    }
    return ImageClassifierTask(train, **options, **overrides).fit()


def _split(validation_split, test, recipe: ImageRecipe) -> float | None:
    """The validation split: with a freeze search and a test folder alone,
    `DEFAULT_SPLIT` of the training folder, so that the search never chooses
    on the test images."""
    if recipe.fine_tune_stages != "search" or not recipe.fine_tune_epochs:
        return validation_split
    if validation_split == 0:
        raise ValueError(
            "fine_tune_stages='search' chooses the stages on validation data; "
            "with validation_split=0 there is none. Pass a split, e.g. "
            "validation_split=0.2 (--validation-split 0.2), or a number of "
            "stages (fine_tune_stages=1)."
        )
    if validation_split is None and test is not None:
        return DEFAULT_SPLIT
    return validation_split


def _adam(rate):
    if rate == "sweep":
        rate = 1e-3  # Replaced per stage by the swept rate.
    return lambda: keras.optimizers.Adam(rate)
