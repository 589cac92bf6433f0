"""The pretrained-backbone example, end to end on small inputs."""

import dataclasses
import json
import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import load_script, shipped_digits

EXAMPLE = Path(__file__).parents[1] / "examples" / "pretrained_backbone.py"


@pytest.fixture(scope="module")
def example():
    return load_script(EXAMPLE)


def test_the_offline_default_pretrains_then_transfers_in_cached_stages(
    example, tmp_path
):
    digits = shipped_digits(tmp_path / "few.npz", train=300, test=100)
    out = tmp_path / "run"
    args = ["--data", digits, "--pretrain-epochs", "1", "--epochs", "1"]
    args += ["--batch-size", "32", "--out", out, "--verbose", "0"]

    report = example.main(list(map(str, args)))

    assert [p["name"] for p in report["phases"]] == ["pretrain", "head", "top", "all"]
    pretrain, head, top, everything = report["phases"]
    assert pretrain["frozen_groups"] == [] and "trained" in pretrain["batch_norm"]
    assert head["frozen_groups"] == ["bottom", "top"]
    # The backbone's preprocessing is the model's first layer, cached with it.
    assert re.search(
        r"layers imagenet_preprocessing(_\d+)?..out_relu: covers the frozen groups$",
        head["cache"],
    )
    assert top["frozen_groups"] == ["bottom"]
    assert "ends at 'block_12_add' in 'mobilenetv2_1.00_32'" in top["cache"]
    assert top["lr_multipliers"] == {"top": 0.1}
    assert top["batch_norm"].endswith("in inference mode")
    assert head["frozen_unchanged"] is True and top["frozen_unchanged"] is True
    assert everything["frozen_groups"] == [] and everything["cache_code"] == (
        "nothing_frozen"
    )
    assert everything["lr_multipliers"] == {"bottom": 0.3, "top": 0.3}
    assert head["classes"] == [5, 6, 7, 8, 9]
    assert json.loads((out / "report.json").read_text())["phases"][3]["name"] == "all"
    assert (out / "learning_curves.png").is_file()
    mistakes = report["top_losses"]
    fives_to_nines = np.isin(np.load(digits)["y_test"], range(5, 10)).sum()
    assert mistakes["total"] == fives_to_nines and mistakes["rows"]
    assert all(row["true"] != row["predicted"] for row in mistakes["rows"])
    assert {row["true"] for row in mistakes["rows"]} <= {5, 6, 7, 8, 9}
    assert (out / "top_losses.png").is_file() and (
        out / "confusion_matrix.png"
    ).is_file()

    # Resuming a finished run is the run folder's, tested in
    # test_run_directory and on the other examples.


def _images(folder):
    rng = np.random.default_rng(0)
    for label in ("cats", "dogs"):
        (folder / label).mkdir(parents=True)
        for index in range(5):
            pixels = rng.integers(0, 255, size=(40, 40, 3)).astype("uint8")
            png = tf.io.encode_png(pixels).numpy()
            (folder / label / f"{index}.png").write_bytes(png)
    return folder


def test_a_folder_of_images_needs_pretrained_weights(example, tmp_path, capsys):
    images = _images(tmp_path / "images")
    with pytest.raises(SystemExit):  # A random backbone: refused, saying why.
        example.main(["--images", str(images)])
    assert "--images needs pretrained weights" in capsys.readouterr().err


# Slow: the image task's tests train on image folders with a weights file in
# the default suite; this is the example's own path through them.
@pytest.mark.slow
def test_a_folder_of_images_transfers_with_a_weights_file(example, tmp_path):
    _images(tmp_path / "images")
    weights = tmp_path / "backbone.weights.h5"
    keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), include_top=False, weights=None
    ).save_weights(weights)

    report = example.main(
        ["--images", str(tmp_path / "images"), "--weights", str(weights)]
        + ["--epochs", "1", "--verbose", "0"]
    )

    assert [p["name"] for p in report["phases"]] == ["head", "top", "all"]
    assert report["settings"]["class_names"] == ["cats", "dogs"]
    assert report["phases"][0]["cache"].split(";")[0].endswith("MiB in memory")
    assert report["phases"][1]["frozen_unchanged"] is True
    # The test images are named in the top losses; the confusion matrix counts
    # them all (2 of the 10 files, by the 80/20 split).
    rows = report["top_losses"]["rows"]
    assert all(row["file"].endswith(".png") for row in rows)
    assert sum(map(sum, report["confusion_matrix"]["matrix"])) == 2


def test_imagenet_weights_offline_fail_in_one_line_with_a_way_out(
    example, monkeypatch, tmp_path
):
    def offline(**kwargs):
        raise Exception(
            "URL fetch failure on https://example.invalid/w.h5: None -- "
            "[Errno -3] Temporary failure in name resolution"
        )

    backbone = dataclasses.replace(example.BACKBONES["MobileNetV2"], build=offline)
    monkeypatch.setitem(example.BACKBONES, "MobileNetV2", backbone)
    digits = shipped_digits(tmp_path / "few.npz", train=100, test=100)

    with pytest.raises(OSError) as raised:
        example.main(["--weights", "imagenet", "--data", str(digits)])

    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(
        "could not download the ImageNet weights of MobileNetV2 ([Errno -3] "
        "Temporary failure in name resolution). Without network access, run with "
        "--weights none"
    )


def test_a_missing_weights_file_is_refused_up_front(example, capsys):
    with pytest.raises(SystemExit):
        example.main(["--weights", "no/such/file.weights.h5"])
    assert "no file at 'no/such/file.weights.h5'" in capsys.readouterr().err


def test_every_backbone_splits_at_its_cut(example):
    for name, backbone in example.BACKBONES.items():
        model = example.build_model(backbone, None, 5, backbone.size)
        bottom = model.groups["bottom"]
        assert bottom[-1].name == backbone.cut, name
        assert model.output_shape == (None, 5)
        keras.backend.clear_session()
