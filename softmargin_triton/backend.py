"""Which implementation serves a call: the Triton kernels or the plain-torch reference.

Chosen per call, in this order: the innermost `use_backend(...)` block, else the environment variable
SOFTMARGIN_TRITON_BACKEND (read at call time), else "auto".

- "auto":   Triton for CUDA tensors when triton imports; the torch reference otherwise.
- "torch":  the torch reference everywhere.
- "triton": the Triton kernels; on CPU tensors they run under Triton's interpreter (TRITON_INTERPRET=1
            set before triton is imported), otherwise the call raises.
Under torch.compile the choice is read while tracing and baked into the compiled graph.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch

__all__ = ["BACKEND_ENV_VAR", "Backend", "current_backend", "use_backend"]

Backend = Literal["auto", "torch", "triton"]
BACKEND_ENV_VAR = "SOFTMARGIN_TRITON_BACKEND"
_BACKENDS = ("auto", "torch", "triton")

try:
    import triton  # noqa: F401

    from softmargin_triton.kernels import sigmoid_bce as _kernel_math
    from softmargin_triton.kernels import soft_margin as _kernels

    TRITON_IMPORT_ERROR: Exception | None = None
    # Fixed when triton decorates the kernels (TRITON_INTERPRET=1 at import selects its CPU interpreter).
    TRITON_INTERPRETED = bool(_kernel_math.INTERPRETED)
except ImportError as error:  # e.g. a platform without triton wheels: the torch reference still works
    _kernels = None
    TRITON_IMPORT_ERROR = error
    TRITON_INTERPRETED = False

# Innermost active `use_backend` choice; process-wide, like the environment variable it overrides.
_override_stack: list[str] = []


def _validated(name: str, source: str) -> str:
    if name not in _BACKENDS:
        raise ValueError(f"{source} must be one of {', '.join(map(repr, _BACKENDS))}; got {name!r}")
    return name


@contextmanager
def use_backend(name: Backend) -> Iterator[None]:
    """Run the enclosed calls on backend `name` ("auto", "torch" or "triton"), overriding the variable."""
    _override_stack.append(_validated(name, "use_backend(name)"))
    try:
        yield
    finally:
        _override_stack.pop()


def current_backend() -> str:
    """The backend a call made now would be routed by: "auto", "torch" or "triton"."""
    if _override_stack:
        return _override_stack[-1]
    return _validated(os.environ.get(BACKEND_ENV_VAR, "auto").strip().lower() or "auto", BACKEND_ENV_VAR)


def use_triton_for(input: torch.Tensor) -> bool:
    """Whether a call on `input`'s device runs the Triton kernels under the current backend; raises if the
    backend is forced to "triton" where the kernels cannot run."""
    backend = current_backend()
    if backend == "torch":
        return False
    if backend == "auto":
        return input.is_cuda and _kernels is not None and not TRITON_INTERPRETED
    if _kernels is None:
        raise RuntimeError(
            f"backend 'triton' was requested but triton does not import: {TRITON_IMPORT_ERROR}"
        )
    if input.is_cuda and not TRITON_INTERPRETED:
        return True
    if input.device.type == "cpu" and TRITON_INTERPRETED:
        return True
    raise RuntimeError(
        f"backend 'triton' cannot run on {input.device.type} tensors in this process: the kernels run on "
        "CUDA tensors, or on CPU tensors under Triton's interpreter (set TRITON_INTERPRET=1 before importing "
        "triton); use backend 'torch' or 'auto' for the plain-torch path"
    )
