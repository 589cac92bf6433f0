"""The `transferkit` command (also `python -m transferkit`): `report`,
`predict` and `export`. `report` reads a run without importing TensorFlow."""

from transferkit.cli.main import main

__all__ = ["main"]
