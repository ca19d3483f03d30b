"""Benchmark sweeps of the fused losses against PyTorch: long-format CSVs, one row per measurement.

    python bench/sweep.py [--out DIR] [--sweeps dense sparse] [--labels ...] [--batch B] [--providers ...]

dense:  multilabel_soft_margin_loss over a dense (B, L) target, per target dtype.
sparse: the same loss with Zipf-distributed positive labels (~5.45 per row, as Amazon-670K): ours with
        SparseTargets, against ours and torch's losses on the dense equivalent.
linear: linear_multilabel_soft_margin_loss (sparse targets) against eager and compiled F.linear + MLSM
        and our chunked plain-torch loop, per (B, D), with the 3-GEMM floor at a GEMM rate measured here.
On a CUDA machine the defaults are B=4096, bf16, L = 2^10 … 2^20 (dense), L ∈ {131072, 670091, 2^21}
(sparse, linear; linear at B ∈ {1024, 8192}, D ∈ {256, 768}); on CPU a small sweep of the CPU paths
(B=64, fp32, L up to 2^14) that takes about a minute.
Each sweep writes <sweep>_sweep.csv; plot with bench/plot.py.
"""

import argparse
import datetime
import functools
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
SWEEPS = ("dense", "sparse", "linear")
SPARSE_DEFAULT_PROVIDERS = ["softmargin-triton", "torch-mlsm", "torch-bce"]
MODES = ("forward", "backward", "full")
QUANTILES = (0.5, 0.2, 0.8)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "uint8": torch.uint8}
POSITIVES_PER_ROW = 5.45  # Amazon-670K's average


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


def zipf_targets(batch: int, labels: int, device: str) -> st.SparseTargets:
    """Poisson(5.45) positives per row from Zipf(1) label frequencies (repeats within a row collapse)."""
    counts = torch.poisson(torch.full((batch,), POSITIVES_PER_ROW, device=device)).long()
    width = max(int(counts.max()), 1)
    frequency = 1.0 / torch.arange(1, labels + 1, dtype=torch.float32, device=device)
    padded = torch.multinomial(frequency, batch * width, replacement=True).view(batch, width)
    padded[torch.arange(width, device=device) >= counts[:, None]] = -1
    return st.SparseTargets.from_padded(padded, labels)


def target_bytes(target: torch.Tensor | st.SparseTargets) -> int:
    if isinstance(target, st.SparseTargets):
        return target.indptr.nbytes + target.indices.nbytes
    return target.nbytes


def measure(forward: Callable[[], torch.Tensor], leaves: list[torch.Tensor], mode: str, device: str):
    """(time quantiles in ms, peak extra memory in bytes or None) of one loss on one problem; `leaves` are
    the tensors that receive gradients."""

    def clear_grads():
        for leaf in leaves:
            leaf.grad = None  # a fresh .grad each step, as after optimizer.zero_grad(): no accumulation

    def full():
        clear_grads()
        forward().backward()

    if mode == "backward":
        # Our backward scales the forward's saved gradient in place, and compiled graphs donate their
        # buffers: neither survives a repeated backward over one graph, so every provider's backward
        # is timed the same way, as full minus forward.
        full_ms, forward_ms = time_ms(full, device), time_ms(forward, device)
        return tuple(max(a - b, 0.0) for a, b in zip(full_ms, forward_ms, strict=True)), None
    fn = full if mode == "full" else forward
    forward().backward()  # compile and autotune outside the timed region
    clear_grads()
    peak = None
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    return time_ms(fn, device), peak


def cases(sweep: str, targets: list[str], providers: list[str], dtype: str) -> list[tuple[str, str]]:
    """(target, provider) pairs of a sweep. Sparse sweep: ours on SparseTargets and on each dense target
    dtype, torch's losses on the dense target in the logits' dtype (they take float targets only)."""
    if sweep == "dense":
        return [(target, provider) for target in targets for provider in providers]
    ours = "softmargin-triton"
    pairs = [("sparse", ours), *((target, ours) for target in targets)] if ours in providers else []
    return pairs + [(dtype, provider) for provider in providers if provider != ours]


def result_rows(
    row: dict, measured, target_mb: float, element_bytes: float, elements: int, copy_gbs: float
) -> list[dict]:
    (t50, t20, t80), peak = measured
    rows = [{**row, "metric": "time", "unit": "ms", "y_50": t50, "y_20": t20, "y_80": t80}]
    if peak is not None:
        rows.append({**row, "metric": "memory", "unit": "MB", "y_50": peak / 2**20})
    if row["mode"] == "full":
        rows.append({**row, "metric": "target_memory", "unit": "MB", "y_50": target_mb})
        gbs = [elements * element_bytes / t / 1e6 for t in (t50, t80, t20)]
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
    return rows


