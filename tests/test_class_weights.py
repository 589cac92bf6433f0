"""Class weights and sample weights: the same weighted training as Keras'
`fit(class_weight=...)` in transferkit's loop, in `fit`, on datasets and on
the feature cache; "balanced" weights; refusals that name the bad value."""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import image_folder, make_data, make_model
from tiny import run_options

from transferkit import TransferRun
from transferkit.data.prepare import prepare_data
from transferkit.data.sample_weights import balanced_class_weight, class_weight_vector

SPARSE = "sparse_categorical_crossentropy"
WEIGHTS = {0: 4.0, 2: 0.25}  # Class 1 weighs 1.0, as in fit.


def weights_of(model):
    return [keras.ops.convert_to_numpy(w) for w in model.weights]


@functools.cache
def keras_fit_weights(frozen=False, class_weight=None, sample_weight=None):
    """The weights of `keras_fit`, computed once per setting."""
    fit_kwargs = {}
    if class_weight is not None:
        fit_kwargs["class_weight"] = dict(class_weight)
    if sample_weight is not None:
        fit_kwargs["sample_weight"] = np.array(sample_weight, "float32")
    return weights_of(keras_fit(frozen, **fit_kwargs))


def keras_fit(frozen=False, **fit_kwargs):
    """The tiny model trained two full-batch epochs by Keras' own fit."""
    keras.utils.set_random_seed(0)
    model = make_model()
    if frozen:
        model.groups["features"].trainable = False
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=SPARSE)
    x, y = make_data()
    model.fit(x, y, batch_size=48, epochs=2, shuffle=False, verbose=0, **fit_kwargs)
    return model


def transfer_run(loop="auto", **kwargs):
    keras.utils.set_random_seed(0)
    return TransferRun(
        make_model(),
        optimizer=lambda: keras.optimizers.SGD(0.05),
        loss=SPARSE,
        batch_size=48,
        verbose=0,
        **run_options({"training_loop": loop, **kwargs}),
    )


def dataset():
    return tf.data.Dataset.from_tensor_slices(make_data()).batch(48)


CASES = {
    "arrays, transferkit's loop": ("auto", lambda: make_data(), {}, "own"),
    "arrays, fit": ("fit", lambda: make_data(), {}, "fit_requested"),
    "dataset, fit": ("auto", dataset, {}, "fit_dataset"),
}


@pytest.mark.parametrize("case", CASES)
def test_class_weight_trains_as_keras_fit_does(case):
    loop, data, options, code = CASES[case]
    expected = keras_fit_weights(class_weight=tuple(WEIGHTS.items()))
    unweighted = keras_fit_weights()

    run = transfer_run(loop, **options)
    result = run.train(data(), epochs=2, class_weight=WEIGHTS)

    assert result.training_loop_code == code
    for ours, theirs, plain in zip(
        weights_of(run.model), expected, unweighted, strict=True
    ):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
        assert not np.allclose(ours, plain, rtol=1e-5, atol=1e-6) or plain.size == 0


CACHED = {
    "arrays in memory": (make_data, 2**30, "own"),
    "arrays on disk": (make_data, 0, "fit_cache_on_disk"),
    "a dataset in memory": (dataset, 2**30, "own"),
}


