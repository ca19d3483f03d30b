"""Extreme multi-label data: the Extreme Classification Repository's text formats, a seeded synthetic
generator with the real datasets' shapes and statistics, and batching into `SparseTargets` plus sparse or
dense features.

A dataset is an `XMCDataset`: N points whose features are a `SparseFeatures` (CSR rows of feature id and
float32 value) and whose positive labels are a `SparseTargets` (N, L), the losses' native sparse target.
Everything lives on the CPU until `batches` (or `XMCDataset.to`) moves it.
"""

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, TextIO, overload

import torch
from torch import Tensor

from softmargin_triton.sparse_targets import SparseTargets, _index_dtype, positive_rows

__all__ = [
    "PRESETS",
    "SparseFeatures",
    "XMCDataset",
    "XMCShape",
    "batches",
    "read_xc",
    "read_xc_split",
    "synthetic",
]


@dataclass(frozen=True, eq=False)
class SparseFeatures:
    """Sparse feature rows in compressed-row form: row i holds the pairs (indices[j], values[j]) for
    j in [indptr[i], indptr[i+1]).

    Attributes:
        indptr: (N+1,) int64, from 0 up to nnz, non-decreasing.
        indices: (nnz,) int64 feature ids in [0, num_features), ascending without repeats within a row.
        values: (nnz,) float32.
        num_features: F.

    Construction checks dtypes, shapes and devices only, so that it never waits on a GPU; the readers and
    the generator build the arrays canonical and `batches` keeps them so.
    """

    indptr: Tensor
    indices: Tensor
    values: Tensor
    num_features: int

    def __post_init__(self) -> None:
        if self.indptr.dim() != 1 or self.indptr.dtype != torch.int64 or self.indptr.numel() == 0:
            raise ValueError(
                f"SparseFeatures: indptr must be a 1-D int64 tensor of N+1 ≥ 1 entries, got "
                f"{self.indptr.dtype} of shape {tuple(self.indptr.shape)}"
            )
        if self.indices.dim() != 1 or self.indices.dtype != torch.int64:
            raise ValueError(
                f"SparseFeatures: indices must be a 1-D int64 tensor, got {self.indices.dtype} of shape "
                f"{tuple(self.indices.shape)}"
            )
        if self.values.shape != self.indices.shape or self.values.dtype != torch.float32:
            raise ValueError(
                f"SparseFeatures: values must be float32 of the indices' shape {tuple(self.indices.shape)}, "
                f"got {self.values.dtype} of shape {tuple(self.values.shape)}"
            )
        if not self.indptr.device == self.indices.device == self.values.device:
            raise ValueError(
                f"SparseFeatures: indptr, indices and values must share a device, got {self.indptr.device}, "
                f"{self.indices.device} and {self.values.device}"
            )
        if self.num_features < 0:
            raise ValueError(f"SparseFeatures: num_features must be ≥ 0, got {self.num_features}")

    @property
    def num_rows(self) -> int:
        return self.indptr.numel() - 1

    @property
    def nnz(self) -> int:
        return self.indices.numel()

    @property
    def device(self) -> torch.device:
        return self.indptr.device

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "SparseFeatures":
        """The same rows on `device`."""
        return SparseFeatures(
            self.indptr.to(device, non_blocking=non_blocking),
            self.indices.to(device, non_blocking=non_blocking),
            self.values.to(device, non_blocking=non_blocking),
            self.num_features,
        )

    def to_dense(self) -> Tensor:
        """The (N, F) float32 matrix; a repeated (row, id), which canonical rows never hold, would add up as
        in the embedding bag."""
        dense = torch.zeros(self.num_rows, self.num_features, dtype=torch.float32, device=self.device)
        rows = positive_rows(self.indptr, self.nnz)
        return dense.index_put_((rows, self.indices), self.values, accumulate=True)

    def embedding_bag_inputs(self) -> tuple[Tensor, Tensor, Tensor]:
        """(input (nnz,) int64, offsets (N,) int64, per_sample_weights (nnz,) float32) for
        `nn.EmbeddingBag(num_features, dim, mode="sum")(input, offsets, per_sample_weights)`, which then
        equals `to_dense() @ weight` without building the dense matrix."""
        return self.indices, self.indptr[:-1], self.values


