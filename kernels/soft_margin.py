"""Fused sigmoid + binary cross-entropy over a (R, C) view of the logits.

The forward reads each logit and target once and writes, in the same pass, the gradient of the reduced loss
and either the elementwise loss or one fp32 partial sum per (row, span). The backward kernel only scales that
stored gradient by grad_output, and leaves untouched every element whose grad_output is exactly 1.

Grid of those two: (cdiv(R, BLOCK_R), cdiv(C, SPAN)). SPAN is chosen by the host (it sizes the partial
buffer); the tile TILE = BLOCK_R × BLOCK_C is autotuned, so small C packs several rows into one program.

Sparse targets (each row's positive label ids, sorted, in compressed rows) replace the target read: a
program first finds, per row, the positives that fall in its span (a scan of the row's few ids), then marks
them in each tile by comparing ids — so positives get their exact loss and gradient in the same pass. A span
without positives, most of them in a huge label space, computes every label as a negative.

The forward serves every loss of the op (LOSS_FORM): MultiLabelSoftMarginLoss and BCEWithLogitsLoss, with
label smoothing and partial labels (targets equal to an ignore value count for nothing; their per-row
divisors come from a first pass, the known-counts kernel, through ROW_SCALE), and the focal family
(torchvision's sigmoid focal loss, the asymmetric loss). The elementwise math is kernels/sigmoid_bce.py's;
where every tile is full (EVEN) nothing is masked.
"""

import triton
import triton.language as tl

from .sigmoid_bce import focal_bce, negative_bce, sigmoid_bce
from .tiles import load_tile, mark_positives, positives_in_range, store_tile

# Largest span one program reduces to a single partial; the host grows it only past grid-y's 65535 limit.
MAX_SPAN = 8192
MAX_GRID_Y = 65535


def span_for(num_cols: int) -> int:
    """Columns one program covers: all of a short row, else MAX_SPAN (more where grid-y would overflow)."""
    span = min(triton.next_power_of_2(max(num_cols, 1)), MAX_SPAN)
    return max(span, triton.next_power_of_2(triton.cdiv(num_cols, MAX_GRID_Y)))


def tile_configs() -> list[triton.Config]:
    """Autotune space shared by both kernels: elements per program tile and warps."""
    return [triton.Config({"TILE": tile}, num_warps=warps) for tile in (1024, 2048, 4096) for warps in (4, 8)]


# The config used where autotuning cannot benchmark (Triton's CPU interpreter).
HEURISTIC_CONFIG = {"TILE": 1024, "num_warps": 4}


