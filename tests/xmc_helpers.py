"""Helpers of the XMC data tests: a small shape, files written here, datasets as Python lists, and a
dataset written back in the repository's text formats."""

import itertools

import torch

from softmargin_triton.sparse_targets import SparseTargets
from softmargin_triton.xmc.dataset import SparseFeatures, XMCDataset
from softmargin_triton.xmc.synthetic import XMCShape

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
