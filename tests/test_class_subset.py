import tracemalloc

import numpy as np
import pytest

from transferkit import ClassSubset, split_classes

X = np.arange(10 * 3).reshape(10, 3)
Y = np.array([0, 5, 9, 3, 5, 7, 0, 9, 6, 8])


def test_select_relabels_in_the_requested_order_and_keeps_sample_order():
    subset = ClassSubset.select(X, Y, classes=[9, 5])

    np.testing.assert_array_equal(subset.indices, [1, 2, 4, 7])
    np.testing.assert_array_equal(subset.y, [1, 0, 1, 0])
    np.testing.assert_array_equal(subset.x, X[[1, 2, 4, 7]])
    assert subset.classes == (9, 5)
    assert subset.y.dtype == np.int64
    assert len(subset) == 4 and subset.num_classes == 2


def test_split_classes_cuts_disjoint_subsets_relabeled_from_zero():
    low, high = split_classes(X, Y, [range(0, 5, 3), range(5, 10)])

    assert low.classes == (0, 3)
    np.testing.assert_array_equal(low.indices, [0, 3, 6])
    np.testing.assert_array_equal(low.y, [0, 1, 0])
    assert high.classes == (5, 6, 7, 8, 9)
    np.testing.assert_array_equal(high.indices, [1, 2, 4, 5, 7, 8, 9])
    np.testing.assert_array_equal(high.y, [0, 4, 0, 2, 4, 1, 3])
    np.testing.assert_array_equal(high.x, X[high.indices])


def test_decode_maps_labels_and_scores_back_to_original_classes():
    high = ClassSubset.select(X, Y, classes=range(5, 10))

    np.testing.assert_array_equal(high.decode([0, 4]), [5, 9])
    np.testing.assert_array_equal(high.decode(high.y), Y[high.indices])
    scores = np.eye(5)[[3, 0]] * 0.9 + 0.02
    np.testing.assert_array_equal(high.decode(scores), [8, 5])
    np.testing.assert_array_equal(high.encode([9, 5, 7]), [4, 0, 2])


def test_decode_and_encode_reject_values_outside_the_subset():
    high = ClassSubset.select(X, Y, classes=[9, 5])
    with pytest.raises(ValueError, match=r"labels in \[0, 1\].*Received: \[2\]"):
        high.decode([0, 2])
    with pytest.raises(ValueError, match="width 2"):
        high.decode(np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"\[3\] are not in this subset"):
        high.encode([5, 3])


def test_one_hot_and_column_labels_give_the_same_subsets():
    from_ids = ClassSubset.select(X, Y, classes=[9, 5])
    for labels in (np.eye(10, dtype="float32")[Y], Y[:, None], Y.astype(float)):
        subset = ClassSubset.select(X, labels, classes=[9, 5])
        np.testing.assert_array_equal(subset.y, from_ids.y)
        np.testing.assert_array_equal(subset.indices, from_ids.indices)


def test_classes_beyond_the_label_range_and_negative_ids_work():
    y = np.array([-3, 1000, 1000, -3, 7])
    subset = ClassSubset.select(np.arange(5), y, classes=[1000, -3])
    np.testing.assert_array_equal(subset.y, [1, 0, 0, 1])


@pytest.mark.parametrize(
    "x, y, class_lists, message",
    [
        (X, Y, [[0, 5], [5, 9]], "Class 5 is in class list 0 and in class list 1"),
        (X, Y, [[0, 1]], r"Classes \[1\] have no sample in `y`"),
        (X, Y, [[]], "non-empty list of classes"),
        (X, Y, [], "at least one class list"),
        (X, Y, [[5, 5]], r"Classes \[5\] are requested twice"),
        (X[:9], Y, [[5]], r"same length. Received: len\(x\)=9, len\(y\)=10"),
        (X, Y / 2, [[5]], "integer class ids. Received dtype float64"),
        (X, np.ones((10, 3)), [[0]], "one-hot rows"),
        (X, np.ones((10, 2, 2)), [[0]], r"Received: shape=\(10, 2, 2\)"),
    ],
)
def test_bad_input_is_a_clear_value_error(x, y, class_lists, message):
    with pytest.raises(ValueError, match=message):
        split_classes(x, y, class_lists)


@pytest.mark.parametrize(
    "class_lists, message",
    [
        ("05", "list of class lists"),
        (["05"], "list of integer class ids"),
        ([[0.5]], "integer class ids. Received: 0.5"),
        ([[True]], "True"),
    ],
)
def test_malformed_class_lists_are_type_errors(class_lists, message):
    with pytest.raises(TypeError, match=message):
        split_classes(X, Y, class_lists)


def test_subsets_copy_only_their_own_samples():
    x = np.zeros((20_000, 28, 28), np.uint8)
    y = np.arange(len(x)) % 10

    tracemalloc.start()
    low, high = split_classes(x, y, [range(0, 5), range(5, 10)])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert low.x.nbytes + high.x.nbytes == x.nbytes
    assert not np.shares_memory(low.x, x)
    # The two halves, plus label bookkeeping: far from a second copy of x.
    assert peak < 1.1 * x.nbytes
