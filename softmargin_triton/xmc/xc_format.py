"""The Extreme Classification Repository's text formats: `read_xc` (one file of labels and features per
point) and `read_xc_split` (features and labels in two sparse-matrix files), streamed in chunks of lines and
checked line by line (errors name the file and the line).
"""

import os
import re
from collections.abc import Iterator
from typing import Literal, TextIO

import torch
from torch import Tensor

from softmargin_triton.xmc.dataset import CSRChunks, XMCDataset, dataset_from_chunks

__all__ = ["read_xc", "read_xc_split"]

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


def _add_features(parts: CSRChunks, path: PathLike, fields: list[str], first: int, num_features: int) -> None:
    """Parse, check and sort one chunk of feature fields into `parts`; a feature repeated within a line is
    an error."""
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
    parts.add(counts, ids, values)


def _add_labels(parts: CSRChunks, rows: Tensor, ids: Tensor, num_rows: int) -> None:
    """Add one chunk of (row, label) pairs to `parts`: rows become sorted sets (repeats collapse)."""
    order, repeat = _sort_rows(rows, ids)
    if order is not None:
        ids = ids[order]
    keep = ~repeat
    parts.add(torch.bincount(rows[keep], minlength=num_rows), ids[keep])


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
    features, labels = CSRChunks(), CSRChunks()
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
        _add_labels(labels, torch.repeat_interleave(torch.arange(len(lines)), counts), ids, len(lines))
        _add_features(features, path, feature_fields, first, num_features)
    return dataset_from_chunks(features, num_features, labels, num_labels)


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
    return dataset_from_chunks(features, num_features, labels, num_labels)


def _read_matrix(path: PathLike, kind: Literal["feature", "label"]) -> tuple[int, int, CSRChunks]:
    """(num_points, num_columns, rows) of an `id:value` sparse-matrix file with header `N C`."""
    (num_points, num_columns), chunks = _read_chunks(path, ("num_points", f"num_{kind}s"))
    parts = CSRChunks()
    for lines, first in chunks:
        if kind == "feature":
            _add_features(parts, path, lines, first, num_columns)
        else:
            rows, _, ids, values = _parse_pairs(path, lines, first, kind, num_columns)
            positive = values != 0
            _add_labels(parts, rows[positive], ids[positive], len(lines))
    return num_points, num_columns, parts
