"""softmargin_triton.xmc.synthetic: the presets, the generator's statistics and planted signal, and the
Zipf label sampler."""

import dataclasses

import pytest
import torch
from xmc_helpers import SMALL, assert_same

from softmargin_triton.sparse_targets import SparseTargets
from softmargin_triton.xmc.dataset import XMCDataset
from softmargin_triton.xmc.metrics import precision_at_k
from softmargin_triton.xmc.synthetic import PRESETS, XMCShape, synthetic, zipf_label_sets


def test_presets_are_the_repository_shapes():
    assert PRESETS["amazon-670k"] == XMCShape("amazon-670k", 135_909, 670_091, 490_449, 153_025, 5.45)
    assert PRESETS["eurlex-4k"] == XMCShape("eurlex-4k", 5_000, 3_993, 15_539, 3_809, 5.31)
    assert PRESETS["amazoncat-13k"] == XMCShape("amazoncat-13k", 203_882, 13_330, 1_186_239, 306_782, 5.04)
    assert PRESETS["wiki10-31k"] == XMCShape("wiki10-31k", 101_938, 30_938, 14_146, 6_616, 18.64)


def test_synthetic_amazon_670k_at_small_scale():
    train, test = synthetic("amazon-670k", scale=0.01)
    assert (train.num_points, test.num_points) == (4_904, 1_530)
    for split in (train, test):
        assert (split.num_features, split.num_labels) == (135_909, 670_091)
        assert split.labels.indices.dtype == torch.int32
    assert train.labels.nnz / train.num_points == pytest.approx(5.45, abs=0.1)


def test_synthetic_is_seeded():
    first, second, other = (synthetic(SMALL, seed=seed) for seed in (7, 7, 8))
    for a, b in zip(first, second, strict=True):
        assert_same(a, b)
    assert not torch.equal(first[0].labels.indices, other[0].labels.indices)
    assert not torch.equal(first[0].features.values, other[0].features.values)


def test_synthetic_rows_are_canonical_tf_idf():
    train, _ = synthetic(SMALL, seed=1)
    features = train.features
    rows = torch.repeat_interleave(torch.arange(features.num_rows), features.indptr.diff())
    same_row = rows[1:] == rows[:-1]
    assert bool((~same_row | (features.indices[1:] > features.indices[:-1])).all()), "ids ascending, unique"
    assert bool(((features.indices >= 0) & (features.indices < SMALL.num_features)).all())
    assert bool((features.values > 0).all())
    squares = torch.zeros(features.num_rows, dtype=torch.float64).index_add_(
        0, rows, features.values.double() ** 2
    )
    nonempty = features.indptr.diff() > 0
    assert int(nonempty.sum()) > 0.9 * features.num_rows
    torch.testing.assert_close(squares[nonempty], torch.ones_like(squares[nonempty]), rtol=0, atol=1e-6)
    SparseTargets(train.labels.indptr, train.labels.indices, train.num_labels)  # canonical, or it raises


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_mean_positives_match_the_preset(name):
    train, _ = synthetic(name, num_points=20_000, num_test_points=0, signature_size=0, noise_per_point=0.0)
    per_point = train.labels.indptr.diff()
    assert int(per_point.min()) >= 1, "every point has a label"
    # 1 + Poisson(m - 1) over 20,000 points: the standard error of the mean is under 0.03.
    assert float(per_point.double().mean()) == pytest.approx(PRESETS[name].positives_per_point, abs=0.1)


@pytest.mark.parametrize("mean", [1.0, 2.5, 12.0])
def test_mean_positives_override(mean):
    train, _ = synthetic(
        SMALL, num_points=8_000, positives_per_point=mean, signature_size=0, noise_per_point=0.0
    )
    assert float(train.labels.indptr.diff().double().mean()) == pytest.approx(mean, abs=0.1)


def test_tiny_label_space_caps_positives():
    train, _ = synthetic(XMCShape("tiny", 10, 4, 500, 10, 3.5), zipf_exponent=1.5, seed=4)
    per_point = train.labels.indptr.diff()
    assert int(per_point.min()) >= 1 and int(per_point.max()) == 4
    # The mean of min(1 + Poisson(2.5), 4), not 3.5: the cap at L lowers it.
    assert float(per_point.double().mean()) == pytest.approx(3.09, abs=0.15)
    SparseTargets(train.labels.indptr, train.labels.indices, train.num_labels)  # rows are sets, or it raises


@pytest.mark.parametrize("exponent", [0.8, 1.0, 1.5])
def test_label_frequencies_follow_zipf(exponent):
    shape = XMCShape(
        "zipf", num_features=100, num_labels=20_000, num_train=20_000, num_test=1, positives_per_point=5
    )
    train, _ = synthetic(
        shape, zipf_exponent=exponent, signature_size=0, noise_per_point=0.0, topic_focus=0.0, seed=2
    )
    counts = train.label_counts().sort(descending=True).values.double()
    # Least squares of log count on log rank over ranks 10..200: past the very top, where a label cannot
    # occur twice in a point, and where every count is still in the tens or more.
    log_rank = torch.arange(10, 201, dtype=torch.float64).log()
    log_count = counts[9:200].log()
    x, y = log_rank - log_rank.mean(), log_count - log_count.mean()
    slope = float((x * y).sum() / x.square().sum())
    assert slope == pytest.approx(-exponent, abs=0.08)


