"""Focal-family losses for multi-label classification, fused: torchvision's `sigmoid_focal_loss` and the
asymmetric loss (ASL: Ridnik et al., ICCV 2021).

Both run on the soft-margin op (softmargin_triton/soft_margin.py) in its "focal" and "asymmetric" forms:
one pass over the logits that writes the loss and the gradient (kernels/sigmoid_bce.py, focal_bce, has the
formula), the backward only scaling that gradient. Targets are dense (float, or bool/uint8 at one byte) or
a `SparseTargets`. Calls the fused op cannot serve (a target or weight that needs a gradient, layouts with
no (rows, C) view, empty inputs) run the same formula in torch.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from softmargin_triton.common import resolve_reduction
from softmargin_triton.reference import Focusing, LossForm
from softmargin_triton.soft_margin import fused_loss
from softmargin_triton.sparse_targets import SparseTargets

__all__ = ["AsymmetricLoss", "SigmoidFocalLoss", "asymmetric_loss", "sigmoid_focal_loss"]

_BYTE_TARGETS = (torch.bool, torch.uint8)


def _check_number(name: str, value: float, low: float, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return float(value)


def _check_operands(name: str, input: Tensor, target: Tensor | SparseTargets, weight: Tensor | None) -> None:
    if not input.is_floating_point():
        raise NotImplementedError(f"{name}: input must hold floating-point logits, got dtype {input.dtype}")
    if target.shape != input.shape:
        raise ValueError(f"{name}: target of shape {tuple(target.shape)}, input of {tuple(input.shape)}")
    if target.device != input.device:
        raise RuntimeError(f"{name}: target on {target.device}, input on {input.device}")
    if isinstance(target, Tensor) and not (target.is_floating_point() or target.dtype in _BYTE_TARGETS):
        raise TypeError(f"{name}: target must be float, bool, uint8 or a SparseTargets, got {target.dtype}")
    if weight is not None:
        try:
            torch.broadcast_shapes(weight.shape, input.shape)
        except RuntimeError as error:
            raise RuntimeError(
                f"{name}: weight of shape {tuple(weight.shape)} cannot broadcast with input of shape "
                f"{tuple(input.shape)}"
            ) from error


def _focal_focusing(alpha: float, gamma: float) -> Focusing:
    """sigmoid_focal_loss's parameters, checked: α in [0, 1] or -1, γ ≥ 0."""
    if alpha != -1:
        alpha = _check_number("sigmoid_focal_loss: alpha (or -1)", alpha, 0.0, 1.0)
    gamma = _check_number("sigmoid_focal_loss: gamma", gamma, 0.0)
    return Focusing(alpha=float(alpha), gamma_pos=gamma, gamma_neg=gamma, focus_grad=True)


def _asymmetric_focusing(
    gamma_neg: float, gamma_pos: float, clip: float | None, eps: float, disable_torch_grad_focal_loss: bool
) -> Focusing:
    """asymmetric_loss's parameters, checked: every one ≥ 0 (clip None: 0)."""
    return Focusing(
        gamma_pos=_check_number("asymmetric_loss: gamma_pos", gamma_pos, 0.0),
        gamma_neg=_check_number("asymmetric_loss: gamma_neg", gamma_neg, 0.0),
        clip=0.0 if clip is None else _check_number("asymmetric_loss: clip", clip, 0.0),
        eps=_check_number("asymmetric_loss: eps", eps, 0.0),
        focus_grad=not disable_torch_grad_focal_loss,
    )


def _out_dtype(input: Tensor, target: Tensor | SparseTargets) -> torch.dtype:
    """The references' result dtype: torch's promotion of logits and target; a 1-byte or sparse target
    counts as the logits' dtype."""
    if isinstance(target, SparseTargets) or not target.is_floating_point():
        return input.dtype
    return torch.promote_types(input.dtype, target.dtype)


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


