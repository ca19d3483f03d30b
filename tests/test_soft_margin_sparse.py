"""The losses with SparseTargets: equal to the dense-target call on `to_dense()`, never building it.

Positives follow Zipf's law (0–40 per row, empty rows included). Like test_soft_margin.py, most tests run on
both backends with NaN-poisoned allocations.
"""

import pytest
import torch
from conftest import (
    DEVICE,
    LOSSES,
    REDUCTIONS,
    assert_close,
    logits,
    loss_and_grad,
    random_grad_output,
    reference_loss_and_grad,
    zipf_label_lists,
)

import softmargin_triton as st
from softmargin_triton.reference import reduction_grad_scale
from softmargin_triton.sparse_targets import positive_rows


def zipf_targets(rows, cols):
    return st.SparseTargets.from_lists(
        zipf_label_lists(rows, cols, max_positives=min(40, cols)), cols, DEVICE
    )


def weights(loss_form, weighting, rows, cols):
    """(weight, pos_weight) for a weighting case; pos_weight only exists for BCE."""
    weight = {
        "none": None,
        "per-label": torch.rand(cols, device=DEVICE) + 0.5,
        "per-row": torch.rand(rows, 1, device=DEVICE) + 0.5,
        "per-element": torch.rand(rows, cols, device=DEVICE) + 0.5,
    }[weighting.removesuffix("+pos")]
    pos_weight = torch.rand(cols, device=DEVICE) * 3 if weighting.endswith("+pos") else None
    return weight, pos_weight


def loss_kwargs(reduction, weight, pos_weight):
    return {"reduction": reduction, "weight": weight} | (
        {"pos_weight": pos_weight} if pos_weight is not None else {}
    )


WEIGHTINGS = {
    "mlsm": ["none", "per-label", "per-row", "per-element"],
    "bce": ["none", "per-label", "per-element", "none+pos", "per-label+pos", "per-element+pos"],
}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize(
    "loss_form, weighting", [(form, w) for form, ws in WEIGHTINGS.items() for w in ws], ids="-".join
)
def test_equals_dense_target(backend, loss_form, weighting, dtype, reduction):
    ours, theirs = LOSSES[loss_form]
    rows, cols = 37, 300
    x, targets = logits(rows, cols, dtype=dtype), zipf_targets(rows, cols)
    dense = targets.to_dense(dtype)
    weight, pos_weight = weights(loss_form, weighting, rows, cols)
    kwargs = loss_kwargs(reduction, weight, pos_weight)
    loss = ours(x, targets, **kwargs)
    go = random_grad_output(loss)
    loss, grad = loss_and_grad(ours, x, targets, grad_output=go, **kwargs)
    expected, expected_grad = loss_and_grad(theirs, x, dense, grad_output=go, **kwargs)
    assert loss.dtype == expected.dtype
    assert grad.dtype == expected_grad.dtype
    assert_close(loss, expected)
    assert_close(grad, expected_grad)
    reference, reference_grad = reference_loss_and_grad(
        loss_form, x, dense, weight, pos_weight, reduction, go
    )
    assert_close(loss, reference)
    assert_close(grad, reference_grad)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("cols", [1, 7, 1000, 4097])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("loss_form", LOSSES)
def test_kernel_against_float64_reference(poisoned_allocations, loss_form, dtype, cols, reduction):
    ours, _ = LOSSES[loss_form]
    rows = 5
    x, targets = logits(rows, cols, dtype=dtype), zipf_targets(rows, cols)
    weight, pos_weight = weights(
        loss_form, "per-label+pos" if loss_form == "bce" else "per-label", rows, cols
    )
    kwargs = loss_kwargs(reduction, weight, pos_weight)
    with st.use_backend("triton"):
        go = random_grad_output(ours(x, targets, **kwargs))
        loss, grad = loss_and_grad(ours, x, targets, grad_output=go, **kwargs)
    dense = targets.to_dense(torch.float64)
    expected, expected_grad = reference_loss_and_grad(loss_form, x, dense, weight, pos_weight, reduction, go)
    assert loss.dtype == (dtype if loss_form == "bce" else torch.float32)  # MLSM: promoted by the weight
    assert grad.dtype == dtype
    assert_close(loss, expected, dtype)
    assert_close(grad, expected_grad, dtype)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss_form", LOSSES)
def test_grad_into_input(backend, loss_form, reduction):
    ours, theirs = LOSSES[loss_form]
    x, targets = logits(9, 200, requires_grad=False), zipf_targets(9, 200)
    expected, expected_grad = loss_and_grad(theirs, x, targets.to_dense(), reduction=reduction)
    buffer = x.clone().requires_grad_(True)
    loss = ours(buffer, targets, reduction=reduction, grad_into_input=True)
    loss.backward(torch.ones_like(loss))
    assert buffer.grad.data_ptr() == buffer.data_ptr()  # the positives were read before being overwritten
    assert_close(loss, expected)
    assert_close(buffer.grad, expected_grad)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss_form", LOSSES)
