"""transferkit: freeze-and-finetune transfer learning for Keras 3.

>>> from transferkit import LayerGroup, TransferRun, ClassSubset, split_classes
"""

from transferkit.class_subset import ClassSubset, split_classes
from transferkit.layer_group import GroupedSequential, LayerGroup
from transferkit.report import load_report
from transferkit.transfer_run import PhaseResult, TransferRun

__version__ = "0.1.0"

__all__ = [
    "ClassSubset",
    "GroupedSequential",
    "LayerGroup",
    "PhaseResult",
    "TransferRun",
    "load_report",
    "split_classes",
]
