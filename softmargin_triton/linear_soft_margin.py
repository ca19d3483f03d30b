"""Fused linear + multi-label soft-margin loss: the (B, L) logits are never materialized.

Layers, bottom up:
1. `linear_soft_margin_forward`: a torch.library custom op. It walks the labels in chunks sized to a bounded
   scratch; per chunk the Triton kernel (or the plain-torch reference) writes the gradient G w.r.t. the
   chunk's logits and the rows' loss, then two plain GEMMs fold G into dE and dW_c (db_c = column sums).
2. `LinearSoftMarginFunction`: autograd. 'mean' and 'sum' compute the loss and every gradient in the
   forward and the backward only scales them by grad_output (no bytes moved when it is 1); 'none' and
   fp16 recompute in the backward with grad_output as a per-row factor.
3. `linear_multilabel_soft_margin_loss`: the functional API; `LinearMultiLabelSoftMarginLoss`: a module
   that owns the classifier, with `logits` and a streaming `topk` for inference.
"""

import math
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from softmargin_triton.backend import TRITON_IMPORT_ERROR, use_triton_for
from softmargin_triton.common import (
    FLOAT_DTYPES,
    check_label_smoothing,
    compute_dtype,
    dot_precision,
    launch,
    precise_math,
    resolve_reduction,
    rows_view,
    strides_2d,
)
from softmargin_triton.fused_sgd import (
    STEP_TEMPORARIES,
    FusedClassifierSGD,
    StepBuffers,
    StepSettings,
    check_owner,
    sgd_update_chunk_,
)
from softmargin_triton.reference import (
    linear_soft_margin_chunk_reference,
    reduce_row_sums,
    reduction_grad_scale,
)
from softmargin_triton.soft_margin import multilabel_soft_margin_loss, soft_margin_scale_grad_
from softmargin_triton.sparse_targets import SparseTargets, positive_rows

if TRITON_IMPORT_ERROR is None:
    import triton

    from softmargin_triton.backend import TRITON_INTERPRETED
    from softmargin_triton.kernels import linear_soft_margin as kernels

__all__ = ["SCRATCH_ENV_VAR", "LinearMultiLabelSoftMarginLoss", "linear_multilabel_soft_margin_loss"]

SCRATCH_ENV_VAR = "SOFTMARGIN_TRITON_SCRATCH_MB"
_DEFAULT_SCRATCH_MB = 64


# The plain-torch chunk keeps about this many (rows, chunk) fp32 temporaries alive at once.
_REFERENCE_TEMPORARIES = 8
# Small batches would otherwise get chunks whose label tiles overflow the grid's second dimension (65535).
_MAX_CHUNK_LABELS = 2**20


