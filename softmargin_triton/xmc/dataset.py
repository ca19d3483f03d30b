"""The XMC data containers: `SparseFeatures` (CSR rows of feature id and float32 value) and `XMCDataset`
(N points: their features and their positive labels, a `SparseTargets` (N, L), the losses' native sparse
target); and `CSRChunks`, the row chunks the reader and the generator build a dataset from.

Everything lives on the CPU until `batches` (or `XMCDataset.to`) moves it.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from softmargin_triton.sparse_targets import SparseTargets, index_dtype, positive_rows

__all__ = ["SparseFeatures", "XMCDataset"]


@dataclass(frozen=True, eq=False)
class SparseFeatures:
    """Sparse feature rows in compressed-row form: row i holds the pairs (indices[j], values[j]) for
    j in [indptr[i], indptr[i+1]).

    Attributes:
        indptr: (N+1,) int64, from 0 up to nnz, non-decreasing.
        indices: (nnz,) int64 feature ids in [0, num_features), ascending without repeats within a row.
        values: (nnz,) float32.
        num_features: F.

    Construction checks dtypes, shapes and devices only, so that it never waits on a GPU; the readers and
    the generator build the arrays canonical and `batches` keeps them so.
    """

    indptr: Tensor
    indices: Tensor
    values: Tensor
    num_features: int

    def __post_init__(self) -> None:
        if self.indptr.dim() != 1 or self.indptr.dtype != torch.int64 or self.indptr.numel() == 0:
            raise ValueError(
                f"SparseFeatures: indptr must be a 1-D int64 tensor of N+1 ≥ 1 entries, got "
                f"{self.indptr.dtype} of shape {tuple(self.indptr.shape)}"
            )
        if self.indices.dim() != 1 or self.indices.dtype != torch.int64:
            raise ValueError(
                f"SparseFeatures: indices must be a 1-D int64 tensor, got {self.indices.dtype} of shape "
                f"{tuple(self.indices.shape)}"
            )
        if self.values.shape != self.indices.shape or self.values.dtype != torch.float32:
            raise ValueError(
                f"SparseFeatures: values must be float32 of the indices' shape {tuple(self.indices.shape)}, "
                f"got {self.values.dtype} of shape {tuple(self.values.shape)}"
            )
        if not self.indptr.device == self.indices.device == self.values.device:
            raise ValueError(
                f"SparseFeatures: indptr, indices and values must share a device, got {self.indptr.device}, "
                f"{self.indices.device} and {self.values.device}"
            )
        if self.num_features < 0:
            raise ValueError(f"SparseFeatures: num_features must be ≥ 0, got {self.num_features}")

    @property
    def num_rows(self) -> int:
        return self.indptr.numel() - 1

    @property
    def nnz(self) -> int:
        return self.indices.numel()

    @property
    def device(self) -> torch.device:
        return self.indptr.device

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "SparseFeatures":
        """The same rows on `device`."""
        return SparseFeatures(
            self.indptr.to(device, non_blocking=non_blocking),
            self.indices.to(device, non_blocking=non_blocking),
            self.values.to(device, non_blocking=non_blocking),
            self.num_features,
        )

    def to_dense(self) -> Tensor:
        """The (N, F) float32 matrix; a repeated (row, id), which canonical rows never hold, would add up as
        in the embedding bag."""
        dense = torch.zeros(self.num_rows, self.num_features, dtype=torch.float32, device=self.device)
        rows = positive_rows(self.indptr, self.nnz)
        return dense.index_put_((rows, self.indices), self.values, accumulate=True)

    def embedding_bag_inputs(self) -> tuple[Tensor, Tensor, Tensor]:
        """(input (nnz,) int64, offsets (N,) int64, per_sample_weights (nnz,) float32) for
        `nn.EmbeddingBag(num_features, dim, mode="sum")(input, offsets, per_sample_weights)`, which then
        equals `to_dense() @ weight` without building the dense matrix."""
        return self.indices, self.indptr[:-1], self.values


@dataclass(frozen=True, eq=False)
class XMCDataset:
    """N points: their sparse features (N rows over F features) and their positive labels (N, L)."""

    features: SparseFeatures
    labels: SparseTargets

    def __post_init__(self) -> None:
        if self.features.num_rows != self.labels.shape[0]:
            raise ValueError(
                f"XMCDataset: {self.features.num_rows} feature rows but {self.labels.shape[0]} label rows"
            )
        if self.features.device != self.labels.device:
            raise ValueError(
                f"XMCDataset: features on {self.features.device} but labels on {self.labels.device}"
            )

    @property
    def num_points(self) -> int:
        return self.features.num_rows

    @property
    def num_features(self) -> int:
        return self.features.num_features

    @property
    def num_labels(self) -> int:
        return self.labels.num_labels

    def label_counts(self) -> Tensor:
        """(L,) int64: how many points have each label, e.g. for `xmc.metrics.propensity`."""
        return torch.bincount(self.labels.indices.to(torch.int64), minlength=self.num_labels)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "XMCDataset":
        """The same dataset on `device`."""
        return XMCDataset(self.features.to(device, non_blocking), self.labels.to(device, non_blocking))


class CSRChunks:
    """Chunks of CSR rows (row counts, column ids and, for features, values) accumulated as a reader parses
    them or the generator draws them; `finish` concatenates them. The caller adds canonical rows (ids
    ascending without repeats within a row)."""

    def __init__(self) -> None:
        self.counts: list[Tensor] = []
        self.ids: list[Tensor] = []
        self.values: list[Tensor] = []

    def add(self, counts: Tensor, ids: Tensor, values: Tensor | None = None) -> None:
        self.counts.append(counts)
        self.ids.append(ids)
        if values is not None:
            self.values.append(values)

    def finish(self) -> tuple[Tensor, Tensor, Tensor]:
        """(indptr (N+1,) int64, ids (nnz,) int64, values (nnz,) float32; empty when none were added)."""
        counts = torch.cat(self.counts) if self.counts else torch.empty(0, dtype=torch.int64)
        indptr = torch.zeros(counts.numel() + 1, dtype=torch.int64)
        torch.cumsum(counts, 0, out=indptr[1:])
        ids = torch.cat(self.ids) if self.ids else torch.empty(0, dtype=torch.int64)
        values = torch.cat(self.values) if self.values else torch.empty(0, dtype=torch.float32)
        return indptr, ids, values


def dataset_from_chunks(
    features: CSRChunks, num_features: int, labels: CSRChunks, num_labels: int
) -> XMCDataset:
    """The CPU dataset of the accumulated feature rows and label rows (label ids in SparseTargets' index
    dtype; the SparseTargets constructor checks that the label rows are canonical)."""
    feature_ptr, feature_ids, values = features.finish()
    label_ptr, label_ids, _ = labels.finish()
    return XMCDataset(
        SparseFeatures(feature_ptr, feature_ids, values, num_features),
        SparseTargets(label_ptr, label_ids.to(index_dtype(num_labels)), num_labels),
    )
