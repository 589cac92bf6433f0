"""`TransferRun` (public as `transferkit.TransferRun`), the face of the
library, and what composes phases: schedules (`head_then_all`,
`gradual_unfreezing`) and learning-rate multipliers (`spread`,
`layer_decay`), public here. Imports everything below it.

>>> from transferkit.run import head_then_all, layer_decay
"""

from transferkit.engine.distribution import is_chief
from transferkit.layers.precision import PRECISIONS
from transferkit.run.schedules import (
    gradual_unfreezing,
    head_then_all,
    layer_decay,
    spread,
)

__all__ = [
    "PRECISIONS",
    "gradual_unfreezing",
    "head_then_all",
    "is_chief",
    "layer_decay",
    "spread",
]
