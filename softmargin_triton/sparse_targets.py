"""Positive labels of a binary (B, L) target, row-compressed: the losses' native target for huge label spaces.

A dense float32 target of 4096 × 670,091 labels is 11 GB; its ~5 positives per row are 90 KB. The losses
take a `SparseTargets` wherever they take a dense target and never build the B×L matrix.
"""

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["SparseTargets", "positive_rows", "positives_to_dense"]

_INDEX_DTYPES = (torch.int32, torch.int64)


def positive_rows(indptr: Tensor, nnz: int) -> Tensor:
    """The row of each positive, (nnz,) int64, from a row pointer (B+1,); no host sync (nnz is known)."""
    rows = torch.arange(indptr.numel() - 1, device=indptr.device)
    return torch.repeat_interleave(rows, indptr.diff(), output_size=nnz)


def positives_to_dense(indptr: Tensor, indices: Tensor, num_labels: int, dtype: torch.dtype) -> Tensor:
    """The (B, num_labels) 0/1 target in `dtype` whose positives are indptr (B+1,) / indices (nnz,)."""
    dense = torch.zeros((indptr.numel() - 1, num_labels), dtype=dtype, device=indptr.device)
    dense[positive_rows(indptr, indices.numel()), indices.to(torch.int64)] = 1
    return dense


def index_dtype(num_labels: int) -> torch.dtype:
    return torch.int32 if num_labels <= torch.iinfo(torch.int32).max else torch.int64


def _check_labels(labels: Tensor, rows: Tensor, num_labels: int, where: str) -> None:
    """Raise ValueError naming the first label outside [0, num_labels), with its row."""
    bad = (labels < 0) | (labels >= num_labels)
    if bad.any():
        first = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{where}: row {int(rows[first])} has label {int(labels[first])}, "
            f"outside [0, num_labels={num_labels})"
        )


