"""linear_multilabel_soft_margin_loss and LinearMultiLabelSoftMarginLoss against F.linear + torch's loss.

Small odd sizes, and a scratch budget so small that every call walks several label chunks. Values and the
gradients of input, weight and bias against float64 torch; dense and sparse targets; both backends.
"""

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, REDUCTIONS, assert_close, zipf_label_lists

import softmargin_triton as st

ROWS, DIM, LABELS = 5, 19, 37
CHUNK = 16  # labels per chunk under the `small_chunks` fixture: 37 labels → 3 chunks, the last partial


@pytest.fixture
def small_chunks(monkeypatch):
    """A scratch budget of CHUNK labels' gradient for ROWS float32 rows (the torch path's temporaries
    count 8 times, so it takes 2 labels a chunk): many chunks at test sizes."""
    monkeypatch.setenv(st.SCRATCH_ENV_VAR, str(ROWS * CHUNK * 4 / 2**20))


def torch_loss(input, weight, target, bias=None, label_weight=None, pos_weight=None, reduction="mean"):
    """The definition: torch's MLSM over F.linear's logits; with pos_weight, BCE's terms summed over the
    labels and divided by L, as MLSM does."""
    logits = F.linear(input, weight, bias)
    if pos_weight is None:
        return F.multilabel_soft_margin_loss(logits, target, label_weight, reduction=reduction)
    terms = F.binary_cross_entropy_with_logits(
        logits, target.to(logits.dtype), label_weight, reduction="none", pos_weight=pos_weight
    )
    per_row = terms.sum(dim=-1) / weight.shape[0]
    return {"none": per_row, "mean": per_row.mean(), "sum": per_row.sum()}[reduction]


def smoothed(target, label_smoothing):
    """Keras' smoothed binary targets: y·(1 − ε) + ε/2."""
    return target * (1 - label_smoothing) + label_smoothing / 2


def problem(dtype=torch.float32, rows=ROWS, dim=DIM, labels=LABELS):
    """input, weight, bias (scaled so logits spread over a few units) and Zipf sparse targets."""
    input = torch.randn(rows, dim, device=DEVICE, dtype=torch.float64)
    weight = torch.randn(labels, dim, device=DEVICE, dtype=torch.float64) * (2 / dim**0.5)
    bias = torch.randn(labels, device=DEVICE, dtype=torch.float64)
    targets = st.SparseTargets.from_lists(zipf_label_lists(rows, labels), labels, DEVICE)
    return input.to(dtype), weight.to(dtype), bias.to(dtype), targets


def grads(fn, operands, grad_output=None):
    """(loss, gradients of loss·grad_output w.r.t. each operand) for fresh leaf copies."""
    leaves = [None if t is None else t.detach().clone().requires_grad_(True) for t in operands]
    loss = fn(*leaves)
    go = torch.ones_like(loss) if grad_output is None else grad_output
    needing = [t for t in leaves if t is not None]
    return loss, torch.autograd.grad(loss, needing, go)


