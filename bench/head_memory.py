"""Peak memory of one training step of an extreme multi-label classifier head alone → one JSON line, or a
sweep over L in fresh processes → a long-format CSV and a plot.

    python bench/head_memory.py --labels L --dim D --batch B --head-optimizer {adamw,fused-sgd}
        [--loss {eager,fused}] [--dtype bf16|fp32] [--device cpu|cuda] [--momentum M] [--master-weights]
    python bench/head_memory.py --sweep --out DIR [--labels L ...] [--dim D] [--batch B] [--dtype ...]
    python bench/head_memory.py --report DIR/<device>.csv

Methods (loss + head optimizer):
  eager+adamw      F.linear, torch's multilabel_soft_margin_loss on the dense (B, L) target (densified inside
                   the step, as a data loader's sparse labels must be), torch.optim.AdamW;
  fused+adamw      our LinearMultiLabelSoftMarginLoss on SparseTargets, torch.optim.AdamW;
  fused+fused-sgd  the same loss with FusedClassifierSGD, which steps the classifier inside the backward
                   chunk by chunk: dW is never stored.
AdamW runs with torch's defaults (foreach on CUDA, its moments in the parameters' dtype), lr 1e-3; SGD lr 0.1,
momentum --momentum (default 0), bf16 rounded stochastically unless --master-weights.

The step: features (B, D) ~ N(0, 1) requiring grad (the encoder's dE is formed, as in training), Poisson(5.45)
positives per row from Zipf(1) label frequencies (bench/timing.py's sampler), the head initialized as
nn.Linear, seeded; loss, backward and optimizer step, the optimizer's state created by that first step.
Before it, the same step runs once on a head of min(L, 4096) labels of the same B, D, dtype and method in
the same process, unmeasured: Triton compiles and autotunes (its key is D and the dtypes), cuBLAS and oneDNN
set up, so that no one-time cost is counted.

Memory (bytes), above what the process held before the problem was built (`process_baseline_bytes`: on a
CPU the resident set of Python, torch and what the warm-up left; on CUDA the allocator's allocated bytes):
  held_before_step_bytes  weights, features and targets (and master weights), before the step;
  peak_bytes              the most held during the step: held_before_step_bytes + the step's own peak
                          above it (bench/timing.py's peak_extra_bytes: torch.cuda.max_memory_allocated on
                          CUDA; on a CPU the peak resident set, VmHWM, with malloc's mmap threshold at 64 KiB
                          so that freed tensors leave it);
  weights_bytes           the classifier's weight and bias; peak_minus_weights_bytes = peak - weights.
step_s is that step's wall time (on a CPU slowed by the mmap threshold: every large tensor faults in fresh
pages; torch runs --threads threads, default 1, as more wait on each other's unmaps). The scratch budget is
SOFTMARGIN_TRITON_SCRATCH_MB (default 64), recorded as scratch_mb.

--sweep runs each (method, L) in a fresh process (this script, single mode) in order of L and writes
<out>/<device>.csv (cpu.csv, or the GPU as bench/unpack.py spells it: h200.csv) after each, then the plot
<out>/<device>.png and a markdown table on stdout (--report redraws both from a CSV). A configuration whose
peak, extrapolated linearly in L from the method's last measured one, would exceed 85% of the memory
available (MemAvailable; free GPU memory) is skipped with that reason, as is every larger L of a method
that failed or was skipped; a run that fails (out of memory, killed, timed out) gives an error row with
its reason. CSV: one row per measurement (metric, unit, value), the configuration, reason, the machine,
versions, commit, date and the command of the run.
"""

import argparse
import gc
import json
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
except ImportError as error:
    raise ImportError(
        f"bench/ needs {error.name or error}, which the package's core install leaves out: "
        'pip install -e ".[bench]"'
    ) from error
import torch
import torch.nn.functional as F
from timing import (  # bench/timing.py, beside this script
    cpu_model,
    device_name,
    environment,
    fix_malloc_thresholds,
    held_bytes,
    log,
    peak_extra_bytes,
    zipf_padded,
)
from torch import nn