def run_sweep(sweep: str, args, device: str, common: dict, copy_gbs: float) -> pd.DataFrame:
    dtype = DTYPES[args.dtype]
    default = SPARSE_DEFAULT_PROVIDERS if sweep == "sparse" else list(PROVIDERS)
    providers = [p for p in args.providers if p in PROVIDERS] if args.providers else default
    labels_list = args.labels or default_labels(sweep, device)
    pairs = cases(sweep, args.targets, providers, args.dtype)
    rows = []
    progress = tqdm(total=len(labels_list) * len(pairs) * len(args.modes), desc=f"{sweep} sweep", unit="case")
    for labels in labels_list:
        x = torch.randn(args.batch, labels, device=device, dtype=dtype).requires_grad_(True)
        sparse = zipf_targets(args.batch, labels, device) if sweep == "sparse" else None
        binary = sparse.to_dense(torch.bool) if sparse is not None else None
        for target_name, provider in pairs:
            if target_name == "sparse":
                target = sparse
            else:
                if binary is None:
                    dense = torch.rand(args.batch, labels, device=device) < 0.01
                else:
                    dense = binary
                # torch's losses take float targets only; the conversion happens outside the timed region
                torch_target = provider.startswith("torch") and target_name == "uint8"
                target = dense.to(dtype if torch_target else DTYPES[target_name])
            # Fused minimum: read the logits and the target once, write the gradient once; for the sparse
            # sweep's problem the positives are the target, O(nnz) bytes, whatever a provider is given.
            target_element_bytes = 0 if sweep == "sparse" else DTYPES[target_name].itemsize
            element_bytes = 2 * dtype.itemsize + target_element_bytes
            config = {
                "batch": args.batch,
                "dtype": args.dtype,
                "target_dtype": target_name,
                "reduction": "mean",
                "min_bytes_per_element": element_bytes,
            }
            if sparse is not None:
                config["positives_per_row"] = sparse.nnz / args.batch
            for mode in args.modes:
                row = {
                    **common,
                    "kernel": f"multilabel_soft_margin_loss_{sweep}",
                    "provider": provider,
                    "mode": mode,
                    "x_value": labels,
                    "extra_config": json.dumps(config),
                }
                try:
                    measured = measure(functools.partial(PROVIDERS[provider], x, target), [x], mode, device)
                    rows += result_rows(
                        row,
                        measured,
                        target_bytes(target) / 2**20,
                        element_bytes,
                        args.batch * labels,
                        copy_gbs,
                    )
                except Exception as error:  # OOM, compile failure: recorded, and the sweep goes on
                    message = f"{type(error).__name__}: {error}"[:300]
                    rows.append({**row, "metric": "error", "unit": "", "error": message})
                    x.grad = None
                    if device == "cuda":
                        torch.cuda.empty_cache()
                progress.update()
            del target
        del x, sparse, binary
    progress.close()
    frame = pd.DataFrame(rows)
    frame["copy_bandwidth_gbs"] = copy_gbs
    return frame


def _torch_linear_mlsm(input, weight, target):
    return F.multilabel_soft_margin_loss(F.linear(input, weight), target)


def _chunked_torch_loop(input, weight, target):
    with st.use_backend("torch"):  # our label-chunked fallback: plain torch, never the B×L logits
        return st.linear_multilabel_soft_margin_loss(input, weight, target)


# Fused linear + loss providers; torch's take the dense target, ours and the chunked loop SparseTargets.
LINEAR_PROVIDERS: dict[str, Callable] = {
    "softmargin-triton": st.linear_multilabel_soft_margin_loss,
    "torch-chunked": _chunked_torch_loop,
    "torch-linear-mlsm": _torch_linear_mlsm,
    "torch-linear-mlsm-compile": torch.compile(_torch_linear_mlsm),
}


def gemm_tflops(batch: int, dim: int, dtype: torch.dtype, device: str) -> float:
    """Measured rate of a (batch, dim) × (dim, 16384) GEMM in TFLOP/s: the roofline of the linear loss."""
    a = torch.randn(batch, dim, device=device, dtype=dtype)
    b = torch.randn(dim, 16384, device=device, dtype=dtype)
    ms, _, _ = time_ms(lambda: a @ b, device)
    return 2 * batch * dim * 16384 / ms / 1e9