def _focal_terms_torch(input: Tensor, target: Tensor, loss_form: LossForm, focusing: Focusing) -> Tensor:
    """The published formulas in torch, for the calls the fused op cannot serve; target a float tensor."""
    p = torch.sigmoid(input)
    if loss_form == "focal":
        ce = F.binary_cross_entropy_with_logits(input, target, reduction="none")
        p_t = p * target + (1 - p) * (1 - target)
        loss = ce * (1 - p_t) ** focusing.gamma_pos
        if focusing.alpha >= 0:
            loss = (focusing.alpha * target + (1 - focusing.alpha) * (1 - target)) * loss
        return loss
    q = 1 - p
    if focusing.clip > 0:
        q = (q + focusing.clip).clamp(max=1)
    ce = target * torch.log(p.clamp(min=focusing.eps)) + (1 - target) * torch.log(q.clamp(min=focusing.eps))
    with torch.set_grad_enabled(focusing.focus_grad and torch.is_grad_enabled()):
        p_t = p * target + q * (1 - target)
        focus = torch.pow(1 - p_t, focusing.gamma_pos * target + focusing.gamma_neg * (1 - target))
    return -ce * focus


def _focal_family(
    name: str,
    loss_form: LossForm,
    input: Tensor,
    target: Tensor | SparseTargets,
    focusing: Focusing,
    reduction: str,
    weight: Tensor | None,
    grad_into_input: bool,
) -> Tensor:
    reduction = resolve_reduction(None, None, reduction)
    _check_operands(name, input, target, weight)
    out_dtype = _out_dtype(input, target)
    loss = fused_loss(
        loss_form, input, target, weight, None, reduction, out_dtype, grad_into_input, focusing=focusing
    )
    if loss is not None:
        return loss
    dense = target.to_dense(input.dtype) if isinstance(target, SparseTargets) else target
    if not dense.is_floating_point():
        dense = dense.to(input.dtype)
    terms = _focal_terms_torch(input, dense, loss_form, focusing)
    if weight is not None:
        terms = terms * weight
    return _reduce(terms, reduction).to(out_dtype)


def sigmoid_focal_loss(
    inputs: Tensor,
    targets: Tensor | SparseTargets,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
    *,
    weight: Tensor | None = None,
    grad_into_input: bool = False,
) -> Tensor:
    """`torchvision.ops.sigmoid_focal_loss` (Lin et al., RetinaNet), fused: one pass over the logits.

    loss = α_t · (1 - p_t)^γ · BCE-with-logits(inputs, targets), p = σ(inputs),
    p_t = p·y + (1 - p)·(1 - y), α_t = α·y + (1 - α)·(1 - y) (no α_t for α = -1).

    Args:
        inputs: any shape, float16/bfloat16/float32/float64 logits.
        targets: inputs' shape: float (soft targets too), bool/uint8 at 1 byte per element, or a
            `SparseTargets` of inputs' (N, C) shape.
        alpha: in [0, 1], or -1 for no weighting of positives against negatives.
        gamma: ≥ 0, the focusing exponent (0: α-weighted BCE).
        reduction: 'none' → inputs' shape; 'mean' (over all elements) / 'sum' → ().
        weight: (extension) elementwise weight broadcastable to inputs, as BCE's.
        grad_into_input: write the gradient over `inputs`' memory, as in `binary_cross_entropy_with_logits`.

    Returns:
        The loss in the promotion of inputs' and targets' dtypes (inputs' for 1-byte and sparse targets),
        with torchvision's values and gradient; it is more accurate where σ rounds to 1 in the input's dtype
        (the factor 1 - p_t is formed without that cancellation).
    """
    focusing = _focal_focusing(alpha, gamma)
    return _focal_family(
        "sigmoid_focal_loss", "focal", inputs, targets, focusing, reduction, weight, grad_into_input
    )


