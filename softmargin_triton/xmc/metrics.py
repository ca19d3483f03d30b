"""Ranking metrics of extreme multi-label classification over predicted top-k label ids.

`topk` is a (B, ≥ k) integer tensor of predicted label ids per row, best first (e.g. from
`LinearMultiLabelSoftMarginLoss.topk`); `targets` a SparseTargets of shape (B, L). Hits are found by a
binary search in the rows' sorted positives, so no (B, L) tensor is built. Each metric returns the mean over
rows as a 0-dim float32 tensor, on the targets' device, without a host sync.
"""

import math

import torch
from torch import Tensor

from softmargin_triton.sparse_targets import SparseTargets, positive_rows

__all__ = ["ndcg_at_k", "precision_at_k", "propensity", "psp_at_k"]


def _hits(topk: Tensor, targets: SparseTargets, k: int) -> Tensor:
    """(B, k) float32: 1 where the j-th predicted label of a row is one of its positives."""
    if topk.dim() != 2 or topk.shape[0] != targets.shape[0] or topk.shape[1] < k or k < 1:
        raise ValueError(
            f"topk must be (B={targets.shape[0]}, ≥ k={k}) label ids with k ≥ 1, "
            f"got shape {tuple(topk.shape)}"
        )
    if topk.is_floating_point() or topk.dtype == torch.bool:
        raise ValueError(f"topk must hold integer label ids, got {topk.dtype}")
    num_labels = targets.num_labels
    # Rows are sorted and each row's labels too, so row·L + label is one ascending key per positive.
    keys = positive_rows(targets.indptr, targets.nnz) * num_labels + targets.indices.to(torch.int64)
    predicted = topk[:, :k].to(device=keys.device, dtype=torch.int64)
    rows = torch.arange(topk.shape[0], device=keys.device)[:, None]
    queries = rows * num_labels + predicted.clamp(0, max(num_labels - 1, 0))
    found = torch.searchsorted(keys, queries).clamp(max=max(keys.numel() - 1, 0))
    in_range = (predicted >= 0) & (predicted < num_labels)
    hits = in_range & (keys[found] == queries) if keys.numel() else torch.zeros_like(in_range)
    return hits.to(torch.float32)


def precision_at_k(topk: Tensor, targets: SparseTargets, k: int) -> Tensor:
    """P@k = |top-k ∩ positives| / k, averaged over rows."""
    return _hits(topk, targets, k).sum(dim=1).div(k).mean()


def _discounts(k: int, device: torch.device) -> Tensor:
    return 1.0 / torch.log2(torch.arange(2, k + 2, device=device, dtype=torch.float32))


def ndcg_at_k(topk: Tensor, targets: SparseTargets, k: int) -> Tensor:
    """nDCG@k = Σ_j hit_j / log2(j + 1) over the top k, divided by its best value for the row's number of
    positives (min(k, |positives|) leading hits); a row without positives scores 0."""
    hits = _hits(topk, targets, k)
    discounts = _discounts(k, hits.device)
    dcg = hits @ discounts
    best_count = targets.indptr.diff().clamp(max=k)
    ideal = torch.cat([discounts.new_zeros(1), discounts.cumsum(0)])[best_count]
    return torch.where(ideal > 0, dcg / ideal.clamp(min=1e-30), 0.0).mean()


def propensity(label_counts: Tensor, num_points: int, A: float = 0.55, B: float = 1.5) -> Tensor:
    """Jain et al. (2016) propensity of each label: 1 / (1 + C·(n_l + B)^-A), C = (ln N - 1)·(B + 1)^A,
    from the labels' training counts n_l (L,) and the number of training points N. float32 (L,)."""
    c = (math.log(num_points) - 1.0) * (B + 1.0) ** A
    return 1.0 / (1.0 + c * (label_counts.to(torch.float32) + B).pow(-A))


def _best_row_sums(values: Tensor, targets: SparseTargets, k: int) -> Tensor:
    """Per row, the sum of the k largest `values` (nnz,) among its positives: (B,) float32, no host sync."""
    rows = positive_rows(targets.indptr, targets.nnz)
    by_value = torch.argsort(values, descending=True, stable=True)
    order = by_value[torch.argsort(rows[by_value], stable=True)]  # by row, each row's values descending
    rank = torch.arange(targets.nnz, device=values.device) - targets.indptr[rows]  # rows[order] == rows
    kept = torch.where(rank < k, values[order], 0.0)
    return torch.zeros(targets.shape[0], device=values.device).index_add_(0, rows, kept)


def psp_at_k(topk: Tensor, targets: SparseTargets, k: int, propensity: Tensor) -> Tensor:
    """Propensity-scored precision: Σ over the top k of hit_j / p_label, averaged over rows, divided by the
    same average for the best possible top k (each row's k positives of largest 1/p) — the ratio of means
    that the Extreme Classification Repository's tools report. `propensity` (L,) as from `propensity`."""
    hits = _hits(topk, targets, k)
    inverse = 1.0 / propensity.to(device=hits.device, dtype=torch.float32)
    predicted = topk[:, :k].to(device=hits.device, dtype=torch.int64).clamp(0, max(targets.num_labels - 1, 0))
    scored = (hits * inverse[predicted]).sum(dim=1).mean()
    best = _best_row_sums(inverse[targets.indices.to(torch.int64)], targets, k).mean()
    return torch.where(best > 0, scored / best.clamp(min=1e-30), 0.0)
