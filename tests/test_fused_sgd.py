"""FusedClassifierSGD: the classifier's SGD step taken inside the fused linear loss's backward.

Its step against torch.optim.SGD on a float64 copy stepped with the dense gradient of F.linear + torch's
loss; bfloat16 stochastic rounding (the kernel's bits against the reference's, unbiased, seeded); master
weights; resuming from state dicts; and the misuses that must raise or do nothing.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from conftest import DEVICE, assert_close, zipf_label_lists
from test_linear_soft_margin import CHUNK, ROWS

import softmargin_triton as st
from softmargin_triton.fused_sgd import FusedClassifierSGD
from softmargin_triton.kernels.fused_sgd import stochastic_round_bf16
from softmargin_triton.reference import stochastic_round_bfloat16

DIM, LABELS = 19, 37


@pytest.fixture
def small_chunks(monkeypatch):
    """A scratch budget of CHUNK labels for ROWS float32 rows: several chunks at test sizes."""
    monkeypatch.setenv(st.SCRATCH_ENV_VAR, str(ROWS * CHUNK * 4 / 2**20))


def make_head(dtype=torch.float32, bias=True, seed=0):
    """A head whose logits spread over a few units, on DEVICE."""
    torch.manual_seed(seed)
    head = st.LinearMultiLabelSoftMarginLoss(DIM, LABELS, bias=bias, device=DEVICE, dtype=torch.float64)
    with torch.no_grad():
        head.weight.mul_(4)
    return head.to(dtype)


def batch(sparse=True, dtype=torch.float32, rows=ROWS):
    """(features (rows, DIM), target): Zipf positives, as SparseTargets or dense float."""
    features = torch.randn(rows, DIM, device=DEVICE, dtype=torch.float64).to(dtype)
    targets = st.SparseTargets.from_lists(zipf_label_lists(rows, LABELS), LABELS, DEVICE)
    return features, targets if sparse else targets.to_dense()


def oracle_step(head, optimizer, features, target, reduction, grad_output):
    """The float64 oracle of one fused step on a float64 copy of the head (its master weights where it has
    them), from the optimizer's current state and the dense gradient of grad_output · (F.linear + torch's
    loss): torch.optim.SGD's step, or the row-adaptive one written out. Returns the copy after the step, the
    features' gradient and the logits' (B, L)."""
    reference = copy.deepcopy(head).double()
    owned = optimizer.parameters_owned
    if optimizer.master_weights:
        with torch.no_grad():
            for param, own in zip(reference.parameters(), owned, strict=True):
                param.copy_(optimizer.state[own]["master"])
    dense = target.to_dense(torch.float64) if isinstance(target, st.SparseTargets) else target.double()
    features = features.double().requires_grad_()
    logits = F.linear(features, reference.weight, reference.bias)
    logits.retain_grad()
    loss = F.multilabel_soft_margin_loss(logits, dense, reduction=reduction)
    loss.backward(grad_output.double())
    group = optimizer.param_groups[0]
    lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
    with torch.no_grad():
        for param, own in zip(reference.parameters(), owned, strict=True):
            state = optimizer.state[own]
            update = param.grad if optimizer.row_adaptive else param.grad + decay * param
            if momentum:
                buffer = state.get("momentum_buffer", torch.zeros_like(own, dtype=torch.float32)).double()
                update = momentum * buffer + update
            if optimizer.row_adaptive:
                step = optimizer.state[optimizer.weight]["step"] + 1
                square = param.grad.square().mean(dim=1) if param.dim() == 2 else param.grad.square()
                moment = group["beta2"] * state["second_moment"].double() + (1 - group["beta2"]) * square
                size = lr / ((moment / (1 - group["beta2"] ** step)).sqrt() + group["eps"])
                param.mul_(1 - lr * decay).sub_(size.view(-1, *[1] * (param.dim() - 1)) * update)
            else:
                param.sub_(lr * update)
    return reference, features.grad, logits.grad


def fused_step(head, features, target, grad_output):
    """One training step of the head on `features` (made a leaf): returns the loss and the features' grad."""
    features = features.detach().clone().requires_grad_()
    loss = head(features, target)
    loss.backward(grad_output)
    head.fused_optimizer.step()
    return loss, features.grad


