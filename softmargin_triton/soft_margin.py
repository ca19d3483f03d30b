"""Fused multi-label soft-margin and BCE-with-logits losses: PyTorch's semantics, one pass over the logits.

Layers, bottom up:
1. `soft_margin_forward` (dense targets, or the positives of a binary target as compressed rows) and
   `soft_margin_scale_grad_`: torch.library custom ops over a (R, C) view that write into preallocated
   buffers; each runs the Triton kernels or the plain-torch reference.
2. `_SoftMarginFunction`: autograd. The forward writes the gradient of the reduced loss; the backward only
   scales it by grad_output, in place, and moves no bytes when grad_output is 1.
3. `multilabel_soft_margin_loss` / `binary_cross_entropy_with_logits`: torch's signatures. They validate,
   view the operands as (R, C) without copying, and send what the fused path cannot serve (a target or
   weight that needs a gradient, a broadcasting target, layouts with no (R, C) view, empty inputs) to
   torch's own function.
4. `MultiLabelSoftMarginLoss` / `BCEWithLogitsLoss`: the torch modules with `forward` overridden.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from softmargin_triton.backend import TRITON_IMPORT_ERROR, use_triton_for
from softmargin_triton.common import (
    FLOAT_DTYPES,
    compute_dtype,
    launch,
    precise_math,
    resolve_reduction,
    rows_view,
    strides_2d,
)
from softmargin_triton.reference import (
    LossForm,
    reduce_row_sums,
    reduction_grad_scale,
    soft_margin_reference,
)
from softmargin_triton.sparse_targets import SparseTargets, positives_to_dense

if TRITON_IMPORT_ERROR is None:
    import triton

    from softmargin_triton.kernels import soft_margin as kernels

__all__ = [
    "BCEWithLogitsLoss",
    "MultiLabelSoftMarginLoss",
    "binary_cross_entropy_with_logits",
    "multilabel_soft_margin_loss",
]

_INTEGER_TARGET_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


# --------------------------------------------------------------------------------------------------------
# Launchers (Triton)
# --------------------------------------------------------------------------------------------------------


def _tile_grid(rows: int, num_spans: int):
    return lambda meta: (triton.cdiv(rows, meta["BLOCK_R"]), num_spans)


def _forward_outputs(
    input: Tensor, loss_form: LossForm, reduction: str, out_dtype: torch.dtype
) -> tuple[Tensor | None, Tensor | None]:
    """(elementwise loss, per-(row, span) partial sums): the forward kernel's outputs, one of them None."""
    rows, cols = input.shape
    if loss_form == "bce" and reduction == "none":
        return input.new_empty((rows, cols), dtype=out_dtype), None
    partial_dtype = compute_dtype(input.dtype)
    return None, input.new_empty((rows, triton.cdiv(cols, kernels.span_for(cols))), dtype=partial_dtype)


def _launch_forward(
    input: Tensor,
    target: Tensor | None,
    indptr: Tensor | None,
    indices: Tensor | None,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    grad: Tensor | None,
    loss: Tensor | None,
    partial: Tensor | None,
    grad_scale: float,
    loss_form: LossForm,
    out_dtype: torch.dtype,
) -> None:
    """The tiled forward kernel, over a dense target or the positives indptr/indices."""
    rows, cols = input.shape
    span = kernels.span_for(cols)
    launch(
        kernels.soft_margin_forward_into_logits if grad is input else kernels.soft_margin_forward,
        _tile_grid(rows, triton.cdiv(cols, span)),
        kernels.HEURISTIC_CONFIG,
        X=input,
        Y=target,
        INDPTR=indptr,
        INDICES=indices,
        W=weight,
        PW=pos_weight,
        GRAD=grad,
        LOSS=loss,
        PARTIAL=partial,
        R=rows,
        C=cols,
        **strides_2d("x", input),
        **strides_2d("y", target),
        **strides_2d("w", weight),
        **strides_2d("pw", pos_weight),
        **strides_2d("grad", grad),
        grad_scale=grad_scale,
        SPAN=span,
        MLSM_FORM=loss_form == "mlsm",
        PRECISE=precise_math(input.dtype, out_dtype),
    )


