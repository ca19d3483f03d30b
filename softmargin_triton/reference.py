"""Plain-torch formulas of every op: the CPU fallback and the tests' float64 oracle.

They follow the kernels' contract (the loss and the gradient of the reduced loss in one call) with the
same math, so a kernel can be checked element by element, and they run anywhere torch runs.
"""

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from softmargin_triton.common import compute_dtype

__all__ = [
    "Focusing",
    "elementwise_form",
    "linear_soft_margin_chunk_reference",
    "mix32",
    "reduce_row_sums",
    "reduction_grad_scale",
    "sgd_step_reference",
    "soft_margin_reference",
    "stochastic_round_bfloat16",
]

# Which loss a call computes: MultiLabelSoftMarginLoss, BCEWithLogitsLoss, torchvision's sigmoid_focal_loss
# or the asymmetric loss (ASL). They share the sigmoid and differ in the elementwise formula, the ±inf
# behaviour and the normalisation (MLSM per row, the others per element as BCE).
LossForm = Literal["mlsm", "bce", "focal", "asymmetric"]


class Focusing(NamedTuple):
    """Parameters of the "focal" and "asymmetric" forms (kernels/sigmoid_bce.py, focal_bce)."""

    alpha: float = -1.0  # α of α_t = α·y + (1 - α)·(1 - y); negative: no α weighting
    gamma_pos: float = 0.0  # γ of the positive term (focal: both terms')
    gamma_neg: float = 0.0  # γ of the negative term
    clip: float = 0.0  # ASL's probability margin: q = min(σ(-x) + clip, 1); 0: none
    eps: float = 0.0  # ASL's clamp of the probabilities before the log; 0: none
    focus_grad: bool = True  # differentiate the focusing factor (ASL: not disable_torch_grad_focal_loss)


def elementwise_form(loss_form: LossForm) -> bool:
    """Whether the form reduces as BCE does (per element), not per row as MultiLabelSoftMarginLoss."""
    return loss_form != "mlsm"


def reduction_grad_scale(loss_form: LossForm, reduction: str, rows: int, cols: int) -> float:
    """d(reduced loss) / d(elementwise loss) for a (rows, cols) problem.

    MultiLabelSoftMarginLoss divides each row's sum by C (never by the sum of weights); 'mean' then averages
    the rows. The elementwise forms' 'mean' divides by numel.
    """
    elementwise = elementwise_form(loss_form)
    divisor = 1 if elementwise else cols
    if reduction == "mean":
        divisor *= rows * cols if elementwise else rows
    return 1.0 / divisor if divisor else math.nan  # no rows or no labels: the loss is NaN, as torch's


def reduce_row_sums(row_sums: Tensor, loss_form: LossForm, reduction: str, cols: int) -> Tensor:
    """The reduced loss from per-row sums of the weighted elementwise loss, (R,) → (R,) or ().

    Not for the elementwise forms' 'none', whose output is the elementwise loss itself.
    """
    if not elementwise_form(loss_form):
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


def _power(base: Tensor, exponent: Tensor) -> Tensor:
    """base ** exponent with torch.pow's values at 0 (the kernels' `power`)."""
    return torch.where(exponent == 0, 1.0, torch.exp2(exponent * torch.log2(base)))


