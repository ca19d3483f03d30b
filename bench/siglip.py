"""SigLIP's loss three ways, fwd+bwd over the batch size: time and peak memory → one long-format CSV.

    python bench/siglip.py [--out reports/siglip] [--batches ...] [--dim D] [--dtype bf16|fp16|fp32]
        [--blocks N] [--providers ...] [--samples N] [--threads N]

Providers, all computing -logsigmoid(z · (scale · img @ txtᵀ + bias)).sum() / B (open_clip's SigLipLoss,
z = +1 on the diagonal, -1 elsewhere) with gradients for the features, the scale and the bias:
  softmargin-triton  st.sigmoid_contrastive_loss: the fused linear loss over text chunks, no B×B logits
                     (on a CPU its plain-torch chunk loop: the ours_path column says which ran);
  torch-formula      the formula as written, its B×B logits and their gradient in memory at once;
  torch-chunked      the formula over --blocks blocks of texts, as open_clip sums a block per neighbour's
                     texts: each block's logits are formed and reduced in turn, but autograd keeps every
                     block's for the backward, so the peak stays O(B²).

Defaults: on a GPU B ∈ {4096, 16384, 32768}, D = 768, bf16; on a CPU B ∈ {512, 1024, 2048, 4096}, D = 128,
fp32. Our scratch is SOFTMARGIN_TRITON_SCRATCH_MB's (default 64 MiB; the extra_config column records it),
so ours holds up to that budget plus O(B·D) whatever B, and at small B can hold more than the formula.
Features are unit vectors (as SigLIP normalizes them), scale 10 and bias -10 (its initialization), all
leaves requiring gradients. Every case is timed by bench/timing.py's sample_ms (median, 20th and 80th
percentile of ≥ --samples calls); then a fresh process measures every case's peak memory in a call of its
own, so that nothing the timings left allocated, cached or resident counts. Each measurement follows an
untimed call (first-call setup).

Peak memory is the most the call holds beyond what existed when it started: on CUDA
torch.cuda.max_memory_allocated; on a CPU the process's peak resident set (VmHWM, reset through
/proc/self/clear_refs before the call, after malloc_trim has handed back the free pages earlier calls left)
above its resident set at the start, with malloc's mmap threshold fixed at 64 KiB so that tensors freed
within the call leave the resident set instead of being reused unseen (in that process only: there every
allocation maps and faults in fresh pages, which would slow the timed calls). Rows:
metric time (ms), memory (MB) and tflops (6·B²·D flop, the three GEMMs, per second), x_name "batch";
an error row (e.g. out of memory) where a case fails. Writes <out>/<device>.csv: cpu.csv, or the GPU's name
as bench/unpack.py spells it (h200.csv).
"""

import argparse
import json
import multiprocessing
import os
import sys
from collections.abc import Callable
from pathlib import Path

try:
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
    log,
    peak_extra_bytes,
    sample_ms,
)
from torch import Tensor

