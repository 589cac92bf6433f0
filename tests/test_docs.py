"""The README's quick start runs as written (on shipped digits, 1 epoch)."""

import re
from pathlib import Path

import keras
import numpy as np

from transferkit import mnist

README = Path(__file__).parents[1] / "README.md"


def test_the_readme_quick_start_runs(monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) == 1
    code = blocks[0].replace("epochs=5", "epochs=1")
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
