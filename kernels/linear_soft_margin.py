"""Fused linear + multi-label soft-margin loss, one label chunk at a time, the logits never stored.

For a chunk of labels [label_start, label_start + L_c) one kernel forms the logits tile by tile in
registers (E · W_cᵀ + b, fp32 accumulation on tensor cores) and, in its epilogue, writes the gradient of the
elementwise loss with respect to those logits, G (B, L_c), and one fp32 loss partial per (row, tile). The
host then runs dE += G · W_c and dW_c = Gᵀ · E as plain GEMMs and reuses the G buffer for the next chunk.

Sparse targets need no target tile: the epilogue first treats every label of the tile as a negative (loss
softplus(x), gradient σ(x)), then corrects the tile's few positives one by one (each row's positives in
range, from the compressed rows), their loss and gradient computed in fp32 from the tile's own logits.
Holding no 0/1 tile keeps a 128×128 tile's epilogue in registers (bench/kernel_resources.py).

Label smoothing ε moves every target y to y·(1 − ε) + ε/2 (one FMA on the loaded dense target); with sparse
targets the first pass takes every label at the constant target ε/2 and the positives' correction at
1 − ε/2. ε = 0 compiles to the kernel without either (the SMOOTH flag).
"""

import triton
import triton.language as tl

from .sigmoid_bce import negative_bce, positive_bce, sigmoid_bce
from .tiles import logits_tile, positives_in_range


def chunk_configs() -> list[triton.Config]:
    """Autotune space: (rows, labels, reduction depth) tile shapes, pipeline stages and warps.

    Sized with bench/kernel_resources.py (its figures: reports/resources/): the epilogue holds the fp32
    logits and loss tiles while it corrects the positives, so a 128×128 tile takes 8 warps and the
    256-wide tiles 16."""
    return [
        triton.Config({"BLOCK_B": b, "BLOCK_L": n, "BLOCK_D": d}, num_stages=stages, num_warps=warps)
        for b, n, d, stages, warps in (
            (128, 128, 64, 3, 8),
            (128, 128, 64, 4, 8),
            (128, 128, 128, 3, 8),
            (128, 256, 64, 3, 16),
            (256, 128, 64, 3, 16),
            (64, 128, 64, 4, 4),
            (128, 64, 64, 4, 4),
            (64, 64, 32, 4, 4),
        )
    ]


# Where autotuning cannot benchmark (Triton's CPU interpreter); tl.dot needs blocks of at least 16.
HEURISTIC_CONFIG = {"BLOCK_B": 16, "BLOCK_L": 32, "BLOCK_D": 16, "num_warps": 4}

# The partial-sum buffer has a column per BLOCK_L labels of the narrowest config, zero-filled, so the host
# sizes it without knowing which config the autotuner picks.
MIN_BLOCK_L = min([HEURISTIC_CONFIG["BLOCK_L"]] + [config.kwargs["BLOCK_L"] for config in chunk_configs()])