def _focal(x: Tensor, y: Tensor, focusing: Focusing, asymmetric: bool) -> tuple[Tensor, Tensor]:
    """Unweighted loss and d loss / dx of the focal family (kernels/sigmoid_bce.py, focal_bce's formula)."""
    p, p_neg = torch.sigmoid(x), torch.sigmoid(-x)
    if focusing.clip > 0:
        q_unclamped = p_neg + focusing.clip
        q = q_unclamped.clamp(max=1)
        dq = torch.where(q_unclamped <= 1, -p * p_neg, 0.0)
        one_minus_q = (p - focusing.clip).clamp(min=0)
    else:
        q, dq, one_minus_q = p_neg, -p * p_neg, p
    if asymmetric:
        log_eps = math.log(focusing.eps) if focusing.eps > 0 else -math.inf
        log_p = -torch.nn.functional.softplus(-x, threshold=math.inf)
        if focusing.clip > 0:
            log_q, dlog_q = torch.log(q), dq / q
        else:
            log_q, dlog_q = -torch.nn.functional.softplus(x, threshold=math.inf), -p
        ce = -(y * log_p.clamp(min=log_eps) + (1 - y) * log_q.clamp(min=log_eps))
        dce = -(
            y * torch.where(log_p >= log_eps, p_neg, 0.0)
            + (1 - y) * torch.where(log_q >= log_eps, dlog_q, 0.0)
        )
    else:
        ce, dce = _sigmoid_bce(x, y, None, None, "bce", True)
    base = y * p_neg + (1 - y) * one_minus_q
    gamma = focusing.gamma_pos * y + focusing.gamma_neg * (1 - y)
    focus = _power(base, gamma)
    loss, grad = ce * focus, dce * focus
    if focusing.focus_grad:
        dp_t = y * p * p_neg + (1 - y) * dq
        grad = grad + ce * torch.where(gamma == 0, 0.0, gamma * _power(base, gamma - 1)) * -dp_t
    if focusing.alpha >= 0:
        alpha_t = focusing.alpha * y + (1 - focusing.alpha) * (1 - y)
        loss, grad = loss * alpha_t, grad * alpha_t
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
    *,
    row_scale: Tensor | None = None,
    label_smoothing: float = 0.0,
    ignore_value: float | None = None,
    focusing: Focusing | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Loss and input gradient of a sigmoid loss over a (R, C) problem, in fp32 (fp64 for fp64 logits).

    input (R, C) float logits; target (R, C) float, integer or bool; weight and pos_weight (R, C) float
    (broadcast views) or None; row_scale (R,) float (a broadcast view) or None. Returns the loss, (R,) for
    MLSM 'none', (R, C) for the elementwise forms' 'none', (R,) unnormalised row sums of the weighted
    elementwise loss for 'rows' (in fp32, fp64 for fp64 logits), else (), in out_dtype; and
    d(elementwise loss)/d(input) · grad_scale (· row_scale per row) in input's dtype (None if grad_scale is
    None; `reduction_grad_scale` gives the gradient of the reduced loss). The loss form decides the formula
    and where ±inf logits give NaN, as in the function it mirrors. label_smoothing and ignore_value apply
    to "mlsm" and "bce" (the target is smoothed as y·(1 - ε) + ε/2; targets equal to ignore_value give
    loss and gradient 0); focusing to "focal" and "asymmetric".
    """
    dtype = compute_dtype(input.dtype)
    x, y = input.to(dtype), target.to(dtype)
    with_grad = grad_scale is not None
    if elementwise_form(loss_form) and loss_form != "bce":
        loss, grad = _focal(x, y, focusing or Focusing(), loss_form == "asymmetric")
        if weight is not None:
            loss, grad = loss * weight.to(dtype), grad * weight.to(dtype)
    else:
        if label_smoothing:
            y = y * (1 - label_smoothing) + label_smoothing / 2
        loss, grad = _sigmoid_bce(x, y, weight, pos_weight, loss_form, with_grad)
        if ignore_value is not None:
            known = target != ignore_value
            loss = torch.where(known, loss, 0.0)
            grad = None if grad is None else torch.where(known, grad, 0.0)
    if with_grad:
        grad = grad * grad_scale
        if row_scale is not None:
            grad = grad * row_scale.to(dtype)[:, None]
        grad = grad.to(input.dtype)
    else:
        grad = None
    if reduction == "rows":
        return loss.sum(dim=1), grad
    if not (elementwise_form(loss_form) and reduction == "none"):
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


# The stochastic rounding's hash, as kernels/fused_sgd.py computes it (tests/test_fused_sgd.py checks that
# the two agree bit for bit): a multiply–xorshift finaliser of 32-bit words, emulated in int64.
_HASH_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)
_HIGH_WORD_MULTIPLIER = 0x9E3779B9
_WORD = 0xFFFFFFFF


def mix32(x: Tensor) -> Tensor:
    """kernels/fused_sgd.py's mix32 on int64 tensors holding uint32 values."""
    x = x ^ (x >> 16)
    x = (x * _HASH_MULTIPLIERS[0]) & _WORD  # int64 products wrap, their low 32 bits stay exact
    x = x ^ (x >> 15)
    x = (x * _HASH_MULTIPLIERS[1]) & _WORD
    return x ^ (x >> 16)


def stochastic_round_bfloat16(values: Tensor, element_ids: Tensor, rounding_stream: int) -> Tensor:
    """float32 `values` rounded to bfloat16 up or down at random, unbiased, with the kernel's random bits:
    element_ids (int64, values' shape) number the elements, rounding_stream (a uint32) keys the step."""
    low, high = element_ids & _WORD, element_ids >> 32
    key = (rounding_stream + high * _HIGH_WORD_MULTIPLIER) & _WORD
    noise = mix32(low ^ key) >> 16
    bits = values.view(torch.int32).to(torch.int64) & _WORD
    rounded = ((bits + noise) & 0xFFFF0000).to(torch.int32)  # two's complement keeps the sign bit
    return torch.where(values.isnan(), values, rounded.view(torch.float32)).to(torch.bfloat16)


def sgd_step_reference(
    param: Tensor,
    grad: Tensor,
    momentum_buffer: Tensor | None,
    master: Tensor | None,
    step_size: float | Tensor,
    momentum: float,
    weight_decay: float,
    shrink: float,
    rounding_stream: int | None,
    element_ids: Tensor | None,
) -> None:
    """One step in place, as kernels/fused_sgd.py's sgd_step takes it.

    param (n, ...) any float dtype; grad its gradient in float32 (float64 for float64 param);
    momentum_buffer and master param's shape in grad's dtype, or None; step_size a number or (n, 1...) per
    row. The step is d = grad + weight_decay·w, m = momentum·m + d, w = shrink·w − step_size·m, on
    w = master if given (which receives the new w), else param. param receives the new w rounded to
    nearest, or stochastically (`stochastic_round_bfloat16` with `rounding_stream` and `element_ids`) when
    rounding_stream is not None.
    """
    w = master if master is not None else param.to(grad.dtype)
    step = grad + weight_decay * w if weight_decay else grad
    if momentum_buffer is not None:
        step = momentum_buffer.mul_(momentum).add_(step)
    w = w * shrink - step_size * step
    if master is not None:
        master.copy_(w)
    if rounding_stream is not None:
        param.copy_(stochastic_round_bfloat16(w, element_ids, rounding_stream))
    else:
        param.copy_(w)