WEIGHTINGS = ["none", "label", "pos", "label+pos"]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
def test_matches_float64_torch(backend, small_chunks, sparse, with_bias, weighting, reduction):
    input, weight, bias, targets = problem()
    target = targets if sparse else targets.to_dense()
    label_weight = torch.rand(LABELS, device=DEVICE) + 0.5 if "label" in weighting else None
    pos_weight = torch.rand(LABELS, device=DEVICE) * 3 if "pos" in weighting else None
    operands = (input, weight, bias if with_bias else None)

    def ours(e, w, b):
        return st.linear_multilabel_soft_margin_loss(
            e, w, target, b, label_weight=label_weight, pos_weight=pos_weight, reduction=reduction
        )

    def theirs(e, w, b):
        return torch_loss(e, w, targets.to_dense(e.dtype), b, label_weight, pos_weight, reduction)

    go = torch.rand(ROWS, device=DEVICE) + 0.5 if reduction == "none" else torch.tensor(1.7, device=DEVICE)
    loss, our_grads = grads(ours, operands, go)
    expected, expected_grads = grads(
        theirs, [None if t is None else t.double() for t in operands], go.double()
    )
    assert loss.dtype == torch.float32
    assert_close(loss, expected)
    for grad, expected_grad in zip(our_grads, expected_grads, strict=True):
        assert grad.dtype == torch.float32
        assert_close(grad, expected_grad)


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_kernel_against_float64(poisoned_allocations, small_chunks, dtype, sparse):
    rows, dim, labels = 33, 40, 300  # several row blocks, a partial reduction block, several chunks
    input, weight, bias, targets = problem(dtype, rows, dim, labels)
    target = targets if sparse else targets.to_dense(torch.uint8)
    label_weight = torch.rand(labels, device=DEVICE) + 0.5
    pos_weight = torch.rand(labels, device=DEVICE) * 3

    def ours(e, w, b):
        return st.linear_multilabel_soft_margin_loss(
            e, w, target, b, label_weight=label_weight, pos_weight=pos_weight
        )

    with st.use_backend("triton"):
        loss, our_grads = grads(ours, (input, weight, bias), torch.tensor(0.6, device=DEVICE))
    expected, expected_grads = grads(
        lambda e, w, b: torch_loss(e, w, targets.to_dense(torch.float64), b, label_weight, pos_weight),
        (input.double(), weight.double(), bias.double()),
        torch.tensor(0.6, device=DEVICE, dtype=torch.float64),
    )
    # Logits of rounded operands, summed over D in fp32: the loss to fp32's tolerance, gradients (G rounded
    # to `dtype` before two GEMMs) to `dtype`'s.
    assert_close(loss, expected, torch.float32 if dtype == torch.float32 else dtype)
    for grad, expected_grad in zip(our_grads, expected_grads, strict=True):
        assert grad.dtype == dtype
        assert_close(grad, expected_grad, dtype)


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
def test_well_fit_rows_keep_their_small_loss(backend, small_chunks, sparse):
    """Confident positives (logit +20) among confident negatives (-20): each row's loss is a sum of terms
    near 2e-9, which no intermediate of size |logit| may swallow (as softplus(x) - x would)."""
    targets = st.SparseTargets.from_lists([[3], [0, 36], [], list(range(5, 30, 3)), [36]], LABELS, DEVICE)
    dense = targets.to_dense(torch.float64)
    # A feature per row (input the identity) and weight column r = row r's ±20: logits exactly ±20.
    input = torch.eye(ROWS, device=DEVICE, dtype=torch.float64)
    weight = (20 * (2 * dense - 1)).T.contiguous()
    target = targets if sparse else dense.to(torch.float32)
    loss = st.linear_multilabel_soft_margin_loss(input.float(), weight.float(), target, reduction="none")
    expected = torch_loss(input, weight, dense, reduction="none")
    assert expected.max() < 1e-8
    assert_close(loss, expected)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2], ids=["unsmoothed", "smoothed"])
@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
def test_infinite_logits_give_nan_where_torch_does(backend, sparse, label_smoothing):
    """One label, logits ±inf: torch's 0·log σ(∓x) makes NaN for a positive at +inf and a negative at -inf,
    and +inf for the other two; smoothed targets lie strictly inside (0, 1), so all four are +inf."""
    input = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]], device=DEVICE) * float("inf")
    weight = torch.ones(1, 1, device=DEVICE)
    targets = st.SparseTargets.from_lists([[0], [], [], [0]], 1, DEVICE)
    dense = targets.to_dense(torch.float32)
    target = targets if sparse else dense
    loss = st.linear_multilabel_soft_margin_loss(
        input, weight, target, reduction="none", label_smoothing=label_smoothing
    )
    expected = torch_loss(
        input.double(), weight.double(), smoothed(dense.double(), label_smoothing), reduction="none"
    )
    if label_smoothing:
        assert (expected == float("inf")).all()
    else:
        assert expected[:2].isnan().all() and expected[2:].isinf().all()
    assert_close(loss, expected)


