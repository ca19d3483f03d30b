"""The classifier's SGD step fused into its gradient GEMM: dW_c = Gᵀ · E is formed tile by tile in registers
and applied at once, so the (L, D) gradient of the classifier never exists in memory.

One program owns a (BLOCK_L labels × BLOCK_D features) tile of the chunk's weights. It accumulates the tile's
gradient over the batch on tensor cores, then, in its epilogue, reads the tile's weights (or their fp32
master copy) and momentum once, takes the step in fp32 and writes them back. The step size is lr, or one per
label row that the host derived from the rows' gradient norms (the row-adaptive step). The bias, (L,),
steps on the host (softmargin_triton/fused_sgd.py) with the same arithmetic and rounding.

A bfloat16 weight without a master copy is rounded stochastically: element i of step t rounds up with
probability equal to its distance from the value below, its random bits a hash of (stream, i)
(`stochastic_round_bf16`): the CPU oracle (reference.stochastic_round_bfloat16) computes the same bits,
and a run on the same device and config reproduces bit for bit.
"""

import triton
import triton.language as tl


def update_configs() -> list[triton.Config]:
    """Autotune space: (labels, features, batch depth) tile shapes, pipeline stages and warps."""
    return [
        triton.Config({"BLOCK_L": n, "BLOCK_D": d, "BLOCK_B": b}, num_stages=stages, num_warps=warps)
        for n, d, b, stages, warps in (
            (128, 128, 64, 3, 8),
            (128, 128, 32, 4, 8),
            (128, 64, 64, 4, 4),
            (64, 128, 64, 4, 4),
            (64, 64, 64, 4, 4),
        )
    ]


# Where autotuning cannot benchmark (Triton's CPU interpreter); tl.dot needs blocks of at least 16.
HEURISTIC_CONFIG = {"BLOCK_L": 32, "BLOCK_D": 32, "BLOCK_B": 16, "num_warps": 4}

# The 32-bit integer hash of the stochastic rounding (a multiply–xorshift finaliser) and the odd constant
# that separates the streams of element ids past 2^32; reference.py computes the same bits.
HASH_MULTIPLIER_1 = tl.constexpr(0x7FEB352D)
HASH_MULTIPLIER_2 = tl.constexpr(0x846CA68B)
HIGH_WORD_MULTIPLIER = tl.constexpr(0x9E3779B9)


@triton.jit
def mix32(x):
    """A uint32 → uint32 bijection whose every output bit depends on every input bit."""
    x ^= x >> 16
    x *= tl.full((), HASH_MULTIPLIER_1, tl.uint32)
    x ^= x >> 15
    x *= tl.full((), HASH_MULTIPLIER_2, tl.uint32)
    x ^= x >> 16
    return x


@triton.jit
def bf16_from_bits(values, addend):
    """fp32 `values` to bfloat16 by adding `addend` (uint32) to their bits and dropping the low 16: a carry
    rounds the magnitude up. NaN stays NaN (its bits could carry into the sign)."""
    bits = values.to(tl.uint32, bitcast=True) + addend
    rounded = (bits & tl.full((), 0xFFFF0000, tl.uint32)).to(tl.float32, bitcast=True)
    return tl.where(values != values, values, rounded).to(tl.bfloat16)  # exact: the low bits are zero


@triton.jit
def stochastic_round_bf16(values, element_ids, rounding_stream):
    """fp32 `values` rounded to bfloat16 up or down at random, unbiased: the 16 dropped bits are compared
    with 16 random bits of (rounding_stream, element id) by adding them."""
    low = element_ids.to(tl.uint32)  # the low 32 bits
    high = (element_ids >> 32).to(tl.uint32)
    key = rounding_stream.to(tl.uint32) + high * tl.full((), HIGH_WORD_MULTIPLIER, tl.uint32)
    return bf16_from_bits(values, mix32(low ^ key) >> 16)


@triton.jit
def nearest_bf16(values):
    """fp32 `values` rounded to the nearest bfloat16, ties to even. Through the bits because Triton's CPU
    interpreter truncates a float32 → bfloat16 cast (compiled code rounds to nearest either way)."""
    bits = values.to(tl.uint32, bitcast=True)
    return bf16_from_bits(values, 0x7FFF + ((bits >> 16) & 1))


