"""Shared test setup: where the kernels run, NaN-poisoned allocations, per-dtype comparison.

Without CUDA the Triton kernels run on CPU under Triton's interpreter, which must be switched on before
triton is first imported; with CUDA they run compiled, and every test tensor lives on the GPU.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

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


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: none is visible to torch on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
