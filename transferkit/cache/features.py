"""The feature cache: the output of a model's frozen leading layers for a
phase's data, computed once (which layers, `transferkit.cache.plan` decides).

The cached outputs live in memory while they fit under a bound, otherwise in
a file, read back a batch at a time.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from transferkit.cache.blocks import (
    BlockSizer,
    aligned_empty,
    as_tensor,
    largest_activation,
)
from transferkit.engine.inference import predict_function
from transferkit.errors import CacheTooLarge
from transferkit.records.layout import cache_file_name
from transferkit.utils.io import os_error
from transferkit.utils.locks import LOCK_FILE, try_lock

__all__ = [
    "FeatureCache",
]


class FeatureCache:
    """The outputs of a model's leading layers for a phase's data.

    Held in memory, as one tensor per input, when they fit in
    `memory_limit` bytes; otherwise written to files in `folder` (a
    temporary folder when `None`), which `close` deletes.

    An input may be an array, or a finite `tf.data.Dataset` of `(x, y)`
    batches, read once: its labels are kept in `labels` and the size of its
    first batch in `batch_sizes`. A dataset whose length is unknown is held
    in memory.

    With `views` above 1, the training input's features are computed
    `views` times, with the first `augmenting` layers in training mode (the
    augmentation layers in front of the frozen ones, each time a new draw)
    and the rest in inference mode: its features then hold view `k` of
    sample `i` at row `k * samples + i`. Other inputs get one view, all in
    inference mode (no augmentation).

    Args:
        layers: the layers to apply, in order, in inference mode.
        inputs: the arrays or datasets to compute features for, by name
            (`"train"`, `"validation"`).
        memory_limit: bytes the cache may hold in memory.
        folder: where files go when the cache is larger. Defaults to `None`.
        disk: whether a cache larger than `memory_limit` may go to files;
            if not, `CacheTooLarge` is raised before anything is computed.
            Defaults to `True`.
        views: augmented views of the training input. Defaults to `1`.
        augmenting: leading layers that run in training mode for those
            views. Defaults to `0`.
        measure_blocks: measure the fastest block size on the data
            (`BlockSizer`); `False` takes fixed blocks, so that the features
            are the same bits every time. Defaults to `True`.
    """

    def __init__(
        self,
        layers: Sequence[keras.Layer],
        inputs: dict[str, np.ndarray | tf.data.Dataset],
        *,
        memory_limit: int,
        folder: str | os.PathLike | None = None,
        disk: bool = True,
        views: int = 1,
        augmenting: int = 0,
        measure_blocks: bool = True,
    ):
        began = time.perf_counter()
        self._layers = list(layers)
        self.measure_blocks = measure_blocks
        self.block_size: int | None = None
        """Samples per forward pass over an array, as measured (or taken)."""
        # A dataset's first batch is read here once, for the probe and the
        # size; the features are computed in the pass below.
        firsts = [_first_batch(x) for x in inputs.values()]
        spec = tf.TensorSpec(firsts[0].shape, firsts[0].dtype)
        forward = predict_function(layers, spec)
        augmented = predict_function(layers, spec, augmenting) if views > 1 else forward
        probe = forward(firsts[0][:1])
        self.trace_seconds = time.perf_counter() - began
        """Of `seconds`: reading the first batch, and tracing the forward
        pass with a first sample through it."""
        self.views = views
        self.sample_shape = tuple(probe.shape[1:])
        self.dtype = probe.dtype.name
        row_bytes = probe.shape.num_elements() * probe.dtype.size
        self.nbytes = row_bytes * sum(
            _rows(x, first) * (views if name == "train" else 1)
            for (name, x), first in zip(inputs.items(), firsts, strict=True)
        )
        self.on_disk = self.nbytes > memory_limit
        if self.on_disk and not disk:
            raise CacheTooLarge(
                f"its {_size(self.nbytes)} would exceed feature_cache_memory "
                f"({_size(memory_limit)})"
            )
        self._temporary: TemporaryCacheFolder | None = None
        self.folder: Path | None = None
        if self.on_disk:
            if folder is None:
                self._temporary = TemporaryCacheFolder()
                folder = self._temporary.path
            self.folder = Path(folder)
        self.features: dict[str, tf.Tensor | FeatureFile | FeatureViews] = {}
        self.labels: dict[str, np.ndarray] = {}
        self.sample_weights: dict[str, np.ndarray] = {}  # Those a dataset yields.
        self.batch_sizes: dict[str, int] = {}
        try:
            for (name, x), first in zip(inputs.items(), firsts, strict=True):
                count = views if name == "train" else 1
                functions = [augmented if count > 1 else forward] * count
                self.features[name] = self._compute(
                    name, x, functions, probe, _rows(x, first)
                )
            # Of a dataset, the rows read; of arrays, as computed above.
            self.nbytes = sum(len(f) for f in self.features.values()) * row_bytes
            self.seconds = time.perf_counter() - began  # To compute the features.
        except BaseException:
            self.close()
            raise

    def _compute(self, name, x, functions, probe, rows):
        """The features of `x`, one view per function, in memory or files;
        `rows` is its number of samples (for a dataset, at most that many;
        0 if unknown), for which one buffer is filled in place."""
        if self.folder is not None:
            return self._compute_files(name, x, functions, probe)
        views, dtype = len(functions), probe.dtype.as_numpy_dtype
        out = aligned_empty((views * rows, *self.sample_shape), dtype)
        done, spilled = 0, None
        for start, batch in self._batches(name, x, probe):
            blocks = [function(batch).numpy() for function in functions]
            count = len(blocks[0])
            if spilled is None and start + count > rows:
                # A dataset of unknown length, or whose first batch was not
                # its largest: the rest is kept in blocks, joined at the end.
                spilled = [
                    [out[v * rows : v * rows + done].copy()] for v in range(views)
                ]
            if spilled is not None:
                for store, block in zip(spilled, blocks, strict=True):
                    store.append(block)
                continue
            for view, block in enumerate(blocks):
                out[view * rows + start : view * rows + start + count] = block
            done = start + count
        if spilled is not None:  # One copy, into a buffer read without one.
            joined = [block for store in spilled for block in store]
            out = aligned_empty((sum(map(len, joined)), *self.sample_shape), dtype)
            return as_tensor(np.concatenate(joined, out=out))
        if done < rows:  # A dataset's short last batch: the views close up.
            for view in range(1, views):
                out[view * done : (view + 1) * done] = out[
                    view * rows : view * rows + done
                ]
        return as_tensor(out[: views * done])

    def _compute_files(self, name, x, functions, probe):
        """The features of `x` in files, one per view."""
        stores = [
            FeatureFile(
                self.folder / cache_file_name(name, view),
                self.sample_shape,
                probe.dtype.as_numpy_dtype,
            )
            for view in range(len(functions))
        ]
        views = FeatureViews(stores)
        self.features[name] = views  # Closed if a write fails.
        for _, batch in self._batches(name, x, probe):
            for store, function in zip(stores, functions, strict=True):
                store.append(function(batch).numpy())
        return stores[0] if len(stores) == 1 else views

    def _batches(self, name, x, probe):
        """`(first row, input block)` of `x`: an array's blocks sized by a
        `BlockSizer` as they are computed (the caller computes each block
        before asking for the next); a dataset's batches as it yields them,
        its labels going to `labels[name]`."""
        if not isinstance(x, tf.data.Dataset):
            activation = largest_activation(self._layers, x.shape[1:])
            sizer = BlockSizer(
                len(x), activation * probe.dtype.size, self.measure_blocks
            )
            start = 0
            while start < len(x):
                size = sizer.next_size()
                block = tf.constant(x[start : start + size])
                began = time.perf_counter()
                yield start, block  # The caller computes it here.
                sizer.observe(int(block.shape[0]), time.perf_counter() - began)
                start += size
            self.block_size = sizer.chosen
            return
        labels, weights, start = [], [], 0
        for batch in x:
            if not labels:
                self.batch_sizes[name] = int(tf.shape(batch[0])[0])
            labels.append(np.asarray(batch[1]))
            if len(batch) > 2:  # (x, y, sample_weight)
                weights.append(np.asarray(batch[2]))
            yield start, batch[0]
            start += len(labels[-1])
        self.labels[name] = np.concatenate(labels)
        if weights:
            self.sample_weights[name] = np.concatenate(weights)

    def dataset(self, name, labels, batch_size, *, shuffle, sample_weight=None):
        """One epoch of `(features, labels)` batches for `fit` (with
        `sample_weight`, one weight per sample, a third element): a
        `tf.data.Dataset` that gathers each batch from memory, or a
        `keras.utils.PyDataset` that reads it from the files. Shuffled anew
        every epoch when `shuffle`, from TensorFlow's (or, for files,
        NumPy's) global seed; with views, each sample's view is drawn anew
        every epoch too."""
        features = self.features[name]
        views = self.views_of(name)
        if isinstance(features, FeatureFile | FeatureViews):
            return FeatureBatches(
                features,
                labels,
                batch_size,
                shuffle=shuffle,
                views=views,
                sample_weight=sample_weight,
            )
        per_sample = tuple(
            tf.constant(values)
            for values in (labels, sample_weight)
            if values is not None
        )
        size = len(features) // views

        def batches_of_rows(_):
            # One permutation per epoch: cheaper than a shuffle buffer, which
            # takes the rows one at a time.
            rows = tf.range(size, dtype=tf.int64)
            if shuffle:
                rows = tf.random.shuffle(rows)
            if views > 1:
                rows += size * tf.random.uniform([size], 0, views, tf.int64)
            starts = tf.data.Dataset.range(0, size, batch_size)
            return starts.map(lambda start: rows[start : start + batch_size])

        # The arrays come in as a dataset, as Keras' own array adapter does:
        # captured by the map function, they would be copied into the
        # iterator of every epoch.
        rows = (
            tf.data.Dataset.from_tensors(0)
            .flat_map(batches_of_rows)
            .apply(tf.data.experimental.assert_cardinality(-(-size // batch_size)))
        )
        arrays = tf.data.Dataset.from_tensors((features, *per_sample)).repeat()
        return (
            tf.data.Dataset.zip((rows, arrays))
            .map(
                lambda rows, arrays: (
                    tf.gather(arrays[0], rows),
                    *(tf.gather(values, rows % size) for values in arrays[1:]),
                )
            )
            .prefetch(tf.data.AUTOTUNE)
        )

    def views_of(self, name: str) -> int:
        """How many views the features of `name` hold."""
        return self.views if name == "train" else 1

    origin = ""
    """How the cache came to the phase, when not computed by it."""

    def describe(self) -> str:
        where = f"on disk in {str(self.folder)!r}" if self.on_disk else "in memory"
        views = f", {self.views} fixed augmented views" if self.views > 1 else ""
        origin = f", {self.origin}" if self.origin else ""
        return f"{self.nbytes / 2**20:,.1f} MiB {where}{views}{origin}"

    def close(self) -> None:
        """Frees the cache and deletes its files, if any."""
        for features in self.features.values():
            if isinstance(features, FeatureFile | FeatureViews):
                features.close()
        self.features.clear()
        if self._temporary is not None:
            self._temporary.remove()
            self._temporary = None


def _size(nbytes: int) -> str:
    """E.g. `"13.5 KiB"`, `"1.2 GiB"`."""
    for unit in ("bytes", "KiB", "MiB"):
        if nbytes < 1024:
            return f"{nbytes:,.1f} {unit}" if unit != "bytes" else f"{nbytes} bytes"
        nbytes /= 1024
    return f"{nbytes:,.1f} GiB"


def _first_batch(x) -> tf.Tensor:
    """A dataset's first batch of samples; of an array, its first sample."""
    if isinstance(x, tf.data.Dataset):
        return next(iter(x.take(1)))[0]
    return tf.constant(x[:1])


