"""A seeded synthetic generator with the real XMC datasets' shapes and statistics: `synthetic` (Zipf label
popularity, the shape's positives per point, a planted tf-idf signal a model can learn), `PRESETS` (shapes
from the Extreme Classification Repository) and `zipf_label_sets`, the Zipf label sampler.
"""

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


@dataclass(frozen=True)
class _Planted:
    """What train and test share: label popularity, the features' frequencies and weights, and each
    label's signature features."""

    label_cdf: Tensor  # (L,) float64, cumulative Zipf probabilities over label ranks
    label_of_rank: Tensor  # (L,) int64
    feature_cdf: Tensor  # (F,) float64, cumulative Zipf(1) probabilities over feature ranks
    feature_of_rank: Tensor  # (F,) int64
    idf: Tensor  # (F,) float64 by feature id: 1 + ln(rank + 1), rarer features weigh more, as in tf-idf
    signatures: Tensor  # (L, signature_size) int64 feature ids


def _zipf_cdf(count: int, exponent: float) -> Tensor:
    cdf = torch.arange(1, count + 1, dtype=torch.float64).pow(-exponent).cumsum(0)
    return cdf / cdf[-1]


def _draw(cdf: Tensor, count: int, generator: torch.Generator | None) -> Tensor:
    """`count` ranks (int64) drawn with replacement from the distribution whose CDF is `cdf`."""
    uniform = torch.rand(count, dtype=torch.float64, generator=generator)
    return torch.searchsorted(cdf, uniform, right=True).clamp_(max=cdf.numel() - 1)


