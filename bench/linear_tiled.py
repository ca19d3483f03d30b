"""Design (a) of the fused linear + multi-label soft-margin loss: one tiled kernel with fp32 atomics.

A benchmark comparison point, not part of the package. DESIGN.md ("Fused linear + loss") sketches two
designs and issue 4 asks for the faster one to be built and the measured comparison recorded. The package
ships design (b): label chunks whose GEMM epilogue writes the gradient chunk G, then dE += G·W_c and
dW_c = Gᵀ·E as two plain cuBLAS GEMMs (kernels/linear_soft_margin.py). This module is design (a), so that
bench/sweep.py's linear sweep measures both ("softmargin-triton-tiled" against "softmargin-triton").

One program per (BLOCK_B rows × BLOCK_L labels) tile of the (B, L) logits, which are never stored:
1. logits = E[rows] · W[labels]ᵀ (+ bias) in registers, fp32 accumulation over D in BLOCK_D steps;
2. epilogue: the sparse targets of the tile (SparseTargets' compressed rows), the sigmoid-BCE loss, summed
   into one fp32 partial per program, and G = d loss / d logits in fp32;
3. a second pass over D in BLOCK_D steps: dE[rows] += G·W[labels] and dW[labels] += Gᵀ·E[rows], each
   block added with fp32 atomics into (B, D) and (L, D) buffers; db[labels] += G's column sums, also atomic.
The reduction's factor 1/(B·L) ('mean') is applied to the fp32 products, so G is rounded to E's dtype
unscaled (as design (b) stores it).

Expected cost against design (b), which a GPU run of the sweep measures:
- the same 3 GEMM-equivalents of flop (6·B·D·L), but E and W are each read twice per tile;
- fp32 atomics: every B-block adds into all of dW, so dW's read-modify-write traffic scales with
  B/BLOCK_B (at B=8192, BLOCK_B=128: 64 passes over 4·L·D bytes, e.g. 64 × 2 GB at L=670091, D=768),
  and every L-block adds into all of dE (L/BLOCK_L passes over 4·B·D bytes; dE usually stays in L2);
- memory: an fp32 dW of 4·L·D bytes besides the dtype's dW (design (b) writes dW_c straight into it),
  plus an fp32 dE of 4·B·D bytes;
- results are not bit-for-bit reproducible (atomic order).
The program order is grouped: GROUP consecutive B-blocks walk the label blocks together, so the programs in
flight share few W/dW tiles (L2 reuse) while the atomics on one dW tile come from at most GROUP programs.

Supported: 'mean' reduction, SparseTargets, bfloat16 or float32 input (fp16's gradients at 1/(B·L) would
underflow in the final cast; the package recomputes in the backward for fp16), CUDA tensors, or CPU
tensors under Triton's interpreter (TRITON_INTERPRET=1 before triton is imported).
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from softmargin_triton.backend import TRITON_INTERPRETED
from softmargin_triton.common import dot_precision
from softmargin_triton.kernels.sigmoid_bce import sigmoid_bce
from softmargin_triton.kernels.tiles import logits_tile, mark_positives, operand_block, positives_in_range
from softmargin_triton.soft_margin import soft_margin_scale_grad_
from softmargin_triton.sparse_targets import SparseTargets

__all__ = ["tiled_linear_multilabel_soft_margin_loss"]


def tiled_configs() -> list[triton.Config]:
    """Autotune space for an H100: (rows, labels, depth) tile shapes, group size, stages and warps. The
    program holds G (BLOCK_B × BLOCK_L) and two fp32 product tiles (BLOCK_B × BLOCK_D, BLOCK_L × BLOCK_D)
    at once in the second pass, so the 128-wide tiles take 8 warps."""
    return [
        triton.Config(
            {"BLOCK_B": b, "BLOCK_L": n, "BLOCK_D": d, "GROUP": 8}, num_stages=stages, num_warps=warps
        )
        for b, n, d, stages, warps in (
            (128, 128, 64, 3, 8),
            (128, 128, 128, 3, 8),
            (128, 64, 64, 4, 4),
            (64, 128, 64, 4, 4),
            (64, 64, 64, 4, 4),
            (64, 64, 128, 3, 4),
        )
    ]


# Where autotuning cannot benchmark (Triton's CPU interpreter); tl.dot needs blocks of at least 16.
HEURISTIC_CONFIG = {"BLOCK_B": 16, "BLOCK_L": 32, "BLOCK_D": 16, "GROUP": 2, "num_warps": 4}


@triton.jit
def linear_soft_margin_tiled_kernel(
    E,
    W,
    BIAS,
    INDPTR,
    INDICES,
    DE,
    DW,
    DB,
    PARTIAL,
    B,
    L,
    D,
    scale,
    stride_e_row,
    stride_e_col,
    stride_w_row,
    stride_w_col,
    stride_bias,
    BLOCK_B: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_D: tl.constexpr,
    GROUP: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
):
    """One (BLOCK_B rows × BLOCK_L labels) tile: logits, loss partial, and its share of dE, dW and db.

    E:       (B, D) input features, bfloat16/float32, any strides.
    W:       (L, D) classifier, E's dtype, any strides.
    BIAS:    (L,) E's dtype, any stride; read if HAS_BIAS.
    INDPTR:  (B+1,) int64 and INDICES (nnz,) int32/int64: each row's positive label ids, sorted.
    DE:      (B, D) contiguous float32, zero-filled: += scale · G·W[labels] (atomic).
    DW:      (L, D) contiguous float32, zero-filled: += scale · Gᵀ·E[rows] (atomic).
    DB:      (L,) contiguous float32, zero-filled: += scale · column sums of G (atomic); if HAS_BIAS.
    PARTIAL: (≥ number of programs,) float32, zero-filled: the tile's loss sum (unscaled) at the program's
             index.
    scale:   the reduction's factor, 1/(B·L) for 'mean'.
    Grid: (cdiv(B, BLOCK_B) · cdiv(L, BLOCK_L),), flattened so the label blocks are not held to the
    65535 limit of a grid's second dimension; GROUP consecutive B-blocks form a group whose programs run
    label block by label block.
    DOT_PRECISION: tl.dot's input precision for float32 inputs ("ieee", or "tf32" when torch allows it).
    DOT_IN_FP32: upcast the operands before tl.dot (only for Triton's interpreter, whose bf16 dot is wrong).
    """
    pid = tl.program_id(0)
    num_b = tl.cdiv(B, BLOCK_B)
    num_l = tl.cdiv(L, BLOCK_L)
    per_group = GROUP * num_l
    group_first_b = (pid // per_group) * GROUP
    group_size = tl.minimum(num_b - group_first_b, GROUP)
    in_group = pid % per_group
    pid_b = group_first_b + in_group % group_size
    pid_l = in_group // group_size

    # int64: row · stride and label · D pass 2^31 at XMC sizes
    rows = pid_b.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    labels = pid_l.to(tl.int64) * BLOCK_L + tl.arange(0, BLOCK_L)
    row_mask = rows < B
    col_mask = labels < L
    mask = row_mask[:, None] & col_mask[None, :]

    x = logits_tile(
        E + rows * stride_e_row,
        W + labels * stride_w_row,
        row_mask,
        col_mask,
        D,
        stride_e_col,
        stride_w_col,
        BLOCK_D,
        DOT_PRECISION,
        DOT_IN_FP32,
    )
    if HAS_BIAS:
        x += tl.load(BIAS + labels * stride_bias, mask=col_mask, other=0).to(tl.float32)[None, :]

    tile_start = pid_l.to(tl.int64) * BLOCK_L
    first, inside = positives_in_range(
        INDPTR, INDPTR + 1, INDICES, rows, row_mask, tile_start, tile_start + BLOCK_L
    )
    y = mark_positives(INDICES, first, inside, labels, BLOCK_B, BLOCK_L, tl.float32)
    loss, grad = sigmoid_bce(x, y, 1.0, True, False, True)
    # Padding rows and labels have logits 0, whose gradient 1/2 would otherwise reach db.
    loss = tl.where(mask, loss, 0.0)
    grad = tl.where(mask, grad, 0.0)
    tl.store(PARTIAL + pid, tl.sum(tl.sum(loss, axis=1), axis=0))
    if HAS_BIAS:
        tl.atomic_add(DB + labels, tl.sum(grad, axis=0) * scale, mask=col_mask, sem="relaxed")

    g = grad.to(E.dtype.element_ty)  # rounded as design (b)'s G buffer is
    if DOT_IN_FP32:
        g = g.to(tl.float32)
    for d0 in tl.range(0, D, BLOCK_D):
        ds = (d0 + tl.arange(0, BLOCK_D)).to(tl.int64)
        d_mask = ds < D
        e = operand_block(E + rows * stride_e_row, row_mask, ds, d_mask, stride_e_col, DOT_IN_FP32)
        w = operand_block(W + labels * stride_w_row, col_mask, ds, d_mask, stride_w_col, DOT_IN_FP32)
        de = tl.dot(g, w, input_precision=DOT_PRECISION)  # (BLOCK_B, BLOCK_D)
        dw = tl.dot(tl.trans(g), e, input_precision=DOT_PRECISION)  # (BLOCK_L, BLOCK_D)
        tl.atomic_add(
            DE + rows[:, None] * D + ds[None, :],
            de * scale,
            mask=row_mask[:, None] & d_mask[None, :],
            sem="relaxed",
        )
        tl.atomic_add(
            DW + labels[:, None] * D + ds[None, :],
            dw * scale,
            mask=col_mask[:, None] & d_mask[None, :],
            sem="relaxed",
        )


# Every config adds into DE, DW and DB and writes its own number of PARTIAL entries: zero them all after
# each config the autotuner benchmarks, or the chosen config's sums would start from its rivals'.
# Keyed by B as well as D: the atomics' contention on dW depends on the number of B-blocks.
linear_soft_margin_tiled = triton.autotune(
    tiled_configs(), key=["B", "D", "HAS_BIAS"], reset_to_zero=["DE", "DW", "DB", "PARTIAL"]
)(linear_soft_margin_tiled_kernel)


def _tiled_forward(
    input: Tensor, weight: Tensor, bias: Tensor | None, indptr: Tensor, indices: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """(loss (), fp32 dE (B, D), fp32 dW (L, D), fp32 db (L,) or None) of the 'mean' loss."""
    rows, dim = input.shape
    labels = weight.shape[0]
    device = input.device
    grad_input = torch.zeros((rows, dim), dtype=torch.float32, device=device)
    grad_weight = torch.zeros((labels, dim), dtype=torch.float32, device=device)
    grad_bias = torch.zeros(labels, dtype=torch.float32, device=device) if bias is not None else None
    # One loss partial per program: sized for the most programs a config that may run here launches.
    configs = [HEURISTIC_CONFIG] if TRITON_INTERPRETED else [config.kwargs for config in tiled_configs()]
    programs = max(triton.cdiv(rows, c["BLOCK_B"]) * triton.cdiv(labels, c["BLOCK_L"]) for c in configs)
    partial = torch.zeros(programs, dtype=torch.float32, device=device)
    scale = 1.0 / (rows * labels)
    args = (
        input,
        weight,
        input if bias is None else bias,  # placeholder pointers where HAS_BIAS switches them off
        indptr,
        indices,
        grad_input,
        grad_weight,
        grad_input if grad_bias is None else grad_bias,
        partial,
        rows,
        labels,
        dim,
        scale,
        *input.stride(),
        *weight.stride(),
        bias.stride(0) if bias is not None else 0,
    )
    constexprs = dict(
        HAS_BIAS=bias is not None, DOT_PRECISION=dot_precision(input.dtype), DOT_IN_FP32=TRITON_INTERPRETED
    )
    if TRITON_INTERPRETED:  # the interpreter cannot benchmark configs: the heuristic one
        config = HEURISTIC_CONFIG
        grid = (triton.cdiv(rows, config["BLOCK_B"]) * triton.cdiv(labels, config["BLOCK_L"]),)
        linear_soft_margin_tiled.fn[grid](*args, **constexprs, **config)
    else:
        grid = lambda meta: (triton.cdiv(rows, meta["BLOCK_B"]) * triton.cdiv(labels, meta["BLOCK_L"]),)
        linear_soft_margin_tiled[grid](*args, **constexprs)
    loss = partial.sum() * scale
    return loss, grad_input, grad_weight, grad_bias


class _TiledLinearSoftMarginFunction(torch.autograd.Function):
    """The forward runs the tiled kernel, which computes every gradient; the backward scales them by
    grad_output in place on the device (the package's scaling kernel: no bytes moved when it is 1)."""

    @staticmethod
    def forward(ctx, input, weight, bias, indptr, indices):
        loss, grad_input, grad_weight, grad_bias = _tiled_forward(input, weight, bias, indptr, indices)
        grads = [grad_input.to(input.dtype), grad_weight.to(weight.dtype)]
        grads.append(None if grad_bias is None else grad_bias.to(bias.dtype))
        ctx.save_for_backward(*grads)
        return loss.to(input.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        grads = ctx.saved_tensors
        for grad in grads:
            if grad is not None and grad.numel() > 0:
                soft_margin_scale_grad_(grad.view(-1, grad.shape[-1]), grad_loss, 1.0, True)
        return (*grads, None, None)


def tiled_linear_multilabel_soft_margin_loss(
    input: Tensor, weight: Tensor, target: SparseTargets, bias: Tensor | None = None
) -> Tensor:
    """`multilabel_soft_margin_loss(F.linear(input, weight, bias), target.to_dense())` ('mean') by design
    (a): one tiled kernel, gradients accumulated with fp32 atomics. Gradients flow to input, weight, bias.

    Args:
        input: (B, D) bfloat16/float32 features, on CUDA (or CPU under Triton's interpreter).
        weight: (L, D) classifier, input's dtype and device.
        target: SparseTargets of shape (B, L) on input's device (dense targets are not supported).
        bias: (L,) in input's dtype, or None.

    Returns:
        The mean loss, a 0-d tensor in input's dtype.
    """
    if not isinstance(target, SparseTargets):
        raise TypeError(
            f"target must be a SparseTargets (design (a) reads positives only), got {type(target)}"
        )
    if input.dim() != 2 or weight.dim() != 2 or input.shape[1] != weight.shape[1]:
        raise ValueError(
            f"input (B, D) and weight (L, D) disagree: input {tuple(input.shape)}, "
            f"weight {tuple(weight.shape)}"
        )
    rows, labels = input.shape[0], weight.shape[0]
    if tuple(target.shape) != (rows, labels):
        raise ValueError(
            f"target of shape {tuple(target.shape)} does not match the logits' ({rows}, {labels})"
        )
    if bias is not None and bias.shape != (labels,):
        raise ValueError(f"bias must have shape ({labels},), got {tuple(bias.shape)}")
    if rows == 0 or labels == 0:
        raise ValueError(f"empty problem: B={rows}, L={labels}")
    if input.dtype not in (torch.bfloat16, torch.float32):
        raise TypeError(f"input must be bfloat16 or float32, got {input.dtype}")
    if weight.dtype != input.dtype or (bias is not None and bias.dtype != input.dtype):
        raise TypeError(
            f"input, weight and bias must share one dtype, got {input.dtype}, {weight.dtype}"
            f"{'' if bias is None else f', {bias.dtype}'}"
        )
    for name, tensor in (("weight", weight), ("bias", bias), ("target", target)):
        if tensor is not None and tensor.device != input.device:
            raise ValueError(f"{name} is on {tensor.device}, input on {input.device}")
    expected = "cpu" if TRITON_INTERPRETED else "cuda"
    if input.device.type != expected:
        raise ValueError(
            f"the tiled kernel runs on {expected} tensors in this process "
            f"({'under' if TRITON_INTERPRETED else 'without'} Triton's interpreter), got {input.device}"
        )
    return _TiledLinearSoftMarginFunction.apply(input, weight, bias, target.indptr, target.indices)