@dataclass(frozen=True, eq=False)
class XMCDataset:
    """N points: their sparse features (N rows over F features) and their positive labels (N, L)."""

    features: SparseFeatures
    labels: SparseTargets

    def __post_init__(self) -> None:
        if self.features.num_rows != self.labels.shape[0]:
            raise ValueError(
                f"XMCDataset: {self.features.num_rows} feature rows but {self.labels.shape[0]} label rows"
            )
        if self.features.device != self.labels.device:
            raise ValueError(
                f"XMCDataset: features on {self.features.device} but labels on {self.labels.device}"
            )

    @property
    def num_points(self) -> int:
        return self.features.num_rows

    @property
    def num_features(self) -> int:
        return self.features.num_features

    @property
    def num_labels(self) -> int:
        return self.labels.num_labels

    def label_counts(self) -> Tensor:
        """(L,) int64: how many points have each label, e.g. for `xmc.metrics.propensity`."""
        return torch.bincount(self.labels.indices.to(torch.int64), minlength=self.num_labels)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "XMCDataset":
        """The same dataset on `device`."""
        return XMCDataset(self.features.to(device, non_blocking), self.labels.to(device, non_blocking))


# ---------------------------------------------------------------------------------------------------------
# Reading the Extreme Classification Repository's text formats

_CHUNK_LINES = 8192  # lines parsed per batch of conversions: bounds the text held in memory
_ID = r"\d{1,18}"  # at most 18 digits, so that every id that matches fits an int64
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?i:nan|inf(?:inity)?)"
_PAIR = rf"{_ID}:(?:{_NUMBER})"
_PAIRS = re.compile(rf"(?:{_PAIR}(?:[ \t]+{_PAIR})*)?")
_LABEL_LIST = re.compile(rf"(?:{_ID}(?:,{_ID})*)?")

PathLike = str | os.PathLike[str]


def _error(path: PathLike, line: int, message: str) -> ValueError:
    return ValueError(f"{os.fspath(path)}: line {line}: {message}")


def _read_chunks(
    path: PathLike, header_names: tuple[str, ...]
) -> tuple[tuple[int, ...], Iterator[tuple[list[str], int]]]:
    """Open `path` and check its header; return the header's integers and an iterator over the data lines
    in chunks of at most _CHUNK_LINES, as (lines without their line ends, first line's number).

    The header's first number is the number of data lines: blank lines after them are allowed (a trailing
    newline), anything else there is an error, and so is a file that ends early.
    """
    file = open(path, encoding="utf-8")  # noqa: SIM115 -- the chunk iterator closes it
    header_line = file.readline()
    fields = header_line.split()
    if len(fields) != len(header_names) or not all(f.isascii() and f.isdigit() for f in fields):
        file.close()
        raise _error(
            path,
            1,
            f"expected the header '{' '.join(header_names)}' ({len(header_names)} non-negative integers "
            f"separated by spaces), got {header_line.strip()!r}",
        )
    header = tuple(int(f) for f in fields)
    return header, _chunks(file, path, header[0], header_names[0])


def _chunks(file: TextIO, path: PathLike, num_rows: int, rows_name: str) -> Iterator[tuple[list[str], int]]:
    with file:
        chunk: list[str] = []
        read = 0  # data lines so far, the chunk's included
        line_number = 1
        for line_number, line in enumerate(file, start=2):
            text = line.rstrip("\r\n")
            if read == num_rows:
                if text.strip():
                    raise _error(
                        path,
                        line_number,
                        f"expected the end of the file: the header declares {num_rows} points, and this "
                        f"would be point {num_rows + 1}",
                    )
                continue
            chunk.append(text)
            read += 1
            if len(chunk) == _CHUNK_LINES:
                yield chunk, 2 + read - len(chunk)
                chunk = []
        if chunk:
            yield chunk, 2 + read - len(chunk)
        if read < num_rows:
            raise _error(
                path,
                line_number + 1,
                f"expected {num_rows} points (the header's {rows_name}), but the file ends after {read}",
            )


def _row_of(counts: Tensor, element: int) -> int:
    """The row (within a chunk) holding `element` of the rows' concatenation, from counts (n,) per row."""
    return int(torch.searchsorted(counts.cumsum(0), element, right=True))


