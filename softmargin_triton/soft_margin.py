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

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from softmargin_triton.backend import TRITON_IMPORT_ERROR, use_triton_for
from softmargin_triton.common import (
    FLOAT_DTYPES,
    check_label_smoothing,
    compute_dtype,
    launch,
    precise_math,
    resolve_reduction,
    rows_view,
    strides_2d,
)
from softmargin_triton.reference import (
    Focusing,
    LossForm,
    elementwise_form,
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
    if elementwise_form(loss_form) and reduction == "none":
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
    row_scale: Tensor | None,
    grad: Tensor | None,
    loss: Tensor | None,
    partial: Tensor | None,
    grad_scale: float,
    loss_form: LossForm,
    out_dtype: torch.dtype,
    label_smoothing: float,
    ignore_value: float | None,
    focusing: Focusing,
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
        ROW_SCALE=row_scale,
        GRAD=grad,
        LOSS=loss,
        PARTIAL=partial,
        R=rows,
        C=cols,
        **strides_2d("x", input),
        **strides_2d("y", target),
        **strides_2d("w", weight),
        **strides_2d("pw", pos_weight),
        stride_row_scale=0 if row_scale is None else row_scale.stride(0),
        **strides_2d("grad", grad),
        grad_scale=grad_scale,
        label_smoothing=label_smoothing,
        ignore_value=0.0 if ignore_value is None else ignore_value,
        alpha=focusing.alpha,
        gamma_pos=focusing.gamma_pos,
        gamma_neg=focusing.gamma_neg,
        clip=focusing.clip,
        log_eps=math.log(focusing.eps) if focusing.eps > 0 else -math.inf,
        SPAN=span,
        LOSS_FORM=loss_form,
        IGNORE=ignore_value is not None,
        FOCUS_GRAD=focusing.focus_grad,
        PRECISE=precise_math(input.dtype, out_dtype),
    )


def _soft_margin_forward_triton(
    input: Tensor,
    target: Tensor | None,
    indptr: Tensor | None,
    indices: Tensor | None,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    row_scale: Tensor | None,
    grad: Tensor | None,
    grad_scale: float,
    loss_form: LossForm,
    reduction: str,
    out_dtype: torch.dtype,
    label_smoothing: float,
    ignore_value: float | None,
    focusing: Focusing,
) -> Tensor:
    loss, partial = _forward_outputs(input, loss_form, reduction, out_dtype)
    _launch_forward(
        input,
        target,
        indptr,
        indices,
        weight,
        pos_weight,
        row_scale,
        grad,
        loss,
        partial,
        grad_scale,
        loss_form,
        out_dtype,
        label_smoothing,
        ignore_value,
        focusing,
    )
    if loss is not None:
        return loss
    # The partials are R × cdiv(C, 8192) numbers: reducing them in torch is deterministic and cheap.
    row_sums = partial.sum(dim=1)
    if reduction == "rows":
        return row_sums
    return reduce_row_sums(row_sums, loss_form, reduction, input.shape[1]).to(out_dtype)