def _rows(x, first: tf.Tensor) -> int:
    """Samples in an array; for a dataset, at most its batches times the
    size of its `first` batch, or 0 when its length is unknown."""
    if not isinstance(x, tf.data.Dataset):
        return len(x)
    batches = int(x.cardinality())
    if batches < 0:
        return 0
    return batches * int(tf.shape(first)[0])


class FeatureFile:
    """Cached features in a file: written in blocks, read a batch at a time.

    Plain reads, not a memory map, so the pages read do not count towards
    the process's resident memory.

    Args:
        path: the file.
        sample_shape: the shape of one row.
        dtype: the rows' dtype.
    """

    def __init__(self, path: Path, sample_shape: tuple[int, ...], dtype: np.dtype):
        self.path = Path(path)
        self.sample_shape, self.dtype = tuple(sample_shape), np.dtype(dtype)
        self.row_bytes = math.prod(self.sample_shape) * self.dtype.itemsize
        self.rows = 0
        self._stream = open(self.path, "w+b")  # noqa: SIM115 (close() closes it)

    def __len__(self) -> int:
        return self.rows

    def append(self, values: np.ndarray) -> None:
        """Writes `values` after the rows written so far.

        Raises:
            OSError: naming the file, if it cannot be written (a full disk).
        """
        try:
            self._stream.seek(self.rows * self.row_bytes)
            self._stream.write(np.ascontiguousarray(values, self.dtype).tobytes())
            self._stream.flush()
        except OSError as error:
            raise os_error(
                error,
                f"Could not write the feature cache {str(self.path)!r} "
                f"({error.strerror or error}) after {self.rows:,} rows; the run's "
                "checkpoints are untouched and the cache file is deleted. Free "
                "some space, raise `feature_cache_memory` to keep the cache in "
                "memory, or pass feature_cache=False.",
            ) from error
        self.rows += len(values)

    def read(self, indices: np.ndarray) -> np.ndarray:
        """The rows at `indices`, in that order (read in file order)."""
        out = np.empty((len(indices), *self.sample_shape), self.dtype)
        rows = out.reshape(len(indices), -1).view(np.uint8)
        for position in np.argsort(indices, kind="stable"):
            self._stream.seek(int(indices[position]) * self.row_bytes)
            self._stream.readinto(memoryview(rows[position]))
        return out

    def close(self) -> None:
        try:
            self._stream.close()
        except OSError:
            pass  # A full disk fails the flush; the file goes anyway.
        self.path.unlink(missing_ok=True)