@triton.jit
def linear_soft_margin_chunk_kernel(
    # pointers (None where absent)
    E,
    W,
    BIAS,
    Y,
    POSITIVES_START,
    POSITIVES_STOP,
    INDICES,
    LW,
    PW,
    ROW_SCALE,
    G,
    PARTIAL,
    # sizes and offsets
    B,
    D,
    chunk_labels,
    label_start,
    label_id_offset,
    # scalars
    label_smoothing,
    # strides (0 for an absent tensor)
    stride_e_row,
    stride_e_col,
    stride_w_row,
    stride_w_col,
    stride_bias,
    stride_y_row,
    stride_y_col,
    stride_lw_row,
    stride_lw_col,
    stride_pw_row,
    stride_pw_col,
    stride_g_row,
    stride_partial_row,
    # meta-parameters: the host's
    DOT_PRECISION: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    PRECISE: tl.constexpr,
    # the autotuner's
    BLOCK_B: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_D: tl.constexpr,
    # derived by _chunk_heuristics
    HAS_BIAS: tl.constexpr,
    SPARSE_TARGET: tl.constexpr,
    HAS_LABEL_WEIGHT: tl.constexpr,
    HAS_POS_WEIGHT: tl.constexpr,
    HAS_ROW_SCALE: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    SMOOTH: tl.constexpr,
):
    """One (BLOCK_B rows × BLOCK_L labels) tile of a label chunk: logits, loss partials, gradient.

    E:       (B, D) input features, float16/bfloat16/float32, any strides.
    W:       (L, D) classifier, E's dtype; the chunk's rows start at label_start.
    label_id_offset: the label id of W's row 0 in INDICES' numbering (a label shard's first label), so a
             shard reads the full batch's positives without relabelling them.
    BIAS:    (L,) E's dtype, any stride, or None (HAS_BIAS).
    Y:       (B, L) dense targets (float, integer or bool, any strides), or None for sparse targets.
    INDICES: (nnz,) int32/int64 positive label ids, each row's sorted; row b's positives whose ids lie in
             this chunk are INDICES[POSITIVES_START[b]:POSITIVES_STOP[b]], both (B,) int64 (so a tile scans
             the chunk's few, not the row's all). None, all three, for a dense target.
    LW, PW:  (B, L) broadcast views of the label weight and pos_weight, float, or None (HAS_*).
    ROW_SCALE: (B,) contiguous float32 per-row gradient factor (a recomputing backward's grad_output), or
             None (HAS_ROW_SCALE).
    G:       (B, chunk_labels) gradient of the weighted elementwise loss w.r.t. the chunk's logits (times
             ROW_SCALE), E's dtype, unit column stride, or None (WRITE_GRAD). The reduction's factor is
             left to the GEMMs that consume G (their alpha), so fp16 never holds it.
    PARTIAL: (B, ≥ cdiv(chunk_labels, BLOCK_L)) contiguous float32, stride_partial_row: each row's weighted
             loss over the tile, in column pid_l.
    label_smoothing: ε in [0, 1), float32: targets y·(1 − ε) + ε/2; read only where SMOOTH (ε ≠ 0).
    DOT_PRECISION: tl.dot's input precision for float32 inputs ("ieee", or "tf32" when torch allows it).
    DOT_IN_FP32: upcast the operands before tl.dot (only for Triton's interpreter, whose bf16 dot is wrong).
    PRECISE: sigmoid_bce's precision: False only where both the loss and G are 16-bit.
    """
    pid_b = tl.program_id(0)
    pid_l = tl.program_id(1)
    rows = pid_b.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)  # within the chunk
    labels = label_start + cols.to(tl.int64)
    row_mask = rows < B
    col_mask = cols < chunk_labels
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

    if SPARSE_TARGET and not SMOOTH:
        # Every label as a negative first, with no target tile held in registers; the tile's few positives
        # are corrected below.
        loss, grad = negative_bce(x, PRECISE)
    else:
        if SPARSE_TARGET:
            # Every label at the negatives' smoothed target ε/2 first, a scalar: still no target tile. Now
            # pos_weight weighs every label's ε/2·softplus(-x) term, so its tile is read as for dense targets.
            y = label_smoothing * 0.5
        else:
            y = tl.load(Y + rows[:, None] * stride_y_row + labels[None, :] * stride_y_col, mask=mask, other=0)
            y = y.to(tl.float32)
            if SMOOTH:
                y = tl.fma(y, 1.0 - label_smoothing, label_smoothing * 0.5)
        p = 1.0
        if HAS_POS_WEIGHT:
            p = tl.load(
                PW + rows[:, None] * stride_pw_row + labels[None, :] * stride_pw_col, mask=mask, other=1
            )
            p = p.to(tl.float32)
        loss, grad = sigmoid_bce(x, y, p, True, HAS_POS_WEIGHT, PRECISE)
    if HAS_LABEL_WEIGHT:
        w = tl.load(LW + rows[:, None] * stride_lw_row + labels[None, :] * stride_lw_col, mask=mask, other=0)
        w = w.to(tl.float32)
        loss = loss * w
        grad = grad * w
    if HAS_ROW_SCALE:
        row_scale = tl.load(ROW_SCALE + rows, mask=row_mask, other=0)
    if WRITE_GRAD:
        if HAS_ROW_SCALE:
            grad = grad * row_scale[:, None]
        tl.store(G + rows[:, None] * stride_g_row + cols[None, :], grad.to(G.dtype.element_ty), mask=mask)

    if SPARSE_TARGET:
        # Each positive's loss p·softplus(-x) replaces softplus(x) in the loss tile before the row sum (a
        # difference of the two sums would cancel where the row is fit well), and its gradient -p·σ(-x)
        # overwrites the stored σ(x): both in fp32 from the tile's own logit. Smoothed, the replacement is
        # the loss and gradient at target 1 - ε/2 in place of those at ε/2.
        tile_start = label_id_offset + label_start + pid_l * BLOCK_L
        first, inside = positives_in_range(
            POSITIVES_START, POSITIVES_STOP, INDICES, rows, row_mask, tile_start, tile_start + BLOCK_L
        )
        if WRITE_GRAD:
            tl.debug_barrier()  # the tile's stores above land before a positive's overwrites them
        for j in tl.range(0, tl.max(inside.to(tl.int32), axis=0)):
            label_id = tl.load(INDICES + first + j, mask=j < inside, other=-1).to(tl.int64)
            col = label_id - label_id_offset - label_start  # within the chunk; -1 - ... when absent
            has = (j < inside) & (col < chunk_labels)
            hit = col[:, None] == cols[None, :]
            x_pos = tl.sum(tl.where(hit, x, 0.0), axis=1)
            if not SMOOTH:
                softplus_neg, grad_pos = positive_bce(x_pos, PRECISE)
            p_pos = 1.0
            if HAS_POS_WEIGHT:
                p_pos = tl.load(
                    PW + rows * stride_pw_row + (label_start + col) * stride_pw_col, mask=has, other=1
                ).to(tl.float32)
            w_pos = 1.0
            if HAS_LABEL_WEIGHT:
                w_pos = tl.load(
                    LW + rows * stride_lw_row + (label_start + col) * stride_lw_col, mask=has, other=0
                ).to(tl.float32)
            if SMOOTH:
                loss_pos, grad_pos = sigmoid_bce(
                    x_pos, 1.0 - label_smoothing * 0.5, p_pos, True, HAS_POS_WEIGHT, PRECISE
                )
                loss = tl.where(hit, (w_pos * loss_pos)[:, None], loss)
            else:
                loss = tl.where(hit, (w_pos * p_pos * softplus_neg)[:, None], loss)
            if WRITE_GRAD:
                if SMOOTH:
                    grad_pos = w_pos * grad_pos
                else:
                    grad_pos = (w_pos * p_pos) * grad_pos
                if HAS_ROW_SCALE:
                    grad_pos = grad_pos * row_scale
                tl.store(G + rows * stride_g_row + col, grad_pos.to(G.dtype.element_ty), mask=has)
    # Labels past the chunk hold the loss of a zero logit; rows past B are summed but never stored.
    if (pid_l + 1) * BLOCK_L <= chunk_labels:
        row_loss = tl.sum(loss, axis=1)
    else:
        row_loss = tl.sum(tl.where(col_mask[None, :], loss, 0.0), axis=1)
    tl.store(PARTIAL + rows * stride_partial_row + pid_l, row_loss, mask=row_mask)


# Derived at each launch: what the None pointers switch on or off.
_chunk_heuristics = triton.heuristics(
    {
        "HAS_BIAS": lambda args: args["BIAS"] is not None,
        "SPARSE_TARGET": lambda args: args["Y"] is None,
        "HAS_LABEL_WEIGHT": lambda args: args["LW"] is not None,
        "HAS_POS_WEIGHT": lambda args: args["PW"] is not None,
        "HAS_ROW_SCALE": lambda args: args["ROW_SCALE"] is not None,
        "WRITE_GRAD": lambda args: args["G"] is not None,
        "SMOOTH": lambda args: args["label_smoothing"] != 0,
    }
)

# Configs write different numbers of PARTIAL columns, and the host sums them all: zero the buffer again
# after every config the autotuner benchmarks, so only the chosen config's partials remain. The key holds
# every tensor argument's dtype too, so which pointers are None tells the variants apart.
linear_soft_margin_chunk = triton.autotune(chunk_configs(), key=["D"], reset_to_zero=["PARTIAL"])(
    _chunk_heuristics(linear_soft_margin_chunk_kernel)
)
