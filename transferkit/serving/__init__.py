"""A trained model in use: predictions on image files and folders, export
with a parity check, and evaluation (the confusion matrix, the top losses).

>>> from transferkit.serving import confusion_matrix, top_losses
"""

from transferkit.serving.evaluation import TopLosses, confusion_matrix, top_losses
from transferkit.serving.exporting import ExportResult, load_exported
from transferkit.serving.predictions import FilePredictions

__all__ = [
    "ExportResult",
    "FilePredictions",
    "TopLosses",
    "confusion_matrix",
    "load_exported",
    "top_losses",
]