def bfloat16_ulp(values):
    """The spacing of bfloat16 numbers at each of `values` (float64)."""
    return torch.exp2(torch.floor(torch.log2(values.abs().clamp(min=2.0**-126))) - 7)


@pytest.mark.parametrize("reduction", ["mean", "none"])  # 'sum' differs from 'mean' by a factor only
@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.9, 0.01)], ids=["plain", "momentum+decay"])
@pytest.mark.parametrize("row_adaptive", [False, True], ids=["sgd", "row-adaptive"])
@pytest.mark.parametrize("sparse, with_bias", [(True, True), (False, False)], ids=["sparse-bias", "dense"])
def test_float32_steps_match_float64(
    backend, small_chunks, sparse, with_bias, row_adaptive, momentum, weight_decay, reduction
):
    head = make_head(bias=with_bias)
    lr = 0.01 if row_adaptive else 0.7  # steps of a similar size
    optimizer = FusedClassifierSGD(
        head, lr=lr, momentum=momentum, weight_decay=weight_decay, row_adaptive=row_adaptive
    )
    for _ in range(2):  # the second step meets a momentum buffer
        features, target = batch(sparse)
        go = (
            torch.rand(ROWS, device=DEVICE) + 0.5 if reduction == "none" else torch.tensor(1.7, device=DEVICE)
        )
        head.reduction = reduction
        before = [p.detach().double() for p in head.parameters()]
        expected, expected_grad, _ = oracle_step(head, optimizer, features, target, reduction, go)
        _, features_grad = fused_step(head, features, target, go)
        assert_close(features_grad, expected_grad)
        for param, start, reference in zip(head.parameters(), before, expected.parameters(), strict=True):
            assert param.grad is None  # stepped, never stored
            assert_close(param.detach().double() - start, reference.detach() - start, torch.float32)
    assert optimizer.state[head.weight]["step"] == 2


@pytest.mark.parametrize(
    "dtype, master_weights",
    [(torch.bfloat16, False), (torch.bfloat16, True)],
    ids=["bf16-stochastic", "bf16-master"],
)
def test_16_bit_step_rounds_the_float64_step(backend, small_chunks, dtype, master_weights):
    head = make_head(dtype)
    optimizer = FusedClassifierSGD(
        head, lr=0.7, momentum=0.9, weight_decay=0.01, master_weights=master_weights
    )
    for _ in range(2):
        features, target = batch(dtype=dtype)
        go = torch.tensor(1.0, device=DEVICE)
        expected, _, logits_grad = oracle_step(head, optimizer, features, target, "mean", go)
        fused_step(head, features, target, go)
        # The logits' gradient G is rounded to `dtype` before the GEMM of dW = Gᵀ·E (as the fused loss's
        # gradients are): the step's error is at most lr·(dtype's unit roundoff, doubled, plus fp32's
        # summation)·|G|ᵀ·|E| on the weights and lr·(…)·Σ_rows |G| on the bias.
        roundoff = 2 * torch.finfo(dtype).eps / 2 + 1e-5
        bounds = (
            0.7 * roundoff * logits_grad.abs().T @ features.double().abs(),
            0.7 * roundoff * logits_grad.abs().sum(dim=0),
        )
        for param, reference, bound in zip(head.parameters(), expected.parameters(), bounds, strict=True):
            exact = reference.detach()
            if master_weights:
                master = optimizer.state[param]["master"]
                assert master.dtype == torch.float32
                assert ((master.double() - exact).abs() <= bound + 1e-7 * exact.abs()).all()
                assert torch.equal(param, master.to(dtype))  # rounded to nearest
            else:  # stochastic: one of the two bfloat16 neighbours of a value within the bound
                assert ((param.double() - exact).abs() <= bfloat16_ulp(exact) + bound).all()


