"""Plots of the sweep CSVs written by bench/sweep.py: time, memory and % of a roofline vs L or B.

    python bench/plot.py [FOLDER_OR_CSV ...]     (default: bench-out; a folder's *_sweep.csv files)

Next to each CSV, one PNG of fwd+bwd ('full' mode) per logits dtype and metric, titled with the GPU and the
dtype: <sweep>_sweep_<metric>_<dtype>.png, log-x over the swept L (B in the batch sweep). Dense and batch
sweeps: a panel per target dtype, a line per provider. Sparse sweep: one panel, a line per (provider,
target). Linear sweep: a panel per (B, D), a line per (provider, target). Variants sweep (one shape): a
bar per provider, grouped by variant, a panel per L. Then REPORT.md per folder (bench/report.py).

Lines that coincide (the target memory of providers given the same target, say) stay visible: each line has
its own marker and dash pattern, the later ones drawn thinner and smaller on top, and a panel whose lines
coincide says which under its title. In the time plots a point that report.outliers flags (a median outside
its own band, or a time more than 10× off its neighbours along its line) is ringed in red and listed under
the figure, as in REPORT.md's "Flagged points".
"""

import argparse
import json
from pathlib import Path

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    from matplotlib.lines import Line2D
except ImportError as error:
    raise ImportError(
        f"bench/ needs {error.name or error}, which the package's core install leaves out: "
        'pip install -e ".[bench]"'
    ) from error
import numpy as np
from report import outliers, write_report  # bench/report.py, next to this script

METRICS = {
    "time": ("fwd+bwd time (ms)", True),
    "memory": ("peak extra memory (MB)", True),
    "target_memory": ("target memory (MB)", True),
    "roofline": ("% of copy bandwidth (minimal bytes)", False),
    "tflops": ("TFLOP/s (6·B·D·L flop)", False),
    "gemm_roofline": ("% of the 3-GEMM floor", False),
}
X_LABELS = {"labels": "labels L", "batch": "batch B"}
MARKERS = "osD^vPX*"
DASHES = ("-", "--", "-.", ":")


def coinciding(lines: dict[str, pd.DataFrame]) -> list[list[str]]:
    """Groups of 2+ line names whose medians agree within 2% at the same sizes (sorted by x); lines with
    no value (peak memory without CUDA) are left out."""
    groups: list[list[str]] = []
    for name, line in lines.items():
        if line["y_50"].isna().all():
            continue
        for group in groups:
            other = lines[group[0]]
            if list(other["x_value"]) == list(line["x_value"]) and np.allclose(
                other["y_50"], line["y_50"], rtol=0.02, equal_nan=True
            ):
                group.append(name)
                break
        else:
            groups.append([name])
    return [group for group in groups if len(group) > 1]


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


def _variant_color(provider: str) -> str:
    """The variants sweep's bar colour: ours, eager torch or torch.compile."""
    if provider.startswith("softmargin-triton"):
        return "C0"
    return "C2" if provider.endswith("-compile") else "C1"


def plot_variants(path: Path, frame: pd.DataFrame) -> list[Path]:
    """The variants sweep: fwd+bwd median time per provider (20th–80th percentile as error bars), grouped by
    variant, one panel per L, one PNG per logits dtype."""
    written = []
    times = frame[frame["metric"] == "time"]
    for dtype, group in times.groupby("dtype"):
        sizes = sorted(set(group["x_value"]))
        fig, axes = plt.subplots(1, len(sizes), figsize=(1.4 + 5.2 * len(sizes), 4.2), squeeze=False)
        for ax, x in zip(axes[0], sizes, strict=True):
            rows = group[group["x_value"] == x]
            colors = [_variant_color(provider) for provider in rows["provider"]]
            errors = [rows["y_50"] - rows["y_20"], rows["y_80"] - rows["y_50"]]
            ax.barh(rows["provider"], rows["y_50"], xerr=errors, color=colors, capsize=3)
            ax.invert_yaxis()  # in the sweep's order, top down
            ax.set_xscale("log")
            ax.set_xlabel("fwd+bwd time (ms)")
            ax.set_title(f"B={rows['batch'].iloc[0]}, L={x}", fontsize=10)
            ax.grid(True, axis="x", which="both", alpha=0.3)
        first = group.iloc[0]
        fig.suptitle(
            f"loss variants, fwd+bwd — {first['gpu_name']}\n{dtype} logits; ours: {first['ours_path']}"
        )
        fig.tight_layout()
        out = path.parent / f"{path.stem}_time_{dtype}.png"
        fig.savefig(out, dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(out)
    return written


def plot_csv(path: Path) -> list[Path]:
    frame = pd.read_csv(path)
    frame = frame[(frame["mode"] == "full") & frame["metric"].isin(METRICS)]
    config = frame["extra_config"].map(json.loads)
    if len(config) and config.map(lambda c: "variant" in c).all():
        fields = pd.DataFrame(config.tolist(), index=frame.index)[["dtype", "batch"]]
        return plot_variants(path, frame.join(fields))
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
        # One color, marker and dash pattern per line across the panels: lines that coincide stay apart.
        styles = {
            name: dict(color=f"C{i}", marker=MARKERS[i % len(MARKERS)], ls=DASHES[i % len(DASHES)])
            for i, name in enumerate(names)
        }
        fig, axes = plt.subplots(
            1, len(panels), figsize=(1.4 + 4.6 * len(panels), 4.2), sharey=True, squeeze=False
        )
        flagged = []
        for ax, (panel, rows) in zip(axes[0], panels, strict=True):
            lines = {name: line.sort_values("x_value") for name, line in rows.groupby("line")}
            for order, (name, line) in enumerate(lines.items()):
                # later lines thinner, with smaller markers, on top: a line beneath shows around them
                ax.plot(
                    line["x_value"],
                    line["y_50"],
                    **styles[name],
                    lw=max(2.4 - 0.4 * order, 0.8),
                    ms=max(9 - 1.5 * order, 3),
                    mfc="none" if order % 2 else styles[name]["color"],
                    zorder=2 + order,
                )
                if line["y_20"].notna().all():
                    ax.fill_between(
                        line["x_value"], line["y_20"], line["y_80"], color=styles[name]["color"], alpha=0.15
                    )
                if metric == "time":
                    for index, why in outliers(line).items():
                        point = line.loc[index]
                        ax.plot(point["x_value"], point["y_50"], "o", ms=16, mfc="none", mec="red", mew=1.5)
                        where = f"{panel}: " if panel else ""
                        flagged.append(f"{where}{name} at {int(point['x_value'])}: {why}")
            same = coinciding(lines)
            note = "\n".join("coincide: " + " = ".join(group) for group in same)
            ax.set_title(panel + ("\n" if panel and note else "") + note, fontsize=10 if not note else 8)
            ax.set_xscale("log", base=2)
            if log_y:
                ax.set_yscale("log")
            ax.set_xlabel(X_LABELS[x_name])
            ax.grid(True, which="both", alpha=0.3)
        axes[0][0].set_ylabel(label)
        handles = [Line2D([], [], **styles[name], label=name) for name in names]
        if flagged:
            handles.append(Line2D([], [], ls="", marker="o", ms=12, mfc="none", mec="red", label="flagged"))
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
        if flagged:
            fig.text(0.01, -0.02, "Flagged (distrust):\n" + "\n".join(flagged), fontsize=7, va="top")
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
