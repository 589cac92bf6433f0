"""The unit of transfer: `LayerGroup`s, how they compose into a model
(`GroupedSequential`), how a model is cut into groups (by paths or
patterns), and one way to walk a model's layers. Imports only `utils` and
`errors` of transferkit.
"""

from transferkit.groups.layer_group import GroupedSequential, LayerGroup
from transferkit.groups.model_groups import attach_groups

__all__ = ["GroupedSequential", "LayerGroup", "attach_groups"]
