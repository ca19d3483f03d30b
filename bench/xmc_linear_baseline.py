"""The linear one-vs-rest baseline of the XMC trainer: the tf-idf rows straight into one logistic
classifier per label (BCE, L2), no hidden layer; the yardstick every trainer run is measured against.

    python bench/xmc_linear_baseline.py --dataset eurlex-4k --scale 0.25 --threads 2 --out reports/xmc/x.csv

A label's weights are a column of an (F, labels) table. A step reads the table's rows of the features its
batch holds (the batch as a CSR matrix over its distinct features, times those rows) and updates only
them with a lazy Adam (a row's moments change when a batch reads it, as torch's SparseAdam). The labels
are trained in chunks whose table and moments fit `--chunk-mib`; each chunk scores the test split and
keeps its top k (merged across chunks), so the (F, L) weight matrix is never held at once. The L2
penalty is charged per feature occurrence, λ/2 · Σ_f (df_f / N)·‖w_f‖², the sparse form of weight decay:
a feature row pays for its norm when a batch reads it, in proportion to how often the data do.
"""

import argparse
import datetime
import math
import time
import warnings
from pathlib import Path

import pandas as pd
import torch
from timing import cpu_model, git_commit, tqdm  # bench/timing.py, next to this script
from torch import Tensor

from softmargin_triton.linear_soft_margin import merge_topk
from softmargin_triton.sparse_targets import positive_rows
from softmargin_triton.xmc.batching import batches
from softmargin_triton.xmc.dataset import SparseFeatures, XMCDataset
from softmargin_triton.xmc.metrics import ndcg_at_k, precision_at_k, propensity, psp_at_k
from softmargin_triton.xmc.train import KS, load_dataset

__all__ = ["linear_scores", "linear_topk", "train_label_chunk"]


def _chunk_targets(targets_indptr: Tensor, targets_indices: Tensor, start: int, stop: int) -> Tensor:
    """The (B, stop - start) float32 0/1 targets of labels [start, stop) of a batch's positives."""
    rows = positive_rows(targets_indptr, targets_indices.numel())
    labels = targets_indices.to(torch.int64)
    inside = (labels >= start) & (labels < stop)
    dense = torch.zeros(targets_indptr.numel() - 1, stop - start)
    dense[rows[inside], labels[inside] - start] = 1.0
    return dense


class _LazyAdam:
    """Adam on the rows of an (F, C) float32 table that a step reads: a row's moments (and its bias
    correction, by the global step) change only when a batch holds its feature, as torch's SparseAdam."""

    def __init__(self, table: Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999)) -> None:
        self.table, self.lr, self.betas, self.step_count = table, lr, betas, 0
        self.first, self.second = torch.zeros_like(table), torch.zeros_like(table)

    def step(self, rows: Tensor, grad: Tensor) -> None:
        """Update `rows` (U,) int64, distinct, with their gradient `grad` (U, C)."""
        self.step_count += 1
        beta1, beta2 = self.betas
        first = self.first[rows].lerp_(grad, 1 - beta1)
        second = self.second[rows].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        self.first[rows], self.second[rows] = first, second
        size = self.lr * math.sqrt(1 - beta2**self.step_count) / (1 - beta1**self.step_count)
        self.table[rows] = self.table[rows].addcdiv_(first, second.sqrt_().add_(1e-8), value=-size)


# torch warns once that CSR support is in beta; the products used here are the plain, long-standing ones.
warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)


def _batch_matrix(features: SparseFeatures) -> tuple[Tensor, Tensor, Tensor]:
    """(rows (U,) int64: the batch's distinct features, their occurrence counts (U,) float32, and the
    batch as a (B, U) CSR float32 matrix over those features)."""
    rows, columns, counts = torch.unique(features.indices, return_inverse=True, return_counts=True)
    shape = (features.num_rows, rows.numel())
    matrix = torch.sparse_csr_tensor(features.indptr, columns, features.values, shape, check_invariants=False)
    return rows, counts.to(torch.float32), matrix


def train_label_chunk(
    train: XMCDataset,
    start: int,
    stop: int,
    *,
    epochs: int,
    lr: float,
    l2: float,
    batch_size: int,
    seed: int,
) -> tuple[Tensor, Tensor]:
    """Train the logistic classifiers of labels [start, stop) on `train` (a CPU dataset); returns their
    (F, stop - start) float32 weight table and (1, stop - start) bias."""
    # Zero: the convex problem's natural start; features never seen in training stay at 0.
    table, bias = torch.zeros(train.num_features, stop - start), torch.zeros(1, stop - start)
    optimizer, bias_optimizer = _LazyAdam(table, lr), _LazyAdam(bias, lr)
    every_row = torch.zeros(1, dtype=torch.int64)
    shuffle = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for features, targets in batches(train, batch_size, shuffle=True, generator=shuffle):
            rows, counts, matrix = _batch_matrix(features)
            target = _chunk_targets(targets.indptr, targets.indices, start, stop)
            # d/dlogits of the batch's mean BCE, summed over labels.
            residual = (torch.sigmoid(matrix @ table[rows] + bias) - target) / features.num_rows
            grad = matrix.t() @ residual
            # Per occurrence: the batch's share of λ/2 · Σ_f (df_f / N)·‖w_f‖².
            grad += (l2 / features.num_rows) * counts[:, None] * table[rows]
            optimizer.step(rows, grad)
            bias_optimizer.step(every_row, residual.sum(0, keepdim=True))
    return table, bias


