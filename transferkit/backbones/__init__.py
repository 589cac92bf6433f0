"""Named pretrained backbones, cut into groups at their stage boundaries.

>>> from transferkit.backbones import load_backbone, names
>>> "EfficientNetB0" in names()
True

`load_backbone(name, weights=..., image_size=...)` builds a backbone of the
catalogue (`keras.applications` families, each with its preprocessing,
default size and stages) or reads a keras-hub preset, and returns a
`Backbone`: a `preprocess` group and one group per stage.
"""

from transferkit.backbones.backbone import Backbone
from transferkit.backbones.building import load_backbone, names
from transferkit.backbones.catalogue import CATALOGUE, BackboneSpec

__all__ = ["CATALOGUE", "Backbone", "BackboneSpec", "load_backbone", "names"]
