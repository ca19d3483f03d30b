"""softmargin_triton.xmc.batching: batches in order and shuffled, on the CPU and the test device, sparse
and dense."""

import pytest
import torch
from conftest import DEVICE
from torch import Tensor
from xmc_helpers import SMALL

from softmargin_triton.sparse_targets import SparseTargets
from softmargin_triton.xmc.batching import batches
from softmargin_triton.xmc.dataset import SparseFeatures
from softmargin_triton.xmc.synthetic import synthetic


def concatenated(parts: list[tuple[SparseFeatures, SparseTargets]]) -> tuple[Tensor, Tensor]:
    """(dense features, dense labels) of all batches, stacked on the CPU."""
    return (
        torch.cat([f.to_dense().cpu() for f, _ in parts]),
        torch.cat([t.to_dense().cpu() for _, t in parts]),
    )


SOURCES = sorted({"cpu", DEVICE})  # where the dataset lives; batches go to DEVICE


@pytest.mark.parametrize("source", SOURCES)
def test_batches_in_order_are_the_dataset(source):
    dataset, _ = synthetic(SMALL, num_points=103)
    parts = list(batches(dataset.to(source), 10, shuffle=False, device=DEVICE))
    assert [f.num_rows for f, _ in parts] == [10] * 10 + [3]
    for features, labels in parts:
        assert features.device.type == labels.device.type == torch.device(DEVICE).type
        assert labels.num_labels == SMALL.num_labels and features.num_features == SMALL.num_features
    torch.testing.assert_close(concatenated(parts), (dataset.features.to_dense(), dataset.labels.to_dense()))
    assert len(list(batches(dataset, 10, shuffle=False, drop_last=True))) == 10


@pytest.mark.parametrize("source", SOURCES)
def test_shuffled_batches_are_a_permutation_of_the_dataset(source):
    dataset, _ = synthetic(SMALL, num_points=103)
    generator = torch.Generator().manual_seed(5)
    first = list(batches(dataset.to(source), 16, shuffle=True, generator=generator, device=DEVICE))
    second = list(batches(dataset.to(source), 16, shuffle=True, generator=generator, device=DEVICE))
    x, y = dataset.features.to_dense(), dataset.labels.to_dense()
    # A random projection fingerprints each point (its features are continuous, so no two collide).
    projection = torch.randn(SMALL.num_features, dtype=torch.float64)
    orders = []
    for parts in (first, second):
        bx, by = concatenated(parts)
        order = (bx.double() @ projection).argsort()
        expected = (x.double() @ projection).argsort()
        torch.testing.assert_close((bx[order], by[order]), (x[expected], y[expected]))
        orders.append((bx.double() @ projection).tolist())
    assert orders[0] != orders[1], "each pass reshuffles"
    assert orders[0] != (x.double() @ projection).tolist(), "shuffled"
    again = list(batches(dataset, 16, shuffle=True, generator=torch.Generator().manual_seed(5)))
    torch.testing.assert_close(concatenated(again), concatenated(first))


def test_dense_batches_are_the_sparse_batches_densified():
    dataset, _ = synthetic(SMALL, num_points=50)
    sparse = batches(dataset, 8, shuffle=True, generator=torch.Generator().manual_seed(1), device=DEVICE)
    dense = batches(
        dataset, 8, shuffle=True, generator=torch.Generator().manual_seed(1), device=DEVICE, dense=True
    )
    for (features, labels), (matrix, same_labels) in zip(sparse, dense, strict=True):
        assert matrix.shape == (features.num_rows, SMALL.num_features) and matrix.dtype == torch.float32
        assert torch.equal(matrix, features.to_dense())
        assert torch.equal(same_labels.indices, labels.indices)


def test_batches_rejects_a_bad_batch_size():
    dataset, _ = synthetic(SMALL, num_points=5)
    with pytest.raises(ValueError, match="batch_size must be ≥ 1"):
        batches(dataset, 0, shuffle=False)
