"""`ImagenetPreprocessing`: a backbone's `preprocess_input` as a layer.

`keras.applications` backbones expect their inputs preprocessed by their
module's `preprocess_input`; mapped over a dataset, that step is not part of
the model, so an export or a prediction on files would lack it (a model
given raw pixels answers wrongly, with no error). As the first layer of the
model it travels with it: saved, loaded, exported and served. It computes
the same as `keras.applications.imagenet_utils.preprocess_input` in each of
its modes, for channels-last images with pixel values in [0, 255]:

- `"tf"` (MobileNet, MobileNetV2, InceptionV3, Xception...): `x / 127.5 - 1`;
- `"torch"` (DenseNet): `x / 255`, then each channel less ImageNet's mean and
  divided by its standard deviation;
- `"caffe"` (ResNet50, VGG): RGB to BGR, then each channel less ImageNet's
  mean pixel.

It has no weights and draws nothing, so a feature cache covers it.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

__all__ = ["MODES", "ImagenetPreprocessing"]

MODES = ("tf", "torch", "caffe")


@keras.saving.register_keras_serializable(package="transferkit")
class ImagenetPreprocessing(keras.layers.Layer):
    """`preprocess_input` of a `keras.applications` backbone, as a layer.

    Args:
        mode: `"tf"`, `"torch"` or `"caffe"`, as the backbone's
            `preprocess_input` uses (see the module docstring).
    """

    def __init__(self, mode: str = "tf", **kwargs):
        if mode not in MODES:
            raise ValueError(
                f"Expected `mode` to be one of {list(MODES)}. Received: {mode!r}"
            )
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
            x = x / 255.0
        else:
            mean, std = [103.939, 116.779, 123.68], None
            x = ops.stack([x[..., i] for i in (2, 1, 0)], axis=-1)
        x = x + ops.convert_to_tensor(-np.array(mean), dtype=x.dtype)
        if std is not None:
            x = x / ops.convert_to_tensor(np.array(std), dtype=x.dtype)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
