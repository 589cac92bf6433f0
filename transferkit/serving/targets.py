"""Where an export lands, and what it may replace.

`export(..., overwrite=True)` replaces only what it recognises as an earlier
export of its own: a SavedModel folder holding transferkit's metadata and
nothing but a SavedModel's files, or the single file of a LiteRT or ONNX
export. It never replaces a run folder (locked or not), nor a folder holding
anything else: a user's notes, other exports, checkpoints. Each export is
staged under a name of its own (the process and a random part), so two
exports to one path at once never write the same staging file; the artifact
moves into place only once it has passed its parity check.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

from transferkit.records.layout import STATE_FILE
from transferkit.utils.locks import LOCK_FILE

__all__ = ["check_target", "land", "remove", "staging_path"]

SAVED_MODEL_FILES = frozenset(
    {"saved_model.pb", "fingerprint.pb", "variables", "assets", "transferkit.json"}
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
