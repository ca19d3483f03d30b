"""REPORT.md from the result CSVs in a folder: the headline ratios, computed, never typed.

    python bench/report.py [FOLDER ...] [--summary FILE] [--resources DIR]
        (default FOLDER: bench-out; bench/plot.py runs it too)

Reads what the folder holds: the sweep CSVs of bench/sweep.py (<sweep>_sweep.csv), and from a GPU
session's folder (bench/gpu_session.sh) also steps.csv, env.txt, ceilings.csv (bench/ceilings.py),
check_kernels.csv (bench/check_kernels.py) and gpu-tests.log. Each table is taken at bf16 logits where the
CSV has them (else at the first logits dtype swept: fp32 in a CPU smoke sweep) and at the sweep's headline
size where the CSV has it (dense: L=131072 with uint8 targets; sparse and linear: L=670091), else at the
largest size swept. The batch sweep gets one row per B.

"Measured vs the static model" puts our kernels' measured throughput beside the bound that
bench/kernel_resources.py predicts from the compiled SASS: the median over autotune configs of
bound_elements_per_s_<GPU> in reports/resources/sm_90-triton<version>.csv, the CSV of the run's triton
version (else the nearest, with a note), the GPU column chosen by the measured GPU's name (H100 or H200;
any other GPU gets no prediction). Measured: the kernel's own device time from the profiler where the
sweep ran with --profile (CUDA), else the forward's wall time.

--summary FILE also writes a short summary.md: the steps, the checks, the ceilings and the headline tables.
"""

import argparse
import json
import re
from pathlib import Path

try:
    import pandas as pd
except ImportError as error:
    raise ImportError(
        f"bench/ needs {error.name or error}, which the package's core install leaves out: "
        'pip install -e ".[bench]"'
    ) from error

HEADLINE_DTYPE = "bf16"
HEADLINE_LABELS = {"dense": 131072, "sparse": 670091, "linear": 670091, "variants": 131072}
RESOURCES = Path(__file__).resolve().parents[1] / "reports" / "resources"
OURS = "softmargin-triton"


def _read(path: Path) -> pd.DataFrame:
    # a short hash such as 46e2808 would otherwise be read as a float (inf)
    return pd.read_csv(path, dtype={"git_commit": str})


def _with_config(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows without errors, one column per extra_config field."""
    frame = frame[frame["metric"] != "error"]
    if frame.empty:
        return frame
    config = pd.DataFrame(frame["extra_config"].map(json.loads).tolist(), index=frame.index)
    return frame.join(config.drop(columns=[c for c in config.columns if c in frame.columns]))


def _headline_dtype(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows at the headline logits dtype (bf16, else the first swept)."""
    if frame.empty:
        return frame
    dtypes = list(dict.fromkeys(frame["dtype"]))
    return frame[frame["dtype"] == (HEADLINE_DTYPE if HEADLINE_DTYPE in dtypes else dtypes[0])]


def _headline(frame: pd.DataFrame) -> pd.DataFrame:
    """The fwd+bwd measurements of a sweep at its headline logits dtype, one column per config field."""
    return _headline_dtype(_with_config(frame[frame["mode"] == "full"]))


def _headline_x(frame: pd.DataFrame, sweep: str) -> int:
    wanted = HEADLINE_LABELS[sweep]
    return wanted if wanted in set(frame["x_value"]) else int(frame["x_value"].max())


def _rows(frame, provider, target, x, metric="time", mode=None) -> pd.DataFrame:
    selected = (
        (frame["provider"] == provider)
        & (frame["target_dtype"] == target)
        & (frame["x_value"] == x)
        & (frame["metric"] == metric)
    )
    if mode is not None:
        selected &= frame["mode"] == mode
    return frame[selected]


def _value(frame: pd.DataFrame, provider: str, target: str, x: int, metric: str = "time", mode=None):
    rows = _rows(frame, provider, target, x, metric, mode)
    return float(rows["y_50"].iloc[0]) if len(rows) else None


def _ratio(numerator: float | None, denominator: float | None) -> str:
    return "n/a" if numerator is None or denominator is None else f"{numerator / denominator:.2f}×"


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}g}"


def _spread(frame, provider, target, x, mode="full") -> str:
    """'median [p20–p80]' of a time, or n/a."""
    rows = _rows(frame, provider, target, x, "time", mode)
    if not len(rows):
        return "n/a"
    row = rows.iloc[0]
    if pd.isna(row["y_20"]):
        return _number(row["y_50"])
    return f"{_number(row['y_50'])} [{_number(row['y_20'])}–{_number(row['y_80'])}]"


