"""label_smoothing and ignore_value (partial labels) of multilabel_soft_margin_loss and
binary_cross_entropy_with_logits and their modules, on both backends with NaN-poisoned allocations.

Smoothing is checked against torch itself on the smoothed target y·(1 - ε) + ε/2 (Keras'
BinaryCrossentropy definition), partial labels against the masked formula written out below: elements whose
target equals ignore_value add nothing, MLSM divides each row by its known labels (0 for a row without any)
and averages the rows that have one, BCE 'mean' divides by the known elements.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import softmargin_triton as st
from tests.conftest import (
    DEVICE,
    LOSSES,
    REDUCTIONS,
    assert_close,
    binary_targets,
    logits,
    random_grad_output,
    soft_targets,
    zipf_label_lists,
)


def loss_and_grad_under(fn, x, target, reduction, **kwargs):
    """(loss, input gradient) of fn, the gradient of 'none' under a random grad_output (never 1)."""
    x = x.detach().clone().requires_grad_(True)
    loss = fn(x, target, reduction=reduction, **kwargs)
    go = random_grad_output(loss) if reduction == "none" else torch.ones_like(loss)
    (grad,) = torch.autograd.grad(loss, x, go)
    return loss, grad, go


def float64_grad(fn, x, target, reduction, go, **kwargs):
    x64 = x.detach().to(torch.float64).requires_grad_(True)
    loss = fn(x64, target, reduction=reduction, **kwargs)
    (grad,) = torch.autograd.grad(loss, x64, go.to(torch.float64))
    return loss.detach(), grad


# --------------------------------------------------------------------------------------------------------
# label_smoothing
# --------------------------------------------------------------------------------------------------------

TARGET_KINDS = {
    "soft-float": lambda rows, cols: soft_targets(rows, cols),
    "uint8": lambda rows, cols: binary_targets(rows, cols, dtype=torch.uint8),
    "sparse": lambda rows, cols: st.SparseTargets.from_lists(
        zipf_label_lists(rows, cols), cols, device=DEVICE
    ),
}


@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("kind", TARGET_KINDS)
@pytest.mark.parametrize("loss_form", LOSSES)
def test_label_smoothing_equals_torch_on_smoothed_targets(backend, loss_form, kind, reduction):
    ours, theirs = LOSSES[loss_form]
    epsilon = 0.1
    x, target = logits(6, 700), TARGET_KINDS[kind](6, 700)
    loss, grad, go = loss_and_grad_under(ours, x, target, reduction, label_smoothing=epsilon)
    dense = (
        target.to_dense(torch.float64) if isinstance(target, st.SparseTargets) else target.to(torch.float64)
    )
    smoothed = dense * (1 - epsilon) + epsilon / 2
    expected, expected_grad = float64_grad(theirs, x, smoothed, reduction, go)
    assert_close(loss, expected)
    assert_close(grad, expected_grad, dtype=x.dtype)


@pytest.mark.parametrize("loss_form", LOSSES)
def test_label_smoothing_zero_is_no_smoothing(backend, loss_form):
    ours, _ = LOSSES[loss_form]
    x, y = logits(4, 300), soft_targets(4, 300)
    plain = loss_and_grad_under(ours, x, y, "sum")[:2]
    zero = loss_and_grad_under(ours, x, y, "sum", label_smoothing=0.0)[:2]
    assert all(torch.equal(a, b) for a, b in zip(plain, zero, strict=True))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_label_smoothing_half_logits(backend, dtype):
    x, y = logits(5, 400, dtype=dtype), binary_targets(5, 400, dtype=torch.bool)
    loss, grad, go = loss_and_grad_under(st.multilabel_soft_margin_loss, x, y, "mean", label_smoothing=0.2)
    smoothed = y.to(torch.float64) * 0.8 + 0.1
    expected, expected_grad = float64_grad(F.multilabel_soft_margin_loss, x, smoothed, "mean", go)
    assert_close(loss, expected)
    assert_close(grad, expected_grad)


# --------------------------------------------------------------------------------------------------------
# ignore_value: partial labels
# --------------------------------------------------------------------------------------------------------


def masked_loss(loss_form, x, target, reduction="mean", ignore_value=-1, weight=None, pos_weight=None):
    """The partial-label loss written out: torch's elementwise terms, masked, and the known-label divisors."""
    known = target != ignore_value
    y = torch.where(known, target, 0).to(x.dtype)
    x = torch.where(known, x, 0.0)
    if loss_form == "mlsm":
        terms = -(y * F.logsigmoid(x) + (1 - y) * F.logsigmoid(-x))
        terms = terms if weight is None else terms * weight
    else:
        terms = F.binary_cross_entropy_with_logits(x, y, weight, reduction="none", pos_weight=pos_weight)
    terms = torch.where(known, terms, 0.0)
    if loss_form == "bce":
        return {"none": terms, "sum": terms.sum(), "mean": terms.sum() / known.sum()}[reduction]
    counts = known.sum(-1)
    per_row = torch.where(counts > 0, terms.sum(-1) / counts.clamp(min=1), 0.0)
    return {"none": per_row, "sum": per_row.sum(), "mean": per_row.sum() / (counts > 0).sum()}[reduction]