def test_op_writes_every_output_element(poisoned_allocations, loss_form, reduction):
    """The out-variant op with NaN-filled allocations and gradient buffer: every element gets written, and
    the int64 label ids of a hand-built SparseTargets work as the constructors' int32 ones do."""
    rows, cols = 6, 1000
    x, targets = logits(rows, cols, requires_grad=False), zipf_targets(rows, cols)
    targets = st.SparseTargets(targets.indptr, targets.indices.long(), cols)
    scale = reduction_grad_scale(loss_form, reduction, rows, cols)
    expected, expected_grad = reference_loss_and_grad(loss_form, x, targets.to_dense(), reduction=reduction)
    for use_triton in (False, True):
        grad = torch.full_like(x, float("nan"))
        loss = torch.ops.softmargin_triton.soft_margin_forward(
            x,
            None,
            targets.indptr,
            targets.indices,
            None,
            None,
            None,
            grad,
            scale,
            loss_form,
            reduction,
            x.dtype,
            use_triton,
        )
        expected_shape = {"none": (rows,) if loss_form == "mlsm" else (rows, cols)}.get(reduction, ())
        assert_close(loss.reshape(expected_shape), expected)
        assert_close(grad, expected_grad)


@pytest.mark.parametrize("loss_form", LOSSES)
def test_no_grad_needed_matches(backend, loss_form):
    ours, theirs = LOSSES[loss_form]
    x, targets = logits(8, 50, requires_grad=False), zipf_targets(8, 50)
    assert_close(ours(x, targets), theirs(x, targets.to_dense()))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss_form", LOSSES)
def test_nonfinite_logits_like_dense(backend, loss_form, reduction):
    ours, theirs = LOSSES[loss_form]
    inf, nan = float("inf"), float("nan")
    x = logits(5, 6, requires_grad=False)
    x[0, 0], x[1, 0], x[2, 1], x[3, 2], x[4, 3] = inf, -inf, inf, -inf, nan
    targets = st.SparseTargets.from_lists([[0], [0], [2], [3], [3]], 6, device=DEVICE)
    loss, grad = loss_and_grad(ours, x, targets, reduction=reduction)
    expected, expected_grad = loss_and_grad(theirs, x, targets.to_dense(), reduction=reduction)
    assert_close(loss, expected)
    assert_close(grad, expected_grad)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss_form", LOSSES)
def test_confident_logits_keep_small_losses(backend, loss_form, reduction):
    """A trained model: positives far above, negatives far below zero, and one logit at 1e10. Each
    positive's loss is tiny next to its logit, so no part of the sum may pass through a logit-sized value."""
    ours, theirs = LOSSES[loss_form]
    rows, cols = 8, 1000
    targets = zipf_targets(rows, cols)
    dense = targets.to_dense()
    x = torch.where(dense.bool(), 18.0, -18.0) + torch.randn(rows, cols, device=DEVICE)
    x[positive_rows(targets.indptr, targets.nnz)[0], targets.indices[0]] = 1e10  # the first positive
    x = x.requires_grad_(True)
    loss, grad = loss_and_grad(ours, x, targets, reduction=reduction)
    expected, expected_grad = loss_and_grad(theirs, x.double(), dense.double(), reduction=reduction)
    assert_close(loss, expected)
    assert_close(grad, expected_grad)


def test_weight_needing_grad_goes_dense(backend):
    """MLSM differentiates its weight (BCE refuses, as torch does): such calls take torch's dense path."""
    x, targets = logits(6, 40), zipf_targets(6, 40)
    weight = (torch.rand(40, device=DEVICE) + 0.5).requires_grad_(True)
    loss = st.multilabel_soft_margin_loss(x, targets, weight)
    expected = torch.nn.functional.multilabel_soft_margin_loss(x, targets.to_dense(), weight)
    grads = torch.autograd.grad(loss, (x, weight))
    expected_grads = torch.autograd.grad(expected, (x, weight))
    assert_close(loss, expected)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        assert_close(grad, expected_grad)
    with pytest.raises(RuntimeError, match="not differentiable with respect to argument 'weight'"):
        st.binary_cross_entropy_with_logits(x, targets, weight)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss_form", LOSSES)
def test_empty_like_dense(backend, loss_form, reduction):
    ours, theirs = LOSSES[loss_form]
    for rows, cols in ((0, 5), (3, 0)):
        x = logits(rows, cols)
        targets = st.SparseTargets.from_lists([[] for _ in range(rows)], cols, DEVICE)
        loss = ours(x, targets, reduction=reduction)
        expected = theirs(x, targets.to_dense(), reduction=reduction)
        assert loss.shape == expected.shape
        assert_close(loss, expected)


