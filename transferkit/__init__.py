"""transferkit: freeze-and-finetune transfer learning for Keras 3.

>>> from transferkit import LayerGroup, TransferRun, ClassSubset, split_classes

The job most users come for is one call: `transferkit.train_image_classifier(
"photos/train", test="photos/test", out="runs/photos")` (`transferkit.tasks`),
or `transferkit train photos/train --out runs/photos` on the command line.

The names below are imported on first use. `import transferkit` imports
only the modules that register layers with Keras (`GroupedSequential`,
`ImagenetPreprocessing`), so that `keras.saving.load_model` finds them;
the `transferkit` command (and `python -m transferkit`) skips even that, so
that `transferkit report DIR` reads a report without starting TensorFlow.

Beside these names, the public namespaces are `transferkit.errors` (every
exception), `transferkit.records` (reports), `transferkit.serving`
(predictions, export, evaluation), `transferkit.run` (schedules and
learning-rate multipliers), `transferkit.backbones` (named pretrained
backbones), `transferkit.tasks`, `transferkit.datasets` and `transferkit.cli`;
each lists its names in `__all__`. Every other module is internal.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

from transferkit.version import __version__ as __version__

_EXPORTS = {
    "ClassSubset": "transferkit.data.class_subset",
    "GroupedSequential": "transferkit.groups.layer_group",
    "ImageClassifierTask": "transferkit.tasks.image_classifier",
    "ImageRecipe": "transferkit.tasks.recipe",
    "ImagenetPreprocessing": "transferkit.layers.preprocessing",
    "LayerGroup": "transferkit.groups.layer_group",
    "PhaseResult": "transferkit.records.phase_result",
    "Speed": "transferkit.phases.speed",
    "TransferRun": "transferkit.run.transfer_run",
    "attach_groups": "transferkit.groups.model_groups",
    "clone_model": "transferkit.groups.copying",
    "compare_groups": "transferkit.groups.comparing",
    "copy_groups": "transferkit.groups.copying",
    "export": "transferkit.serving.exporting",
    "grow_head": "transferkit.groups.grow_head",
    "load_report": "transferkit.records.report",
    "load_trained_model": "transferkit.run_folder.loading",
    "predict_files": "transferkit.serving.predictions",
    "reinitialize_groups": "transferkit.groups.reinitializing",
    "saved_phases": "transferkit.run_folder.state",
    "split_classes": "transferkit.data.class_subset",
    "train_image_classifier": "transferkit.tasks.image_classifier",
}

__all__ = [
    "ClassSubset",
    "GroupedSequential",
    "ImageClassifierTask",
    "ImageRecipe",
    "ImagenetPreprocessing",
    "LayerGroup",
    "PhaseResult",
    "Speed",
    "TransferRun",
    "attach_groups",
    "clone_model",
    "compare_groups",
    "copy_groups",
    "export",
    "grow_head",
    "load_report",
    "load_trained_model",
    "predict_files",
    "reinitialize_groups",
    "saved_phases",
    "split_classes",
    "train_image_classifier",
]


def _started_as_command() -> bool:
    """Whether this process is the `transferkit` command: `python -m
    transferkit` (argv[0] is "-m" while Python locates `__main__`) or the
    console script."""
    if sys.argv[:1] == ["-m"]:
        return True
    command = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return command in ("transferkit", "transferkit.exe")


if not _started_as_command():
    importlib.import_module("transferkit.groups.layer_group")
    importlib.import_module("transferkit.layers.preprocessing")

if TYPE_CHECKING:
    from transferkit.data.class_subset import ClassSubset, split_classes
    from transferkit.groups.comparing import compare_groups
    from transferkit.groups.copying import clone_model, copy_groups
    from transferkit.groups.grow_head import grow_head
    from transferkit.groups.layer_group import GroupedSequential, LayerGroup
    from transferkit.groups.model_groups import attach_groups
    from transferkit.groups.reinitializing import reinitialize_groups
    from transferkit.layers.preprocessing import ImagenetPreprocessing
    from transferkit.phases.speed import Speed
    from transferkit.records.phase_result import PhaseResult
    from transferkit.records.report import load_report
    from transferkit.run.transfer_run import TransferRun
    from transferkit.run_folder.loading import load_trained_model
    from transferkit.run_folder.state import saved_phases
    from transferkit.serving.exporting import export
    from transferkit.serving.predictions import predict_files
    from transferkit.tasks.image_classifier import (
        ImageClassifierTask,
        train_image_classifier,
    )
    from transferkit.tasks.recipe import ImageRecipe


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'transferkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # Later look-ups skip this function.
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