@triton.jit
def _round_kernel(VALUES, IDS, OUT, n, stream, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    rounded = stochastic_round_bf16(
        tl.load(VALUES + offsets, mask=mask), tl.load(IDS + offsets, mask=mask), stream
    )
    tl.store(OUT + offsets, rounded, mask=mask)


@pytest.mark.parametrize("stream", [0, 12345, 2**31 + 7, 2**32 - 1])
def test_kernel_rounding_bits_equal_the_reference(stream):
    values = torch.randn(1000, device=DEVICE, dtype=torch.float64).to(torch.float32)
    values[:6] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 3.0e38])
    ids = torch.randint(0, 2**40, (1000,), device=DEVICE)  # past 2^32: the high word keys the stream
    out = torch.full((1000,), float("nan"), device=DEVICE, dtype=torch.bfloat16)
    with st.use_backend("triton"):
        _round_kernel[(4,)](values, ids, out, 1000, stream, BLOCK=256)
    expected = stochastic_round_bfloat16(values, ids, stream)
    torch.testing.assert_close(out, expected, rtol=0, atol=0, equal_nan=True)  # bit for bit, NaN as NaN


def test_stochastic_rounding_is_unbiased_and_keyed():
    values = torch.randn(64, dtype=torch.float64).to(torch.float32)
    draws = 4096
    rounded = torch.stack(
        [stochastic_round_bfloat16(values, torch.arange(64), stream) for stream in range(draws)]
    ).double()
    ulp = bfloat16_ulp(values.double())
    assert ((rounded - values.double()).abs() < ulp).all()  # always a neighbour
    # Each draw is Bernoulli on the ulp: the mean's standard error is at most ulp / (2·√draws).
    error = (rounded.mean(dim=0) - values.double()).abs()
    assert (error < 5 * ulp / (2 * draws**0.5)).all()
    # Representable values never move; different streams and element ids draw different bits.
    exact = values.to(torch.bfloat16).float()
    assert torch.equal(stochastic_round_bfloat16(exact, torch.arange(64), 99), exact.to(torch.bfloat16))
    assert not torch.equal(rounded[0], rounded[1])
    same_value = torch.full((64,), float(values[0]))
    assert stochastic_round_bfloat16(same_value, torch.arange(64), 5).unique().numel() == 2


def test_seeded_runs_reproduce(backend, small_chunks):
    def train(seed):
        head = make_head(torch.bfloat16)
        FusedClassifierSGD(head, lr=0.7, seed=seed)
        torch.manual_seed(1)
        for _ in range(2):
            fused_step(head, *batch(dtype=torch.bfloat16), None)
        return head.weight.detach().clone()

    assert torch.equal(train(0), train(0))
    assert not torch.equal(train(0), train(1))


@pytest.mark.parametrize(
    "master_weights, row_adaptive, momentum",
    [(False, False, 0.0), (True, True, 0.9)],  # without momentum the bias has no state to save
    ids=["stochastic-sgd", "master-adaptive-momentum"],
)
def test_resume_from_state_dicts_is_exact(small_chunks, master_weights, row_adaptive, momentum):
    torch.manual_seed(2)
    batches = [batch(dtype=torch.bfloat16) for _ in range(4)]
    options = dict(master_weights=master_weights, row_adaptive=row_adaptive, momentum=momentum)
    head = make_head(torch.bfloat16)
    optimizer = FusedClassifierSGD(head, lr=0.7, weight_decay=0.01, **options)
    for features, target in batches[:2]:
        fused_step(head, features, target, None)
    saved = copy.deepcopy((head.state_dict(), optimizer.state_dict()))
    for features, target in batches[2:]:
        fused_step(head, features, target, None)

    resumed = make_head(torch.bfloat16, seed=3)
    resumed_optimizer = FusedClassifierSGD(resumed, lr=0.1, **options)
    resumed_optimizer.load_state_dict(resumed_optimizer.state_dict())  # before a step: the bias has no state
    resumed.load_state_dict(saved[0])
    resumed_optimizer.load_state_dict(saved[1])
    for buffer in resumed_optimizer.state[resumed.weight].values():
        assert not isinstance(buffer, torch.Tensor) or buffer.dtype == torch.float32
    for features, target in batches[2:]:
        fused_step(resumed, features, target, None)
    for param, expected in zip(resumed.parameters(), head.parameters(), strict=True):
        assert torch.equal(param, expected)


