"""multilabel_soft_margin_loss / binary_cross_entropy_with_logits against torch and the float64 reference.

Most tests run twice, on backend "torch" (the plain-torch reference) and "triton" (the kernels: compiled on
a GPU, Triton's interpreter on CPU), over fresh random data with NaN-poisoned allocations.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    DEVICE,
    LOSSES,
    REDUCTIONS,
    assert_close,
    binary_targets,
    logits,
    loss_and_grad,
    random_grad_output,
    reference_loss_and_grad,
    soft_targets,
)

import softmargin_triton as st
from softmargin_triton.reference import reduction_grad_scale

# --------------------------------------------------------------------------------------------------------
# Equal to torch: values, shapes, dtypes and gradients
# --------------------------------------------------------------------------------------------------------

MLSM_SHAPES = [(7,), (5, 7), (2, 3, 9), (4, 1000)]
BCE_SHAPES = [(), (11,), (5, 7), (2, 3, 9), (4, 1000), (6, 1)]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize(
    "loss_form, shape",
    [("mlsm", s) for s in MLSM_SHAPES] + [("bce", s) for s in BCE_SHAPES],
    ids=lambda v: ("x".join(map(str, v)) or "scalar") if isinstance(v, tuple) else v,
)
def test_matches_torch(backend, loss_form, shape, dtype, reduction):
    ours, theirs = LOSSES[loss_form]
    x, y = logits(*shape, dtype=dtype), soft_targets(*shape, dtype=dtype)
    loss, grad = loss_and_grad(ours, x, y, reduction=reduction)
    go = random_grad_output(loss)
    _, grad_scaled = loss_and_grad(ours, x, y, reduction=reduction, grad_output=go)
    expected, expected_grad = loss_and_grad(theirs, x, y, reduction=reduction)
    _, expected_grad_scaled = loss_and_grad(theirs, x, y, reduction=reduction, grad_output=go)
    assert loss.dtype == expected.dtype
    assert grad.dtype == expected_grad.dtype
    assert_close(loss, expected)
    assert_close(grad, expected_grad)
    assert_close(grad_scaled, expected_grad_scaled)


WEIGHT_SHAPES = [(7,), (1, 7), (5, 7), (5, 1), ()]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight_shape", WEIGHT_SHAPES, ids=lambda s: "w" + "x".join(map(str, s)))
@pytest.mark.parametrize("loss_form", LOSSES)
def test_weight_broadcasts_like_torch(backend, loss_form, weight_shape, reduction):
    ours, theirs = LOSSES[loss_form]
    x, y = logits(5, 7), soft_targets(5, 7)
    weight = torch.rand(weight_shape, device=DEVICE) + 0.1
    loss, grad = loss_and_grad(ours, x, y, weight, reduction=reduction)
    expected, expected_grad = loss_and_grad(theirs, x, y, weight, reduction=reduction)
    assert_close(loss, expected)
    assert_close(grad, expected_grad)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    "pos_weight_shape", [(7,), (1, 7), (5, 7), ()], ids=lambda s: "pw" + "x".join(map(str, s))
)
def test_pos_weight_like_torch(backend, pos_weight_shape, reduction):
    x, y = logits(5, 7), soft_targets(5, 7)
    pos_weight = torch.rand(pos_weight_shape, device=DEVICE) * 4
    weight = torch.rand(7, device=DEVICE)
    kwargs = dict(weight=weight, pos_weight=pos_weight, reduction=reduction)
    loss, grad = loss_and_grad(st.binary_cross_entropy_with_logits, x, y, **kwargs)
    expected, expected_grad = loss_and_grad(F.binary_cross_entropy_with_logits, x, y, **kwargs)
    assert_close(loss, expected)
    assert_close(grad, expected_grad)


@pytest.mark.parametrize("loss_form", LOSSES)
def test_targets_outside_unit_interval(backend, loss_form):
    ours, theirs = LOSSES[loss_form]
    x, y = logits(4, 9), (torch.rand(4, 9, device=DEVICE) * 4 - 2)
    loss, grad = loss_and_grad(ours, x, y, reduction="none")
    expected, expected_grad = loss_and_grad(theirs, x, y, reduction="none")
    assert_close(loss, expected)
    assert_close(grad, expected_grad)


@pytest.mark.parametrize("target_dtype", [torch.int64, torch.uint8, torch.int32], ids=str)
def test_mlsm_integer_targets_like_torch(backend, target_dtype):
    x, y = logits(4, 9), binary_targets(4, 9, dtype=target_dtype)
    loss, grad = loss_and_grad(st.multilabel_soft_margin_loss, x, y)
    expected, expected_grad = loss_and_grad(F.multilabel_soft_margin_loss, x, y)
    assert loss.dtype == expected.dtype
    assert_close(loss, expected)
    assert_close(grad, expected_grad)


@pytest.mark.parametrize("target_dtype", [torch.bool, torch.uint8], ids=str)
@pytest.mark.parametrize("loss_form", LOSSES)
def test_compact_targets_equal_float_targets(backend, loss_form, target_dtype):
    """Extension: 1-byte targets give the float-target result, in the input's dtype."""
    ours, theirs = LOSSES[loss_form]
    x, y = logits(4, 9), binary_targets(4, 9)
    loss, grad = loss_and_grad(ours, x, y.to(target_dtype), reduction="none")
    expected, expected_grad = loss_and_grad(theirs, x, y, reduction="none")
    assert loss.dtype == torch.float32
    assert_close(loss, expected)
    assert_close(grad, expected_grad)


