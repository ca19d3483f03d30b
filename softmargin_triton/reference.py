"""Plain-torch formulas of every op: the CPU fallback and the tests' float64 oracle.

They follow the kernels' contract (the loss and the gradient of the reduced loss in one call) with the
same math, so a kernel can be checked element by element, and they run anywhere torch runs.
"""

import math
from typing import Literal

import torch
from torch import Tensor

from softmargin_triton.common import compute_dtype

__all__ = [
    "linear_soft_margin_chunk_reference",
    "reduce_row_sums",
    "reduction_grad_scale",
    "soft_margin_reference",
]

# Which torch loss a call mirrors: they share the math and differ in normalisation and ±inf behaviour.
LossForm = Literal["mlsm", "bce"]


def reduction_grad_scale(loss_form: LossForm, reduction: str, rows: int, cols: int) -> float:
    """d(reduced loss) / d(elementwise loss) for a (rows, cols) problem.

    MultiLabelSoftMarginLoss divides each row's sum by C (never by the sum of weights); 'mean' then averages
    the rows. BCEWithLogitsLoss 'mean' divides by numel.
    """
    divisor = cols if loss_form == "mlsm" else 1
    if reduction == "mean":
        divisor *= rows * cols if loss_form == "bce" else rows
    return 1.0 / divisor if divisor else math.nan  # no rows or no labels: the loss is NaN, as torch's


def reduce_row_sums(row_sums: Tensor, loss_form: LossForm, reduction: str, cols: int) -> Tensor:
    """The reduced loss from per-row sums of the weighted elementwise loss, (R,) → (R,) or ().

    Not for BCE 'none', whose output is the elementwise loss itself.
    """
    if loss_form == "mlsm":
        per_row = row_sums / cols
        if reduction == "none":
            return per_row
        return per_row.mean() if reduction == "mean" else per_row.sum()
    total = row_sums.sum()
    return total / (row_sums.numel() * cols) if reduction == "mean" else total


def _sigmoid_bce(
    x: Tensor,
    y: Tensor | float,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    loss_form: LossForm,
    with_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """Weighted elementwise loss and d loss / dx (None unless with_grad) in x's dtype; the kernels' math."""
    log1p_e = torch.log1p(torch.exp(-x.abs()))
    softplus_neg = torch.clamp_min(-x, 0) + log1p_e
    positive = y if pos_weight is None else pos_weight.to(x.dtype) * y
    if loss_form == "mlsm":
        loss = positive * softplus_neg + (1 - y) * (torch.clamp_min(x, 0) + log1p_e)
    else:
        c = positive - y + 1  # log1p term last, as in the kernel: exact where x and max(-x, 0) cancel
        loss = ((1 - y) * x + c * torch.clamp_min(-x, 0)) + c * log1p_e
    grad = None
    if with_grad:  # (1 - y)·σ(x) - p·y·σ(-x): no cancellation where σ(x) rounds to 1
        grad = (1 - y) * torch.sigmoid(x) - positive * torch.sigmoid(-x)
    if weight is not None:
        w = weight.to(x.dtype)
        loss = loss * w
        grad = None if grad is None else grad * w
    return loss, grad


def soft_margin_reference(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    loss_form: LossForm,
    reduction: str,
    out_dtype: torch.dtype,
    grad_scale: float | None,
) -> tuple[Tensor, Tensor | None]:
    """Loss and input gradient of sigmoid-BCE over a (R, C) problem, in fp32 (fp64 for fp64 logits).

    input (R, C) float logits; target (R, C) float, integer or bool; weight and pos_weight (R, C) float
    (broadcast views) or None. Returns the loss, (R,) for MLSM 'none', (R, C) for BCE 'none', else (),
    in out_dtype, and d(elementwise loss)/d(input) · grad_scale in input's dtype (None if grad_scale is
    None; `reduction_grad_scale` gives the gradient of the reduced loss). The loss form decides where
    ±inf logits give NaN, as in the torch function it mirrors.
    """
    dtype = compute_dtype(input.dtype)
    x, y = input.to(dtype), target.to(dtype)
    loss, grad = _sigmoid_bce(x, y, weight, pos_weight, loss_form, grad_scale is not None)
    if grad is not None:
        grad = (grad * grad_scale).to(input.dtype)
    if not (loss_form == "bce" and reduction == "none"):
        loss = reduce_row_sums(loss.sum(dim=1), loss_form, reduction, input.shape[1])
    return loss.to(out_dtype), grad


def linear_soft_margin_chunk_reference(
    input: Tensor,
    weight_chunk: Tensor,
    bias_chunk: Tensor | None,
    target_chunk: Tensor,
    label_weight_chunk: Tensor | None,
    pos_weight_chunk: Tensor | None,
    row_scale: Tensor | None,
    with_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """One label chunk of the fused linear + MLSM loss, as its kernel computes it.

    input (R, D) float; weight_chunk (L_c, D) and bias_chunk (L_c,) in input's dtype; target_chunk (R, L_c);
    label_weight_chunk / pos_weight_chunk (R, L_c) broadcast views or None; row_scale (R,) or None.
    Returns each row's weighted loss summed over the chunk, (R,) in fp32 (fp64 for fp64 input), and the
    gradient of the weighted elementwise loss w.r.t. the chunk's logits times row_scale, (R, L_c) in
    input's dtype (None unless with_grad).
    """
    dtype = compute_dtype(input.dtype)
    x = input.to(dtype) @ weight_chunk.to(dtype).T
    if bias_chunk is not None:
        x = x + bias_chunk.to(dtype)
    y = target_chunk.to(dtype)
    loss, grad = _sigmoid_bce(x, y, label_weight_chunk, pos_weight_chunk, "mlsm", with_grad)
    if grad is not None:
        grad = (grad if row_scale is None else grad * row_scale[:, None]).to(input.dtype)
    return loss.sum(dim=1), grad