def _label_sets(
    wanted: Tensor, cdf: Tensor, label_of_rank: Tensor | None, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Row i gets wanted[i] ≤ L distinct labels drawn from the ranks' CDF `cdf` (L,) without replacement.

    Draws with replacement, drops a label drawn twice in a row and redraws the shortfall: that is
    sequential sampling without replacement, one vectorized round per redraw. After _MAX_ROUNDS a row
    keeps what it has: only a row that asks for nearly all of a tiny label space under a steep Zipf law
    gets that far. Returns (rows, labels), (nnz,) int64 each, sorted by row then label.
    """
    num_rows, num_labels = wanted.numel(), cdf.numel()
    keys = torch.empty(0, dtype=torch.int64)
    missing = wanted
    for _ in range(_MAX_ROUNDS):
        total = int(missing.sum())
        if total == 0:
            break
        rows = torch.repeat_interleave(torch.arange(num_rows), missing, output_size=total)
        labels = _draw(cdf, total, generator)
        if label_of_rank is not None:
            labels = label_of_rank[labels]
        keys = torch.unique(torch.cat([keys, rows * num_labels + labels]))  # sorted, repeats collapse
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
    a SparseTargets (N, L). The one Zipf sampler of the package and its benchmarks: `synthetic` draws its
    points' labels with it, bench/ its sparse targets.
    """
    wanted = counts.to(torch.int64).clamp(max=num_labels)
    return _label_sets(wanted, _zipf_cdf(num_labels, exponent), label_of_rank, generator)


def _add_points(
    parts: tuple[CSRChunks, CSRChunks],
    num_points: int,
    planted: _Planted,
    positives_per_point: float,
    signature_rate: float,
    noise_per_point: float,
    generator: torch.Generator,
) -> None:
    """Generate `num_points` points into (feature parts, label parts)."""
    num_labels, num_features = planted.label_cdf.numel(), planted.feature_cdf.numel()
    for start in range(0, num_points, _CHUNK_POINTS):
        n = min(_CHUNK_POINTS, num_points - start)
        rates = torch.full((n,), positives_per_point - 1.0, dtype=torch.float64)
        wanted = (1 + torch.poisson(rates, generator=generator)).clamp_(max=num_labels).long()
        rows, labels = _label_sets(wanted, planted.label_cdf, planted.label_of_rank, generator)
        parts[1].add(torch.bincount(rows, minlength=n), labels)

        # Each positive label contributes each of its signature features with probability signature_rate,
        # with a term frequency of 1 + Poisson(1); noise words come from a Zipf vocabulary, tf 1 per draw.
        signature = planted.signatures[labels]
        kept = torch.rand(signature.shape, generator=generator) < signature_rate
        signal_rows = rows.unsqueeze(1).expand_as(signature)[kept]
        signal_ids = signature[kept]
        signal_tf = 1 + torch.poisson(torch.ones_like(signal_ids, dtype=torch.float64), generator=generator)
        noise_counts = torch.poisson(
            torch.full((n,), noise_per_point, dtype=torch.float64), generator=generator
        )
        noise_rows = torch.repeat_interleave(torch.arange(n), noise_counts.long())
        noise_ids = planted.feature_of_rank[_draw(planted.feature_cdf, noise_rows.numel(), generator)]

        # A word drawn twice in a point adds up its term frequency; then tf·idf, each row L2-normalised.
        keys = torch.cat([signal_rows, noise_rows]) * num_features + torch.cat([signal_ids, noise_ids])
        keys, where = torch.unique(keys, return_inverse=True)
        tf = torch.cat([signal_tf, torch.ones(noise_rows.numel(), dtype=torch.float64)])
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
    real files). A point has 1 + Poisson(positives_per_point - 1) labels (default: the shape's average;
    never an empty row; capped at L, so a mean close to L comes out lower), drawn from that popularity
    without replacement; so a label's share of all positives follows the Zipf law except at the very top
    of the head, where a label cannot occur twice in one point.

    Features (the planted signal): each label owns `signature_size` feature ids drawn uniformly; a point
    holds each signature feature of each of its labels with probability `signature_rate` (term frequency
    1 + Poisson(1)) plus Poisson(noise_per_point) noise words drawn from a Zipf(1) vocabulary (term
    frequency 1 per draw, repeats add up). Values are tf·idf with idf = 1 + ln(frequency rank + 1), so
    common noise words weigh little, and each row is L2-normalised (a row may come out empty).

    Train and test points come from the same planted labels, signatures and frequencies. Everything is
    drawn from one torch.Generator seeded with `seed`, in vectorized chunks of points, so memory stays
    proportional to the output (Amazon-670K at scale 1: 2.7M positives and 17M feature entries in train,
    about 2 s and 1.2 GB at peak on a CPU).
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
    if num_points is None:
        num_points = max(1, round(scale * shape.num_train))
        test_default = max(1, round(scale * shape.num_test))
    else:
        test_default = max(1, round(num_points * shape.num_test / shape.num_train))
    num_test_points = test_default if num_test_points is None else num_test_points
    if num_points < 0 or num_test_points < 0:
        raise ValueError(f"expected point counts ≥ 0, got {num_points} and {num_test_points}")

    generator = torch.Generator().manual_seed(seed)
    num_features = shape.num_features
    feature_of_rank = torch.randperm(num_features, generator=generator)
    idf = torch.empty(num_features, dtype=torch.float64)
    idf[feature_of_rank] = 1 + torch.arange(1, num_features + 1, dtype=torch.float64).log()
    planted = _Planted(
        label_cdf=_zipf_cdf(shape.num_labels, zipf_exponent),
        label_of_rank=torch.randperm(shape.num_labels, generator=generator),
        feature_cdf=_zipf_cdf(num_features, 1.0),
        feature_of_rank=feature_of_rank,
        idf=idf,
        signatures=torch.randint(num_features, (shape.num_labels, signature_size), generator=generator),
    )
    splits = []
    for count in (num_points, num_test_points):
        parts = (CSRChunks(), CSRChunks())
        _add_points(parts, count, planted, mean, signature_rate, noise_per_point, generator=generator)
        splits.append(dataset_from_chunks(parts[0], num_features, parts[1], shape.num_labels))
    return splits[0], splits[1]