@pytest.mark.parametrize(
    "input_dtype, target_dtype, weight",
    [
        (torch.bfloat16, torch.float32, None),
        (torch.float32, torch.float64, None),
        (torch.bfloat16, torch.float16, None),
        (torch.float32, torch.float32, "float64"),
        (torch.float32, torch.float32, "float64-0d"),
        (torch.float64, torch.float32, None),
    ],
    ids=str,
)
@pytest.mark.parametrize("loss_form", LOSSES)
def test_output_dtype_like_torch(backend, loss_form, input_dtype, target_dtype, weight):
    ours, theirs = LOSSES[loss_form]
    x, y = logits(3, 5, dtype=input_dtype), soft_targets(3, 5, dtype=target_dtype)
    w = None
    if weight is not None:
        w = torch.rand(() if weight.endswith("0d") else (5,), device=DEVICE, dtype=torch.float64)
    loss, grad = loss_and_grad(ours, x, y, w)
    expected, expected_grad = loss_and_grad(theirs, x, y, w)
    assert (loss.dtype, grad.dtype) == (expected.dtype, expected_grad.dtype)
    # torch rounds intermediates to the narrow dtype; compare both to the float64 truth instead, at the
    # precision of the coarser of the logits and the loss.
    truth, truth_grad = reference_loss_and_grad(loss_form, x, y, w)
    assert_close(loss, truth, max((x.dtype, loss.dtype), key=lambda d: torch.finfo(d).eps))
    assert_close(grad, truth_grad)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss_form", LOSSES)
def test_empty_batch_like_torch(backend, loss_form, reduction):
    ours, theirs = LOSSES[loss_form]
    x, y = logits(0, 7), soft_targets(0, 7)
    loss, grad = loss_and_grad(ours, x, y, reduction=reduction)
    expected, expected_grad = loss_and_grad(theirs, x, y, reduction=reduction)
    assert loss.shape == expected.shape
    assert torch.equal(loss.isnan(), expected.isnan())  # NaN for 'mean'
    assert_close(loss, expected)
    assert grad.shape == expected_grad.shape


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss_form", LOSSES)
def test_nonfinite_logits_nan_where_torch(backend, loss_form, reduction):
    ours, theirs = LOSSES[loss_form]
    special = torch.tensor([float("inf"), float("-inf"), float("nan"), 40.0, -40.0, 0.0], device=DEVICE)
    x = special.repeat(5, 1)
    y = torch.tensor([0.0, 1.0, 0.5, 2.0, -1.0], device=DEVICE)[:, None].expand(5, 6).contiguous()
    loss, grad = loss_and_grad(ours, x, y, reduction=reduction)
    expected, expected_grad = loss_and_grad(theirs, x, y, reduction=reduction)
    assert torch.equal(loss.isnan(), expected.isnan())
    assert_close(loss, expected)
    assert_close(grad, expected_grad)


def test_mlsm_large_logits_keep_tiny_losses(backend):
    """log1p(exp(-|x|)) stays accurate where 1 + exp(-|x|) rounds to 1."""
    x = torch.tensor([[20.0], [30.0], [-25.0]], device=DEVICE)
    y = torch.tensor([[1.0], [1.0], [0.0]], device=DEVICE)
    loss = st.multilabel_soft_margin_loss(x, y, reduction="none")
    assert_close(loss, F.multilabel_soft_margin_loss(x.double(), y.double(), reduction="none"))
    assert (loss > 0).all()


