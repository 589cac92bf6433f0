"""Shared fixtures: a tiny grouped model and tiny synthetic data."""

import importlib.util
import sys

import keras
import numpy as np
import pytest
from keras import layers

from transferkit import LayerGroup, mnist

IMAGE_SHAPE = (8, 8, 1)
NUM_CLASSES = 3


def pytest_addoption(parser):
    parser.addoption(
        "--run-slow",
        action="store_true",
        help="also run the tests marked slow (full-size training)",
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="full-size training; opt in with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seeded():
    keras.utils.set_random_seed(1234)


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


def snapshot(variables):
    """Copies of variable values, keyed by path."""
    return {v.path: np.array(keras.ops.convert_to_numpy(v)) for v in variables}


def bitwise_equal(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def fine_tune_checked(run, data, epochs=2):
    """Fine-tunes `run` with 'features' frozen, asserts that every variable of
    'features' is bitwise unchanged and every variable of 'classifier'
    moved, and returns the phase's result."""
    groups = run.model.groups
    frozen = snapshot(groups["features"].variables)
    head = snapshot(groups["classifier"].variables)

    result = run.fine_tune(data, freeze=["features"], epochs=epochs)

    after = snapshot(groups["features"].variables)
    assert after.keys() == frozen.keys()
    for path, value in frozen.items():
        assert bitwise_equal(after[path], value), path
    moved = snapshot(groups["classifier"].variables)
    for path, value in head.items():
        assert not np.array_equal(moved[path], value), path
    return result


@pytest.fixture
def model():
    return make_model()


@pytest.fixture
def data():
    return make_data()


class Crash(Exception):
    """Stands for a crash in the middle of a phase."""


class CrashAfterEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Crash(f"crash after epoch {epoch}")


class Epochs(keras.callbacks.Callback):
    """Records the epochs a phase actually trains."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append(epoch)


class Batches(keras.callbacks.Callback):
    """Records the batch numbers training and validation report."""

    def __init__(self):
        super().__init__()
        self.train, self.test = [], []

    def on_train_batch_end(self, batch, logs=None):
        self.train.append(batch)

    def on_test_batch_end(self, batch, logs=None):
        self.test.append(batch)


def load_script(path):
    """Imports a script that is not in a package (an example, a benchmark)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # Dataclasses look their module up.
    spec.loader.exec_module(module)
    return module


def shipped_digits(path, train, test):
    """The first digits of the shipped sample, saved as a Keras mnist.npz."""
    sample = mnist.load_sample()
    np.savez(
        path,
        x_train=sample.x_train[:train],
        y_train=sample.y_train[:train],
        x_test=sample.x_test[:test],
        y_test=sample.y_test[:test],
    )
    return path
