"""The run folder: atomic checkpoints and state (`directory`), opening and
resuming a run in order (`state`), and loading a trained model from it
(`loading`). Imports `phases` and below.
"""

from transferkit.run_folder.loading import load_trained_model
from transferkit.run_folder.state import saved_phases

__all__ = ["load_trained_model", "saved_phases"]