@pytest.mark.parametrize("loss_form", LOSSES)
def test_legacy_size_average_reduce(backend, loss_form):
    ours, theirs = LOSSES[loss_form]
    x, y = logits(4, 6), soft_targets(4, 6)
    for size_average, reduce in [(True, None), (False, None), (None, False), (True, True)]:
        with pytest.warns(UserWarning, match="deprecated"):
            loss = ours(x, y, size_average=size_average, reduce=reduce)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = theirs(x, y, size_average=size_average, reduce=reduce)
        assert_close(loss, expected)


# --------------------------------------------------------------------------------------------------------
# Calls the fused op does not serve go to torch and stay exact
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_form", LOSSES)
def test_target_and_weight_gradients(backend, loss_form):
    ours, theirs = LOSSES[loss_form]
    x, y = logits(4, 6), soft_targets(4, 6).requires_grad_(True)
    w = torch.rand(6, device=DEVICE) + 0.5
    w.requires_grad_(loss_form == "mlsm")  # torch's BCE has no gradient for weight
    wrt = (x, y, w) if w.requires_grad else (x, y)
    got = torch.autograd.grad(ours(x, y, w), wrt)
    expected = torch.autograd.grad(theirs(x, y, w), wrt)
    for g, e in zip(got, expected, strict=True):
        assert_close(g, e)


def test_mlsm_broadcast_target_like_torch(backend):
    x, y = logits(4, 6), soft_targets(6)
    loss, grad = loss_and_grad(st.multilabel_soft_margin_loss, x, y, reduction="none")
    expected, expected_grad = loss_and_grad(F.multilabel_soft_margin_loss, x, y, reduction="none")
    assert_close(loss, expected)
    assert_close(grad, expected_grad)


@pytest.mark.parametrize("layout", ["transposed", "sliced", "permuted-3d"])
@pytest.mark.parametrize("loss_form", LOSSES)
def test_strided_inputs(backend, loss_form, layout):
    ours, theirs = LOSSES[loss_form]
    base = logits(8, 6, 10, requires_grad=False)
    x = {"transposed": base[0].t(), "sliced": base[:, 1, 2:9], "permuted-3d": base.permute(1, 0, 2)}[layout]
    y = soft_targets(*x.shape)
    loss, grad = loss_and_grad(ours, x, y, reduction="none")
    expected, expected_grad = loss_and_grad(theirs, x, y, reduction="none")
    assert_close(loss, expected)
    assert_close(grad, expected_grad)


def test_weight_broadcasting_beyond_leading_dims(backend):
    """(B, C) weight on (A, B, C) input has no (R, C) view: torch serves it."""
    x, y, w = logits(2, 3, 5), soft_targets(2, 3, 5), torch.rand(3, 5, device=DEVICE)
    loss, grad = loss_and_grad(st.multilabel_soft_margin_loss, x, y, w, reduction="none")
    expected, expected_grad = loss_and_grad(F.multilabel_soft_margin_loss, x, y, w, reduction="none")
    assert_close(loss, expected)
    assert_close(grad, expected_grad)


# --------------------------------------------------------------------------------------------------------
# Autograd contract: in-place gradient, retain_graph, grad_output
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss_form", LOSSES)
def test_grad_into_input(backend, loss_form, reduction):
    ours, theirs = LOSSES[loss_form]
    x, y = logits(5, 33), soft_targets(5, 33)
    expected, expected_grad = loss_and_grad(theirs, x, y, reduction=reduction)
    hidden = x.detach().clone()
    leaf = hidden.clone().requires_grad_(True)
    logits_buffer = leaf * 1  # a non-leaf, like a classifier's output
    loss = ours(logits_buffer, y, reduction=reduction, grad_into_input=True)
    assert_close(loss, expected)
    assert not torch.equal(logits_buffer.detach(), hidden), "grad_into_input did not write over the logits"
    go = torch.ones_like(loss)
    (grad,) = torch.autograd.grad(loss, leaf, go)
    assert_close(grad, expected_grad)


def test_grad_into_input_off_by_default_keeps_logits(backend):
    x, y = logits(3, 8), soft_targets(3, 8)
    before = x.detach().clone()
    st.multilabel_soft_margin_loss(x, y).backward()
    assert torch.equal(x.detach(), before)