def _goal(text: str, goals: bool) -> str:
    """A GPU goal's text where the run was on a GPU; nothing beside a CPU's figures, which it does not fit."""
    return text if goals else ""


def dense_section(full: pd.DataFrame, goals: bool = True) -> list[str]:
    x = _headline_x(full, "dense")
    ours = _value(full, OURS, "uint8", x)
    bandwidth = _value(full, OURS, "uint8", x, "roofline")
    compiled = _value(full, "torch-mlsm-compile", "uint8", x)
    first = full.iloc[0]
    rows = [
        ("ours, time (ms)", _number(ours), ""),
        ("ours, % of copy bandwidth", _number(bandwidth), "≥ 90"),
        ("speed-up vs eager MLSM", _ratio(_value(full, "torch-mlsm", "uint8", x), ours), "≥ 10×"),
        ("speed-up vs eager BCE", _ratio(_value(full, "torch-bce", "uint8", x), ours), ""),
        ("speed-up vs torch.compile(MLSM)", _ratio(compiled, ours), "≥ 1.6×"),
    ]
    return [
        f"### Dense targets — fwd+bwd, B={first['batch']}, L={x}, {first['dtype']} logits, uint8 targets",
        "",
        "| metric | value | goal (GPU) |" if goals else "| metric | value |",
        "|---|---|---|" if goals else "|---|---|",
        *(
            f"| {name} | {value} | {goal} |" if goals else f"| {name} | {value} |"
            for name, value, goal in rows
        ),
        "",
    ]


def batch_section(full: pd.DataFrame, goals: bool = True) -> list[str]:
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
        ours = _value(full, OURS, "uint8", x)
        bandwidth = _value(full, OURS, "uint8", x, "roofline")
        lines.append(
            f"| {x} | {_number(ours)} | {_number(bandwidth)} | "
            f"{_ratio(_value(full, 'torch-mlsm', 'uint8', x), ours)} | "
            f"{_ratio(_value(full, 'torch-bce', 'uint8', x), ours)} | "
            f"{_ratio(_value(full, 'torch-mlsm-compile', 'uint8', x), ours)} |"
        )
    return [*lines, ""]


def _positives_per_row(full: pd.DataFrame, x) -> float | None:
    """The mean positives per row of the targets sampled at L=x, as the CSV records them."""
    if "positives_per_row" not in full:
        return None
    values = full.loc[full["x_value"] == x, "positives_per_row"].dropna()
    return float(values.iloc[0]) if len(values) else None


