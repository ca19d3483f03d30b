"""SparseTargets: constructors, canonical form, round trips and the errors for bad label ids."""

import pytest
import torch
from conftest import DEVICE, zipf_label_lists

import softmargin_triton as st


def dense_from_lists(lists, num_labels, dtype=torch.float32):
    """The (B, L) target the lists describe, built element by element."""
    dense = torch.zeros(len(lists), num_labels, dtype=dtype)
    for row, labels in enumerate(lists):
        for label in labels:
            dense[row, label] = 1
    return dense


def padded_from_lists(lists, pad, width):
    padded = torch.full((len(lists), width), pad, dtype=torch.int64)
    for row, labels in enumerate(lists):
        padded[row, : len(labels)] = torch.tensor(labels, dtype=torch.int64)
    return padded


def test_from_lists_sorts_and_collapses_repeats():
    targets = st.SparseTargets.from_lists([[5, 0, 2, 5], [], [1], [6, 6]], num_labels=7)
    assert targets.indptr.tolist() == [0, 3, 3, 4, 5]
    assert targets.indices.tolist() == [0, 2, 5, 1, 6]
    assert targets.indptr.dtype == torch.int64
    assert targets.indices.dtype == torch.int32
    assert targets.shape == torch.Size([4, 7])
    assert targets.num_labels == 7
    assert targets.nnz == 5
    assert repr(targets) == "SparseTargets(shape=(4, 7), nnz=5, device=cpu)"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8, torch.bool], ids=str)
def test_to_dense_matches_the_lists(dtype):
    lists = zipf_label_lists(33, 500)
    targets = st.SparseTargets.from_lists(lists, 500, device=DEVICE)
    dense = targets.to_dense(dtype)
    assert dense.dtype == dtype
    assert dense.device.type == DEVICE
    assert torch.equal(dense.cpu(), dense_from_lists(lists, 500, dtype))


@pytest.mark.parametrize("pad", [-1, -7, 500], ids=lambda p: f"pad{p}")
def test_from_padded_equals_from_lists(pad):
    lists = zipf_label_lists(21, 500)
    width = max(len(labels) for labels in lists) + 3
    targets = st.SparseTargets.from_padded(padded_from_lists(lists, pad, width).to(DEVICE), 500, pad=pad)
    expected = st.SparseTargets.from_lists(lists, 500, device=DEVICE)
    assert torch.equal(targets.indptr, expected.indptr)
    assert torch.equal(targets.indices, expected.indices)
    assert targets.device == expected.device


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.int64, torch.uint8, torch.bool], ids=str
)
def test_from_dense_round_trip(dtype):
    lists = zipf_label_lists(17, 300)
    dense = dense_from_lists(lists, 300, dtype).to(DEVICE)
    targets = st.SparseTargets.from_dense(dense)
    expected = st.SparseTargets.from_lists(lists, 300, device=DEVICE)
    assert torch.equal(targets.indptr, expected.indptr)
    assert torch.equal(targets.indices, expected.indices)
    assert torch.equal(targets.to_dense(dtype), dense)


def test_constructor_accepts_canonical_arrays_and_to_moves_them():
    indptr = torch.tensor([0, 2, 2, 3])
    indices = torch.tensor([1, 4, 0])
    targets = st.SparseTargets(indptr, indices, num_labels=5)
    assert targets.indices.dtype == torch.int64  # kept as given
    moved = targets.to(DEVICE)
    assert moved.device.type == DEVICE
    assert torch.equal(moved.to_dense().cpu(), dense_from_lists([[1, 4], [], [0]], 5))


def test_labels_past_int32_use_int64_indices():
    targets = st.SparseTargets.from_lists([[2**31 + 5, 3], [2**32 - 1]], num_labels=2**32)
    assert targets.indices.dtype == torch.int64
    assert targets.indices.tolist() == [3, 2**31 + 5, 2**32 - 1]


