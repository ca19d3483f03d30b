"""Ceilings measured in the same run as the timings they bound: device copy bandwidth and the GEMM rates at
the fused linear loss's shapes.

    python bench/ceilings.py --out ceilings.csv [--copy-mib 2048] [--batch 8192] [--dim 768]
        [--labels 670091] [--dtype bf16]

copy_bandwidth: dst.copy_(src) over a buffer of --copy-mib MiB, bytes read plus written per second (GB/s),
    the roofline of a memory-bound loss.
gemm_logits, gemm_grad_input, gemm_grad_weight: the three GEMMs of the fused linear loss at its full shape,
    E·Wᵀ (B×D by D×L), G·W (B×L by L×D) and Gᵀ·E (L×B by B×D), in TFLOP/s, each 2·B·D·L flop, by torch
    (cuBLAS on a GPU); the B×L operand is one buffer, written by the first and read by the others.
gemm_3_floor: 6·B·D·L flop over the sum of the three median times, in TFLOP/s: the fused loss's floor
    (it cannot beat three GEMMs, and these write or read a B×L operand it never forms, so the floor is
    a little generous to it). Also as gemm_3_floor_ms, the floor's time.
The same three at the package's label-chunk width (the shapes its dE and dW GEMMs run at), kernel
"gemm_chunk". One row per quantity (long format as bench/sweep.py: metric, unit, y_50, y_20, y_80,
extra_config JSON, then the machine, versions, commit and time); bench/sweep.py --ceilings reads them.
"""

import argparse
import json
from pathlib import Path

import pandas as pd
import torch
from timing import environment, log, sample_ms  # bench/timing.py, beside this script

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def copy_bandwidth(mib: int, device: str) -> dict:
    src = torch.empty(mib * 2**20, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    t50, t20, t80 = sample_ms(lambda: dst.copy_(src), device)
    moved = 2 * src.numel() / 1e6  # MB per ms = GB/s
    return {
        "kernel": "copy",
        "metric": "copy_bandwidth",
        "unit": "GB/s",
        "y_50": moved / t50,
        "y_20": moved / t80,
        "y_80": moved / t20,
        "extra_config": json.dumps({"buffer_mib": mib}),
    }


def chunk_width(batch: int, labels: int, element_bytes: int) -> int:
    """Labels per chunk of the package's fused linear loss (its own rule where importable)."""
    try:
        from softmargin_triton.linear_soft_margin import chunk_labels

        return int(chunk_labels(batch, labels, element_bytes))
    except (ImportError, TypeError, ValueError):  # the rule's signature changed: its documented default
        return max(1, min(labels, 64 * 2**20 // (batch * element_bytes)))


def gemm_rows(kernel: str, batch: int, dim: int, labels: int, dtype_name: str, device: str) -> list[dict]:
    """The three GEMMs of the fused linear loss at (B, D, L) and their sum, the 3-GEMM floor."""
    dtype = DTYPES[dtype_name]
    embeddings = torch.randn(batch, dim, device=device, dtype=dtype)
    weight = torch.randn(labels, dim, device=device, dtype=dtype)
    logits = torch.empty(batch, labels, device=device, dtype=dtype)
    out_e, out_w = torch.empty_like(embeddings), torch.empty_like(weight)
    calls = {
        "gemm_logits": lambda: torch.mm(embeddings, weight.t(), out=logits),
        "gemm_grad_input": lambda: torch.mm(logits, weight, out=out_e),
        "gemm_grad_weight": lambda: torch.mm(logits.t(), embeddings, out=out_w),
    }
    flop = 2 * batch * dim * labels
    config = json.dumps({"batch": batch, "dim": dim, "labels": labels, "dtype": dtype_name})
    rows, medians = [], []
    for metric, call in calls.items():
        call()
        t50, t20, t80 = sample_ms(call, device)
        medians.append(t50)
        tflops = flop / 1e9  # TFLOP per ms
        rows.append(
            {
                "kernel": kernel,
                "metric": metric,
                "unit": "TFLOP/s",
                "y_50": tflops / t50,
                "y_20": tflops / t80,
                "y_80": tflops / t20,
                "extra_config": config,
            }
        )
    floor_ms = sum(medians)
    rows.append(
        {
            "kernel": kernel,
            "metric": "gemm_3_floor",
            "unit": "TFLOP/s",
            "y_50": 3 * flop / 1e9 / floor_ms,
            "extra_config": config,
        }
    )
    rows.append(
        {
            "kernel": kernel,
            "metric": "gemm_3_floor_ms",
            "unit": "ms",
            "y_50": floor_ms,
            "extra_config": config,
        }
    )
    return rows


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="CSV to write")
    parser.add_argument("--copy-mib", type=int, default=2048 if cuda else 32)
    parser.add_argument("--batch", type=int, default=8192 if cuda else 64)
    parser.add_argument("--dim", type=int, default=768 if cuda else 32)
    parser.add_argument("--labels", type=int, default=670_091 if cuda else 4096)
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    args = parser.parse_args()
    device = "cuda" if cuda else "cpu"
    common = environment()
    rows = []

    def write() -> None:  # after every measurement: a run cut off keeps what it measured
        args.out.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame([{**row, **common} for row in rows]).to_csv(args.out, index=False)

    rows.append(copy_bandwidth(args.copy_mib, device))
    write()
    log(f"copy bandwidth {rows[-1]['y_50']:.0f} GB/s over {args.copy_mib} MiB on {common['gpu_name']}")
    rows += gemm_rows("gemm", args.batch, args.dim, args.labels, args.dtype, device)
    write()
    log(f"3-GEMM floor at B={args.batch} D={args.dim} L={args.labels}: {rows[-2]['y_50']:.3g} TFLOP/s")
    chunk = chunk_width(args.batch, args.labels, DTYPES[args.dtype].itemsize)
    rows += gemm_rows("gemm_chunk", args.batch, args.dim, chunk, args.dtype, device)
    write()
    log(f"3 GEMMs at the chunk width {chunk}: {rows[-2]['y_50']:.3g} TFLOP/s; wrote {args.out}")


if __name__ == "__main__":
    main()