class SparseTargets:
    """The positive labels of a binary (B, L) target in compressed-row form.

    Attributes:
        indptr: (B+1,) int64; row i's positives are `indices[indptr[i]:indptr[i+1]]`.
        indices: (nnz,) int32 (int64 when L > 2^31 - 1), each row's labels sorted ascending, no repeats.
        num_labels: L.
        shape: torch.Size([B, L]).
        device: where indptr and indices live.

    A row is a set: the constructors sort each row and collapse a label repeated within a row to one
    positive. A label outside [0, L), or a negative label other than `from_padded`'s pad, raises ValueError.
    Constructors validate, and find data-dependent sizes, on the host: on a GPU they synchronize with it
    (a few times); the losses then run without a host sync. Treat `indptr` and `indices` as read-only:
    the kernels trust the checks made when they were built.

    The losses treat a SparseTargets as the dense target `to_dense(input.dtype)`: values and gradients equal
    those of that dense call (the loss in the input's dtype, float32 for BCE under autocast).
    """

    def __init__(self, indptr: Tensor, indices: Tensor, num_labels: int) -> None:
        """Wrap CSR arrays that are already canonical (rows sorted, no repeats); checked, not repaired."""
        if indptr.dim() != 1 or indptr.dtype != torch.int64 or indptr.numel() == 0:
            raise ValueError(
                f"indptr must be a 1-D int64 tensor of B+1 ≥ 1 entries, got {indptr.dtype}"
                f" of shape {tuple(indptr.shape)}"
            )
        if indices.dim() != 1 or indices.dtype not in _INDEX_DTYPES:
            raise ValueError(
                f"indices must be a 1-D int32 or int64 tensor, got {indices.dtype} of shape "
                f"{tuple(indices.shape)}"
            )
        if indices.device != indptr.device:
            raise ValueError(f"indptr is on {indptr.device} but indices on {indices.device}")
        self._check_num_labels(num_labels)
        nnz = indices.numel()
        row_start = torch.zeros(nnz + 1, dtype=torch.bool, device=indptr.device)
        row_start[indptr.clamp(0, nnz)] = True
        ascending = (indices[1:] > indices[:-1]) | row_start[1:nnz]
        checks = torch.stack(
            [
                indptr[0] == 0,
                indptr[-1] == nnz,
                (indptr.diff() >= 0).all(),
                ((indices >= 0) & (indices < num_labels)).all(),
                ascending.all(),
            ]
        ).tolist()  # the one host sync
        messages = [
            "indptr must start at 0",
            f"indptr must end at nnz = indices.numel() = {nnz}",
            "indptr must be non-decreasing",
            f"every index must lie in [0, num_labels={num_labels})",
            "each row's indices must be strictly ascending (sorted, no repeats): build unsorted or "
            "repeated labels with SparseTargets.from_lists / from_padded, which canonicalize",
        ]
        for ok, message in zip(checks, messages, strict=True):
            if not ok:
                raise ValueError(f"SparseTargets: {message}")
        self._set(indptr, indices, num_labels)

    def _set(self, indptr: Tensor, indices: Tensor, num_labels: int) -> None:
        self.indptr = indptr
        self.indices = indices
        self.num_labels = num_labels

    @classmethod
    def from_canonical(cls, indptr: Tensor, indices: Tensor, num_labels: int) -> "SparseTargets":
        """Wrap CSR arrays without checking them and without a host sync: the caller guarantees what the
        constructor would check (indptr (B+1,) int64 from 0 to nnz, non-decreasing; indices (nnz,) int32 or
        int64 on the same device, each row's strictly ascending and in [0, num_labels)). For data loaders
        that build canonical batches on the GPU; anything else should use a checking constructor, since the
        kernels index memory with these arrays."""
        targets = cls.__new__(cls)
        targets._set(indptr, indices, num_labels)
        return targets

    @staticmethod
    def _check_num_labels(num_labels: int) -> None:
        if num_labels < 0:
            raise ValueError(f"num_labels must be ≥ 0, got {num_labels}")

    @classmethod
    def _from_coordinates(
        cls, rows: Tensor, labels: Tensor, num_rows: int, num_labels: int
    ) -> "SparseTargets":
        """From (row, label) pairs in any order, repeats allowed, labels already range-checked."""
        keys = torch.unique(rows * num_labels + labels)  # sorted by row, then label; repeats collapse
        rows = keys // num_labels
        counts = torch.bincount(rows, minlength=num_rows)
        indptr = torch.zeros(num_rows + 1, dtype=torch.int64, device=keys.device)
        torch.cumsum(counts, 0, out=indptr[1:])
        indices = (keys - rows * num_labels).to(index_dtype(num_labels))
        return cls.from_canonical(indptr, indices, num_labels)

    @classmethod
    def from_lists(
        cls, lists: Sequence[Sequence[int]], num_labels: int, device: torch.device | str | None = None
    ) -> "SparseTargets":
        """From one sequence of integer label ids per row, e.g. `[[0, 2], [1], []]`; any order, repeats
        collapse."""
        cls._check_num_labels(num_labels)
        lengths = torch.tensor([len(row) for row in lists], dtype=torch.int64)
        flat = list(itertools.chain.from_iterable(lists))
        labels = torch.tensor(flat) if flat else torch.empty(0, dtype=torch.int64)
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(
                f"SparseTargets.from_lists: label ids must be integers, got {labels.dtype} values"
            )
        labels = labels.to(torch.int64)
        rows = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
        _check_labels(labels, rows, num_labels, "SparseTargets.from_lists")
        return cls._from_coordinates(rows, labels, len(lengths), num_labels).to(device or "cpu")

    @classmethod
    def from_padded(cls, tensor: Tensor, num_labels: int, pad: int = -1) -> "SparseTargets":
        """From a (B, K) integer tensor of label ids per row, with `pad` filling the unused slots.

        Any order within a row; repeats collapse. `pad` must not be a valid label id.
        """
        if (
            tensor.dim() != 2
            or tensor.is_floating_point()
            or tensor.is_complex()
            or tensor.dtype == torch.bool
        ):
            raise ValueError(
                f"SparseTargets.from_padded: expected a (B, K) integer tensor, got {tensor.dtype} of shape "
                f"{tuple(tensor.shape)}"
            )
        cls._check_num_labels(num_labels)
        if 0 <= pad < num_labels:
            raise ValueError(f"SparseTargets.from_padded: pad={pad} is a valid label id in [0, {num_labels})")
        ids = tensor.to(torch.int64)  # compare in int64: pad=-1 must not match 255 of a uint8 tensor
        rows, slots = (ids != pad).nonzero(as_tuple=True)
        labels = ids[rows, slots]
        _check_labels(labels, rows, num_labels, "SparseTargets.from_padded")
        return cls._from_coordinates(rows, labels, tensor.shape[0], num_labels)

    @classmethod
    def from_dense(cls, tensor: Tensor) -> "SparseTargets":
        """From a (B, L) binary target of any dtype: every element must be 0 or 1 (False or True)."""
        if tensor.dim() != 2:
            raise ValueError(
                f"SparseTargets.from_dense: expected a (B, L) tensor, got shape {tuple(tensor.shape)}"
            )
        if tensor.dtype != torch.bool and not ((tensor == 0) | (tensor == 1)).all():
            raise ValueError(
                "SparseTargets.from_dense: the target holds values other than 0 and 1; soft targets "
                "need the dense path"
            )
        num_rows, num_labels = tensor.shape
        rows, labels = tensor.nonzero(as_tuple=True)  # row-major: already sorted, no repeats
        indptr = torch.zeros(num_rows + 1, dtype=torch.int64, device=tensor.device)
        torch.cumsum(torch.bincount(rows, minlength=num_rows), 0, out=indptr[1:])
        return cls.from_canonical(indptr, labels.to(index_dtype(num_labels)), num_labels)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.indptr.numel() - 1, self.num_labels))

    @property
    def device(self) -> torch.device:
        return self.indptr.device

    @property
    def nnz(self) -> int:
        """Number of positives over all rows."""
        return self.indices.numel()

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "SparseTargets":
        """The same positives on `device`."""
        return self.from_canonical(
            self.indptr.to(device, non_blocking=non_blocking),
            self.indices.to(device, non_blocking=non_blocking),
            self.num_labels,
        )

    def to_dense(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The (B, L) target: 1 at the positives, 0 elsewhere, in `dtype` (bool: True/False)."""
        return positives_to_dense(self.indptr, self.indices, self.num_labels, dtype)

    def __repr__(self) -> str:
        batch, labels = self.shape
        return f"SparseTargets(shape=({batch}, {labels}), nnz={self.nnz}, device={self.device})"