@pytest.mark.parametrize("loss_form", LOSSES)
def test_second_backward_through_scaled_gradient_raises(backend, loss_form):
    ours, _ = LOSSES[loss_form]
    x, y = logits(3, 8), soft_targets(3, 8)
    loss = ours(x, y) * 2
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_grad_into_input_leaves_logits_alone_without_grad_mode(backend):
    x, y = logits(3, 8), soft_targets(3, 8)
    before = x.detach().clone()
    with torch.no_grad():
        st.multilabel_soft_margin_loss(x, y, grad_into_input=True)
    assert torch.equal(x.detach(), before)


def test_grad_into_input_on_overlapping_logits(backend):
    """A broadcast (stride-0) logits view cannot take a gradient per element: a new buffer is used."""
    leaf = logits(1, 6)
    y = soft_targets(4, 6)
    (ours,) = torch.autograd.grad(
        st.binary_cross_entropy_with_logits(leaf.expand(4, 6), y, grad_into_input=True), leaf
    )
    (expected,) = torch.autograd.grad(F.binary_cross_entropy_with_logits(leaf.expand(4, 6), y), leaf)
    assert_close(ours, expected)


@pytest.mark.parametrize("loss_form", LOSSES)
def test_double_backward_fails_loudly(backend, loss_form):
    ours, _ = LOSSES[loss_form]
    x, y = logits(3, 8), soft_targets(3, 8)
    (grad,) = torch.autograd.grad(ours(x, y), x, create_graph=True)
    with pytest.raises(RuntimeError, match=r"once_differentiable|does not require grad"):
        torch.autograd.grad(grad.pow(2).sum(), x)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss_form", LOSSES)
def test_fp16_gradient_survives_loss_scaling(backend, loss_form, reduction):
    """(σ - y)·w / numel is below fp16's normal range; with a GradScaler-sized grad_output the fp16
    gradient must come out as accurate as the float64 one rounded to fp16."""
    ours, _ = LOSSES[loss_form]
    x, y = logits(64, 1024, dtype=torch.float16), soft_targets(64, 1024)
    _, grad = loss_and_grad(ours, x, y, reduction=reduction, grad_output=torch.tensor(4096.0, device=DEVICE))
    _, expected_grad = reference_loss_and_grad(loss_form, x, y, reduction=reduction, go=torch.tensor(4096.0))
    assert_close(grad, expected_grad, torch.float16)
    assert (grad == 0).sum() <= (expected_grad.to(torch.float16) == 0).sum()


def test_no_gradient_needed_writes_no_gradient(backend):
    x, y = logits(3, 8, requires_grad=False), soft_targets(3, 8)
    with torch.no_grad():
        loss = st.multilabel_soft_margin_loss(x, y, reduction="none")
    assert_close(loss, F.multilabel_soft_margin_loss(x, y, reduction="none"))
    assert loss.grad_fn is None