def _known_counts_triton(target: Tensor, ignore_value: float) -> Tensor:
    rows, cols = target.shape
    span = kernels.span_for(cols)
    counts = target.new_empty((rows, triton.cdiv(cols, span)), dtype=torch.int32)
    launch(
        kernels.soft_margin_known_counts,
        _tile_grid(rows, counts.shape[1]),
        kernels.HEURISTIC_CONFIG,
        Y=target,
        COUNTS=counts,
        R=rows,
        C=cols,
        **strides_2d("y", target),
        ignore_value=ignore_value,
        SPAN=span,
    )
    return counts.sum(dim=1)


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
    row_scale: Tensor | None,
    grad: Tensor,
    grad_scale: float,
    loss_form: str,
    reduction: str,
    out_dtype: torch.dtype,
    use_triton: bool,
    *,
    label_smoothing: float = 0.0,
    ignore_value: float | None = None,
    alpha: float = -1.0,
    gamma_pos: float = 0.0,
    gamma_neg: float = 0.0,
    clip: float = 0.0,
    eps: float = 0.0,
    focus_grad: bool = True,
) -> Tensor:
    """Reduced loss of a (R, C) problem; writes d(elementwise loss)/d(input) · grad_scale (· row_scale
    per row) into `grad` unless it is empty.

    input (R, C) float16/bfloat16/float32/float64 logits; the target either dense, `target` (R, C) float,
    integer or bool, or binary with its positives as `indptr` (R+1,) int64 and `indices` (nnz,) int32/int64
    in SparseTargets' form (the kernel builds no (R, C) target); weight and pos_weight (R, C) broadcast
    views or None; row_scale (R,) float32 (float64 for float64 input), a view with any stride, or None;
    grad (R, C) in input's dtype, may be `input` itself, or an empty tensor for no gradient (not None:
    Inductor cannot functionalize a mutable argument that is None).
    loss_form "mlsm", "bce", "focal" or "asymmetric"; reduction "none", "mean", "sum", or "rows" for each
    row's unnormalised sum of the weighted elementwise loss. Returns (R,) for MLSM 'none', (R, C) for the
    elementwise forms' 'none', else (), in out_dtype; 'rows' (R,) in float32 (float64 for float64 input).
    label_smoothing, ignore_value ("mlsm", "bce") and the focusing parameters ("focal", "asymmetric"; the
    fields of reference.Focusing) as in `soft_margin_reference`.
    """
    if grad.numel() == 0:
        grad = None
    focusing = Focusing(alpha, gamma_pos, gamma_neg, clip, eps, focus_grad)
    if use_triton:
        return _soft_margin_forward_triton(
            input,
            target,
            indptr,
            indices,
            weight,
            pos_weight,
            row_scale,
            grad,
            grad_scale,
            loss_form,
            reduction,
            out_dtype,
            label_smoothing,
            ignore_value,
            focusing,
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
        row_scale=row_scale,
        label_smoothing=label_smoothing,
        ignore_value=ignore_value,
        focusing=focusing,
    )
    if grad is not None:
        grad.copy_(reference_grad)
    return loss


@soft_margin_forward.register_fake
def _(input, target, indptr, indices, weight, pos_weight, row_scale, grad, grad_scale, loss_form, reduction,
      out_dtype, use_triton, **form_parameters):  # fmt: skip
    rows, cols = input.shape
    if reduction == "rows":
        return input.new_empty((rows,), dtype=compute_dtype(input.dtype))
    shape = {"none": (rows, cols) if elementwise_form(loss_form) else (rows,)}.get(reduction, ())
    return input.new_empty(shape, dtype=out_dtype)


@torch.library.custom_op("softmargin_triton::soft_margin_known_counts", mutates_args=())
def soft_margin_known_counts(target: Tensor, ignore_value: float, use_triton: bool) -> Tensor:
    """(R,) int64: how many of each row's targets differ from ignore_value; target (R, C) dense, any dtype
    and strides. The Triton kernel reads the target once and allocates no (R, C) mask."""
    if use_triton:
        return _known_counts_triton(target, ignore_value)
    return (target != ignore_value).sum(dim=1)


@soft_margin_known_counts.register_fake
def _(target, ignore_value, use_triton):
    return target.new_empty((target.shape[0],), dtype=torch.int64)


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


def _partial_label_scales(
    counts: Tensor, loss_form: LossForm, reduction: str, dtype: torch.dtype
) -> Tensor | None:
    """Each row's factor d(reduced loss) / d(row's elementwise loss) under partial labels, from the rows'
    known-label counts (R,): MLSM divides a row by its count (a row without any gives 0) and 'mean'
    averages the rows that have one; BCE 'mean' divides by all known labels. None where it is 1."""
    if elementwise_form(loss_form):
        if reduction != "mean":
            return None
        return (1.0 / counts.sum().clamp_min(1).to(dtype)).expand(counts.shape)
    scale = torch.where(counts > 0, 1.0 / counts.clamp_min(1).to(dtype), 0.0)
    if reduction == "mean":
        scale = scale / (counts > 0).sum().clamp_min(1)
    return scale


def _reduce_partial_labels(row_sums: Tensor, counts: Tensor, loss_form: LossForm, reduction: str) -> Tensor:
    """The reduced loss from the rows' sums and known-label counts (R,); the mean of nothing is NaN."""
    if elementwise_form(loss_form):
        total = row_sums.sum()
        return total / counts.sum() if reduction == "mean" else total
    per_row = torch.where(counts > 0, row_sums / counts.clamp_min(1), 0.0)
    if reduction == "none":
        return per_row
    return per_row.sum() / (counts > 0).sum() if reduction == "mean" else per_row.sum()