import softmargin_triton as st
from softmargin_triton.backend import use_triton_for
from softmargin_triton.fused_sgd import FusedClassifierSGD

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
METHODS = ("fused+fused-sgd", "fused+adamw", "eager+adamw")
POSITIVES_PER_ROW = 5.45  # Amazon-670K's average, as bench/sweep.py's sparse targets
WARMUP_LABELS = 4096
SWEEP_LABELS = [2**k for k in range(16, 23)]
MEMORY_SHARE = 0.85  # of the available memory a configuration may be predicted to use
METRICS = {  # JSON field → (CSV metric, unit)
    "peak_bytes": ("peak", "bytes"),
    "peak_minus_weights_bytes": ("peak_minus_weights", "bytes"),
    "weights_bytes": ("weights", "bytes"),
    "held_before_step_bytes": ("held_before_step", "bytes"),
    "process_baseline_bytes": ("process_baseline", "bytes"),
    "step_s": ("step_time", "s"),
}


# ---------------------------------------------------------------------------------------------------------
# One measurement (single mode)
# ---------------------------------------------------------------------------------------------------------


def head_step(args: argparse.Namespace, labels: int, seed: int) -> tuple[Callable[[], float], nn.Module]:
    """A head of `labels` labels with its data and optimizer, built on args.device: returns (step, head),
    step() running loss, backward and optimizer step once and returning the loss. Features (B, D) and
    weight (L, D) in args.dtype; targets SparseTargets (B, L), densified inside the step by eager."""
    device, dtype = args.device, DTYPES[args.dtype]
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the head's initialization
    head = st.LinearMultiLabelSoftMarginLoss(args.dim, labels, device=device, dtype=dtype)
    features = torch.randn(args.batch, args.dim, generator=generator).to(device, dtype).requires_grad_()
    counts = torch.poisson(torch.full((args.batch,), POSITIVES_PER_ROW), generator=generator).long()
    targets = st.SparseTargets.from_padded(zipf_padded(counts, labels, generator).to(device), labels)
    if args.head_optimizer == "fused-sgd":
        optimizer = FusedClassifierSGD(
            head, lr=0.1, momentum=args.momentum, master_weights=args.master_weights, seed=seed
        )
    else:
        optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        features.grad = None
        if args.loss == "eager":
            logits = F.linear(features, head.weight, head.bias)
            loss = F.multilabel_soft_margin_loss(logits, targets.to_dense(dtype))
        else:
            loss = head(features, targets)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step, head


def measure(args: argparse.Namespace) -> dict:
    """One measured step after an unmeasured warm-up step (module docstring): the JSON line's fields."""
    device = args.device
    torch.set_num_threads(args.threads)
    if device == "cpu":
        fix_malloc_thresholds()
    warm_labels = min(args.labels[0], WARMUP_LABELS)
    warm_step, _ = head_step(args, warm_labels, seed=1)
    warm_step()
    del warm_step
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()

    baseline = held_bytes(device)
    step, head = head_step(args, args.labels[0], seed=0)
    held_before = held_bytes(device) - baseline
    timed = {}

    def timed_step() -> None:
        start = time.perf_counter()
        timed["loss"] = step()  # .item() synchronizes
        timed["seconds"] = time.perf_counter() - start

    step_extra = peak_extra_bytes(timed_step, device)
    weights = sum(p.numel() * p.element_size() for p in head.parameters())  # weight and bias
    peak = held_before + step_extra
    scratch = os.environ.get(st.SCRATCH_ENV_VAR)
    ours = "Triton kernels" if use_triton_for(head.weight) else "plain-torch fallback"
    return {
        "method": f"{args.loss}+{args.head_optimizer}",
        "labels": args.labels[0],
        "dim": args.dim,
        "batch": args.batch,
        "dtype": args.dtype,
        "device": device,
        "peak_bytes": peak,
        "weights_bytes": weights,
        "peak_minus_weights_bytes": peak - weights,
        "held_before_step_bytes": held_before,
        "process_baseline_bytes": baseline,
        "step_s": timed["seconds"],
        "loss": timed["loss"],
        "weight_grad_stored": head.weight.grad is not None,
        "momentum": args.momentum,
        "master_weights": args.master_weights,
        "scratch_mb": float(scratch) if scratch else 64.0,
        "threads": torch.get_num_threads(),
        "ours_path": ours if args.loss == "fused" else "",
        "warmup": f"one unmeasured step at L={warm_labels}, same B, D, dtype and method",
        "memory_method": "torch.cuda.max_memory_allocated" if device == "cuda" else "peak RSS (VmHWM)",
        **environment(),
        "cpu": cpu_model(),
        "command": shlex.join(["python", "bench/head_memory.py", *sys.argv[1:]]),
    }


