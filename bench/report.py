"""REPORT.md from the sweep CSVs in a folder: the headline ratios, computed, never typed.

    python bench/report.py [FOLDER]     (default: bench-out; bench/plot.py runs it too)

Each table is taken at bf16 logits where the CSV has them (else at the first logits dtype swept: fp32 in a
CPU smoke sweep) and at the sweep's headline size where the CSV has it (dense: L=131072 with uint8
targets; sparse and linear: L=670091), else at the largest size swept. The batch sweep gets one row per B.
"""

import argparse
import json
from pathlib import Path

import pandas as pd

HEADLINE_DTYPE = "bf16"
HEADLINE_LABELS = {"dense": 131072, "sparse": 670091, "linear": 670091}


def _headline(frame: pd.DataFrame) -> pd.DataFrame:
    """The fwd+bwd measurements of a sweep at its headline logits dtype, one column per config field."""
    frame = frame[(frame["mode"] == "full") & (frame["metric"] != "error")]
    if frame.empty:
        return frame
    config = pd.DataFrame(frame["extra_config"].map(json.loads).tolist(), index=frame.index)
    frame = frame.join(config)
    dtypes = list(dict.fromkeys(frame["dtype"]))
    return frame[frame["dtype"] == (HEADLINE_DTYPE if HEADLINE_DTYPE in dtypes else dtypes[0])]


def _headline_x(frame: pd.DataFrame, sweep: str) -> int:
    wanted = HEADLINE_LABELS[sweep]
    return wanted if wanted in set(frame["x_value"]) else int(frame["x_value"].max())


def _value(frame: pd.DataFrame, provider: str, target: str, x: int, metric: str = "time") -> float | None:
    rows = frame[
        (frame["provider"] == provider)
        & (frame["target_dtype"] == target)
        & (frame["x_value"] == x)
        & (frame["metric"] == metric)
    ]
    return float(rows["y_50"].iloc[0]) if len(rows) else None


def _ratio(numerator: float | None, denominator: float | None) -> str:
    return "n/a" if numerator is None or denominator is None else f"{numerator / denominator:.2f}×"


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def dense_section(full: pd.DataFrame) -> list[str]:
    x = _headline_x(full, "dense")
    ours = _value(full, "softmargin-triton", "uint8", x)
    bandwidth = _value(full, "softmargin-triton", "uint8", x, "roofline")
    compiled = _value(full, "torch-mlsm-compile", "uint8", x)
    first = full.iloc[0]
    return [
        f"### Dense targets — fwd+bwd, B={first['batch']}, L={x}, {first['dtype']} logits, uint8 targets",
        "",
        "| metric | value | goal |",
        "|---|---|---|",
        f"| ours, time (ms) | {_number(ours)} | |",
        f"| ours, % of copy bandwidth | {_number(bandwidth)} | ≥ 90 |",
        f"| speed-up vs eager MLSM | {_ratio(_value(full, 'torch-mlsm', 'uint8', x), ours)} | ≥ 10× |",
        f"| speed-up vs eager BCE | {_ratio(_value(full, 'torch-bce', 'uint8', x), ours)} | |",
        f"| speed-up vs torch.compile(MLSM) | {_ratio(compiled, ours)} | ≥ 1.6× |",
        "",
    ]


def batch_section(full: pd.DataFrame) -> list[str]:
    first = full.iloc[0]
    lines = [
        f"### Dense targets against the batch — fwd+bwd, L={first['labels']}, {first['dtype']} logits, "
        "uint8 targets",
        "",
        "| B | ours (ms) | % of copy bandwidth | speed-up vs eager MLSM | vs eager BCE | "
        "vs torch.compile(MLSM) |",
        "|---|---|---|---|---|---|",
    ]
    for x in sorted(set(full["x_value"])):
        ours = _value(full, "softmargin-triton", "uint8", x)
        bandwidth = _value(full, "softmargin-triton", "uint8", x, "roofline")
        lines.append(
            f"| {x} | {_number(ours)} | {_number(bandwidth)} | "
            f"{_ratio(_value(full, 'torch-mlsm', 'uint8', x), ours)} | "
            f"{_ratio(_value(full, 'torch-bce', 'uint8', x), ours)} | "
            f"{_ratio(_value(full, 'torch-mlsm-compile', 'uint8', x), ours)} |"
        )
    return [*lines, ""]


