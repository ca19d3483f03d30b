"""Batching an `XMCDataset`: `batches` yields (features, labels) on a device, in order or shuffled, with
vectorized row gathers and no host synchronization per batch for a dataset already on the GPU.
"""

from collections.abc import Iterator
from typing import Literal, overload

import torch
from torch import Tensor

from softmargin_triton.sparse_targets import SparseTargets
from softmargin_triton.xmc.dataset import SparseFeatures, XMCDataset

__all__ = ["batches"]


def _gather_rows(
    indptr: Tensor, host_indptr: Tensor, rows: Tensor, columns: tuple[Tensor, ...]
) -> tuple[Tensor, list[Tensor]]:
    """Rows `rows` (B,) int64 on the CPU of a CSR matrix: (indptr (B+1,), each of `columns` gathered).

    The sizes come from `host_indptr`, the CPU copy of `indptr`, so that gathering on a GPU never waits
    for it: each row becomes the contiguous range starting at its old start, shifted to its new start.
    """
    nnz = int((host_indptr[rows + 1] - host_indptr[rows]).sum())
    rows = rows.to(indptr.device, non_blocking=True)
    starts = indptr[rows]
    new_indptr = torch.zeros(rows.numel() + 1, dtype=torch.int64, device=indptr.device)
    torch.cumsum(indptr[rows + 1] - starts, 0, out=new_indptr[1:])
    shift = torch.repeat_interleave(starts - new_indptr[:-1], new_indptr.diff(), output_size=nnz)
    source = shift + torch.arange(nnz, device=indptr.device)
    return new_indptr, [column[source] for column in columns]


def _slice_rows(
    indptr: Tensor, host_indptr: Tensor, start: int, stop: int, columns: tuple[Tensor, ...]
) -> tuple[Tensor, list[Tensor]]:
    """Rows start..stop-1 of a CSR matrix, as `_gather_rows` but the columns are views, not copies."""
    begin, end = int(host_indptr[start]), int(host_indptr[stop])
    return indptr[start : stop + 1] - begin, [column[begin:end] for column in columns]


def _move(tensor: Tensor, device: torch.device) -> Tensor:
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        # Page-locked memory lets the copy run asynchronously, overlapping the consumer's kernels.
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


@overload
def batches(
    dataset: XMCDataset,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    drop_last: bool = False,
    dense: Literal[False] = False,
) -> Iterator[tuple[SparseFeatures, SparseTargets]]: ...


@overload
def batches(
    dataset: XMCDataset,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    drop_last: bool = False,
    dense: Literal[True],
) -> Iterator[tuple[Tensor, SparseTargets]]: ...


def batches(
    dataset: XMCDataset,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    drop_last: bool = False,
    dense: bool = False,
) -> Iterator[tuple[SparseFeatures | Tensor, SparseTargets]]:
    """One pass over `dataset` in batches of `batch_size` points: (features, labels) on `device`.

    Features are a SparseFeatures (B rows), or with `dense=True` the (B, F) float32 matrix (built on
    `device` after the sparse rows travel there); labels a SparseTargets (B, L). The last batch is smaller
    unless `drop_last`. With `shuffle`, the order is `torch.randperm(N, generator=generator)` (a CPU
    generator; the global one when None), drawn when iteration starts, so each pass reshuffles.

    Rows are gathered with vectorized index arithmetic where the dataset lives, then moved (from the CPU
    to a GPU through page-locked memory, asynchronously); batch sizes are computed from a CPU copy of the
    row pointers, so a dataset already on the GPU is batched without host synchronization. In order
    (no shuffle) the batches are slices of the dataset's arrays.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    target = dataset.features.device if device is None else torch.device(device)
    return _batches(dataset, batch_size, shuffle, generator, target, drop_last, dense)


def _batches(
    dataset: XMCDataset,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None,
    device: torch.device,
    drop_last: bool,
    dense: bool,
) -> Iterator[tuple[SparseFeatures | Tensor, SparseTargets]]:
    features, labels = dataset.features, dataset.labels
    feature_host, label_host = features.indptr.cpu(), labels.indptr.cpu()
    count = dataset.num_points
    order = torch.randperm(count, generator=generator) if shuffle else None
    stop = count - count % batch_size if drop_last else count
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, count)
        if order is None:
            feature_ptr, (ids, values) = _slice_rows(
                features.indptr, feature_host, start, end, (features.indices, features.values)
            )
            label_ptr, (label_ids,) = _slice_rows(labels.indptr, label_host, start, end, (labels.indices,))
        else:
            rows = order[start:end]
            feature_ptr, (ids, values) = _gather_rows(
                features.indptr, feature_host, rows, (features.indices, features.values)
            )
            label_ptr, (label_ids,) = _gather_rows(labels.indptr, label_host, rows, (labels.indices,))
        batch_features = SparseFeatures(
            _move(feature_ptr, device), _move(ids, device), _move(values, device), features.num_features
        )
        # Rows of a canonical SparseTargets are canonical: wrap them without the constructor's checks,
        # which would synchronize with a GPU once per batch.
        batch_labels = SparseTargets.from_canonical(
            _move(label_ptr, device), _move(label_ids, device), labels.num_labels
        )
        yield (batch_features.to_dense() if dense else batch_features), batch_labels