class _SoftMarginFunction(torch.autograd.Function):
    """Gradient for the logits only; callers route targets and weights that need one to torch.

    target is a (R, C) tensor or a SparseTargets of shape (R, C).
    """

    @staticmethod
    def forward(
        ctx,
        input,
        target,
        weight,
        pos_weight,
        loss_form,
        reduction,
        out_dtype,
        use_triton,
        grad_mode,
        label_smoothing,
        ignore_value,
        focusing,
    ):
        # grad_mode: None (no gradient wanted), "new" (a fresh buffer) or "in_place" (over the logits).
        grad = input.new_empty(0)
        if grad_mode is not None:
            grad = input if grad_mode == "in_place" else torch.empty_like(input)
        scale = reduction_grad_scale(loss_form, reduction, *input.shape)
        op_reduction, row_scale = reduction, None
        if ignore_value is not None:
            # The divisors count known labels: one read of the target first, so that the forward can
            # write the gradient already divided.
            counts = soft_margin_known_counts(target, ignore_value, use_triton)
            row_scale = _partial_label_scales(counts, loss_form, reduction, compute_dtype(input.dtype))
            scale = 1.0
            if not (elementwise_form(loss_form) and reduction == "none"):
                op_reduction = "rows"
        # fp16 cannot hold (σ - y)·w / numel: store it unscaled and apply the factor with grad_output
        # (a GradScaler's large one included) in the backward, as torch does. Other dtypes fold it in.
        half = input.dtype == torch.float16
        forward_scale, ctx.backward_scale = (1.0, scale) if half else (scale, 1.0)
        sparse = isinstance(target, SparseTargets)
        loss = soft_margin_forward(
            input,
            None if sparse else target,
            target.indptr if sparse else None,
            target.indices if sparse else None,
            weight,
            pos_weight,
            None if half else row_scale,
            grad,
            forward_scale,
            loss_form,
            op_reduction,
            out_dtype,
            use_triton,
            label_smoothing=label_smoothing,
            ignore_value=ignore_value,
            alpha=focusing.alpha,
            gamma_pos=focusing.gamma_pos,
            gamma_neg=focusing.gamma_neg,
            clip=focusing.clip,
            eps=focusing.eps,
            focus_grad=focusing.focus_grad,
        )
        if op_reduction == "rows":
            loss = _reduce_partial_labels(loss, counts, loss_form, reduction).to(out_dtype)
        ctx.save_for_backward(grad, row_scale if half else None)
        ctx.use_triton = use_triton
        ctx.per_row = loss_form == "mlsm" and reduction == "none"
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        # The scale is in place, so a second backward through the same graph (retain_graph=True) fails
        # autograd's saved-tensor version check instead of scaling twice.
        grad, row_scale = ctx.saved_tensors
        grad_output = grad_loss[:, None] if ctx.per_row else grad_loss
        if row_scale is not None:  # fp16 under partial labels: the divisors come with grad_output
            grad_output = grad_output * row_scale[:, None]
        soft_margin_scale_grad_(grad, grad_output, ctx.backward_scale, ctx.use_triton)
        return grad, None, None, None, None, None, None, None, None, None, None, None


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


def fused_loss(
    loss_form: LossForm,
    input: Tensor,
    target: Tensor | SparseTargets,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    reduction: str,
    out_dtype: torch.dtype,
    grad_into_input: bool,
    *,
    label_smoothing: float = 0.0,
    ignore_value: float | None = None,
    focusing: Focusing | None = None,
) -> Tensor | None:
    """The loss through the fused op, or None where that cannot serve the call exactly (the caller then
    computes it with torch). Arguments as in `soft_margin_reference`, input and target of any shape."""
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
        label_smoothing,
        ignore_value,
        focusing or Focusing(),
    )
    if reduction != "none":
        return loss
    return loss.view(shape if elementwise_form(loss_form) else shape[:-1])


def _check_ignore_value(name: str, ignore_value: float | None, target: Tensor | SparseTargets | None) -> None:
    if ignore_value is None:
        return
    if isinstance(ignore_value, bool) or not isinstance(ignore_value, (int, float)):
        raise TypeError(f"{name}: ignore_value must be a number or None, got {type(ignore_value).__name__}")
    if math.isnan(ignore_value):
        raise ValueError(f"{name}: ignore_value is NaN, which no target equals")
    if isinstance(target, SparseTargets):
        raise ValueError(
            f"{name}: ignore_value marks unknown labels of a dense target; a SparseTargets has none "
            "(every label it does not list is a negative)"
        )


