"""One small call of every kernel and launch variant the package has, checked against a float64 torch
reference before anything is timed: compiled on a GPU, under Triton's interpreter on a CPU.

    python bench/check_kernels.py --out check_kernels.csv

Variants (each through the public API on the "triton" backend, so that no call falls back to torch):
the dense forward (MLSM bf16 logits with uint8 targets, 'mean'; BCE fp32 with soft targets, weight and
pos_weight, 'none'), the sparse forward (SparseTargets, MLSM and BCE), the in-place forward
(grad_into_input=True, dense and sparse), the gradient-scale kernel (a grad_output that is not 1: per
row, per element, and fp16's scale applied in the backward, at 'sum'), the fused linear chunk kernel (bf16
with sparse targets and bias, bf16 with a dense uint8 target and label weights, fp16 'none' which
recomputes in the backward), the tiled comparison design of bench/linear_tiled.py, the classifier's step
inside the backward (FusedClassifierSGD, row-adaptive with momentum and decay, fp32 and bf16 with master
weights: the step itself compared, since the weights' magnitude would hide its errors), and issue 18's forms
and options: sigmoid_focal_loss, asymmetric_loss, label_smoothing on a dense and on a sparse target, and
ignore_value (partial labels: the known-counts kernel, then the forward). The reference is torch's own
loss in float64 on the same (already rounded) inputs, or for issue 18's the published formula in torch
that the variants sweep times (bench/sweep.py: torchvision's focal loss, the ASL authors' reference,
torch's MLSM on the smoothed target, the masked MLSM), gradients by float64 autograd with the same
grad_output.

Pass: |ours − ref| ≤ tol·(max|ref| + |ref|) everywhere, NaN at the same places, tol by the dtype of the
tensor checked (fp32 2e-5, fp16 2e-3, bf16 1.6e-2, as the tests' conftest). One CSV row per checked
tensor: variant, kernels, quantity, dtype, shape, error (max |ours − ref| / (max|ref| + |ref|)), tol,
passed, seconds (the variant's first call: compilation and autotuning included), message. Exits 1 if a
check fails or raises; the CSV is written after every variant.
"""

import argparse
import os
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():  # the interpreter must be chosen before triton is first imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pandas as pd
import torch.nn.functional as F
from linear_tiled import tiled_linear_multilabel_soft_margin_loss  # bench/linear_tiled.py, beside this
from sweep import (  # the published formulas, as the variants sweep times them (bench/sweep.py)
    torch_asymmetric_loss,
    torch_masked_mlsm,
    torch_sigmoid_focal_loss,
    torch_smoothed_mlsm,
)
from timing import environment, log, zipf_padded  # bench/timing.py

import softmargin_triton as st
from softmargin_triton.fused_sgd import FusedClassifierSGD

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-10}
# L not a multiple of any tile: every kernel's edge masks run. The interpreter takes the smaller default.
ROWS, LABELS, DIM = (48, 3001, 64) if DEVICE == "cuda" else (16, 700, 32)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device=DEVICE).manual_seed(seed)


def _logits(rows, cols, dtype, seed):
    return (torch.randn(rows, cols, device=DEVICE, generator=_generator(seed)) * 3).to(dtype)


