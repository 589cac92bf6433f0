"""MNIST for the reference example: a local file, a download, or the sample.

`load()` reads a Keras-layout `.npz` or a folder of the four MNIST IDX
files; without a path it downloads with `keras.datasets.mnist` and, when
that fails, falls back to the 10,000-digit sample shipped in
`transferkit/datasets` (see its README for provenance and licence).
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.resources
import os
import zipfile
from pathlib import Path

import numpy as np

__all__ = [
    "MnistData",
    "load",
    "load_idx_folder",
    "load_npz",
    "load_sample",
    "read_idx",
]

SAMPLE_FILE = "mnist_sample.npz"

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}

# IDX type codes (the third byte of the magic number) and their dtypes.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclasses.dataclass(frozen=True, eq=False)
class MnistData:
    """MNIST images (uint8, `(n, 28, 28)`) and integer labels."""

    x_train: np.ndarray
    """Training images."""

    y_train: np.ndarray
    """Training labels, 0-9."""

    x_test: np.ndarray
    """Test images."""

    y_test: np.ndarray
    """Test labels, 0-9."""

    source: str
    """Where the digits came from, for reports."""

    is_sample: bool = False
    """Whether this is the embedded 10,000-digit sample, whose figures are
    not comparable to the full MNIST set."""

    notice: str | None = None
    """One line to show the user, e.g. why the sample was used."""


def load(path: str | os.PathLike | None = None) -> MnistData:
    """Loads MNIST from `path`, else downloads it, else uses the sample.

    Args:
        path: a Keras-layout `.npz` file (`x_train`, `y_train`, `x_test`,
            `y_test`) or a folder with the four MNIST IDX files (gzipped or
            not). Defaults to `None`: `keras.datasets.mnist.load_data()`,
            which downloads once and caches; if that fails, the embedded
            sample, with a `notice` saying so.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: if `path` is neither an `.npz` file nor a folder of IDX
            files, or its arrays are not MNIST-shaped.
    """
    if path is not None:
        path = Path(path)
        if path.is_dir():
            return load_idx_folder(path)
        if path.is_file():
            return load_npz(path)
        raise FileNotFoundError(
            f"No MNIST data at {str(path)!r}. Expected a Keras-layout .npz "
            "file or a folder with the four MNIST IDX files."
        )
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    except Exception as error:  # Keras raises a bare Exception offline.
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        sample = load_sample()
        notice = (
            f"Could not download MNIST ({reason}); running on the embedded "
            "sample of 10,000 real digits instead, whose figures are not "
            "comparable to the full-set 99.2%. Pass --data PATH to use a "
            "local copy (.npz or IDX folder)."
        )
        return dataclasses.replace(sample, notice=notice)
    return _checked(x_train, y_train, x_test, y_test, source="keras.datasets.mnist")


def load_sample() -> MnistData:
    """The 10,000 real digits shipped with transferkit (8,000 train, 2,000 test)."""
    resource = importlib.resources.files("transferkit.datasets") / SAMPLE_FILE
    with importlib.resources.as_file(resource) as path:
        data = load_npz(path)
    return dataclasses.replace(
        data,
        source="transferkit embedded sample (10,000 MNIST digits)",
        is_sample=True,
    )


def load_npz(path: str | os.PathLike) -> MnistData:
    """Reads a Keras-layout `mnist.npz` (`x_train`, `y_train`, `x_test`, `y_test`)."""
    path = Path(path)
    # Our own file handle, so that it is closed even when numpy fails.
    with open(path, "rb") as stream:
        try:
            archive = np.load(stream, allow_pickle=False)
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
            raise ValueError(
                f"Could not read {str(path)!r} as an .npz archive: {error}"
            ) from error
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError(
                f"{str(path)!r} holds a single array; expected an .npz "
                f"archive with the arrays {sorted(IDX_FILES)}."
            )
        with archive:
            missing = sorted(set(IDX_FILES) - set(archive.files))
            if missing:
                raise ValueError(
                    f"{str(path)!r} lacks the arrays {missing}. Expected the "
                    f"Keras mnist.npz layout {sorted(IDX_FILES)}; found "
                    f"{sorted(archive.files)}."
                )
            try:
                arrays = {key: archive[key] for key in IDX_FILES}
            except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
                raise ValueError(
                    f"{str(path)!r} is damaged or truncated: {error}"
                ) from error
    return _checked(**arrays, source=str(path))


def load_idx_folder(folder: str | os.PathLike) -> MnistData:
    """Reads the four MNIST IDX files from `folder`, each gzipped or not."""
    folder = Path(folder)
    arrays = {}
    for key, stem in IDX_FILES.items():
        candidates = [folder / stem, folder / f"{stem}.gz"]
        found = [path for path in candidates if path.is_file()]
        if not found:
            raise FileNotFoundError(
                f"{str(folder)!r} has no {stem}[.gz]. An MNIST IDX folder holds "
                f"{', '.join(IDX_FILES.values())}, each optionally gzipped."
            )
        arrays[key] = read_idx(found[0])
    return _checked(**arrays, source=str(folder))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one IDX file (the format of the MNIST files), gzipped or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            content = stream.read()
    except (OSError, EOFError) as error:
        raise ValueError(f"Could not read {str(path)!r}: {error}") from error
    if len(content) < 4 or content[0:2] != b"\x00\x00":
        raise ValueError(
            f"{str(path)!r} is not an IDX file: it does not start with the "
            "IDX magic number (two zero bytes, a type code, a rank)."
        )
    type_code, rank = content[2], content[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(
            f"{str(path)!r} has an unknown IDX type code {type_code:#04x}. "
            f"Expected one of {[hex(code) for code in _IDX_DTYPES]}."
        )
    header = 4 + 4 * rank
    shape = tuple(np.frombuffer(content[4:header], dtype=">u4").tolist())
    dtype = _IDX_DTYPES[type_code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(shape) != rank or len(content) != expected:
        raise ValueError(
            f"{str(path)!r} is truncated or padded: its header announces "
            f"shape {shape} ({expected} bytes), but it has {len(content)} bytes."
        )
    return np.frombuffer(content, dtype=dtype, offset=header).reshape(shape)


def _checked(x_train, y_train, x_test, y_test, source) -> MnistData:
    for name, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            raise ValueError(
                f"Expected {name} images of shape (n, 28, 28) in {source}. "
                f"Received: shape={x.shape}"
            )
        if y.shape != (len(x),):
            raise ValueError(
                f"Expected {len(x)} {name} labels of shape ({len(x)},) in "
                f"{source}, one per image. Received: shape={y.shape}"
            )
    return MnistData(
        x_train=x_train,
        y_train=y_train.astype(np.int64),
        x_test=x_test,
        y_test=y_test.astype(np.int64),
        source=source,
    )