def linear_scores(features: SparseFeatures, table: Tensor, bias: Tensor) -> Tensor:
    """The (N, C) logits of the points `features` under a label chunk's (F, C) `table` and (1, C) `bias`."""
    rows, _, matrix = _batch_matrix(features)
    return matrix @ table[rows] + bias


def linear_topk(
    train: XMCDataset,
    test: XMCDataset,
    k: int,
    *,
    epochs: int,
    lr: float,
    l2: float,
    batch_size: int,
    chunk_mib: float,
    seed: int,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """Train the one-vs-rest logistic classifiers on `train` and return each test point's k best
    (scores (N_test, k) float32, label ids (N_test, k) int64), best first. CPU datasets."""
    num_features, num_labels = train.num_features, train.num_labels
    # Three float32 tables of `chunk` columns per feature: the weights and Adam's two moments.
    chunk = max(1, min(num_labels, int(chunk_mib * 2**20 / (3 * 4 * num_features))))
    best_values = torch.empty(test.num_points, 0)
    best_labels = torch.empty(test.num_points, 0, dtype=torch.int64)
    for start in tqdm(range(0, num_labels, chunk), desc="label chunks", disable=not progress):
        stop = min(start + chunk, num_labels)
        table, bias = train_label_chunk(
            train, start, stop, epochs=epochs, lr=lr, l2=l2, batch_size=batch_size, seed=seed
        )
        values, labels = linear_scores(test.features, table, bias).topk(min(k, stop - start), dim=1)
        best_values, best_labels = merge_topk(
            torch.cat([best_values, values], 1), torch.cat([best_labels, labels + start], 1), k
        )
    return best_values, best_labels


def metrics_of(topk: Tensor, train: XMCDataset, test: XMCDataset) -> dict[str, float]:
    """P@k, nDCG@k and PSP@k (k in KS) of predicted label ids `topk` (N_test, ≥ max KS), as the trainer's."""
    label_propensity = propensity(train.label_counts(), train.num_points)
    metrics = {}
    for at in (at for at in KS if at <= topk.shape[1]):
        metrics[f"P@{at}"] = float(precision_at_k(topk, test.labels, at))
        metrics[f"nDCG@{at}"] = float(ndcg_at_k(topk, test.labels, at))
        metrics[f"PSP@{at}"] = float(psp_at_k(topk, test.labels, at, label_propensity))
    return metrics


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="a preset or an XC directory, as the trainer's")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--l2", type=float, default=1e-3, help="λ of the per-occurrence L2 penalty")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--chunk-mib", type=float, default=2048, help="memory of one label chunk's tables")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="append the result's rows to this CSV")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    return parser


def run(args: argparse.Namespace) -> dict:
    """Train and evaluate as `args` say; returns the run's record (its settings, metrics and time)."""
    torch.set_num_threads(args.threads)
    train, test = load_dataset(args.dataset, args.scale, args.data_seed)
    start = time.perf_counter()
    _, topk = linear_topk(
        train,
        test,
        max(KS),
        epochs=args.epochs,
        lr=args.lr,
        l2=args.l2,
        batch_size=args.batch_size,
        chunk_mib=args.chunk_mib,
        seed=args.seed,
        progress=args.progress,
    )
    seconds = time.perf_counter() - start
    return dict(
        method="linear one-vs-rest",
        dataset=args.dataset,
        scale=args.scale,
        train_points=train.num_points,
        test_points=test.num_points,
        epochs=args.epochs,
        settings=f"lr {args.lr}, l2 {args.l2}, batch {args.batch_size}",
        threads=args.threads,
        seconds=seconds,
        seconds_per_epoch=seconds / args.epochs,
        **metrics_of(topk, train, test),
    )


def main() -> None:
    args = parser().parse_args()
    record = run(args)
    record.update(
        cpu=cpu_model(), torch=torch.__version__, commit=git_commit(), date=datetime.date.today().isoformat()
    )
    print(
        ", ".join(
            f"{name} {value:.4f}" if isinstance(value, float) else f"{name} {value}"
            for name, value in record.items()
        )
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame([record])
        frame.to_csv(args.out, mode="a", header=not args.out.exists(), index=False)


if __name__ == "__main__":
    main()