def _soft_margin_forward_triton(
    input: Tensor,
    target: Tensor | None,
    indptr: Tensor | None,
    indices: Tensor | None,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    grad: Tensor | None,
    grad_scale: float,
    loss_form: LossForm,
    reduction: str,
    out_dtype: torch.dtype,
) -> Tensor:
    loss, partial = _forward_outputs(input, loss_form, reduction, out_dtype)
    _launch_forward(
        input,
        target,
        indptr,
        indices,
        weight,
        pos_weight,
        grad,
        loss,
        partial,
        grad_scale,
        loss_form,
        out_dtype,
    )
    if loss is not None:
        return loss
    # The partials are R × cdiv(C, 8192) numbers: reducing them in torch is deterministic and cheap.
    return reduce_row_sums(partial.sum(dim=1), loss_form, reduction, input.shape[1]).to(out_dtype)


def _soft_margin_scale_grad_triton(grad: Tensor, grad_output: Tensor, scale: float) -> None:
    rows, cols = grad.shape
    span = kernels.span_for(cols)
    launch(
        kernels.soft_margin_scale_grad,
        _tile_grid(rows, triton.cdiv(cols, span)),
        kernels.HEURISTIC_CONFIG,
        GRAD=grad,
        GRAD_OUTPUT=grad_output,
        R=rows,
        C=cols,
        **strides_2d("grad", grad),
        **strides_2d("go", grad_output),
        scale=scale,
        SPAN=span,
    )


# --------------------------------------------------------------------------------------------------------
# Custom ops: Triton kernels or the torch reference, traceable by torch.compile
# --------------------------------------------------------------------------------------------------------


@torch.library.custom_op("softmargin_triton::soft_margin_forward", mutates_args=("grad",))
def soft_margin_forward(
    input: Tensor,
    target: Tensor | None,
    indptr: Tensor | None,
    indices: Tensor | None,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    grad: Tensor,
    grad_scale: float,
    loss_form: str,
    reduction: str,
    out_dtype: torch.dtype,
    use_triton: bool,
) -> Tensor:
    """Reduced sigmoid-BCE loss of a (R, C) problem; writes d(elementwise loss)/d(input) · grad_scale
    into `grad` unless it is empty.

    input (R, C) float16/bfloat16/float32/float64 logits; the target either dense, `target` (R, C) float,
    integer or bool, or binary with its positives as `indptr` (R+1,) int64 and `indices` (nnz,) int32/int64
    in SparseTargets' form (the kernel builds no (R, C) target); weight and pos_weight (R, C) broadcast
    views or None; grad (R, C) in input's dtype, may be `input` itself, or an empty tensor for no
    gradient (not None: Inductor cannot functionalize a mutable argument that is None).
    loss_form "mlsm" or "bce"; reduction "none", "mean" or "sum". Returns (R,) for MLSM 'none',
    (R, C) for BCE 'none', else (), in out_dtype.
    """
    if grad.numel() == 0:
        grad = None
    if use_triton:
        return _soft_margin_forward_triton(
            input,
            target,
            indptr,
            indices,
            weight,
            pos_weight,
            grad,
            grad_scale,
            loss_form,
            reduction,
            out_dtype,
        )
    if target is None:  # the reference computes elementwise over (R, C) anyway: 1 more byte per element
        target = positives_to_dense(indptr, indices, input.shape[1], torch.uint8)
    loss, reference_grad = soft_margin_reference(
        input,
        target,
        weight,
        pos_weight,
        loss_form,
        reduction,
        out_dtype,
        None if grad is None else grad_scale,
    )
    if grad is not None:
        grad.copy_(reference_grad)
    return loss


@soft_margin_forward.register_fake
def _(
    input,
    target,
    indptr,
    indices,
    weight,
    pos_weight,
    grad,
    grad_scale,
    loss_form,
    reduction,
    out_dtype,
    use_triton,
):
    rows, cols = input.shape
    shape = {"none": (rows,) if loss_form == "mlsm" else (rows, cols)}.get(reduction, ())
    return input.new_empty(shape, dtype=out_dtype)


