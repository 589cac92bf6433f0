"""The run folder: atomic checkpoints and state (`directory`), opening and
resuming a run in order (`state`), and loading a trained model from it
(`loading`). Imports `phases` and below.
"""

__all__: list[str] = []
