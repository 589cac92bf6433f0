"""The image task: a folder of images to a fine-tuned, reported, exported
model in one call, and `transferkit train` on the command line. Offline: a
MobileNetV2 weights file the test makes, 32x32 digits from the shipped
sample."""

import json

import keras
import numpy as np
import pytest

import transferkit
from tests.image_folders import CLASSES, weights_file, write_folders
from transferkit import ImageClassifierTask, ImageRecipe
from transferkit.cli import main

# One process for the module: its fitted task is made once.
pytestmark = pytest.mark.xdist_group("image_task")

QUICK = dict(image_size=32, epochs=1, fine_tune_epochs=1, batch_size=16, verbose=0)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    # A tiny keras-hub preset: for the tests of the data's plumbing, a
    # backbone that builds in a fraction of a second.
    _tiny_hub_preset(root / "preset")
    hub = dict(backbone=str(root / "preset"), **QUICK)
    return {**write_folders(root), "weights": weights_file(root), "hub": hub}


@pytest.fixture(scope="module")
def fitted(folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "photos"
    task = transferkit.train_image_classifier(
        folders["train"],
        test=folders["test"],
        out=out,
        weights=folders["weights"],
        **QUICK,
    )
    task.close()
    return task, out


def _layer_weights(layers):
    return {
        layer.name: [np.array(w) for w in layer.get_weights()]
        for layer in layers
        if layer.get_weights()
    }


def test_one_call_trains_reports_and_predicts(fitted, folders):
    task, out = fitted
    predictions = task.predict([folders["loose"]])

    report = json.loads((out / "report.json").read_text())
    assert [p["name"] for p in report["phases"]] == ["head", "top"]
    assert all(p["frozen_unchanged"] for p in report["phases"])
    assert report["settings"]["classes"] == list(CLASSES)
    assert report["settings"]["recipe"]["epochs"] == 1
    assert report["settings"]["backbone"] == "MobileNetV2"
    assert report["confusion_matrix"]["classes"] == list(CLASSES)
    assert np.sum(report["confusion_matrix"]["matrix"]) == 3 * 8
    assert report["top_losses"]["rows"][0]["file"].endswith(".png")
    assert (out / "report.md").is_file()
    evaluated = task.evaluate()
    assert report["phases"][-1]["test_accuracy"] == pytest.approx(
        evaluated["accuracy"], abs=1e-6
    )
    assert len(predictions.files) == 4
    assert set(predictions.predicted_names) <= set(CLASSES)


def test_the_top_stage_trains_and_the_stages_below_keep_their_weights(fitted, folders):
    task, _ = fitted
    keras.utils.set_random_seed(1)
    original = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), include_top=False, weights=None
    )
    original.load_weights(folders["weights"])
    before = _layer_weights(original.layers)
    groups = task.model.groups
    stages = task.backbone.stages
    for name in stages[:-1]:
        for layer, values in _layer_weights(groups[name].layers).items():
            for a, b in zip(values, before[layer], strict=True):
                np.testing.assert_array_equal(a, b)
    changed = [
        not np.array_equal(a, b)
        for layer, values in _layer_weights(groups[stages[-1]].layers).items()
        for a, b in zip(values, before[layer], strict=True)
    ]
    assert any(changed)


def test_a_rerun_restores_without_training_and_sums_the_time(fitted, folders, capsys):
    task, out = fitted
    first = json.loads((out / "report.json").read_text())
    weights = [keras.ops.convert_to_numpy(v) for v in task.model.weights]
    again = transferkit.train_image_classifier(
        folders["train"],
        test=folders["test"],
        out=out,
        weights=folders["weights"],
        **{**QUICK, "verbose": 1},
    )
    again.close()
    printed = capsys.readouterr().out
    assert f"phase 'head' finished earlier in {out}" in printed
    assert f"phase 'top' finished earlier in {out}" in printed
    for a, b in zip(weights, again.model.weights, strict=True):
        np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(b))
    report = again.report
    phase_seconds = sum(p["seconds"] for p in first["phases"])
    assert report["seconds"]["earlier_processes"] == pytest.approx(phase_seconds)
    assert report["total_seconds"] > phase_seconds


def test_an_imbalanced_folder_gets_balanced_class_weights(tmp_path, folders):
    paths = write_folders(tmp_path, train=(24, 8, 8), test=4)
    task = ImageClassifierTask(paths["train"], test=paths["test"], **folders["hub"])
    assert task.class_weight == "balanced"
    assert task.data.counts == [24, 8, 8]
    assert task.settings()["class_weight"] == "balanced"
    even = ImageClassifierTask(
        folders["train"],
        test=folders["test"],
        class_weights="auto",
        **folders["hub"],
    )
    assert even.class_weight is None
    assert even.data.described["validation"] == str(folders["test"])