@torch.library.custom_op("softmargin_triton::soft_margin_scale_grad_", mutates_args=("grad",))
def soft_margin_scale_grad_(grad: Tensor, grad_output: Tensor, scale: float, use_triton: bool) -> None:
    """grad *= grad_output · scale in place; grad (R, C), grad_output broadcastable to it (a scalar,
    (R, 1) or (R, C)). The Triton kernel skips every element where that factor is exactly 1, deciding on
    the device.
    """
    if use_triton:
        _soft_margin_scale_grad_triton(grad, grad_output.expand(grad.shape), scale)
    else:
        grad.mul_(grad_output * scale)


@soft_margin_scale_grad_.register_fake
def _(grad, grad_output, scale, use_triton):
    return None


# --------------------------------------------------------------------------------------------------------
# Autograd
# --------------------------------------------------------------------------------------------------------


class _SoftMarginFunction(torch.autograd.Function):
    """Gradient for the logits only; callers route targets and weights that need one to torch.

    target is a (R, C) tensor or a SparseTargets of shape (R, C).
    """

    @staticmethod
    def forward(
        ctx, input, target, weight, pos_weight, loss_form, reduction, out_dtype, use_triton, grad_mode
    ):
        # grad_mode: None (no gradient wanted), "new" (a fresh buffer) or "in_place" (over the logits).
        grad = input.new_empty(0)
        if grad_mode is not None:
            grad = input if grad_mode == "in_place" else torch.empty_like(input)
        scale = reduction_grad_scale(loss_form, reduction, *input.shape)
        # fp16 cannot hold (σ - y)·w / numel: store it unscaled and apply the factor with grad_output
        # (a GradScaler's large one included) in the backward, as torch does. Other dtypes fold it in.
        forward_scale, ctx.backward_scale = (1.0, scale) if input.dtype == torch.float16 else (scale, 1.0)
        sparse = isinstance(target, SparseTargets)
        loss = soft_margin_forward(
            input,
            None if sparse else target,
            target.indptr if sparse else None,
            target.indices if sparse else None,
            weight,
            pos_weight,
            grad,
            forward_scale,
            loss_form,
            reduction,
            out_dtype,
            use_triton,
        )
        ctx.save_for_backward(grad)
        ctx.use_triton = use_triton
        ctx.per_row = loss_form == "mlsm" and reduction == "none"
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        # The scale is in place, so a second backward through the same graph (retain_graph=True) fails
        # autograd's saved-tensor version check instead of scaling twice.
        (grad,) = ctx.saved_tensors
        grad_output = grad_loss[:, None] if ctx.per_row else grad_loss
        soft_margin_scale_grad_(grad, grad_output, ctx.backward_scale, ctx.use_triton)
        return grad, None, None, None, None, None, None, None, None


# --------------------------------------------------------------------------------------------------------
# Functional API
# --------------------------------------------------------------------------------------------------------


def _check_logits(name: str, input: Tensor) -> None:
    if not input.is_floating_point():
        # torch raises NotImplementedError from log_sigmoid here; keep the class, name the problem.
        raise NotImplementedError(f"{name}: input must hold floating-point logits, got dtype {input.dtype}")


def _check_sparse_target(name: str, input: Tensor, target: SparseTargets) -> None:
    if target.shape != input.shape:
        raise ValueError(
            f"{name}: SparseTargets of shape {tuple(target.shape)} needs input of that "
            f"shape, got {tuple(input.shape)}"
        )
    if target.device != input.device:
        raise RuntimeError(f"{name}: SparseTargets on {target.device}, input on {input.device}")


def _broadcast_operand(name: str, operand: Tensor, shape: torch.Size) -> None:
    """Raise torch's RuntimeError, naming the operand, if it cannot broadcast with the input."""
    try:
        torch.broadcast_shapes(operand.shape, shape)
    except RuntimeError as error:
        raise RuntimeError(
            f"{name} of shape {tuple(operand.shape)} cannot broadcast with input of shape {tuple(shape)}"
        ) from error


