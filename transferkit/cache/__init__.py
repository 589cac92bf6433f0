"""The exact feature cache: which frozen leading layers are computed once
(`plan`), where a model can be cut so that one tensor crosses (`cuts`), the
features in memory or on disk (`features`) filled in blocks of a measured
size (`blocks`), and a cache kept from a learning-rate sweep for the next
phase (`kept`). Internal; imports `groups`, `data`, `engine` and below.
"""

__all__: list[str] = []
