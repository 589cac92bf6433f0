"""What a run tells its user: the line of a phase restored from its folder,
the phase header's list of what trains, and a confusion figure whose class
names can be read."""

import keras
import pytest
from keras import layers
from tiny import IMAGE_SHAPE, NUM_CLASSES, make_data, make_model

from transferkit import LayerGroup, TransferRun


def make_run(directory=None, model=None, **options):
    return TransferRun(
        model or make_model(),
        optimizer="sgd",
        loss="sparse_categorical_crossentropy",
        batch_size=16,
        directory=directory,
        **options,
    )


def test_a_rerun_of_a_finished_phase_says_it_was_restored_not_trained(tmp_path, capsys):
    data = make_data(samples=32)
    folder = str(tmp_path / "run")
    with make_run(folder) as run:
        run.train(data, epochs=1, name="head")
    capsys.readouterr()

    with make_run(folder) as again:
        result = again.train(data, epochs=1, name="head")

    printed = capsys.readouterr().out
    assert printed == (
        f"phase 'head' finished earlier in {folder}: restored, not trained\n"
    )
    assert result.epochs == 1 and again.results == [result]


def test_a_restored_phase_is_silent_at_verbose_0(tmp_path, capsys):
    data = make_data(samples=32)
    with make_run(tmp_path, verbose=0) as run:
        run.train(data, epochs=1)
    with make_run(tmp_path, verbose=0) as again:
        again.train(data, epochs=1)
        again.train(data, epochs=1, verbose=1, name="more")

    printed = capsys.readouterr().out
    assert "restored, not trained" not in printed
    assert "Phase 'more': 1 epoch;" in printed


class StopAfterFirstEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise RuntimeError("stopped for the test")


def test_a_resumed_phase_keeps_its_header_and_a_finished_one_gets_one_line(
    tmp_path, capsys
):
    data = make_data(samples=32)
    with make_run(tmp_path) as run:
        run.train(data, epochs=1, name="head")
        with pytest.raises(RuntimeError, match="stopped for the test"):
            run.train(data, epochs=2, name="tune", callbacks=[StopAfterFirstEpoch()])
    capsys.readouterr()

    with make_run(tmp_path) as again:
        again.train(data, epochs=1, name="head")
        again.train(data, epochs=2, name="tune")

    lines = capsys.readouterr().out.splitlines()
    assert (
        lines.count(
            f"phase 'head' finished earlier in {tmp_path}: restored, not trained"
        )
        == 1
    )
    assert not any("'tune' finished earlier" in line for line in lines)
    assert any(
        line.startswith("Phase 'tune': 2 epochs, resumed after epoch 1;")
        for line in lines
    )


def weightless_first_model():
    preprocess = LayerGroup(
        "preprocess", [layers.Rescaling(1 / 255.0)], input_shape=IMAGE_SHAPE
    )
    features = LayerGroup("features", [layers.Conv2D(4, 3), layers.Flatten()])
    head = LayerGroup("head", [layers.Dense(NUM_CLASSES, activation="softmax")])
    return preprocess + features + head


def test_a_group_without_weights_is_not_listed_as_training(capsys):
    data = make_data(samples=32)
    run = make_run(model=weightless_first_model())

    run.train(data, epochs=1)
    run.fine_tune(data, freeze="features", epochs=1)

    printed = capsys.readouterr().out
    assert (
        "Phase 'train': 1 epoch; frozen: nothing; trains: features, head; "
        "no weights: preprocess; feature cache:"
    ) in printed
    assert (
        "Phase 'fine_tune': 1 epoch; frozen: features; trains: head; "
        "no weights: preprocess; feature cache:"
    ) in printed


def test_a_frozen_group_without_weights_is_listed_as_frozen_only(capsys):
    data = make_data(samples=32)
    run = make_run(model=weightless_first_model())

    run.fine_tune(data, freeze=["preprocess", "features"], epochs=1)

    printed = capsys.readouterr().out
    assert (
        "Phase 'fine_tune': 1 epoch; frozen: preprocess, features; trains: head; "
        "feature cache:"
    ) in printed


FASHION = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


@pytest.mark.parametrize(
    "names",
    [FASHION[:5], FASHION, [str(i) for i in range(12)]],
    ids=["5 names", "10 names", "12 ids"],
)
def test_the_confusion_figure_s_class_names_do_not_overlap_or_get_cut(names):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from transferkit.records.plots import plot_confusion_matrix

    size = len(names)
    matrix = [[(i * 7 + j * 3) % 11 for j in range(size)] for i in range(size)]
    figure = plot_confusion_matrix(
        {"phase": "fine_tune", "classes": names, "matrix": matrix}
    )
    try:
        figure.canvas.draw()  # Agg: lays the figure out as it is saved.
        renderer = figure.canvas.get_renderer()
        axis = figure.axes[0]
        labels = axis.get_xticklabels()
        assert [label.get_text() for label in labels] == names
        boxes = [label.get_window_extent(renderer) for label in labels]
        for left, right in zip(boxes, boxes[1:], strict=False):
            assert not left.overlaps(right), (left, right)
        page = figure.bbox
        for box in [
            *boxes,
            *(t.get_window_extent(renderer) for t in axis.get_yticklabels()),
        ]:
            assert page.x0 <= box.x0 and box.x1 <= page.x1, (box, page)
            assert page.y0 <= box.y0 and box.y1 <= page.y1, (box, page)
    finally:
        plt.close(figure)