import softmargin_triton as st
from softmargin_triton.backend import use_triton_for

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def formula(image_features, text_features, logit_scale, logit_bias):
    """open_clip's formula: the (B, B) logits, labels 2·I - 1."""
    logits = logit_scale * image_features @ text_features.T + logit_bias
    labels = 2 * torch.eye(logits.shape[0], device=logits.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(labels * logits).sum() / image_features.shape[0]


def chunked_formula(image_features, text_features, logit_scale, logit_bias, blocks: int):
    """The formula summed over `blocks` blocks of texts, as open_clip sums over its neighbours' texts."""
    batch = image_features.shape[0]
    scaled = logit_scale * image_features
    rows = torch.arange(batch, device=image_features.device)
    block = -(-batch // blocks)
    total = 0
    for start in range(0, batch, block):
        logits = scaled @ text_features[start : start + block].T + logit_bias
        labels = torch.where(rows[:, None] == rows[None, start : start + block], 1.0, -1.0).to(logits.dtype)
        total = total + -F.logsigmoid(labels * logits).sum()
    return total / batch


def unit_features(batch: int, dim: int, dtype: torch.dtype, device: str) -> list[Tensor]:
    """The leaves of one case: unit image and text features (B, D) in `dtype`, float32 scale 10 and bias
    -10 (SigLIP's initialization), all requiring gradients; seeded by B."""
    generator = torch.Generator().manual_seed(batch)
    features = [F.normalize(torch.randn(batch, dim, generator=generator), dim=-1) for _ in range(2)]
    leaves = [t.to(device, dtype) for t in features] + [torch.tensor(v, device=device) for v in (10.0, -10.0)]
    return [leaf.requires_grad_(True) for leaf in leaves]


def measure(what: str, loss_fn: Callable, leaves: list[Tensor], device: str, samples: int):
    """Of fwd+bwd of loss_fn(*leaves): for what='time' the (median, 20th, 80th percentile) in ms, for
    'memory' the peak extra bytes. The first call (setup) is not measured; every call starts without
    .grad, as after optimizer.zero_grad()."""

    def clear_grads():
        for leaf in leaves:
            leaf.grad = None

    def step():
        loss_fn(*leaves).backward()

    try:
        step()
        clear_grads()
        if what == "time":
            return sample_ms(step, device, clear_grads, min_samples=samples)
        return peak_extra_bytes(step, device)
    finally:
        clear_grads()


def run_pass(what: str, args: argparse.Namespace, device: str) -> dict[tuple[int, str], object]:
    """Every case's measurement (see `measure`), by (B, provider); a failed case (e.g. the formula out of
    memory) gives its error message instead. The 'memory' pass on a CPU first fixes malloc's thresholds."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if what == "memory" and device == "cpu":
        fix_malloc_thresholds()
    providers = {
        "softmargin-triton": st.sigmoid_contrastive_loss,
        "torch-formula": formula,
        "torch-chunked": lambda *operands: chunked_formula(*operands, args.blocks),
    }
    results = {}
    for batch in args.batches:
        leaves = unit_features(batch, args.dim, DTYPES[args.dtype], device)
        for provider in args.providers:
            try:
                result = measure(what, providers[provider], leaves, device, args.samples)
                log(
                    f"B={batch} {provider}: "
                    + (f"{result[0]:.1f} ms" if what == "time" else f"{result / 2**20:.1f} MB")
                )
            except Exception as error:
                if device == "cuda":
                    torch.cuda.empty_cache()
                result = f"{what}: {type(error).__name__}: {error}"[:300]
                log(f"B={batch} {provider}: {result}")
            results[batch, provider] = result
    return results


def main() -> None:
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("reports/siglip"), help="folder for <device>.csv")
    parser.add_argument(
        "--batches", type=int, nargs="+", default=[4096, 16384, 32768] if cuda else [512, 1024, 2048, 4096]
    )
    parser.add_argument("--dim", type=int, default=768 if cuda else 128)
    parser.add_argument("--dtype", choices=DTYPES, default="bf16" if cuda else "fp32")
    parser.add_argument("--blocks", type=int, default=8, help="text blocks of the chunked formula")
    parser.add_argument(
        "--providers",
        nargs="+",
        choices=["softmargin-triton", "torch-formula", "torch-chunked"],
        default=["softmargin-triton", "torch-formula", "torch-chunked"],
    )
    parser.add_argument("--samples", type=int, default=10, help="timed calls per case at least")
    parser.add_argument(
        "--threads", type=int, help="torch's CPU threads (default: torch's own choice); the CSV records them"
    )
    args = parser.parse_args()

    times = run_pass("time", args, device)
    # The peaks in a fresh process: nothing the timings left allocated, cached or resident is counted.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        peaks = pool.apply(run_pass, ("memory", args, device))

    ours_path = "Triton kernels" if use_triton_for(torch.empty(0, device=device)) else "plain-torch fallback"
    memory_method = (
        "torch.cuda.max_memory_allocated above the call's start, in a fresh process"
        if cuda
        else "peak RSS above the call's start, in a fresh process (VmHWM reset via /proc/self/clear_refs, "
        "malloc_trim before, mmap threshold 64 KiB)"
    )
    common = {**environment(), "cpu": cpu_model(), "threads": torch.get_num_threads(), "ours_path": ours_path}
    rows = []
    for batch in args.batches:
        for provider in args.providers:
            config = dict(dim=args.dim, dtype=args.dtype, memory_method=memory_method)
            if provider == "torch-chunked":
                config["blocks"] = args.blocks
            if provider == "softmargin-triton":
                config["scratch_mb"] = os.environ.get(st.SCRATCH_ENV_VAR, "default")
            row = {
                **common,
                "kernel": "sigmoid_contrastive_loss",
                "provider": provider,
                "mode": "full",
                "x_name": "batch",
                "x_value": batch,
                "extra_config": json.dumps(config),
            }
            timed, peak = times[batch, provider], peaks[batch, provider]
            for result in (timed, peak):
                if isinstance(result, str):
                    rows.append({**row, "metric": "error", "unit": "", "error": result})
            if not isinstance(timed, str):
                t50, t20, t80 = timed
                flop = 6 * batch * batch * args.dim
                rows += [
                    {**row, "metric": "time", "unit": "ms", "y_50": t50, "y_20": t20, "y_80": t80},
                    {
                        **row,
                        "metric": "tflops",
                        "unit": "TFLOP/s",
                        **{f"y_{q}": flop / ms / 1e9 for q, ms in ((50, t50), (20, t80), (80, t20))},
                    },
                ]
            if not isinstance(peak, str):
                rows.append({**row, "metric": "memory", "unit": "MB", "y_50": peak / 2**20})
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{device_name(device)}.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    print(f"wrote {len(rows)} rows to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
