"""`TransferRun.search_freeze`: every candidate is the fine-tune it stands
for, the frozen prefix's features are carried from cut to cut, and the run is
left as it was."""

import keras
import numpy as np
import pytest
from keras import layers

from transferkit import LayerGroup, TransferRun
from transferkit.records.freeze_search import FreezeCandidate, FreezeSearch
from transferkit.run.freeze_search import load_searches

pytestmark = pytest.mark.xdist_group("freeze_search")

GROUPS = ("g1", "g2", "g3", "head")


def _model(dropout=False):
    keras.utils.set_random_seed(7)
    g1 = LayerGroup("g1", [layers.Dense(12, activation="relu")], input_shape=(6,))
    g2 = LayerGroup("g2", [layers.Dense(10, activation="relu")])
    g3 = LayerGroup(
        "g3",
        [layers.Dense(8, activation="relu")]
        + ([layers.Dropout(0.3)] if dropout else []),
    )
    head = LayerGroup("head", [layers.Dense(3, activation="softmax")])
    return g1 + g2 + g3 + head


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(96, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 0.5)
    return (x[:64], y[:64]), (x[64:], y[64:])


def _run(data, directory=None, dropout=False):
    run = TransferRun(
        _model(dropout),
        optimizer="adam",
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        batch_size=16,
        seed=5,
        verbose=0,
        directory=directory,
    )
    run.train(data[0], epochs=1)
    return run


def _origin(row):
    """How the row's features came, from its cache line: `"12.0 MiB in
    memory, carried on from the cut before; layers ..."`."""
    for origin in ("carried on from the cut before", "computed for the search"):
        if origin in row.cache:
            return origin
    return row.cache


def _weights(model):
    return [keras.ops.convert_to_numpy(v) for v in model.weights]


def test_each_candidate_is_the_fine_tune_it_stands_for(data):
    search = _run(data).search_freeze(data[0], validation_data=data[1], epochs=2)
    assert [row.frozen for row in search.rows] == [
        ("g1", "g2", "g3"),
        ("g1", "g2"),
        ("g1",),
        (),
    ]
    assert [row.depth for row in search.rows] == [3, 2, 1, 0]
    for row in search.rows:
        alone = _run(data).fine_tune(
            data[0], freeze=list(row.frozen), epochs=2, validation_data=data[1]
        )
        assert row.result.history == alone.history, row.frozen  # Bitwise floats.
        assert row.trainable_params == alone.trainable_params
        assert row.frozen_unchanged is (True if row.frozen else None)
    # The deeper cuts' features were carried on from the shallower ones.
    assert [_origin(row) for row in search.rows] == [
        "carried on from the cut before",
        "carried on from the cut before",
        "computed for the search",
        "not used: no group is frozen",
    ]
    assert search.shared_cache.startswith("2 of 4")


def test_the_run_is_left_as_it_was(data, tmp_path):
    run = _run(data, directory=tmp_path / "run")
    before = _weights(run.model)
    flags = [layer.trainable for layer in run.model.layers]
    files = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    search = run.search_freeze(data[0], validation_data=data[1], epochs=1)
    assert len(search.rows) == 4
    for a, b in zip(before, _weights(run.model), strict=True):
        np.testing.assert_array_equal(a, b)
    assert [layer.trainable for layer in run.model.layers] == flags
    after = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    # Only the search's record is new; the checkpoint and state are as before.
    assert after.pop("freeze_search.json")
    assert after == files
    assert len(run.results) == 1
    assert load_searches(str(tmp_path / "run")) == [
        FreezeSearch.from_dict(search.to_dict())
    ]
    report = run.report()
    assert report["freeze_searches"][0]["best"] == list(search.best.frozen)
    # The next phase is the one a run without the search would have run.
    next_phase = run.fine_tune(
        data[0], freeze=["g1"], epochs=1, validation_data=data[1]
    )
    other = _run(data)
    plain = other.fine_tune(data[0], freeze=["g1"], epochs=1, validation_data=data[1])
    assert next_phase.history == plain.history
    for a, b in zip(_weights(run.model), _weights(other.model), strict=True):
        np.testing.assert_array_equal(a, b)
    run.close()


def test_augmented_views_are_carried_view_by_view(data):
    def model():
        keras.utils.set_random_seed(3)
        augment = LayerGroup(
            "augment", [layers.RandomFlip("horizontal")], input_shape=(5, 5, 1)
        )
        g1 = LayerGroup("g1", [layers.Conv2D(4, 3, activation="relu")])
        g2 = LayerGroup("g2", [layers.Flatten(), layers.Dense(6, activation="relu")])
        head = LayerGroup("head", [layers.Dense(3, activation="softmax")])
        return augment + g1 + g2 + head

    x = np.random.default_rng(1).normal(size=(80, 5, 5, 1)).astype("float32")
    y = np.arange(80) % 3
    train, validation = (x[:56], y[:56]), (x[56:], y[56:])

    def run():
        return TransferRun(
            model(), optimizer="adam", loss="sparse_categorical_crossentropy",
            batch_size=16, seed=2, verbose=0,
        )  # fmt: skip

    search = run().search_freeze(
        train, validation_data=validation, epochs=2, candidates=[2, 1],
        augmented_views=3,
    )  # fmt: skip
    assert [_origin(row) for row in search.rows] == [
        "carried on from the cut before",
        "computed for the search",
    ]
    assert "3 fixed augmented views" in search.rows[0].cache
    for row in search.rows[:1]:  # The carried one.
        alone = run().fine_tune(
            train, freeze=list(row.frozen), epochs=2, validation_data=validation,
            augmented_views=3,
        )  # fmt: skip
        assert row.result.history == alone.history, row.frozen


