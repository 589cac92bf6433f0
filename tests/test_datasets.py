"""Datasets are checked like arrays, from their element spec and first batch,
before anything trains: the message names the argument, what was received
and what is accepted."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import Batches, image_folder, make_data, make_model
from keras import layers
from tiny import run_options

from transferkit import LayerGroup, TransferRun

SPARSE = "sparse_categorical_crossentropy"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Five class folders of 12x12 RGB images."""
    return image_folder(tmp_path_factory.mktemp("images"), classes=5, per_class=4)


def load(folder, **kwargs):
    kwargs = {"image_size": (12, 12), "batch_size": 8, "verbose": False, **kwargs}
    return keras.utils.image_dataset_from_directory(folder, **kwargs)


def image_run(classes=5, loss=SPARSE, **kwargs):
    features = LayerGroup(
        "features", [layers.Conv2D(4, 3), layers.Flatten()], input_shape=(12, 12, 3)
    )
    head = LayerGroup("classifier", [layers.Dense(classes, activation="softmax")])
    return TransferRun(
        features + head, optimizer="sgd", loss=loss, verbose=0, **run_options(kwargs)
    )


@pytest.mark.parametrize("cache_datasets", [False, True])
def test_more_class_folders_than_outputs_is_refused_at_once(folder, cache_datasets):
    run = image_run(classes=3, cache_datasets=cache_datasets)

    with pytest.raises(
        ValueError,
        match=r"`data` has 5 classes \(\['class_0', .*\]\), but the model has 3 "
        r"outputs.*Dense\(5\)",
    ):
        run.fine_tune(load(folder), freeze="features", epochs=1)


@pytest.mark.parametrize(
    "kwargs, hint",
    [
        ({"image_size": (16, 16)}, r"image_size=\(12, 12\)"),
        ({"color_mode": "grayscale"}, "color_mode='rgb'"),
    ],
    ids=["size", "channels"],
)
def test_images_of_another_shape_are_refused_naming_the_fix(folder, kwargs, hint):
    run = image_run(cache_datasets=True)

    with pytest.raises(
        ValueError, match=f"but the model expects \\(12, 12, 3\\).*{hint}"
    ):
        run.fine_tune(load(folder, **kwargs), freeze="features", epochs=1)


def test_one_hot_labels_with_a_sparse_loss_are_refused(folder):
    run = image_run()

    with pytest.raises(
        ValueError, match=r"one-hot rows \(shape \(None, 5\)\).*label_mode='int'"
    ):
        run.train(load(folder, label_mode="categorical"), epochs=1)


def test_one_hot_labels_train_with_a_categorical_loss(folder):
    run = image_run(loss="categorical_crossentropy")

    result = run.train(load(folder, label_mode="categorical"), epochs=1)

    assert len(result.history["loss"]) == 1


def test_labels_out_of_range_are_refused_in_the_first_batch_and_later_ones():
    x, y = make_data(samples=16)
    run = TransferRun(make_model(), optimizer="sgd", loss=SPARSE, verbose=0)
    first = tf.data.Dataset.from_tensor_slices((x, np.where(y == 0, 7, y))).batch(8)
    late = np.concatenate([y[:8], np.full(8, 3)])
    later = tf.data.Dataset.from_tensor_slices((x, late)).batch(8)

    with pytest.raises(ValueError, match=r"class ids in \[0, 2\].*first batch: \[7\]"):
        run.train(first, epochs=1)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"class ids in \[0, 2\]"):
        run.train(later, epochs=1)


def test_an_endless_dataset_needs_steps_per_epoch():
    x, y = make_data(samples=16)
    endless = tf.data.Dataset.from_tensor_slices((x, y)).batch(4).repeat()
    run = TransferRun(make_model(), optimizer="sgd", loss=SPARSE, verbose=0)
    batches = Batches()

    with pytest.raises(
        ValueError, match=r"endless tf\.data\.Dataset.*steps_per_epoch=N"
    ):
        run.train(endless, epochs=1)
    result = run.train(endless, epochs=2, steps_per_epoch=3, callbacks=[batches])

    assert result.epochs == 2
    assert batches.train == [0, 1, 2, 0, 1, 2]
    with pytest.raises(ValueError, match="steps_per_epoch` is for a tf.data.Dataset"):
        run.train((x, y), epochs=1, steps_per_epoch=3)


def test_class_names_come_from_the_dataset_into_result_report_and_saved_model(
    folder, tmp_path
):
    from transferkit.records.report import build_report, phase_rows
    from transferkit.serving.evaluation import confusion_matrix

    run = image_run()
    dataset = load(folder)
    names = ("class_0", "class_1", "class_2", "class_3", "class_4")

    result = run.train(dataset, epochs=1)
    confusion = confusion_matrix(run.model, dataset, phase=result.name)
    run.model.save(tmp_path / "model.keras")

    assert result.class_names == names == run.model.class_names
    assert result.train_samples == 20  # The files, so samples/s is known.
    assert confusion["classes"] == list(names)
    assert sum(map(sum, confusion["matrix"])) == 20
    rows = dict(
        phase_rows(build_report([result], dataset="d", total_seconds=1)["phases"][0])
    )
    assert rows["classes"] == ", ".join(names)
    assert rows["samples/s"] != "-"
    assert keras.models.load_model(tmp_path / "model.keras").class_names == names
    other = load(
        folder, class_names=["class_1", "class_0", "class_2", "class_3", "class_4"]
    )
    with pytest.raises(ValueError, match=r"`data` has the classes \['class_1', "):
        run.train(other, epochs=1)
