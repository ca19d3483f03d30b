"""Plots of the sweep CSVs written by bench/sweep.py: time, memory and % of copy bandwidth vs label count.

    python bench/plot.py [FOLDER_OR_CSV ...]     (default: bench-out)

PNGs next to each CSV, fwd+bwd ('full' mode), and REPORT.md per folder (bench/report.py). Dense sweep:
one PNG per (metric, target dtype), one line per provider. Sparse sweep: one PNG per metric, one line per
(provider, target). Linear sweep: one PNG per (metric, B, D), one line per (provider, target).
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from report import write_report  # bench/report.py, next to this script

METRICS = {
    "time": ("fwd+bwd time (ms)", True),
    "memory": ("peak extra memory (MB)", True),
    "target_memory": ("target memory (MB)", True),
    "roofline": ("% of copy bandwidth (minimal bytes)", False),
    "tflops": ("TFLOP/s (6·B·D·L flop)", False),
    "gemm_roofline": ("% of the 3-GEMM floor", False),
}


def figure_of(kernel: str, config: dict) -> str:
    """Dense sweep: a figure per target dtype; sparse: one for all targets; linear: one per (B, D)."""
    if kernel.startswith("linear"):
        return f"B{config['batch']}-D{config['dim']}"
    return "all" if kernel.endswith("_sparse") else config["target_dtype"]


def plot_csv(path: Path) -> list[Path]:
    frame = pd.read_csv(path)
    frame = frame[frame["mode"] == "full"]
    config = frame["extra_config"].map(json.loads)
    dense = frame["kernel"] == "multilabel_soft_margin_loss_dense"
    frame = frame.assign(
        target_dtype=config.map(lambda c: c["target_dtype"]),
        dtype=config.map(lambda c: c["dtype"]),
        batch=config.map(lambda c: c["batch"]),
        figure=[figure_of(kernel, c) for kernel, c in zip(frame["kernel"], config, strict=True)],
        line=frame["provider"].where(
            dense, frame["provider"] + " (" + config.map(lambda c: c["target_dtype"]) + ")"
        ),
    )
    written = []
    for (kernel, metric, figure), group in frame.groupby(["kernel", "metric", "figure"]):
        if metric not in METRICS:
            continue
        label, log_y = METRICS[metric]
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for name, line in group.groupby("line"):
            line = line.sort_values("x_value")
            ax.plot(line["x_value"], line["y_50"], marker="o", label=name)
            if line["y_20"].notna().all():
                ax.fill_between(line["x_value"], line["y_20"], line["y_80"], alpha=0.2)
        ax.set_xscale("log", base=2)
        if log_y:
            ax.set_yscale("log")
        first = group.iloc[0]
        if kernel.startswith("linear"):
            subtitle = f"{first['dtype']}, sparse targets, {figure.replace('-', ', ')}"
        else:
            targets = "sparse positives vs dense" if figure == "all" else figure
            subtitle = f"{first['dtype']} logits, {targets} targets, B={first['batch']}"
        ax.set_title(f"{kernel}, fwd+bwd — {first['gpu_name']}\n{subtitle}")
        ax.set_xlabel("labels L")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        out = path.parent / f"{path.stem}_{metric}_{figure}.png"
        fig.savefig(out, dpi=120)
        plt.close(fig)
        written.append(out)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("paths", type=Path, nargs="*", default=[Path("bench-out")])
    args = parser.parse_args()
    csvs = [p for path in args.paths for p in (sorted(path.glob("*.csv")) if path.is_dir() else [path])]
    if not csvs:
        raise SystemExit(f"no CSV found in {', '.join(map(str, args.paths))}: run bench/sweep.py first")
    for csv in csvs:
        for png in plot_csv(csv):
            print(f"wrote {png}")
    for folder in sorted({csv.parent for csv in csvs}):
        print(f"wrote {write_report(folder)}")


if __name__ == "__main__":
    main()