def sparse_section(full: pd.DataFrame) -> list[str]:
    first = full.iloc[0]
    dtype = first["dtype"]
    lines = [
        f"### Sparse targets — fwd+bwd, B={first['batch']}, {dtype} logits, ~5.45 Zipf positives per row",
        "",
        "| L | ours sparse (ms) | % of copy bandwidth (goal ≥ 90) | speed-up vs ours on uint8 dense | "
        "vs eager MLSM | vs eager BCE | target MB sparse / dense |",
        "|---|---|---|---|---|---|---|",
    ]
    for x in sorted(set(full["x_value"])):
        ours = _value(full, "softmargin-triton", "sparse", x)
        bandwidth = _value(full, "softmargin-triton", "sparse", x, "roofline")
        lines.append(
            f"| {x} | {_number(ours)} | {_number(bandwidth)} | "
            f"{_ratio(_value(full, 'softmargin-triton', 'uint8', x), ours)} | "
            f"{_ratio(_value(full, 'torch-mlsm', dtype, x), ours)} | "
            f"{_ratio(_value(full, 'torch-bce', dtype, x), ours)} | "
            f"{_number(_value(full, 'softmargin-triton', 'sparse', x, 'target_memory'))} / "
            f"{_number(_value(full, 'torch-mlsm', dtype, x, 'target_memory'))} |"
        )
    return [*lines, ""]


def linear_section(full: pd.DataFrame) -> list[str]:
    x = _headline_x(full, "linear")
    dtype = full["dtype"].iloc[0]
    lines = [
        f"### Fused linear + loss — fwd+bwd, L={x}, {dtype}, sparse targets",
        "",
        "| shape | ours (ms) | time / 3-GEMM floor (goal ≤ 1.25) | speed-up vs eager (goal ≥ 3×) | "
        "vs torch.compile (goal ≥ 1.5×) | vs chunked torch loop |",
        "|---|---|---|---|---|---|",
    ]
    for (batch, dim), group in full.groupby(["batch", "dim"]):
        ours = _value(group, "softmargin-triton", "sparse", x)
        percent = _value(group, "softmargin-triton", "sparse", x, "gemm_roofline")
        floor_ratio = None if percent is None else 100 / percent
        lines.append(
            f"| B={batch}, D={dim} | {_number(ours)} | {_number(floor_ratio)} | "
            f"{_ratio(_value(group, 'torch-linear-mlsm', dtype, x), ours)} | "
            f"{_ratio(_value(group, 'torch-linear-mlsm-compile', dtype, x), ours)} | "
            f"{_ratio(_value(group, 'torch-chunked', 'sparse', x), ours)} |"
        )
    return [*lines, ""]


# sweep → (the x_name of its rows, its section)
SECTIONS = {
    "dense": ("labels", dense_section),
    "batch": ("batch", batch_section),
    "sparse": ("labels", sparse_section),
    "linear": ("labels", linear_section),
}


def write_report(folder: Path) -> Path:
    frames = {  # a short hash such as 46e2808 would otherwise be read as a float (inf)
        sweep: pd.read_csv(folder / f"{sweep}_sweep.csv", dtype={"git_commit": str})
        for sweep in SECTIONS
        if (folder / f"{sweep}_sweep.csv").exists()
    }
    if not frames:
        raise SystemExit(f"no sweep CSV in {folder}: run bench/sweep.py first")
    first = next(iter(frames.values())).iloc[0]
    lines = [
        f"# Benchmark report — {first['gpu_name']}",
        "",
        f"Generated by `python bench/report.py {folder}` from the CSVs next to this file (torch "
        f"{first['torch_version']}, triton {first['triton_version']}, softmargin-triton "
        f"{first['package_version']} at commit {first['git_commit']}, measured {first['timestamp']}). "
        "Reproduce with `python bench/sweep.py --out FOLDER && python bench/plot.py FOLDER`. "
        "Ratios are median fwd+bwd times at one logits dtype (named in each heading; the others are in the "
        "CSVs and plots); 'n/a' means the CSV has no such measurement (a provider not run, or an `error` "
        "row: see the CSV).",
        "",
    ]
    for sweep, frame in frames.items():
        x_name, section = SECTIONS[sweep]
        full = _headline(frame[frame["x_name"] == x_name])
        lines += (
            section(full) if len(full) else [f"### {sweep} sweep — no fwd+bwd measurement: see the CSV", ""]
        )
    path = folder / "REPORT.md"
    path.write_text("\n".join(lines))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path, nargs="?", default=Path("bench-out"))
    print(f"wrote {write_report(parser.parse_args().folder)}")


if __name__ == "__main__":
    main()