# --------------------------------------------------------------------------------------------------------
# The kernels themselves: half precision, odd sizes, masking, compact targets, weights (float64 oracle)
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("cols", [1, 7, 1000, 4097])
@pytest.mark.parametrize("target_dtype", [torch.float32, torch.bool, torch.uint8], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("loss_form", LOSSES)
def test_kernel_against_float64_reference(
    poisoned_allocations, loss_form, dtype, target_dtype, cols, reduction
):
    ours, _ = LOSSES[loss_form]
    rows = 3
    x = logits(rows, cols, dtype=dtype)
    y = binary_targets(rows, cols, dtype=target_dtype)
    w = torch.rand(cols, device=DEVICE) + 0.5
    pw = torch.rand(cols, device=DEVICE) * 3 if loss_form == "bce" else None
    kwargs = {"weight": w, "reduction": reduction} | ({"pos_weight": pw} if pw is not None else {})
    with st.use_backend("triton"):
        loss0, _ = loss_and_grad(ours, x, y, **kwargs)
        go = random_grad_output(loss0)
        loss, grad = loss_and_grad(ours, x, y, grad_output=go, **kwargs)
    expected, expected_grad = reference_loss_and_grad(loss_form, x, y, w, pw, reduction, go)
    assert grad.dtype == dtype
    assert_close(loss, expected, dtype)
    assert_close(grad, expected_grad, dtype)


@pytest.mark.parametrize("loss_form", LOSSES)
def test_forward_op_writes_every_gradient_element(loss_form):
    """The out-variant op with a NaN-filled gradient buffer: every element gets written."""
    x, y = logits(4, 1000, requires_grad=False), soft_targets(4, 1000)
    grad = torch.full_like(x, float("nan"))
    with st.use_backend("triton"):
        use_triton = st.backend.use_triton_for(x)
    loss = torch.ops.softmargin_triton.soft_margin_forward(
        x,
        y,
        None,
        None,
        None,
        None,
        None,
        grad,
        reduction_grad_scale(loss_form, "sum", 4, 1000),
        loss_form,
        "sum",
        torch.float32,
        use_triton,
    )
    expected, expected_grad = reference_loss_and_grad(loss_form, x, y, reduction="sum")
    assert_close(loss, expected)
    assert_close(grad, expected_grad)


def test_backward_op_scales_by_elementwise_grad_output():
    """Ones (skipped by the kernel), other values and NaN in one grad_output."""
    grad = torch.randn(4, 100, device=DEVICE)
    go = torch.ones(4, 100, device=DEVICE)
    go[1] = 2.0
    go[2, ::3] = float("nan")
    before = grad.clone()
    use_triton = DEVICE == "cuda" or st.backend.TRITON_INTERPRETED
    torch.ops.softmargin_triton.soft_margin_scale_grad_(grad, go, 1.0, use_triton)
    assert_close(grad, before * go)
    torch.ops.softmargin_triton.soft_margin_scale_grad_(grad, go, 0.25, use_triton)
    assert_close(grad, before * go * go * 0.25)


# --------------------------------------------------------------------------------------------------------
# torch.compile, autocast, modules
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_form", LOSSES)
def test_compile_fullgraph_model(fresh_dynamo, backend, loss_form):
    ours, theirs = LOSSES[loss_form]
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 40).to(DEVICE)
    a, y = torch.randn(8, 16, device=DEVICE), soft_targets(8, 40)
    weight = torch.rand(40, device=DEVICE)

    def step(loss_fn):
        model.zero_grad()
        loss = loss_fn(model(a), y, weight) * 3
        loss.backward()
        return loss.detach(), model.weight.grad.clone()

    torch._dynamo.reset()
    loss, grad = step(torch.compile(ours, fullgraph=True))
    expected, expected_grad = step(theirs)
    assert_close(loss, expected)
    assert_close(grad, expected_grad)


@pytest.mark.parametrize("loss_form", LOSSES)
def test_autocast_output_dtype_like_torch(backend, loss_form):
    ours, theirs = LOSSES[loss_form]
    x, y = logits(4, 10, dtype=torch.bfloat16), soft_targets(4, 10, dtype=torch.bfloat16)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        loss, grad = loss_and_grad(ours, x, y)
        expected, expected_grad = loss_and_grad(theirs, x, y)
    assert (loss.dtype, grad.dtype) == (expected.dtype, expected_grad.dtype)
    truth, truth_grad = reference_loss_and_grad(loss_form, x, y)
    assert_close(loss, truth, torch.bfloat16)
    assert_close(grad, truth_grad)


def test_modules_are_drop_in(backend):
    weight, pos_weight = torch.rand(7, device=DEVICE), torch.rand(7, device=DEVICE) * 2
    pairs = [
        (st.MultiLabelSoftMarginLoss(weight=weight), torch.nn.MultiLabelSoftMarginLoss(weight=weight)),
        (
            st.BCEWithLogitsLoss(weight=weight, pos_weight=pos_weight, reduction="sum"),
            torch.nn.BCEWithLogitsLoss(weight=weight, pos_weight=pos_weight, reduction="sum"),
        ),
    ]
    x, y = logits(5, 7), soft_targets(5, 7)
    for ours, theirs in pairs:
        assert isinstance(ours, type(theirs))
        assert ours.state_dict().keys() == theirs.state_dict().keys()
        ours.load_state_dict(theirs.state_dict())
        loss, grad = loss_and_grad(ours, x, y)
        expected, expected_grad = loss_and_grad(theirs, x, y)
        assert_close(loss, expected)
        assert_close(grad, expected_grad)