@triton.jit
def sgd_step(
    PARAM,
    MOMENTUM,
    MASTER,
    offsets,
    grad,
    element_ids,
    mask,
    step_size,
    momentum,
    weight_decay,
    shrink,
    rounding_stream,
    HAS_MOMENTUM: tl.constexpr,
    HAS_MASTER: tl.constexpr,
    WEIGHT_DECAY: tl.constexpr,
    STOCHASTIC_ROUNDING: tl.constexpr,
):
    """One step of the parameters at pointers PARAM, in fp32: d = grad + weight_decay·w (coupled decay, as
    torch.optim.SGD's); m = momentum·m + d (m starts at 0, so its first step is torch's clone); then
    w = shrink·w − step_size·m (shrink = 1 − lr·decay for decoupled decay, as AdamW's; step_size a scalar,
    or per row). The fp32 buffers MOMENTUM and MASTER (None where absent) are read at `offsets`. w is read
    from MASTER when there is one, which receives the new w; PARAM receives it rounded to nearest, or
    stochastically where STOCHASTIC_ROUNDING."""
    if HAS_MASTER:
        w = tl.load(MASTER + offsets, mask=mask, other=0)
    else:
        w = tl.load(PARAM, mask=mask, other=0).to(tl.float32)
    if WEIGHT_DECAY:
        grad = tl.fma(w, weight_decay, grad)
    if HAS_MOMENTUM:
        grad = tl.fma(tl.load(MOMENTUM + offsets, mask=mask, other=0), momentum, grad)
        tl.store(MOMENTUM + offsets, grad, mask=mask)
    w = tl.fma(grad, -step_size, w * shrink)
    if HAS_MASTER:
        tl.store(MASTER + offsets, w, mask=mask)
    if STOCHASTIC_ROUNDING:
        tl.store(PARAM, stochastic_round_bf16(w, element_ids, rounding_stream), mask=mask)
    elif PARAM.dtype.element_ty == tl.bfloat16:
        tl.store(PARAM, nearest_bf16(w), mask=mask)
    else:
        tl.store(PARAM, w.to(PARAM.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["rounding_stream"])
def classifier_sgd_update_kernel(
    # pointers (None where absent)
    G,
    E,
    W,
    MOMENTUM,
    MASTER,
    ROW_STEP_SIZE,
    # sizes and offsets
    B,
    D,
    chunk_labels,
    label_start,
    # the step
    lr,
    momentum,
    weight_decay,
    shrink,
    rounding_stream,
    # strides
    stride_g_row,
    stride_e_row,
    stride_e_col,
    stride_w_row,
    stride_w_col,
    # meta-parameters: the host's
    DOT_PRECISION: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    STOCHASTIC_ROUNDING: tl.constexpr,
    # the autotuner's
    BLOCK_L: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_B: tl.constexpr,
    # derived by _update_heuristics
    HAS_MOMENTUM: tl.constexpr,
    HAS_MASTER: tl.constexpr,
    HAS_ROW_STEP_SIZE: tl.constexpr,
    WEIGHT_DECAY: tl.constexpr,
):
    """One (BLOCK_L labels × BLOCK_D features) tile of a label chunk's weights: its gradient and its step.

    G:       (B, chunk_labels) gradient w.r.t. the chunk's logits (grad_output and the reduction's factor
             included), E's dtype, unit column stride.
    E:       (B, D) input features, float16/bfloat16/float32, any strides.
    W:       (chunk_labels, D) the chunk's rows of the classifier, E's dtype, any strides; updated in place.
    MOMENTUM, MASTER: (chunk_labels, D) contiguous float32 momentum buffer (or None: HAS_MOMENTUM) and
             master weights of a 16-bit W (or None: HAS_MASTER).
    ROW_STEP_SIZE: (chunk_labels,) contiguous float32 step size of each label's row (the row-adaptive
             step), or None (HAS_ROW_STEP_SIZE): every row steps by lr.
    Only the chunk's own rows are passed, so the autotuner's trials save and restore that much, not (L, D).
    label_start: the chunk's first label, which numbers the stochastic rounding's elements: (l, d) is l·D + d.
    lr, momentum, weight_decay, shrink: float32 hyperparameters of the step (sgd_step; weight_decay read
             only if nonzero).
    rounding_stream: uint32 key of this step's stochastic rounding.
    STOCHASTIC_ROUNDING: W is bfloat16 without a master copy.
    DOT_PRECISION, DOT_IN_FP32: as in the fused linear loss's chunk kernel.
    """
    pid_l = tl.program_id(0)
    pid_d = tl.program_id(1)
    cols = pid_l * BLOCK_L + tl.arange(0, BLOCK_L).to(tl.int64)  # within the chunk
    dims = pid_d * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    col_mask = cols < chunk_labels
    dim_mask = dims < D

    grad = tl.zeros([BLOCK_L, BLOCK_D], tl.float32)
    for b0 in tl.range(0, B, BLOCK_B):
        rows = b0 + tl.arange(0, BLOCK_B).to(tl.int64)
        row_mask = rows < B
        g = tl.load(
            G + rows[None, :] * stride_g_row + cols[:, None],
            mask=col_mask[:, None] & row_mask[None, :],
            other=0,
        )
        e = tl.load(
            E + rows[:, None] * stride_e_row + dims[None, :] * stride_e_col,
            mask=row_mask[:, None] & dim_mask[None, :],
            other=0,
        )
        if DOT_IN_FP32:
            g = g.to(tl.float32)
            e = e.to(tl.float32)
        grad = tl.dot(g, e, grad, input_precision=DOT_PRECISION)

    step_size = lr
    if HAS_ROW_STEP_SIZE:
        step_size = tl.load(ROW_STEP_SIZE + cols, mask=col_mask, other=0)[:, None]
    sgd_step(
        W + cols[:, None] * stride_w_row + dims[None, :] * stride_w_col,
        MOMENTUM,
        MASTER,
        cols[:, None] * D + dims[None, :],  # into the contiguous fp32 buffers
        grad,
        (label_start + cols)[:, None] * D + dims[None, :],
        col_mask[:, None] & dim_mask[None, :],
        step_size,
        momentum,
        weight_decay,
        shrink,
        rounding_stream,
        HAS_MOMENTUM,
        HAS_MASTER,
        WEIGHT_DECAY,
        STOCHASTIC_ROUNDING,
    )


# Derived at each launch: what the None pointers and a zero weight decay switch off.
_update_heuristics = triton.heuristics(
    {
        "HAS_MOMENTUM": lambda args: args["MOMENTUM"] is not None,
        "HAS_MASTER": lambda args: args["MASTER"] is not None,
        "HAS_ROW_STEP_SIZE": lambda args: args["ROW_STEP_SIZE"] is not None,
        "WEIGHT_DECAY": lambda args: args["weight_decay"] != 0,
    }
)

# The kernel updates the chunk in place, so the autotuner's trials must not step it: restore_value saves and
# restores every buffer a trial writes (the chunk's rows only). The key holds every tensor argument's dtype.
classifier_sgd_update = triton.autotune(
    update_configs(), key=["D"], restore_value=["W", "MOMENTUM", "MASTER"]
)(_update_heuristics(classifier_sgd_update_kernel))
