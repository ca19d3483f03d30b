"""bench/xmc_rank.py: the rank-r truncation of the one-vs-rest table and the trainer's width scaling."""

import importlib
import math
from pathlib import Path

import pytest
import torch

from softmargin_triton.xmc.synthetic import XMCShape, synthetic
from softmargin_triton.xmc.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def xmc_rank(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))  # xmc_rank.py imports its neighbours from bench/
    return importlib.import_module("xmc_rank")


@pytest.fixture(scope="module")
def tiny():
    return synthetic(XMCShape("tiny", 60, 40, 300, 80, 3.0), seed=1)


def test_full_rank_truncation_is_the_table(xmc_rank, tiny):
    """At rank min(F, L) the truncated SVD rebuilds the trained table: the same top-k as the table itself."""
    train, test = tiny
    baseline = xmc_rank.baseline
    table, bias = baseline.train_label_chunk(
        train, 0, train.num_labels, epochs=2, lr=0.5, l2=1e-3, batch_size=64, seed=0
    )
    full = baseline.linear_scores(test.features, table, bias)
    rank = min(table.shape)
    truncated = xmc_rank.truncated_topk(table, bias, test, [rank], k=5)[rank]
    # Compare by score: near-ties may swap ids, the scores of the ids picked may not differ beyond fp error.
    picked = full.gather(1, truncated)
    torch.testing.assert_close(picked, full.topk(5, dim=1).values, rtol=1e-4, atol=1e-5)


def test_truncation_keeps_a_low_rank_table_and_cuts_a_full_one(xmc_rank, tiny):
    """A rank-1 table survives truncation to rank 1 exactly; a full-rank one does not."""
    _, test = tiny
    generator = torch.Generator().manual_seed(0)
    features, labels = test.num_features, test.num_labels
    bias = torch.zeros(1, labels)
    rank_one = torch.randn(features, 1, generator=generator) @ torch.randn(1, labels, generator=generator)
    full = xmc_rank.baseline.linear_scores(test.features, rank_one, bias)
    topk = xmc_rank.truncated_topk(rank_one, bias, test, [1], k=5)[1]
    torch.testing.assert_close(full.gather(1, topk), full.topk(5, dim=1).values, rtol=1e-4, atol=1e-5)

    random = torch.randn(features, labels, generator=generator)
    scores = xmc_rank.baseline.linear_scores(test.features, random, bias)
    topk = xmc_rank.truncated_topk(random, bias, test, [1], k=5)[1]
    assert not torch.equal(topk, scores.topk(5, dim=1).indices)


def test_trainer_config_scales_the_rates_with_the_width(xmc_rank):
    defaults = TrainConfig(dataset="d", out="o")
    wide = xmc_rank.trainer_config("d", 0.5, 4 * defaults.hidden, "o", threads=2)
    assert (wide.hidden, wide.scale, wide.threads, wide.progress) == (4 * defaults.hidden, 0.5, 2, False)
    assert math.isclose(wide.lr, defaults.lr / 4) and math.isclose(
        wide.embedding_lr, defaults.embedding_lr / 2
    )
    assert (wide.weight_decay, wide.dropout, wide.epochs) == (
        defaults.weight_decay,
        defaults.dropout,
        defaults.epochs,
    )
    unscaled = xmc_rank.trainer_config("d", 0.5, 4 * defaults.hidden, "o", threads=2, scaled=False)
    assert (unscaled.lr, unscaled.embedding_lr) == (defaults.lr, defaults.embedding_lr)
