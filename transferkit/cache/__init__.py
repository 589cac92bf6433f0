"""The exact feature cache: which frozen leading layers are computed once
(`plan`), the features in memory or on disk (`features`), and a cache kept
from a learning-rate sweep for the next phase (`kept`). Internal; imports
`groups`, `data`, `engine` and below.
"""

__all__: list[str] = []
