"""softmargin_triton.xmc.data: the Extreme Classification Repository readers on small files written here
(malformed ones included), the synthetic generator's statistics and planted signal, and batching."""

import dataclasses
import itertools
import re

import pytest
import torch
from conftest import DEVICE
from torch import Tensor

from softmargin_triton.sparse_targets import SparseTargets
from softmargin_triton.xmc import data
from softmargin_triton.xmc.data import (
    PRESETS,
    SparseFeatures,
    XMCDataset,
    XMCShape,
    batches,
    read_xc,
    read_xc_split,
    synthetic,
)
from softmargin_triton.xmc.metrics import precision_at_k

SMALL = XMCShape(
    "small", num_features=300, num_labels=120, num_train=400, num_test=100, positives_per_point=3.0
)


def write(path, text):
    path.write_text(text, encoding="utf-8", newline="")
    return path


def rows_of(features: SparseFeatures) -> list[list[tuple[int, float]]]:
    ptr, ids, values = features.indptr.tolist(), features.indices.tolist(), features.values.tolist()
    return [list(zip(ids[a:b], values[a:b], strict=True)) for a, b in itertools.pairwise(ptr)]


def label_rows(labels: SparseTargets) -> list[list[int]]:
    ptr, ids = labels.indptr.tolist(), labels.indices.tolist()
    return [ids[a:b] for a, b in itertools.pairwise(ptr)]


def assert_same(actual: XMCDataset, expected: XMCDataset) -> None:
    """Identical arrays, dtypes and bounds (values bit for bit)."""
    assert (actual.num_points, actual.num_features, actual.num_labels) == (
        expected.num_points,
        expected.num_features,
        expected.num_labels,
    )
    for a, e in [
        (actual.features.indptr, expected.features.indptr),
        (actual.features.indices, expected.features.indices),
        (actual.features.values, expected.features.values),
        (actual.labels.indptr, expected.labels.indptr),
        (actual.labels.indices, expected.labels.indices),
    ]:
        assert a.dtype == e.dtype and torch.equal(a.cpu(), e.cpu())


def xc_text(dataset: XMCDataset) -> str:
    """The one-file format of `dataset`, values with 9 significant digits (float32 round-trips exactly)."""
    lines = [f"{dataset.num_points} {dataset.num_features} {dataset.num_labels}"]
    for features, labels in zip(rows_of(dataset.features), label_rows(dataset.labels), strict=True):
        pairs = " ".join(f"{i}:{v:.9g}" for i, v in features)
        lines.append(f"{','.join(map(str, labels))} {pairs}")
    return "\n".join(lines) + "\n"


def split_texts(dataset: XMCDataset) -> tuple[str, str]:
    """The two-file format of `dataset`: (features file, labels file)."""
    features = [f"{dataset.num_points} {dataset.num_features}"]
    features += [" ".join(f"{i}:{v:.9g}" for i, v in row) for row in rows_of(dataset.features)]
    labels = [f"{dataset.num_points} {dataset.num_labels}"]
    labels += [" ".join(f"{i}:1" for i in row) for row in label_rows(dataset.labels)]
    return "\n".join(features) + "\n", "\n".join(labels) + "\n"


# ---------------------------------------------------------------------------------------------------------
# Readers

# Unsorted ids, a repeated label, a point without labels (leading space), one without features, an empty
# line (a point with neither), a CRLF line end, signs and exponents, and a trailing blank line.
ONE_FILE = "5 6 5\n3,1,1 5:0.5 0:1.25\n 2:2\n4\n\n0,4 1:-3e-1 3:.5\r\n\n"
SPLIT_FEATURES = "5 6\n5:0.5 0:1.25\n2:2\n\n\n1:-3e-1   3:.5\n"
SPLIT_LABELS = "5 5\n3:1 1:1 1:1\n\n4:1\n\n0:1 4:1.0 2:0\n\n"  # 2:0 is a stored zero, not a positive
EXPECTED_FEATURES = [[(0, 1.25), (5, 0.5)], [(2, 2.0)], [], [], [(1, -0.3), (3, 0.5)]]
EXPECTED_LABELS = [[1, 3], [], [4], [], [0, 4]]


