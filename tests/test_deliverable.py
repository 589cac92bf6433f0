"""From a trained model to one in use: predictions on image files with the
training's loading recipe, and exports (SavedModel, LiteRT, ONNX) checked
against the model, from Python and from the command line."""

import json
import os
import shutil
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import image_folder, make_data, make_model
from keras import layers

from transferkit import (
    ImagenetPreprocessing,
    LayerGroup,
    TransferRun,
    attach_groups,
    export,
)
from transferkit.cli import main
from transferkit.data.input_recipe import InputRecipe, recipe_of_dataset
from transferkit.engine.inference import predict
from transferkit.errors import ExportParityError
from transferkit.run_folder.loading import load_trained_model
from transferkit.serving.exporting import load_exported, metadata_path
from transferkit.serving.predictions import predict_files
from transferkit.serving.targets import staging_path


def folder_dataset(root, **kwargs):
    return keras.utils.image_dataset_from_directory(
        root, image_size=(12, 12), batch_size=8, verbose=False, seed=0, **kwargs
    )


def augmented_model():
    augment = LayerGroup(
        "augment",
        [layers.RandomFlip("horizontal"), layers.RandomRotation(0.2)],
        input_shape=(12, 12, 3),
    )
    features = LayerGroup(
        "features",
        [
            layers.Rescaling(1 / 255),
            layers.Conv2D(4, 3, activation="relu"),
            layers.BatchNormalization(),
            layers.GlobalAveragePooling2D(),
        ],
    )
    head = LayerGroup(
        "head", [layers.Dropout(0.2), layers.Dense(3, activation="softmax")]
    )
    return augment + features + head


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run folder of a model with augmentation layers, trained on a folder
    of PNG images loaded with bicubic interpolation."""
    root = tmp_path_factory.mktemp("deliverable")
    images = image_folder(root / "images", classes=3, per_class=8)
    keras.utils.set_random_seed(0)
    with TransferRun(
        augmented_model(),
        optimizer="adam",
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        verbose=0,
        directory=root / "run",
    ) as run:
        run.train(folder_dataset(images, interpolation="bicubic"), epochs=3)
    return run, images, root


def test_a_run_records_how_its_images_were_loaded_and_the_model_keeps_it(trained):
    run, images, root = trained
    expected = InputRecipe(
        image_size=(12, 12), color_mode="rgb", interpolation="bicubic"
    )

    assert run.model.input_recipe == expected.to_config()
    loaded = load_trained_model(root / "run")
    assert loaded.input_recipe == expected.to_config()
    assert loaded.class_names == ("class_0", "class_1", "class_2")


def test_predictions_on_files_load_them_as_the_training_dataset_did(trained):
    run, images, _ = trained
    dataset = folder_dataset(images, interpolation="bicubic", shuffle=False)
    expected = run.model.predict(dataset, verbose=0)

    predictions = run.predict(images)

    assert predictions.files == tuple(dataset.file_paths)
    np.testing.assert_allclose(predictions.outputs, expected, rtol=1e-6, atol=1e-7)
    labels = np.concatenate([y for _, y in dataset])
    np.testing.assert_array_equal(predictions.labels, labels)
    assert predictions.accuracy == np.mean(expected.argmax(axis=1) == labels)
    matrix = np.array(predictions.confusion()["matrix"])
    assert matrix.sum() == 24 and np.trace(matrix) == round(predictions.accuracy * 24)
    # One file alone, and the augmentation off: the same answer every time.
    one = run.predict([predictions.files[5]])
    np.testing.assert_allclose(one.outputs[0], expected[5], rtol=1e-6, atol=1e-7)
    assert one.labels is None and one.accuracy is None


def test_the_predict_step_gives_keras_outputs_for_every_form_of_data():
    x, y = make_data(samples=45)
    model = make_model(batch_norm=True, dropout=True)
    expected = model.predict(x, verbose=0)
    forms = {
        "arrays": x,
        "(x, y)": (x, y),
        "a dataset": tf.data.Dataset.from_tensor_slices((x, y)).batch(7),
        "a dataset of samples": tf.data.Dataset.from_tensor_slices(x).batch(7),
    }
    for name, data in forms.items():
        predictions = predict(model, data, batch_size=7)  # 7 batches, the last of 3.
        np.testing.assert_allclose(
            predictions.outputs, expected, rtol=1e-5, atol=1e-6, err_msg=name
        )
        if name in ("(x, y)", "a dataset"):
            np.testing.assert_array_equal(predictions.labels, y)
        else:
            assert predictions.labels is None


def test_a_recipe_is_read_from_the_pipeline_for_every_way_of_loading(tmp_path):
    images = image_folder(tmp_path, classes=2, per_class=2)
    wide = tf.io.encode_png(np.full((12, 20, 3), 90, "uint8")).numpy()
    (images / "class_0" / "wide.png").write_bytes(wide)
    for options in (
        {"interpolation": "nearest"},
        {"crop_to_aspect_ratio": True},
        {"pad_to_aspect_ratio": True, "interpolation": "area"},
        {"interpolation": "lanczos3", "crop_to_aspect_ratio": True},
        {"color_mode": "grayscale"},
    ):
        dataset = folder_dataset(images, shuffle=False, **options)
        recipe = recipe_of_dataset(dataset)
        mine = np.concatenate(list(recipe.dataset(dataset.file_paths, 8)))
        theirs = np.concatenate([x for x, _ in dataset])
        assert mine.tobytes() == theirs.tobytes(), options
    arrays = tf.data.Dataset.from_tensor_slices((np.zeros((4, 8, 8, 3)), np.zeros(4)))
    assert recipe_of_dataset(arrays.batch(2)) is None


def test_preprocessing_mapped_over_the_dataset_must_be_given_for_files(tmp_path):
    images = image_folder(tmp_path)
    mapped = folder_dataset(images).map(lambda x, y: (x / 127.5 - 1, y))
    recipe = recipe_of_dataset(mapped)
    assert recipe.pipeline_preprocessing
    assert not recipe_of_dataset(
        folder_dataset(images).map(lambda x, y: (x, y))
    ).pipeline_preprocessing
    model = keras.Sequential(
        [
            keras.Input((12, 12, 3)),
            layers.Flatten(),
            layers.Dense(3, activation="softmax"),
        ]
    )
    model.input_recipe = recipe.to_config()

    with pytest.raises(
        ValueError,
        match=r"whose pipeline changed the images after loading them .* or pass preprocess= the same function",
    ):
        predict_files(model, images)
    given = predict_files(model, images, preprocess=lambda x: x / 127.5 - 1)
    expected = model.predict(
        folder_dataset(images, shuffle=False).map(lambda x, y: x / 127.5 - 1), verbose=0
    )
    np.testing.assert_allclose(given.outputs, expected, rtol=1e-6)


def test_predictions_refuse_what_they_cannot_load(trained, tmp_path):
    run, images, _ = trained
    with pytest.raises(ValueError, match=r"No such file or folder: '.*missing.png'"):
        run.predict([str(tmp_path / "missing.png")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        ValueError, match=r"No images \(.bmp, .gif, .jpeg, .jpg, .png\)"
    ):
        run.predict(tmp_path / "empty")
    other = image_folder(tmp_path / "other", classes=2, per_class=1)
    (other / "class_1").rename(other / "owl")
    with pytest.raises(
        ValueError,
        match=r"The class folders \['class_0', 'owl'\] are not classes|The class folders \['owl'\] are not classes",
    ):
        run.predict(other)
    plain = keras.Sequential(
        [keras.Input((12, 12, 3)), layers.Flatten(), layers.Dense(3)]
    )
    with pytest.raises(
        ValueError,
        match=r"has no input recipe: .* Pass recipe=InputRecipe\(image_size=\(12, 12\)",
    ):
        predict_files(plain, images)
    with pytest.raises(
        ValueError,
        match=r"The recipe loads images of shape \(10, 10, 3\) \(10x10 rgb, bilinear\), but model .* takes \(12, 12, 3\)",
    ):
        predict_files(plain, images, recipe=InputRecipe((10, 10)))


def test_the_predict_command_writes_a_table_csv_and_json(trained, tmp_path, capsys):
    run, images, root = trained

    assert main(["predict", str(root / "run"), str(images), "--format", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert len(summary["predictions"]) == 24
    assert summary["accuracy"] == pytest.approx(run.predict(images).accuracy)
    assert set(summary["predictions"][0]) == {
        "file",
        "predicted",
        "probability",
        "probabilities",
        "true",
    }

    out = tmp_path / "predictions.csv"
    assert (
        main(
            [
                "predict",
                str(root / "run"),
                str(images / "class_1"),
                "--format",
                "csv",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    lines = out.read_text().splitlines()
    assert lines[0] == "file,predicted,probability,class_0,class_1,class_2"
    assert len(lines) == 9

    assert main(["predict", str(root / "run"), str(images)]) == 0
    assert "Accuracy: " in capsys.readouterr().out
    assert main(["predict", str(tmp_path / "nothing"), str(images)]) == 2
    assert "No such model file or run folder" in capsys.readouterr().err


def test_a_saved_model_export_serves_with_augmentation_off(trained, tmp_path):
    run, images, _ = trained
    x = np.concatenate([x for x, _ in folder_dataset(images)])
    expected = run.model(x, training=False).numpy()

    result = export(run.model, tmp_path / "served", samples=images, verbose=False)

    assert result.parity_max_difference <= 1e-5 and result.parity_samples == 24
    served = load_exported(tmp_path / "served", "tf_saved_model")
    np.testing.assert_allclose(served(x), expected, atol=1e-5)
    metadata = json.loads(
        metadata_path(tmp_path / "served", "tf_saved_model").read_text()
    )
    assert metadata["class_names"] == ["class_0", "class_1", "class_2"]
    assert metadata["input_recipe"]["interpolation"] == "bicubic"
    assert metadata["parity"]["max_difference"] == result.parity_max_difference
    # Keras' own export of the same model augments every request.
    run.model.export(str(tmp_path / "keras"), verbose=False)
    baked = tf.saved_model.load(str(tmp_path / "keras"))
    assert np.abs(baked.serve(x).numpy() - expected).max() > 1e-3


def test_litert_exports_float_and_quantized_with_accuracy_before_and_after(
    trained, tmp_path
):
    run, images, _ = trained
    results = {
        quantize: export(
            run.model,
            tmp_path / f"model-{quantize}.tflite",
            format="litert",
            quantize=quantize,
            samples=images,
            test_data=images,
            verbose=False,
        )
        for quantize in (None, "int8")  # "dynamic": in the export benchmark.
    }

    assert results[None].parity_max_difference <= 1e-5
    accuracy = run.predict(images).accuracy
    for quantize, result in results.items():
        assert result.accuracy["model"] == accuracy
        assert result.accuracy["samples"] == 24
        assert 0 <= result.accuracy["exported"] <= 1
        assert (tmp_path / f"model-{quantize}.tflite").stat().st_size > 0
    types = {q: tensor_types(tmp_path / f"model-{q}.tflite") for q in results}
    assert "int8" not in types[None]
    assert "int8" in types["int8"]
    assert results["int8"].parity_max_difference > 0
    assert results[None].accuracy["exported"] == accuracy


def tensor_types(path):
    with warnings.catch_warnings():  # TensorFlow's interpreter is deprecated.
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(path))
    return {np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}


def test_onnx_exports_where_its_converter_is_installed(trained, tmp_path):
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    run, images, _ = trained
    result = export(
        run.model, tmp_path / "model.onnx", format="onnx", samples=images, verbose=False
    )
    assert result.parity_max_difference <= 1e-5


def test_exports_refuse_bad_arguments_and_leave_nothing_half_written(trained, tmp_path):
    run, images, _ = trained
    with pytest.raises(
        ValueError,
        match=r"Expected `format` to be one of \['tf_saved_model', 'litert', 'onnx'\]. Received: 'tflite'",
    ):
        export(run.model, tmp_path / "m", format="tflite")
    with pytest.raises(
        ValueError,
        match=r"quantization is for format='litert'. Received: format='tf_saved_model', quantize='int8'",
    ):
        export(run.model, tmp_path / "m", quantize="int8")
    with pytest.raises(
        ValueError,
        match=r"quantize='int8' calibrates the activations on representative data: pass samples=",
    ):
        export(run.model, tmp_path / "m.tflite", format="litert", quantize="int8")
    kept = tmp_path / "kept.tflite"
    kept.write_bytes(b"the user's file")
    with pytest.raises(
        ValueError, match=r"exists; nothing was written. Pass overwrite=True"
    ):
        export(run.model, kept, format="litert")
    with pytest.raises(
        ExportParityError,
        match=r"differ from the model's by up to .* nothing was written",
    ):
        export(
            run.model,
            kept,
            format="litert",
            overwrite=True,
            tolerance=-1.0,
            verbose=False,
        )
    assert kept.read_bytes() == b"the user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.tflite"]


def test_the_export_command_checks_parity_on_the_given_folder(
    trained, tmp_path, capsys
):
    _, images, root = trained
    out = tmp_path / "model.tflite"
    assert main(["export", str(root / "run"), str(out), "--data", str(images)]) == 0
    printed = capsys.readouterr().out
    assert (
        "Parity: largest difference" in printed
        and "on 24 samples (the given samples)" in printed
    )
    assert "Accuracy on the test data: model" in printed
    assert (
        json.loads((tmp_path / "model.tflite.json").read_text())["format"] == "litert"
    )
    quantized = ["export", str(root / "run"), str(tmp_path / "q.tflite")]
    assert main([*quantized, "--quantize", "int8"]) == 2
    assert "--quantize int8 calibrates on representative images: pass --data" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "mode, preprocess_input",
    [
        ("tf", keras.applications.mobilenet_v2.preprocess_input),
        ("torch", keras.applications.densenet.preprocess_input),
        ("caffe", keras.applications.resnet50.preprocess_input),
    ],
)
def test_the_preprocessing_layer_computes_the_applications_preprocess_input(
    tmp_path, mode, preprocess_input
):
    x = np.random.default_rng(0).uniform(0, 255, (4, 5, 5, 3)).astype("float32")
    model = keras.Sequential([keras.Input((5, 5, 3)), ImagenetPreprocessing(mode)])

    np.testing.assert_allclose(
        model(x), preprocess_input(x.copy()), rtol=1e-6, atol=1e-5
    )
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(loaded(x), model(x))
    with pytest.raises(
        ValueError, match=r"one of \['tf', 'torch', 'caffe'\]. Received: 'inception'"
    ):
        ImagenetPreprocessing("inception")


def listing(folder):
    """Every file under `folder` with its bytes."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_export_replaces_only_an_earlier_export_of_its_own(trained, tmp_path):
    """`overwrite=True` never deletes what export did not write: a run folder
    (locked or not), a folder of notes and other exports, a folder where a
    file goes; each is refused before any work, and left as it was."""
    run, images, root = trained
    run_folder = tmp_path / "run"
    shutil.copytree(root / "run", run_folder)
    locked = tmp_path / "training"
    locked.mkdir()
    (locked / "run.lock").write_text("pid 123")
    mixed = tmp_path / "exports"
    mixed.mkdir()
    (mixed / "notes.txt").write_text("my notes")
    (mixed / "model.tflite").write_bytes(b"another export")
    before = {folder: listing(folder) for folder in (run_folder, locked, mixed)}
    cases = [
        (run_folder, "tf_saved_model", r"is a run folder \(it holds run.json\)"),
        (locked, "tf_saved_model", r"is a run folder \(it holds run.lock\)"),
        (mixed, "tf_saved_model", r"holds files that no SavedModel export writes "
         r"\(model.tflite, notes.txt\)"),
        (mixed / "model.tflite", "onnx", "A onnx export is one file ending in '.onnx'"),
        (tmp_path / "missing" / "m.tflite", "litert",
         r"The folder '.*missing' for the export .* does not exist; nothing was"),
    ]  # fmt: skip
    for target, format, message in cases:
        with pytest.raises(ValueError, match=message):
            export(run.model, target, format=format, overwrite=True, verbose=False)
    folder_as_file = tmp_path / "folder.tflite"
    folder_as_file.mkdir()
    with pytest.raises(ValueError, match="is a folder, not the file of an export"):
        export(run.model, folder_as_file, format="litert", overwrite=True)

    assert {folder: listing(folder) for folder in before} == before
    assert main(["export", str(run_folder), str(run_folder), "--overwrite"]) == 2
    assert listing(run_folder) == before[run_folder]