def centroid_vs_popularity_p_at_1(train: XMCDataset, test: XMCDataset) -> tuple[float, float]:
    """P@1 on `test` of (the label whose mean training feature vector is most similar, the most frequent
    training label for every point)."""
    centroids = train.labels.to_dense().T @ train.features.to_dense()
    centroids = centroids / centroids.norm(dim=1, keepdim=True).clamp_min(1e-12)
    predicted = (test.features.to_dense() @ centroids.T).argmax(dim=1, keepdim=True)
    popular = train.label_counts().argmax().expand(test.num_points, 1)
    return float(precision_at_k(predicted, test.labels, 1)), float(precision_at_k(popular, test.labels, 1))


def test_planted_signal_is_learnable():
    shape = dataclasses.replace(SMALL, num_features=2_000, num_labels=500, num_train=3_000, num_test=1_000)
    centroid, popular = centroid_vs_popularity_p_at_1(*synthetic(shape, seed=1))
    assert centroid > popular + 0.4, (centroid, popular)
    # Without signatures and topic words the features are noise: no better than popularity.
    centroid, popular = centroid_vs_popularity_p_at_1(
        *synthetic(shape, seed=1, signature_size=0, topic_words=0)
    )
    assert centroid < popular + 0.05, (centroid, popular)


def test_synthetic_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown preset 'amazon-3m'"):
        synthetic("amazon-3m")
    with pytest.raises(ValueError, match="positives_per_point ≥ 1"):
        synthetic(SMALL, positives_per_point=0.5)
    with pytest.raises(ValueError, match=r"signature_rate in \[0, 1\]"):
        synthetic(SMALL, signature_rate=1.5)
    with pytest.raises(ValueError, match=r"topic_share and topic_focus in \[0, 1\]"):
        synthetic(SMALL, topic_focus=-0.1)
    with pytest.raises(ValueError, match="topic_size ≥ 1"):
        synthetic(SMALL, topic_size=0)


def topic_components(labels: torch.Tensor) -> torch.Tensor:
    """(L,) int64: the smallest label id of each label's component in the co-occurrence graph of the
    dense (N, L) labels (labels that share a point are linked)."""
    reach = (labels.T @ labels > 0) | torch.eye(labels.shape[1], dtype=torch.bool)
    for _ in range(labels.shape[1].bit_length()):  # paths of up to 2^rounds ≥ L links
        reach = reach.float() @ reach.float() > 0
    return reach.float().argmax(dim=1)


def test_topics_confine_labels_and_words():
    """topic_focus = topic_share = 1: a point's labels all come from its topic and its signature and topic
    words from that topic's vocabulary; so label co-occurrence falls apart into topics of topic_size
    labels, and the points of one topic use at most topic_vocabulary distinct words. topic_focus = 0: one
    component."""
    shape = dataclasses.replace(SMALL, num_features=5_000, num_labels=400, num_train=2_000)
    topics = dict(topic_size=10, topic_vocabulary=30, noise_per_point=0.0, num_test_points=0)
    train, _ = synthetic(shape, topic_focus=1.0, topic_share=1.0, **topics)
    labels = train.labels.to_dense()
    component = topic_components(labels)
    sizes = torch.bincount(component, minlength=400)
    assert int(sizes.max()) == 10 and int((sizes == 10).sum()) >= 36, sizes[sizes > 0]
    words = train.features.to_dense() > 0
    point_topic = component[train.labels.indices[train.labels.indptr[:-1]].long()]
    for topic in point_topic.unique():
        assert int(words[point_topic == topic].any(dim=0).sum()) <= 30
    mixed, _ = synthetic(shape, topic_focus=0.0, **topics)
    assert int(torch.bincount(topic_components(mixed.labels.to_dense())).max()) > 200


def test_zipf_label_sets_are_sorted_distinct_and_capped():
    counts = torch.tensor([0, 3, 7, 50, 1])
    generator = torch.Generator().manual_seed(0)
    rows, labels = zipf_label_sets(counts, 12, exponent=0.5, generator=generator)
    assert torch.bincount(rows, minlength=5).tolist() == [0, 3, 7, 12, 1]  # capped at L = 12
    indptr = torch.cat([torch.zeros(1, dtype=torch.int64), torch.bincount(rows, minlength=5).cumsum(0)])
    SparseTargets(indptr, labels, 12)  # rows sorted, distinct and in range, or it raises
    ranking = torch.randperm(1000, generator=generator)
    many = torch.full((4000,), 2)
    _, ranked = zipf_label_sets(many, 1000, label_of_rank=ranking, generator=generator)
    top = torch.bincount(ranked, minlength=1000).argmax()
    assert int(top) == int(ranking[0]), "the most frequent label is the one of rank 0"
