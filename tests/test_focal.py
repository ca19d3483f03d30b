"""sigmoid_focal_loss and asymmetric_loss against their published formulas (torchvision's
`sigmoid_focal_loss`, the ASL authors' `AsymmetricLoss`), written out below and evaluated in float64 with
torch's autograd, on both backends (the plain-torch reference and the Triton kernels), with NaN-poisoned
allocations (the `backend` fixture)."""

import math

import pytest
import torch
import torch.nn.functional as F

import softmargin_triton as st
from tests.conftest import (
    DEVICE,
    REDUCTIONS,
    assert_close,
    binary_targets,
    logits,
    loss_and_grad,
    random_grad_output,
    soft_targets,
    zipf_label_lists,
)


def torchvision_focal(inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
    """torchvision.ops.sigmoid_focal_loss's formula (torchvision is not importable beside the CPU torch
    build here, see DESIGN.md)."""
    p = torch.sigmoid(inputs)
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


def reference_asl(
    x, y, gamma_neg=4, gamma_pos=1, clip=0.05, eps=1e-8, disable_torch_grad_focal_loss=True, reduction="sum"
):
    """Alibaba-MIIL/ASL's AsymmetricLoss.forward (its -sum is reduction 'sum')."""
    xs_pos = torch.sigmoid(x)
    xs_neg = 1 - xs_pos
    if clip is not None and clip > 0:
        xs_neg = (xs_neg + clip).clamp(max=1)
    loss = y * torch.log(xs_pos.clamp(min=eps)) + (1 - y) * torch.log(xs_neg.clamp(min=eps))
    if gamma_neg > 0 or gamma_pos > 0:
        with torch.set_grad_enabled(not disable_torch_grad_focal_loss):
            pt = xs_pos * y + xs_neg * (1 - y)
            weight = torch.pow(1 - pt, gamma_pos * y + gamma_neg * (1 - y))
        loss = loss * weight
    loss = -loss
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


def compare(ours, published, x, target, reduction, **kwargs):
    """Loss and input gradient of `ours` against `published` in float64 on the same (rounded) inputs; the
    gradient of 'none' under a random grad_output (never 1, so the backward must scale)."""
    x = x.detach().clone().requires_grad_(True)
    loss = ours(x, target, reduction=reduction, **kwargs)
    go = random_grad_output(loss) if reduction == "none" else torch.ones_like(loss)
    (grad,) = torch.autograd.grad(loss, x, go)
    x64 = x.detach().to(torch.float64).requires_grad_(True)
    dense = target.to_dense(torch.float64) if isinstance(target, st.SparseTargets) else target
    expected = published(x64, dense.to(torch.float64), reduction=reduction, **kwargs)
    (expected_grad,) = torch.autograd.grad(expected, x64, go.to(torch.float64))
    assert_close(loss, expected.detach())
    assert_close(grad, expected_grad, dtype=x.dtype)


# (alpha, gamma, target kind): torchvision's default, no α with a fractional γ on soft targets, γ = 0
FOCAL_CASES = {
    "default-binary": (0.25, 2.0, binary_targets),
    "no-alpha-gamma0.5-soft": (-1, 0.5, soft_targets),
    "alpha0.5-gamma0-soft": (0.5, 0.0, soft_targets),
}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", FOCAL_CASES)
def test_focal_matches_torchvision(backend, case, reduction):
    alpha, gamma, targets = FOCAL_CASES[case]
    x, y = logits(7, 300), targets(7, 300)
    compare(st.sigmoid_focal_loss, torchvision_focal, x, y, reduction, alpha=alpha, gamma=gamma)


# The reference's default; plain BCE (no focusing, no clip); γ- = 0 with a clip (its clamped gradient is
# not hidden by a zero focusing factor); soft targets without eps.
ASL_CASES = {
    "default": dict(gamma_neg=4, gamma_pos=1, clip=0.05, eps=1e-8),
    "bce": dict(gamma_neg=0, gamma_pos=0, clip=0, eps=1e-8),
    "clip-only": dict(gamma_neg=0, gamma_pos=2, clip=0.2, eps=1e-8),
    "soft-no-eps": dict(gamma_neg=2, gamma_pos=0.5, clip=None, eps=0.0),
}


@pytest.mark.parametrize("disable_torch_grad_focal_loss", [True, False], ids=["focus-detached", "focus-grad"])
@pytest.mark.parametrize("case", ASL_CASES)
def test_asymmetric_matches_reference(backend, case, disable_torch_grad_focal_loss):
    targets = soft_targets if case.startswith("soft") else binary_targets
    compare(
        st.asymmetric_loss,
        reference_asl,
        logits(7, 300),
        targets(7, 300),
        "sum",
        disable_torch_grad_focal_loss=disable_torch_grad_focal_loss,
        **ASL_CASES[case],
    )


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_asymmetric_reductions(backend, reduction):
    compare(st.asymmetric_loss, reference_asl, logits(5, 200), binary_targets(5, 200), reduction)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("loss", ["focal", "asymmetric"])
def test_half_logits_with_byte_targets(backend, loss, dtype):
    """16-bit logits and a uint8 target: the loss in the logits' dtype, within its rounding."""
    ours, published = {
        "focal": (st.sigmoid_focal_loss, torchvision_focal),
        "asymmetric": (st.asymmetric_loss, reference_asl),
    }[loss]
    compare(ours, published, logits(6, 500, dtype=dtype), binary_targets(6, 500, dtype=torch.uint8), "sum")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_clipped_log_near_one_in_half_precision(backend, dtype):
    """Every 16-bit logit from -4 to -2 as a negative label, unfocused (the loss is -log q): around
    logit(clip) = -2.944, q = 1 - (σ(x) - clip) comes within 10^-4 of 1, where log q is small and an
    absolute error in it would be a large relative one."""
    grid = torch.arange(-4.0, -2.0, 2.0**-9, device=DEVICE).to(dtype).unique().reshape(1, -1)
    targets = torch.zeros_like(grid, dtype=torch.uint8)
    compare(st.asymmetric_loss, reference_asl, grid, targets, "none", gamma_neg=0, gamma_pos=0, clip=0.05)


@pytest.mark.parametrize("loss", ["focal", "asymmetric"])
def test_sparse_targets_and_weight_equal_dense(backend, loss):
    """A SparseTargets, and an elementwise weight, give the values and gradient of the dense 0/1 target."""
    ours = st.sigmoid_focal_loss if loss == "focal" else st.asymmetric_loss
    rows, cols = 6, 1500
    targets = st.SparseTargets.from_lists(zipf_label_lists(rows, cols), cols, device=DEVICE)
    weight = torch.rand(cols, device=DEVICE) + 0.5
    x = logits(rows, cols)
    x64 = x.detach().to(torch.float64).requires_grad_(True)
    reference = torchvision_focal if loss == "focal" else reference_asl
    expected = (reference(x64, targets.to_dense(torch.float64), reduction="none") * weight).sum()
    (expected_grad,) = torch.autograd.grad(expected, x64)
    for target in (targets, targets.to_dense(torch.float32)):
        actual, actual_grad = loss_and_grad(ours, x, target, reduction="sum", weight=weight)
        assert_close(actual, expected.detach(), dtype=torch.float32)
        assert_close(actual_grad, expected_grad, dtype=torch.float32)


@pytest.mark.parametrize("loss", ["focal", "asymmetric"])
def test_nonfinite_logits_like_the_references(backend, loss):
    """NaN and ±inf logits give NaN, ±inf or finite values exactly where the published formulas do."""
    ours = st.sigmoid_focal_loss if loss == "focal" else st.asymmetric_loss
    reference = torchvision_focal if loss == "focal" else reference_asl
    special = torch.tensor([math.nan, math.inf, -math.inf, 0.0, 3.0], device=DEVICE)
    x = special.repeat_interleave(2).reshape(1, -1)
    y = torch.tensor([0.0, 1.0], device=DEVICE).repeat(5).reshape(1, -1)
    actual = ours(x, y, reduction="none")
    expected = reference(x.to(torch.float64), y.to(torch.float64), reduction="none")
    assert_close(actual, expected)


def test_modules_equal_functions(backend):
    x, y = logits(4, 100), binary_targets(4, 100)
    focal = st.SigmoidFocalLoss(alpha=0.4, gamma=1.5, reduction="mean")
    asl = st.AsymmetricLoss(gamma_neg=3, clip=0.1, disable_torch_grad_focal_loss=False)
    assert_close(focal(x, y), st.sigmoid_focal_loss(x, y, 0.4, 1.5, "mean"))
    assert_close(asl(x, y), st.asymmetric_loss(x, y, 3, 1, 0.1, 1e-8, False, "sum"))
    assert "gamma=1.5" in repr(focal) and "clip=0.1" in repr(asl)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda x, y: st.sigmoid_focal_loss(x, y, alpha=1.5), ValueError, "alpha"),
        (lambda x, y: st.sigmoid_focal_loss(x, y, alpha=-0.5), ValueError, "alpha"),
        (lambda x, y: st.sigmoid_focal_loss(x, y, gamma=-1), ValueError, "gamma"),
        (lambda x, y: st.sigmoid_focal_loss(x, y, reduction="avg"), ValueError, "reduction"),
        (lambda x, y: st.sigmoid_focal_loss(x, y[:, :3]), ValueError, "shape"),
        (lambda x, y: st.sigmoid_focal_loss(x, y.long()), TypeError, "int64"),
        (lambda x, y: st.sigmoid_focal_loss(x.long(), y), NotImplementedError, "floating-point"),
        (lambda x, y: st.asymmetric_loss(x, y, gamma_neg=-1), ValueError, "gamma_neg"),
        (lambda x, y: st.asymmetric_loss(x, y, clip=-0.1), ValueError, "clip"),
        (lambda x, y: st.asymmetric_loss(x, y, eps=-1e-8), ValueError, "eps"),
        (lambda x, y: st.asymmetric_loss(x, y, gamma_pos="1"), TypeError, "gamma_pos"),
        (lambda x, y: st.AsymmetricLoss(gamma_pos=-2), ValueError, "gamma_pos"),
        (lambda x, y: st.SigmoidFocalLoss(alpha=2), ValueError, "alpha"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_bad_arguments_raise(call, error, match):
    x, y = logits(2, 5, requires_grad=False), binary_targets(2, 5)
    with pytest.raises(error, match=match):
        call(x, y)
