"""A tiny grouped model and tiny synthetic data, for the tests and for the
worker processes that `test_multi_worker` starts (which must not import
`conftest`: it splits the CPU before TensorFlow starts)."""

import numpy as np
from keras import layers

from transferkit import LayerGroup

IMAGE_SHAPE = (8, 8, 1)
NUM_CLASSES = 3


def make_model(batch_norm=False, dropout=False):
    """A tiny convnet in two groups: 'features' and 'classifier'."""
    feature_layers = [layers.Conv2D(4, 3)]
    if batch_norm:
        feature_layers.append(layers.BatchNormalization())
    feature_layers += [layers.Activation("relu"), layers.Flatten()]
    head_layers = [layers.Dense(8, activation="relu")]
    if dropout:
        head_layers.append(layers.Dropout(0.5))
    head_layers.append(layers.Dense(NUM_CLASSES, activation="softmax"))
    features = LayerGroup("features", feature_layers, input_shape=IMAGE_SHAPE)
    classifier = LayerGroup("classifier", head_layers)
    return features + classifier


def make_data(samples=48, classes=NUM_CLASSES, seed=0):
    """Random images whose label shifts their mean, so there is signal."""
    rng = np.random.default_rng(seed)
    y = np.arange(samples) % classes
    rng.shuffle(y)
    x = rng.normal(size=(samples,) + IMAGE_SHAPE).astype("float32")
    x += y[:, None, None, None].astype("float32")
    return x, y


SPEED_OPTIONS = (
    "feature_cache",
    "feature_cache_memory",
    "cache_datasets",
    "lean_step",
    "training_loop",
    "steps_per_execution",
    "jit_compile",
)


def run_options(options):
    """`TransferRun` keywords from a test helper's flat options: those of
    `transferkit.Speed` grouped into `speed=Speed(...)`, so that a test can
    say `make_run(lean_step=True)`."""
    from transferkit import Speed

    options = dict(options)
    speed = {name: options.pop(name) for name in SPEED_OPTIONS if name in options}
    if speed:
        options["speed"] = Speed(**speed)
    return options