def test_cuts_inside_a_backbone_are_carried_through_a_bridge():
    # A functional backbone composed as one layer: the cache ends at a
    # tensor inside it, and the deeper cut is carried on from the shallower.
    def model():
        keras.utils.set_random_seed(4)
        inputs = keras.Input((6, 6, 2))
        x = layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inputs)
        x = layers.Add(name="a1")([x, layers.Conv2D(4, 1, name="s1")(x)])
        x = layers.Conv2D(4, 3, activation="relu", name="c2")(x)
        x = layers.Add(name="a2")([x, layers.Conv2D(4, 1, name="s2")(x)])
        x = layers.Conv2D(3, 3, activation="relu", name="c3")(x)
        backbone = keras.Model(inputs, x, name="backbone")
        groups = LayerGroup.split(backbone, at=["a1", "a2"], names=["b1", "b2", "b3"])
        head = LayerGroup(
            "head", [layers.Flatten(), layers.Dense(3, activation="softmax")]
        )
        return groups[0] + groups[1] + groups[2] + head

    x = np.random.default_rng(2).normal(size=(48, 6, 6, 2)).astype("float32")
    y = np.arange(48) % 3
    train, validation = (x[:32], y[:32]), (x[32:], y[32:])

    def run():
        return TransferRun(
            model(), optimizer="adam", loss="sparse_categorical_crossentropy",
            batch_size=8, seed=1, verbose=0,
        )  # fmt: skip

    search = run().search_freeze(train, validation_data=validation, epochs=1)
    assert [row.frozen for row in search.rows] == [
        ("b1", "b2", "b3"),
        ("b1", "b2"),
        ("b1",),
        (),
    ]
    assert [_origin(row) for row in search.rows][:3] == [
        "carried on from the cut before",
        "carried on from the cut before",
        "computed for the search",
    ]
    assert "ends at 'a2' in 'backbone'" in search.rows[1].cache
    for row in search.rows[:2]:  # The carried ones.
        alone = run().fine_tune(
            train, freeze=list(row.frozen), epochs=1, validation_data=validation
        )
        assert row.result.history == alone.history, row.frozen


def test_candidates_in_every_form_with_a_group_frozen_now(data):
    run = _run(data)
    run.freeze("g2")
    search = run.search_freeze(
        data[0],
        validation_data=data[1],
        epochs=1,
        candidates=[["g3"], 1, "g1", 0],
        metric="accuracy",
    )
    # Groups frozen now stay frozen; "g1" is the cut 1 already named.
    assert [row.frozen for row in search.rows] == [("g2", "g3"), ("g1", "g2"), ("g2",)]
    assert [row.depth for row in search.rows] == [2, 2, 1]
    assert run.frozen_groups == ("g2",)
    accuracies = [row.metrics["accuracy"] for row in search.rows]
    assert search.best.metrics["accuracy"] == max(accuracies)
    assert search.mode == "max"
    lines = search.table().splitlines()
    assert lines[0].split()[:3] == ["frozen", "trainable", "val_accuracy"]
    assert sum(line.startswith("*") for line in lines[1:-1]) == 1


@pytest.fixture(scope="module")
def trained(data):
    return _run(data)


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"candidates": ["nope"]}, ValueError, "Unknown group 'nope'"),
        ({"candidates": [3, 4]}, ValueError, "Expected 0 to 3"),
        ({"candidates": [["g1", "g2", "g3", "head"]]}, ValueError, "nothing to train"),
        ({"candidates": "g1"}, TypeError, "list of cuts"),
        ({"candidates": [1.5]}, TypeError, "Received: 1.5"),
        ({"metric": "auc"}, ValueError, "Unknown metric 'auc'"),
        ({"validation_data": None}, ValueError, "validation_data=None"),
        ({"epochs": 0}, ValueError, "epochs"),
    ],
)
def test_bad_options_are_refused_before_training(trained, data, options, error, words):
    before = _weights(trained.model)
    arguments = {"validation_data": data[1], "epochs": 1, **options}
    with pytest.raises(error, match=words):
        trained.search_freeze(data[0], **arguments)
    for a, b in zip(before, _weights(trained.model), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_search_reads_back_from_its_record(tmp_path):
    rows = (
        FreezeCandidate(("a",), 1, 10, 1.5, {"loss": 0.5, "accuracy": 0.8}, True),
        FreezeCandidate((), 0, 30, 3.0, {"loss": 0.4, "accuracy": 0.7}, None),
    )
    search = FreezeSearch(rows, "loss", "min", 2, 4.5, "0 of 2")
    assert search.best.frozen == ()
    again = FreezeSearch.from_dict(search.to_dict())
    assert again == search
    assert search.to_dict()["best"] == []
    by_accuracy = FreezeSearch(rows, "accuracy", "max", 2, 4.5)
    assert by_accuracy.best.frozen == ("a",)
    pytest.importorskip("matplotlib")
    search.plot(tmp_path / "search.png")
    assert (tmp_path / "search.png").stat().st_size > 1000