def asymmetric_loss(
    input: Tensor,
    target: Tensor | SparseTargets,
    gamma_neg: float = 4.0,
    gamma_pos: float = 1.0,
    clip: float | None = 0.05,
    eps: float = 1e-8,
    disable_torch_grad_focal_loss: bool = True,
    reduction: str = "sum",
    *,
    weight: Tensor | None = None,
    grad_into_input: bool = False,
) -> Tensor:
    """The asymmetric loss (ASL, Ridnik et al., ICCV 2021) of the authors' reference (Alibaba-MIIL/ASL,
    `AsymmetricLoss`), fused: one pass over the logits.

    With p = σ(x) and the shifted negative probability q = min(1 - p + clip, 1):
    loss = -[y·log(max(p, eps)) + (1 - y)·log(max(q, eps))] · (1 - p_t)^(γ+·y + γ-·(1 - y)),
    p_t = p·y + q·(1 - y). The reference returns -sum, which is reduction 'sum'.

    Args:
        input: any shape, float16/bfloat16/float32/float64 logits.
        target: input's shape: float (soft targets too), bool/uint8 at 1 byte per element, or a
            `SparseTargets` of input's (N, C) shape.
        gamma_neg, gamma_pos: ≥ 0, the focusing exponents of negatives and positives.
        clip: ≥ 0, the probability margin of negatives (0 or None: none).
        eps: ≥ 0, the floor of the probabilities under the logs.
        disable_torch_grad_focal_loss: treat the focusing factor as a constant in the gradient, as the
            reference does with it True (the default); False differentiates it too.
        reduction: 'sum' (the reference) → (); 'mean' (over all elements) → (); 'none' → input's shape.
        weight: (extension) elementwise weight broadcastable to input.
        grad_into_input: write the gradient over `input`'s memory, as in `binary_cross_entropy_with_logits`.

    Returns:
        The loss in the promotion of input's and target's dtypes (input's for 1-byte and sparse targets).
        log p and log(1 - p) are computed as -softplus, so they stay exact where the reference's float32
        σ(x) rounds to 0 or 1 (there the reference clamps at log eps).
    """
    focusing = _asymmetric_focusing(gamma_neg, gamma_pos, clip, eps, disable_torch_grad_focal_loss)
    return _focal_family(
        "asymmetric_loss", "asymmetric", input, target, focusing, reduction, weight, grad_into_input
    )


class SigmoidFocalLoss(nn.Module):
    """`sigmoid_focal_loss` as a module: SigmoidFocalLoss(alpha=0.25, gamma=2, reduction="none")."""

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "none") -> None:
        super().__init__()
        _focal_focusing(alpha, gamma)  # the function's checks, at construction
        self.alpha, self.gamma, self.reduction = alpha, gamma, resolve_reduction(None, None, reduction)

    def forward(self, input: Tensor, target: Tensor | SparseTargets) -> Tensor:
        return sigmoid_focal_loss(input, target, self.alpha, self.gamma, self.reduction)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, reduction={self.reduction!r}"


class AsymmetricLoss(nn.Module):
    """`asymmetric_loss` as a module, with the reference's constructor and reduction='sum' (its -sum)."""

    def __init__(
        self,
        gamma_neg: float = 4.0,
        gamma_pos: float = 1.0,
        clip: float | None = 0.05,
        eps: float = 1e-8,
        disable_torch_grad_focal_loss: bool = True,
        reduction: str = "sum",
    ) -> None:
        super().__init__()
        _asymmetric_focusing(gamma_neg, gamma_pos, clip, eps, disable_torch_grad_focal_loss)
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps
        self.disable_torch_grad_focal_loss = disable_torch_grad_focal_loss
        self.reduction = resolve_reduction(None, None, reduction)

    def forward(self, input: Tensor, target: Tensor | SparseTargets) -> Tensor:
        return asymmetric_loss(
            input,
            target,
            self.gamma_neg,
            self.gamma_pos,
            self.clip,
            self.eps,
            self.disable_torch_grad_focal_loss,
            self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"gamma_neg={self.gamma_neg}, gamma_pos={self.gamma_pos}, clip={self.clip}, eps={self.eps}, "
            f"disable_torch_grad_focal_loss={self.disable_torch_grad_focal_loss}, "
            f"reduction={self.reduction!r}"
        )