def tile_shape(tile: int, span: int) -> dict[str, int]:
    """BLOCK_R × BLOCK_C of a TILE-element program over SPAN columns: whole rows while they fit."""
    block_c = min(tile, span)
    return {"BLOCK_C": block_c, "BLOCK_R": tile // block_c}


def tiles_even(rows: int, cols: int, span: int, block_r: int) -> bool:
    """Whether every tile is full: spans of SPAN columns and blocks of BLOCK_R rows (nothing to mask)."""
    return cols % span == 0 and rows % block_r == 0


def integer_gamma(gamma_pos: float, gamma_neg: float, largest: int = 8) -> int:
    """The focusing exponent as the kernels' INTEGER_GAMMA: γ where γ+ = γ- = γ is an integer in
    [0, largest] (powers by products), else -1 (powers by lg2 and ex2)."""
    if gamma_pos == gamma_neg and float(gamma_pos).is_integer() and 0 <= gamma_pos <= largest:
        return int(gamma_pos)
    return -1


def _compute_dtype(tensor) -> tl.dtype:
    """float64 arithmetic for float64 data, float32 for everything else."""
    return tl.float64 if tensor.element_size() == 8 else tl.float32


# Derived at each launch, after the autotuner has chosen TILE: the block shape, whether every tile is full
# (spans of SPAN columns, blocks of BLOCK_R rows: then nothing is masked), and what the None pointers and
# the data's dtype switch on or off.
_SHAPE_HEURISTICS = {
    "BLOCK_C": lambda args: tile_shape(args["TILE"], args["SPAN"])["BLOCK_C"],
    "BLOCK_R": lambda args: tile_shape(args["TILE"], args["SPAN"])["BLOCK_R"],
    "EVEN": lambda args: tiles_even(args["R"], args["C"], args["SPAN"], args["BLOCK_R"]),
}
_forward_heuristics = triton.heuristics(
    {
        **_SHAPE_HEURISTICS,
        "SPARSE_TARGET": lambda args: args["Y"] is None,
        "HAS_WEIGHT": lambda args: args["W"] is not None,
        "HAS_POS_WEIGHT": lambda args: args["PW"] is not None,
        "HAS_ROW_SCALE": lambda args: args["ROW_SCALE"] is not None,
        "SMOOTH": lambda args: args["label_smoothing"] != 0,
        "ALPHA_WEIGHT": lambda args: args["alpha"] >= 0,
        "CLIP": lambda args: args["clip"] > 0,
        "INTEGER_GAMMA": lambda args: integer_gamma(args["gamma_pos"], args["gamma_neg"]),
        "WRITE_GRAD": lambda args: args["GRAD"] is not None,
        "WRITE_LOSS": lambda args: args["LOSS"] is not None,
        "WRITE_PARTIAL": lambda args: args["PARTIAL"] is not None,
        "COMPUTE_DTYPE": lambda args: _compute_dtype(args["X"]),
    }
)
_scale_grad_heuristics = triton.heuristics(
    {**_SHAPE_HEURISTICS, "COMPUTE_DTYPE": lambda args: _compute_dtype(args["GRAD"])}
)


@triton.jit
def elementwise_loss(
    x,
    y,
    p,
    label_smoothing,
    alpha,
    gamma_pos,
    gamma_neg,
    clip,
    log_eps,
    LOSS_FORM: tl.constexpr,
    SMOOTH: tl.constexpr,
    HAS_POS_WEIGHT: tl.constexpr,
    ALPHA_WEIGHT: tl.constexpr,
    CLIP: tl.constexpr,
    FOCUS_GRAD: tl.constexpr,
    INTEGER_GAMMA: tl.constexpr,
    PRECISE: tl.constexpr,
):
    """(unweighted loss, d loss / dx) of LOSS_FORM at logits x, targets y, pos_weight p (compute dtype)."""
    if LOSS_FORM == "focal" or LOSS_FORM == "asymmetric":
        loss, grad = focal_bce(
            x, y, alpha, gamma_pos, gamma_neg, clip, log_eps,
            LOSS_FORM == "asymmetric", ALPHA_WEIGHT, CLIP, FOCUS_GRAD, INTEGER_GAMMA, PRECISE,
        )  # fmt: skip
    else:
        if SMOOTH:
            y = tl.fma(y, 1.0 - label_smoothing, 0.5 * label_smoothing)
        loss, grad = sigmoid_bce(x, y, p, LOSS_FORM == "mlsm", HAS_POS_WEIGHT, PRECISE)
    return loss, grad


@triton.jit
def soft_margin_forward_kernel(
    # pointers (None where absent)
    X,
    Y,
    INDPTR,
    INDICES,
    W,
    PW,
    ROW_SCALE,
    GRAD,
    LOSS,
    PARTIAL,
    # sizes
    R,
    C,
    # strides (0 for an absent tensor)
    stride_x_row,
    stride_x_col,
    stride_y_row,
    stride_y_col,
    stride_w_row,
    stride_w_col,
    stride_pw_row,
    stride_pw_col,
    stride_row_scale,
    stride_grad_row,
    stride_grad_col,
    # scalars
    grad_scale,
    label_smoothing,
    ignore_value,
    alpha,
    gamma_pos,
    gamma_neg,
    clip,
    log_eps,
    # meta-parameters: the host's
    SPAN: tl.constexpr,
    LOSS_FORM: tl.constexpr,
    IGNORE: tl.constexpr,
    FOCUS_GRAD: tl.constexpr,
    PRECISE: tl.constexpr,
    # the autotuner's
    TILE: tl.constexpr,
    # derived by _forward_heuristics
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    EVEN: tl.constexpr,
    SPARSE_TARGET: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_POS_WEIGHT: tl.constexpr,
    HAS_ROW_SCALE: tl.constexpr,
    SMOOTH: tl.constexpr,
    ALPHA_WEIGHT: tl.constexpr,
    CLIP: tl.constexpr,
    INTEGER_GAMMA: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    WRITE_LOSS: tl.constexpr,
    WRITE_PARTIAL: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
):
    """Loss terms and gradient of sigmoid-BCE, one tile of rows × one span of columns per program.

    X:       (R, C) logits, float16/bfloat16/float32/float64, any strides.
    Y:       (R, C) targets, float, integer or bool, any strides; None for sparse targets (SPARSE_TARGET).
    INDPTR:  (R+1,) int64 and INDICES (nnz,) int32/int64: each row's positive label ids, sorted ascending
             without repeats; the target is 1 there and 0 elsewhere. None for a dense target.
    W:       (R, C) weight (a broadcast view, strides may be 0), float, or None (HAS_WEIGHT).
    PW:      (R, C) pos_weight p (a broadcast view), float, or None (HAS_POS_WEIGHT).
    ROW_SCALE: (R,) COMPUTE_DTYPE factor of each row's gradient (strides may be 0), or None: the partial
             labels' divisors (IGNORE), which depend on the data.
    GRAD:    (R, C) gradient of the reduced loss, X's dtype; may alias X (read before written); or None.
    LOSS:    (R, C) contiguous weighted elementwise loss, the loss's dtype, or None (WRITE_LOSS).
    PARTIAL: (R, cdiv(C, SPAN)) contiguous COMPUTE_DTYPE row partial sums, or None (WRITE_PARTIAL).
    grad_scale: factor applied to the stored gradient (the reduction's, or 1 when the backward applies it).
    label_smoothing: ε of the smoothed target y·(1 - ε) + ε/2 (SMOOTH: ε ≠ 0; "mlsm" and "bce" forms).
    ignore_value: with IGNORE, a dense target equal to it gives loss 0 and gradient 0 ("mlsm", "bce").
    alpha, gamma_pos, gamma_neg, clip, log_eps: the "focal" and "asymmetric" forms' (focal_bce);
             ALPHA_WEIGHT: alpha ≥ 0; CLIP: clip > 0; FOCUS_GRAD: differentiate the focusing factor too;
             INTEGER_GAMMA: gamma_pos = gamma_neg, an integer (else -1): powers by products.
    SPAN:    columns per program (span_for(C)); LOSS_FORM: "mlsm" (MultiLabelSoftMarginLoss's formula),
             "bce" (BCEWithLogitsLoss's), "focal" (torchvision's sigmoid_focal_loss) or "asymmetric" (ASL);
    PRECISE: the elementwise math's precision, False only where both the loss and the gradient are 16-bit.
    EVEN:    every tile lies inside (R, C): loads, stores and sums go unmasked.
    COMPUTE_DTYPE: float64 for float64 logits, else float32.
    """
    row_block = tl.program_id(0)
    span_id = tl.program_id(1)
    rows = row_block.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < R
    span_start = span_id.to(tl.int64) * SPAN  # int64: one row may pass 2^31 elements
    span_end = tl.minimum(span_start + SPAN, C)
    if SPARSE_TARGET:
        first, inside = positives_in_range(INDPTR, INDPTR + 1, INDICES, rows, row_mask, span_start, span_end)
        # Most spans of a huge label space hold no positive: theirs is every label's negative loss.
        span_has_positives = tl.max(inside.to(tl.int32), axis=0) > 0
    if HAS_ROW_SCALE:
        row_scale = tl.load(ROW_SCALE + rows * stride_row_scale, mask=row_mask, other=0)[:, None]
    acc = tl.zeros([BLOCK_R, BLOCK_C], COMPUTE_DTYPE)
    for offset in tl.range(0, SPAN, BLOCK_C):
        cols = span_start + offset + tl.arange(0, BLOCK_C)
        mask = row_mask[:, None] & (cols < span_end)[None, :]
        cols = cols.to(tl.int64)
        x = load_tile(X + rows[:, None] * stride_x_row + cols[None, :] * stride_x_col, mask, 0, EVEN)
        x = x.to(COMPUTE_DTYPE)
        p = 1.0
        if HAS_POS_WEIGHT:
            p = load_tile(PW + rows[:, None] * stride_pw_row + cols[None, :] * stride_pw_col, mask, 1, EVEN)
            p = p.to(COMPUTE_DTYPE)
        if SPARSE_TARGET:
            if span_has_positives:
                y = mark_positives(INDICES, first, inside, cols, BLOCK_R, BLOCK_C, COMPUTE_DTYPE)
                loss, grad = elementwise_loss(
                    x, y, p, label_smoothing, alpha, gamma_pos, gamma_neg, clip, log_eps,
                    LOSS_FORM, SMOOTH, HAS_POS_WEIGHT, ALPHA_WEIGHT, CLIP, FOCUS_GRAD, INTEGER_GAMMA, PRECISE,
                )  # fmt: skip
            elif (LOSS_FORM == "mlsm" or LOSS_FORM == "bce") and not SMOOTH:
                # both torch formulas are softplus(x) at a 0 target, NaN at x = -inf
                loss, grad = negative_bce(x, PRECISE)
            else:
                loss, grad = elementwise_loss(
                    x, tl.zeros_like(x), p, label_smoothing, alpha, gamma_pos, gamma_neg, clip, log_eps,
                    LOSS_FORM, SMOOTH, HAS_POS_WEIGHT, ALPHA_WEIGHT, CLIP, FOCUS_GRAD, INTEGER_GAMMA, PRECISE,
                )  # fmt: skip
        else:
            y = load_tile(Y + rows[:, None] * stride_y_row + cols[None, :] * stride_y_col, mask, 0, EVEN)
            loss, grad = elementwise_loss(
                x, y.to(COMPUTE_DTYPE), p, label_smoothing, alpha, gamma_pos, gamma_neg, clip, log_eps,
                LOSS_FORM, SMOOTH, HAS_POS_WEIGHT, ALPHA_WEIGHT, CLIP, FOCUS_GRAD, INTEGER_GAMMA, PRECISE,
            )  # fmt: skip
            if IGNORE:  # compared in the target's own dtype, before any smoothing; NaN logits included
                known = y != ignore_value
                loss = tl.where(known, loss, 0.0)
                grad = tl.where(known, grad, 0.0)
        if HAS_WEIGHT:
            w = load_tile(W + rows[:, None] * stride_w_row + cols[None, :] * stride_w_col, mask, 0, EVEN)
            w = w.to(COMPUTE_DTYPE)
            loss = loss * w
            grad = grad * w
        if HAS_ROW_SCALE:
            grad = grad * row_scale

        if WRITE_LOSS:
            if LOSS.dtype.element_ty.primitive_bitwidth == 16:
                loss = loss.to(tl.float32)  # fp64 → half in two steps (Triton's interpreter mis-rounds one)
            store_tile(LOSS + rows[:, None] * C + cols[None, :], loss.to(LOSS.dtype.element_ty), mask, EVEN)
        if WRITE_PARTIAL:
            if EVEN:
                acc += loss
            else:
                acc += tl.where(mask, loss, 0.0)
        if WRITE_GRAD:
            grad_ptrs = GRAD + rows[:, None] * stride_grad_row + cols[None, :] * stride_grad_col
            store_tile(grad_ptrs, (grad * grad_scale).to(GRAD.dtype.element_ty), mask, EVEN)

    if WRITE_PARTIAL:
        num_spans = tl.cdiv(C, SPAN)
        tl.store(PARTIAL + rows * num_spans + span_id, tl.sum(acc, axis=1), mask=row_mask)


@triton.jit
def soft_margin_scale_grad_kernel(
    # pointers
    GRAD,
    GRAD_OUTPUT,
    # sizes
    R,
    C,
    # strides
    stride_grad_row,
    stride_grad_col,
    stride_go_row,
    stride_go_col,
    # scalars
    scale,
    # meta-parameters: the host's
    SPAN: tl.constexpr,
    # the autotuner's
    TILE: tl.constexpr,
    # derived by _scale_grad_heuristics
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    EVEN: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
):
    """GRAD *= GRAD_OUTPUT · scale in place, touching only elements where that factor is not exactly 1.

    GRAD:        (R, C) stored gradient, float, any strides.
    GRAD_OUTPUT: (R, C) broadcast view of the loss's gradient (strides 0 for a scalar or per-row), float.
    scale: 1, or the reduction's factor when the forward left it out (fp16 gradients, see the host).
    EVEN: every tile lies inside (R, C): no bounds masks. COMPUTE_DTYPE: float64 for a float64 GRAD, else
    float32.
    The common `loss.backward()` (factor 1) thus moves no gradient bytes and needs no host sync.
    """
    row_block = tl.program_id(0)
    span_id = tl.program_id(1)
    rows = row_block.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < R
    span_start = span_id.to(tl.int64) * SPAN  # int64: one row may pass 2^31 elements
    span_end = tl.minimum(span_start + SPAN, C)
    for offset in tl.range(0, SPAN, BLOCK_C):
        cols = span_start + offset + tl.arange(0, BLOCK_C)
        mask = row_mask[:, None] & (cols < span_end)[None, :]
        cols = cols.to(tl.int64)
        go_ptrs = GRAD_OUTPUT + rows[:, None] * stride_go_row + cols[None, :] * stride_go_col
        factor = load_tile(go_ptrs, mask, 1, EVEN).to(COMPUTE_DTYPE) * scale
        if EVEN:
            touch = factor != 1.0
        else:
            touch = mask & (factor != 1.0)
        grad_ptrs = GRAD + rows[:, None] * stride_grad_row + cols[None, :] * stride_grad_col
        grad = tl.load(grad_ptrs, mask=touch, other=0).to(COMPUTE_DTYPE)
        tl.store(grad_ptrs, (grad * factor).to(GRAD.dtype.element_ty), mask=touch)


@triton.jit
def soft_margin_known_counts_kernel(
    # pointers
    Y,
    COUNTS,
    # sizes
    R,
    C,
    # strides
    stride_y_row,
    stride_y_col,
    # scalars
    ignore_value,
    # meta-parameters: the host's
    SPAN: tl.constexpr,
    # the autotuner's
    TILE: tl.constexpr,
    # derived by _SHAPE_HEURISTICS
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    EVEN: tl.constexpr,
):
    """How many targets of each (row, span) differ from ignore_value: the partial labels' known labels,
    whose counts are the forward's divisors (so they are known before the forward writes its gradient).

    Y:      (R, C) dense target, float, integer or bool, any strides.
    COUNTS: (R, cdiv(C, SPAN)) contiguous int32.
    """
    row_block = tl.program_id(0)
    span_id = tl.program_id(1)
    rows = row_block.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < R
    span_start = span_id.to(tl.int64) * SPAN  # int64: one row may pass 2^31 elements
    span_end = tl.minimum(span_start + SPAN, C)
    count = tl.zeros([BLOCK_R, BLOCK_C], tl.int32)
    for offset in tl.range(0, SPAN, BLOCK_C):
        cols = span_start + offset + tl.arange(0, BLOCK_C)
        mask = row_mask[:, None] & (cols < span_end)[None, :]
        cols = cols.to(tl.int64)
        y = tl.load(Y + rows[:, None] * stride_y_row + cols[None, :] * stride_y_col, mask=mask, other=0)
        count += (mask & (y != ignore_value)).to(tl.int32)
    num_spans = tl.cdiv(C, SPAN)
    tl.store(COUNTS + rows * num_spans + span_id, tl.sum(count, axis=1), mask=row_mask)


# The forward writes only fresh buffers, except in-place mode where GRAD aliases X: that variant restores
# GRAD (hence X) after each benchmarked config. The scale kernel is in place by nature. The autotuner's key
# holds every tensor argument's dtype, so which pointers are None tells the variants apart too.
soft_margin_forward = triton.autotune(tile_configs(), key=["SPAN", "LOSS_FORM", "IGNORE"])(
    _forward_heuristics(soft_margin_forward_kernel)
)
soft_margin_forward_into_logits = triton.autotune(
    tile_configs(), key=["SPAN", "LOSS_FORM", "IGNORE"], restore_value=["GRAD"]
)(_forward_heuristics(soft_margin_forward_kernel))
soft_margin_scale_grad = triton.autotune(tile_configs(), key=["SPAN"], restore_value=["GRAD"])(
    _scale_grad_heuristics(soft_margin_scale_grad_kernel)
)
soft_margin_known_counts = triton.autotune(tile_configs(), key=["SPAN"])(
    triton.heuristics(_SHAPE_HEURISTICS)(soft_margin_known_counts_kernel)
)