# ---------------------------------------------------------------------------------------------------------
# The sweep: each configuration in a fresh process
# ---------------------------------------------------------------------------------------------------------


def available_bytes(device: str) -> int:
    """Memory a new process could take now: free GPU memory, or the kernel's MemAvailable."""
    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    line = next(
        line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemAvailable")
    )
    return int(line.split()[1]) * 1024


def run_one(args: argparse.Namespace, method: str, labels: int) -> dict | str:
    """This script in single mode for one configuration, in a fresh process: its JSON line as a dict, or
    why it gave none."""
    loss, optimizer = method.split("+")
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        *("--labels", str(labels), "--dim", str(args.dim), "--batch", str(args.batch)),
        *("--loss", loss, "--head-optimizer", optimizer, "--dtype", args.dtype, "--device", args.device),
        *("--momentum", str(args.momentum), *(["--master-weights"] if args.master_weights else [])),
        *("--threads", str(args.threads)),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return f"timed out after {args.timeout} s"
    if done.returncode != 0:
        killed = " (SIGKILL: the kernel's OOM killer?)" if done.returncode == -9 else ""
        tail = done.stderr.strip().splitlines()[-1:] or [""]
        return f"exit {done.returncode}{killed}: {tail[0][:300]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def csv_rows(result: dict | str, method: str, labels: int, args: argparse.Namespace, sweep_command: str):
    """The long-format rows of one configuration: a row per metric, or one 'skipped'/'error' row."""
    config = {
        "method": method,
        "labels": labels,
        "dim": args.dim,
        "batch": args.batch,
        "dtype": args.dtype,
        "device": args.device,
        "sweep_command": sweep_command,
    }
    if isinstance(result, str):
        metric = "skipped" if result.startswith("skipped") else "error"
        return [{**config, "metric": metric, "unit": "", "value": math.nan, "reason": result}]
    fields = {k: v for k, v in result.items() if k not in METRICS and k not in config}
    return [
        {**config, "metric": metric, "unit": unit, "value": result[key], "reason": "", **fields}
        for key, (metric, unit) in METRICS.items()
    ]


def sweep(args: argparse.Namespace) -> Path:
    """Every (method, L) of the sweep in a fresh process; writes the CSV after each; returns its path."""
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{device_name(args.device)}.csv"
    sweep_command = shlex.join(["python", "bench/head_memory.py", *sys.argv[1:]])
    rows = []
    for method in args.methods:
        last = None  # (L, peak bytes) of the method's last measurement
        stop_reason = None
        for labels in sorted(args.labels):
            if stop_reason is None and last is not None:
                predicted = last[1] * labels / last[0]
                allowed = MEMORY_SHARE * available_bytes(args.device)
                if predicted > allowed:
                    stop_reason = (
                        f"skipped: predicted peak {predicted / 2**30:.1f} GiB (linear in L from "
                        f"{last[1] / 2**30:.2f} GiB at L={last[0]}) > {MEMORY_SHARE:.0%} of the "
                        f"{allowed / MEMORY_SHARE / 2**30:.1f} GiB available"
                    )
            if stop_reason is not None:
                result = stop_reason
            else:
                log(f"{method} L={labels} ...")
                result = run_one(args, method, labels)
                if isinstance(result, str):
                    stop_reason = f"skipped: L={labels} failed ({result[:120]})"
                else:
                    last = (labels, result["peak_bytes"] + result["process_baseline_bytes"])
            summary = (
                result
                if isinstance(result, str)
                else f"peak {result['peak_bytes'] / 2**20:.1f} MiB, - weights "
                f"{result['peak_minus_weights_bytes'] / 2**20:.1f} MiB, {result['step_s']:.1f} s"
            )
            log(f"{method} L={labels}: {summary}")
            rows += csv_rows(result, method, labels, args, sweep_command)
            pd.DataFrame(rows).to_csv(path, index=False)
    return path


# ---------------------------------------------------------------------------------------------------------
# Plot and table from a CSV
# ---------------------------------------------------------------------------------------------------------