def test_read_xc_small_file(tmp_path):
    dataset = read_xc(write(tmp_path / "train.txt", ONE_FILE))
    assert (dataset.num_points, dataset.num_features, dataset.num_labels) == (5, 6, 5)
    assert dataset.features.indptr.dtype == dataset.features.indices.dtype == torch.int64
    assert dataset.features.values.dtype == torch.float32
    assert dataset.labels.indices.dtype == torch.int32
    assert label_rows(dataset.labels) == EXPECTED_LABELS
    expected = [[(i, pytest.approx(v)) for i, v in row] for row in EXPECTED_FEATURES]
    assert rows_of(dataset.features) == expected
    assert dataset.label_counts().tolist() == [1, 1, 0, 1, 2]


def test_read_xc_split_small_files(tmp_path):
    features, labels = write(tmp_path / "X_Xf.txt", SPLIT_FEATURES), write(tmp_path / "X_Y.txt", SPLIT_LABELS)
    split = read_xc_split(str(features), str(labels))  # str paths as well as Path
    assert_same(split, read_xc(write(tmp_path / "train.txt", ONE_FILE)))


@pytest.fixture(params=[3, 8192], ids=["chunks-of-3-lines", "default-chunks"])
def chunk_lines(request, monkeypatch):
    """The readers parse in chunks of lines; tiny chunks exercise the seams between them."""
    monkeypatch.setattr(data, "_CHUNK_LINES", request.param)
    return request.param


def test_readers_round_trip_synthetic(tmp_path, chunk_lines):
    train, _ = synthetic(SMALL, num_points=50, seed=3)
    assert_same(read_xc(write(tmp_path / "train.txt", xc_text(train))), train)
    features, labels = split_texts(train)
    split = read_xc_split(write(tmp_path / "X_Xf.txt", features), write(tmp_path / "X_Y.txt", labels))
    assert_same(split, train)


