"""The kernels' elementwise loss and gradient against float64, over a dense sweep of the float32 range.

    python bench/accuracy.py [--points N] [--out reports/accuracy]

Each logit x runs through multilabel_soft_margin_loss as a row of one label (C = 1, so 'none' is the
elementwise loss term and the gradient under grad_output 1 is d loss / dx), with target 0 and with target 1,
for float32 logits (the PRECISE math of kernels/sigmoid_bce.py) and bfloat16 and float16 logits (its fast
math: a 16-bit loss and gradient). The logits: ±0, every power of two from the smallest subnormal to 2^127,
±inf, NaN, N log-spaced magnitudes from 1e-8 to 100 of each sign, N uniform in [-100, 100], and for the
16-bit dtypes every finite value of the dtype. The reference is float64 on the same (rounded) logits:
max(±x, 0) + log1p(e^-|x|) and σ(±x) from torch in float64.

Errors are in ulps of the output: a float32 output against the exact value (the float32 spacing at the
reference's magnitude, 2^-149 below 2^-126), a 16-bit output against the reference rounded correctly to
its dtype (so 0 means correctly rounded, 1 one neighbour off). A row per (dtype, target, quantity, range of
|x|) is written to <device>.csv: the largest error, where it occurs, and how many values are off by more
than one ulp; non-finite references must match torch's own loss and gradient (NaN where torch gives NaN).

Without a GPU the kernels run under Triton's interpreter (set TRITON_INTERPRET=1 and
SOFTMARGIN_TRITON_BACKEND=triton, as the CLI does): there exp2 and the reciprocal are numpy's, correctly
rounded, and subnormals are kept; on a GPU the MUFU's ex2.approx and rcp.approx (≤ 2 and ≤ 1 ulp by the PTX
ISA) add their error and results below 2^-126 flush to zero, which the "|x| > 87" rows show.
"""

import argparse
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _interpreted_unless_cuda() -> None:
    """Select Triton's interpreter before triton is imported, where no GPU can run the kernels."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
        os.environ.setdefault("SOFTMARGIN_TRITON_BACKEND", "triton")


def logits(points: int, dtype, seed: int = 0):
    """The sweep's logits in `dtype` (see the module docstring), float64 copies of the rounded values."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    powers = torch.tensor([2.0**k for k in range(-149, 128)], dtype=torch.float64)
    parts = [
        torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan")], dtype=torch.float64),
        powers,
        -powers,
        torch.logspace(-8, 2, points, dtype=torch.float64),
        -torch.logspace(-8, 2, points, dtype=torch.float64),
        (torch.rand(points, generator=generator, dtype=torch.float64) * 200 - 100),
    ]
    if dtype in (torch.bfloat16, torch.float16):
        bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
        every = bits.view(dtype).to(torch.float64)
        parts.append(every[every.isfinite()])
    x = torch.cat(parts).to(dtype)
    return x


def reference(x, target: float):
    """float64 loss term and d loss / dx of sigmoid-BCE at logits x (float64) and a 0 or 1 target."""
    import torch

    s = -x if target else x  # the loss is softplus(s)
    loss = torch.clamp(s, min=0) + torch.log1p(torch.exp(-s.abs()))
    grad = -torch.sigmoid(-x) if target else torch.sigmoid(x)
    return loss, grad


def ulps(actual, exact, dtype):
    """|actual - exact| in ulps of `dtype` at exact's magnitude; for 16-bit dtypes against exact rounded
    to the dtype (both float64 tensors; NaN where either is not finite)."""
    import torch

    if dtype == torch.float32:
        target = exact
        tiny = 2.0**-149
    else:
        target = exact.to(dtype).to(torch.float64)
        tiny = 2.0 ** (-24 if dtype == torch.float16 else -133)
    magnitude = target.abs().to(dtype)
    spacing = (torch.nextafter(magnitude, torch.tensor(float("inf"), dtype=dtype)) - magnitude).to(
        torch.float64
    )
    spacing = torch.clamp(spacing, min=tiny)
    error = (actual - target).abs() / spacing
    return torch.where(actual.isfinite() & exact.isfinite(), error, float("nan"))


def measure(points: int, dtypes, device: str):
    """Rows of the error table (see the module docstring) for `dtypes` on `device`."""
    import torch
    import torch.nn.functional as F

    import softmargin_triton as st

    rows = []
    for dtype in dtypes:
        x = logits(points, dtype).to(device)
        for target in (0.0, 1.0):
            y = torch.full((x.numel(), 1), target, dtype=dtype, device=device)
            ours_x = x[:, None].clone().requires_grad_()
            loss = st.multilabel_soft_margin_loss(ours_x, y, reduction="none")
            loss.backward(torch.ones_like(loss))
            theirs_x = x[:, None].double().clone().requires_grad_()
            torch_loss = F.multilabel_soft_margin_loss(theirs_x, y.double(), reduction="none")
            torch_loss.backward(torch.ones_like(torch_loss))
            exact_loss, exact_grad = reference(x.double().cpu(), target)
            for quantity, actual, exact, torch_value in (
                ("loss", loss.detach(), exact_loss, torch_loss.detach()),
                ("grad", ours_x.grad[:, 0], exact_grad, theirs_x.grad[:, 0]),
            ):
                actual = actual.double().cpu()
                torch_value = torch_value.double().cpu()
                nonfinite_mismatch = int(
                    ((actual.isnan() != torch_value.isnan()) | (actual.isinf() != torch_value.isinf())).sum()
                )
                error = ulps(actual, exact, dtype)
                magnitude = x.double().cpu().abs()
                for label, in_range in (
                    ("|x| <= 87", magnitude <= 87),
                    ("|x| > 87", (magnitude > 87) & magnitude.isfinite()),
                ):
                    selected = error[in_range & error.isfinite()]
                    worst = int(torch.argmax(torch.where(in_range & error.isfinite(), error, -1.0)))
                    rows.append(
                        {
                            "logits_dtype": str(dtype).removeprefix("torch."),
                            "target": int(target),
                            "quantity": quantity,
                            "range": label,
                            "points": int(selected.numel()),
                            "max_ulps": float(selected.max()) if selected.numel() else float("nan"),
                            "at_logit": float(x[worst].double()),
                            "over_one_ulp": int((selected > 1).sum()),
                            "nonfinite_mismatches": nonfinite_mismatch,
                        }
                    )
    return rows


def main(argv: list[str] | None = None) -> None:
    _interpreted_unless_cuda()
    import pandas as pd
    import torch
    import triton
    from timing import git_commit  # bench/timing.py, beside this script (imports triton: after the switch)

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=2_000_000, help="log-spaced and uniform logits each")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16", "float16"])
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "accuracy")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    frame = pd.DataFrame(measure(args.points, [getattr(torch, d) for d in args.dtypes], device))
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu-interpreter"
    frame["device"] = name
    frame["torch_version"] = torch.__version__
    frame["triton_version"] = triton.__version__
    frame["git_commit"] = git_commit()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{name.replace(' ', '-').lower()}.csv"
    frame.to_csv(path, index=False)
    print(
        frame.drop(columns=["device", "torch_version", "triton_version", "git_commit"]).to_string(index=False)
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
