"""A seeded synthetic generator with the real XMC datasets' shapes and statistics: `synthetic` (Zipf label
popularity, the shape's positives per point, a planted tf-idf signal a model can learn), `PRESETS` (shapes
from the Extreme Classification Repository) and `zipf_label_sets`, the Zipf label sampler.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from softmargin_triton.xmc.dataset import CSRChunks, XMCDataset, dataset_from_chunks

__all__ = ["PRESETS", "XMCShape", "synthetic", "zipf_label_sets"]


@dataclass(frozen=True)
class XMCShape:
    """The shape of an extreme multi-label dataset: what `synthetic` reproduces.

    Attributes:
        name: a short name, e.g. "amazon-670k".
        num_features: F, the feature (vocabulary) dimension.
        num_labels: L.
        num_train: training points.
        num_test: test points.
        positives_per_point: average labels per point.

    Build a custom one with `XMCShape(...)` or `dataclasses.replace(PRESETS[name], num_labels=...)`.
    """

    name: str
    num_features: int
    num_labels: int
    num_train: int
    num_test: int
    positives_per_point: float


# From the Extreme Classification Repository's dataset table (Bhatia et al., "The extreme classification
# repository: multi-label datasets and code", http://manikvarma.org/downloads/XC/XMLRepository.html):
# feature dimensionality, label dimensionality, train points, test points, average labels per point.
PRESETS: dict[str, XMCShape] = {
    shape.name: shape
    for shape in (
        XMCShape("eurlex-4k", 5_000, 3_993, 15_539, 3_809, 5.31),
        XMCShape("amazoncat-13k", 203_882, 13_330, 1_186_239, 306_782, 5.04),
        XMCShape("wiki10-31k", 101_938, 30_938, 14_146, 6_616, 18.64),
        XMCShape("amazon-670k", 135_909, 670_091, 490_449, 153_025, 5.45),
    )
}

_CHUNK_POINTS = 1 << 16  # points generated at a time: bounds the intermediate arrays
_MAX_ROUNDS = 64  # redraw rounds for labels drawn twice in a row; real shapes need a handful
# Redraw rounds within a point's topic: by popularity, then uniformly (a point that asks for most of its
# topic's labels would otherwise wait long for the rarest), then from all labels (it asks for more).
_POPULAR_ROUNDS, _TOPIC_ROUNDS = 4, 32


@dataclass(frozen=True)
class _Planted:
    """What train and test share: label popularity and topics, the features' frequencies and weights, and
    each label's signature features.

    Labels are laid out by topic ("positions"): a topic's labels are one contiguous range of positions, so
    drawing a label of topic t is drawing a uniform number within t's stretch of the positions' CDF.
    """

    label_cdf: Tensor  # (L,) float64, cumulative Zipf probabilities over positions
    label_of_position: Tensor  # (L,) int64
    topic_of_position: Tensor  # (L,) int64
    topic_bounds: Tensor  # (T+1,) float64: topic t's labels span the CDF's [bounds[t], bounds[t+1])
    topic_starts: Tensor  # (T+1,) int64: topic t's labels are positions [starts[t], starts[t+1])
    topic_vocabulary: Tensor  # (T, V) int64 feature ids: the words a topic's documents and labels share
    feature_cdf: Tensor  # (F,) float64, cumulative Zipf(1) probabilities over feature ranks
    feature_of_rank: Tensor  # (F,) int64
    idf: Tensor  # (F,) float64 by feature id: 1 + ln(rank + 1), rarer features weigh more, as in tf-idf
    signatures: Tensor  # (L, signature_size) int64 feature ids, by label id


def _zipf_cdf(count: int, exponent: float) -> Tensor:
    cdf = torch.arange(1, count + 1, dtype=torch.float64).pow(-exponent).cumsum(0)
    return cdf / cdf[-1]


def _draw(
    cdf: Tensor,
    count: int,
    generator: torch.Generator | None,
    low: Tensor | float = 0.0,
    high: Tensor | float = 1.0,
) -> Tensor:
    """`count` indices (int64) drawn with replacement from the distribution whose CDF is `cdf`, restricted
    to the CDF's stretch [low, high) (per draw when tensors of `count` entries)."""
    uniform = torch.rand(count, dtype=torch.float64, generator=generator)
    uniform = low + (high - low) * uniform  # exactly `uniform` for [0, 1)
    return torch.searchsorted(cdf, uniform, right=True).clamp_(max=cdf.numel() - 1)


