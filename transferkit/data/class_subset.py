"""Cut a labelled data set into class subsets, relabeled from 0."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["ClassSubset", "split_classes"]


@dataclasses.dataclass(frozen=True, eq=False)
class ClassSubset:
    """The samples of some classes of a data set, relabeled `0..k-1`.

    Made by `ClassSubset.select` or `split_classes`. The relabeling follows
    the order in which the classes were requested: `classes=[9, 5]` makes 9
    label 0 and 5 label 1. Samples keep their order in the source data.

    Example:

    >>> import numpy as np
    >>> from transferkit import ClassSubset
    >>> x = np.arange(6).reshape(6, 1)
    >>> y = np.array([5, 9, 1, 9, 5, 2])
    >>> subset = ClassSubset.select(x, y, classes=[9, 5])
    >>> subset.y
    array([1, 0, 0, 1])
    >>> subset.x.ravel()
    array([0, 1, 3, 4])
    >>> subset.decode([0, 1])
    array([9, 5])
    """

    x: np.ndarray
    """The selected samples, in their order in the source data."""

    y: np.ndarray
    """Integer labels `0..len(classes)-1` (int64), even when the source
    labels were one-hot rows."""

    classes: tuple[int, ...]
    """The original class ids; the class at position `i` has label `i`."""

    indices: np.ndarray
    """Positions of the selected samples in the source arrays."""

    def __post_init__(self):
        if len(self.x) != len(self.y) or len(self.y) != len(self.indices):
            raise ValueError(
                "Expected `x`, `y` and `indices` of the same length. "
                f"Received: len(x)={len(self.x)}, len(y)={len(self.y)}, "
                f"len(indices)={len(self.indices)}"
            )

    @classmethod
    def select(
        cls, x: np.ndarray, y: np.ndarray, classes: Iterable[int]
    ) -> ClassSubset:
        """Selects the samples of `classes` and relabels them in that order.

        Args:
            x: samples, indexed along the first axis.
            y: labels, as integer class ids of shape `(n,)` or `(n, 1)`, or
                as one-hot rows of shape `(n, num_classes)`.
            classes: the original class ids to keep, e.g. `range(5, 10)`.

        Returns:
            A `ClassSubset`. `x` is copied once, for the selected samples only.

        Raises:
            ValueError: if `len(x) != len(y)`, the labels are neither ids nor
                one-hot rows, `classes` is empty or repeats a class, or a
                class has no sample in `y`.
        """
        return split_classes(x, y, [classes])[0]

    @property
    def num_classes(self) -> int:
        """How many classes the subset holds."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.y)

    def decode(self, predictions) -> np.ndarray:
        """Maps labels of this subset back to the original class ids.

        Args:
            predictions: labels `0..num_classes-1`, or a 2-D array of scores
                of shape `(n, num_classes)` (e.g. `model.predict(...)`), whose
                arg-max per row is taken.

        Returns:
            An array of original class ids.
        """
        labels = np.asarray(predictions)
        if labels.ndim == 2:
            if labels.shape[1] != self.num_classes:
                raise ValueError(
                    f"Expected scores of width {self.num_classes} (one per "
                    f"class of {self.classes}). Received: shape={labels.shape}"
                )
            labels = labels.argmax(axis=1)
        labels = _as_integer_labels(labels, "predictions")
        bad = (labels < 0) | (labels >= self.num_classes)
        if bad.any():
            raise ValueError(
                f"Expected labels in [0, {self.num_classes - 1}] for classes "
                f"{self.classes}. Received: {labels[bad][:5].tolist()}"
            )
        return np.asarray(self.classes)[labels]

    def encode(self, original) -> np.ndarray:
        """Maps original class ids to this subset's labels (`decode`'s inverse).

        Raises:
            ValueError: if an id is not one of `classes`.
        """
        original = _as_integer_labels(np.asarray(original), "original")
        lookup = {cls: label for label, cls in enumerate(self.classes)}
        unknown = sorted(set(original.tolist()) - lookup.keys())
        if unknown:
            raise ValueError(
                f"Class ids {unknown[:5]} are not in this subset. Expected "
                f"one of {list(self.classes)}."
            )
        return np.array([lookup[c] for c in original.tolist()], dtype=np.int64)


