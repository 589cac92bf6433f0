"""Shared fixtures: a tiny grouped model and tiny synthetic data.

The CPU is split into two logical devices before TensorFlow starts, so that
`tf.distribute.MirroredStrategy` can be tested with two replicas; everything
else runs on the first, as it would without the split.
"""

import importlib.util
import sys

import tensorflow as tf

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration()] * 2,
)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from tiny import IMAGE_SHAPE, NUM_CLASSES, make_data, make_model, run_options  # noqa: E402, F401

from transferkit import attach_groups  # noqa: E402
from transferkit.datasets import mnist  # noqa: E402


def pytest_addoption(parser):
    parser.addoption(
        "--run-slow",
        action="store_true",
        help="also run the tests marked slow (full-size training)",
    )


HEAVY_FIRST = (
    "test_pretrained_backbone_example.py",
    "test_multi_worker.py",
    "test_mnist_digits_example.py",
    "test_image_task.py",
    "test_hub_models.py",
    "test_freeze_search.py",
)
"""Modules whose tests take the longest, handed to the workers first: a long
test started last would leave the other worker idle at the end."""


def pytest_collection_modifyitems(config, items):
    rank = {name: place for place, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(
        reason="slow (full-size training, or a benchmark end to end); opt in with "
        "--run-slow"
    )
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def strategy():
    """A MirroredStrategy over the two logical CPU devices. One for the whole
    session: a second one in the same process would reuse the first one's
    collective instance keys, which TensorFlow refuses for other shapes."""
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@pytest.fixture(autouse=True)
def _seeded():
    keras.utils.set_random_seed(1234)


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


def in_place_run(model, groups, **kwargs):
    """A quiet run of `model` in place with `groups` (Adam at 0.01, sparse
    labels); `kwargs` add to or override those settings."""
    from transferkit import TransferRun

    settings = {
        "optimizer": keras.optimizers.Adam(0.01),
        "loss": "sparse_categorical_crossentropy",
        "verbose": 0,
        **kwargs,
    }
    return TransferRun(attach_groups(model, groups), **run_options(settings))


def tiny_run(directory=None, **kwargs):
    """A quiet `TransferRun` of the tiny model with Adam, batches of 16."""
    from transferkit import TransferRun

    return TransferRun(
        make_model(),
        optimizer="adam",
        loss="sparse_categorical_crossentropy",
        batch_size=16,
        verbose=0,
        directory=directory,
        **run_options(kwargs),
    )


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


def image_folder(root, classes=3, per_class=8, size=12):
    """A folder of class subfolders of small PNG images, as users have."""
    rng = np.random.default_rng(0)
    for label in range(classes):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(0, 60, size=(size, size, 3)) + 60 * label
            png = tf.io.encode_png(pixels.astype("uint8"))
            (folder / f"{index}.png").write_bytes(png.numpy())
    return root
