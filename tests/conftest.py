"""Shared test setup: where the kernels run, NaN-poisoned allocations, per-dtype comparison, the backend
fixture, random data and the float64 oracle.

Without CUDA the Triton kernels run on CPU under Triton's interpreter, which must be switched on before
triton is first imported; with CUDA they run compiled, and every test tensor lives on the GPU.
"""

import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# These import triton, so they follow the TRITON_INTERPRET switch.
import softmargin_triton as st
from softmargin_triton.reference import reduction_grad_scale, soft_margin_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# Relative tolerance by the dtype of the tensor under test, against a float64 reference of the same
# (already rounded) inputs. Half types: the kernels compute in fp32 and round once.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None) -> None:
    """actual ≈ expected elementwise within the tolerance of `dtype` (default: actual's), scaled to the
    largest reference magnitude; NaN must appear at exactly the same places, and shapes must match."""
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    tol = TOLERANCE[dtype or actual.dtype]
    expected = expected.to(torch.float64)
    finite = expected[expected.isfinite()]
    scale = finite.abs().max().item() if finite.numel() else 1.0
    torch.testing.assert_close(
        actual.to(torch.float64), expected, rtol=tol, atol=tol * max(scale, 1e-30), equal_nan=True
    )


@pytest.fixture
def poisoned_allocations():
    """Every torch.empty* returns NaN (integer: max value) while the test runs, so an output element a
    kernel forgot to write fails the comparison instead of passing as leftover zeros."""
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.utils.deterministic.fill_uninitialized_memory,
    )
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    assert torch.empty(8, device=DEVICE).isnan().all(), "allocation poisoning is not in effect"
    yield
    torch.use_deterministic_algorithms(previous[0])
    torch.utils.deterministic.fill_uninitialized_memory = previous[1]


LOSSES = {
    "mlsm": (st.multilabel_soft_margin_loss, F.multilabel_soft_margin_loss),
    "bce": (st.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits),
}
REDUCTIONS = ("none", "mean", "sum")
BACKENDS = ("torch", "triton")


@pytest.fixture(params=BACKENDS)
def backend(request, poisoned_allocations):
    with st.use_backend(request.param):
        yield request.param


def logits(*shape, dtype=torch.float32, requires_grad=True):
    x = (torch.randn(shape, device=DEVICE, dtype=torch.float64) * 3).to(dtype)
    return x.requires_grad_(requires_grad)


def soft_targets(*shape, dtype=torch.float32):
    return torch.rand(shape, device=DEVICE, dtype=torch.float64).to(dtype)


def binary_targets(*shape, dtype=torch.float32):
    return (torch.rand(shape, device=DEVICE) < 0.3).to(dtype)


def random_grad_output(loss):
    return torch.rand_like(loss) + 0.5  # never exactly 1, so the backward kernel must scale every element


def loss_and_grad(fn, x, *args, grad_output=None, **kwargs):
    """(loss, d(loss·grad_output)/dx) for a fresh leaf copy of x."""
    x = x.detach().clone().requires_grad_(True)
    loss = fn(x, *args, **kwargs)
    go = torch.ones_like(loss) if grad_output is None else grad_output
    (grad,) = torch.autograd.grad(loss, x, go)
    return loss, grad


def reference_loss_and_grad(loss_form, x, target, weight=None, pos_weight=None, reduction="mean", go=None):
    """Float64 oracle via the reference over a (R, C) view, reshaped to torch's output shapes."""
    shape = x.shape
    cols = shape[-1] if x.dim() else 1
    rows = x.detach().to(torch.float64).reshape(-1, cols)

    def as_rows(t):
        return None if t is None else t.to(torch.float64).expand(shape).reshape(-1, cols)

    loss, grad = soft_margin_reference(
        rows,
        as_rows(target),
        as_rows(weight),
        as_rows(pos_weight),
        loss_form,
        reduction,
        torch.float64,
        reduction_grad_scale(loss_form, reduction, *rows.shape),
    )
    if go is not None and reduction == "none":
        grad = grad * (go.reshape(-1, 1) if loss_form == "mlsm" else go.reshape(-1, cols))
    elif go is not None:
        grad = grad * go
    if reduction == "none":
        loss = loss.reshape(shape[:-1] if loss_form == "mlsm" else shape)
    return loss, grad.reshape(shape)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: none is visible to torch on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def zipf_label_lists(rows: int, num_labels: int, max_positives: int = 40) -> list[list[int]]:
    """Positive labels per row as XMC data has them: 0–max_positives per row (every fourth row empty),
    label frequencies following Zipf's law with exponent 1 over a random ranking of the labels, repeats
    within a row left in (the constructors collapse them)."""
    ranking = torch.randperm(num_labels)
    frequency = 1.0 / torch.arange(1, num_labels + 1, dtype=torch.float64)
    counts = torch.randint(0, max_positives + 1, (rows,))
    counts[::4] = 0
    lists = []
    for count in counts.tolist():
        draws = (
            torch.multinomial(frequency, count, replacement=True)
            if count
            else torch.empty(0, dtype=torch.int64)
        )
        lists.append(ranking[draws].tolist())
    return lists


@pytest.fixture
def fresh_dynamo():
    """A clean torch.compile cache: the compile tests reuse one code object across their parameters, which
    would otherwise pile up recompilations past Dynamo's limit."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