def test_export_replaces_its_own_earlier_export(trained, tmp_path):
    run, images, _ = trained
    served = tmp_path / "served"
    export(run.model, served, samples=images, verbose=False)
    (served / "variables" / "stale").write_text("from the first export")

    export(run.model, served, samples=images, overwrite=True, verbose=False)

    assert not (served / "variables" / "stale").exists()
    assert json.loads((served / "transferkit.json").read_text())["format"] == (
        "tf_saved_model"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["served"]  # No staging.
    (served / "notes.txt").write_text("mine now")
    with pytest.raises(ValueError, match=r"holds files .* \(notes.txt\)"):
        export(run.model, served, samples=images, overwrite=True, verbose=False)
    assert (served / "notes.txt").read_text() == "mine now"


def test_two_exports_to_one_path_stage_under_names_of_their_own(tmp_path):
    target = tmp_path / "m.tflite"
    first, second = staging_path(target), staging_path(target)
    assert first != second and first.parent == second.parent == tmp_path
    assert first.name.startswith(".m.partial-") and first.suffix == ".tflite"
    assert f"-{os.getpid()}-" in first.name


def test_predict_output_never_replaces_a_file_without_overwrite(
    trained, tmp_path, capsys
):
    run, images, root = trained
    out = tmp_path / "predictions.csv"
    out.write_text("the user's earlier predictions\n")
    command = ["predict", str(root / "run"), str(images / "class_1")]
    command += ["--format", "csv", "--output", str(out)]

    assert main(command) == 2
    assert "predictions.csv' exists; nothing was written. Pass --overwrite" in (
        capsys.readouterr().err
    )
    assert out.read_text() == "the user's earlier predictions\n"
    assert main([*command, "--overwrite"]) == 0
    assert out.read_text().startswith("file,predicted,probability,")


def test_exports_and_predictions_check_their_arguments_before_any_work(
    trained, tmp_path, capsys
):
    run, images, root = trained
    cases = [
        ({"samples": np.zeros((4, 8, 8, 3), "float32")}, ValueError,
         r"The samples have shape \(8, 8, 3\), but the model takes \(.*\); nothing "
         r"was written"),
        ({"samples": []}, ValueError, "Expected at least one sample in `samples`"),
        ({"tolerance": "big"}, TypeError,
         r"Expected `tolerance` to be a number.* Received: tolerance='big'"),
    ]  # fmt: skip
    for options, error, message in cases:
        with pytest.raises(error, match=message):
            export(run.model, tmp_path / "m", verbose=False, **options)
    with pytest.raises(ValueError, match=r"Expected `path` to name the export"):
        export(run.model, ".", verbose=False)
    zoo = tmp_path / "zoo"
    shutil.copytree(images / "class_1", zoo / "zebra")
    with pytest.raises(
        ValueError,
        match=r"class folders named as the model's classes \['class_0', 'class_1', "
        r"'class_2'\], .*; the folders \['zebra'\] are not among them. Nothing was",
    ):
        export(run.model, tmp_path / "m", test_data=zoo, verbose=False)
    shutil.rmtree(zoo)
    assert list(tmp_path.iterdir()) == []

    with pytest.raises(TypeError, match=r"Received: batch_size=2.5"):
        run.predict(images, batch_size=2.5)
    with pytest.raises(ValueError, match="Received: an empty list"):
        run.predict([])
    two = sorted((images / "class_1").iterdir())[:2]
    assert len(run.predict((str(two[0]), str(two[1]))).files) == 2  # Not (x, y).
    command = ["predict", str(root / "run"), str(images), "--batch-size"]
    assert main([*command, "0"]) == 2
    assert "Expected `batch_size` to be a positive integer. Received: batch_size=0" in (
        capsys.readouterr().err
    )


def test_a_bad_image_file_is_named_and_skipped_or_refused(trained, tmp_path, capsys):
    """A zero-byte PNG, a truncated one and a text file among the images:
    predictions name and skip them (or refuse them all, strictly); an
    export refuses its data naming them, before any work."""
    run, images, root = trained
    folder = tmp_path / "images"
    shutil.copytree(images, folder)
    good = sorted((folder / "class_0").iterdir())[0].read_bytes()
    (folder / "class_0" / "empty.png").write_bytes(b"")
    (folder / "class_1" / "truncated.png").write_bytes(good[: len(good) // 2])
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")

    predictions = run.predict([folder, notes])

    assert len(predictions.files) == 24
    skipped = dict(predictions.skipped)
    assert skipped[str(folder / "class_0" / "empty.png")] == "an empty file"
    assert skipped[str(folder / "class_1" / "truncated.png")].startswith(
        "not a readable image: "
    )
    assert "Unknown image file format" in skipped[str(notes)]
    assert "Skipped 3 files that are no readable image:" in predictions.table()
    with pytest.raises(ValueError, match=r"3 of 27 files are no readable image: .*"
                       r"empty.png' \(an empty file\).* Nothing was predicted"):  # fmt: skip
        predict_files(run.model, [folder, notes], strict=True)
    command = ["predict", str(root / "run"), str(folder), "--format", "csv"]
    assert main(command) == 0
    printed = capsys.readouterr()
    assert len(
        printed.out.strip().splitlines()
    ) == 25 and "empty.png: an empty file" in (printed.err)
    assert main([*command, "--strict"]) == 2
    with pytest.raises(ValueError, match=r"files of `samples` are no readable image"):
        export(run.model, tmp_path / "m", samples=folder, verbose=False)
    assert not (tmp_path / "m").exists()


def test_export_refuses_a_model_of_several_inputs_naming_them(tmp_path):
    inputs = {
        "tokens": keras.Input((4,), name="tokens"),
        "mask": keras.Input((4,), name="mask"),
    }
    joined = layers.Concatenate()([inputs["tokens"], inputs["mask"]])
    model = keras.Model(
        inputs, layers.Dense(2, activation="softmax")(joined), name="two"
    )

    with pytest.raises(
        ValueError,
        match=r"model 'two' takes 2 \(\['(mask|tokens)', '(mask|tokens)'\]\)\. Nothing was written",
    ):
        export(model, tmp_path / "m", verbose=False)
    assert list(tmp_path.iterdir()) == []


def test_predictions_of_a_model_of_named_inputs_name_a_missing_one():
    inputs = {
        "tokens": keras.Input((4,), name="tokens"),
        "mask": keras.Input((4,), name="mask"),
    }
    joined = layers.Concatenate(name="join")([inputs["tokens"], inputs["mask"]])
    model = keras.Model(
        inputs, layers.Dense(2, activation="softmax", name="head")(joined)
    )
    groups = LayerGroup.match(model, {"join": "join", "head": "head"})
    run = TransferRun(attach_groups(model, groups), optimizer="sgd", loss="mse")
    x = np.ones((3, 4), "float32")

    with pytest.raises(
        ValueError,
        match=r"Expected `data` \(x\) to be a dict of the model's inputs, \['mask', 'tokens'\]. Received: \['tokens'\]",
    ):
        run.predict({"tokens": x})
    assert run.predict({"tokens": x, "mask": x}).outputs.shape == (3, 2)


def test_a_full_disk_during_an_export_says_so_and_leaves_nothing(
    trained, tmp_path, monkeypatch
):
    run, images, _ = trained
    served = tmp_path / "served"
    export(run.model, served, samples=images, verbose=False)
    before = listing(served)

    def full(self, path, **options):
        Path(path).mkdir()
        (Path(path) / "saved_model.pb").write_bytes(b"half")
        raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")

    monkeypatch.setattr(keras.Model, "export", full)
    with pytest.raises(OSError, match=r"Could not write the tf_saved_model export in "
                       r"'.*' \(No space left on device\); nothing was written"):  # fmt: skip
        export(run.model, served, samples=images, overwrite=True, verbose=False)
    assert listing(served) == before  # The earlier export is intact,
    assert sorted(p.name for p in tmp_path.iterdir()) == ["served"]  # no staging.
    with pytest.raises(TypeError, match="Received bytes; decode them first"):
        run.predict(b"photo.png")