def run_linear_sweep(args, device: str, common: dict) -> pd.DataFrame:
    """Fused linear + MLSM, fwd+bwd over labels, per (batch, dim): time, memory, TFLOP/s and % of the
    3-GEMM floor (6·B·D·L flop at the GEMM rate measured here)."""
    dtype = DTYPES[args.dtype]
    labels_list = args.labels or default_labels("linear", device)
    providers = (
        [p for p in args.providers if p in LINEAR_PROVIDERS] if args.providers else list(LINEAR_PROVIDERS)
    )
    shapes = [(batch, dim) for batch in args.linear_batches for dim in args.dims]
    rows = []
    progress = tqdm(
        total=len(shapes) * len(labels_list) * len(providers) * len(args.modes), desc="linear sweep"
    )
    for batch, dim in shapes:
        rate = gemm_tflops(batch, dim, dtype, device)
        for labels in labels_list:
            input = torch.randn(batch, dim, device=device, dtype=dtype).requires_grad_(True)
            weight = (torch.randn(labels, dim, device=device, dtype=dtype) / dim**0.5).requires_grad_(True)
            sparse = zipf_targets(batch, labels, device)
            config = {
                "batch": batch,
                "dim": dim,
                "dtype": args.dtype,
                "reduction": "mean",
                "gemm_tflops": rate,
            }
            config["positives_per_row"] = sparse.nnz / batch
            for provider in providers:
                dense = provider.startswith("torch-linear")
                target = sparse.to_dense(dtype) if dense else sparse
                config["target_dtype"] = args.dtype if dense else "sparse"
                for mode in args.modes:
                    row = {
                        **common,
                        "kernel": "linear_multilabel_soft_margin_loss",
                        "provider": provider,
                        "mode": mode,
                        "x_value": labels,
                        "extra_config": json.dumps(config),
                    }
                    forward = functools.partial(LINEAR_PROVIDERS[provider], input, weight, target)
                    try:
                        (t50, t20, t80), peak = measure(forward, [input, weight], mode, device)
                    except Exception as error:  # OOM, compile failure: recorded, and the sweep goes on
                        rows.append(
                            {
                                **row,
                                "metric": "error",
                                "unit": "",
                                "error": f"{type(error).__name__}: {error}"[:300],
                            }
                        )
                        input.grad = weight.grad = None
                        if device == "cuda":
                            torch.cuda.empty_cache()
                        progress.update()
                        continue
                    rows.append(
                        {**row, "metric": "time", "unit": "ms", "y_50": t50, "y_20": t20, "y_80": t80}
                    )
                    if peak is not None:
                        rows.append({**row, "metric": "memory", "unit": "MB", "y_50": peak / 2**20})
                    if mode == "full":
                        flop = 6 * batch * dim * labels
                        tflops = [flop / t / 1e9 for t in (t50, t80, t20)]
                        rows.append(
                            {
                                **row,
                                "metric": "tflops",
                                "unit": "TFLOP/s",
                                "y_50": tflops[0],
                                "y_20": tflops[1],
                                "y_80": tflops[2],
                            }
                        )
                        percent = [100 * t / rate for t in tflops]
                        rows.append(
                            {
                                **row,
                                "metric": "gemm_roofline",
                                "unit": "% 3-GEMM floor",
                                "y_50": percent[0],
                                "y_20": percent[1],
                                "y_80": percent[2],
                            }
                        )
                    progress.update()
                del target
            del input, weight, sparse
    progress.close()
    return pd.DataFrame(rows)


def default_labels(sweep: str, device: str) -> list[int]:
    if device != "cuda":
        return [2**10, 2**12, 2**14]
    return [2**k for k in range(10, 21)] if sweep == "dense" else [131072, 670091, 2**21]


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("bench-out"), help="folder for the CSVs")
    parser.add_argument("--sweeps", nargs="+", choices=SWEEPS, default=list(SWEEPS))
    parser.add_argument("--batch", type=int, default=4096 if cuda else 64)
    parser.add_argument("--labels", type=int, nargs="+", help="label counts (default: per sweep and device)")
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16" if cuda else "fp32")
    parser.add_argument(
        "--targets",
        nargs="+",
        choices=list(DTYPES),
        default=["bf16", "uint8"] if cuda else ["fp32", "uint8"],
        help="dense target dtypes",
    )
    parser.add_argument(
        "--providers",
        nargs="+",
        choices=sorted(set(PROVIDERS) | set(LINEAR_PROVIDERS)),
        help="default: all for the dense and linear sweeps; ours and eager torch for the sparse one",
    )
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument(
        "--linear-batches", type=int, nargs="+", default=[1024, 8192] if cuda else [64], help="linear sweep B"
    )
    parser.add_argument(
        "--dims", type=int, nargs="+", default=[256, 768] if cuda else [32], help="linear sweep D"
    )
    args = parser.parse_args()

    device = "cuda" if cuda else "cpu"
    common = {
        "x_name": "labels",
        "gpu_name": torch.cuda.get_device_name() if cuda else "cpu",
        "torch_version": torch.__version__,
        "triton_version": triton.__version__,
        "package_version": st.__version__,
        "git_commit": git_commit(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    copy_gbs = copy_bandwidth_gbs(device)
    args.out.mkdir(parents=True, exist_ok=True)
    for sweep in args.sweeps:
        if sweep == "linear":
            frame = run_linear_sweep(args, device, common)
        else:
            frame = run_sweep(sweep, args, device, common, copy_gbs)
        path = args.out / f"{sweep}_sweep.csv"
        frame.to_csv(path, index=False)
        print(
            f"wrote {len(frame)} rows to {path} (copy bandwidth {copy_gbs:.0f} GB/s on {common['gpu_name']})"
        )


if __name__ == "__main__":
    main()
