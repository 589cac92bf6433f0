"""Files that are never half-written, and folders checked before use."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

TEMPORARY_TAG = "transferkit-"
"""What transferkit's temporary files carry in their names,
`.<file>.transferkit-XXXXXXXX.tmp`, so that a folder's clean-up removes its
own leftovers and nothing else."""

TEMPORARY = re.compile(r"\.(.+)\." + TEMPORARY_TAG + r"[A-Za-z0-9_]{8}\.tmp")
"""The exact names of the temporary files `new_temporary` makes."""

_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _file_mode() -> int:
    """The mode `open()` would give a new file under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def new_temporary(path: Path) -> tuple[int, str]:
    """A temporary file beside `path` (same folder, so a rename is atomic),
    with the permissions of an ordinary new file."""
    handle, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.{TEMPORARY_TAG}", suffix=".tmp"
    )
    os.chmod(temporary, _file_mode())
    return handle, temporary


def ensure_writable(directory: str | os.PathLike) -> Path:
    """Creates `directory` if needed and checks that files can be made in it.

    Raises:
        OSError: naming the folder, if it cannot be created or written.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        # The same error class (PermissionError, ...), with a message that
        # names the folder and says what to do.
        raise os_error(
            error,
            f"Cannot write to the output folder {str(directory)!r} "
            f"({error.strerror or error}). Choose another folder.",
        ) from error
    return directory


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[BinaryIO]:
    """A binary stream whose content replaces `path` when the block ends.

    The bytes go to a temporary file in the same folder, which is synced to
    disk and renamed over `path`: a crash leaves the old file or the new one,
    never half of one. If the block raises, `path` is left as it was.
    """
    handle, temporary = new_temporary(path)
    try:
        with os.fdopen(handle, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def os_error(error: OSError, message: str) -> OSError:
    """An error of `error`'s class (`PermissionError`, ...) and number, with
    `message` as its text."""
    replacement = type(error)(message)
    replacement.errno = error.errno  # With strerror set, str() would drop the text.
    return replacement


def atomic_write(path: Path, text: str) -> None:
    """Replaces `path` with `text` (UTF-8) through `atomic_output`."""
    with atomic_output(path) as stream:
        stream.write(text.encode("utf-8"))


def remove_temporaries(folder: Path) -> list[str]:
    """Deletes the leftovers of interrupted `atomic_output`s in `folder`;
    returns their names."""
    removed = []
    for path in folder.glob(f".*.{TEMPORARY_TAG}*.tmp"):
        if TEMPORARY.fullmatch(path.name):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def strict_json(value: Any) -> Any:
    """`value` with every non-finite float as the string `"nan"`, `"inf"`
    or `"-inf"`, so that `json.dumps(..., allow_nan=False)` takes it and
    strict parsers read it; `json_number` reads such a string back."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(item) for item in value]
    return value


def json_number(value: Any) -> Any:
    """The float that `strict_json` wrote as `"nan"`, `"inf"` or `"-inf"`;
    any other value as it is."""
    if isinstance(value, str) and value in _NON_FINITE:
        return _NON_FINITE[value]
    return value


def dumps(value: Any, indent: int = 1) -> str:
    """`value` as strict JSON text (non-finite numbers as strings), with a
    final newline."""
    return json.dumps(strict_json(value), indent=indent, allow_nan=False) + "\n"