def sparse_section(full: pd.DataFrame, goals: bool = True) -> list[str]:
    first = full.iloc[0]
    dtype = first["dtype"]
    sampled = pd.to_numeric(full.get("positives_per_row", pd.Series(dtype=float)), errors="coerce").dropna()
    if sampled.empty:
        positives = "Zipf positives (the CSV does not record how many)"
    elif sampled.min() == sampled.max():
        positives = f"{sampled.min():.3g} Zipf positives per row (as sampled)"
    else:
        positives = f"{sampled.min():.3g}–{sampled.max():.3g} Zipf positives per row (as sampled, by L)"
    lines = [
        f"### Sparse targets — fwd+bwd, B={first['batch']}, {dtype} logits, {positives}",
        "",
        "Ours on `SparseTargets` against ours on the dense uint8 target (speed-up and target size side by "
        f"side), then against eager torch on the dense {dtype} target.",
        "",
        f"| L | positives / row | ours sparse (ms) | % of copy bandwidth{_goal(' (GPU goal ≥ 90)', goals)} | "
        "speed-up vs ours on the uint8 dense target | target MB: sparse / uint8 dense | "
        f"vs eager MLSM ({dtype} target) | vs eager BCE ({dtype} target) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for x in sorted(set(full["x_value"])):
        ours = _value(full, OURS, "sparse", x)
        bandwidth = _value(full, OURS, "sparse", x, "roofline")
        lines.append(
            f"| {x} | {_number(_positives_per_row(full, x))} | {_number(ours)} | {_number(bandwidth)} | "
            f"{_ratio(_value(full, OURS, 'uint8', x), ours)} | "
            f"{_number(_value(full, OURS, 'sparse', x, 'target_memory'))} / "
            f"{_number(_value(full, OURS, 'uint8', x, 'target_memory'))} | "
            f"{_ratio(_value(full, 'torch-mlsm', dtype, x), ours)} | "
            f"{_ratio(_value(full, 'torch-bce', dtype, x), ours)} |"
        )
    return [*lines, ""]


def linear_section(full: pd.DataFrame, goals: bool = True) -> list[str]:
    x = _headline_x(full, "linear")
    dtype = full["dtype"].iloc[0]
    lines = [
        f"### Fused linear + loss — fwd+bwd, L={x}, {dtype}, sparse targets",
        "",
        f"| shape | ours (ms) | time / 3-GEMM floor{_goal(' (GPU goal ≤ 1.25)', goals)} | "
        f"speed-up vs eager{_goal(' (GPU goal ≥ 3×)', goals)} | "
        f"vs torch.compile{_goal(' (GPU goal ≥ 1.5×)', goals)} | vs chunked torch loop |",
        "|---|---|---|---|---|---|",
    ]
    for (batch, dim), group in full.groupby(["batch", "dim"]):
        ours = _value(group, OURS, "sparse", x)
        percent = _value(group, OURS, "sparse", x, "gemm_roofline")
        floor_ratio = None if percent is None else 100 / percent
        lines.append(
            f"| B={batch}, D={dim} | {_number(ours)} | {_number(floor_ratio)} | "
            f"{_ratio(_value(group, 'torch-linear-mlsm', dtype, x), ours)} | "
            f"{_ratio(_value(group, 'torch-linear-mlsm-compile', dtype, x), ours)} | "
            f"{_ratio(_value(group, 'torch-chunked', 'sparse', x), ours)} |"
        )
    sources = set(full["gemm_source"].dropna()) if "gemm_source" in full else set()
    if sources:
        lines += ["", f"3-GEMM floor from: {'; '.join(sorted(sources))}."]
    return [*lines, ""]


def _variant_value(full: pd.DataFrame, provider: str, x: int, metric: str = "time") -> float | None:
    """A variants-sweep value of one provider at L=x, whatever its target (ours and torch's differ)."""
    rows = full[(full["provider"] == provider) & (full["x_value"] == x) & (full["metric"] == metric)]
    return float(rows["y_50"].iloc[0]) if len(rows) else None


def _parameters(config: pd.Series) -> str:
    """A variant's parameters as the CSV records them, e.g. 'alpha=0.25, gamma=2.0; mean'."""
    parameters = config["parameters"] if isinstance(config.get("parameters"), dict) else {}
    text = ", ".join(f"{name}={value}" for name, value in parameters.items())
    if pd.notna(config.get("unknown_fraction", float("nan"))):
        text += f" ({100 * config['unknown_fraction']:.0f}% of the labels unknown)"
    return f"{text}; {config['reduction']}"


def variants_section(full: pd.DataFrame, goals: bool = True) -> list[str]:
    """Issue 18's losses and options, ours against the published formula in eager torch and its
    torch.compile: fwd+bwd medians, peak memory and our share of the copy bandwidth."""
    x = _headline_x(full, "variants")
    at_x = full[full["x_value"] == x]
    first = at_x.iloc[0]
    ours_path = ", ".join(sorted(set(at_x.get("ours_path", pd.Series(dtype=str)).dropna().astype(str))))
    compiled = at_x["provider"].str.endswith("-compile").any()
    lines = [
        f"### Loss variants — fwd+bwd, B={first['batch']}, L={x}, {first['dtype']} logits",
        "",
        "Ours (softmargin-triton-<variant>"
        + (f": {ours_path}" if ours_path else "")
        + ") against the published formula in eager torch (torch-<variant>: torchvision's focal loss, the "
        "ASL authors' reference, torch's MLSM on the target smoothed in the call, the masked MLSM)"
        + (" and its torch.compile" if compiled else "; torch.compile not run")
        + ". Peak memory: the eager formula's over ours"
        + ("" if at_x["metric"].eq("memory").any() else " (measured on CUDA only: n/a here)")
        + ".",
        "",
        "| variant | parameters | targets: ours / torch | ours (ms) | eager (ms) | speed-up vs eager | "
        "torch.compile (ms) | vs torch.compile | peak memory: eager / ours | ours, % of copy bandwidth |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, rows in at_x.groupby("variant", sort=False):
        ours, eager = f"softmargin-triton-{variant}", f"torch-{variant}"
        target = dict(zip(rows["provider"], rows["target_dtype"], strict=True))
        ours_ms, eager_ms = _variant_value(rows, ours, x), _variant_value(rows, eager, x)
        compile_ms = _variant_value(rows, f"torch-{variant}-compile", x)
        memory = _ratio(_variant_value(rows, eager, x, "memory"), _variant_value(rows, ours, x, "memory"))
        lines.append(
            f"| {variant} | {_parameters(rows.iloc[0])} | {target.get(ours, 'n/a')} / "
            f"{target.get(eager, 'n/a')} | {_number(ours_ms)} | {_number(eager_ms)} | "
            f"{_ratio(eager_ms, ours_ms)} | {_number(compile_ms)} | {_ratio(compile_ms, ours_ms)} | "
            f"{memory} | {_number(_variant_value(rows, ours, x, 'roofline'))} |"
        )
    return [*lines, ""]


def detail_section(frame: pd.DataFrame, sweep: str) -> list[str]:
    """Every provider and target at the headline size: fwd+bwd median [p20–p80], forward and backward
    alone (each timed by itself), peak memory and the rate against the roofline."""
    rows = _headline_dtype(_with_config(frame))
    if rows.empty:
        return []
    x = _headline_x(rows, sweep)
    rate = "gemm_roofline" if sweep == "linear" else "roofline"
    rate_name = "% of 3-GEMM floor" if sweep == "linear" else "% of copy bandwidth"
    lines = [
        f"All providers at L={x} (times in ms: median [20th–80th percentile]; forward and backward each "
        "timed alone, the backward after an untimed forward; peak memory above what was allocated before "
        "the call, CUDA only):",
        "",
        f"| provider | target | fwd+bwd | forward | backward | peak MB | {rate_name} |",
        "|---|---|---|---|---|---|---|",
    ]
    at_x = rows[rows["x_value"] == x]
    pairs = list(dict.fromkeys(zip(at_x["provider"], at_x["target_dtype"], strict=True)))
    for provider, target in pairs:
        lines.append(
            f"| {provider} | {target} | {_spread(rows, provider, target, x)} | "
            f"{_spread(rows, provider, target, x, 'forward')} | "
            f"{_spread(rows, provider, target, x, 'backward')} | "
            f"{_number(_value(rows, provider, target, x, 'memory', 'full'))} | "
            f"{_number(_value(rows, provider, target, x, rate, 'full'))} |"
        )
    errors = frame[frame["metric"] == "error"]
    for _, error in errors.iterrows():
        lines.append(
            f"| {error['provider']} | error ({error['mode']}, x={error['x_value']}) | {error['error']} |"
        )
    return [*lines, ""]


# ---------------------------------------------------------------------------------------------------------
# Points to distrust: flagged in the plots and listed in REPORT.md
# ---------------------------------------------------------------------------------------------------------

# A time may fall as the problem grows, or grow faster than it, by at most this factor between two sizes
# next to each other in a sweep; beyond it a point is flagged (on a shared CPU: a throttled or interrupted
# measurement).
OUTLIER_FACTOR = 10.0


def outliers(line: pd.DataFrame) -> dict[int, str]:
    """Index → why, for the points of one line (one provider, target and dtype; rows of one metric, sorted
    or not) that are off: a median outside its own [20th, 80th] percentile band, or a time that falls by
    more than OUTLIER_FACTOR from the next smaller size, or grows more than OUTLIER_FACTOR × the size ratio,
    on every side it has a neighbour."""
    line = line.sort_values("x_value")
    flagged = {}
    for index, row in line.iterrows():
        low, high = row.get("y_20"), row.get("y_80")
        if pd.notna(low) and pd.notna(high) and not low * 0.99 <= row["y_50"] <= high * 1.01:
            flagged[index] = (
                f"median {_number(row['y_50'])} outside its band [{_number(low)}, {_number(high)}]"
            )
    x, y = line["x_value"].to_numpy(float), line["y_50"].to_numpy(float)
    off = [
        not (y[i + 1] >= y[i] / OUTLIER_FACTOR and y[i + 1] <= y[i] * OUTLIER_FACTOR * x[i + 1] / x[i])
        for i in range(len(line) - 1)
    ]
    for i, index in enumerate(line.index):
        sides = [off[j] for j in (i - 1, i) if 0 <= j < len(off)]
        if sides and all(sides) and index not in flagged:
            neighbours = ", ".join(
                f"{_number(y[j])} at {int(x[j])}" for j in (i - 1, i + 1) if 0 <= j < len(line)
            )
            flagged[index] = (
                f"{_number(y[i])} is more than {OUTLIER_FACTOR:g}× off its neighbours ({neighbours})"
            )
    return flagged


def outlier_section(frames: dict[str, pd.DataFrame]) -> list[str]:
    """Every fwd+bwd time that `outliers` flags, in every sweep and dtype (also ringed in the plots)."""
    lines = []
    for sweep, frame in frames.items():
        rows = _with_config(frame[(frame["mode"] == "full") & (frame["metric"] == "time")])
        if rows.empty:
            continue
        keys = [key for key in ("dtype", "provider", "target_dtype", "batch", "labels", "dim") if key in rows]
        for _, line in rows.groupby(keys, dropna=False):
            for index, why in outliers(line).items():
                row = line.loc[index]
                lines.append(
                    f"| {sweep} | {row['dtype']} | {row['provider']} | {row['target_dtype']} | "
                    f"{row['x_name']}={int(row['x_value'])} | {_number(row['y_50'])} | {why} |"
                )
    if not lines:
        return []
    return [
        "### Flagged points",
        "",
        "Fwd+bwd times to distrust (ringed in red in the time plots): a median outside its own band, or a "
        f"time more than {OUTLIER_FACTOR:g}× off the sizes next to it along its line. Rerun before "
        "quoting them.",
        "",
        "| sweep | logits | provider | target | at | ms | why |",
        "|---|---|---|---|---|---|---|",
        *lines,
        "",
    ]


# ---------------------------------------------------------------------------------------------------------
# Measured vs the static model of bench/kernel_resources.py
# ---------------------------------------------------------------------------------------------------------

# (kernel, variant) of reports/resources → (sweep, our target, the device kernel's name in the profile)
STATIC_HEADLINE = {
    ("soft_margin_forward", "mlsm-bf16-uint8"): ("dense", "uint8", "soft_margin_forward_kernel"),
    ("soft_margin_forward", "mlsm-bf16-sparse"): ("sparse", "sparse", "soft_margin_forward_kernel"),
    ("linear_soft_margin_chunk", "bf16-sparse"): ("linear", "sparse", "linear_soft_margin_chunk_kernel"),
}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def resources_csv(resources: Path, triton_version: str) -> tuple[Path | None, str]:
    """The static model's CSV for this triton version, else the nearest one (with a note)."""
    found = {path: _version(path.stem.split("triton")[-1]) for path in resources.glob("sm_90-triton*.csv")}
    if not found:
        return None, f"no static prediction: no sm_90-triton*.csv in {resources}"
    wanted = _version(triton_version)
    for path, version in found.items():
        if version == wanted:
            return path, ""

    def distance(item):
        version = item[1] + (0,) * (3 - len(item[1]))
        target = wanted + (0,) * (3 - len(wanted))
        return tuple(abs(a - b) for a, b in zip(version, target, strict=True))

    path = min(found.items(), key=distance)[0]
    return path, f"no static model for triton {triton_version}: the nearest, {path.name}, is used"


def gpu_column(gpu_name: str) -> str | None:
    for gpu in ("H200", "H100"):
        if gpu in gpu_name:
            return gpu
    return None


def _measured(frames: dict, sweep: str, target: str, device_kernel: str) -> tuple | None:
    """(elements, ms, how) of our kernel in the headline case of a sweep."""
    if sweep not in frames:
        return None
    rows = _headline_dtype(_with_config(frames[sweep]))
    rows = rows[(rows["provider"] == OURS) & (rows["target_dtype"] == target)]
    if rows.empty:
        return None
    x = _headline_x(rows, sweep)
    rows = rows[rows["x_value"] == x]
    batch = int(rows["batch"].iloc[0])
    elements = batch * x
    case = f"B={batch}, L={x}" + (
        f", D={int(rows['dim'].iloc[0])}" if "dim" in rows and sweep == "linear" else ""
    )
    if "device_kernel" in rows:
        kernel = rows[
            (rows["metric"] == "kernel_time") & rows["device_kernel"].astype(str).str.contains(device_kernel)
        ]
        if len(kernel):
            return elements, float(kernel["y_50"].sum()), f"{device_kernel}, profiler", case
    forward = rows[(rows["metric"] == "time") & (rows["mode"] == "forward")]
    if len(forward):
        how = "forward wall time" + (" (with its dE, dW GEMMs)" if sweep == "linear" else "")
        return elements, float(forward["y_50"].iloc[0]), how, case
    return None


def static_model_section(frames: dict, resources: Path = RESOURCES) -> list[str]:
    first = next(iter(frames.values())).iloc[0]
    gpu, triton_version = str(first["gpu_name"]), str(first["triton_version"])
    path, note = resources_csv(resources, triton_version)
    column = gpu_column(gpu)
    lines = [
        "### Measured vs the static model",
        "",
        "Our kernels' throughput in elements (logits) per second beside the upper bound that "
        "bench/kernel_resources.py predicts from the SASS (least of the bandwidth, issue and MUFU bounds; "
        "median over the autotune configs).",
        "",
    ]
    static = pd.read_csv(path) if path is not None else None
    missing = ""
    if static is None:
        missing = note
    elif column is None:
        missing = f"no prediction for {gpu}: the static model has columns for H100 and H200 only"
    elif f"bound_elements_per_s_{column}" not in static.columns:
        missing = f"no static prediction in {path.name}"
    elif note:
        lines += [f"Note: {note}.", ""]
    if missing:
        lines += [f"Note: {missing}.", ""]
    lines += [
        "| kernel | variant | case | measured ms (how) | measured elements/s | predicted bound elements/s "
        "| limiter | measured / bound |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (kernel, variant), (sweep, target, device_kernel) in STATIC_HEADLINE.items():
        measured = _measured(frames, sweep, target, device_kernel)
        bound = limiter = None
        configs = 0
        if not missing:
            rows = static[(static["kernel"] == kernel) & (static["variant"] == variant)]
            values = pd.to_numeric(rows[f"bound_elements_per_s_{column}"], errors="coerce").dropna()
            if len(values):
                bound, configs = float(values.median()), len(values)
                limiters = rows.get(f"limiter_{column}")
                limiter = limiters.mode().iloc[0] if limiters is not None and limiters.notna().any() else None
        if measured is None:
            cells = ["n/a (not measured)", "n/a"]
            rate = None
        else:
            elements, ms, how, _ = measured
            rate = elements / (ms / 1e3)
            cells = [f"{_number(ms)} ({how})", f"{rate:.3g}"]
        case_text = measured[3] if measured else "n/a"
        bound_text = f"{bound:.3g} ({configs} configs)" if bound is not None else "n/a"
        lines.append(
            f"| {kernel} | {variant} | {case_text} | {cells[0]} | {cells[1]} | {bound_text} | "
            f"{limiter or 'n/a'} | {_ratio(rate, bound) if rate is not None and bound else 'n/a'} |"
        )
    return [*lines, ""]


# ---------------------------------------------------------------------------------------------------------
# A GPU session's own files: steps, environment, ceilings, checks
# ---------------------------------------------------------------------------------------------------------


def steps_section(folder: Path) -> list[str]:
    path = folder / "steps.csv"
    if not path.exists():
        return []
    steps = pd.read_csv(path, dtype=str).fillna("")
    lines = [
        "## Steps",
        "",
        "| step | status | seconds | estimate (s) | limit (s) |",
        "|---|---|---|---|---|",
    ]
    for _, step in steps.iterrows():
        lines.append(
            f"| {step['step']} | {step['status']} | {step['seconds']} | {step['estimate_s']} | "
            f"{step['limit_s']} |"
        )
    return [*lines, ""]


def environment_lines(folder: Path) -> dict[str, str]:
    path = folder / "env.txt"
    if not path.exists():
        return {}
    pairs = (line.split(": ", 1) for line in path.read_text().splitlines() if ": " in line)
    return dict(pairs)


def ceilings_section(folder: Path) -> list[str]:
    path = folder / "ceilings.csv"
    if not path.exists():
        return []
    frame = _read(path)
    lines = ["## Ceilings measured in the same run", ""]
    copy = frame[frame["metric"] == "copy_bandwidth"]
    for _, row in copy.iterrows():
        mib = json.loads(row["extra_config"])["buffer_mib"]
        lines.append(
            f"- copy bandwidth (bytes read + written): {row['y_50']:.0f} GB/s "
            f"[{row['y_20']:.0f}–{row['y_80']:.0f}] over {mib} MiB"
        )
    for kernel, what in (("gemm", "full shape"), ("gemm_chunk", "one label chunk")):
        rows = frame[frame["kernel"] == kernel].set_index("metric")
        if rows.empty:
            continue
        shape = json.loads(rows["extra_config"].iloc[0])
        rates = ", ".join(
            f"{name.removeprefix('gemm_')} {_number(rows.loc[name, 'y_50'])}"
            for name in ("gemm_logits", "gemm_grad_input", "gemm_grad_weight")
            if name in rows.index
        )
        floor = rows.loc["gemm_3_floor", "y_50"] if "gemm_3_floor" in rows.index else None
        floor_ms = rows.loc["gemm_3_floor_ms", "y_50"] if "gemm_3_floor_ms" in rows.index else None
        lines.append(
            f"- {shape['dtype']} GEMMs of the fused linear loss at B={shape['batch']}, D={shape['dim']}, "
            f"L={shape['labels']} ({what}), TFLOP/s: {rates}; 3-GEMM floor {_number(floor)} TFLOP/s = "
            f"{_number(floor_ms)} ms"
        )
    return [*lines, ""]


def checks_section(folder: Path, detail: bool) -> list[str]:
    lines = []
    path = folder / "check_kernels.csv"
    if path.exists():
        frame = pd.read_csv(path)
        passed = frame["passed"].astype(str).str.lower() == "true"
        variants = frame["variant"].nunique()
        failed = frame[~passed]
        lines += [
            "## Correctness of the compiled kernels",
            "",
            f"bench/check_kernels.py: {int(passed.sum())} of {len(frame)} checks passed over {variants} "
            "kernel and launch variants (against float64 torch).",
        ]
        if len(failed):
            lines += ["", "| variant | quantity | error | tol | message |", "|---|---|---|---|---|"]
            for _, row in failed.iterrows():
                message = "" if pd.isna(row.get("message")) else row.get("message")
                lines.append(
                    f"| {row['variant']} | {row['quantity']} | {_number(row.get('error'))} | "
                    f"{_number(row.get('tol'))} | {message} |"
                )
        elif detail:
            worst = (
                frame.loc[pd.to_numeric(frame["error"], errors="coerce").idxmax()]
                if "error" in frame
                else None
            )
            if worst is not None:
                lines += [
                    "",
                    f"Largest relative error: {_number(worst['error'])} ({worst['variant']}, "
                    f"{worst['quantity']}, tolerance {_number(worst['tol'])}).",
                ]
        lines.append("")
    log = folder / "gpu-tests.log"
    if log.exists():
        tail = [line for line in log.read_text().splitlines() if line.strip()]
        last = tail[-1] if tail else "(empty log)"
        if not lines:
            lines += ["## Correctness of the compiled kernels", ""]
        lines += [f"gpu test tier (`pytest -m gpu`): {last.strip('= ')}", ""]
    return lines


# sweep → (the x_name of its rows, its section)
SECTIONS = {
    "dense": ("labels", dense_section),
    "batch": ("batch", batch_section),
    "sparse": ("labels", sparse_section),
    "linear": ("labels", linear_section),
    "variants": ("labels", variants_section),
}


def _sweeps(folder: Path) -> dict[str, pd.DataFrame]:
    return {
        sweep: _read(folder / f"{sweep}_sweep.csv")
        for sweep in SECTIONS
        if (folder / f"{sweep}_sweep.csv").exists()
    }


def _on_cpu(frames: dict[str, pd.DataFrame]) -> bool:
    """Whether the sweeps ran without a GPU (gpu_name "cpu")."""
    return bool(frames) and str(next(iter(frames.values()))["gpu_name"].iloc[0]) == "cpu"


def cpu_section(frames: dict[str, pd.DataFrame]) -> list[str]:
    """What a CPU run measured: which code 'ours' ran (the CSVs' ours_path column), and that no GPU goal
    applies."""
    paths = set()
    for frame in frames.values():
        if "ours_path" in frame:
            paths |= set(frame["ours_path"].dropna().astype(str))
    if paths == {"plain-torch fallback"}:
        what = (
            "here 'ours' (softmargin-triton) is the package's plain-torch fallback, and no Triton kernel "
            "ran. The tables compare torch code with torch code on this CPU"
        )
    elif paths and all("interpreter" in path for path in paths):
        what = (
            "here 'ours' ran the Triton kernels under Triton's CPU interpreter, which emulates them in "
            "numpy to check results, not to be fast"
        )
    elif paths:
        what = f"here 'ours' ran: {'; '.join(sorted(paths))}"
    else:
        what = (
            "the CSVs do not record what 'ours' ran (no ours_path column); under the default backend a CPU "
            "runs the package's plain-torch fallback, not a Triton kernel"
        )
    return [
        "## Measured on a CPU",
        "",
        f"**No GPU: {what}.** These figures say nothing about the kernels on a GPU, so no GPU goal is set "
        "beside them; '% of copy bandwidth' is of this CPU's copy bandwidth, and the static model of the "
        "sm_90 kernels predicts nothing for a CPU. The GPU figures come from the same command on a CUDA "
        "machine (bench/README.md).",
        "",
    ]


def headline_lines(frames: dict[str, pd.DataFrame], detail: bool) -> list[str]:
    goals = not _on_cpu(frames)
    lines = []
    for sweep, frame in frames.items():
        x_name, section = SECTIONS[sweep]
        frame = frame[frame["x_name"] == x_name]
        full = _headline(frame)
        if not len(full):
            lines += [f"### {sweep} sweep — no fwd+bwd measurement: see the CSV", ""]
            continue
        lines += section(full, goals)
        if detail and sweep != "batch":
            lines += detail_section(frame, sweep)
    return lines


def _provenance(folder: Path, frames: dict) -> tuple[str, str]:
    """(title, the provenance paragraph)."""
    env = environment_lines(folder)
    if frames:
        first = next(iter(frames.values())).iloc[0]
        gpu, torch_version, triton_version = (
            first["gpu_name"],
            first["torch_version"],
            first["triton_version"],
        )
        commit, when = first["git_commit"], first["timestamp"]
    else:
        gpu = env.get("gpu", "unknown GPU")
        torch_version, triton_version = env.get("torch", "?"), env.get("triton", "?")
        commit, when = env.get("commit", "unknown"), env.get("date", "?")
    if "command" in env:
        command = f"`GIT_COMMIT=<commit> {env['command']}` (its archive unpacked by `python bench/unpack.py`)"
    else:
        command = "`python bench/sweep.py --out FOLDER && python bench/plot.py FOLDER`"
    driver = f", driver/GPU: {env['nvidia-smi']}" if env.get("nvidia-smi", "not found") != "not found" else ""
    text = (
        f"{gpu}{driver}; torch {torch_version}, triton {triton_version}; commit {commit}; measured {when}. "
        f"Reproduce with {command}."
    )
    return f"{gpu}", text


def write_report(folder: Path, summary: Path | None = None, resources: Path = RESOURCES) -> Path:
    frames = _sweeps(folder)
    session = (folder / "steps.csv").exists()
    if not frames and not session:
        raise SystemExit(f"no sweep CSV in {folder}: run bench/sweep.py first")
    title, provenance = _provenance(folder, frames)
    first = next(iter(frames.values())).iloc[0] if frames else {}
    commit = first["git_commit"] if frames else environment_lines(folder).get("commit", "unknown")
    lines = [
        f"# Benchmark report — {title}",
        "",
        f"Generated by `python bench/report.py {folder}` from the CSVs next to this file (at commit "
        f"{commit}, softmargin-triton {first['package_version'] if frames else '?'}). {provenance} "
        "Ratios are median fwd+bwd times at one logits dtype (named in each heading; the others are in the "
        "CSVs and plots); 'n/a' means the CSV has no such measurement (a provider not run, or an `error` "
        "row: see the CSV).",
        "",
    ]
    on_cpu = _on_cpu(frames)
    modelled = any(sweep in frames for sweep in ("dense", "sparse", "linear"))  # a CPU gets no prediction
    body = [*(cpu_section(frames) if on_cpu else []), *ceilings_section(folder)]
    body += checks_section(folder, detail=True)
    if frames:
        body += ["## Timings", "", *headline_lines(frames, detail=True), *outlier_section(frames)]
        if modelled:
            body += static_model_section(frames, resources)
    path = folder / "REPORT.md"
    path.write_text("\n".join([*lines, *body, *steps_section(folder)]))
    if summary is not None:
        short = [
            f"# GPU session summary — {title}",
            "",
            provenance,
            "",
            *(cpu_section(frames) if on_cpu else []),
            *steps_section(folder),
            *checks_section(folder, detail=False),
            *ceilings_section(folder),
        ]
        if frames:
            short += ["## Headline", "", *headline_lines(frames, detail=False)]
            if modelled:
                short += static_model_section(frames, resources)
        summary.write_text("\n".join(short))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "folders",
        type=Path,
        nargs="*",
        default=[Path("bench-out")],
        help="one REPORT.md in each; a folder after the first that holds no result is passed over",
    )
    parser.add_argument("--summary", type=Path, help="also write a short summary.md of the first folder")
    parser.add_argument("--resources", type=Path, default=RESOURCES, help="the static model's CSVs")
    args = parser.parse_args()
    for index, folder in enumerate(args.folders):
        if index and not (_sweeps(folder) if folder.is_dir() else None):
            continue
        print(f"wrote {write_report(folder, args.summary if index == 0 else None, args.resources)}")


if __name__ == "__main__":
    main()
