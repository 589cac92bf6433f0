"""A trained model in use: predictions on image files and folders, export
with a parity check (the class names in `labels.txt`, and inside a `.tflite`:
`read_tflite_labels`), and evaluation (the confusion matrix, the top losses).

>>> from transferkit.serving import confusion_matrix, top_losses
"""

from transferkit.serving.evaluation import TopLosses, confusion_matrix, top_losses
from transferkit.serving.exporting import ExportResult, load_exported
from transferkit.serving.predictions import FilePredictions
from transferkit.serving.tflite_labels import read_tflite_labels

__all__ = [
    "ExportResult",
    "FilePredictions",
    "TopLosses",
    "confusion_matrix",
    "load_exported",
    "read_tflite_labels",
    "top_losses",
]
