"""bench/linear_tiled.py, design (a) of the fused linear + loss (one tiled kernel with fp32 atomics), the
benchmark sweep's comparison point: against float64 F.linear + torch's MLSM under Triton's interpreter (or
compiled on a GPU), and against the package's design (b) at a realistic size on a GPU.

The bench folder is no package: the module is loaded from its file (after conftest has chosen where the
kernels run), as bench/sweep.py imports it from beside itself.
"""

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, assert_close, zipf_label_lists

import softmargin_triton as st

_SPEC = importlib.util.spec_from_file_location(
    "linear_tiled", Path(__file__).resolve().parents[1] / "bench" / "linear_tiled.py"
)
tiled = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(tiled)
tiled_loss = tiled.tiled_linear_multilabel_soft_margin_loss

# Odd sizes: under the interpreter's 16 × 32 × 16 tiles, 3 row blocks (groups of 2, the last of one),
# 3 label blocks and 3 depth blocks, each of them partial.
ROWS, DIM, LABELS = 37, 45, 83


def problem(dtype=torch.float32, rows=ROWS, dim=DIM, labels=LABELS):
    """input, weight, bias (logits spread over a few units) and Zipf sparse targets (every 4th row empty)."""
    input = torch.randn(rows, dim, device=DEVICE, dtype=torch.float64)
    weight = torch.randn(labels, dim, device=DEVICE, dtype=torch.float64) * (2 / dim**0.5)
    bias = torch.randn(labels, device=DEVICE, dtype=torch.float64)
    targets = st.SparseTargets.from_lists(zipf_label_lists(rows, labels), labels, DEVICE)
    return input.to(dtype), weight.to(dtype), bias.to(dtype), targets


def grads(fn, operands, grad_output):
    """(loss, gradients of loss·grad_output w.r.t. each operand that is not None) for fresh leaves."""
    leaves = [None if t is None else t.detach().clone().requires_grad_(True) for t in operands]
    loss = fn(*leaves)
    return loss, torch.autograd.grad(loss, [t for t in leaves if t is not None], grad_output)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_matches_float64_torch(poisoned_allocations, with_bias, dtype):
    input, weight, bias, targets = problem(dtype)
    operands = (input, weight, bias if with_bias else None)
    go = torch.tensor(2.5, device=DEVICE)  # loss · 2.5: the backward must scale every saved gradient

    def ours(e, w, b):
        return tiled_loss(e, w, targets, b)

    def theirs(e, w, b):
        return F.multilabel_soft_margin_loss(F.linear(e, w, b), targets.to_dense(torch.float64))

    loss, our_grads = grads(ours, operands, go.to(dtype))
    expected, expected_grads = grads(
        theirs, [None if t is None else t.double() for t in operands], go.double()
    )
    assert loss.dtype == dtype and loss.shape == ()
    # Logits of the rounded operands summed over D in fp32: the loss to fp32's tolerance (then rounded
    # once to dtype); the gradients, from G rounded to dtype, to dtype's.
    assert_close(loss, expected, torch.float32 if dtype == torch.float32 else dtype)
    assert len(our_grads) == len(expected_grads) == (3 if with_bias else 2)
    for grad, expected_grad in zip(our_grads, expected_grads, strict=True):
        assert grad.dtype == dtype
        assert_close(grad, expected_grad, dtype)


def test_every_row_and_label_block_reaches_the_gradients(poisoned_allocations):
    """Positives in the last, partial label block and rows in the last, partial row block: a program
    order that skipped or repeated a tile would miss or double its share of dE, dW and db."""
    input, weight, bias, _ = problem()
    targets = st.SparseTargets.from_lists([[LABELS - 1, i % LABELS] for i in range(ROWS)], LABELS, DEVICE)
    go = torch.tensor(1.0, device=DEVICE)
    loss, our_grads = grads(
        lambda e, w, b: tiled_loss(e, w, targets, b),
        (input, weight, bias),
        go,
    )
    expected, expected_grads = grads(
        lambda e, w, b: F.multilabel_soft_margin_loss(F.linear(e, w, b), targets.to_dense(torch.float64)),
        (input.double(), weight.double(), bias.double()),
        go.double(),
    )
    assert_close(loss, expected)
    for grad, expected_grad in zip(our_grads, expected_grads, strict=True):
        assert grad.isfinite().all()
        assert_close(grad, expected_grad)


def _wrong_device(monkeypatch, e, w, t):
    # On CPU, as if the interpreter were off; on a GPU, CPU tensors: either way not where the kernel runs.
    if DEVICE == "cpu":
        monkeypatch.setattr(tiled, "TRITON_INTERPRETED", False)
    else:
        e, w, t = e.cpu(), w.cpu(), t.to("cpu")
    return tiled_loss(e, w, t)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda mp, e, w, t: tiled_loss(e, w, t.to_dense()), TypeError, "SparseTargets"),
        (lambda mp, e, w, t: tiled_loss(e, w[:, :-1], t), ValueError, "disagree"),
        (lambda mp, e, w, t: tiled_loss(e, w[:-1], t), ValueError, "target of shape"),
        (lambda mp, e, w, t: tiled_loss(e, w, t, torch.zeros(3, device=DEVICE)), ValueError, "bias"),
        (lambda mp, e, w, t: tiled_loss(e.half(), w.half(), t), TypeError, "bfloat16 or float32"),
        (lambda mp, e, w, t: tiled_loss(e, w.double(), t), TypeError, "share one"),
        (_wrong_device, ValueError, "runs on"),
    ],
    ids=["dense-target", "dim", "labels", "bias-shape", "fp16", "dtype", "device"],
)
def test_unsupported_inputs_raise(monkeypatch, call, error, match):
    input, weight, _, targets = problem()
    with pytest.raises(error, match=match):
        call(monkeypatch, input, weight, targets)


@pytest.mark.gpu
def test_gpu_realistic_size_matches_design_b(poisoned_allocations):
    """B=1024, D=256, L=50000 bf16 with Zipf targets: design (a) against the package's design (b); both
    round G to bf16 and accumulate in fp32, in different orders."""
    rows, dim, labels = 1024, 256, 50000
    input, weight, bias, targets = problem(torch.bfloat16, rows, dim, labels)
    go = torch.tensor(2.5, device=DEVICE, dtype=torch.bfloat16)
    loss, our_grads = grads(
        lambda e, w, b: tiled_loss(e, w, targets, b),
        (input, weight, bias),
        go,
    )
    expected, expected_grads = grads(
        lambda e, w, b: st.linear_multilabel_soft_margin_loss(e, w, targets, b), (input, weight, bias), go
    )
    assert_close(loss, expected, torch.bfloat16)
    for grad, expected_grad in zip(our_grads, expected_grads, strict=True):
        assert grad.dtype == torch.bfloat16
        assert_close(grad, expected_grad, torch.bfloat16)
