"""One writer per run folder: an operating-system lock on `run.lock`.

`FolderLock` takes an exclusive, non-blocking lock on a file in the folder
(`flock` on POSIX, `msvcrt.locking` on Windows) and writes who holds it:
process id, host and start time. The operating system drops the lock when
the process ends, `kill -9` included, so a lock is never left stale; the
file itself stays (deleting a lock file races with the next locker).

On Linux, `flock` also works on NFS (the kernel maps it to NFS byte-range
locks since 2.6.12) and on SMB mounts; a file system without locking
support (some FUSE mounts) makes the lock fail with an `OSError` that names
the folder.

Within one process, a second `TransferRun` on a held folder takes the lock
over (the first one is closed: re-running a notebook cell opens the folder
again while the previous run object is still referenced); a second process
is refused at once with `FolderLockedError`.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import weakref
from pathlib import Path
from typing import Any

from transferkit.errors import FolderLockedError
from transferkit.utils.io import os_error

__all__ = ["FolderLock", "FolderLockedError", "try_lock"]

LOCK_FILE = "run.lock"

_HELD: weakref.WeakValueDictionary[str, FolderLock] = weakref.WeakValueDictionary()
"""The locks this process holds, by the folder's real path."""


class FolderLock:
    """The exclusive lock of `folder`, taken by `acquire`.

    Args:
        folder: the run folder (it must exist).
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._descriptor: int | None = None
        self._pid = os.getpid()

    def acquire(self) -> None:
        """Takes the lock, or takes it over from another owner in this
        process.

        Raises:
            FolderLockedError: naming the folder and the holder, if another
                process holds the lock.
            OSError: naming the folder, if the file system cannot lock.
        """
        key = os.path.realpath(self.folder)
        held = _HELD.get(key)
        # A forked child inherits `_HELD` but not the lock.
        if held is not None and held.held and held._pid == os.getpid():
            self._descriptor, held._descriptor = held._descriptor, None
            _HELD[key] = self
            return
        try:
            descriptor = _open_locked(self.path)
        except OSError as error:
            raise os_error(
                error,
                f"Cannot lock the run folder {str(self.folder)!r} "
                f"({error.strerror or error}): its file system does not support "
                "file locks. Use a local folder, or a network file system "
                "that locks (NFS, SMB).",
            ) from error
        if descriptor is None:
            raise FolderLockedError(
                f"The run folder {str(self.folder)!r} is in use by "
                f"{describe_holder(read_holder(self.path))}: one process "
                "writes a run folder at a time. Wait for it to finish or stop "
                "it, or use another folder. To read what the folder holds "
                "without writing, use `transferkit.saved_phases(folder)`."
            )
        _write_holder(descriptor)
        self._descriptor = descriptor
        _HELD[key] = self

    def __del__(self):
        # A run object that is garbage-collected unlocks its folder.
        try:
            if self._descriptor is not None and self._pid == os.getpid():
                self.release()
        except Exception:  # At interpreter exit the OS drops the lock anyway.
            pass

    @property
    def held(self) -> bool:
        """Whether this lock object holds the lock (it was not released, nor
        taken over by another run in this process)."""
        return self._descriptor is not None

    def release(self) -> None:
        """Drops the lock; nothing if it is not held."""
        if self._descriptor is None:
            return
        key = os.path.realpath(self.folder)
        if _HELD.get(key) is self:
            del _HELD[key]
        descriptor, self._descriptor = self._descriptor, None
        if self._pid != os.getpid():
            return  # A forked child's copy: the parent holds the lock.
        os.close(descriptor)  # Closing the descriptor drops the lock.


def try_lock(path: Path) -> int | None:
    """A descriptor holding the lock of the file `path` (created if
    needed), or `None` if another process holds it or it cannot be locked."""
    try:
        return _open_locked(path)
    except OSError:
        return None


def _open_locked(path: Path) -> int | None:
    """A descriptor holding the lock of `path` (created if needed), or `None`
    if another process holds it.

    Raises:
        OSError: if the file cannot be made or its file system cannot lock.
    """
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if _lock(descriptor):
            return descriptor
    except OSError:
        os.close(descriptor)
        raise
    os.close(descriptor)
    return None


def read_holder(path: Path) -> dict[str, Any] | None:
    """What the holder of the lock file `path` wrote about itself."""
    try:
        holder = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def describe_holder(holder: dict[str, Any] | None) -> str:
    """E.g. `"process 4242 on host 'gpu-1', since 2026-12-01T21:53:09+00:00"`."""
    if not holder:
        return "another process (it has not recorded itself yet)"
    return (
        f"process {holder.get('pid')} on host {holder.get('host')!r}, since "
        f"{holder.get('started')}"
    )


def _write_holder(descriptor: int) -> None:
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    text = json.dumps(
        {"pid": os.getpid(), "host": socket.gethostname(), "started": started}
    )
    os.ftruncate(descriptor, 0)
    os.lseek(descriptor, 0, os.SEEK_SET)
    os.write(descriptor, (text + "\n").encode())


if os.name == "nt":  # pragma: no cover (tested on POSIX)
    import msvcrt

    def _lock(descriptor: int) -> bool:
        try:
            msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
        except PermissionError:
            return False
        return True

else:
    import fcntl

    def _lock(descriptor: int) -> bool:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
