"""The unit of transfer: `LayerGroup`s, how they compose into a model
(`GroupedSequential`), how a model is cut into groups (by paths or
patterns), and one way to walk a model's layers. Imports only `utils` and
`errors` of transferkit.
"""

__all__: list[str] = []