MALFORMED = {
    # name: (file text, the line, what the message must say)
    "empty-file": ("", 1, "expected the header 'num_points num_features num_labels'"),
    "header-two-numbers": ("2 6\n1 0:1\n2 0:1\n", 1, r"expected the header .*got '2 6'"),
    "header-not-integers": ("2 six 5\n1 0:1\n", 1, "3 non-negative integers"),
    "too-few-points": ("3 6 5\n1 0:1\n2 0:1\n", 4, r"expected 3 points .*ends after 2"),
    "too-many-points": ("1 6 5\n1 0:1\n2 0:1\n", 3, "expected the end of the file: the header declares 1"),
    "label-not-integer": (
        "2 6 5\n1 0:1\n1,x 0:1\n",
        3,
        "expected comma-separated non-negative integer label",
    ),
    "label-negative": ("2 6 5\n1 0:1\n-1 0:1\n", 3, r"label ids before the first space .*got '-1'"),
    "labels-missing": ("1 6 5\n0:1 1:1\n", 2, r"a point without labels starts with a space\), got '0:1'"),
    "label-out-of-range": ("2 6 5\n1 0:1\n0,5 0:1\n", 3, r"label id 5 is outside \[0, num_labels=5\)"),
    "feature-without-value": ("2 6 5\n1 0:1\n1 0:1 3\n", 3, r"expected features as 'id:value' .*got '3'"),
    "feature-bad-value": ("1 6 5\n1 0:abc\n", 2, r"expected features as 'id:value' .*got '0:abc'"),
    "feature-two-colons": ("1 6 5\n1 0:1:2\n", 2, r"got '0:1:2'"),
    "feature-out-of-range": ("2 6 5\n1 0:1\n1 6:1\n", 3, r"feature id 6 is outside \[0, num_features=6\)"),
    "value-nan": ("1 6 5\n1 2:nan\n", 2, "feature 2 has value 'nan': expected a finite float32 number"),
    "value-overflows-float32": ("1 6 5\n1 2:1e39\n", 2, "value '1e39': expected a finite float32"),
    "feature-repeated": ("2 6 5\n1 0:1\n1 2:0.5 2:0.25\n", 3, "feature id 2 appears more than once"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_read_xc_malformed(tmp_path, name):
    text, line, expected = MALFORMED[name]
    path = write(tmp_path / f"{name}.txt", text)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: line {line}: .*{expected}"):
        read_xc(path)


def test_error_line_numbers_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_CHUNK_LINES", 3)
    lines = [f"{i % 5} {i % 6}:1" for i in range(10)]
    lines[7] = "1 3:1 9:1"  # the 8th point: line 9
    path = write(tmp_path / "train.txt", "10 6 5\n" + "\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"line 9: feature id 9 is outside"):
        read_xc(path)


SPLIT_MALFORMED = {
    # name: (features file, labels file, the file at fault, the line, what the message must say)
    "labels-header": ("1 6\n0:1\n", "1 5 7\n0:1\n", "Y", 1, "expected the header 'num_points num_labels'"),
    "features-header": ("1\n0:1\n", "1 5\n0:1\n", "X", 1, "expected the header 'num_points num_features'"),
    "feature-not-pair": ("2 6\n0:1\n0:1 4\n", "2 5\n0:1\n1:1\n", "X", 3, "expected features as 'id:value'"),
    "label-not-pair": ("2 6\n0:1\n0:1\n", "2 5\n0:1\n1\n", "Y", 3, r"expected labels as 'id:value' .*'1'"),
    "label-out-of-range": ("1 6\n0:1\n", "1 5\n5:1\n", "Y", 2, r"label id 5 is outside \[0, num_labels=5\)"),
    "labels-too-few": ("2 6\n0:1\n0:1\n", "2 5\n0:1\n", "Y", 3, r"expected 2 points .*ends after 1"),
}


@pytest.mark.parametrize("name", list(SPLIT_MALFORMED))
def test_read_xc_split_malformed(tmp_path, name):
    features, labels, culprit, line, expected = SPLIT_MALFORMED[name]
    paths = {"X": write(tmp_path / "X_Xf.txt", features), "Y": write(tmp_path / "X_Y.txt", labels)}
    with pytest.raises(ValueError, match=rf"^{re.escape(str(paths[culprit]))}: line {line}: .*{expected}"):
        read_xc_split(paths["X"], paths["Y"])


def test_read_xc_split_point_counts_disagree(tmp_path):
    features = write(tmp_path / "X_Xf.txt", "2 6\n0:1\n1:1\n")
    labels = write(tmp_path / "X_Y.txt", "3 5\n0:1\n1:1\n2:1\n")
    expected = (
        r"X_Xf\.txt \(line 1\) declares 2 points but .*X_Y\.txt \(line 1\) declares 3: expected the same"
    )
    with pytest.raises(ValueError, match=expected):
        read_xc_split(features, labels)


# ---------------------------------------------------------------------------------------------------------
# Synthetic data


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
    train, _ = synthetic(shape, zipf_exponent=exponent, signature_size=0, noise_per_point=0.0, seed=2)
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
    # Without signatures the features are noise, and the same classifier does no better than popularity.
    centroid, popular = centroid_vs_popularity_p_at_1(*synthetic(shape, seed=1, signature_size=0))
    assert centroid < popular + 0.05, (centroid, popular)


def test_synthetic_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown preset 'amazon-3m'"):
        synthetic("amazon-3m")
    with pytest.raises(ValueError, match="positives_per_point ≥ 1"):
        synthetic(SMALL, positives_per_point=0.5)
    with pytest.raises(ValueError, match=r"signature_rate in \[0, 1\]"):
        synthetic(SMALL, signature_rate=1.5)


# ---------------------------------------------------------------------------------------------------------
# Containers and batching


def test_containers_check_shapes_and_dtypes():
    indptr, ids, values = torch.tensor([0, 1, 2]), torch.tensor([0, 3]), torch.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match="indices must be a 1-D int64 tensor"):
        SparseFeatures(indptr, ids.int(), values, 4)
    with pytest.raises(ValueError, match="values must be float32"):
        SparseFeatures(indptr, ids, values.double(), 4)
    features = SparseFeatures(indptr, ids, values, 4)
    with pytest.raises(ValueError, match="2 feature rows but 3 label rows"):
        XMCDataset(features, SparseTargets.from_lists([[0], [], [1]], num_labels=2))


def test_embedding_bag_inputs_match_the_dense_product():
    # Empty rows, the last one included, are the case offsets get wrong.
    features = SparseFeatures(
        torch.tensor([0, 2, 2, 5, 5]),
        torch.tensor([1, 6, 0, 3, 6]),
        torch.tensor([0.5, -1.0, 2.0, 0.25, 3.0]),
        num_features=7,
    )
    bag = torch.nn.EmbeddingBag(7, 4, mode="sum")
    torch.testing.assert_close(bag(*features.embedding_bag_inputs()), features.to_dense() @ bag.weight)
    train, _ = synthetic(SMALL, num_points=64)
    batch, _ = next(batches(train, 16, shuffle=True, generator=torch.Generator().manual_seed(0)))
    bag = torch.nn.EmbeddingBag(SMALL.num_features, 8, mode="sum")
    torch.testing.assert_close(bag(*batch.embedding_bag_inputs()), batch.to_dense() @ bag.weight)


def concatenated(parts: list[tuple[SparseFeatures, SparseTargets]]) -> tuple[Tensor, Tensor]:
    """(dense features, dense labels) of all batches, stacked on the CPU."""
    return (
        torch.cat([f.to_dense().cpu() for f, _ in parts]),
        torch.cat([t.to_dense().cpu() for _, t in parts]),
    )


SOURCES = sorted({"cpu", DEVICE})  # where the dataset lives; batches go to DEVICE


@pytest.mark.parametrize("source", SOURCES)
def test_batches_in_order_are_the_dataset(source):
    dataset, _ = synthetic(SMALL, num_points=103)
    parts = list(batches(dataset.to(source), 10, shuffle=False, device=DEVICE))
    assert [f.num_rows for f, _ in parts] == [10] * 10 + [3]
    for features, labels in parts:
        assert features.device.type == labels.device.type == torch.device(DEVICE).type
        assert labels.num_labels == SMALL.num_labels and features.num_features == SMALL.num_features
    torch.testing.assert_close(concatenated(parts), (dataset.features.to_dense(), dataset.labels.to_dense()))
    assert len(list(batches(dataset, 10, shuffle=False, drop_last=True))) == 10


@pytest.mark.parametrize("source", SOURCES)
def test_shuffled_batches_are_a_permutation_of_the_dataset(source):
    dataset, _ = synthetic(SMALL, num_points=103)
    generator = torch.Generator().manual_seed(5)
    first = list(batches(dataset.to(source), 16, shuffle=True, generator=generator, device=DEVICE))
    second = list(batches(dataset.to(source), 16, shuffle=True, generator=generator, device=DEVICE))
    x, y = dataset.features.to_dense(), dataset.labels.to_dense()
    # A random projection fingerprints each point (its features are continuous, so no two collide).
    projection = torch.randn(SMALL.num_features, dtype=torch.float64)
    orders = []
    for parts in (first, second):
        bx, by = concatenated(parts)
        order = (bx.double() @ projection).argsort()
        expected = (x.double() @ projection).argsort()
        torch.testing.assert_close((bx[order], by[order]), (x[expected], y[expected]))
        orders.append((bx.double() @ projection).tolist())
    assert orders[0] != orders[1], "each pass reshuffles"
    assert orders[0] != (x.double() @ projection).tolist(), "shuffled"
    again = list(batches(dataset, 16, shuffle=True, generator=torch.Generator().manual_seed(5)))
    torch.testing.assert_close(concatenated(again), concatenated(first))


def test_dense_batches_are_the_sparse_batches_densified():
    dataset, _ = synthetic(SMALL, num_points=50)
    sparse = batches(dataset, 8, shuffle=True, generator=torch.Generator().manual_seed(1), device=DEVICE)
    dense = batches(
        dataset, 8, shuffle=True, generator=torch.Generator().manual_seed(1), device=DEVICE, dense=True
    )
    for (features, labels), (matrix, same_labels) in zip(sparse, dense, strict=True):
        assert matrix.shape == (features.num_rows, SMALL.num_features) and matrix.dtype == torch.float32
        assert torch.equal(matrix, features.to_dense())
        assert torch.equal(same_labels.indices, labels.indices)


def test_batches_rejects_a_bad_batch_size():
    dataset, _ = synthetic(SMALL, num_points=5)
    with pytest.raises(ValueError, match="batch_size must be ≥ 1"):
        batches(dataset, 0, shuffle=False)