def _torch_loss(
    loss_form: LossForm,
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    reduction: str,
    label_smoothing: float,
    ignore_value: float | None,
) -> Tensor:
    """torch's own loss on the smoothed float target, or its formula masked and divided as partial labels
    are: the calls the fused op cannot serve. target broadcastable to input (MLSM) or input's shape (BCE)."""
    y = target * (1 - label_smoothing) + label_smoothing / 2 if label_smoothing else target
    if ignore_value is None:
        if loss_form == "mlsm":
            return F.multilabel_soft_margin_loss(input, y, weight, reduction=reduction)
        return F.binary_cross_entropy_with_logits(
            input, y, weight, reduction=reduction, pos_weight=pos_weight
        )
    known = (target != ignore_value).expand(input.shape)
    input = torch.where(known, input, 0.0)  # an ignored logit gets no gradient, even a NaN one
    if loss_form == "mlsm":
        terms = -(y * F.logsigmoid(input) + (1 - y) * F.logsigmoid(-input))
        terms = terms if weight is None else terms * weight
    else:
        terms = F.binary_cross_entropy_with_logits(input, y, weight, reduction="none", pos_weight=pos_weight)
    terms = torch.where(known, terms, 0.0)
    if loss_form == "bce" and reduction == "none":
        return terms
    return _reduce_partial_labels(terms.sum(-1), known.sum(-1), loss_form, reduction)


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
    label_smoothing: float = 0.0,
    ignore_value: float | None = None,
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
        label_smoothing: ε in [0, 1): every target y counts as y·(1 - ε) + ε/2 (a SparseTargets' positives
            1 - ε/2, its other labels ε/2), still with no (N, C) target built.
        ignore_value: partial labels, for a dense target: elements whose target equals it add no loss and
            no gradient, and each row's sum is divided by its number of known labels instead of C (a row
            with none gives 0); 'mean' averages the rows that have a known label (NaN if none has).
        grad_into_input: write the gradient over `input`'s memory instead of a new buffer (no extra
            B×L allocation) when `input` is contiguous and needs a gradient; `input` then holds the
            gradient, not the logits, after the call. Off by default.

    Returns:
        The loss in the type promotion of input, target and weight, as torch (a SparseTargets counts as
        a target of input's dtype).
    """
    reduction = resolve_reduction(size_average, reduce, reduction)
    label_smoothing = check_label_smoothing(label_smoothing)
    _check_logits("multilabel_soft_margin_loss", input)
    if weight is not None:
        _broadcast_operand("weight", weight, input.shape)
    if isinstance(target, SparseTargets):
        _check_sparse_target("multilabel_soft_margin_loss", input, target)
    _check_ignore_value("multilabel_soft_margin_loss", ignore_value, target)
    target_dtype = input.dtype if isinstance(target, SparseTargets) else target.dtype
    out_dtype = torch.promote_types(input.dtype, target_dtype)
    if weight is not None:
        out_dtype = _promote(out_dtype, weight)
    if input.dim() > 0:
        loss = fused_loss(
            "mlsm", input, target, weight, None, reduction, out_dtype, grad_into_input,
            label_smoothing=label_smoothing, ignore_value=ignore_value,
        )  # fmt: skip
        if loss is not None:
            return loss
    if isinstance(target, SparseTargets):  # calls the fused op cannot serve (see fused_loss) go dense
        target = target.to_dense(input.dtype)
    if target.dtype == torch.bool:  # torch has no `1 - bool`; the value is the same as a 0/1 float target
        target = target.to(out_dtype)
    loss = _torch_loss("mlsm", input, target, weight, None, reduction, label_smoothing, ignore_value)
    return loss.to(out_dtype)


def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor | SparseTargets,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    pos_weight: Tensor | None = None,
    *,
    label_smoothing: float = 0.0,
    ignore_value: float | None = None,
    grad_into_input: bool = False,
) -> Tensor:
    """`torch.nn.functional.binary_cross_entropy_with_logits`, fused: one pass over the logits.

    Args:
        input: any shape, float16/bfloat16/float32/float64 logits.
        target: input's shape; float, or (extensions) bool/uint8 at 1 byte per element (any integer dtype
            with ignore_value, e.g. int8 with -1 for unknown), or a `SparseTargets` of input's (N, C)
            shape — the binary target's positive labels, with no (N, C) target ever built.
        weight: broadcastable to input.
        size_average, reduce: deprecated, as in torch (with its warning).
        reduction: 'none' → input's shape; 'mean' (over all elements) / 'sum' → ().
        pos_weight: weight of the positive term, broadcastable to input (typically (C,)).
        label_smoothing: ε in [0, 1): every target y counts as y·(1 - ε) + ε/2 (a SparseTargets' positives
            1 - ε/2, its other labels ε/2), still with no (N, C) target built.
        ignore_value: partial labels, for a dense target: elements whose target equals it add no loss and
            no gradient ('none' gives 0 there), and 'mean' divides by the number of known elements (NaN if
            there is none) instead of numel.
        grad_into_input: write the gradient over `input`'s memory instead of a new buffer (no extra
            B×L allocation) when `input` is contiguous and needs a gradient; `input` then holds the
            gradient, not the logits, after the call. Off by default.

    Returns:
        The loss in target's dtype, as torch (input's dtype for bool/uint8 and sparse targets); float32
        under autocast, where torch runs this loss in float32.
    """
    reduction = resolve_reduction(size_average, reduce, reduction)
    label_smoothing = check_label_smoothing(label_smoothing)
    _check_logits("binary_cross_entropy_with_logits", input)
    if target.shape != input.shape:
        raise ValueError(f"Target size ({target.shape}) must be the same as input size ({input.size()})")
    for name, operand in (("weight", weight), ("pos_weight", pos_weight)):
        if operand is not None:
            _broadcast_operand(name, operand, input.shape)
    if isinstance(target, SparseTargets):
        _check_sparse_target("binary_cross_entropy_with_logits", input, target)
    _check_ignore_value("binary_cross_entropy_with_logits", ignore_value, target)
    compact_target = isinstance(target, SparseTargets) or target.dtype in (torch.bool, torch.uint8)
    compact_target |= ignore_value is not None and target.dtype in _INTEGER_TARGET_DTYPES
    out_dtype = input.dtype if compact_target else target.dtype
    if torch.is_autocast_enabled(input.device.type) and out_dtype != torch.float64:
        out_dtype = torch.float32  # autocast runs this loss in float32 (float64 left alone)
    if compact_target or target.is_floating_point():  # torch rejects other integer targets: let it say so
        loss = fused_loss(
            "bce", input, target, weight, pos_weight, reduction, out_dtype, grad_into_input,
            label_smoothing=label_smoothing, ignore_value=ignore_value,
        )  # fmt: skip
        if loss is not None:
            return loss
    if isinstance(target, SparseTargets):  # calls the fused op cannot serve (see fused_loss) go dense
        target = target.to_dense(input.dtype)
    elif compact_target:
        target = target.to(input.dtype)
    return _torch_loss("bce", input, target, weight, pos_weight, reduction, label_smoothing, ignore_value)


# --------------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------------


class _LabelOptions:
    """The extensions' constructor arguments shared by both modules: label_smoothing and ignore_value."""

    def _set_label_options(self, label_smoothing: float, ignore_value: float | None) -> None:
        self.label_smoothing = check_label_smoothing(label_smoothing)
        _check_ignore_value(type(self).__name__, ignore_value, None)
        self.ignore_value = ignore_value

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}, ignore_value={self.ignore_value}"


