"""`Backbone`: a pretrained backbone cut into groups, and the facts about it
that a report keeps."""

from __future__ import annotations

import dataclasses

import keras

from transferkit.groups.layer_group import LayerGroup

__all__ = ["Backbone"]


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A pretrained backbone cut into groups, ready for a head."""

    name: str
    """The catalogue name, or the keras-hub preset it was read from."""

    groups: tuple[LayerGroup, ...]
    """`preprocess` (pixel values 0-255 in), then `stage_1` ... `stage_n`."""

    image_size: int
    """The (square) input size it was built for."""

    weights: str
    """Where its weights came from, in words (for the report)."""

    preprocessing: str
    """What `preprocess` computes, in words (for the report)."""

    model: keras.Model | None = None
    """The whole backbone as built, whose layers the stage groups hold (for
    a recipe of your own: `backbone.model(x, training=False)`)."""

    library: str = "keras.applications"
    """Where the backbone's layers come from: `"keras.applications"`, or
    `"keras-hub"` (then `import keras_hub` before loading a saved model)."""

    @property
    def stages(self) -> tuple[str, ...]:
        """The names of its stage groups, bottom first."""
        return tuple(group.name for group in self.groups[1:])

    def top(self, k: int) -> tuple[str, ...]:
        """The names of the top `k` stages (all of them for a larger `k`)."""
        if not isinstance(k, int) or k < 0:
            raise ValueError(
                f"Expected the number of top stages to be an integer >= 0. "
                f"Received: {k!r}"
            )
        return self.stages[len(self.stages) - k :] if k else ()

    def describe(self) -> dict[str, object]:
        """The facts a report keeps."""
        return {
            "backbone": self.name,
            "weights": self.weights,
            "image_size": self.image_size,
            "preprocessing": self.preprocessing,
            "stages": len(self.stages),
            "library": self.library,
        }