def _sparse(rows, cols, seed):
    """About 5 positives a row from Zipf(1) label frequencies (a few labels in many rows; bench/timing.py's
    sampler), one row empty, one with 60 positives."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 11, (rows,), generator=g)
    counts[0], counts[1] = 0, 60
    return st.SparseTargets.from_padded(zipf_padded(counts, cols, generator=g).to(DEVICE), cols)


def _binary(rows, cols, dtype, seed):
    return (torch.rand(rows, cols, device=DEVICE, generator=_generator(seed)) < 0.05).to(dtype)


def _partial(rows, cols, seed):
    """int8 partial labels: 5% positives, half the labels -1 (unknown), one row with no known label."""
    g = _generator(seed)
    target = (torch.rand(rows, cols, device=DEVICE, generator=g) < 0.05).to(torch.int8)
    target[torch.rand(rows, cols, device=DEVICE, generator=g) < 0.5] = -1
    target[0] = -1
    return target


def _compare(name, ours, reference, dtype) -> dict:
    tol = TOLERANCE[dtype]
    ours, reference = ours.detach().to(torch.float64), reference.detach().to(torch.float64)
    if ours.shape != reference.shape:
        return {"quantity": name, "passed": False, "message": f"shape {ours.shape} != {reference.shape}"}
    same_nan = torch.equal(ours.isnan(), reference.isnan())
    finite = reference[reference.isfinite()]
    scale = finite.abs().max().item() if finite.numel() else 1.0
    both = ~(ours.isnan() | reference.isnan())
    error = ((ours - reference).abs() / (scale + reference.abs()))[both]
    worst = error.max().item() if error.numel() else 0.0
    return {
        "quantity": name,
        "dtype": str(dtype).removeprefix("torch."),
        "error": worst,
        "tol": tol,
        "passed": bool(same_nan and worst <= tol),
        "message": "" if same_nan else "NaN at different places",
    }


def _grads(loss_fn, leaves, grad_output_fn):
    """(loss, grads of loss·grad_output) for fresh leaf copies of `leaves`."""
    leaves = [leaf.detach().clone().requires_grad_(True) for leaf in leaves]
    loss = loss_fn(*leaves)
    go = grad_output_fn(loss)
    grads = torch.autograd.grad(loss, leaves, go)
    return loss, grads


def _go(kind):
    """grad_output: 1 (the usual loss.backward()), or random positive numbers that are never exactly 1."""
    if kind == "one":
        return lambda loss: torch.ones_like(loss)
    return lambda loss: (torch.rand(loss.shape, device=DEVICE, generator=_generator(7)) + 0.5).to(loss.dtype)


def _loss_check(ours, theirs, x, target, go_kind, dense_target=None, **kwargs):
    """Checks of one soft-margin call: loss and logits gradient against torch in float64."""
    dense = target if dense_target is None else dense_target
    loss, (grad,) = _grads(lambda xx: ours(xx, target, **kwargs), [x], _go(go_kind))
    doubled = {k: v.double() if torch.is_tensor(v) else v for k, v in kwargs.items()}
    ref, (ref_grad,) = _grads(lambda xx: theirs(xx, dense.double(), **doubled), [x.double()], _go(go_kind))
    return [_compare("loss", loss, ref, loss.dtype), _compare("grad_input", grad, ref_grad, x.dtype)]


def check_dense_mlsm():
    x, y = _logits(ROWS, LABELS, torch.bfloat16, 1), _binary(ROWS, LABELS, torch.uint8, 2)
    return _loss_check(st.multilabel_soft_margin_loss, F.multilabel_soft_margin_loss, x, y, "one")


def check_dense_mlsm_row_scale():
    x, y = _logits(ROWS, LABELS, torch.bfloat16, 3), _binary(ROWS, LABELS, torch.bfloat16, 4)
    return _loss_check(
        st.multilabel_soft_margin_loss, F.multilabel_soft_margin_loss, x, y, "random", reduction="none"
    )


def check_dense_bce_weighted():
    x = _logits(ROWS, LABELS, torch.float32, 5)
    y = torch.rand(ROWS, LABELS, device=DEVICE, generator=_generator(6))
    weight = torch.rand(LABELS, device=DEVICE, generator=_generator(8)) + 0.5
    pos_weight = torch.rand(LABELS, device=DEVICE, generator=_generator(9)) * 3
    return _loss_check(
        st.binary_cross_entropy_with_logits,
        F.binary_cross_entropy_with_logits,
        x,
        y,
        "random",
        weight=weight,
        pos_weight=pos_weight,
        reduction="none",
    )


def check_dense_fp16_scale():
    # 'sum': a 'mean' gradient of (σ - y)/(B·L) would sit among fp16's subnormals at any size worth checking
    x, y = _logits(ROWS, LABELS, torch.float16, 10), _binary(ROWS, LABELS, torch.float16, 11)
    return _loss_check(
        st.multilabel_soft_margin_loss, F.multilabel_soft_margin_loss, x, y, "random", reduction="sum"
    )


def check_sparse_mlsm():
    x, targets = _logits(ROWS, LABELS, torch.bfloat16, 12), _sparse(ROWS, LABELS, 13)
    dense = targets.to_dense(torch.float64)
    return _loss_check(
        st.multilabel_soft_margin_loss, F.multilabel_soft_margin_loss, x, targets, "one", dense
    )


def check_sparse_bce():
    x, targets = _logits(ROWS, LABELS, torch.float32, 14), _sparse(ROWS, LABELS, 15)
    pos_weight = torch.rand(LABELS, device=DEVICE, generator=_generator(16)) * 3
    dense = targets.to_dense(torch.float64)
    return _loss_check(
        st.binary_cross_entropy_with_logits,
        F.binary_cross_entropy_with_logits,
        x,
        targets,
        "random",
        dense,
        pos_weight=pos_weight,
        reduction="sum",
    )


def check_focal():
    x, y = _logits(ROWS, LABELS, torch.bfloat16, 30), _binary(ROWS, LABELS, torch.uint8, 31)
    return _loss_check(st.sigmoid_focal_loss, torch_sigmoid_focal_loss, x, y, "one", reduction="mean")


def check_asymmetric():
    # fp32, the reference's defaults and its 'sum', scaled by a grad_output that is not 1
    x, y = _logits(ROWS, LABELS, torch.float32, 32), _binary(ROWS, LABELS, torch.uint8, 33)
    return _loss_check(st.asymmetric_loss, torch_asymmetric_loss, x, y, "random")


def check_dense_smoothed():
    x, y = _logits(ROWS, LABELS, torch.bfloat16, 34), _binary(ROWS, LABELS, torch.uint8, 35)
    return _loss_check(st.multilabel_soft_margin_loss, torch_smoothed_mlsm, x, y, "one", label_smoothing=0.1)


def check_sparse_smoothed():
    x, targets = _logits(ROWS, LABELS, torch.bfloat16, 36), _sparse(ROWS, LABELS, 37)
    dense = targets.to_dense(torch.float64)
    return _loss_check(
        st.multilabel_soft_margin_loss, torch_smoothed_mlsm, x, targets, "one", dense, label_smoothing=0.1
    )


def check_partial():
    x, y = _logits(ROWS, LABELS, torch.bfloat16, 38), _partial(ROWS, LABELS, 39)
    return _loss_check(st.multilabel_soft_margin_loss, torch_masked_mlsm, x, y, "one", ignore_value=-1)


def _in_place(target, dense, seed):
    """grad_into_input=True over a non-leaf logits buffer (a classifier's output): the loss, the leaf's
    gradient, and that the kernel wrote over the buffer."""
    leaf = _logits(ROWS, LABELS, torch.bfloat16, seed).requires_grad_(True)
    buffer = leaf * 1
    before = buffer.detach().clone()
    loss = st.multilabel_soft_margin_loss(buffer, target, grad_into_input=True)
    overwritten = not torch.equal(buffer.detach(), before)
    (grad,) = torch.autograd.grad(loss, leaf)
    ref, (ref_grad,) = _grads(
        lambda xx: F.multilabel_soft_margin_loss(xx, dense.double()), [leaf.double()], _go("one")
    )
    written = {
        "quantity": "logits overwritten",
        "passed": overwritten,
        "message": "" if overwritten else "the buffer still holds the logits",
    }
    return [
        _compare("loss", loss, ref, loss.dtype),
        _compare("grad_input", grad, ref_grad, leaf.dtype),
        written,
    ]


def check_in_place_dense():
    y = _binary(ROWS, LABELS, torch.uint8, 18)
    return _in_place(y, y, 17)


def check_in_place_sparse():
    targets = _sparse(ROWS, LABELS, 20)
    return _in_place(targets, targets.to_dense(torch.float64), 19)


def _linear_problem(dtype, seed):
    g = _generator(seed)
    input = torch.randn(ROWS, DIM, device=DEVICE, generator=g).to(dtype)
    weight = (torch.randn(LABELS, DIM, device=DEVICE, generator=g) / DIM**0.5).to(dtype)
    bias = torch.randn(LABELS, device=DEVICE, generator=g).to(dtype)
    return input, weight, bias


def _linear_check(ours, dtype, seed, target, dense, go_kind="one", reduction="mean", label_weight=None):
    leaves = _linear_problem(dtype, seed)
    loss, grads = _grads(ours, leaves, _go(go_kind))

    def theirs(e, w, b):
        lw = None if label_weight is None else label_weight.double()
        return F.multilabel_soft_margin_loss(
            F.linear(e, w, b), dense.double(), weight=lw, reduction=reduction
        )

    ref, ref_grads = _grads(theirs, [leaf.double() for leaf in leaves], _go(go_kind))
    names = ("grad_input", "grad_weight", "grad_bias")
    return [
        _compare("loss", loss, ref, loss.dtype),
        *(_compare(n, g, r, dtype) for n, g, r in zip(names, grads, ref_grads, strict=True)),
    ]


def check_linear_sparse():
    targets = _sparse(ROWS, LABELS, 22)

    def ours(e, w, b):
        return st.linear_multilabel_soft_margin_loss(e, w, targets, b)

    return _linear_check(ours, torch.bfloat16, 21, targets, targets.to_dense(torch.float64))


def check_linear_dense_weighted():
    y = _binary(ROWS, LABELS, torch.uint8, 24)
    label_weight = torch.rand(LABELS, device=DEVICE, generator=_generator(25)) + 0.5

    def ours(e, w, b):
        return st.linear_multilabel_soft_margin_loss(e, w, y, b, label_weight=label_weight)

    return _linear_check(ours, torch.bfloat16, 23, y, y, label_weight=label_weight)


def check_linear_fp16_none():
    targets = _sparse(ROWS, LABELS, 27)

    def ours(e, w, b):
        return st.linear_multilabel_soft_margin_loss(e, w, targets, b, reduction="none")

    return _linear_check(
        ours, torch.float16, 26, targets, targets.to_dense(torch.float64), go_kind="random", reduction="none"
    )


def _fused_sgd_check(dtype, seed, master_weights):
    """One row-adaptive FusedClassifierSGD step with momentum and decay, from a nonzero state (a first step
    first), against the same step taken in float64 on the dense gradient of F.linear + torch's loss."""
    input, weight, bias = _linear_problem(dtype, seed)
    targets = _sparse(ROWS, LABELS, seed + 1)
    head = st.LinearMultiLabelSoftMarginLoss(DIM, LABELS, device=DEVICE, dtype=dtype)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    optimizer = FusedClassifierSGD(
        head, lr=0.01, momentum=0.9, weight_decay=0.01, row_adaptive=True, master_weights=master_weights
    )
    head(input, targets).backward()  # a first step: the second meets momentum and second moments
    owned = [optimizer.state[p].get("master", p).detach().double().clone() for p in head.parameters()]
    moments = [optimizer.state[p]["momentum_buffer"].double() for p in head.parameters()]
    squares = [optimizer.state[p]["second_moment"].double() for p in head.parameters()]
    features = input.detach().clone().requires_grad_()
    head(features, targets).backward(torch.tensor(1.7, device=DEVICE))
    stepped = [optimizer.state[p].get("master", p).detach().double() for p in head.parameters()]

    reference = [leaf.clone().requires_grad_() for leaf in owned]
    features_ref = input.double().requires_grad_()
    loss = F.multilabel_soft_margin_loss(F.linear(features_ref, *reference), targets.to_dense(torch.float64))
    (loss * 1.7).backward()
    results = [_compare("grad_input", features.grad, features_ref.grad, dtype)]
    group, step = optimizer.param_groups[0], optimizer.state[head.weight]["step"]
    for name, start, leaf, momentum, square, ours in zip(
        ("weight", "bias"), owned, reference, moments, squares, stepped, strict=True
    ):
        grad = leaf.grad
        square = group["beta2"] * square + (1 - group["beta2"]) * grad.square().reshape(len(grad), -1).mean(1)
        size = group["lr"] / ((square / (1 - group["beta2"] ** step)).sqrt() + group["eps"])
        update = group["momentum"] * momentum + grad
        expected = (
            start * (1 - group["lr"] * group["weight_decay"])
            - size.view(-1, *[1] * (grad.dim() - 1)) * update
        )
        # The step itself is compared (the weights' magnitude would hide its errors), to the tolerance of
        # the dtype G is rounded to before the GEMM of dW.
        results.append(_compare(f"{name} step", ours - start, expected - start, dtype))
    return results


def check_fused_sgd_fp32():
    return _fused_sgd_check(torch.float32, 30, master_weights=False)


def check_fused_sgd_bf16_master():
    return _fused_sgd_check(torch.bfloat16, 32, master_weights=True)


def check_linear_tiled():
    targets = _sparse(ROWS, LABELS, 29)

    def ours(e, w, b):
        return tiled_linear_multilabel_soft_margin_loss(e, w, targets, b)

    return _linear_check(ours, torch.bfloat16, 28, targets, targets.to_dense(torch.float64))


# variant → (the kernels it launches, its check)
CHECKS = {
    "dense mlsm bf16 uint8 mean": ("soft_margin_forward, soft_margin_scale_grad", check_dense_mlsm),
    "dense mlsm bf16 bf16 none, grad_output per row": (
        "soft_margin_forward, soft_margin_scale_grad",
        check_dense_mlsm_row_scale,
    ),
    "dense bce fp32 weight pos_weight none, grad_output per element": (
        "soft_margin_forward, soft_margin_scale_grad",
        check_dense_bce_weighted,
    ),
    "dense mlsm fp16 sum, scale in the backward": (
        "soft_margin_forward, soft_margin_scale_grad",
        check_dense_fp16_scale,
    ),
    "sparse mlsm bf16 mean": ("soft_margin_forward (sparse)", check_sparse_mlsm),
    "sparse bce fp32 pos_weight sum": (
        "soft_margin_forward (sparse), soft_margin_scale_grad",
        check_sparse_bce,
    ),
    "in-place dense mlsm bf16 uint8": ("soft_margin_forward_into_logits", check_in_place_dense),
    "in-place sparse mlsm bf16": ("soft_margin_forward_into_logits (sparse)", check_in_place_sparse),
    "linear chunk bf16 sparse bias mean": ("linear_soft_margin_chunk", check_linear_sparse),
    "linear chunk bf16 uint8 label_weight mean": ("linear_soft_margin_chunk", check_linear_dense_weighted),
    "linear chunk fp16 sparse none": (
        "linear_soft_margin_chunk (recomputed in the backward)",
        check_linear_fp16_none,
    ),
    "linear tiled bf16 sparse bias (bench/linear_tiled.py)": ("linear_soft_margin_tiled", check_linear_tiled),
    "fused classifier sgd fp32 row-adaptive momentum": (
        "linear_soft_margin_chunk, classifier_sgd_update",
        check_fused_sgd_fp32,
    ),
    "fused classifier sgd bf16 master row-adaptive momentum": (
        "linear_soft_margin_chunk, classifier_sgd_update",
        check_fused_sgd_bf16_master,
    ),
    "focal bf16 uint8 mean": ("soft_margin_forward (focal), soft_margin_scale_grad", check_focal),
    "asymmetric fp32 uint8 sum, grad_output not 1": (
        "soft_margin_forward (asymmetric), soft_margin_scale_grad",
        check_asymmetric,
    ),
    "dense mlsm bf16 uint8 label_smoothing mean": (
        "soft_margin_forward (label smoothing), soft_margin_scale_grad",
        check_dense_smoothed,
    ),
    "sparse mlsm bf16 label_smoothing mean": (
        "soft_margin_forward (sparse, label smoothing), soft_margin_scale_grad",
        check_sparse_smoothed,
    ),
    "partial mlsm bf16 int8 ignore_value mean": (
        "soft_margin_known_counts, soft_margin_forward (ignore_value), soft_margin_scale_grad",
        check_partial,
    ),
}


def main() -> None:
    global ROWS, LABELS, DIM
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="CSV to write")
    parser.add_argument("--only", nargs="+", choices=list(CHECKS), help="run these variants only")
    parser.add_argument(
        "--size", type=int, nargs=3, metavar=("B", "L", "D"), help=f"default {ROWS} {LABELS} {DIM}"
    )
    args = parser.parse_args()
    if args.size:
        ROWS, LABELS, DIM = args.size
    common = environment()
    rows = []
    for variant in args.only or CHECKS:
        kernels, check = CHECKS[variant]
        start = time.perf_counter()
        try:
            with st.use_backend("triton"):
                results = check()
        except Exception as error:  # recorded, and the other variants still run
            results = [
                {"quantity": "call", "passed": False, "message": f"{type(error).__name__}: {error}"[:400]}
            ]
        seconds = time.perf_counter() - start
        shape = f"B={ROWS} L={LABELS}" + (f" D={DIM}" if variant.startswith("linear") else "")
        for result in results:
            rows.append(
                {"variant": variant, "kernels": kernels, "shape": shape, **result, "seconds": seconds}
            )
        failed = [r["quantity"] for r in results if not r["passed"]]
        status = f"FAIL: {', '.join(failed)}" if failed else "ok"
        log(f"{variant} ({seconds:.1f} s): {status}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame([{**row, **common} for row in rows]).to_csv(args.out, index=False)
    passed = sum(row["passed"] for row in rows)
    log(f"{passed} of {len(rows)} checks passed on {common['gpu_name']}; wrote {args.out}")
    raise SystemExit(0 if passed == len(rows) else 1)


if __name__ == "__main__":
    main()