def chunk_labels(rows: int, num_labels: int, bytes_per_element: int) -> int:
    """Labels per chunk such that rows × chunk × bytes_per_element fits the scratch budget
    (`SOFTMARGIN_TRITON_SCRATCH_MB`, default 64), in multiples of 256 labels where it can, at most 2^20."""
    budget = float(os.environ.get(SCRATCH_ENV_VAR, _DEFAULT_SCRATCH_MB)) * 2**20
    labels = max(int(budget // max(rows * bytes_per_element, 1)), 1)
    if labels >= 256:
        labels -= labels % 256
    return min(labels, _MAX_CHUNK_LABELS, max(num_labels, 1))


# --------------------------------------------------------------------------------------------------------
# One chunk: Triton kernel or plain torch
# --------------------------------------------------------------------------------------------------------


def _positive_keys(indptr: Tensor, indices: Tensor) -> tuple[Tensor, int]:
    """(keys, stride): each positive's row·stride + label id, (nnz,) int64, sorted as SparseTargets' rows
    and ids are; stride = 2^(62 - bits of B) keeps row·stride below 2^62 and exceeds every label id of any
    realistic batch (2^49 at B = 8192)."""
    stride = 1 << (62 - (indptr.numel() - 1).bit_length())
    return positive_rows(indptr, indices.numel()) * stride + indices, stride


def _positives_within(keys: Tensor, stride: int, rows: int, lo: int, hi: int) -> tuple[Tensor, Tensor]:
    """(start, stop), (rows,) int64 each: row r's positives with ids in [lo, hi) are indices[start:stop]."""
    first_key = torch.arange(rows, device=keys.device) * stride
    start, stop = torch.searchsorted(keys, torch.stack((first_key + lo, first_key + hi)))
    return start, stop


def _chunk_triton(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor | None,
    positive_keys: tuple[Tensor, int] | None,
    indices: Tensor | None,
    label_weight: Tensor | None,
    pos_weight: Tensor | None,
    row_scale: Tensor | None,
    grad: Tensor | None,
    start: int,
    stop: int,
    label_offset: int,
    out_dtype: torch.dtype,
    label_smoothing: float,
) -> Tensor:
    """Labels [start, stop) through the chunk kernel, which indexes the full (L, ·) operands itself:
    writes `grad` (rows, stop - start) if given and returns the rows' loss over the chunk, (rows,) fp32.
    Sparse positives (`indices` and their _positive_keys) are numbered from `label_offset` at weight's
    row 0; the loss is for out_dtype; the targets are smoothed by `label_smoothing` in the kernel."""
    rows, dim = input.shape
    labels = stop - start
    positives_start = positives_stop = None
    if positive_keys is not None:
        positives_start, positives_stop = _positives_within(
            *positive_keys, rows, label_offset + start, label_offset + stop
        )
    partial = torch.zeros(
        (rows, triton.cdiv(labels, kernels.MIN_BLOCK_L)), dtype=torch.float32, device=input.device
    )
    launch(
        kernels.linear_soft_margin_chunk,
        lambda meta: (triton.cdiv(rows, meta["BLOCK_B"]), triton.cdiv(labels, meta["BLOCK_L"])),
        kernels.HEURISTIC_CONFIG,
        E=input,
        W=weight,
        BIAS=bias,
        Y=target,
        POSITIVES_START=positives_start,
        POSITIVES_STOP=positives_stop,
        INDICES=indices,
        LW=label_weight,
        PW=pos_weight,
        ROW_SCALE=row_scale,
        G=grad,
        PARTIAL=partial,
        B=rows,
        D=dim,
        chunk_labels=labels,
        label_start=start,
        label_id_offset=label_offset,
        label_smoothing=label_smoothing,
        **strides_2d("e", input),
        **strides_2d("w", weight),
        stride_bias=0 if bias is None else bias.stride(0),
        **strides_2d("y", target),
        **strides_2d("lw", label_weight),
        **strides_2d("pw", pos_weight),
        stride_g_row=0 if grad is None else grad.stride(0),
        stride_partial_row=partial.stride(0),
        DOT_PRECISION=dot_precision(input.dtype),
        DOT_IN_FP32=TRITON_INTERPRETED,
        PRECISE=precise_math(input.dtype, out_dtype),
    )
    return partial.sum(dim=1)


def _target_chunk_from_positives(
    rows_of_positives: Tensor, indices: Tensor, rows: int, start: int, stop: int, dtype: torch.dtype
) -> Tensor:
    """The dense (rows, stop - start) 0/1 target of a label chunk, from all positives, without a host sync:
    positives outside the chunk land in a spare column that is cut off."""
    labels = indices.to(torch.int64)
    cols = torch.where((labels >= start) & (labels < stop), labels - start, stop - start)
    chunk = torch.zeros((rows, stop - start + 1), dtype=dtype, device=indices.device)
    chunk[rows_of_positives, cols] = 1
    return chunk[:, : stop - start]


# --------------------------------------------------------------------------------------------------------
# Custom op: the chunk loop
# --------------------------------------------------------------------------------------------------------


def _gradient_chunks(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor | None,
    indptr: Tensor | None,
    indices: Tensor | None,
    label_weight: Tensor | None,
    pos_weight: Tensor | None,
    row_scale: Tensor | None,
    label_offset: int,
    out_dtype: torch.dtype,
    use_triton: bool,
    label_smoothing: float,
    with_grad: bool,
    row_sums: Tensor,
) -> Iterator[tuple[int, int, Tensor | None]]:
    """The chunk loop: for each label chunk [start, stop) sized to the scratch budget, adds the rows'
    weighted loss over it to `row_sums` (R,) and yields (start, stop, G), G the (R, stop - start) gradient
    w.r.t. the chunk's logits (times row_scale) in input's dtype, or None unless with_grad. G's buffer is
    reused by the next chunk. The operands are linear_soft_margin_forward's."""
    rows = input.shape[0]
    num_labels = weight.shape[0]
    # Kernel: one G buffer in input's dtype. Torch: G plus its elementwise temporaries.
    bytes_per_element = (
        input.element_size() if use_triton else _REFERENCE_TEMPORARIES * compute_dtype(input.dtype).itemsize
    )
    chunk = chunk_labels(rows, num_labels, bytes_per_element)
    grad_buffer = input.new_empty((rows, chunk)) if with_grad and use_triton else None
    rows_of_positives = None if indptr is None or use_triton else positive_rows(indptr, indices.numel())
    positive_keys = None if indptr is None or not use_triton else _positive_keys(indptr, indices)
    for start in range(0, num_labels, chunk):
        stop = min(start + chunk, num_labels)
        if use_triton:
            grad = None if grad_buffer is None else grad_buffer[:, : stop - start]
            row_sums += _chunk_triton(
                input,
                weight,
                bias,
                target,
                positive_keys,
                indices,
                label_weight,
                pos_weight,
                row_scale,
                grad,
                start,
                stop,
                label_offset,
                out_dtype,
                label_smoothing,
            )
        else:
            target_chunk = (
                target[:, start:stop]
                if target is not None
                else _target_chunk_from_positives(
                    rows_of_positives, indices, rows, label_offset + start, label_offset + stop, input.dtype
                )
            )
            if label_smoothing:
                # In the compute dtype, as the kernel's FMA: input's 16-bit dtype would round 1 - ε/2.
                target_chunk = target_chunk.to(row_sums.dtype) * (1 - label_smoothing) + label_smoothing / 2
            row_loss, grad = linear_soft_margin_chunk_reference(
                input,
                weight[start:stop],
                None if bias is None else bias[start:stop],
                target_chunk,
                None if label_weight is None else label_weight[:, start:stop],
                None if pos_weight is None else pos_weight[:, start:stop],
                row_scale,
                with_grad,
            )
            row_sums += row_loss
        yield start, stop, grad


@torch.library.custom_op("softmargin_triton::linear_soft_margin_forward", mutates_args=())
def linear_soft_margin_forward(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor | None,
    indptr: Tensor | None,
    indices: Tensor | None,
    label_weight: Tensor | None,
    pos_weight: Tensor | None,
    row_scale: Tensor | None,
    grad_scale: float,
    label_offset: int,
    loss_labels: int,
    input_grad: bool,
    weight_grad: bool,
    bias_grad: bool,
    reduction: str,
    out_dtype: torch.dtype,
    use_triton: bool,
    label_smoothing: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """MLSM loss of the logits input·weightᵀ + bias without forming them, and the gradients asked for.

    input (R, D) float16/bfloat16/float32/float64; weight (L, D) and bias (L,) in input's dtype; the
    target either dense, `target` (R, L) float/integer/bool, or sparse, `indptr` (R+1,) int64 and
    `indices` (nnz,) int32/int64 in SparseTargets' form; label_weight, pos_weight (R, L) broadcast views or
    None; row_scale (R,) contiguous float32 (float64 for float64 input) or None, a per-row factor on the
    gradients. A label shard passes `label_offset`, the id of weight's row 0 among the sparse positives'
    ids, and `loss_labels`, the label count of the whole loss (MLSM averages over it); else 0 and L.
    `label_smoothing` ε in [0, 1) takes every target y as y·(1 − ε) + ε/2 (a sparse target's positives as
    1 − ε/2, the other labels as ε/2), in the compute dtype.
    Returns (loss, grad_input (R, D), grad_weight (L, D), grad_bias (L,)): the loss (R,) for 'none', else
    (), in out_dtype; each gradient, of Σ_rows row_scale·(row's weighted elementwise loss) times
    grad_scale, if asked for, else an empty tensor.
    """
    rows, dim = input.shape
    num_labels = weight.shape[0]
    accumulate_dtype = compute_dtype(input.dtype)
    grad_input = input.new_empty((rows, dim) if input_grad else (0,))
    grad_weight = weight.new_empty((num_labels, dim) if weight_grad else (0,))
    grad_bias = weight.new_empty((num_labels,) if bias_grad else (0,))
    row_sums = torch.zeros(rows, dtype=accumulate_dtype, device=input.device)
    grad_input_sum = (
        torch.zeros((rows, dim), dtype=accumulate_dtype, device=input.device) if input_grad else None
    )
    chunks = _gradient_chunks(
        input,
        weight,
        bias,
        target,
        indptr,
        indices,
        label_weight,
        pos_weight,
        row_scale,
        label_offset,
        out_dtype,
        use_triton,
        label_smoothing,
        input_grad or weight_grad or bias_grad,
        row_sums,
    )
    for start, stop, grad in chunks:
        # grad_scale enters in fp32, as GEMM alpha and on the fp32 sums, never in G itself.
        if input_grad:
            grad_input_sum += grad @ weight[start:stop]
        if weight_grad:
            chunk_grad = grad_weight[start:stop]
            torch.addmm(chunk_grad, grad.T, input, beta=0, alpha=grad_scale, out=chunk_grad)
        if bias_grad:
            grad_bias[start:stop] = grad.sum(dim=0, dtype=accumulate_dtype) * grad_scale
    if input_grad:
        grad_input.copy_(grad_input_sum * grad_scale)
    loss = reduce_row_sums(row_sums, "mlsm", reduction, loss_labels).to(out_dtype)
    return loss, grad_input, grad_weight, grad_bias


@linear_soft_margin_forward.register_fake
def _(input, weight, bias, target, indptr, indices, label_weight, pos_weight, row_scale, grad_scale, *flags):
    _, _, input_grad, weight_grad, bias_grad, reduction, out_dtype, _, _ = flags
    rows, dim = input.shape
    num_labels = weight.shape[0]
    return (
        input.new_empty((rows,) if reduction == "none" else (), dtype=out_dtype),
        input.new_empty((rows, dim) if input_grad else (0,)),
        weight.new_empty((num_labels, dim) if weight_grad else (0,)),
        weight.new_empty((num_labels,) if bias_grad else (0,)),
    )


@torch.library.custom_op(
    "softmargin_triton::linear_soft_margin_sgd_backward",
    mutates_args=(
        "weight",
        "bias",
        "weight_momentum",
        "bias_momentum",
        "weight_master",
        "bias_master",
        "weight_second_moment",
        "bias_second_moment",
    ),
)
def linear_soft_margin_sgd_backward(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor | None,
    indptr: Tensor | None,
    indices: Tensor | None,
    label_weight: Tensor | None,
    pos_weight: Tensor | None,
    row_scale: Tensor,
    input_grad: bool,
    bias_step: bool,
    use_triton: bool,
    label_smoothing: float,
    settings: list[float],
    weight_momentum: Tensor | None,
    bias_momentum: Tensor | None,
    weight_master: Tensor | None,
    bias_master: Tensor | None,
    weight_second_moment: Tensor | None,
    bias_second_moment: Tensor | None,
    rounding_stream: int,
) -> Tensor:
    """The backward of the fused linear loss under FusedClassifierSGD: grad_input, and a step of weight and
    bias in place, chunk by chunk, from the gradient of Σ_rows row_scale·(row's weighted elementwise loss);
    the (L, D) weight gradient is never formed.

    Operands as linear_soft_margin_forward's (whole classifier, no label shard); row_scale (R,) is
    grad_output times the reduction's factor. `settings` are a fused_sgd.StepSettings as a list, the
    tensors after it a fused_sgd.StepBuffers ((L, D) and (L,) float32 or None); `rounding_stream` the
    step's stochastic rounding key, or -1 to round to nearest. Each chunk's share of grad_input uses the
    chunk's weights before its step; the bias steps only where bias_step (else it is frozen). Returns
    grad_input (R, D) in input's dtype, or an empty tensor unless input_grad.
    """
    rows, dim = input.shape
    accumulate_dtype = compute_dtype(input.dtype)
    grad_input_sum = (
        torch.zeros((rows, dim), dtype=accumulate_dtype, device=input.device) if input_grad else None
    )
    step_settings = StepSettings(*settings)
    buffers = StepBuffers(
        weight_momentum, bias_momentum, weight_master, bias_master, weight_second_moment, bias_second_moment
    )
    row_adaptive_kernel = use_triton and weight_second_moment is not None
    gram = None
    if row_adaptive_kernel:
        features = input.to(accumulate_dtype)
        gram = features @ features.T
    chunks = _gradient_chunks(
        input,
        weight,
        bias,
        target,
        indptr,
        indices,
        label_weight,
        pos_weight,
        row_scale,
        0,
        input.dtype,
        use_triton,
        label_smoothing,
        True,
        torch.zeros(rows, dtype=accumulate_dtype, device=input.device),
    )
    for start, stop, grad in chunks:
        if input_grad:
            grad_input_sum += grad @ weight[start:stop]
        sgd_update_chunk_(
            grad,
            input,
            gram,
            weight,
            bias if bias_step else None,
            step_settings,
            buffers,
            None if rounding_stream < 0 else rounding_stream,
            start,
            stop,
            chunk_labels(max(rows, dim), stop - start, STEP_TEMPORARIES * 8),
            use_triton,
        )
    return grad_input_sum.to(input.dtype) if input_grad else input.new_empty((0,))


@linear_soft_margin_sgd_backward.register_fake
def _(input, weight, bias, target, indptr, indices, label_weight, pos_weight, row_scale, input_grad, *rest):
    return input.new_empty(input.shape if input_grad else (0,))


# --------------------------------------------------------------------------------------------------------
# Autograd
# --------------------------------------------------------------------------------------------------------


class LinearSoftMarginFunction(torch.autograd.Function):
    """Gradients for input, weight and bias; callers route targets and weights that need one elsewhere.

    The target is `target` (R, L) or the positives `indptr`, `indices`; `label_offset` and `loss_labels`
    place a label shard in the whole loss, `label_smoothing` smooths the targets (see the op; a checked
    ε, 0 by default). 'mean' and 'sum' in bf16/fp32
    compute the gradients in the forward and scale them in the backward. 'none', and fp16 (whose unscaled
    gradients could overflow, and scaled ones underflow before a GradScaler's factor arrives), recompute
    in the backward with grad_output · the reduction's factor as each row's factor, as torch's G holds it.
    With `fused_sgd` the forward computes the loss only and the backward recomputes the chunks, steps the
    classifier with them (linear_soft_margin_sgd_backward) and returns no weight or bias gradient.
    """

    @staticmethod
    def forward(
        ctx,
        input,
        weight,
        bias,
        target,
        indptr,
        indices,
        label_weight,
        pos_weight,
        reduction,
        out_dtype,
        use_triton,
        grad_enabled,
        label_offset,
        loss_labels,
        label_smoothing=0.0,
        fused_sgd=None,
    ):
        operands = (input, weight, bias, target, indptr, indices, label_weight, pos_weight)
        ctx.reduction, ctx.out_dtype, ctx.use_triton = reduction, out_dtype, use_triton
        ctx.labels = (label_offset, loss_labels)
        ctx.label_smoothing = label_smoothing
        ctx.fused_sgd = fused_sgd
        needs = tuple(
            grad_enabled and need and t is not None
            for t, need in zip((input, weight, bias), ctx.needs_input_grad[:3], strict=True)
        )
        ctx.needs = needs
        ctx.recompute = reduction == "none" or input.dtype == torch.float16 or fused_sgd is not None
        scale = reduction_grad_scale("mlsm", reduction, input.shape[0], loss_labels)
        ctx.scale = scale
        wants = (False, False, False) if ctx.recompute else needs
        loss, *grads = linear_soft_margin_forward(
            *operands, None, scale, *ctx.labels, *wants, reduction, out_dtype, use_triton, label_smoothing
        )
        if ctx.recompute:
            ctx.save_for_backward(*operands)
        else:
            ctx.save_for_backward(*(grad if want else None for grad, want in zip(grads, wants, strict=True)))
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        # Checked here: once_differentiable runs the body under no_grad, where create_graph cannot be seen.
        if ctx.fused_sgd is not None and torch.is_grad_enabled():
            raise RuntimeError(
                "FusedClassifierSGD steps the classifier inside the backward, which cannot build a graph "
                "for a higher-order gradient: call backward without create_graph=True"
            )
        return _linear_soft_margin_backward(ctx, grad_loss)


@torch.autograd.function.once_differentiable
def _linear_soft_margin_backward(ctx, grad_loss):
    """LinearSoftMarginFunction's backward."""
    if not ctx.recompute:
        # In place, so a second backward through the same graph fails autograd's version check.
        grads = ctx.saved_tensors
        for grad in grads:
            if grad is not None and grad.numel() > 0:
                soft_margin_scale_grad_(grad.view(-1, grad.shape[-1]), grad_loss, 1.0, ctx.use_triton)
        return (*grads, *[None] * 13)
    # A second backward through the graph fails here: the step bumped the saved weight's version.
    operands = ctx.saved_tensors
    input = operands[0]
    row_dtype = compute_dtype(input.dtype)
    row_scale = (grad_loss.to(row_dtype) * ctx.scale).expand(input.shape[0]).contiguous()
    if ctx.fused_sgd is not None:
        settings, buffers, stream = ctx.fused_sgd.begin_step()
        grad_input = linear_soft_margin_sgd_backward(
            *operands,
            row_scale,
            ctx.needs[0],
            ctx.needs[2],
            ctx.use_triton,
            ctx.label_smoothing,
            list(settings),
            *buffers,
            -1 if stream is None else stream,
        )
        return (grad_input if ctx.needs[0] else None, *[None] * 15)
    _, *grads = linear_soft_margin_forward(
        *operands,
        row_scale,
        1.0,
        *ctx.labels,
        *ctx.needs,
        "none",
        ctx.out_dtype,
        ctx.use_triton,
        ctx.label_smoothing,
    )
    grads = [grad if need else None for grad, need in zip(grads, ctx.needs, strict=True)]
    return (*grads, *[None] * 13)


# --------------------------------------------------------------------------------------------------------
# Functional API and module
# --------------------------------------------------------------------------------------------------------


def _broadcasts_to(shape: torch.Size, target: tuple[int, ...]) -> bool:
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False


def autocast_operands(
    input: Tensor, weight: Tensor, bias: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Under autocast, the GEMM's operands in the autocast dtype as F.linear would take them (float64 left
    alone); the loss then follows the logits' dtype, as torch's loss on F.linear's logits would."""
    if not torch.is_autocast_enabled(input.device.type):
        return input, weight, bias
    dtype = torch.get_autocast_dtype(input.device.type)
    cast = lambda t: t.to(dtype) if t is not None and t.dtype != torch.float64 else t
    return cast(input), cast(weight), cast(bias)


def check_operands(
    input: Tensor,
    weight: Tensor,
    target: Tensor | SparseTargets,
    bias: Tensor | None,
    label_weight: Tensor | None,
    pos_weight: Tensor | None,
    num_labels: int,
    weight_name: str = "weight",
) -> torch.dtype:
    """Raises on operands that disagree in shape, dtype or device; returns the loss's dtype. `weight` and
    `bias` may be a shard of the num_labels labels (named `weight_name` in messages)."""
    bias_name = weight_name.replace("weight", "bias")
    if input.dim() < 1 or weight.dim() != 2 or input.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"input (..., D) and {weight_name} (L, D) disagree: input {tuple(input.shape)}, "
            f"{weight_name} {tuple(weight.shape)}"
        )
    if (
        input.dtype not in FLOAT_DTYPES
        or weight.dtype != input.dtype
        or (bias is not None and bias.dtype != input.dtype)
    ):
        raise TypeError(
            f"input, {weight_name} and {bias_name} must share one floating dtype, got "
            f"{input.dtype}, {weight.dtype}{'' if bias is None else f', {bias.dtype}'}"
        )
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"{bias_name} must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    shape = (*input.shape[:-1], num_labels)
    for name, operand in (
        (weight_name, weight),
        (bias_name, bias),
        ("target", target),
        ("label_weight", label_weight),
        ("pos_weight", pos_weight),
    ):
        if operand is not None and operand.device != input.device:
            raise RuntimeError(f"{name} is on {operand.device}, input on {input.device}")
    if tuple(target.shape) != shape:
        raise ValueError(f"target of shape {tuple(target.shape)} does not match the logits' shape {shape}")
    for name, operand in (("label_weight", label_weight), ("pos_weight", pos_weight)):
        if operand is not None and not _broadcasts_to(operand.shape, shape):
            raise ValueError(
                f"{name} of shape {tuple(operand.shape)} cannot broadcast to the logits' {shape}"
            )
    out_dtype = (
        input.dtype if isinstance(target, SparseTargets) else torch.promote_types(input.dtype, target.dtype)
    )
    if label_weight is not None and label_weight.dim() > 0:
        out_dtype = torch.promote_types(out_dtype, label_weight.dtype)
    return out_dtype


def linear_multilabel_soft_margin_loss(
    input: Tensor,
    weight: Tensor,
    target: Tensor | SparseTargets,
    bias: Tensor | None = None,
    *,
    label_weight: Tensor | None = None,
    pos_weight: Tensor | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    fused_sgd: FusedClassifierSGD | None = None,
) -> Tensor:
    """`multilabel_soft_margin_loss(F.linear(input, weight, bias), target, weight=label_weight)` without
    ever forming the (..., L) logits, nor their gradient.

    Args:
        input: (..., D) float16/bfloat16/float32/float64 features.
        weight: (L, D) classifier, input's dtype.
        target: (..., L) float/integer/bool, or a SparseTargets of shape (N, L) for a (N, D) input.
        bias: (L,) or None.
        label_weight: weight of each term, broadcastable to (..., L) (MLSM's `weight`).
        pos_weight: weight of the positive term, broadcastable to (..., L), as in BCEWithLogitsLoss.
        reduction: 'none' → input.shape[:-1]; 'mean' / 'sum' → ().
        label_smoothing: ε in [0, 1): the loss against targets y·(1 − ε) + ε/2 (Keras' BinaryCrossentropy),
            formed from each loaded target in fp32, never as a (..., L) tensor; a SparseTargets' positives
            at 1 − ε/2 and every other label at ε/2.
        fused_sgd: the FusedClassifierSGD that owns `weight` and `bias`: the backward then takes its step
            on them chunk by chunk instead of returning their gradients (softmargin_triton/fused_sgd.py says
            what that means). Used only with grad enabled and a weight that requires grad.

    Returns:
        The loss, in the type promotion of input, target (input's dtype for SparseTargets) and label_weight.
        Gradients flow to input, weight and bias. Memory beyond the outputs: one (N, L_c) gradient chunk,
        L_c chosen so that it fits `SOFTMARGIN_TRITON_SCRATCH_MB` (default 64), plus an fp32 (N, D) sum.
    """
    reduction = resolve_reduction(None, None, reduction)
    label_smoothing = check_label_smoothing(label_smoothing)
    if fused_sgd is not None and not (torch.is_grad_enabled() and weight.requires_grad):
        if torch.is_grad_enabled() and bias is not None and bias.requires_grad:
            raise ValueError(
                "FusedClassifierSGD steps the weight and its bias together: freeze the bias with the weight"
            )
        fused_sgd = None  # nothing will be stepped
    if fused_sgd is not None:
        check_owner(fused_sgd, weight, bias)
        if torch.compiler.is_compiling():
            # Its backward counts steps and updates the optimizer's state in Python, which a traced graph
            # would replay as constants.
            raise RuntimeError(
                "a head stepped by FusedClassifierSGD runs eagerly: compile the encoder, or wrap the head's "
                "call in torch.compiler.disable"
            )
    classifier = weight
    input, weight, bias = autocast_operands(input, weight, bias)
    if fused_sgd is not None and weight is not classifier:
        raise TypeError(
            f"autocast would run the classifier as a {weight.dtype} copy, which FusedClassifierSGD cannot "
            f"step: keep the {classifier.dtype} classifier in the autocast dtype"
        )
    num_labels = weight.shape[0]
    out_dtype = check_operands(input, weight, target, bias, label_weight, pos_weight, num_labels)
    shape = (*input.shape[:-1], num_labels)
    sparse = isinstance(target, SparseTargets)

    rows = math.prod(input.shape[:-1])
    label_weight_rows = (
        None if label_weight is None else rows_view(label_weight, torch.Size(shape), num_labels)
    )
    pos_weight_rows = None if pos_weight is None else rows_view(pos_weight, torch.Size(shape), num_labels)
    target_rows = target if sparse else rows_view(target, torch.Size(shape), num_labels)
    differentiable = [t for t in (label_weight, pos_weight, None if sparse else target) if t is not None]
    if (
        math.prod(shape) == 0
        or input.shape[-1] == 0
        or (torch.is_grad_enabled() and any(t.requires_grad for t in differentiable))
        or (label_weight is not None and label_weight_rows is None)
        or (pos_weight is not None and pos_weight_rows is None)
        or target_rows is None
    ):
        # Gradients for the target or weights, an empty problem, or a target or weights with leading
        # dimensions that no (rows, L) view can express: torch's own path over the logits.
        if fused_sgd is not None:
            raise ValueError(
                "FusedClassifierSGD needs the chunked path: no gradient for the target or weights, a "
                "non-empty problem and targets and weights that view as (rows, L)"
            )
        logits = F.linear(input, weight, bias)
        dense = target.to_dense(input.dtype) if sparse else target
        if label_smoothing:
            # Smoothed targets and the loss in at least fp32, as the chunk loop's (a 16-bit 1 - ε/2 would
            # round); the loss is cast back to out_dtype.
            dtype = torch.promote_types(out_dtype, torch.float32)
            logits = logits.to(dtype)
            dense = dense.to(dtype) * (1 - label_smoothing) + label_smoothing / 2
        if pos_weight is None:
            return multilabel_soft_margin_loss(logits, dense, label_weight, reduction=reduction).to(out_dtype)
        terms = F.binary_cross_entropy_with_logits(
            logits, dense.to(logits.dtype), label_weight, reduction="none", pos_weight=pos_weight
        )
        return reduce_row_sums(terms.sum(dim=-1), "mlsm", reduction, num_labels).to(out_dtype)

    with torch.autocast(input.device.type, enabled=False):  # the chunk loop picks its own precisions
        loss = LinearSoftMarginFunction.apply(
            input.reshape(rows, input.shape[-1]),
            weight,
            bias,
            None if sparse else target_rows,
            target.indptr if sparse else None,
            target.indices if sparse else None,
            label_weight_rows,
            pos_weight_rows,
            reduction,
            out_dtype,
            use_triton_for(input) and input.dtype != torch.float64,  # the kernel computes in fp32
            torch.is_grad_enabled(),
            0,
            num_labels,
            label_smoothing,
            fused_sgd,
        )
    return loss.view(input.shape[:-1]) if reduction == "none" else loss


def merge_topk(values: Tensor, labels: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k best of candidate (values, labels) pairs along the last dimension, best first."""
    values, order = values.topk(k, dim=-1)
    return values, labels.gather(-1, order)


@torch.no_grad()
def streaming_topk(input: Tensor, weight: Tensor, bias: Tensor | None, k: int) -> tuple[Tensor, Tensor]:
    """The min(k, L) largest logits input·weightᵀ + bias of each row and their label ids (rows of weight),
    (..., min(k, L)) each, best first, over label chunks of the scratch budget: (..., L) is never held."""
    num_labels = weight.shape[0]
    k = min(k, num_labels)
    rows = math.prod(input.shape[:-1])
    chunk = max(chunk_labels(rows, num_labels, 4), k)  # one fp32-sized logits chunk
    best_values = input.new_empty((*input.shape[:-1], 0))
    best_labels = best_values.new_empty(best_values.shape, dtype=torch.int64)
    for start in range(0, num_labels, chunk):
        stop = min(start + chunk, num_labels)
        chunk_bias = None if bias is None else bias[start:stop]
        values, labels = F.linear(input, weight[start:stop], chunk_bias).topk(min(k, stop - start), dim=-1)
        best_values, best_labels = merge_topk(
            torch.cat([best_values, values], -1), torch.cat([best_labels, labels + start], -1), k
        )
    return best_values, best_labels


class LinearMultiLabelSoftMarginLoss(nn.Module):
    """A linear classifier over `num_labels` labels with the fused MLSM loss as its training objective.

    `forward(input, target)` returns the loss of `input` (..., in_features) against `target` (dense
    (..., num_labels) or SparseTargets) without forming the logits; `logits(input)` and the streaming
    `topk(input, k)` serve inference. `fused_optimizer` is the FusedClassifierSGD attached to the head
    (it attaches itself), which steps the classifier in the backward of a loss computed in training mode.
    """

    def __init__(
        self,
        in_features: int,
        num_labels: int,
        bias: bool = True,
        *,
        label_weight: Tensor | None = None,
        pos_weight: Tensor | None = None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.num_labels, self.reduction = in_features, num_labels, reduction
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self.weight = nn.Parameter(torch.empty((num_labels, in_features), device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(num_labels, device=device, dtype=dtype)) if bias else None
        self.register_buffer("label_weight", label_weight)
        self.register_buffer("pos_weight", pos_weight)
        self.fused_optimizer: FusedClassifierSGD | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's initialization."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Tensor, target: Tensor | SparseTargets) -> Tensor:
        return linear_multilabel_soft_margin_loss(
            input,
            self.weight,
            target,
            self.bias,
            label_weight=self.label_weight,
            pos_weight=self.pos_weight,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            fused_sgd=self.fused_optimizer if self.training else None,
        )

    def logits(self, input: Tensor) -> Tensor:
        """The full (..., num_labels) logits; for small label counts or a slice of the batch."""
        return F.linear(input, self.weight, self.bias)

    def topk(self, input: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """The k largest logits of each row and their label ids, (..., k) each, best first, computed over
        label chunks of the scratch budget: the (..., num_labels) logits are never held."""
        if not 0 < k <= self.num_labels:
            raise ValueError(f"k must be in [1, num_labels={self.num_labels}], got {k}")
        return streaming_topk(input, self.weight, self.bias, k)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_labels={self.num_labels}, bias={self.bias is not None}, "
            f"reduction={self.reduction!r}, label_smoothing={self.label_smoothing}"
        )
