"""Which image files cannot be read, and why, before any is predicted.

A folder of images in the wild holds a zero-byte file, a truncated PNG or a
stray text file now and then; decoded inside a `tf.data` pipeline, any of
them stops the whole run with a TensorFlow error that names no file. Each
file is decoded once here first, so that predictions can name and skip the
bad ones (or refuse them up front, with `strict=True`), and an export can
refuse its data naming them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import tensorflow as tf

__all__ = ["describe_unreadable", "unreadable_images"]


def unreadable_images(files: Sequence[Path]) -> dict[int, str]:
    """`{index: why}` for each file of `files` that does not decode as an
    image (empty, not an image, damaged)."""
    bad = {}
    for index, path in enumerate(files):
        try:
            data = tf.io.read_file(str(path))
            if not int(tf.strings.length(data)):
                bad[index] = "an empty file"
                continue
            tf.io.decode_image(data, expand_animations=False)
        except (tf.errors.OpError, OSError) as error:
            bad[index] = _reason(error)
    return bad


def describe_unreadable(files: Sequence[Path], bad: dict[int, str]) -> str:
    """`'path' (why)` for the first few unreadable files, and how many."""
    shown = [f"{str(files[i])!r} ({why})" for i, why in list(bad.items())[:5]]
    more = f", and {len(bad) - 5} more" if len(bad) > 5 else ""
    return ", ".join(shown) + more


def _reason(error: Exception) -> str:
    """TensorFlow's message without its op prefix and suffix."""
    text = str(getattr(error, "message", error)).strip().splitlines()[0]
    text = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", text)
    text = re.sub(r"\s*\[Op:\w+\].*$", "", text)
    return f"not a readable image: {text}" if text else "not a readable image"