# --------------------------------------------------------------------------------------------------------
# Bad input: torch's exception classes, messages that name the problem
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda x, y: st.multilabel_soft_margin_loss(x, y, reduction="avg"), ValueError, "reduction"),
        (lambda x, y: st.binary_cross_entropy_with_logits(x, y, reduction="avg"), ValueError, "reduction"),
        (lambda x, y: st.binary_cross_entropy_with_logits(x, y[:2]), ValueError, "Target size"),
        (lambda x, y: st.multilabel_soft_margin_loss(x.long(), y), NotImplementedError, "floating-point"),
        (
            lambda x, y: st.binary_cross_entropy_with_logits(x.long(), y),
            NotImplementedError,
            "floating-point",
        ),
        (lambda x, y: st.multilabel_soft_margin_loss(x, y, torch.ones(5)), RuntimeError, "weight"),
        (
            lambda x, y: st.binary_cross_entropy_with_logits(x, y, pos_weight=torch.ones(5)),
            RuntimeError,
            "pos_weight",
        ),
        (lambda x, y: st.multilabel_soft_margin_loss(x, y[:2]), RuntimeError, "size"),
        (lambda x, y: st.binary_cross_entropy_with_logits(x, y.long()), RuntimeError, "Long"),
    ],
    ids=[
        "mlsm-reduction",
        "bce-reduction",
        "bce-target-size",
        "mlsm-int-logits",
        "bce-int-logits",
        "mlsm-weight-shape",
        "bce-pos-weight-shape",
        "mlsm-target-shape",
        "bce-int64-target",
    ],
)
def test_bad_input_raises(backend, call, error, match):
    x, y = logits(3, 4, requires_grad=False), soft_targets(3, 4)
    with pytest.raises(error, match=match):
        call(x, y)


def test_unknown_backend_raises():
    with pytest.raises(ValueError, match="one of"), st.use_backend("cuda"):
        pass


def test_backend_variable_read_at_call_time(monkeypatch):
    monkeypatch.setenv(st.BACKEND_ENV_VAR, "torch")
    assert st.current_backend() == "torch"
    monkeypatch.setenv(st.BACKEND_ENV_VAR, "bogus")
    with pytest.raises(ValueError, match=st.BACKEND_ENV_VAR):
        st.current_backend()
    with st.use_backend("triton"):
        assert st.current_backend() == "triton"


@pytest.mark.skipif(DEVICE == "cuda", reason="checks the CPU-only error; this machine has CUDA")
def test_forced_triton_without_interpreter_explains(monkeypatch):
    monkeypatch.setattr(st.backend, "TRITON_INTERPRETED", False)
    with st.use_backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        st.multilabel_soft_margin_loss(logits(2, 3), soft_targets(2, 3))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss_form", LOSSES)
def test_compile_fullgraph_without_gradient(fresh_dynamo, backend, loss_form, reduction):
    """Evaluation under torch.compile: no gradient buffer, so the op's mutable argument is empty."""
    ours, theirs = LOSSES[loss_form]
    x, y = logits(4, 9, requires_grad=False), binary_targets(4, 9)
    compiled = torch.compile(lambda a, b: ours(a, b, reduction=reduction), fullgraph=True)
    with torch.no_grad():
        assert_close(compiled(x, y), theirs(x, y, reduction=reduction))


# --------------------------------------------------------------------------------------------------------
# GPU tier: realistic sizes and > 2^31 elements
# --------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("target_dtype", [torch.bfloat16, torch.uint8], ids=str)
@pytest.mark.parametrize("loss_form", LOSSES)
def test_gpu_realistic_size(poisoned_allocations, loss_form, target_dtype):
    ours, theirs = LOSSES[loss_form]
    x = logits(4096, 131072, dtype=torch.bfloat16)
    y = binary_targets(4096, 131072, dtype=target_dtype)
    loss, grad = loss_and_grad(ours, x, y)
    expected, expected_grad = reference_loss_and_grad(loss_form, x, y)
    assert_close(loss, expected, torch.float32)
    assert_close(grad, expected_grad, torch.bfloat16)
    torch_loss = theirs(x.float(), y.float())
    assert_close(loss, torch_loss.double(), torch.float32)


@pytest.mark.gpu
def test_gpu_indexing_past_int32():
    """R·C > 2^31: the last rows, whose offsets need int64, must be right."""
    rows, cols = 16400, 131072
    assert rows * cols > 2**31
    x = logits(rows, cols, dtype=torch.bfloat16)
    y = binary_targets(rows, cols, dtype=torch.uint8)
    loss, grad = loss_and_grad(st.multilabel_soft_margin_loss, x, y, reduction="none")
    tail = slice(rows - 64, rows)
    expected, expected_grad = reference_loss_and_grad("mlsm", x[tail], y[tail], reduction="none")
    assert_close(loss[tail], expected, torch.float32)
    assert_close(grad[tail], expected_grad, torch.bfloat16)
