"""Host helpers shared by the ops: reductions, dtypes, operand views, and launching the Triton kernels."""

import itertools
import math

import torch
from torch import Tensor
from torch.nn import _reduction

from softmargin_triton.backend import TRITON_INTERPRETED

REDUCTIONS = ("none", "mean", "sum")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def resolve_reduction(size_average: bool | None, reduce: bool | None, reduction: str) -> str:
    """The reduction torch would apply, from the deprecated size_average/reduce (warning as torch does)."""
    if size_average is not None or reduce is not None:
        reduction = _reduction.legacy_get_string(size_average, reduce)  # warns as torch does
    if reduction not in REDUCTIONS:
        raise ValueError(f"{reduction!r} is not a valid value for reduction: use 'none', 'mean' or 'sum'")
    return reduction


def check_label_smoothing(label_smoothing: float) -> float:
    """ε of the smoothed targets y·(1 − ε) + ε/2 (Keras' BinaryCrossentropy), checked: a number in [0, 1)."""
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)):
        raise TypeError(f"label_smoothing must be a float, got {type(label_smoothing).__name__}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    return float(label_smoothing)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The arithmetic's dtype for data of `dtype`: float64 for float64, float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def precise_math(input_dtype: torch.dtype, loss_dtype: torch.dtype) -> bool:
    """The kernels' PRECISE flag (kernels/sigmoid_bce.py): their fast math is below the rounding of a
    16-bit loss and a 16-bit gradient (the input's dtype), not of a 32- or 64-bit one."""
    half = (torch.float16, torch.bfloat16)
    return not (input_dtype in half and loss_dtype in half)


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot's input precision for a GEMM kernel's operands of `dtype`: float32 uses tf32 only where torch's
    own matmuls would (torch.backends.cuda.matmul.allow_tf32)."""
    return "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"


def rows_view(tensor: Tensor, shape: torch.Size, cols: int) -> Tensor | None:
    """`tensor` broadcast to `shape` and viewed as (numel/cols, cols) without a copy, or None if no view
    exists (leading dimensions whose strides do not merge)."""
    expanded = tensor.expand(shape)
    sizes_strides = zip(expanded.shape[:-1], expanded.stride()[:-1], strict=True)
    leading = [(size, stride) for size, stride in sizes_strides if size != 1]
    for (_, outer_stride), (inner_size, inner_stride) in itertools.pairwise(leading):
        if outer_stride != inner_stride * inner_size:
            return None
    return expanded.reshape(math.prod(shape[:-1]), cols)  # a view: the strides were just checked to merge


def launch(autotuned, grid, heuristic_config: dict, **kwargs) -> None:
    """Run an autotuned kernel with keyword arguments; under Triton's interpreter, which cannot benchmark,
    its heuristics-wrapped kernel with `heuristic_config`."""
    if TRITON_INTERPRETED:
        autotuned.fn[grid](**kwargs, **heuristic_config)
    else:
        autotuned[grid](**kwargs)


def strides_2d(name: str, tensor: Tensor | None) -> dict[str, int]:
    """A kernel's stride_<name>_row / stride_<name>_col arguments for a 2-D tensor, 0 where it is None."""
    row, col = (0, 0) if tensor is None else tensor.stride()
    return {f"stride_{name}_row": row, f"stride_{name}_col": col}
