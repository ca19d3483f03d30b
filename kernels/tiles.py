"""Tile building blocks the kernels share: bounds-checked loads and stores, a sparse target's positives
(found per row in a range of label ids, marked in a tile), and the fused linear loss's GEMM operands and
logits tile."""

import triton
import triton.language as tl


@triton.jit
def load_tile(ptrs, mask, other, EVEN: tl.constexpr):
    """tl.load of a tile, masked unless EVEN (every element in bounds)."""
    if EVEN:
        return tl.load(ptrs)
    else:
        return tl.load(ptrs, mask=mask, other=other)


@triton.jit
def store_tile(ptrs, values, mask, EVEN: tl.constexpr):
    """tl.store of a tile, masked unless EVEN (every element in bounds)."""
    if EVEN:
        tl.store(ptrs, values)
    else:
        tl.store(ptrs, values, mask=mask)


@triton.jit
def positives_in_range(STARTS, STOPS, INDICES, rows, row_mask, lo, hi):
    """Each row's positives with label ids in [lo, hi): the sorted ids [first, first + inside) of INDICES.

    Row r's candidates are INDICES[STARTS[r]:STOPS[r]], sorted (a compressed row pointer gives STARTS =
    INDPTR, STOPS = INDPTR + 1); one scan over a row's few ids per program (their largest count reduced as
    int32, one warp instruction on sm_80+); int64 (BLOCK_R,) results.
    """
    row_start = tl.load(STARTS + rows, mask=row_mask, other=0)
    row_count = tl.load(STOPS + rows, mask=row_mask, other=0) - row_start
    before = tl.zeros_like(row_start)
    inside = tl.zeros_like(row_start)
    for j in tl.range(0, tl.max(row_count.to(tl.int32), axis=0)):
        has = j < row_count
        label = tl.load(INDICES + row_start + j, mask=has, other=0).to(tl.int64)
        before += (has & (label < lo)).to(tl.int64)
        inside += (has & (label >= lo) & (label < hi)).to(tl.int64)
    return row_start + before, inside


@triton.jit
def mark_positives(
    INDICES, first, inside, cols, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, DTYPE: tl.constexpr
):
    """The (BLOCK_R, BLOCK_C) 0/1 target of a tile whose column ids are `cols`, from each row's positives
    [first, first + inside) (see positives_in_range): one compare of the tile per positive in range."""
    y = tl.zeros([BLOCK_R, BLOCK_C], DTYPE)
    for j in tl.range(0, tl.max(inside.to(tl.int32), axis=0)):
        label = tl.load(INDICES + first + j, mask=j < inside, other=-1).to(tl.int64)
        y = tl.where(label[:, None] == cols[None, :], 1.0, y)
    return y


@triton.jit
def operand_block(ROWS, row_mask, ds, d_mask, stride_d, IN_FP32: tl.constexpr):
    """Columns `ds` of a GEMM operand's rows whose starts are the pointers ROWS, zero where masked
    (upcast if IN_FP32)."""
    block = tl.load(ROWS[:, None] + ds[None, :] * stride_d, mask=row_mask[:, None] & d_mask[None, :], other=0)
    if IN_FP32:
        block = block.to(tl.float32)
    return block


@triton.jit
def logits_tile(
    E_ROWS,
    W_ROWS,
    row_mask,
    col_mask,
    D,
    stride_e_col,
    stride_w_col,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
):
    """E[rows] · W[labels]ᵀ for the row starts E_ROWS (BLOCK_B,) and W_ROWS (BLOCK_L,): a (BLOCK_B, BLOCK_L)
    fp32 tile, accumulated over D in BLOCK_D steps on tensor cores (the chunk kernel explains the flags)."""
    acc = tl.zeros([E_ROWS.shape[0], W_ROWS.shape[0]], tl.float32)
    for d0 in tl.range(0, D, BLOCK_D):
        ds = (d0 + tl.arange(0, BLOCK_D)).to(tl.int64)  # int64: a transposed operand's offsets pass 2^31
        d_mask = ds < D
        e = operand_block(E_ROWS, row_mask, ds, d_mask, stride_e_col, DOT_IN_FP32)
        w = operand_block(W_ROWS, col_mask, ds, d_mask, stride_w_col, DOT_IN_FP32)
        acc = tl.dot(e, tl.trans(w), acc, input_precision=DOT_PRECISION)
    return acc
