"""The XMC trainer against the linear one-vs-rest baseline, preset by preset, in one table.

    python bench/xmc_compare.py --out reports/xmc/cpu --threads 2 [--dataset D ... --scale S ...] [-- ARGS]

`--dataset` names presets and `--scale` their scales, pair by pair (one scale serves all). Defaults: on a
CPU eurlex-4k at a quarter of its points and amazoncat-13k at 20,000 training points (scale 0.01686),
methods linear and fused; on CUDA amazon-670k at a tenth, fused and torch. For each dataset the
`--methods` run in their own processes with `--threads` CPU threads: `linear`, the baseline
(bench/xmc_linear_baseline.py, its default settings), and the trainer (`python -m
softmargin_triton.xmc.train`, its defaults, then ARGS) as `fused` / `torch` (that `--loss`) or with the
classifier stepped inside the loss's backward: `fused-sgd`, `fused-row-adaptive` (its `--head-optimizer`),
`fused-row-adaptive-bf16` (a bfloat16 classifier, stochastic rounding) and `fused-row-adaptive-bf16-master`
(with fp32 master weights). Writes
xmc_compare.csv (long format: one row per run and quantity, with the machine, versions, commit and date;
rows of other (preset, scale, method, threads, OMP_WAIT_POLICY) from earlier calls stay) and XMC.md, the
table generated from it; the latest trainer run's log, curves and summary (not its checkpoint) stay in
OUT/<preset or directory name>/<method>/.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch
import triton
from timing import cpu_model, git_commit  # bench/timing.py, next to this script

BENCH = Path(__file__).resolve().parent
METHODS = {
    "linear": "linear one-vs-rest (bench/xmc_linear_baseline.py)",
    "fused": "trainer, fused linear + MLSM head",
    "torch": "trainer, eager F.linear + torch MLSM head",
    "fused-sgd": "trainer, fused head stepped by plain SGD in its backward",
    "fused-row-adaptive": "trainer, fused head stepped by the row-adaptive step in its backward",
    "fused-row-adaptive-bf16": "trainer, as above, bf16 classifier, stochastic rounding",
    "fused-row-adaptive-bf16-master": "trainer, as above, bf16 classifier, fp32 master weights",
}
# The trainer's arguments of each trainer method (its defaults otherwise).
TRAINER_ARGS = {
    "fused": ["--loss", "fused"],
    "torch": ["--loss", "torch"],
    "fused-sgd": ["--head-optimizer", "fused-sgd"],
    "fused-row-adaptive": ["--head-optimizer", "fused-row-adaptive"],
    "fused-row-adaptive-bf16": ["--head-optimizer", "fused-row-adaptive", "--head-dtype", "bfloat16"],
    "fused-row-adaptive-bf16-master": [
        "--head-optimizer",
        "fused-row-adaptive",
        "--head-dtype",
        "bfloat16",
        "--head-master-weights",
    ],
}
SHOWN = ("P@1", "P@3", "P@5", "PSP@5")
RUN_KEYS = ["dataset", "scale", "method", "threads", "omp_wait_policy"]  # one table row each


def _with_policy(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with an omp_wait_policy column ("" where unset; CSVs written before it lack it)."""
    if "omp_wait_policy" not in frame:
        frame = frame.assign(omp_wait_policy="")
    return frame.fillna({"omp_wait_policy": ""})


def _run(command: list[str]) -> str | None:
    """Run `command`; None when it succeeds, else its last line of error output."""
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode == 0:
        return None
    return (completed.stderr.strip().splitlines() or ["failed"])[-1]


def run_baseline(preset: str, scale: float, threads: int, out: Path) -> dict:
    """The baseline's record (epochs, seconds, metrics), or dict(error=...)."""
    csv = out / "linear.csv"
    csv.unlink(missing_ok=True)
    command = [
        sys.executable,
        str(BENCH / "xmc_linear_baseline.py"),
        "--dataset",
        preset,
        "--scale",
        str(scale),
    ]
    error = _run([*command, "--threads", str(threads), "--out", str(csv), "--no-progress"])
    if error is not None:
        return dict(error=error)
    record = pd.read_csv(csv).iloc[0].to_dict()
    return dict(record, settings=record["settings"])


def run_trainer(preset: str, scale: float, method: str, threads: int, out: Path, extra: list[str]) -> dict:
    """The trainer's record (epochs, seconds, metrics) from its summary.json, or dict(error=...)."""
    command = [
        sys.executable,
        "-m",
        "softmargin_triton.xmc.train",
        "--dataset",
        preset,
        "--scale",
        str(scale),
    ]
    command += [*TRAINER_ARGS[method], "--threads", str(threads), "--out", str(out), "--no-progress", *extra]
    error = _run(command)
    if error is not None:
        return dict(error=error)
    (out / "checkpoint.pt").unlink()  # the comparison keeps the run's log, curves and summary
    summary = json.loads((out / "summary.json").read_text())
    log = pd.read_csv(out / "log.csv")
    seconds = log[log.metric == "seconds"].value.sum()
    config = summary["config"]
    return dict(
        epochs=config["epochs"],
        settings=f"hidden {config['hidden']}, batch {config['batch_size']}, lr {config['lr']}, "
        f"embedding lr {config['embedding_lr']}, weight decay {config['weight_decay']}, "
        f"dropout {config['dropout']}, label smoothing {config['label_smoothing']:g}, "
        f"head optimizer {config['head_optimizer']} (lr {config['head_lr'] or 'default'})",
        train_points=summary["train_points"],
        seconds=seconds,
        seconds_per_epoch=summary["seconds_per_epoch"],
        **summary["metrics"],
    )


