"""Opening a trained model: a `.keras` file, or a run folder's last
checkpoint, for predictions and export (`transferkit predict`, `transferkit
export`, `transferkit.load_trained_model`)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import keras

# Registers transferkit's layers with Keras, which `python -m transferkit`
# skips, so that a saved model that holds them loads.
import transferkit.groups.layer_group  # noqa: F401
import transferkit.layers.preprocessing  # noqa: F401
from transferkit.run_folder.directory import RunDirectory

__all__ = ["load_trained_model"]


def load_trained_model(path: str | os.PathLike) -> keras.Model:
    """The model in a `.keras` file, or the last checkpoint of a run folder,
    loaded without its optimizer (for predictions and export).

    Raises:
        ValueError: for a folder that holds no saved run, or a path that is
            neither.
    """
    path = Path(path)
    if path.is_dir():
        state = RunDirectory(path, writer=False).load_state()
        name = (state or {}).get("checkpoint")
        if name is None:
            raise ValueError(
                f"{str(path)!r} holds no saved model: no run.json with a "
                "checkpoint. Pass a run folder after a phase, or a .keras file."
            )
        path = RunDirectory(path, writer=False).checkpoint_path(name) or path / name
    elif not path.is_file():
        raise ValueError(f"No such model file or run folder: {str(path)!r}")
    _import_keras_hub_if_needed(path)
    return keras.saving.load_model(path, compile=False)


def _import_keras_hub_if_needed(path: Path) -> None:
    """Imports keras-hub, which registers its classes with Keras, when the
    saved model holds a keras-hub backbone (`transferkit.backbones.hub`)."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = archive.read("config.json")
    except (OSError, KeyError, zipfile.BadZipFile):
        return  # Keras' own loader says what is wrong with the file.
    if b'"keras_hub' not in config:
        return
    try:
        import keras_hub  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"{str(path)!r} holds a keras-hub model; loading it needs "
            "keras-hub: pip install 'transferkit[hub]'"
        ) from error
