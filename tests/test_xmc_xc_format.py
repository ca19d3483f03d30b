"""softmargin_triton.xmc.xc_format: the Extreme Classification Repository readers on small files written
here, malformed ones included, and round trips of synthetic datasets through both formats."""

import re

import pytest
import torch
from xmc_helpers import SMALL, assert_same, label_rows, rows_of, split_texts, write, xc_text

from softmargin_triton.xmc import xc_format
from softmargin_triton.xmc.synthetic import synthetic
from softmargin_triton.xmc.xc_format import read_xc, read_xc_split

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
    monkeypatch.setattr(xc_format, "_CHUNK_LINES", request.param)
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
    monkeypatch.setattr(xc_format, "_CHUNK_LINES", 3)
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