def report(path: Path) -> str:
    """Draws <csv>.png (peak and peak − weights against L, a line per method) beside the CSV and returns
    the markdown table of both by L and method (MiB; 'skipped'/'error' where not measured)."""
    frame = pd.read_csv(path, dtype={"git_commit": str})
    measured = frame[frame["unit"] == "bytes"]
    first = measured.iloc[0]
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    panels = (("peak", "peak (MiB)"), ("peak_minus_weights", "peak − weights' own bytes (MiB)"))
    for axis, (metric, label) in zip(axes, panels, strict=True):
        for method, marker in zip(METHODS, "osD", strict=True):
            line = measured[(measured["method"] == method) & (measured["metric"] == metric)]
            if not line.empty:
                axis.plot(line["labels"], line["value"] / 2**20, marker=marker, label=method)
        axis.set(xscale="log", yscale="log", xlabel="labels L", ylabel=label)
        axis.grid(True, which="both", alpha=0.3)
    weights = measured[measured["metric"] == "weights"].drop_duplicates("labels")
    axes[0].plot(weights["labels"], weights["value"] / 2**20, "k--", label="weights' own bytes")
    axes[1].axhline(first["scratch_mb"], color="k", linestyle=":", label="scratch budget")
    for axis in axes:
        axis.legend()
    machine = f"{first['cpu']}, {first['threads']} torch threads" if first["device"] == "cpu" else "cuda"
    figure.suptitle(
        f"One head step, D={first['dim']}, B={first['batch']}, {first['dtype']}: {first['gpu_name']} "
        f"({machine}), {first['memory_method']}; torch {first['torch_version']}, "
        f"triton {first['triton_version']}, commit {first['git_commit']}",
        fontsize=8,
    )
    figure.tight_layout()
    figure.savefig(path.with_suffix(".png"), dpi=120)
    plt.close(figure)

    lines = [
        "| L | " + " | ".join(f"{m}: peak / − weights (MiB)" for m in METHODS) + " | weights (MiB) |",
        "|---:|" + "---:|" * (len(METHODS) + 1),
    ]
    for labels, group in frame.groupby("labels"):
        cells = []
        for method in METHODS:
            rows = group[group["method"] == method].set_index("metric")
            if "peak" in rows.index:
                cells.append(
                    f"{rows.at['peak', 'value'] / 2**20:,.0f} / "
                    f"{rows.at['peak_minus_weights', 'value'] / 2**20:,.1f}"
                )
            else:
                cells.append(rows.index[0] if not rows.empty else "")
        weight = group.loc[group["metric"] == "weights", "value"]
        lines.append(
            f"| {labels:,} | " + " | ".join(cells) + f" | {weight.iloc[0] / 2**20:,.0f} |"
            if not weight.empty
            else f"| {labels:,} | " + " | ".join(cells) + " | |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--labels", type=int, nargs="+", help="L (a list with --sweep: default 2^16 … 2^22)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--head-optimizer", choices=["adamw", "fused-sgd"], default="fused-sgd")
    parser.add_argument("--loss", choices=["eager", "fused"], default="fused")
    parser.add_argument("--dtype", choices=DTYPES, default="bf16")
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument(
        "--momentum", type=float, default=0.0, help="fused-sgd's momentum (an fp32 L×D buffer)"
    )
    parser.add_argument("--master-weights", action="store_true", help="fused-sgd with fp32 master weights")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch's CPU threads (default 1: with the mmap threshold every freed tensor is unmapped, which "
        "stalls the other threads' cores; 2 threads made a step 10× slower on a loaded 2-core machine)",
    )
    parser.add_argument("--sweep", action="store_true", help="every method over --labels, fresh processes")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="with --sweep")
    parser.add_argument("--out", type=Path, default=Path("reports/head_memory"), help="with --sweep")
    parser.add_argument(
        "--timeout", type=float, default=1800, help="seconds a configuration may run (--sweep)"
    )
    parser.add_argument("--report", type=Path, metavar="CSV", help="redraw the plot and table of a sweep CSV")
    args = parser.parse_args()
    if args.report:
        print(report(args.report))
        return
    if args.sweep:
        args.labels = args.labels or SWEEP_LABELS
        path = sweep(args)
        print(report(path))
        log(f"wrote {path} and {path.with_suffix('.png')}")
        return
    if not args.labels or len(args.labels) != 1:
        parser.error("one --labels L without --sweep")
    if args.loss == "eager" and args.head_optimizer == "fused-sgd":
        parser.error("fused-sgd steps inside the fused loss's backward: --loss fused")
    print(json.dumps(measure(args)), flush=True)


if __name__ == "__main__":
    main()
