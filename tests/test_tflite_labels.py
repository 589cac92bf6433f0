"""The class names an export carries: `labels.txt` beside (or inside) it,
and inside a `.tflite` as standard TFLite metadata, read back by
`read_tflite_labels` and as the zip archive appended to the model."""

import json
import re
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from keras import layers
from tensorflow.lite.python import schema_py_generated as schema

from transferkit import LayerGroup, export
from transferkit.data.input_recipe import InputRecipe
from transferkit.serving import read_tflite_labels
from transferkit.serving.exporting import load_exported
from transferkit.serving.targets import check_labels, write_labels
from transferkit.serving.tflite_labels import with_labels

NAMES = ["cat", "dog", "fish"]
DOCS = Path(__file__).parents[1] / "docs" / "image-folders.md"


def classifier():
    """A tiny untrained image classifier of 12x12 RGB images, with class
    names and the recipe of images loaded from folders."""
    features = LayerGroup(
        "features",
        [
            layers.Rescaling(1 / 255),
            layers.Conv2D(4, 3, activation="relu"),
            layers.GlobalAveragePooling2D(),
        ],
        input_shape=(12, 12, 3),
    )
    model = features + LayerGroup("head", [layers.Dense(3, activation="softmax")])
    model.class_names = NAMES
    model.input_recipe = InputRecipe(image_size=(12, 12)).to_config()
    return model


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """One model exported four ways: LiteRT float and int8 with class names,
    LiteRT without them, and a SavedModel folder."""
    root = tmp_path_factory.mktemp("labels")
    model = classifier()
    x = np.random.default_rng(0).uniform(0, 255, (8, 12, 12, 3)).astype("float32")
    for folder in ("labelled", "int8", "plain"):
        (root / folder).mkdir()
    results = {
        "labelled": export(
            model, root / "labelled" / "model.tflite", format="litert", verbose=False
        ),
        "int8": export(
            model,
            root / "int8" / "model.tflite",
            format="litert",
            quantize="int8",
            samples=x,
            verbose=False,
        ),
        "served": export(model, root / "served", samples=x, verbose=False),
    }
    model.class_names = None
    results["plain"] = export(
        model, root / "plain" / "model.tflite", format="litert", verbose=False
    )
    model.class_names = NAMES
    return SimpleNamespace(root=root, model=model, x=x, **results)


def metadata_entries(path):
    """`{name: buffer bytes}` of the model's `metadata` list, read with
    TensorFlow's own TFLite schema."""
    data = Path(path).read_bytes()
    model = schema.Model.GetRootAs(data, 0)
    entries = {}
    for index in range(model.MetadataLength()):
        entry = model.Metadata(index)
        buffer = model.Buffers(entry.Buffer())
        entries[entry.Name().decode()] = buffer.DataAsNumpy().tobytes()
    return entries


def test_a_litert_export_carries_its_labels_as_tflite_metadata(exports):
    for result in (exports.labelled, exports.int8):
        path = result.path
        assert read_tflite_labels(path) == NAMES
        with zipfile.ZipFile(path) as archive:
            assert archive.read("labels.txt") == b"cat\ndog\nfish\n"
            (entry,) = archive.infolist()
            assert entry.compress_type == zipfile.ZIP_STORED
        metadata = metadata_entries(path)["TFLITE_METADATA"]
        assert metadata[4:8] == b"M001"
        for field in (b"image", b"labels.txt", b"1.0.0"):  # min_parser_version
            assert field in metadata
        assert result.labels == str(Path(path).with_name("labels.txt"))
    interpreter = Interpreter(model_path=exports.int8.path)
    assert "int8" in {
        np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()
    }


def test_the_labels_leave_the_outputs_bitwise_as_they_were(exports, tmp_path):
    before = Path(exports.plain.path)
    after = tmp_path / "model.tflite"
    after.write_bytes(with_labels(before.read_bytes(), NAMES, channels=3))

    outputs = load_exported(after, "litert")(exports.x)

    assert outputs.tobytes() == load_exported(before, "litert")(exports.x).tobytes()
    assert read_tflite_labels(after) == NAMES
    assert exports.labelled.parity_max_difference <= 1e-5  # On the final file.