def test_modules_take_sparse_targets(backend):
    x, targets = logits(7, 30), zipf_targets(7, 30)
    weight, pos_weight = torch.rand(30, device=DEVICE) + 0.5, torch.rand(30, device=DEVICE) + 0.5
    for ours, theirs in (
        (st.MultiLabelSoftMarginLoss(weight), torch.nn.MultiLabelSoftMarginLoss(weight)),
        (
            st.BCEWithLogitsLoss(weight, pos_weight=pos_weight),
            torch.nn.BCEWithLogitsLoss(weight, pos_weight=pos_weight),
        ),
    ):
        loss, grad = loss_and_grad(ours, x, targets)
        expected, expected_grad = loss_and_grad(theirs, x, targets.to_dense())
        assert_close(loss, expected)
        assert_close(grad, expected_grad)


@pytest.mark.parametrize("loss_form", LOSSES)
def test_autocast_output_dtype_like_torch(backend, loss_form):
    ours, theirs = LOSSES[loss_form]
    x, targets = logits(4, 16, dtype=torch.bfloat16), zipf_targets(4, 16)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        loss = ours(x, targets)
        expected = theirs(x, targets.to_dense(torch.bfloat16))
    assert loss.dtype == expected.dtype
    assert_close(loss, expected)


@pytest.mark.parametrize("loss_form", LOSSES)
def test_compile_fullgraph_model(fresh_dynamo, backend, loss_form):
    ours, theirs = LOSSES[loss_form]
    torch.manual_seed(0)
    model = torch.nn.Linear(12, 50).to(DEVICE)

    def step(features, targets):
        return ours(model(features), targets)

    compiled = torch.compile(step, fullgraph=True)
    features, targets = torch.randn(9, 12, device=DEVICE), zipf_targets(9, 50)
    loss = compiled(features, targets)
    (grad,) = torch.autograd.grad(loss, model.weight)
    expected = theirs(model(features), targets.to_dense())
    (expected_grad,) = torch.autograd.grad(expected, model.weight)
    assert_close(loss, expected)
    assert_close(grad, expected_grad)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda x, t: st.multilabel_soft_margin_loss(x[:, :-1], t), ValueError, "SparseTargets of shape"),
        (lambda x, t: st.multilabel_soft_margin_loss(x[0], t), ValueError, "SparseTargets of shape"),
        (lambda x, t: st.binary_cross_entropy_with_logits(x[:-1], t), ValueError, "Target size"),
        (lambda x, t: st.multilabel_soft_margin_loss(x, t.to("meta")), RuntimeError, "meta"),
        (lambda x, t: st.binary_cross_entropy_with_logits(x, t.to("meta")), RuntimeError, "meta"),
    ],
    ids=["mlsm-labels", "mlsm-1d-input", "bce-rows", "mlsm-device", "bce-device"],
)
def test_bad_calls_raise(backend, call, error, match):
    x, targets = logits(3, 4, requires_grad=False), zipf_targets(3, 4)
    with pytest.raises(error, match=match):
        call(x, targets)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss_form", LOSSES)
def test_compile_fullgraph_without_gradient(fresh_dynamo, backend, loss_form, reduction):
    ours, theirs = LOSSES[loss_form]
    x, targets = logits(4, 9, requires_grad=False), zipf_targets(4, 9)
    compiled = torch.compile(lambda a, b: ours(a, b, reduction=reduction), fullgraph=True)
    with torch.no_grad():
        assert_close(compiled(x, targets), theirs(x, targets.to_dense(), reduction=reduction))


# --------------------------------------------------------------------------------------------------------
# GPU tier: an Amazon-670K-sized batch
# --------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("loss_form", LOSSES)
def test_gpu_amazon_670k(poisoned_allocations, loss_form):
    """B=4096, L=670,091 bf16 logits, Zipf positives: the loss and every gradient row against the float64
    reference, computed in row chunks (the whole float64 problem would be 22 GB per tensor)."""
    ours, _ = LOSSES[loss_form]
    rows, cols = 4096, 670_091
    x, targets = logits(rows, cols, dtype=torch.bfloat16), zipf_targets(rows, cols)
    loss, grad = loss_and_grad(ours, x, targets, reduction="sum")
    expected = torch.zeros((), dtype=torch.float64, device=DEVICE)
    for start in range(0, rows, 256):
        chunk = slice(start, start + 256)
        dense = st.SparseTargets(
            targets.indptr[start : start + 257] - targets.indptr[start],
            targets.indices[targets.indptr[start] : targets.indptr[min(start + 256, rows)]],
            cols,
        ).to_dense(torch.float64)
        chunk_loss, chunk_grad = reference_loss_and_grad(loss_form, x[chunk], dense, reduction="sum")
        expected += chunk_loss
        assert_close(grad[chunk], chunk_grad, torch.bfloat16)
    assert_close(loss, expected, torch.float32)
