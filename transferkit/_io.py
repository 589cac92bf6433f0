"""Files that are never half-written, and folders checked before use."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def _file_mode() -> int:
    """The mode `open()` would give a new file under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def new_temporary(path: Path) -> tuple[int, str]:
    """A temporary file beside `path` (same folder, so a rename is atomic),
    with the permissions of an ordinary new file."""
    handle, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
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
        raise type(error)(
            f"Cannot write to the output folder {str(directory)!r} "
            f"({error.strerror or error}). Choose another folder."
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


def atomic_write(path: Path, text: str) -> None:
    """Replaces `path` with `text` (UTF-8) through `atomic_output`."""
    with atomic_output(path) as stream:
        stream.write(text.encode("utf-8"))
