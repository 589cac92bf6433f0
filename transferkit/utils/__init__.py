"""Small tools every other room uses: atomic file writes, the operating-system
lock, the checks of a user's arguments. Internal; imports only
`transferkit.errors`.
"""

__all__: list[str] = []
