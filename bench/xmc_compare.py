"""Train the same XMC model with the fused loss and with eager F.linear + MultiLabelSoftMarginLoss; compare.

    python bench/xmc_compare.py --out reports/xmc/<machine> [--dataset NAME --scale S] [-- TRAINER ARGS]

Each run is its own process (`python -m softmargin_triton.xmc.train`), so its peak memory is its own:
CUDA's max_memory_allocated on a GPU, the process's peak RSS on a CPU. Defaults: on CUDA an
amazon-670k-shaped synthetic dataset (670,091 labels) at a tenth of its points, on a CPU eurlex-4k at a
quarter. Writes xmc_compare.csv (long format: one row per loss implementation and quantity, with the device,
versions, commit and date) and XMC.md, the comparison table generated from it; each run's own log,
curves and summary (not its checkpoint) stay in OUT/<loss>/.
"""

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch
import triton
from timing import git_commit  # bench/timing.py, next to this script

LOSSES = {"fused": "softmargin-triton fused linear + MLSM", "torch": "eager F.linear + torch MLSM"}


def run_training(loss: str, out: Path, dataset: str, scale: float, extra: list[str]) -> dict:
    """One training run in its own process; returns its summary.json."""
    command = [sys.executable, "-m", "softmargin_triton.xmc.train", "--dataset", dataset]
    command += ["--scale", str(scale), "--loss", loss, "--out", str(out / loss), "--no-progress", *extra]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        return dict(error=(completed.stderr.strip().splitlines() or ["failed"])[-1])
    (out / loss / "checkpoint.pt").unlink()  # the comparison keeps the run's log, curves and summary
    return json.loads((out / loss / "summary.json").read_text())


def write_table(frame: pd.DataFrame, path: Path, command: str) -> None:
    """XMC.md: time per epoch, peak memory and test metrics per loss implementation, from the CSV."""
    first = frame.iloc[0]
    done = frame[frame.quantity != "error"]
    metrics = ["P@1", "P@5"]
    if len(done):
        shape = done.iloc[0]
        size = (
            f"{shape.num_labels:,.0f} labels, {shape.train_points:,.0f} training points, "
            f"{shape.epochs:.0f} epochs."
        )
    else:
        size = "every run failed."
    lines = [
        f"# Training with the fused loss vs eager torch: {first.dataset} (scale {first.scale})",
        "",
        f"{first.device}, torch {first.torch}, triton {first.triton}, commit {first.commit}, {first.date}; "
        f"{size}",
        "",
        f"Reproduce: `{command}`",
        "",
        "| loss | s / epoch | peak memory (MiB) | " + " | ".join(metrics) + " |",
        "|---|---|---|" + "---|" * len(metrics),
    ]
    for loss, rows in frame.groupby("loss", sort=False):
        values = dict(zip(rows.quantity, rows.value, strict=True))
        if "error" in values:
            lines.append(f"| {LOSSES[loss]} | failed: {rows.error.iloc[0]} |" + " |" * (1 + len(metrics)))
            continue
        cells = [f"{values['seconds_per_epoch']:.2f}", f"{values['peak_memory_mb']:.0f}"]
        cells += [f"{values[name]:.4f}" for name in metrics]
        lines.append(f"| {LOSSES[loss]} | " + " | ".join(cells) + " |")
    baseline = frame[frame.quantity == "baseline P@1"].value
    if len(baseline):
        lines += [
            "",
            f"Label-frequency baseline (the training split's most frequent labels for every point): P@1 "
            f"{baseline.iloc[0]:.4f}.",
        ]
    lines += ["", "Peak memory: CUDA's max_memory_allocated on a GPU, the run's peak RSS on a CPU."]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    cuda = torch.cuda.is_available()
    parser.add_argument("--dataset", default="amazon-670k" if cuda else "eurlex-4k")
    parser.add_argument("--scale", type=float, default=0.1 if cuda else 0.25)
    parser.add_argument("extra", nargs="*", help="arguments for the trainer, after --")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    common = dict(
        dataset=args.dataset,
        scale=args.scale,
        device=torch.cuda.get_device_name() if cuda else "cpu",
        torch=torch.__version__,
        triton=triton.__version__,
        commit=git_commit(),
        date=datetime.date.today().isoformat(),
    )
    rows = []
    for loss in LOSSES:
        summary = run_training(loss, args.out, args.dataset, args.scale, args.extra)
        if "error" in summary:
            rows.append(dict(common, loss=loss, quantity="error", value=float("nan"), error=summary["error"]))
            frame = pd.DataFrame(rows)
            frame.to_csv(args.out / "xmc_compare.csv", index=False)
            write_table(frame, args.out / "XMC.md", " ".join(["python", *sys.argv]))
            continue
        run = dict(
            common,
            loss=loss,
            num_labels=summary["num_labels"],
            train_points=summary["train_points"],
            epochs=summary["config"]["epochs"],
        )
        quantities = dict(
            seconds_per_epoch=summary["seconds_per_epoch"],
            peak_memory_mb=summary["peak_memory_mb"],
            **summary["metrics"],
            **{"baseline P@1": summary["label_frequency_baseline"]["P@1"]},
        )
        rows += [dict(run, quantity=name, value=value) for name, value in quantities.items()]
        # after each run: a call cut off during the second keeps the first
        frame = pd.DataFrame(rows)
        frame.to_csv(args.out / "xmc_compare.csv", index=False)
        write_table(frame, args.out / "XMC.md", " ".join(["python", *sys.argv]))
    print((args.out / "XMC.md").read_text())


if __name__ == "__main__":
    main()