def _fused(
    loss_form: LossForm,
    input: Tensor,
    target: Tensor | SparseTargets,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    reduction: str,
    out_dtype: torch.dtype,
    grad_into_input: bool,
) -> Tensor | None:
    """The loss through the fused op, or None where that cannot serve the call exactly."""
    sparse = isinstance(target, SparseTargets)
    weights = [t for t in (weight, pos_weight) if t is not None]
    differentiable = weights if sparse else [target, *weights]
    if (
        input.numel() == 0
        or input.dtype not in FLOAT_DTYPES
        or target.shape != input.shape
        or not (sparse or target.dtype in FLOAT_DTYPES or target.dtype in _INTEGER_TARGET_DTYPES)
        or any(t.device != input.device for t in [target, *weights])
        or any(t.dtype not in FLOAT_DTYPES for t in weights)
        or (torch.is_grad_enabled() and any(t.requires_grad for t in differentiable))
    ):
        return None
    shape = input.shape
    cols = shape[-1] if input.dim() > 0 else 1
    for t in weights:
        if torch.broadcast_shapes(t.shape, shape) != shape:  # a weight that broadcasts beyond the input
            return None
    input_rows = rows_view(input, shape, cols)
    target_rows = target if sparse else rows_view(target, shape, cols)  # sparse: input is (R, C) already
    weight_rows = None if weight is None else rows_view(weight, shape, cols)
    pos_weight_rows = None if pos_weight is None else rows_view(pos_weight, shape, cols)
    if input_rows is None or target_rows is None:
        return None
    if (weight is not None and weight_rows is None) or (pos_weight is not None and pos_weight_rows is None):
        return None
    use_triton = use_triton_for(input)
    grad_mode = None
    if torch.is_grad_enabled() and input.requires_grad:
        # In place only over memory where every element is its own: a contiguous buffer.
        grad_mode = "in_place" if grad_into_input and input_rows.is_contiguous() else "new"
    loss = _SoftMarginFunction.apply(
        input_rows,
        target_rows,
        weight_rows,
        pos_weight_rows,
        loss_form,
        reduction,
        out_dtype,
        use_triton,
        grad_mode,
    )
    if reduction != "none":
        return loss
    return loss.view(shape[:-1] if loss_form == "mlsm" else shape)


def _promote(dtype: torch.dtype, operand: Tensor) -> torch.dtype:
    # torch's rule for `loss * operand`: a 0-dim float operand does not widen a float loss.
    return dtype if operand.dim() == 0 else torch.promote_types(dtype, operand.dtype)


def multilabel_soft_margin_loss(
    input: Tensor,
    target: Tensor | SparseTargets,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    *,
    grad_into_input: bool = False,
) -> Tensor:
    """`torch.nn.functional.multilabel_soft_margin_loss`, fused: one pass over the logits.

    Args:
        input: (C,), (N, C) or (..., C) float16/bfloat16/float32/float64 logits.
        target: input's shape; float (soft or outside [0, 1] too), integer, or (extensions) bool/uint8
            at 1 byte per element, or a `SparseTargets` of input's (N, C) shape — the binary target's
            positive labels, with no (N, C) target ever built.
        weight: per-class or per-element weight broadcastable to input: (C,), (1, C), (N, C), (N, 1), ().
        size_average, reduce: deprecated, as in torch (with its warning).
        reduction: 'none' → input.shape[:-1]; 'mean' / 'sum' → ().
        grad_into_input: write the gradient over `input`'s memory instead of a new buffer (no extra
            B×L allocation) when `input` is contiguous and needs a gradient; `input` then holds the
            gradient, not the logits, after the call. Off by default.

    Returns:
        The loss in the type promotion of input, target and weight, as torch (a SparseTargets counts as
        a target of input's dtype).
    """
    reduction = resolve_reduction(size_average, reduce, reduction)
    _check_logits("multilabel_soft_margin_loss", input)
    if weight is not None:
        _broadcast_operand("weight", weight, input.shape)
    if isinstance(target, SparseTargets):
        _check_sparse_target("multilabel_soft_margin_loss", input, target)
    target_dtype = input.dtype if isinstance(target, SparseTargets) else target.dtype
    out_dtype = torch.promote_types(input.dtype, target_dtype)
    if weight is not None:
        out_dtype = _promote(out_dtype, weight)
    if input.dim() > 0:
        loss = _fused("mlsm", input, target, weight, None, reduction, out_dtype, grad_into_input)
        if loss is not None:
            return loss
    if isinstance(target, SparseTargets):  # calls the fused op cannot serve (see _fused) go dense
        target = target.to_dense(input.dtype)
    if target.dtype == torch.bool:  # torch has no `1 - bool`; the value is the same as a 0/1 float target
        target = target.to(out_dtype)
    return F.multilabel_soft_margin_loss(input, target, weight, reduction=reduction)


