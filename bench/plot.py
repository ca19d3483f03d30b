"""Plots of a sweep CSV written by bench/sweep.py: time, memory and % of copy bandwidth vs label count.

    python bench/plot.py [FOLDER_OR_CSV ...]     (default: bench-out)

One PNG per (metric, target dtype) next to each CSV, fwd+bwd ('full' mode), one line per provider.
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

METRICS = {
    "time": ("fwd+bwd time (ms)", True),
    "memory": ("peak extra memory (MB)", True),
    "roofline": ("% of copy bandwidth", False),
}


def plot_csv(path: Path) -> list[Path]:
    frame = pd.read_csv(path)
    frame = frame[frame["mode"] == "full"]
    config = frame["extra_config"].map(json.loads)
    frame = frame.assign(
        target_dtype=config.map(lambda c: c["target_dtype"]),
        dtype=config.map(lambda c: c["dtype"]),
        batch=config.map(lambda c: c["batch"]),
    )
    written = []
    for (metric, target_dtype), group in frame.groupby(["metric", "target_dtype"]):
        if metric not in METRICS:
            continue
        label, log_y = METRICS[metric]
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for provider, line in group.groupby("provider"):
            line = line.sort_values("x_value")
            ax.plot(line["x_value"], line["y_50"], marker="o", label=provider)
            if line["y_20"].notna().all():
                ax.fill_between(line["x_value"], line["y_20"], line["y_80"], alpha=0.2)
        ax.set_xscale("log", base=2)
        if log_y:
            ax.set_yscale("log")
        first = group.iloc[0]
        ax.set_title(
            f"multilabel soft-margin loss, fwd+bwd — {first['gpu_name']}\n"
            f"{first['dtype']} logits, {target_dtype} targets, B={first['batch']}"
        )
        ax.set_xlabel("labels L")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        out = path.parent / f"{path.stem}_{metric}_{target_dtype}.png"
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


if __name__ == "__main__":
    main()
