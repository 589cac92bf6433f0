"""Checks of the arguments a user passes to a `TransferRun` and its phases.

Each raises with a message in Keras' style: what is expected, and the value
received. NumPy integers are taken wherever Python integers are, and come
back as Python integers (a plan is JSON).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "is_non_negative_number",
    "require_choice",
    "require_count",
    "require_epochs",
    "require_flags",
    "require_seed",
]


def require_count(value: Any, argument: str, minimum: int = 1) -> int:
    """`value` as a Python integer; raises unless it is an integer (NumPy's
    too) >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(
            f"Expected `{argument}` to be an integer. Received: {argument}={value!r}"
        )
    if value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(
            f"Expected `{argument}` to be {what}. Received: {argument}={value}"
        )
    return int(value)


def require_seed(seed: Any) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"Expected `seed` to be an integer. Received: seed={seed!r}")
    return int(seed)


def require_flags(**flags: Any) -> None:
    for argument, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(
                f"Expected `{argument}` to be True or False. Received: "
                f"{argument}={value!r}"
            )


def require_choice(value: Any, argument: str, choices: Sequence[Any]) -> None:
    # By type too: 1 is not True, 0.0 not False.
    if not any(type(value) is type(c) and value == c for c in choices):
        raise ValueError(
            f"Unknown `{argument}`. Expected one of {list(choices)}. Received: "
            f"{argument}={value!r}"
        )


def require_epochs(epochs: Any) -> int:
    """`epochs` as a Python integer (NumPy's are taken too)."""
    if (
        isinstance(epochs, bool)
        or not isinstance(epochs, int | np.integer)
        or epochs < 1
    ):
        raise ValueError(
            f"Expected `epochs` to be a positive integer. Received: epochs={epochs!r}"
        )
    return int(epochs)


def is_non_negative_number(value: Any) -> bool:
    """Whether `value` is a finite number >= 0 (a bool is not a number here),
    as learning-rate multipliers and class weights must be."""
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float | np.number)
        and bool(np.isfinite(value))
        and value >= 0
    )