def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor | SparseTargets,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    pos_weight: Tensor | None = None,
    *,
    grad_into_input: bool = False,
) -> Tensor:
    """`torch.nn.functional.binary_cross_entropy_with_logits`, fused: one pass over the logits.

    Args:
        input: any shape, float16/bfloat16/float32/float64 logits.
        target: input's shape; float, or (extensions) bool/uint8 at 1 byte per element, or a
            `SparseTargets` of input's (N, C) shape — the binary target's positive labels, with no
            (N, C) target ever built.
        weight: broadcastable to input.
        size_average, reduce: deprecated, as in torch (with its warning).
        reduction: 'none' → input's shape; 'mean' (over all elements) / 'sum' → ().
        pos_weight: weight of the positive term, broadcastable to input (typically (C,)).
        grad_into_input: write the gradient over `input`'s memory instead of a new buffer (no extra
            B×L allocation) when `input` is contiguous and needs a gradient; `input` then holds the
            gradient, not the logits, after the call. Off by default.

    Returns:
        The loss in target's dtype, as torch (input's dtype for bool/uint8 and sparse targets); float32
        under autocast, where torch runs this loss in float32.
    """
    reduction = resolve_reduction(size_average, reduce, reduction)
    _check_logits("binary_cross_entropy_with_logits", input)
    if target.shape != input.shape:
        raise ValueError(f"Target size ({target.shape}) must be the same as input size ({input.size()})")
    for name, operand in (("weight", weight), ("pos_weight", pos_weight)):
        if operand is not None:
            _broadcast_operand(name, operand, input.shape)
    if isinstance(target, SparseTargets):
        _check_sparse_target("binary_cross_entropy_with_logits", input, target)
    compact_target = isinstance(target, SparseTargets) or target.dtype in (torch.bool, torch.uint8)
    out_dtype = input.dtype if compact_target else target.dtype
    if torch.is_autocast_enabled(input.device.type) and out_dtype != torch.float64:
        out_dtype = torch.float32  # autocast runs this loss in float32 (float64 left alone)
    if compact_target or target.is_floating_point():  # torch rejects other integer targets: let it say so
        loss = _fused("bce", input, target, weight, pos_weight, reduction, out_dtype, grad_into_input)
        if loss is not None:
            return loss
    if isinstance(target, SparseTargets):  # calls the fused op cannot serve (see _fused) go dense
        target = target.to_dense(input.dtype)
    elif compact_target:
        target = target.to(input.dtype)
    return F.binary_cross_entropy_with_logits(
        input, target, weight, reduction=reduction, pos_weight=pos_weight
    )


# --------------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------------


class MultiLabelSoftMarginLoss(nn.MultiLabelSoftMarginLoss):
    """`torch.nn.MultiLabelSoftMarginLoss` (same constructor, `weight` buffer, state_dict), fused."""

    def forward(self, input: Tensor, target: Tensor | SparseTargets) -> Tensor:
        return multilabel_soft_margin_loss(input, target, weight=self.weight, reduction=self.reduction)


class BCEWithLogitsLoss(nn.BCEWithLogitsLoss):
    """`torch.nn.BCEWithLogitsLoss` (same constructor, `weight`/`pos_weight` buffers, state_dict), fused."""

    def forward(self, input: Tensor, target: Tensor | SparseTargets) -> Tensor:
        return binary_cross_entropy_with_logits(
            input, target, self.weight, pos_weight=self.pos_weight, reduction=self.reduction
        )