def write_table(frame: pd.DataFrame, path: Path, command: str) -> None:
    """XMC.md: per run and method, the epochs, time and test metrics, from the CSV."""
    first = frame.iloc[0]
    lines = [
        "# The XMC trainer against the linear one-vs-rest baseline",
        "",
        f"{first.cpu}, torch {first.torch}, triton {first.triton}, commits "
        f"{', '.join(frame.commit.astype(str).unique())}, {', '.join(frame.date.astype(str).unique())}.",
        "",
        f"Made by `{command}` (each row's commit and date are in xmc_compare.csv)",
        "",
        "| data | method | threads | epochs | s / epoch | s in all | " + " | ".join(SHOWN) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(SHOWN),
    ]
    frame = _with_policy(frame)
    for (dataset, scale, method, threads, policy), rows in frame.groupby(RUN_KEYS, sort=False):
        values = dict(zip(rows.quantity, rows.value, strict=True))
        data = f"{dataset} × {scale:g} ({rows.train_points.iloc[0]:,.0f} train)"
        if "error" in values:
            lines.append(
                f"| {data} | {METHODS[method]} | failed: {rows.error.iloc[0]} |" + " |" * (3 + len(SHOWN))
            )
            continue
        cells = [
            f"{threads}" + (f" ({policy.lower()})" if policy else ""),
            f"{values['epochs']:.0f}",
            f"{values['seconds_per_epoch']:.1f}",
            f"{values['seconds']:.0f}",
        ]
        cells += [f"{values[name]:.4f}" for name in SHOWN]
        lines.append(f"| {data} | {METHODS[method]} | " + " | ".join(cells) + " |")
    lines += ["", "Settings:", ""]
    for (dataset, method), rows in frame.groupby(["dataset", "method"], sort=False):
        lines.append(f"- {dataset}, {METHODS[method]}: {rows.settings.iloc[0]}")
    lines += [
        "",
        "Times leave out data generation. The baseline's count its training and its scoring of the test "
        "split (it scores label chunk by label chunk); the trainer's count its epochs only (not its "
        "evaluations), and its s / epoch leaves out the first epoch.",
    ]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    cuda = torch.cuda.is_available()
    parser.add_argument(
        "--dataset", nargs="+", default=["amazon-670k"] if cuda else ["eurlex-4k", "amazoncat-13k"]
    )
    parser.add_argument("--scale", nargs="+", type=float, default=[0.1] if cuda else [0.25, 0.01686])
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=tuple(METHODS),
        default=["fused", "torch"] if cuda else ["linear", "fused"],
        help="fused, torch: the trainer's --loss",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("extra", nargs="*", help="arguments for the trainer, after --")
    args = parser.parse_args()
    scales = args.scale * len(args.dataset) if len(args.scale) == 1 else args.scale
    if len(scales) != len(args.dataset):
        parser.error(f"{len(args.dataset)} datasets but {len(args.scale)} scales")
    args.out.mkdir(parents=True, exist_ok=True)
    common = dict(
        cpu=cpu_model(),
        threads=args.threads,
        # OpenMP's idle threads spin by default: on cores shared with other jobs, PASSIVE keeps 2 threads
        # from running many times slower than 1.
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", ""),
        device=torch.cuda.get_device_name() if cuda else "cpu",
        torch=torch.__version__,
        triton=triton.__version__,
        commit=git_commit(),
        date=datetime.date.today().isoformat(),
    )
    rows = []
    for preset, scale in zip(args.dataset, scales, strict=True):
        folder = args.out / Path(preset).name  # a directory's name, not its path
        folder.mkdir(parents=True, exist_ok=True)
        for method in args.methods:
            if method == "linear":
                record = run_baseline(preset, float(scale), args.threads, folder)
            else:
                record = run_trainer(preset, float(scale), method, args.threads, folder / method, args.extra)
            run = dict(common, dataset=preset, scale=float(scale), method=method)
            run.update(train_points=record.get("train_points"), settings=record.get("settings", ""))
            if "error" in record:
                rows.append(dict(run, quantity="error", value=float("nan"), error=record["error"]))
            else:
                quantities = [
                    "epochs",
                    "seconds",
                    "seconds_per_epoch",
                    *(name for name in record if "@" in name),
                ]
                rows += [dict(run, quantity=name, value=float(record[name])) for name in quantities]
            # After each run, so that a call cut off later keeps what finished. Rows of other (dataset,
            # scale, method), from earlier or concurrent calls, stay: the table can be filled run by run.
            csv = args.out / "xmc_compare.csv"
            ours = pd.DataFrame(rows)
            if csv.exists():
                earlier = _with_policy(pd.read_csv(csv, dtype={"commit": str}))
                keys = set(ours[RUN_KEYS].itertuples(index=False, name=None))
                mine = [key in keys for key in earlier[RUN_KEYS].itertuples(index=False, name=None)]
                ours = pd.concat([earlier[[not flag for flag in mine]], ours], ignore_index=True)
            ours.to_csv(csv, index=False)
            frame = ours
            write_table(frame, args.out / "XMC.md", " ".join(["python", *sys.argv]))
    print((args.out / "XMC.md").read_text())


if __name__ == "__main__":
    main()
