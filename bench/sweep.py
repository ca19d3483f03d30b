"""Benchmark sweep of the fused losses against PyTorch: a long-format CSV, one row per measurement.

    python bench/sweep.py [--out DIR] [--labels 1024 4096 ...] [--batch B] [--providers ...]

On a CUDA machine the defaults are B=4096, bf16 logits, L = 2^14 … 2^20; on CPU a small sweep of the
CPU paths (B=64, fp32, L up to 2^14) that finishes in about a minute. Plot with bench/plot.py.
"""

import argparse
import datetime
import json
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
import triton
from tqdm import tqdm

import softmargin_triton as st

PROVIDERS: dict[str, Callable] = {
    "softmargin-triton": st.multilabel_soft_margin_loss,
    "torch-mlsm": F.multilabel_soft_margin_loss,
    "torch-bce": F.binary_cross_entropy_with_logits,
    "torch-mlsm-compile": torch.compile(F.multilabel_soft_margin_loss),
    "torch-bce-compile": torch.compile(F.binary_cross_entropy_with_logits),
}
MODES = ("forward", "backward", "full")
QUANTILES = (0.5, 0.2, 0.8)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "uint8": torch.uint8}


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def time_ms(fn: Callable[[], object], device: str) -> tuple[float, float, float]:
    """Median, 20th and 80th percentile of fn's time in ms (CUDA: triton's do_bench, which flushes L2)."""
    if device == "cuda":
        return tuple(triton.testing.do_bench(fn, warmup=25, rep=100, quantiles=list(QUANTILES)))
    fn()  # warm-up
    samples = []
    deadline = time.perf_counter() + 0.5
    while len(samples) < 5 or (time.perf_counter() < deadline and len(samples) < 50):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    q = statistics.quantiles(samples, n=10)
    return statistics.median(samples), q[1], q[7]


def copy_bandwidth_gbs(device: str) -> float:
    """Device-to-device copy rate, bytes read plus written, in GB/s: the roofline for a memory-bound loss."""
    src = torch.empty(256 * 2**20 if device == "cuda" else 32 * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms, _, _ = time_ms(lambda: dst.copy_(src), device)
    return 2 * src.numel() / ms / 1e6


def measure(provider: str, mode: str, batch: int, labels: int, dtype, target_dtype, device: str):
    """(time quantiles in ms, peak extra memory in bytes or None) of one provider on one shape."""
    loss_fn = PROVIDERS[provider]
    x = torch.randn(batch, labels, device=device, dtype=dtype).requires_grad_(True)
    y = (torch.rand(batch, labels, device=device) < 0.01).to(target_dtype)
    if not provider.startswith("softmargin") and target_dtype == torch.uint8:
        y = y.to(dtype)  # torch's losses take float targets only; the conversion is timed outside

    def forward():
        return loss_fn(x, y)

    def full():
        x.grad = None  # a fresh .grad each step, as after optimizer.zero_grad(): no accumulation pass
        forward().backward()

    if mode == "backward":
        # Our backward scales the forward's saved gradient in place, and compiled graphs donate their
        # buffers: neither survives a repeated backward over one graph, so every provider's backward
        # is timed the same way, as full minus forward.
        full_ms, forward_ms = time_ms(full, device), time_ms(forward, device)
        return tuple(max(a - b, 0.0) for a, b in zip(full_ms, forward_ms, strict=True)), None
    fn = full if mode == "full" else forward
    forward().backward()  # compile and autotune outside the timed region
    x.grad = None
    peak = None
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    return time_ms(fn, device), peak


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("bench-out"), help="folder for dense_sweep.csv")
    parser.add_argument("--batch", type=int, default=4096 if cuda else 64)
    default_labels = [2**k for k in range(14, 21)] if cuda else [2**10, 2**12, 2**14]
    parser.add_argument("--labels", type=int, nargs="+", default=default_labels)
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16" if cuda else "fp32")
    parser.add_argument(
        "--targets", nargs="+", choices=list(DTYPES), default=["bf16", "uint8"] if cuda else ["fp32", "uint8"]
    )
    parser.add_argument("--providers", nargs="+", choices=list(PROVIDERS), default=list(PROVIDERS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    args = parser.parse_args()

    device = "cuda" if cuda else "cpu"
    dtype = DTYPES[args.dtype]
    common = {
        "kernel": "multilabel_soft_margin_loss",
        "x_name": "labels",
        "gpu_name": torch.cuda.get_device_name() if cuda else "cpu",
        "torch_version": torch.__version__,
        "triton_version": triton.__version__,
        "package_version": st.__version__,
        "git_commit": git_commit(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    copy_gbs = copy_bandwidth_gbs(device)
    rows = []
    cases = [
        (t, labels, provider, mode)
        for t in args.targets
        for labels in args.labels
        for provider in args.providers
        for mode in args.modes
    ]
    for target_name, labels, provider, mode in tqdm(cases, desc="sweep", unit="case"):
        config = {"batch": args.batch, "dtype": args.dtype, "target_dtype": target_name, "reduction": "mean"}
        row = {
            **common,
            "provider": provider,
            "mode": mode,
            "x_value": labels,
            "extra_config": json.dumps(config),
        }
        try:
            (t50, t20, t80), peak = measure(
                provider, mode, args.batch, labels, dtype, DTYPES[target_name], device
            )
        except Exception as error:  # OOM, compile failure: recorded, and the sweep goes on
            rows.append(
                {**row, "metric": "error", "unit": "", "error": f"{type(error).__name__}: {error}"[:300]}
            )
            if cuda:
                torch.cuda.empty_cache()
            continue
        rows.append({**row, "metric": "time", "unit": "ms", "y_50": t50, "y_20": t20, "y_80": t80})
        if peak is not None:
            rows.append({**row, "metric": "memory", "unit": "MB", "y_50": peak / 2**20})
        if mode == "full":
            # Fused minimum: read logits and targets once, write the gradient once.
            element_bytes = 2 * dtype.itemsize + DTYPES[target_name].itemsize
            gbs = [args.batch * labels * element_bytes / t / 1e6 for t in (t50, t80, t20)]
            rows.append(
                {**row, "metric": "bandwidth", "unit": "GB/s", "y_50": gbs[0], "y_20": gbs[1], "y_80": gbs[2]}
            )
            percent = [100 * g / copy_gbs for g in gbs]
            rows.append(
                {
                    **row,
                    "metric": "roofline",
                    "unit": "% copy",
                    "y_50": percent[0],
                    "y_20": percent[1],
                    "y_80": percent[2],
                }
            )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "dense_sweep.csv"
    frame = pd.DataFrame(rows)
    frame["copy_bandwidth_gbs"] = copy_gbs
    frame.to_csv(path, index=False)
    print(f"wrote {len(frame)} rows to {path} (copy bandwidth {copy_gbs:.0f} GB/s on {common['gpu_name']})")


if __name__ == "__main__":
    main()