def test_leading_dimensions_and_no_grad(backend, small_chunks):
    input, weight, bias, targets = problem(rows=6)
    dense = targets.to_dense().view(2, 3, LABELS)
    x = input.view(2, 3, DIM)
    for reduction in REDUCTIONS:
        loss = st.linear_multilabel_soft_margin_loss(x, weight, dense, bias, reduction=reduction)
        assert_close(
            loss, torch_loss(x.double(), weight.double(), dense.double(), bias.double(), reduction=reduction)
        )
    with torch.no_grad():
        loss = st.linear_multilabel_soft_margin_loss(x.requires_grad_(True), weight, dense, bias)
    assert loss.grad_fn is None


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
def test_autocast_like_f_linear_then_loss(backend, small_chunks, sparse):
    """Under bf16 autocast the GEMM runs on bf16 operands as F.linear's would; the loss's dtype and value
    and the float32 parameters' gradients are those of torch's loss on F.linear's autocast logits."""
    input, weight, bias, targets = problem()
    target = targets if sparse else targets.to_dense(torch.uint8)
    leaves = [t.requires_grad_(True) for t in (input, weight, bias)]
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        loss = st.linear_multilabel_soft_margin_loss(*leaves[:2], target, leaves[2])
        logits = F.linear(*leaves)
    expected = F.multilabel_soft_margin_loss(logits.float(), targets.to_dense(torch.float32))
    assert loss.dtype == torch.bfloat16 == logits.dtype
    assert_close(loss, expected.to(torch.bfloat16))
    grads = torch.autograd.grad(loss, leaves)
    expected_grads = torch.autograd.grad(expected, leaves)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        assert grad.dtype == torch.float32
        assert_close(grad, expected_grad, torch.bfloat16)


def test_label_weight_needing_grad_takes_torch_path(backend):
    input, weight, bias, targets = problem()
    label_weight = (torch.rand(LABELS, device=DEVICE) + 0.5).requires_grad_(True)
    loss = st.linear_multilabel_soft_margin_loss(input, weight, targets, bias, label_weight=label_weight)
    expected = torch_loss(input, weight, targets.to_dense(), bias, label_weight)
    assert_close(loss, expected)
    assert_close(torch.autograd.grad(loss, label_weight)[0], torch.autograd.grad(expected, label_weight)[0])


def test_module_forward_logits_topk(backend, small_chunks):
    torch.manual_seed(0)
    module = st.LinearMultiLabelSoftMarginLoss(DIM, LABELS, device=DEVICE)
    reference = torch.nn.Linear(DIM, LABELS, device=DEVICE)
    torch.manual_seed(0)
    reference.reset_parameters()
    assert torch.equal(module.weight, reference.weight)  # nn.Linear's initialization
    assert set(module.state_dict()) == {"weight", "bias"}
    input, _, _, targets = problem()
    assert_close(module(input, targets), torch_loss(input, module.weight, targets.to_dense(), module.bias))
    logits = module.logits(input)
    assert_close(logits, reference(input))
    for k in (1, 5, LABELS):
        values, labels = module.topk(input, k)
        expected_values, _ = logits.topk(k, dim=-1)
        assert_close(values, expected_values)
        assert torch.equal(logits.gather(-1, labels), values)  # the ids point at those logits
    with pytest.raises(ValueError, match="k must be"):
        module.topk(input, LABELS + 1)


