"""The docs' code runs as written (on shipped digits, 1 epoch)."""

import re
from pathlib import Path

import keras
import numpy as np

from transferkit.datasets import mnist

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def test_the_readme_s_image_task_is_four_statements_of_public_names():
    import ast
    import inspect

    import transferkit

    task_block, _ = python_blocks(README)
    tree = ast.parse(task_block)
    assert len(tree.body) == 4  # The Model Maker job: at most 5.
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and getattr(node.func.value, "id", None) == "transferkit"
    ]
    assert [call.func.attr for call in calls] == ["train_image_classifier"]
    (call,) = calls
    inspect.signature(transferkit.train_image_classifier).bind(
        *[ast.literal_eval(a) for a in call.args],
        **{k.arg: ast.literal_eval(k.value) for k in call.keywords},
    )
    for method in ("predict", "export"):
        assert callable(getattr(transferkit.ImageClassifierTask, method))


def test_the_readme_quick_start_runs(monkeypatch):
    blocks = python_blocks(README)
    assert len(blocks) == 2
    code = blocks[1].replace("epochs=5", "epochs=1")
    sample = mnist.load_sample()
    monkeypatch.setattr(
        keras.datasets.mnist,
        "load_data",
        lambda: (
            (sample.x_train[:300], sample.y_train[:300]),
            (sample.x_test[:100], sample.y_test[:100]),
        ),
    )
    namespace = {}

    exec(compile(code, str(README), "exec"), namespace)

    result = namespace["result"]
    assert result.frozen_unchanged is True
    assert result.classes == (5, 6, 7, 8, 9)
    assert np.isfinite(result.metrics["accuracy"])


def test_the_quickstart_on_your_own_data_runs(tmp_path, monkeypatch):
    page = ROOT / "docs" / "quickstart.md"
    (code,) = python_blocks(page)
    sample = mnist.load_sample()
    monkeypatch.chdir(tmp_path)
    namespace = {
        "x": sample.x_train[:300, :, :, None] / np.float32(255),
        "y": sample.y_train[:300],
        "x_test": sample.x_test[:100, :, :, None] / np.float32(255),
        "y_test": sample.y_test[:100],
    }

    exec(compile(code.replace("epochs=5", "epochs=1"), str(page), "exec"), namespace)

    assert namespace["result"].frozen_unchanged is True
    assert (tmp_path / "model.keras").is_file()


def test_the_backbones_page_cuts_and_composes_as_written():
    page = ROOT / "docs" / "backbones.md"
    first = python_blocks(page)[0]
    assert 'weights="imagenet"' in first
    namespace = {}

    # Offline: the same backbone without its ImageNet download.
    exec(compile(first.replace('"imagenet"', "None"), str(page), "exec"), namespace)

    model = namespace["model"]
    assert list(model.groups) == ["bottom", "top", "head"]
    assert model.groups["bottom"][-1].name == "block_12_add"
    assert model.output_shape == (None, 10)


def test_the_scaling_page_trains_on_two_replicas_as_written(strategy):
    page = ROOT / "docs" / "scaling.md"
    first = python_blocks(page)[0]
    # Offline, and on the two logical CPU devices that conftest makes.
    code = first.replace('"imagenet"', "None").replace(
        "tf.distribute.MirroredStrategy()", "two_devices"
    )
    assert code.count("two_devices") == 1
    rng = np.random.default_rng(0)
    namespace = {
        "two_devices": strategy,
        "x": rng.normal(size=(16, 96, 96, 3)).astype("float32"),
        "y": np.arange(16) % 10,
    }

    exec(compile(code, str(page), "exec"), namespace)

    result = namespace["result"]
    assert result.frozen_unchanged is True
    assert result.training_loop.endswith("MirroredStrategy, 2 replicas")
