"""transferkit: freeze-and-finetune transfer learning for Keras 3.

>>> from transferkit import LayerGroup, TransferRun, ClassSubset, split_classes

The names below are imported on first use. `import transferkit` imports
only the modules that register layers with Keras (`GroupedSequential`,
`ImagenetPreprocessing`), so that `keras.saving.load_model` finds them;
`python -m transferkit report DIR` skips even that, and reads a report
without starting TensorFlow.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "ClassSubset": "transferkit.class_subset",
    "GroupedSequential": "transferkit.layer_group",
    "ImagenetPreprocessing": "transferkit.preprocessing",
    "LayerGroup": "transferkit.layer_group",
    "PhaseResult": "transferkit.phase_result",
    "TransferRun": "transferkit.transfer_run",
    "export": "transferkit.exporting",
    "load_report": "transferkit.report",
    "saved_phases": "transferkit.run_state",
    "split_classes": "transferkit.class_subset",
}

__all__ = [
    "ClassSubset",
    "GroupedSequential",
    "ImagenetPreprocessing",
    "LayerGroup",
    "PhaseResult",
    "TransferRun",
    "export",
    "load_report",
    "saved_phases",
    "split_classes",
]

# While `python -m transferkit` locates its `__main__`, argv[0] is "-m".
if sys.argv[:1] != ["-m"]:
    importlib.import_module("transferkit.layer_group")
    importlib.import_module("transferkit.preprocessing")

if TYPE_CHECKING:
    from transferkit.class_subset import ClassSubset, split_classes
    from transferkit.exporting import export
    from transferkit.layer_group import GroupedSequential, LayerGroup
    from transferkit.phase_result import PhaseResult
    from transferkit.preprocessing import ImagenetPreprocessing
    from transferkit.report import load_report
    from transferkit.run_state import saved_phases
    from transferkit.transfer_run import TransferRun


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'transferkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # Later look-ups skip this function.
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
