"""softmargin_triton.xmc.metrics against brute-force dense computations on random data."""

import math

import pytest
import torch
from conftest import DEVICE, zipf_label_lists

import softmargin_triton as st
from softmargin_triton.xmc.metrics import ndcg_at_k, precision_at_k, propensity, psp_at_k

ROWS, LABELS = 40, 60


def random_case():
    """Zipf targets (empty rows included) and a top-10 that mixes positives and negatives."""
    targets = st.SparseTargets.from_lists(zipf_label_lists(ROWS, LABELS, max_positives=12), LABELS, DEVICE)
    dense = targets.to_dense()
    scores = torch.rand(ROWS, LABELS, device=DEVICE) + dense * torch.rand(ROWS, 1, device=DEVICE)
    topk = scores.topk(10, dim=1).indices
    return topk, targets, dense


def brute_hits(topk, dense, k):
    return [[float(dense[r, topk[r, j]]) for j in range(k)] for r in range(dense.shape[0])]


@pytest.mark.parametrize("k", [1, 3, 5, 10])
def test_precision_at_k(k):
    topk, targets, dense = random_case()
    expected = sum(sum(row) / k for row in brute_hits(topk, dense, k)) / ROWS
    result = precision_at_k(topk, targets, k)
    assert result.dtype == torch.float32 and result.shape == ()
    assert math.isclose(result.item(), expected, rel_tol=1e-6)


@pytest.mark.parametrize("k", [1, 3, 5, 10])
def test_ndcg_at_k(k):
    topk, targets, dense = random_case()
    total = 0.0
    for row, hits in enumerate(brute_hits(topk, dense, k)):
        dcg = sum(h / math.log2(j + 2) for j, h in enumerate(hits))
        ideal = sum(1 / math.log2(j + 2) for j in range(min(k, int(dense[row].sum()))))
        total += dcg / ideal if ideal else 0.0
    assert math.isclose(ndcg_at_k(topk, targets, k).item(), total / ROWS, rel_tol=1e-6)


def test_propensity_formula():
    counts = torch.tensor([0, 1, 10, 1000])
    c = (math.log(5000) - 1) * 2.5**0.55
    expected = [1 / (1 + c * (n + 1.5) ** -0.55) for n in (0, 1, 10, 1000)]
    assert torch.allclose(propensity(counts, 5000), torch.tensor(expected), rtol=1e-6)


@pytest.mark.parametrize("k", [1, 3, 5, 10])
def test_psp_at_k(k):
    topk, targets, dense = random_case()
    p = propensity(dense.sum(0).cpu(), ROWS).to(DEVICE)
    inverse = (1 / p).tolist()
    numerator = denominator = 0.0
    for row, hits in enumerate(brute_hits(topk, dense, k)):
        numerator += sum(h * inverse[int(topk[row, j])] for j, h in enumerate(hits)) / k
        best = sorted((inverse[label] for label in dense[row].nonzero().flatten().tolist()), reverse=True)
        denominator += sum(best[:k]) / k
    assert math.isclose(psp_at_k(topk, targets, k, p).item(), numerator / denominator, rel_tol=1e-5)


def test_perfect_ranking_scores_one():
    targets = st.SparseTargets.from_lists([[3, 1], [0], [2, 4, 5]], 6, DEVICE)
    topk = torch.tensor([[1, 3, 0], [0, 1, 2], [4, 2, 5]], device=DEVICE)
    assert ndcg_at_k(topk, targets, 3).item() == pytest.approx(1.0)
    assert psp_at_k(topk, targets, 3, torch.rand(6, device=DEVICE) * 0.5 + 0.5).item() == pytest.approx(1.0)
    assert precision_at_k(topk, targets, 1).item() == 1.0


@pytest.mark.parametrize(
    "topk, k, match",
    [
        (torch.zeros(3, 2, dtype=torch.int64), 3, "≥ k=3"),
        (torch.zeros(2, 5, dtype=torch.int64), 1, "B=3"),
        (torch.zeros(3, 5), 1, "integer"),
        (torch.zeros(3, 5, dtype=torch.int64), 0, "k ≥ 1"),
    ],
    ids=["too-few-columns", "wrong-rows", "float-ids", "k-zero"],
)
def test_bad_topk_raises(topk, k, match):
    targets = st.SparseTargets.from_lists([[1], [], [2]], 6, DEVICE)
    with pytest.raises(ValueError, match=match):
        precision_at_k(topk.to(DEVICE), targets, k)