@pytest.mark.parametrize("case", CACHED)
def test_class_weight_on_the_feature_cache_trains_the_head_as_fit_does(tmp_path, case):
    data, memory, code = CACHED[case]
    expected = keras_fit_weights(frozen=True, class_weight=tuple(WEIGHTS.items()))
    run = transfer_run(
        feature_cache_memory=memory, directory=tmp_path / "run", cache_datasets=True
    )

    result = run.fine_tune(data(), freeze="features", epochs=2, class_weight=WEIGHTS)

    assert result.cached_layers > 0
    assert result.training_loop_code == code
    for ours, theirs in zip(weights_of(run.model), expected, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_sample_weights_in_the_data_train_as_fit_does():
    x, y = make_data()
    weights = np.linspace(0.1, 2.0, len(y)).astype("float32")
    expected = keras_fit_weights(sample_weight=tuple(weights.tolist()))

    arrays = transfer_run()
    arrays.train((x, y, weights), epochs=2)
    batches = transfer_run(cache_datasets=True)
    batches.train(
        tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(48), epochs=2
    )

    for run in (arrays, batches):
        for ours, theirs in zip(weights_of(run.model), expected, strict=True):
            np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_validation_sample_weights_weigh_the_validation_loss():
    x, y = make_data()
    weights = (y == 0).astype("float32")  # Only class 0 counts.
    run = transfer_run()
    result = run.train(make_data(), epochs=1, validation_data=(x, y, weights))

    expected = run.model.evaluate(x, y, sample_weight=weights, verbose=0)
    np.testing.assert_allclose(result.metrics["loss"], expected, rtol=1e-5)
    assert run.evaluate((x, y, weights))["loss"] == pytest.approx(expected, rel=1e-5)


def test_balanced_weights_are_n_over_k_times_the_class_count():
    model = make_model()
    x, y = make_data(samples=40)
    y = np.array([0] * 30 + [1] * 6 + [2] * 4)

    data = prepare_data(
        (x, y), "data", model=model, loss=SPARSE, batch_size=8, class_weight="balanced"
    )

    expected = 40 / (3 * np.array([30, 6, 4]))
    np.testing.assert_allclose(data.class_weights, expected, rtol=1e-6)
    np.testing.assert_allclose(data.sample_weight, expected[y], rtol=1e-6)
    # A class without samples weighs 1.0, and counts no class.
    np.testing.assert_allclose(balanced_class_weight([5, 0, 15], 3), [2, 1, 2 / 3])


def test_balanced_weights_of_an_image_folder_count_its_files(tmp_path):
    root = image_folder(tmp_path, classes=3, per_class=4)
    (next(root.glob("class_0/*.png"))).unlink()  # 3, 4, 4 files.
    folder = keras.utils.image_dataset_from_directory(
        root, image_size=(12, 12), batch_size=4, shuffle=False, verbose=False
    )
    model = keras.Sequential([keras.Input((12, 12, 3)), keras.layers.Flatten()])
    model.add(keras.layers.Dense(3, activation="softmax"))

    data = prepare_data(
        folder, "data", model=model, loss=SPARSE, batch_size=4, class_weight="balanced"
    )

    np.testing.assert_allclose(data.class_weights, 11 / (3 * np.array([3, 4, 4])))
    weights = np.concatenate([batch[2].numpy() for batch in data.x])
    labels = np.concatenate([batch[1].numpy() for batch in data.x])
    np.testing.assert_allclose(weights, np.array(data.class_weights)[labels])


def test_class_names_may_key_the_class_weights():
    vector = class_weight_vector({"cat": 3.0}, 2, class_names=["cat", "dog"])
    assert vector.tolist() == [3.0, 1.0]


@pytest.mark.parametrize(
    "class_weight, error, message",
    [
        (
            {3: 2.0},
            ValueError,
            r"`class_weight` has the class id 3, but the model has 3 outputs: class ids are 0..2\.",
        ),
        (
            {0: -1.0},
            ValueError,
            r"finite numbers >= 0\. Received: class_weight\[0\]=-1\.0",
        ),
        ({0: float("nan")}, ValueError, r"Received: class_weight\[0\]=nan"),
        (
            {"owl": 2.0},
            ValueError,
            r"names the class 'owl', which is not one of the run's classes \(the run has no class names\)",
        ),
        (
            "even",
            ValueError,
            r"a dict \{class: weight\} or 'balanced'\. Received: class_weight='even'",
        ),
        ([1.0, 2.0], TypeError, r"Received: class_weight=\[1\.0, 2\.0\]"),
    ],
)
def test_bad_class_weights_are_refused_naming_the_value(class_weight, error, message):
    run = transfer_run()
    with pytest.raises(error, match=message):
        run.train(make_data(), epochs=1, class_weight=class_weight)
    assert run.results == []


def test_class_weights_that_weigh_every_sample_0_are_refused():
    """`{0: 0, 1: 0}` on data of classes 0 and 1 would train on a loss of 0."""
    run = transfer_run()
    with pytest.raises(ValueError, match=r"Every training sample would weigh 0 with "
                       r"class_weight=\{0: 0, 1: 0\}: the phase would train on a "
                       r"loss of 0"):  # fmt: skip
        run.train(make_data(classes=2), epochs=1, class_weight={0: 0, 1: 0})
    assert run.results == []
    result = run.train(make_data(), epochs=1, class_weight={0: 0, 1: 0})
    assert result.epochs == 1  # Class 2 still weighs 1.


def test_sample_weights_and_class_weight_together_are_refused():
    x, y = make_data()
    run = transfer_run()
    with pytest.raises(ValueError, match="Keras' fit takes one or the other"):
        run.train((x, y, np.ones(len(y))), epochs=1, class_weight={0: 2.0})
    with pytest.raises(
        ValueError,
        match=r"to be 48 numbers, one per sample\. Received: an array of shape \(3,\)",
    ):
        run.train((x, y, np.ones(3)), epochs=1)
    with pytest.raises(
        ValueError, match=r"finite numbers >= 0\. Received: -1\.0 at index 5"
    ):
        weights = np.ones(len(y))
        weights[5] = -1
        run.train((x, y, weights), epochs=1)


def test_a_resumed_phase_with_other_class_weights_is_refused(tmp_path):
    first = transfer_run(directory=tmp_path / "run")
    first.train(make_data(), epochs=1, class_weight=WEIGHTS)
    first.close()

    second = transfer_run(directory=tmp_path / "run")
    with pytest.raises(ValueError, match="class_weights"):
        second.train(make_data(), epochs=1, class_weight={0: 2.0})
