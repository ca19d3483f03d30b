"""How much rank a dataset's labels need: the linear one-vs-rest solution scored through its best rank-r
approximations, beside the trainer at several hidden sizes (the rank of its bottleneck).

    python bench/xmc_rank.py --dataset eurlex-4k --scale 0.25 --ranks 128 256 512 1024 2048 \\
        --hidden 256 512 1024 2048 --threads 2 --out reports/xmc/rank

The baseline (bench/xmc_linear_baseline.py, its default settings) is trained with all labels in one chunk,
so its (F, L) weight table W exists at once; the best rank-r approximation of W in the Frobenius norm (its
truncated SVD, bias kept) then scores the test split. A model whose logits pass through an r-wide
bottleneck, such as the trainer's with hidden r, has label-feature maps of rank at most r (plus what its
one non-linear block adds): where the truncation at rank r scores well below W itself, the data's label
structure is not low-rank, and no bottleneck that narrow can match one-vs-rest by being trained better.
The trainer runs with its defaults but for --hidden, with its learning rates scaled to the width
(`trainer_config`), and at each --unscaled-hidden with the defaults' rates. Appends to OUT/rank.csv (long
format: one row per model, width and metric, with the machine, versions, commit and date).
"""

import argparse
import dataclasses
import datetime
import math
import tempfile
from pathlib import Path

import pandas as pd
import torch
import xmc_linear_baseline as baseline  # bench/, next to this script
from timing import cpu_model, git_commit
from torch import Tensor

from softmargin_triton.xmc.dataset import XMCDataset
from softmargin_triton.xmc.train import KS, TrainConfig, load_dataset, train


def truncated_topk(
    table: Tensor, bias: Tensor, test: XMCDataset, ranks: list[int], k: int
) -> dict[int, Tensor]:
    """Each rank's (N_test, k) best label ids under the rank-r truncation of the (F, L) `table`."""
    left, singular, right = torch.linalg.svd(table, full_matrices=False)
    return {
        rank: baseline.linear_scores(test.features, (left[:, :rank] * singular[:rank]) @ right[:rank], bias)
        .topk(k, dim=1)
        .indices
        for rank in ranks
    }


def trainer_config(
    dataset: str, scale: float, hidden: int, out: str, threads: int, scaled: bool = True
) -> TrainConfig:
    """The trainer's defaults at width `hidden`, its learning rates scaled from those tuned at the default
    width: Adam moves every weight by about its rate a step, so a logit w·h moves with the width; the
    block's and head's rate falls as 1/width and the embedding's as 1/sqrt(width) (as in μP). With `scaled`
    False the defaults' rates stay (--unscaled-hidden: what the rule is worth)."""
    defaults = TrainConfig(dataset=dataset, out=out)
    ratio = defaults.hidden / hidden if scaled else 1.0
    return dataclasses.replace(
        defaults,
        scale=scale,
        hidden=hidden,
        lr=defaults.lr * ratio,
        embedding_lr=defaults.embedding_lr * math.sqrt(ratio),
        threads=threads,
        progress=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="a preset or an XC directory, as the trainer's")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--ranks", type=int, nargs="+", default=[128, 256, 512, 1024, 2048])
    parser.add_argument(
        "--hidden", type=int, nargs="*", default=[256, 512, 1024, 2048], help="trainer widths"
    )
    parser.add_argument(
        "--unscaled-hidden", type=int, nargs="*", default=[1024], help="trainer widths at the default rates"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = baseline.parser().parse_args(["--dataset", args.dataset])
    train_set, test_set = load_dataset(args.dataset, args.scale, settings.data_seed)
    num_labels = train_set.num_labels
    if any(rank > min(train_set.num_features, num_labels) for rank in args.ranks):
        parser.error(f"ranks must be at most min(F, L) = {min(train_set.num_features, num_labels)}")
    k = min(max(KS), num_labels)
    table, bias = baseline.train_label_chunk(
        train_set,
        0,
        num_labels,
        epochs=settings.epochs,
        lr=settings.lr,
        l2=settings.l2,
        batch_size=settings.batch_size,
        seed=settings.seed,
    )
    full = baseline.linear_scores(test_set.features, table, bias).topk(k, dim=1).indices
    records = [
        dict(
            model="linear one-vs-rest",
            width=min(table.shape),
            **baseline.metrics_of(full, train_set, test_set),
        )
    ]
    for rank, topk in truncated_topk(table, bias, test_set, args.ranks, k).items():
        records.append(
            dict(
                model="linear one-vs-rest, rank-r truncation",
                width=rank,
                **baseline.metrics_of(topk, train_set, test_set),
            )
        )
    runs = [(hidden, True) for hidden in args.hidden] + [(hidden, False) for hidden in args.unscaled_hidden]
    for hidden, scaled in runs:
        with tempfile.TemporaryDirectory() as folder:
            summary = train(trainer_config(args.dataset, args.scale, hidden, folder, args.threads, scaled))
        model = f"trainer (defaults, rates {'scaled to hidden' if scaled else 'unscaled'})"
        records.append(dict(model=model, width=hidden, **summary["metrics"]))
    common = dict(
        dataset=args.dataset,
        scale=args.scale,
        train_points=train_set.num_points,
        cpu=cpu_model(),
        threads=args.threads,
        torch=torch.__version__,
        commit=git_commit(),
        date=datetime.date.today().isoformat(),
    )
    rows = [
        dict(common, model=record["model"], width=record["width"], metric=name, value=value)
        for record in records
        for name, value in record.items()
        if "@" in name
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    csv = args.out / "rank.csv"
    pd.DataFrame(rows).to_csv(csv, mode="a", header=not csv.exists(), index=False)
    table_view = pd.DataFrame(rows).pivot_table(
        index=["model", "width"], columns="metric", values="value", sort=False
    )
    print(table_view[[f"P@{at}" for at in KS if at <= k]].round(4).to_string())


if __name__ == "__main__":
    main()