def split_classes(
    x: np.ndarray, y: np.ndarray, class_lists: Sequence[Iterable[int]]
) -> list[ClassSubset]:
    """Cuts `(x, y)` into one `ClassSubset` per list of classes.

    Args:
        x: samples, indexed along the first axis.
        y: labels, as integer class ids of shape `(n,)` or `(n, 1)`, or as
            one-hot rows of shape `(n, num_classes)`.
        class_lists: one list of original class ids per subset, e.g.
            `[range(0, 5), range(5, 10)]`. The lists must not overlap.

    Returns:
        A list of `ClassSubset`, in the order of `class_lists`. Each copies
        only its own samples out of `x`.

    Raises:
        ValueError: if `len(x) != len(y)`, the labels are neither ids nor
            one-hot rows, a list is empty or repeats a class, two lists
            share a class, or a requested class has no sample.

    Example:

    >>> import numpy as np
    >>> from transferkit import split_classes
    >>> y = np.array([0, 7, 3, 9, 5])
    >>> low, high = split_classes(np.arange(5), y, [[0, 3], [5, 7, 9]])
    >>> low.classes, low.y
    ((0, 3), array([0, 1]))
    >>> high.y, high.decode(high.y)
    (array([1, 2, 0]), array([7, 9, 5]))
    """
    x = np.asarray(x)
    ids = _class_ids(y)
    if len(x) != len(ids):
        raise ValueError(
            "Expected `x` and `y` of the same length. Received: "
            f"len(x)={len(x)}, len(y)={len(ids)}"
        )
    if isinstance(class_lists, (str, bytes)) or not isinstance(class_lists, Iterable):
        raise TypeError(
            "Expected `class_lists` to be a list of class lists, e.g. "
            f"[range(0, 5), range(5, 10)]. Received: {class_lists!r}"
        )
    lists = [_check_class_list(classes) for classes in class_lists]
    if not lists:
        raise ValueError("Expected at least one class list. Received: class_lists=[]")
    _check_disjoint(lists)
    present, counts = np.unique(ids, return_counts=True)
    count_of = dict(zip(present.tolist(), counts.tolist(), strict=True))
    subsets = []
    for classes in lists:
        missing = [c for c in classes if c not in count_of]
        if missing:
            raise ValueError(
                f"Classes {missing} have no sample in `y`. Classes present: "
                f"{sorted(count_of)}. Received: classes={list(classes)}"
            )
        labels = _relabel(ids, classes)
        indices = np.flatnonzero(labels >= 0)
        subsets.append(
            ClassSubset(
                x=x[indices],
                y=labels[indices].astype(np.int64),
                classes=classes,
                indices=indices,
            )
        )
    return subsets


def _relabel(ids: np.ndarray, classes: tuple[int, ...]) -> np.ndarray:
    """Label `i` where `ids == classes[i]`, -1 elsewhere."""
    order = np.argsort(classes)
    ordered = np.asarray(classes, dtype=np.int64)[order]
    position = np.searchsorted(ordered, ids).clip(max=len(ordered) - 1)
    return np.where(ordered[position] == ids, order[position], -1)


def _class_ids(y) -> np.ndarray:
    """Integer class ids from ids of shape (n,) or (n, 1), or one-hot rows."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 1:
        return _as_integer_labels(y, "y")
    if y.ndim == 2:
        if not (np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all()):
            raise ValueError(
                "Expected `y` of shape (n, num_classes) to hold one-hot rows "
                "(a single 1 per row, zeros elsewhere). Received rows such as "
                f"{y[0].tolist()}"
            )
        return y.argmax(axis=1)
    raise ValueError(
        "Expected `y` to be class ids of shape (n,) or (n, 1), or one-hot "
        f"rows of shape (n, num_classes). Received: shape={y.shape}"
    )


def _as_integer_labels(labels: np.ndarray, what: str) -> np.ndarray:
    if labels.dtype == bool or not (
        np.issubdtype(labels.dtype, np.integer)
        or (
            np.issubdtype(labels.dtype, np.floating)
            and np.array_equal(labels, np.round(labels))
        )
    ):
        raise ValueError(
            f"Expected `{what}` to hold integer class ids. Received dtype "
            f"{labels.dtype} with values such as {labels.ravel()[:5].tolist()}"
        )
    return labels.astype(np.int64, copy=False).ravel()


def _check_class_list(classes) -> tuple[int, ...]:
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Iterable):
        raise TypeError(
            "Expected each class list to be a list of integer class ids, e.g. "
            f"range(0, 5). Received: {classes!r}"
        )
    classes = list(classes)
    if not classes:
        raise ValueError("Expected a non-empty list of classes. Received: classes=[]")
    for c in classes:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
            raise TypeError(
                f"Expected integer class ids. Received: {c!r} in classes={classes}"
            )
    classes = tuple(int(c) for c in classes)
    repeated = sorted({c for c in classes if classes.count(c) > 1})
    if repeated:
        raise ValueError(
            f"Classes {repeated} are requested twice. Received: classes={list(classes)}"
        )
    return classes


def _check_disjoint(lists):
    owner = {}
    for position, classes in enumerate(lists):
        for c in classes:
            if c in owner:
                raise ValueError(
                    f"Class {c} is in class list {owner[c]} and in class list "
                    f"{position}; the lists must not overlap. Received: "
                    f"class_lists={[list(cl) for cl in lists]}"
                )
            owner[c] = position