def test_empty_batch_and_no_positives():
    empty = st.SparseTargets.from_lists([], num_labels=9)
    assert empty.shape == torch.Size([0, 9])
    assert empty.to_dense().shape == (0, 9)
    none = st.SparseTargets.from_lists([[], []], num_labels=9)
    assert none.indptr.tolist() == [0, 0, 0]
    assert none.nnz == 0


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: st.SparseTargets.from_lists([[1], [3, 9]], 9), "row 1 has label 9"),
        (lambda: st.SparseTargets.from_lists([[-1]], 9), "row 0 has label -1"),
        (lambda: st.SparseTargets.from_padded(torch.tensor([[1, -1], [-2, 3]]), 9), "row 1 has label -2"),
        (lambda: st.SparseTargets.from_padded(torch.tensor([[1, 12]]), 9, pad=-1), "row 0 has label 12"),
        (lambda: st.SparseTargets.from_padded(torch.tensor([[1, 0]]), 9, pad=0), "pad=0 is a valid label"),
        (lambda: st.SparseTargets.from_padded(torch.tensor([[1.0, 2.0]]), 9), "integer tensor"),
        (lambda: st.SparseTargets.from_padded(torch.tensor([1, 2]), 9), r"\(B, K\)"),
        (lambda: st.SparseTargets.from_dense(torch.tensor([[0.0, 0.5]])), "other than 0 and 1"),
        (lambda: st.SparseTargets.from_dense(torch.tensor([[0.0, float("nan")]])), "other than 0 and 1"),
        (lambda: st.SparseTargets.from_dense(torch.tensor([0, 1])), r"\(B, L\)"),
        (lambda: st.SparseTargets(torch.tensor([1, 2]), torch.tensor([0, 1]), 3), "start at 0"),
        (lambda: st.SparseTargets(torch.tensor([0, 1]), torch.tensor([0, 1]), 3), "end at nnz"),
        (lambda: st.SparseTargets(torch.tensor([0, 2, 1, 2]), torch.tensor([0, 1]), 3), "non-decreasing"),
        (lambda: st.SparseTargets(torch.tensor([0, 2]), torch.tensor([0, 3]), 3), r"\[0, num_labels=3\)"),
        (lambda: st.SparseTargets(torch.tensor([0, 2]), torch.tensor([2, 1]), 3), "strictly ascending"),
        (lambda: st.SparseTargets(torch.tensor([0, 2]), torch.tensor([1, 1]), 3), "strictly ascending"),
        (lambda: st.SparseTargets(torch.tensor([0, 2]), torch.tensor([0.0, 1.0]), 3), "int32 or int64"),
        (lambda: st.SparseTargets(torch.tensor([0, 1], dtype=torch.int32), torch.tensor([0]), 3), "int64"),
        (lambda: st.SparseTargets.from_lists([[1.7, 2]], 4), "must be integers"),
        (lambda: st.SparseTargets.from_lists([[True]], 4), "must be integers"),
        (lambda: st.SparseTargets.from_lists([[], []], -3), "num_labels must be"),
        (lambda: st.SparseTargets.from_padded(torch.tensor([[-1]]), -3), "num_labels must be"),
    ],
    ids=[
        "lists-too-large",
        "lists-negative",
        "padded-negative-not-pad",
        "padded-too-large",
        "padded-pad-is-a-label",
        "padded-float",
        "padded-1d",
        "dense-soft",
        "dense-nan",
        "dense-1d",
        "indptr-start",
        "indptr-end",
        "indptr-decreasing",
        "index-out-of-range",
        "row-unsorted",
        "row-repeat",
        "indices-float",
        "indptr-int32",
        "lists-float",
        "lists-bool",
        "lists-negative-num-labels",
        "padded-negative-num-labels",
    ],
)
def test_bad_labels_rejected_at_construction(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_rows_sorted_across_boundaries_are_accepted():
    """A row may start with a label smaller than the previous row's last one."""
    targets = st.SparseTargets(torch.tensor([0, 2, 4]), torch.tensor([3, 4, 0, 1]), 5)
    assert torch.equal(targets.to_dense(), dense_from_lists([[3, 4], [0, 1]], 5))


def test_from_padded_uint8_keeps_label_255():
    """pad=-1 compared in the tensor's own dtype would be 255 and silently drop that label."""
    targets = st.SparseTargets.from_padded(torch.tensor([[255, 3]], dtype=torch.uint8), 300)
    assert targets.indices.tolist() == [3, 255]


def test_from_canonical_wraps_without_checking():
    indptr = torch.tensor([0, 2, 2, 3], device=DEVICE)
    indices = torch.tensor([1, 4, 0], dtype=torch.int32, device=DEVICE)
    targets = st.SparseTargets.from_canonical(indptr, indices, num_labels=5)
    assert targets.indptr is indptr and targets.indices is indices  # no copy
    assert torch.equal(targets.to_dense().cpu(), dense_from_lists([[1, 4], [], [0]], 5))
    # unchecked: arrays the constructor refuses are wrapped as given
    st.SparseTargets.from_canonical(torch.tensor([0, 1]), torch.tensor([7]), num_labels=5)
    with pytest.raises(ValueError, match="num_labels"):
        st.SparseTargets(torch.tensor([0, 1]), torch.tensor([7]), num_labels=5)