def test_no_step_without_a_training_backward(small_chunks):
    head = make_head()
    optimizer = FusedClassifierSGD(head, lr=0.7)
    start = head.weight.detach().clone()
    features, target = batch()
    with torch.no_grad():
        head(features, target)
    head.eval()
    head(features.requires_grad_(), target).backward()  # eval: the plain loss, gradients stored
    assert head.weight.grad is not None
    head.train()
    head(features, target)  # never backpropagated
    assert torch.equal(head.weight, start)
    assert optimizer.state[head.weight]["step"] == 0
    bias = head.bias.detach().clone()
    head.weight.requires_grad_(False)
    with pytest.raises(ValueError, match="freeze the bias with the weight"):
        head(features, target)
    head.bias.requires_grad_(False)
    head(features, target).backward()
    assert torch.equal(head.weight, start)
    head.weight.requires_grad_(True)
    head(features, target).backward()  # a frozen bias stays as it is
    assert torch.equal(head.bias, bias) and not torch.equal(head.weight, start)
    assert optimizer.state[head.weight]["step"] == 1
    head.bias.requires_grad_(True)
    with torch.no_grad():
        head.weight.copy_(start)
    optimizer.param_groups[0]["lr"] = 0.0  # as an LR scheduler would set it
    head(features, target).backward()
    assert torch.equal(head.weight, start)
    assert optimizer.state[head.weight]["step"] == 2


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_misuse_raises(small_chunks):
    head = make_head()
    optimizer = FusedClassifierSGD(head, lr=0.7)
    features, target = batch(sparse=False)
    features.requires_grad_()
    with pytest.raises(RuntimeError, match="already has"):
        FusedClassifierSGD(head, lr=0.1)
    with pytest.raises(RuntimeError, match="create_graph"):
        head(features, target).backward(create_graph=True)
    loss = head(features, target)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()  # a second step from the same graph
    external = torch.optim.AdamW(head.parameters())
    with pytest.raises(RuntimeError, match="FusedClassifierSGD steps"):
        external.step()
    optimizer.step()  # its own step still runs
    with pytest.raises(ValueError, match="needs the chunked path"):
        head.label_weight = torch.rand(LABELS, device=DEVICE, requires_grad=True)
        head(features, target)
    head.label_weight = None
    with pytest.raises(TypeError, match="autocast"), torch.autocast(DEVICE, dtype=torch.bfloat16):
        head(features, target)
    with pytest.raises(Exception, match="runs eagerly"):
        torch.compile(lambda e, y: head(e, y), backend="eager", fullgraph=True)(features, target)
    with pytest.raises(ValueError, match="other parameters"):
        st.linear_multilabel_soft_margin_loss(
            features, head.weight.detach().clone().requires_grad_(), target, head.bias, fused_sgd=optimizer
        )
    with pytest.raises(TypeError, match="not float16"):
        FusedClassifierSGD(make_head(torch.float16), lr=0.1)
    other = make_head(seed=5)
    with pytest.raises(ValueError, match="row_adaptive"):
        FusedClassifierSGD(other, lr=0.1, row_adaptive=True).load_state_dict(optimizer.state_dict())
    with pytest.raises(ValueError, match="lr"):
        FusedClassifierSGD(make_head(), lr=-1.0)