def test_a_split_beside_a_test_folder_validates_and_the_test_folder_tests(folders):
    task = ImageClassifierTask(
        folders["train"],
        test=folders["test"],
        validation_split=0.25,
        **folders["hub"],
    )
    assert task.data.validation is not task.data.test
    assert len(task.data.validation.file_paths) == 12  # A quarter of 48.
    assert len(task.data.test.file_paths) == 24
    assert task.data.described["tested_on"] == "the test folder"


def test_hidden_and_nested_folders_count_as_keras_reads_them(tmp_path, folders):
    paths = write_folders(tmp_path, train=(8, 8, 8), test=2)
    (paths["train"] / ".ipynb_checkpoints").mkdir()
    nested = paths["train"] / CLASSES[0] / "more"
    nested.mkdir()
    for image in sorted((paths["train"] / CLASSES[0]).glob("*.png"))[:4]:
        (nested / image.name).write_bytes(image.read_bytes())
    task = ImageClassifierTask(paths["train"], test=paths["test"], **folders["hub"])
    assert task.class_names == list(CLASSES)
    assert task.data.counts == [12, 8, 8]


def test_the_command_s_finished_check_sees_a_changed_folder(folders, tmp_path):
    import argparse

    from transferkit.cli.train import _command_settings

    paths = write_folders(tmp_path, train=(4, 4, 4), test=2)
    args = argparse.Namespace(
        train_dir=str(paths["train"]), test=None, backbone="MobileNetV2",
        weights="imagenet", validation_split=None, image_size=None, alpha=None,
        epochs=1, fine_tune_epochs=0, batch_size=16, seed=0, search_freeze=False,
    )  # fmt: skip
    before = _command_settings(args)
    assert _command_settings(args) == before
    extra = paths["train"] / CLASSES[1] / "extra.png"
    extra.write_bytes((paths["train"] / CLASSES[1] / "000.png").read_bytes())
    assert _command_settings(args)["train_files"] != before["train_files"]


def test_without_a_test_folder_a_fifth_is_held_out(folders):
    task = ImageClassifierTask(folders["train"], **folders["hub"])
    assert task.data.described["validation"].startswith("20% of ")
    assert len(task.data.train.file_paths) + len(task.data.test.file_paths) == 48


@pytest.mark.parametrize(
    "options, message",
    [
        (
            dict(epochs=0),
            r"Expected `epochs` to be an integer >= 1. Received: epochs=0",
        ),
        (dict(learning_rate=-1), r"positive number or 'sweep'.*learning_rate=-1"),
        (dict(augmentation="flip"), r"tuple of names from \['contrast'.*'flip'"),
        (dict(augmentation=("blur",)), r"Received: augmentation=\('blur',\)"),
        (dict(class_weights="even"), r"one of \['auto', 'balanced', 'none'\]"),
        (dict(dropout=1.0), r"in \[0, 1\). Received: dropout=1.0"),
    ],
)
def test_recipe_refuses_bad_values(options, message):
    with pytest.raises(ValueError, match=message):
        ImageRecipe(**options)


def test_unknown_options_are_refused_naming_the_fields():
    with pytest.raises(TypeError, match=r"Unknown option\(s\) \['epoch'\]"):
        ImageRecipe.of(None, {"epoch": 3})


def test_random_weights_are_refused(folders):
    with pytest.raises(ValueError, match=r"next to nothing.*Received: weights=None"):
        ImageClassifierTask(folders["train"], weights=None, image_size=32)


def test_folders_are_checked_before_anything_is_built(tmp_path, folders):
    with pytest.raises(ValueError, match=r"No folder at '.*nowhere'"):
        ImageClassifierTask(tmp_path / "nowhere", **folders["hub"])
    (tmp_path / "odd" / "zero").mkdir(parents=True)
    (tmp_path / "odd" / "three").mkdir()
    with pytest.raises(ValueError, match=r"test folder's classes must be"):
        ImageClassifierTask(
            folders["train"],
            test=tmp_path / "odd",
            **folders["hub"],
        )


