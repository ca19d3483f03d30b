"""Plots of the sweep CSVs written by bench/sweep.py: time, memory and % of a roofline vs L or B.

    python bench/plot.py [FOLDER_OR_CSV ...]     (default: bench-out; a folder's *_sweep.csv files)

Next to each CSV, one PNG of fwd+bwd ('full' mode) per logits dtype and metric, titled with the GPU and the
dtype: <sweep>_sweep_<metric>_<dtype>.png, log-x over the swept L (B in the batch sweep). Dense and batch
sweeps: a panel per target dtype, a line per provider. Sparse sweep: one panel, a line per (provider,
target). Linear sweep: a panel per (B, D), a line per (provider, target). Then REPORT.md per folder
(bench/report.py).
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.lines import Line2D
from report import write_report  # bench/report.py, next to this script

METRICS = {
    "time": ("fwd+bwd time (ms)", True),
    "memory": ("peak extra memory (MB)", True),
    "target_memory": ("target memory (MB)", True),
    "roofline": ("% of copy bandwidth (minimal bytes)", False),
    "tflops": ("TFLOP/s (6·B·D·L flop)", False),
    "gemm_roofline": ("% of the 3-GEMM floor", False),
}
X_LABELS = {"labels": "labels L", "batch": "batch B"}


def layout(kernel: str, x_name: str, provider: str, config: dict) -> tuple[str, str, str]:
    """(panel title, line name, figure subtitle) of one measurement."""
    logits = f"{config['dtype']} logits"
    with_target = f"{provider} ({config['target_dtype']})"
    if kernel.startswith("linear"):
        return f"B={config['batch']}, D={config['dim']}", with_target, f"{logits}, sparse targets"
    if kernel.endswith("_sparse"):
        return "", with_target, f"{logits}, sparse positives vs dense targets, B={config['batch']}"
    fixed = f"L={config['labels']}" if x_name == "batch" else f"B={config['batch']}"
    return f"{config['target_dtype']} targets", provider, f"{logits}, {fixed}"


def plot_csv(path: Path) -> list[Path]:
    frame = pd.read_csv(path)
    frame = frame[(frame["mode"] == "full") & frame["metric"].isin(METRICS)]
    config = frame["extra_config"].map(json.loads)
    described = [
        layout(*fields)
        for fields in zip(frame["kernel"], frame["x_name"], frame["provider"], config, strict=True)
    ]
    frame = frame.assign(
        dtype=config.map(lambda c: c["dtype"]),
        panel=[panel for panel, _, _ in described],
        line=[line for _, line, _ in described],
        subtitle=[subtitle for _, _, subtitle in described],
    )
    written = []
    for (kernel, x_name, dtype, metric), group in frame.groupby(["kernel", "x_name", "dtype", "metric"]):
        label, log_y = METRICS[metric]
        panels = group.groupby("panel", sort=False)  # in the sweep's order: targets or (B, D) as given
        names = sorted(set(group["line"]))
        colors = {name: f"C{i}" for i, name in enumerate(names)}  # one color per line across the panels
        fig, axes = plt.subplots(
            1, len(panels), figsize=(1.4 + 4.6 * len(panels), 4.2), sharey=True, squeeze=False
        )
        for ax, (panel, lines) in zip(axes[0], panels, strict=True):
            for name, line in lines.groupby("line"):
                line = line.sort_values("x_value")
                ax.plot(line["x_value"], line["y_50"], marker="o", color=colors[name])
                if line["y_20"].notna().all():
                    ax.fill_between(
                        line["x_value"], line["y_20"], line["y_80"], color=colors[name], alpha=0.2
                    )
            ax.set_xscale("log", base=2)
            if log_y:
                ax.set_yscale("log")
            ax.set_title(panel, fontsize=10)
            ax.set_xlabel(X_LABELS[x_name])
            ax.grid(True, which="both", alpha=0.3)
        axes[0][0].set_ylabel(label)
        handles = [Line2D([], [], color=colors[name], marker="o", label=name) for name in names]
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
        first = group.iloc[0]
        fig.suptitle(f"{kernel}, fwd+bwd — {first['gpu_name']}\n{first['subtitle']}")
        fig.tight_layout()
        out = path.parent / f"{path.stem}_{metric}_{dtype}.png"
        fig.savefig(out, dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(out)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("paths", type=Path, nargs="*", default=[Path("bench-out")])
    args = parser.parse_args()
    csvs = [p for path in args.paths for p in (sorted(path.glob("*_sweep.csv")) if path.is_dir() else [path])]
    if not csvs:
        raise SystemExit(f"no CSV found in {', '.join(map(str, args.paths))}: run bench/sweep.py first")
    for csv in csvs:
        for png in plot_csv(csv):
            print(f"wrote {png}")
    for folder in sorted({csv.parent for csv in csvs}):
        print(f"wrote {write_report(folder)}")


if __name__ == "__main__":
    main()