def _label_sets(wanted: Tensor, num_labels: int, draw: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    """Row i gets wanted[i] ≤ L distinct labels; `draw(rows)` returns one label id (int64) per entry of
    `rows` (int64 row numbers), drawn with replacement from that row's distribution.

    Drops a label drawn twice in a row and redraws the shortfall: that is sequential sampling without
    replacement, one vectorized round per redraw. After _MAX_ROUNDS a row keeps what it has: only a row
    that asks for nearly all of a tiny label space under a steep Zipf law gets that far. Returns
    (rows, labels), (nnz,) int64 each, sorted by row then label.
    """
    num_rows = wanted.numel()
    keys = torch.empty(0, dtype=torch.int64)
    missing = wanted
    for attempt in range(_MAX_ROUNDS):
        total = int(missing.sum())
        if total == 0:
            break
        rows = torch.repeat_interleave(torch.arange(num_rows), missing, output_size=total)
        keys = torch.unique(
            torch.cat([keys, rows * num_labels + draw(rows, attempt)])
        )  # sorted, repeats collapse
        missing = wanted - torch.bincount(keys // num_labels, minlength=num_rows)
    rows = keys // num_labels
    return rows, keys - rows * num_labels


def zipf_label_sets(
    counts: Tensor,
    num_labels: int,
    *,
    exponent: float = 1.0,
    label_of_rank: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Zipf-distributed positive labels: row i gets min(counts[i], L) distinct labels, drawn without
    replacement from p(rank r) ∝ (r + 1)^-exponent, r = 0..L-1; label id = label_of_rank[r] (L,) int64, or
    r itself when None (label 0 the most frequent).

    counts: (N,) int64 on the CPU; generator: a CPU torch.Generator (None: the global one). Returns
    (rows, labels), (nnz,) int64 each on the CPU, sorted by row then label: the canonical CSR entries of
    a SparseTargets (N, L). The benchmarks' Zipf sampler of sparse targets (`synthetic` draws its points'
    labels the same way, within topics).
    """
    wanted = counts.to(torch.int64).clamp(max=num_labels)
    cdf = _zipf_cdf(num_labels, exponent)

    def draw(rows: Tensor, attempt: int) -> Tensor:
        ranks = _draw(cdf, rows.numel(), generator)
        return ranks if label_of_rank is None else label_of_rank[ranks]

    return _label_sets(wanted, num_labels, draw)


def _add_points(
    parts: tuple[CSRChunks, CSRChunks],
    num_points: int,
    planted: _Planted,
    positives_per_point: float,
    signature_rate: float,
    noise_per_point: float,
    topic_focus: float,
    topic_words: float,
    generator: torch.Generator,
) -> None:
    """Generate `num_points` points into (feature parts, label parts)."""
    num_labels, num_features = planted.label_cdf.numel(), planted.feature_cdf.numel()
    for start in range(0, num_points, _CHUNK_POINTS):
        n = min(_CHUNK_POINTS, num_points - start)
        # A point's topic: that of a label drawn by popularity, so topics are as popular as their labels.
        topic = planted.topic_of_position[_draw(planted.label_cdf, n, generator)]

        def draw(rows: Tensor, attempt: int, topic: Tensor = topic) -> Tensor:
            # Within the point's topic with probability topic_focus, else from all labels.
            focus = topic_focus if attempt < _TOPIC_ROUNDS else 0.0
            focused = torch.rand(rows.numel(), dtype=torch.float64, generator=generator) < focus
            if attempt < _POPULAR_ROUNDS:
                bounds = planted.topic_bounds
                low = torch.where(focused, bounds[topic[rows]], 0.0)
                high = torch.where(focused, bounds[topic[rows] + 1], 1.0)
                positions = _draw(planted.label_cdf, rows.numel(), generator, low, high)
            else:
                start, stop = planted.topic_starts[topic[rows]], planted.topic_starts[topic[rows] + 1]
                uniform = torch.rand(rows.numel(), dtype=torch.float64, generator=generator)
                within = start + (uniform * (stop - start)).long()
                positions = torch.where(focused, within, _draw(planted.label_cdf, rows.numel(), generator))
            return planted.label_of_position[positions]

        rates = torch.full((n,), positives_per_point - 1.0, dtype=torch.float64)
        wanted = (1 + torch.poisson(rates, generator=generator)).clamp_(max=num_labels).long()
        rows, labels = _label_sets(wanted, num_labels, draw)
        parts[1].add(torch.bincount(rows, minlength=n), labels)

        # Each positive label contributes each of its signature features with probability signature_rate,
        # with a term frequency of 1 + Poisson(1); the topic adds Poisson(topic_words) words of its
        # vocabulary and noise words come from a Zipf vocabulary, tf 1 per draw.
        signature = planted.signatures[labels]
        kept = torch.rand(signature.shape, generator=generator) < signature_rate
        signal_rows = rows.unsqueeze(1).expand_as(signature)[kept]
        signal_ids = signature[kept]
        signal_tf = 1 + torch.poisson(torch.ones_like(signal_ids, dtype=torch.float64), generator=generator)
        topic_counts = torch.poisson(torch.full((n,), topic_words, dtype=torch.float64), generator=generator)
        topic_rows = torch.repeat_interleave(torch.arange(n), topic_counts.long())
        vocabulary = planted.topic_vocabulary
        slots = torch.randint(vocabulary.shape[1], (topic_rows.numel(),), generator=generator)
        topic_ids = vocabulary[topic[topic_rows], slots]
        noise_counts = torch.poisson(
            torch.full((n,), noise_per_point, dtype=torch.float64), generator=generator
        )
        noise_rows = torch.repeat_interleave(torch.arange(n), noise_counts.long())
        noise_ids = planted.feature_of_rank[_draw(planted.feature_cdf, noise_rows.numel(), generator)]

        # A word drawn twice in a point adds up its term frequency; then tf·idf, each row L2-normalised.
        word_rows = torch.cat([signal_rows, topic_rows, noise_rows])
        keys = word_rows * num_features + torch.cat([signal_ids, topic_ids, noise_ids])
        keys, where = torch.unique(keys, return_inverse=True)
        tf = torch.cat([signal_tf, torch.ones(topic_rows.numel() + noise_rows.numel(), dtype=torch.float64)])
        tf = torch.zeros(keys.numel(), dtype=torch.float64).index_add_(0, where, tf)
        feature_rows = keys // num_features
        ids = keys - feature_rows * num_features
        values = tf * planted.idf[ids]
        norms = torch.zeros(n, dtype=torch.float64).index_add_(0, feature_rows, values.square()).sqrt()
        values = values / norms[feature_rows]
        parts[0].add(torch.bincount(feature_rows, minlength=n), ids, values.to(torch.float32))


def synthetic(
    shape: str | XMCShape,
    *,
    scale: float = 1.0,
    num_points: int | None = None,
    num_test_points: int | None = None,
    zipf_exponent: float = 1.0,
    positives_per_point: float | None = None,
    signature_size: int = 5,
    signature_rate: float = 0.6,
    noise_per_point: float = 20.0,
    topic_size: int = 20,
    topic_vocabulary: int = 40,
    topic_share: float = 0.6,
    topic_focus: float = 0.8,
    topic_words: float = 5.0,
    seed: int = 0,
) -> tuple[XMCDataset, XMCDataset]:
    """A (train, test) pair of CPU datasets shaped like `shape` (a PRESETS name or an XMCShape), with a
    planted signal that a model can learn; the same arguments give identical datasets.

    Shape: F and L are the shape's; the points are `scale` times the shape's train and test points
    (rounded, at least 1), or `num_points` train points with the shape's test/train ratio, and
    `num_test_points` test points when given. To shrink the label or feature space too, pass an XMCShape,
    e.g. `dataclasses.replace(PRESETS["amazon-670k"], num_labels=65_536)`.

    Labels: label popularity follows Zipf's law, p(rank r) ∝ (r + 1)^-zipf_exponent for r = 0..L-1, with
    ranks assigned to label ids by a random permutation (ids carry no frequency information, as in the
    real files). Labels fall into ceil(L / topic_size) topics of equal size (random members, so each
    topic has head and tail labels). A point has one topic, that of a label drawn by popularity, and
    1 + Poisson(positives_per_point - 1) labels (default: the shape's average; never an empty row; capped
    at L, so a mean close to L comes out lower), drawn without replacement by popularity, each within the
    point's topic with probability `topic_focus` and from all labels otherwise (a label drawn twice is
    redrawn: by popularity, then after 4 rounds uniformly within the topic, so that a point never waits
    long for the rarest labels of its topic, and after 32 from all labels).
    So labels co-occur within topics, as real XMC labels do (categories of one product, descriptors of
    one law). Label shares follow the Zipf law when topic_focus = 0, except at the very top of the head,
    where a label cannot occur twice in one point; topics flatten it somewhat, since a point's second
    label of a topic cannot be the first (a log-log slope of about -0.8 over ranks 10..200 for exponent
    1 and the defaults).

    Features (the planted signal): each topic owns `topic_vocabulary` feature ids drawn uniformly; each
    label `signature_size` signature features, each drawn from its topic's vocabulary with probability
    `topic_share` (words its sibling labels share) and uniformly from all features otherwise (its own
    words). A point holds each signature feature of each of its labels with probability `signature_rate`
    (term frequency 1 + Poisson(1)), Poisson(topic_words) words of its topic's vocabulary and
    Poisson(noise_per_point) noise words drawn from a Zipf(1) vocabulary (term frequency 1 per draw,
    repeats add up). Values are tf·idf with idf = 1 + ln(frequency rank + 1), so common noise words weigh
    little, and each row is L2-normalised (a row may come out empty). topic_focus = topic_share =
    topic_words = 0 gives independent labels with unrelated signatures.

    Train and test points come from the same planted labels, topics, signatures and frequencies.
    Everything is drawn from one torch.Generator seeded with `seed`, in vectorized chunks of points, so
    memory stays proportional to the output.
    """
    if isinstance(shape, str):
        if shape not in PRESETS:
            raise ValueError(f"unknown preset {shape!r}: expected one of {sorted(PRESETS)} or an XMCShape")
        shape = PRESETS[shape]
    mean = shape.positives_per_point if positives_per_point is None else positives_per_point
    if shape.num_labels < 1 or shape.num_features < 1:
        raise ValueError(f"expected at least one label and one feature, got {shape}")
    if not (scale > 0 and mean >= 1 and zipf_exponent >= 0 and noise_per_point >= 0):
        raise ValueError(
            f"expected scale > 0, positives_per_point ≥ 1, zipf_exponent ≥ 0 and noise_per_point ≥ 0, got "
            f"{scale}, {mean}, {zipf_exponent} and {noise_per_point}"
        )
    if signature_size < 0 or not 0 <= signature_rate <= 1:
        raise ValueError(
            f"expected signature_size ≥ 0 and signature_rate in [0, 1], got {signature_size} and "
            f"{signature_rate}"
        )
    if topic_size < 1 or topic_vocabulary < 1 or topic_words < 0:
        raise ValueError(
            f"expected topic_size ≥ 1, topic_vocabulary ≥ 1 and topic_words ≥ 0, got {topic_size}, "
            f"{topic_vocabulary} and {topic_words}"
        )
    if not (0 <= topic_share <= 1 and 0 <= topic_focus <= 1):
        raise ValueError(
            f"expected topic_share and topic_focus in [0, 1], got {topic_share} and {topic_focus}"
        )
    if num_points is None:
        num_points = max(1, round(scale * shape.num_train))
        test_default = max(1, round(scale * shape.num_test))
    else:
        test_default = max(1, round(num_points * shape.num_test / shape.num_train))
    num_test_points = test_default if num_test_points is None else num_test_points
    if num_points < 0 or num_test_points < 0:
        raise ValueError(f"expected point counts ≥ 0, got {num_points} and {num_test_points}")

    generator = torch.Generator().manual_seed(seed)
    num_features, num_labels = shape.num_features, shape.num_labels
    feature_of_rank = torch.randperm(num_features, generator=generator)
    idf = torch.empty(num_features, dtype=torch.float64)
    idf[feature_of_rank] = 1 + torch.arange(1, num_features + 1, dtype=torch.float64).log()
    label_of_rank = torch.randperm(num_labels, generator=generator)
    num_topics = -(-num_labels // topic_size)
    topic_of_rank = torch.randperm(num_labels, generator=generator) % num_topics  # equal sizes
    rank_of_position = torch.argsort(topic_of_rank * num_labels + torch.arange(num_labels))
    topic_of_position = topic_of_rank[rank_of_position]
    probabilities = torch.diff(
        _zipf_cdf(num_labels, zipf_exponent), prepend=torch.zeros(1, dtype=torch.float64)
    )
    label_cdf = probabilities[rank_of_position].cumsum(0)
    label_cdf /= label_cdf[-1].clone()
    starts = torch.searchsorted(topic_of_position, torch.arange(num_topics))  # each topic's first position
    topic_bounds = torch.cat([label_cdf.new_zeros(1), label_cdf[starts[1:] - 1], label_cdf.new_ones(1)])
    vocabulary = torch.randint(num_features, (num_topics, topic_vocabulary), generator=generator)
    topic_of_label = torch.empty_like(topic_of_rank)
    topic_of_label[label_of_rank] = topic_of_rank
    shared = torch.rand(num_labels, signature_size, generator=generator) < topic_share
    slots = torch.randint(topic_vocabulary, (num_labels, signature_size), generator=generator)
    own = torch.randint(num_features, (num_labels, signature_size), generator=generator)
    planted = _Planted(
        label_cdf=label_cdf,
        label_of_position=label_of_rank[rank_of_position],
        topic_of_position=topic_of_position,
        topic_bounds=topic_bounds,
        topic_starts=torch.cat([starts, torch.tensor([num_labels])]),
        topic_vocabulary=vocabulary,
        feature_cdf=_zipf_cdf(num_features, 1.0),
        feature_of_rank=feature_of_rank,
        idf=idf,
        signatures=torch.where(shared, vocabulary[topic_of_label[:, None], slots], own),
    )
    splits = []
    for count in (num_points, num_test_points):
        parts = (CSRChunks(), CSRChunks())
        _add_points(
            parts, count, planted, mean, signature_rate, noise_per_point, topic_focus, topic_words, generator
        )
        splits.append(dataset_from_chunks(parts[0], num_features, parts[1], num_labels))
    return splits[0], splits[1]
