"""One phase, below the run: its plan entry (`plan`), training it with the
right model and loop (`training`), and the freeze proof. Internal; imports
`groups`, `layers`, `data`, `engine`, `cache` and `records`.
"""

__all__: list[str] = []
