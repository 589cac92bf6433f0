"""Where an export lands, and what it may replace.

`export(..., overwrite=True)` replaces only what it recognises as an earlier
export of its own: a SavedModel folder holding transferkit's metadata and
nothing but a SavedModel's files, or the single file of a LiteRT or ONNX
export. It never replaces a run folder (locked or not), nor a folder holding
anything else: a user's notes, other exports, checkpoints. Each export is
staged under a name of its own (the process and a random part), so two
exports to one path at once never write the same staging file; the artifact
moves into place only once it has passed its parity check.

A model with class names also gets `labels.txt` (one name per line, in
class-id order): inside a SavedModel folder (one of its files, replaced with
it), and beside a file export (`dir/model.tflite` -> `dir/labels.txt`),
shared by the exports in that folder. That one is the only file export
writes outside `path`: one holding the same labels is left as it is; one
holding other labels is refused before any work unless `overwrite=True`,
which replaces it (an earlier export's labels, most likely, which would
now name the wrong classes). Export models of other classes to folders of
their own. A model without class names writes none, and leaves a
`labels.txt` standing there as it was.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path

from transferkit.records.layout import STATE_FILE
from transferkit.utils.io import atomic_write
from transferkit.utils.locks import LOCK_FILE

__all__ = [
    "LABELS_FILE",
    "check_labels",
    "check_target",
    "labels_path",
    "land",
    "remove",
    "staging_path",
    "write_labels",
]

LABELS_FILE = "labels.txt"
"""The class names beside (or inside) an export, one per line."""

SAVED_MODEL_FILES = frozenset(
    {
        "saved_model.pb",
        "fingerprint.pb",
        "variables",
        "assets",
        "transferkit.json",
        LABELS_FILE,
    }
)
"""What a SavedModel export of transferkit holds, and all it may hold to be
replaced."""

_RUN_FILES = (STATE_FILE, LOCK_FILE)


def check_target(target: Path, format: str, overwrite: bool) -> None:
    """Raises unless an export may be written at `target`: its folder exists,
    and nothing stands there, or (with `overwrite`) an earlier export of the
    same format.

    Raises:
        ValueError: naming the path and what stands there.
    """
    if target.name in ("", ".", ".."):
        raise ValueError(
            "Expected `path` to name the export to create (a folder for "
            "tf_saved_model, a file for the others), e.g. 'exports/model'. "
            f"Received: path={str(target)!r}"
        )
    parent = target.parent
    if not parent.is_dir():
        raise ValueError(
            f"The folder {str(parent)!r} for the export {str(target)!r} does not "
            "exist; nothing was written. Create it first, or choose another path."
        )
    if not target.exists() and not target.is_symlink():
        return
    if not overwrite:
        raise ValueError(
            f"{str(target)!r} exists; nothing was written. Pass overwrite=True "
            "to replace it, or choose another path."
        )
    why = _not_replaceable(target, format)
    if why:
        raise ValueError(
            f"{str(target)!r} {why}; overwrite=True replaces only an earlier "
            "transferkit export, so nothing was written. Export to another path."
        )


def _not_replaceable(target: Path, format: str) -> str:
    """Why `target` is no earlier export of `format` (empty if it is one)."""
    if format != "tf_saved_model":
        if target.is_dir() or not target.is_file():
            return "is a folder, not the file of an export"
        return ""
    if not target.is_dir():
        return "is a file, not the folder of a SavedModel export"
    names = sorted(path.name for path in target.iterdir())
    run_files = [name for name in _RUN_FILES if name in names]
    if run_files:
        return f"is a run folder (it holds {run_files[0]})"
    foreign = [name for name in names if name not in SAVED_MODEL_FILES]
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        return f"holds files that no SavedModel export writes ({shown})"
    try:
        metadata = json.loads((target / "transferkit.json").read_text())
    except (OSError, ValueError):
        return "holds no transferkit.json: it is no transferkit export"
    if not isinstance(metadata, dict) or metadata.get("format") != format:
        return "holds a transferkit.json of another kind"
    return ""


def staging_path(target: Path) -> Path:
    """A hidden name beside `target`, this export's alone."""
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    return target.with_name(f".{target.stem}.partial-{tag}{target.suffix}")


def land(partial: Path, target: Path, format: str, overwrite: bool) -> None:
    """Moves the staged artifact to `target`, checking again what stands
    there (it may have changed while the export ran)."""
    check_target(target, format, overwrite)
    if target.exists():
        remove(target)
    os.replace(partial, target)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def labels_path(target: Path, format: str) -> Path:
    """Where an export to `target` writes its `labels.txt`: inside a
    SavedModel folder, beside a file."""
    if format == "tf_saved_model":
        return target / LABELS_FILE
    return target.with_name(LABELS_FILE)


def check_labels(
    target: Path, format: str, labels: Sequence[str], overwrite: bool
) -> None:
    """Raises unless an export to `target` may write `labels` to its
    `labels.txt` (a SavedModel folder's own goes with the folder).

    Raises:
        ValueError: for a class name that is empty or holds a line break,
            and beside a file export, a `labels.txt` that is no file or
            (without `overwrite`) holds other labels; naming the path and
            the way out.
    """
    broken = [name for name in labels if name.splitlines() != [name]]
    if broken:
        raise ValueError(
            f"labels.txt holds one class name per line; the model's class names "
            f"{broken} are empty or hold a line break. Nothing was written. "
            "Rename those classes (`model.class_names = [...]`)."
        )
    if format != "tf_saved_model":
        _needs_writing(labels_path(target, format), labels, overwrite)


def write_labels(path: Path, labels: Sequence[str], overwrite: bool) -> None:
    """Writes `labels` to `path` atomically, checking it again (it may have
    changed while the export ran); leaves one holding them as it is."""
    if _needs_writing(path, labels, overwrite):
        atomic_write(path, "".join(f"{name}\n" for name in labels))


def _needs_writing(path: Path, labels: Sequence[str], overwrite: bool) -> bool:
    """Whether `labels` are to be written at `path` (not when it holds them
    already); raises where they may not be."""
    if not path.exists() and not path.is_symlink():
        return True
    if path.exists() and not path.is_file():
        raise ValueError(
            f"{str(path)!r} is no file, so the export's class names cannot be "
            "written there; nothing was written. Export to another folder."
        )
    try:
        held = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        held = None
    if held == list(labels):
        return False
    if not overwrite:
        shown = "unreadable" if held is None else _shown(held)
        raise ValueError(
            f"{str(path)!r} holds other labels ({shown}) than the model's class "
            f"names ({_shown(labels)}); nothing was written. Pass overwrite=True "
            "to replace it, or export to a folder of its own."
        )
    return True


def _shown(labels: Sequence[str]) -> str:
    names = list(labels)
    return f"{names[:5]}{' and more' if len(names) > 5 else ''}, {len(names)} names"
