"""`ImageRecipe`: how the image task trains, every default written down.

The defaults were chosen by measurement (`docs/image-task.md`): the head
learns on the frozen backbone from its cached features, over two fixed
augmented views of each image; then the top stage of the backbone trains
at a tenth of the head's rate, the rest of it still frozen and cached.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["AUGMENTATIONS", "ImageRecipe", "augmentation_layer"]

AUGMENTATIONS = {
    "flip": ("RandomFlip", ("horizontal",)),
    "rotation": ("RandomRotation", (0.1,)),
    "zoom": ("RandomZoom", (0.1,)),
    "translation": ("RandomTranslation", (0.1, 0.1)),
    "contrast": ("RandomContrast", (0.1,)),
}
"""The augmentations a recipe can name: a Keras layer and its arguments.
(Named, not built, so that reading a recipe does not start TensorFlow.)"""


def augmentation_layer(name: str):
    """A new Keras layer for the augmentation `name`."""
    from keras import layers

    layer, arguments = AUGMENTATIONS[name]
    return getattr(layers, layer)(*arguments)


CLASS_WEIGHTS = ("auto", "balanced", "none")


@dataclasses.dataclass(frozen=True)
class ImageRecipe:
    """How `train_image_classifier` trains; every field lands in the report.

    >>> ImageRecipe(epochs=3).fine_tune_epochs
    5
    """

    epochs: int = 10
    """Epochs of the "head" stage: the new head on the frozen backbone."""

    fine_tune_epochs: int = 5
    """Epochs of the "top" stage: the top stages and the head; 0 skips it."""

    fine_tune_stages: int | str = 1
    """How many of the backbone's top stages the "top" stage trains, or
    `"search"`: the number (0 to 3) a freeze search chooses on the
    validation data (`transferkit.tasks.stage_search`)."""

    learning_rate: float | str = 1e-3
    """Adam's learning rate for the head, or `"sweep"`: the rate the
    learning-rate sweep suggests for the head stage (`find_learning_rate`)."""

    fine_tune_rate: float = 0.1
    """The top stages' rate in the "top" stage, as a multiple of the head's."""

    batch_size: int = 32
    """Images per step."""

    augmentation: tuple[str, ...] = ("flip", "rotation", "zoom")
    """Augmentation layers in front of the model, by name (`AUGMENTATIONS`);
    `()` for none. They run in training only; exports leave them out."""

    augmented_views: int = 2
    """Fixed augmented views of each image, computed once per stage through
    the frozen layers (the feature cache); 1 with no augmentation."""

    dropout: float = 0.2
    """Dropout before the head's last layer."""

    class_weights: str = "auto"
    """`"auto"`: balanced class weights when the largest class has at least
    1.5 times the images of the smallest; `"balanced"`: always; `"none"`."""

    seed: int = 0
    """Seeds the head's initial weights, the shuffling, the augmentation
    and the validation split."""

    def __post_init__(self):
        _check_counts(self)
        if not (
            self.learning_rate == "sweep"
            or (_number(self.learning_rate) and self.learning_rate > 0)
        ):
            raise ValueError(
                "Expected `learning_rate` to be a positive number or 'sweep'. "
                f"Received: learning_rate={self.learning_rate!r}"
            )
        if not (_number(self.fine_tune_rate) and self.fine_tune_rate > 0):
            raise ValueError(
                "Expected `fine_tune_rate` to be a positive number. Received: "
                f"fine_tune_rate={self.fine_tune_rate!r}"
            )
        if not (_number(self.dropout) and 0 <= self.dropout < 1):
            raise ValueError(
                "Expected `dropout` to be a number in [0, 1). Received: "
                f"dropout={self.dropout!r}"
            )
        names = self.augmentation
        if not isinstance(names, tuple) or any(a not in AUGMENTATIONS for a in names):
            raise ValueError(
                f"Expected `augmentation` to be a tuple of names from "
                f"{sorted(AUGMENTATIONS)}, or () for none. Received: "
                f"augmentation={names!r}"
            )
        if self.class_weights not in CLASS_WEIGHTS:
            raise ValueError(
                f"Expected `class_weights` to be one of {list(CLASS_WEIGHTS)}. "
                f"Received: class_weights={self.class_weights!r}"
            )

    @classmethod
    def of(cls, recipe: ImageRecipe | None, overrides: Mapping[str, Any]):
        """`recipe` (or the defaults) with `overrides` by field name."""
        recipe = recipe if recipe is not None else cls()
        if not isinstance(recipe, cls):
            raise TypeError(
                f"Expected `recipe` to be an ImageRecipe. Received: {recipe!r}"
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise TypeError(
                f"Unknown option(s) {unknown}. Expected the task's arguments or "
                f"fields of ImageRecipe: {sorted(fields)}."
            )
        values = dict(overrides)
        if isinstance(values.get("augmentation"), (list, tuple)):
            values["augmentation"] = tuple(values["augmentation"])
        return dataclasses.replace(recipe, **values)

    @property
    def views(self) -> int:
        """The augmented views a stage caches (1 without augmentation)."""
        return self.augmented_views if self.augmentation else 1

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "augmentation": list(self.augmentation)}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_counts(recipe: ImageRecipe) -> None:
    stages = recipe.fine_tune_stages
    if stages != "search" and (
        isinstance(stages, bool) or not isinstance(stages, int) or stages < 0
    ):
        raise ValueError(
            "Expected `fine_tune_stages` to be an integer >= 0 or 'search'. "
            f"Received: fine_tune_stages={stages!r}"
        )
    for name, least in (
        ("epochs", 1),
        ("fine_tune_epochs", 0),
        ("batch_size", 1),
        ("augmented_views", 1),
        ("seed", 0),
    ):
        value = getattr(recipe, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(
                f"Expected `{name}` to be an integer >= {least}. Received: "
                f"{name}={value!r}"
            )