class MultiLabelSoftMarginLoss(_LabelOptions, nn.MultiLabelSoftMarginLoss):
    """`torch.nn.MultiLabelSoftMarginLoss` (same constructor, `weight` buffer, state_dict), fused; and
    `label_smoothing` and `ignore_value` as in `multilabel_soft_margin_loss`."""

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average: bool | None = None,
        reduce: bool | None = None,
        reduction: str = "mean",
        *,
        label_smoothing: float = 0.0,
        ignore_value: float | None = None,
    ) -> None:
        super().__init__(weight, size_average, reduce, reduction)
        self._set_label_options(label_smoothing, ignore_value)

    def forward(self, input: Tensor, target: Tensor | SparseTargets) -> Tensor:
        return multilabel_soft_margin_loss(
            input,
            target,
            weight=self.weight,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            ignore_value=self.ignore_value,
        )


class BCEWithLogitsLoss(_LabelOptions, nn.BCEWithLogitsLoss):
    """`torch.nn.BCEWithLogitsLoss` (same constructor, `weight`/`pos_weight` buffers, state_dict), fused;
    and `label_smoothing` and `ignore_value` as in `binary_cross_entropy_with_logits`."""

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average: bool | None = None,
        reduce: bool | None = None,
        reduction: str = "mean",
        pos_weight: Tensor | None = None,
        *,
        label_smoothing: float = 0.0,
        ignore_value: float | None = None,
    ) -> None:
        super().__init__(weight, size_average, reduce, reduction, pos_weight)
        self._set_label_options(label_smoothing, ignore_value)

    def forward(self, input: Tensor, target: Tensor | SparseTargets) -> Tensor:
        return binary_cross_entropy_with_logits(
            input,
            target,
            self.weight,
            pos_weight=self.pos_weight,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            ignore_value=self.ignore_value,
        )