def _first(mask: Tensor) -> int:
    return int(mask.nonzero()[0, 0])


def _explain_pairs(field: str, kind: str) -> str:
    """What is wrong with an `id:value ...` field that the fast pattern rejected."""
    for token in field.split():
        identifier, colon, value = token.partition(":")
        if not (colon and re.fullmatch(_ID, identifier) and re.fullmatch(_NUMBER, value)):
            return (
                f"expected {kind}s as 'id:value' pairs separated by spaces (a non-negative integer id, a "
                f"colon, a number), got {token!r}"
            )
    return f"expected {kind}s as 'id:value' pairs separated by spaces, got {field!r}"


def _parse_pairs(
    path: PathLike, fields: list[str], first: int, kind: str, num_columns: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Parse one `id:value id:value ...` field per line and check every id and value.

    Returns rows (nnz,) int64 (the line within the chunk), counts (n,) int64, ids (nnz,) int64 in
    [0, num_columns) and values (nnz,) float32, finite, in the file's order.
    """
    for offset, field in enumerate(fields):
        if not _PAIRS.fullmatch(field.strip()):
            raise _error(path, first + offset, _explain_pairs(field, kind))
    counts = torch.tensor([field.count(":") for field in fields], dtype=torch.int64)
    # The pattern passed, so every token is a plain integer or float literal: convert in bulk.
    tokens = " ".join(fields).replace(":", " ").split()
    ids = torch.tensor(list(map(int, tokens[0::2])), dtype=torch.int64)
    values = torch.tensor(list(map(float, tokens[1::2])), dtype=torch.float64).to(torch.float32)
    out_of_range = ids >= num_columns
    if out_of_range.any():
        bad = _first(out_of_range)
        raise _error(
            path,
            first + _row_of(counts, bad),
            f"{kind} id {int(ids[bad])} is outside [0, num_{kind}s={num_columns}) (the header's bound)",
        )
    not_finite = ~values.isfinite()
    if not_finite.any():
        bad = _first(not_finite)
        raise _error(
            path,
            first + _row_of(counts, bad),
            f"{kind} {int(ids[bad])} has value {tokens[2 * bad + 1]!r}: expected a finite float32 number",
        )
    rows = torch.repeat_interleave(torch.arange(len(fields)), counts)
    return rows, counts, ids, values


def _sort_rows(rows: Tensor, ids: Tensor) -> tuple[Tensor | None, Tensor]:
    """(order, repeat) for (row, id) pairs with `rows` non-decreasing: the permutation that sorts the pairs
    (None when they already are, as in most files), and a mask over the sorted pairs that marks each one
    equal to its predecessor."""
    same_row = rows[1:] == rows[:-1]
    order = None
    if not bool((~same_row | (ids[1:] > ids[:-1])).all()):
        order = torch.argsort(ids, stable=True)
        order = order[torch.argsort(rows[order], stable=True)]
        ids = ids[order]
    repeat = torch.zeros_like(ids, dtype=torch.bool)
    repeat[1:] = same_row & (ids[1:] == ids[:-1])  # rows[order] == rows: sorting keeps the rows in place
    return order, repeat


class _CSRParts:
    """Chunks of rows accumulated as they are parsed; `finish` concatenates them."""

    def __init__(self) -> None:
        self.counts: list[Tensor] = []
        self.ids: list[Tensor] = []
        self.values: list[Tensor] = []

    def add(self, counts: Tensor, ids: Tensor, values: Tensor | None = None) -> None:
        self.counts.append(counts)
        self.ids.append(ids)
        if values is not None:
            self.values.append(values)

    def add_features(self, path: PathLike, fields: list[str], first: int, num_features: int) -> None:
        """Parse, check and sort one chunk of feature fields; a feature repeated within a line is an error."""
        rows, counts, ids, values = _parse_pairs(path, fields, first, "feature", num_features)
        order, repeat = _sort_rows(rows, ids)
        if order is not None:
            ids, values = ids[order], values[order]
        if repeat.any():
            bad = _first(repeat)
            raise _error(
                path,
                first + int(rows[bad]),
                f"feature id {int(ids[bad])} appears more than once: expected each feature at most once "
                f"per point",
            )
        self.add(counts, ids, values)

    def add_labels(self, rows: Tensor, ids: Tensor, num_rows: int) -> None:
        """Add one chunk of (row, label) pairs: rows become sorted sets (repeats collapse)."""
        order, repeat = _sort_rows(rows, ids)
        if order is not None:
            ids = ids[order]
        keep = ~repeat
        self.add(torch.bincount(rows[keep], minlength=num_rows), ids[keep])

    def finish(self) -> tuple[Tensor, Tensor, Tensor]:
        """(indptr (N+1,) int64, ids (nnz,) int64, values (nnz,) float32; empty when none were added)."""
        counts = torch.cat(self.counts) if self.counts else torch.empty(0, dtype=torch.int64)
        indptr = torch.zeros(counts.numel() + 1, dtype=torch.int64)
        torch.cumsum(counts, 0, out=indptr[1:])
        ids = torch.cat(self.ids) if self.ids else torch.empty(0, dtype=torch.int64)
        values = torch.cat(self.values) if self.values else torch.empty(0, dtype=torch.float32)
        return indptr, ids, values


def read_xc(path: PathLike) -> XMCDataset:
    """Read the Extreme Classification Repository's one-file format, streaming line by line.

    The first line is the header `num_points num_features num_labels`; then one line per point:
    comma-separated label ids, a space, then space-separated `feature_id:value` pairs, e.g.
    `3,17,42 0:0.25 8:0.5`. A point without labels starts with a space (or is an empty line); one without
    features has just its labels. Ids count from 0.

    Within a point, labels and features are sorted by id; a repeated label collapses (a point's labels are
    a set, as in `SparseTargets`), while a repeated feature is an error: the format stores a sparse vector,
    so a second value for the same feature means a corrupt line, not something to add up silently.

    Returns a CPU `XMCDataset` (feature ids int64 with float32 values; labels a `SparseTargets`).
    Raises ValueError naming the file, the 1-based line number and what was expected there: a bad header,
    more or fewer points than the header declares, a label id that is not a non-negative integer or lies
    outside [0, num_labels), a feature that is not `id:value`, a feature id outside [0, num_features), a
    value that is not finite in float32, a repeated feature.
    """
    (_, num_features, num_labels), chunks = _read_chunks(path, ("num_points", "num_features", "num_labels"))
    features, labels = _CSRParts(), _CSRParts()
    for lines, first in chunks:
        label_fields, feature_fields = [], []
        for offset, line in enumerate(lines):
            label_field, _, feature_field = line.partition(" ")
            if not _LABEL_LIST.fullmatch(label_field):
                raise _error(
                    path,
                    first + offset,
                    "expected comma-separated non-negative integer label ids before the first space (a "
                    f"point without labels starts with a space), got {label_field!r}",
                )
            label_fields.append(label_field)
            feature_fields.append(feature_field)
        counts = torch.tensor([f.count(",") + 1 if f else 0 for f in label_fields], dtype=torch.int64)
        joined = ",".join(f for f in label_fields if f)
        ids = torch.tensor(list(map(int, joined.split(","))) if joined else [], dtype=torch.int64)
        out_of_range = ids >= num_labels
        if out_of_range.any():
            bad = _first(out_of_range)
            raise _error(
                path,
                first + _row_of(counts, bad),
                f"label id {int(ids[bad])} is outside [0, num_labels={num_labels}) (the header's bound)",
            )
        labels.add_labels(torch.repeat_interleave(torch.arange(len(lines)), counts), ids, len(lines))
        features.add_features(path, feature_fields, first, num_features)
    return _dataset(features, num_features, labels, num_labels)


def read_xc_split(features_path: PathLike, labels_path: PathLike) -> XMCDataset:
    """Read the repository's two-file format (e.g. `trn_X_Xf.txt` and `trn_X_Y.txt`), streaming each.

    Both files are sparse matrices in text: a header `num_points num_features` (features file) or
    `num_points num_labels` (labels file), then one line per point of space-separated `id:value` pairs; an
    empty line is a point without entries. In the labels file every label listed with a nonzero value is a
    positive (the repository writes 1; a relevance weight counts as a positive too), and one listed with 0
    is not. Repeats follow `read_xc`: a repeated label collapses, a repeated feature is an error.

    Returns a CPU `XMCDataset`. Raises ValueError naming the file, the 1-based line number and what was
    expected (as `read_xc`), or both files when their headers disagree on num_points.
    """
    num_points, num_features, features = _read_matrix(features_path, "feature")
    label_points, num_labels, labels = _read_matrix(labels_path, "label")
    if label_points != num_points:
        raise ValueError(
            f"{os.fspath(features_path)} (line 1) declares {num_points} points but {os.fspath(labels_path)} "
            f"(line 1) declares {label_points}: expected the same number of points in both files"
        )
    return _dataset(features, num_features, labels, num_labels)


def _read_matrix(path: PathLike, kind: Literal["feature", "label"]) -> tuple[int, int, _CSRParts]:
    """(num_points, num_columns, rows) of an `id:value` sparse-matrix file with header `N C`."""
    (num_points, num_columns), chunks = _read_chunks(path, ("num_points", f"num_{kind}s"))
    parts = _CSRParts()
    for lines, first in chunks:
        if kind == "feature":
            parts.add_features(path, lines, first, num_columns)
        else:
            rows, _, ids, values = _parse_pairs(path, lines, first, kind, num_columns)
            positive = values != 0
            parts.add_labels(rows[positive], ids[positive], len(lines))
    return num_points, num_columns, parts


def _dataset(features: _CSRParts, num_features: int, labels: _CSRParts, num_labels: int) -> XMCDataset:
    feature_ptr, feature_ids, values = features.finish()
    label_ptr, label_ids, _ = labels.finish()
    return XMCDataset(
        SparseFeatures(feature_ptr, feature_ids, values, num_features),
        SparseTargets(label_ptr, label_ids.to(_index_dtype(num_labels)), num_labels),
    )


# ---------------------------------------------------------------------------------------------------------
# Synthetic data with the real datasets' shapes


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


def _draw(cdf: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """`count` ranks (int64) drawn with replacement from the distribution whose CDF is `cdf`."""
    uniform = torch.rand(count, dtype=torch.float64, generator=generator)
    return torch.searchsorted(cdf, uniform, right=True).clamp_(max=cdf.numel() - 1)


def _label_sets(wanted: Tensor, planted: _Planted, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Row i gets wanted[i] distinct labels drawn from the Zipf popularity without replacement.

    Draws with replacement, drops a label drawn twice in a row and redraws the shortfall: that is
    sequential sampling without replacement, one vectorized round per redraw. After _MAX_ROUNDS a row
    keeps what it has: only a row that asks for nearly all of a tiny label space under a steep Zipf law
    gets that far. Returns (rows, labels), (nnz,) int64 each, sorted by row then label.
    """
    num_rows, num_labels = wanted.numel(), planted.label_cdf.numel()
    keys = torch.empty(0, dtype=torch.int64)
    missing = wanted
    for _ in range(_MAX_ROUNDS):
        total = int(missing.sum())
        if total == 0:
            break
        rows = torch.repeat_interleave(torch.arange(num_rows), missing, output_size=total)
        labels = planted.label_of_rank[_draw(planted.label_cdf, total, generator)]
        keys = torch.unique(torch.cat([keys, rows * num_labels + labels]))  # sorted, repeats collapse
        missing = wanted - torch.bincount(keys // num_labels, minlength=num_rows)
    rows = keys // num_labels
    return rows, keys - rows * num_labels


def _add_points(
    parts: tuple[_CSRParts, _CSRParts],
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
        rows, labels = _label_sets(wanted, planted, generator)
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
        parts = (_CSRParts(), _CSRParts())
        _add_points(parts, count, planted, mean, signature_rate, noise_per_point, generator=generator)
        splits.append(_dataset(parts[0], num_features, parts[1], shape.num_labels))
    return splits[0], splits[1]


# ---------------------------------------------------------------------------------------------------------
# Batching


def _gather_rows(
    indptr: Tensor, host_indptr: Tensor, rows: Tensor, columns: tuple[Tensor, ...]
) -> tuple[Tensor, list[Tensor]]:
    """Rows `rows` (B,) int64 on the CPU of a CSR matrix: (indptr (B+1,), each of `columns` gathered).

    The sizes come from `host_indptr`, the CPU copy of `indptr`, so that gathering on a GPU never waits
    for it: each row becomes the contiguous range starting at its old start, shifted to its new start.
    """
    nnz = int((host_indptr[rows + 1] - host_indptr[rows]).sum())
    rows = rows.to(indptr.device, non_blocking=True)
    starts = indptr[rows]
    new_indptr = torch.zeros(rows.numel() + 1, dtype=torch.int64, device=indptr.device)
    torch.cumsum(indptr[rows + 1] - starts, 0, out=new_indptr[1:])
    shift = torch.repeat_interleave(starts - new_indptr[:-1], new_indptr.diff(), output_size=nnz)
    source = shift + torch.arange(nnz, device=indptr.device)
    return new_indptr, [column[source] for column in columns]


def _slice_rows(
    indptr: Tensor, host_indptr: Tensor, start: int, stop: int, columns: tuple[Tensor, ...]
) -> tuple[Tensor, list[Tensor]]:
    """Rows start..stop-1 of a CSR matrix, as `_gather_rows` but the columns are views, not copies."""
    begin, end = int(host_indptr[start]), int(host_indptr[stop])
    return indptr[start : stop + 1] - begin, [column[begin:end] for column in columns]


def _move(tensor: Tensor, device: torch.device) -> Tensor:
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        # Page-locked memory lets the copy run asynchronously, overlapping the consumer's kernels.
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


@overload
def batches(
    dataset: XMCDataset,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    drop_last: bool = False,
    dense: Literal[False] = False,
) -> Iterator[tuple[SparseFeatures, SparseTargets]]: ...


@overload
def batches(
    dataset: XMCDataset,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    drop_last: bool = False,
    dense: Literal[True],
) -> Iterator[tuple[Tensor, SparseTargets]]: ...


def batches(
    dataset: XMCDataset,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    drop_last: bool = False,
    dense: bool = False,
) -> Iterator[tuple[SparseFeatures | Tensor, SparseTargets]]:
    """One pass over `dataset` in batches of `batch_size` points: (features, labels) on `device`.

    Features are a SparseFeatures (B rows), or with `dense=True` the (B, F) float32 matrix (built on
    `device` after the sparse rows travel there); labels a SparseTargets (B, L). The last batch is smaller
    unless `drop_last`. With `shuffle`, the order is `torch.randperm(N, generator=generator)` (a CPU
    generator; the global one when None), drawn when iteration starts, so each pass reshuffles.

    Rows are gathered with vectorized index arithmetic where the dataset lives, then moved (from the CPU
    to a GPU through page-locked memory, asynchronously); batch sizes are computed from a CPU copy of the
    row pointers, so a dataset already on the GPU is batched without host synchronization. In order
    (no shuffle) the batches are slices of the dataset's arrays.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    target = dataset.features.device if device is None else torch.device(device)
    return _batches(dataset, batch_size, shuffle, generator, target, drop_last, dense)


def _batches(
    dataset: XMCDataset,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None,
    device: torch.device,
    drop_last: bool,
    dense: bool,
) -> Iterator[tuple[SparseFeatures | Tensor, SparseTargets]]:
    features, labels = dataset.features, dataset.labels
    feature_host, label_host = features.indptr.cpu(), labels.indptr.cpu()
    count = dataset.num_points
    order = torch.randperm(count, generator=generator) if shuffle else None
    stop = count - count % batch_size if drop_last else count
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, count)
        if order is None:
            feature_ptr, (ids, values) = _slice_rows(
                features.indptr, feature_host, start, end, (features.indices, features.values)
            )
            label_ptr, (label_ids,) = _slice_rows(labels.indptr, label_host, start, end, (labels.indices,))
        else:
            rows = order[start:end]
            feature_ptr, (ids, values) = _gather_rows(
                features.indptr, feature_host, rows, (features.indices, features.values)
            )
            label_ptr, (label_ids,) = _gather_rows(labels.indptr, label_host, rows, (labels.indices,))
        batch_features = SparseFeatures(
            _move(feature_ptr, device), _move(ids, device), _move(values, device), features.num_features
        )
        # Rows of a canonical SparseTargets are canonical: wrap them without the constructor's checks,
        # which would synchronize with a GPU once per batch.
        batch_labels = SparseTargets.from_canonical(
            _move(label_ptr, device), _move(label_ids, device), labels.num_labels
        )
        yield (batch_features.to_dense() if dense else batch_features), batch_labels