def test_labels_txt_lies_beside_a_file_export_in_class_order(exports):
    labels = exports.root / "labelled" / "labels.txt"
    assert labels.read_text() == "cat\ndog\nfish\n"
    metadata = json.loads((exports.root / "labelled" / "model.tflite.json").read_text())
    assert metadata["labels"] == "labels.txt" and metadata["labels_in_artifact"]
    assert f"Labels: {labels} (and inside the .tflite)" in exports.labelled.describe()


def test_a_saved_model_folder_holds_its_labels_txt(exports):
    served = exports.root / "served"
    assert (served / "labels.txt").read_text() == "cat\ndog\nfish\n"
    assert exports.served.labels == str(served / "labels.txt")
    metadata = json.loads((served / "transferkit.json").read_text())
    assert metadata["labels"] == "labels.txt"
    assert metadata["labels_in_artifact"] is False


def test_a_model_without_class_names_gets_no_labels(exports):
    plain = exports.root / "plain"
    assert sorted(p.name for p in plain.iterdir()) == [
        "model.tflite",
        "model.tflite.json",
    ]
    assert exports.plain.labels is None
    assert "TFLITE_METADATA" not in metadata_entries(plain / "model.tflite")
    assert not zipfile.is_zipfile(plain / "model.tflite")
    with pytest.raises(
        ValueError, match=r"holds no TFLite metadata \(no 'TFLITE_METADATA' entry\)"
    ):
        read_tflite_labels(plain / "model.tflite")
    assert json.loads((plain / "model.tflite.json").read_text())["labels"] is None


def test_other_labels_beside_an_export_are_refused_before_any_work(exports, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("apple\npear\nplum\n")
    with pytest.raises(
        ValueError,
        match=r"labels.txt' holds other labels \(\['apple', 'pear', 'plum'\], 3 names\) than the model's class names \(\['cat', 'dog', 'fish'\], 3 names\); nothing was written. Pass overwrite=True to replace it, or export to a folder of its own.",
    ):
        export(exports.model, tmp_path / "model.tflite", format="litert")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.txt"]
    assert labels.read_text() == "apple\npear\nplum\n"
    # The same labels (a final newline or not) are left as they are; other
    # ones are replaced with overwrite=True, atomically.
    labels.write_text("cat\ndog\nfish")
    write_labels(labels, NAMES, overwrite=False)
    assert labels.read_text() == "cat\ndog\nfish"
    labels.write_text("apple\n")
    write_labels(labels, NAMES, overwrite=True)
    assert labels.read_text() == "cat\ndog\nfish\n"
    with pytest.raises(
        ValueError, match=r"class names \['a\\nb', ''\] are empty or hold a line break"
    ):
        check_labels(tmp_path / "m.tflite", "litert", ["a\nb", "", "c"], overwrite=True)
    folder = tmp_path / "folder"
    (folder / "labels.txt").mkdir(parents=True)
    with pytest.raises(
        ValueError,
        match=r"is no file, so the export's class names cannot be written there",
    ):
        check_labels(folder / "m.tflite", "litert", NAMES, overwrite=True)


def test_read_tflite_labels_names_a_file_that_is_no_tflite_model(tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"not a model at all")
    with pytest.raises(
        ValueError,
        match=r"Expected a TFLite model \(file identifier b'TFL3'\). Received: '.*model.tflite', whose identifier is b'a mo'",
    ):
        read_tflite_labels(path)


def image_folders(root, names, per_class=2):
    for label, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = np.full((12, 12, 3), 60 * label + index, "uint8")
            (root / name / f"{index}.png").write_bytes(tf.io.encode_png(pixels).numpy())


def test_the_docs_export_prints_its_summary_once(
    exports, tmp_path, monkeypatch, capsys
):
    """`export` prints what it did; `describe()` only returns that text (the
    docs once printed it again)."""
    (code,) = re.findall(r"## Export\n\n```\n(.*?)```", DOCS.read_text(), re.S)
    monkeypatch.chdir(tmp_path)
    image_folders(tmp_path / "images" / "test", NAMES)
    (tmp_path / "exported").mkdir()

    exec(code, {"run": SimpleNamespace(model=exports.model)})

    printed = capsys.readouterr().out
    assert printed.count("Exported litert to 'exported/model.tflite'") == 1
    assert printed.count("Labels: exported/labels.txt") == 1
    assert read_tflite_labels("exported/model.tflite") == NAMES