def test_the_command_trains_exports_and_then_says_it_is_finished(
    folders, tmp_path, capsys
):
    # A tiny keras-hub preset folder as the backbone: the command's own work
    # is what this test checks, not MobileNetV2's tracing.
    preset = tmp_path / "preset"
    _tiny_hub_preset(preset)
    # A SavedModel: the quickest export to check (the .tflite's labels are
    # checked in test_tflite_labels).
    out, artifact = tmp_path / "run", tmp_path / "export"
    arguments = [
        "train",
        str(folders["train"]),
        "--out",
        str(out),
        "--test",
        str(folders["test"]),
        "--backbone",
        str(preset),
        "--epochs",
        "1",
        "--fine-tune-epochs",
        "1",
        "--export",
        str(artifact),
        "--format",
        "tf_saved_model",
        "--verbose",
        "0",
        "--search-freeze",
    ]
    assert main(arguments) == 0
    report = transferkit.load_report(out)
    assert [p["name"] for p in report["phases"]] == ["head", "top"]
    # The search tried the top 0, 1 and 2 stages; "top" froze what it chose.
    (search,) = report["freeze_searches"]
    assert [row["frozen"] for row in search["rows"]] == [
        ["stage_1", "stage_2"],
        ["stage_1"],
        [],
    ]
    assert report["phases"][-1]["frozen_groups"] == search["best"]
    assert report["settings"]["validation"].startswith("20% of ")
    assert report["settings"]["library"] == "keras-hub"
    assert report["phases"][-1]["test_accuracy"] is not None
    assert (artifact / "labels.txt").read_text().split() == list(CLASSES)
    assert (artifact / "saved_model.pb").is_file()
    checkpoint = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()

    assert main(arguments) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1
    assert printed[0].startswith(f"{out}: finished earlier (2 stages, accuracy "), (
        printed
    )
    assert "on the test folder); nothing trained." in printed[0]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == checkpoint

    # The task on the same folder restores "top" with the stages the folder
    # recorded, without searching again.
    task = ImageClassifierTask(
        folders["train"],
        out=out,
        test=folders["test"],
        backbone=str(preset),
        fine_tune_stages="search",
        **{k: v for k, v in QUICK.items() if k != "image_size"},
    ).fit()
    task.close()
    assert task.freeze_search is None
    frozen = set(search["best"])
    assert task.trained_stages == tuple(
        s for s in ("stage_1", "stage_2") if s not in frozen
    )
    assert task.report["freeze_searches"] == report["freeze_searches"]


def test_the_command_checks_its_export_path_before_training(folders, tmp_path, capsys):
    arguments = ["train", str(folders["train"]), "--out", str(tmp_path / "run")]
    arguments += ["--export", str(tmp_path / "missing" / "m.tflite")]
    assert main(arguments) == 2
    assert "does not exist; nothing was written" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_command_refuses_random_weights(folders, tmp_path, capsys):
    code = main(
        ["train", str(folders["train"]), "--out", str(tmp_path), "--weights", "none"]
    )
    assert code == 2
    assert "next to nothing" in capsys.readouterr().err


def test_every_option_of_every_command_has_help():
    import argparse

    from transferkit.cli.main import build_parser

    commands = next(
        action
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    missing = [
        f"{name} {action.dest}"
        for name, parser in commands.choices.items()
        for action in parser._actions
        if not action.help and not isinstance(action, argparse._HelpAction)
    ]
    assert set(commands.choices) == {"report", "predict", "export", "train"}
    assert missing == []


def _tiny_hub_preset(folder):
    keras_hub = pytest.importorskip("keras_hub")
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 16],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
        use_pre_activation=False,
        image_shape=(None, None, 3),
    )
    backbone.save_to_preset(folder)
    converter = keras_hub.layers.ResNetImageConverter(
        image_size=(32, 32), scale=1 / 255
    )
    converter.save_to_preset(folder)
    return backbone


def test_a_keras_hub_preset_folder_is_a_backbone_offline(folders, tmp_path):
    preset = tmp_path / "preset"
    saved = _tiny_hub_preset(preset)
    task = ImageClassifierTask(
        folders["train"],
        test=folders["test"],
        backbone=str(preset),
        epochs=1,
        fine_tune_epochs=0,
        batch_size=16,
        verbose=0,
    ).fit()
    assert task.backbone.stages == ("stage_1", "stage_2")
    assert task.report["settings"]["library"] == "keras-hub"
    assert task.report["settings"]["image_size"] == 32
    # The preset's weights, frozen: bitwise those saved.
    for saved_weight, trained in zip(
        saved.weights, task.backbone.model.weights, strict=True
    ):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(saved_weight),
            keras.ops.convert_to_numpy(trained),
        )


def test_without_network_imagenet_weights_fail_naming_every_way_out(monkeypatch):
    from transferkit.backbones import load_backbone

    def offline(fname, origin, **options):
        raise Exception(
            f"URL fetch failure on {origin}: None -- [Errno -2] Name or service "
            "not known"
        )

    with pytest.raises(OSError) as raised:
        load_backbone("MobileNetV2", weights="imagenet", image_size=96)
    message = str(raised.value)
    file = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5"
    assert f"~/.keras/models/{file} (not there) and https://" in message
    assert "Name or service not known" in message
    for way in ("network access", "weights=PATH", "keras-hub preset folder"):
        assert way in message


def test_a_bad_weights_file_names_the_file_and_what_would_do(tmp_path):
    from transferkit.backbones import load_backbone

    bad = tmp_path / "weights.h5"
    bad.write_bytes(b"not weights")
    with pytest.raises(
        OSError, match=r"Could not load '.*weights.h5' as the weights of MobileNetV2"
    ):
        load_backbone("MobileNetV2", weights=bad, image_size=32)
    with pytest.raises(OSError, match=r"No weights file at '.*missing.h5'"):
        load_backbone("MobileNetV2", weights=tmp_path / "missing.h5", image_size=32)


def test_a_size_below_the_backbone_s_smallest_is_refused():
    from transferkit.backbones import load_backbone

    with pytest.raises(ValueError, match=r"at least 32x32.*Received: image_size=16"):
        load_backbone("MobileNetV2", weights=None, image_size=16)