def test_compile_fullgraph(fresh_dynamo, backend):
    torch.manual_seed(0)
    encoder = torch.nn.Linear(7, DIM, device=DEVICE)
    head = st.LinearMultiLabelSoftMarginLoss(DIM, LABELS, device=DEVICE)
    features, (_, _, _, targets) = torch.randn(ROWS, 7, device=DEVICE), problem()

    def step(features, targets):
        return head(torch.relu(encoder(features)), targets)

    loss = torch.compile(step, fullgraph=True)(features, targets)
    grad_weight, grad_encoder = torch.autograd.grad(loss, (head.weight, encoder.weight))
    expected = torch_loss(torch.relu(encoder(features)), head.weight, targets.to_dense(), head.bias)
    expected_weight, expected_encoder = torch.autograd.grad(expected, (head.weight, encoder.weight))
    assert_close(loss, expected)
    assert_close(grad_weight, expected_weight)
    assert_close(grad_encoder, expected_encoder)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda e, w, t: st.linear_multilabel_soft_margin_loss(e, w[:, :-1], t), ValueError, "disagree"),
        (lambda e, w, t: st.linear_multilabel_soft_margin_loss(e, w.double(), t), TypeError, "share one"),
        (lambda e, w, t: st.linear_multilabel_soft_margin_loss(e, w[:-1], t), ValueError, "target of shape"),
        (lambda e, w, t: st.linear_multilabel_soft_margin_loss(e, w, t, torch.zeros(3)), ValueError, "bias"),
        (
            lambda e, w, t: st.linear_multilabel_soft_margin_loss(e, w, t, reduction="avg"),
            ValueError,
            "reduction",
        ),
        (
            lambda e, w, t: st.linear_multilabel_soft_margin_loss(e, w, t, label_weight=torch.ones(3)),
            ValueError,
            "label_weight",
        ),
        (
            lambda e, w, t: st.linear_multilabel_soft_margin_loss(e, w, t.to("meta")),
            RuntimeError,
            "target is on meta",
        ),
        (
            lambda e, w, t: st.linear_multilabel_soft_margin_loss(e, w, t, label_smoothing=1.0),
            ValueError,
            r"label_smoothing must be in \[0, 1\)",
        ),
        (
            lambda e, w, t: st.linear_multilabel_soft_margin_loss(e, w, t, label_smoothing=-0.1),
            ValueError,
            r"label_smoothing must be in \[0, 1\)",
        ),
        (
            lambda e, w, t: st.linear_multilabel_soft_margin_loss(e, w, t, label_smoothing="0.1"),
            TypeError,
            "label_smoothing must be a float",
        ),
        (
            lambda e, w, t: st.LinearMultiLabelSoftMarginLoss(DIM, LABELS, label_smoothing=1.5),
            ValueError,
            r"label_smoothing must be in \[0, 1\)",
        ),
    ],
    ids=[
        "dim",
        "dtype",
        "labels",
        "bias-shape",
        "reduction",
        "label-weight-shape",
        "target-device",
        "label-smoothing-1",
        "label-smoothing-negative",
        "label-smoothing-str",
        "module-label-smoothing",
    ],
)
def test_bad_input_raises(backend, call, error, match):
    input, weight, _, targets = problem()
    with pytest.raises(error, match=match):
        call(input, weight, targets)