class TemporaryCacheFolder:
    """A folder for a cache outside any run folder, `transferkit-cache-*` in
    the system's temporary folder, locked for as long as it is used. Making
    one deletes the folders of processes that are gone (killed before they
    could delete theirs): their lock is free."""

    PREFIX = "transferkit-cache-"

    def __init__(self):
        _remove_abandoned(Path(tempfile.gettempdir()), self.PREFIX)
        self.path = Path(tempfile.mkdtemp(prefix=self.PREFIX))
        self._lock = try_lock(self.path / LOCK_FILE)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def _remove_abandoned(parent: Path, prefix: str) -> None:
    for folder in parent.glob(f"{prefix}*"):
        lock = folder / LOCK_FILE
        if not lock.is_file():
            continue  # Not one of ours, or still being made.
        descriptor = try_lock(lock)
        if descriptor is not None:
            shutil.rmtree(folder, ignore_errors=True)
            os.close(descriptor)


class FeatureViews:
    """The views of cached features, one `FeatureFile` each: row
    `k * samples + i` is view `k` of sample `i`."""

    def __init__(self, files: Sequence[FeatureFile]):
        self.files = list(files)

    def __len__(self) -> int:
        return sum(len(f) for f in self.files)

    def read(self, indices: np.ndarray) -> np.ndarray:
        samples = len(self.files[0])
        first = self.files[0]
        out = np.empty((len(indices), *first.sample_shape), first.dtype)
        view, row = np.divmod(np.asarray(indices), samples)
        for number, file in enumerate(self.files):
            chosen = view == number
            if chosen.any():
                out[chosen] = file.read(row[chosen])
        return out

    def close(self) -> None:
        for file in self.files:
            file.close()


class FeatureBatches(keras.utils.PyDataset):
    """Shuffled `(features, labels)` batches from a `FeatureFile` (or the
    `FeatureViews` of `views` views, one drawn per sample and epoch); the
    order is drawn from NumPy's global generator, which a seeded run
    seeds."""

    def __init__(
        self, features, labels, batch_size, *, shuffle, views=1, sample_weight=None
    ):
        super().__init__()
        self.features, self.labels = features, labels
        self.sample_weight = sample_weight
        self.batch_size, self.shuffle, self.views = batch_size, shuffle, views
        self.samples = len(features) // views
        self._permutation = np.arange(self.samples)
        self.on_epoch_end()

    def __len__(self) -> int:
        return math.ceil(self.samples / self.batch_size)

    def __getitem__(self, index):
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        samples = rows % self.samples
        if self.sample_weight is None:
            return self.features.read(rows), self.labels[samples]
        return (
            self.features.read(rows),
            self.labels[samples],
            self.sample_weight[samples],
        )

    def on_epoch_end(self):
        if self.shuffle:
            np.random.shuffle(self._permutation)
        self.order = self._permutation
        if self.views > 1:
            view = np.random.randint(0, self.views, self.samples)
            self.order = self._permutation + self.samples * view