def partial_targets(rows, cols, dtype=torch.int8):
    """OpenImages-style {-1, 0, 1} targets (-1 unknown), with one row entirely unknown."""
    target = torch.randint(-1, 2, (rows, cols), device=DEVICE, dtype=dtype)
    target[1] = -1
    return target


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss_form", LOSSES)
def test_partial_labels_match_masked_formula(backend, loss_form, reduction):
    x, target = logits(6, 700), partial_targets(6, 700)
    loss, grad, go = loss_and_grad_under(LOSSES[loss_form][0], x, target, reduction, ignore_value=-1)
    expected, expected_grad = float64_grad(
        lambda a, t, reduction: masked_loss(loss_form, a, t, reduction), x, target, reduction, go
    )
    assert_close(loss, expected)
    assert_close(grad, expected_grad, dtype=x.dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("loss_form", LOSSES)
def test_partial_labels_half_logits(backend, loss_form, dtype):
    """16-bit logits: fp16 applies the known-label divisors in the backward (with grad_output), the others
    in the forward."""
    x, target = logits(5, 900, dtype=dtype), partial_targets(5, 900)
    loss, grad, go = loss_and_grad_under(LOSSES[loss_form][0], x, target, "mean", ignore_value=-1)
    expected, expected_grad = float64_grad(
        lambda a, t, reduction: masked_loss(loss_form, a, t, reduction), x, target, "mean", go
    )
    assert_close(loss, expected)
    assert_close(grad, expected_grad)


def test_partial_labels_with_weights_smoothing_and_float_targets(backend):
    """A float target with 0.5 marking unknown, per-class weight and pos_weight, and smoothing on top."""
    x = logits(5, 300)
    target = torch.where(torch.rand(5, 300, device=DEVICE) < 0.3, 0.5, binary_targets(5, 300))
    weight, pos_weight = torch.rand(300, device=DEVICE), torch.rand(300, device=DEVICE) * 3
    options = dict(ignore_value=0.5, label_smoothing=0.2)
    loss, grad, go = loss_and_grad_under(
        st.binary_cross_entropy_with_logits,
        x,
        target,
        "mean",
        weight=weight,
        pos_weight=pos_weight,
        **options,
    )

    def expected_fn(a, t, reduction):
        smoothed = torch.where(t == 0.5, t, t * 0.8 + 0.1)  # unknown stays unknown
        return masked_loss("bce", a, smoothed, reduction, 0.5, weight.double(), pos_weight.double())

    expected, expected_grad = float64_grad(expected_fn, x, target.double(), "mean", go)
    assert_close(loss, expected)
    assert_close(grad, expected_grad)


@pytest.mark.parametrize("loss_form", LOSSES)
def test_partial_labels_ignore_nonfinite_logits_and_empty_means(backend, loss_form):
    """An ignored logit, NaN or ±inf, adds no loss and gets gradient 0; a 'mean' of no known label is NaN."""
    ours = LOSSES[loss_form][0]
    x = logits(3, 40)
    target = torch.randint(0, 2, (3, 40), device=DEVICE, dtype=torch.int8)
    target[:, :3] = -1
    with torch.no_grad():
        x[:, :3] = torch.tensor([math.nan, math.inf, -math.inf], device=DEVICE)
    loss, grad, _ = loss_and_grad_under(ours, x, target, "sum", ignore_value=-1)
    assert loss.isfinite() and grad.isfinite().all() and (grad[:, :3] == 0).all()
    nothing_known = ours(
        logits(2, 40), torch.full((2, 40), -1, device=DEVICE, dtype=torch.int8), ignore_value=-1
    )
    assert nothing_known.isnan()


def test_partial_labels_fallback_paths(backend):
    """Calls the fused op cannot serve go to torch with the same semantics: a target that requires grad,
    an MLSM target that broadcasts over the batch."""
    x = logits(4, 60)
    target = partial_targets(4, 60).to(torch.float32).requires_grad_(True)
    loss, grad, go = loss_and_grad_under(st.multilabel_soft_margin_loss, x, target, "mean", ignore_value=-1)
    expected, expected_grad = float64_grad(
        lambda a, t, reduction: masked_loss("mlsm", a, t, reduction), x, target.detach(), "mean", go
    )
    assert_close(loss, expected)
    assert_close(grad, expected_grad)
    row_target = partial_targets(2, 60)[0]  # (C,): broadcast over the rows
    loss = st.multilabel_soft_margin_loss(x, row_target, reduction="none", ignore_value=-1)
    assert_close(loss, masked_loss("mlsm", x.detach().double(), row_target.expand(4, 60), "none"))


def test_modules_take_label_options(backend):
    x, target = logits(4, 50), partial_targets(4, 50)
    for module, function in (
        (st.MultiLabelSoftMarginLoss, st.multilabel_soft_margin_loss),
        (st.BCEWithLogitsLoss, st.binary_cross_entropy_with_logits),
    ):
        criterion = module(reduction="sum", label_smoothing=0.1, ignore_value=-1)
        expected = function(x, target, reduction="sum", label_smoothing=0.1, ignore_value=-1)
        assert_close(criterion(x, target), expected)
        assert "label_smoothing=0.1, ignore_value=-1" in repr(criterion)


def test_compile_fullgraph_with_label_options(fresh_dynamo, backend):
    """torch.compile traces the known-label count op and the forward op's extra arguments."""
    x, target = logits(4, 64), partial_targets(4, 64)

    def fn(a, t):
        return st.multilabel_soft_margin_loss(a, t, label_smoothing=0.1, ignore_value=-1)

    compiled = torch.compile(fn, fullgraph=True)
    loss, grad, _ = loss_and_grad_under(lambda a, t, reduction: compiled(a, t), x, target, "mean")
    expected, expected_grad, _ = loss_and_grad_under(lambda a, t, reduction: fn(a, t), x, target, "mean")
    assert_close(loss, expected)
    assert_close(grad, expected_grad)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(label_smoothing=1.0), ValueError, r"\[0, 1\)"),
        (dict(label_smoothing=-0.1), ValueError, r"\[0, 1\)"),
        (dict(label_smoothing="0.1"), TypeError, "label_smoothing"),
        (dict(ignore_value=math.nan), ValueError, "NaN"),
        (dict(ignore_value="unknown"), TypeError, "ignore_value"),
    ],
    ids=["smoothing-1", "smoothing-negative", "smoothing-str", "ignore-nan", "ignore-str"],
)
@pytest.mark.parametrize("loss_form", LOSSES)
def test_bad_label_options_raise(loss_form, kwargs, error, match):
    x, y = logits(2, 5, requires_grad=False), binary_targets(2, 5)
    with pytest.raises(error, match=match):
        LOSSES[loss_form][0](x, y, **kwargs)


@pytest.mark.parametrize("loss_form", LOSSES)
def test_ignore_value_with_sparse_targets_raises(loss_form):
    targets = st.SparseTargets.from_lists([[1], [0, 2]], 4, device=DEVICE)
    with pytest.raises(ValueError, match="SparseTargets"):
        LOSSES[loss_form][0](logits(2, 4), targets, ignore_value=-1)