def test_fallback_memory_stays_far_below_the_logits():
    """B×L float32 logits would be 1 GiB; the chunked torch path's peak must stay below a quarter of it."""
    script = textwrap.dedent(
        """
        import resource, torch, softmargin_triton as st
        rows, dim, labels = 512, 16, 2**19
        torch.manual_seed(0)
        input = torch.randn(rows, dim, requires_grad=True)
        weight = (torch.randn(labels, dim) * 0.25).requires_grad_(True)
        targets = st.SparseTargets.from_lists([[i, 7 * i + 3] for i in range(rows)], labels)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with st.use_backend("torch"):
            loss = st.linear_multilabel_soft_margin_loss(input, weight, targets)
            loss.backward()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((peak - base) * 1024, float(loss), float(weight.grad.abs().sum()))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300
    )
    peak_bytes, loss, grad_sum = map(float, out.stdout.split())
    logits_bytes = 512 * 2**19 * 4
    assert loss > 0 and grad_sum > 0
    # dW itself (32 MiB) plus the chunk working set
    assert peak_bytes < logits_bytes / 4, f"peak {peak_bytes / 2**20:.0f} MiB"


@pytest.mark.gpu
def test_gpu_realistic_size(poisoned_allocations):
    """B=1024, D=256, L=131072 bf16 with Zipf targets against fp32 torch on the full logits."""
    rows, dim, labels = 1024, 256, 131072
    input, weight, bias, targets = problem(torch.bfloat16, rows, dim, labels)
    loss, our_grads = grads(
        lambda e, w, b: st.linear_multilabel_soft_margin_loss(e, w, targets, b), (input, weight, bias)
    )
    expected, expected_grads = grads(
        lambda e, w, b: torch_loss(e, w, targets.to_dense(), b), (input.float(), weight.float(), bias.float())
    )
    assert_close(loss, expected, torch.float32)
    for grad, expected_grad in zip(our_grads, expected_grads, strict=True):
        assert_close(grad, expected_grad, torch.bfloat16)


@pytest.mark.parametrize("reduce_loss", ["sum", "mean"])
def test_none_backward_through_a_reduction(backend, small_chunks, reduce_loss):
    """loss.sum().backward() hands 'none' a stride-0 grad_output."""
    input, weight, bias, targets = problem()

    def ours(e, w, b):
        return getattr(
            st.linear_multilabel_soft_margin_loss(e, w, targets, b, reduction="none"), reduce_loss
        )()

    def theirs(e, w, b):
        return getattr(torch_loss(e, w, targets.to_dense(e.dtype), b, reduction="none"), reduce_loss)()

    loss, our_grads = grads(ours, (input, weight, bias))
    expected, expected_grads = grads(theirs, (input.double(), weight.double(), bias.double()))
    assert_close(loss, expected)
    for grad, expected_grad in zip(our_grads, expected_grads, strict=True):
        assert_close(grad, expected_grad)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_fp16_gradients_survive_loss_scaling(reduction):
    """A GradScaler's factor arrives in the backward: the 1/(N·L) factor must not have flushed the fp16
    gradients first. The autograd layer decides this for both backends; N·L = 2^23 is sized for the torch
    one (the interpreter would take minutes)."""
    input, weight, bias, targets = problem(torch.float16, rows=256, dim=16, labels=32768)
    go = torch.tensor(2.0**15 if reduction == "mean" else 2.0**10, device=DEVICE)

    def ours(e, w, b):
        return st.linear_multilabel_soft_margin_loss(e, w, targets, b, reduction=reduction)

    with st.use_backend("torch"):
        _, our_grads = grads(ours, (input, weight, bias), go.half())
    _, expected_grads = grads(
        lambda e, w, b: torch_loss(e, w, targets.to_dense(e.dtype), b, reduction=reduction),
        (input.double(), weight.double(), bias.double()),
        go.double(),
    )
    for grad, expected_grad in zip(our_grads, expected_grads, strict=True):
        assert_close(grad, expected_grad, torch.float16)


def test_no_grad_and_none_compute_no_gradient_in_forward(backend, monkeypatch):
    import softmargin_triton.linear_soft_margin as module

    calls = []
    op = module.linear_soft_margin_forward

    def recording(*args):
        calls.append(args[12:15])  # input_grad, weight_grad, bias_grad
        return op(*args)

    monkeypatch.setattr(module, "linear_soft_margin_forward", recording)
    input, weight, bias, targets = problem()
    input, weight = input.requires_grad_(True), weight.requires_grad_(True)
    with torch.no_grad():
        st.linear_multilabel_soft_margin_loss(input, weight, targets, bias)
    st.linear_multilabel_soft_margin_loss(input, weight, targets, bias, reduction="none")
    assert calls == [(False, False, False), (False, False, False)]


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_compile_fullgraph_without_gradients(fresh_dynamo, backend, reduction):
    input, weight, bias, targets = problem()
    compiled = torch.compile(
        lambda e, w, t, b: st.linear_multilabel_soft_margin_loss(e, w, t, b, reduction=reduction),
        fullgraph=True,
    )
    with torch.no_grad():
        loss = compiled(input, weight, targets, bias)
    assert_close(loss, torch_loss(input, weight, targets.to_dense(), bias, reduction=reduction))


def test_target_changed_before_backward_raises(backend):
    input, weight, bias, targets = problem()
    dense = targets.to_dense()
    loss = st.linear_multilabel_soft_margin_loss(
        input.requires_grad_(True), weight, dense, bias, reduction="none"
    )
    dense.zero_()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.sum().backward()


@pytest.mark.parametrize("layout", ["strided", "broadcast"])
def test_strided_bias(backend, small_chunks, layout):
    input, weight, bias, targets = problem()
    bias = torch.stack([bias, -bias], dim=1)[:, 0] if layout == "strided" else bias[:1].expand(LABELS)
    assert not bias.is_contiguous()
    loss, our_grads = grads(
        lambda e, w, b: st.linear_multilabel_soft_margin_loss(e, w, targets, b), (input, weight, bias)
    )
    expected, expected_grads = grads(
        lambda e, w, b: torch_loss(e, w, targets.to_dense(e.dtype), b),
        (input.double(), weight.double(), bias.double()),
    )
    assert_close(loss, expected)
    for grad, expected_grad in zip(our_grads, expected_grads, strict=True):
        assert_close(grad, expected_grad)


def test_weight_broadcasting_over_some_leading_dims(backend):
    """A (3, 1) label weight on (2, 3, D) input has no (rows, L) view: torch's path, same values."""
    input, weight, bias, targets = problem(rows=6)
    x, dense = input.view(2, 3, DIM), targets.to_dense().view(2, 3, LABELS)
    label_weight = torch.rand(3, 1, device=DEVICE) + 0.5
    loss = st.linear_multilabel_soft_margin_loss(x, weight, dense, bias, label_weight=label_weight)
    assert_close(loss, torch_loss(x, weight, dense, bias, label_weight))


# label_smoothing: one case per (target kind, reduction), the weightings spread over them; ε fresh each run.
SMOOTHING_CASES = [
    ("sparse", "none", "none"),
    ("sparse", "label+pos", "mean"),
    ("sparse", "pos", "sum"),
    ("soft", "label+pos", "none"),
    ("bool", "none", "mean"),
    ("int64", "label", "sum"),
]


def smoothing_epsilon():
    return 0.05 + 0.45 * torch.rand(()).item()


def dense_target(targets, kind):
    """The target of one SMOOTHING_CASES kind: the sparse targets themselves, random soft targets, or the
    sparse targets as a dense bool / int64 tensor."""
    if kind == "sparse":
        return targets
    if kind == "soft":
        return torch.rand(targets.shape, device=DEVICE)
    return targets.to_dense({"bool": torch.bool, "int64": torch.int64}[kind])


@pytest.mark.parametrize(
    ("kind", "weighting", "reduction"), SMOOTHING_CASES, ids=["-".join(case) for case in SMOOTHING_CASES]
)
def test_label_smoothing_is_torch_on_smoothed_targets(backend, small_chunks, kind, weighting, reduction):
    """Values and input/weight/bias gradients against float64 torch on y·(1 − ε) + ε/2; a SparseTargets'
    negatives at ε/2 and positives at 1 − ε/2 (weighted by pos_weight too), with no dense target."""
    input, weight, bias, targets = problem()
    target = dense_target(targets, kind)
    label_smoothing = smoothing_epsilon()
    label_weight = torch.rand(LABELS, device=DEVICE) + 0.5 if "label" in weighting else None
    pos_weight = torch.rand(LABELS, device=DEVICE) * 3 if "pos" in weighting else None
    dense = (targets.to_dense() if kind == "sparse" else target).double()

    def ours(e, w, b):
        return st.linear_multilabel_soft_margin_loss(
            e,
            w,
            target,
            b,
            label_weight=label_weight,
            pos_weight=pos_weight,
            reduction=reduction,
            label_smoothing=label_smoothing,
        )

    def theirs(e, w, b):
        return torch_loss(e, w, smoothed(dense, label_smoothing), b, label_weight, pos_weight, reduction)

    go = torch.rand(ROWS, device=DEVICE) + 0.5 if reduction == "none" else torch.tensor(1.7, device=DEVICE)
    loss, our_grads = grads(ours, (input, weight, bias), go)
    expected, expected_grads = grads(theirs, (input.double(), weight.double(), bias.double()), go.double())
    assert loss.dtype == torch.float32
    assert_close(loss, expected)
    for grad, expected_grad in zip(our_grads, expected_grads, strict=True):
        assert_close(grad, expected_grad)


@pytest.mark.parametrize(
    ("dtype", "sparse"), [(torch.bfloat16, True), (torch.float16, False)], ids=["bf16-sparse", "fp16-dense"]
)
def test_label_smoothing_kernel_16_bit(poisoned_allocations, small_chunks, dtype, sparse):
    """The kernel's fast math (bf16: the loss and G in 16 bits) and fp16's recomputing backward (ε carried
    to it) against float64 torch, to the existing per-dtype tolerances."""
    rows, dim, labels = 17, 24, 70  # two row blocks, a partial label tile, several chunks
    input, weight, bias, targets = problem(dtype, rows, dim, labels)
    target = targets if sparse else targets.to_dense(torch.uint8)
    label_weight = torch.rand(labels, device=DEVICE) + 0.5
    pos_weight = torch.rand(labels, device=DEVICE) * 3
    label_smoothing = smoothing_epsilon()

    def ours(e, w, b):
        return st.linear_multilabel_soft_margin_loss(
            e, w, target, b, label_weight=label_weight, pos_weight=pos_weight, label_smoothing=label_smoothing
        )

    with st.use_backend("triton"):
        loss, our_grads = grads(ours, (input, weight, bias), torch.tensor(0.6, device=DEVICE))
    expected, expected_grads = grads(
        lambda e, w, b: torch_loss(
            e, w, smoothed(targets.to_dense(torch.float64), label_smoothing), b, label_weight, pos_weight
        ),
        (input.double(), weight.double(), bias.double()),
        torch.tensor(0.6, device=DEVICE, dtype=torch.float64),
    )
    assert_close(loss, expected, torch.float32 if dtype == torch.float32 else dtype)
    for grad, expected_grad in zip(our_grads, expected_grads, strict=True):
        assert grad.dtype == dtype
        assert_close(grad, expected_grad, dtype)


@pytest.mark.parametrize(("sparse", "reduction"), [(True, "mean"), (False, "none")], ids=["sparse", "dense"])
def test_label_smoothing_zero_is_bit_identical(backend, small_chunks, sparse, reduction):
    """ε = 0 runs the unsmoothed code: the same bits as not passing it, through both backward paths ('mean'
    scales the forward's gradients, 'none' recomputes)."""
    input, weight, bias, targets = problem()
    target = targets if sparse else targets.to_dense(torch.uint8)
    pos_weight = torch.rand(LABELS, device=DEVICE) * 3

    def loss_fn(e, w, b, **smoothing):
        loss = st.linear_multilabel_soft_margin_loss(
            e, w, target, b, pos_weight=pos_weight, reduction=reduction, **smoothing
        )
        return loss.sum()

    operands = (input, weight, bias)
    plain_loss, plain_grads = grads(loss_fn, operands)
    zero_loss, zero_grads = grads(lambda e, w, b: loss_fn(e, w, b, label_smoothing=0.0), operands)
    for plain, zero in zip((plain_loss, *plain_grads), (zero_loss, *zero_grads), strict=True):
        assert torch.equal(plain, zero)


def test_label_smoothing_on_torch_path_and_module(backend):
    """A target needing its gradient takes torch's path over the logits, smoothed the same (d/dy carries
    the factor 1 − ε); the module stores ε, shows it and passes it on."""
    input, weight, bias, _ = problem()
    target = torch.rand(ROWS, LABELS, device=DEVICE, requires_grad=True)
    label_smoothing = smoothing_epsilon()
    loss = st.linear_multilabel_soft_margin_loss(
        input, weight, target, bias, reduction="none", label_smoothing=label_smoothing
    )
    expected = torch_loss(input, weight, smoothed(target, label_smoothing), bias, reduction="none")
    assert_close(loss, expected)
    go = torch.rand(ROWS, device=DEVICE) + 0.5
    assert_close(torch.autograd.grad(loss, target, go)[0], torch.autograd.grad(expected, target, go)[0])

    module = st.LinearMultiLabelSoftMarginLoss(DIM, LABELS, device=DEVICE, label_smoothing=label_smoothing)
    assert module.label_smoothing == label_smoothing
    assert f"label_smoothing={label_smoothing}" in repr(module)
    dense = target.detach()
    assert_close(
        module(input, dense),
        torch_loss(input, module.weight, smoothed(dense, label_smoothing), module.bias),
    )
