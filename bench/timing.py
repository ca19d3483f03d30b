"""What the bench scripts share (they import it from beside themselves): the timer, provenance (the
commit, the machine, versions), the Zipf sampler of their sparse targets, the peak-memory probe, and the
tqdm import with its fallback.

`sample_ms` times only the call under test: an optional untimed `setup` runs before each sample (the
forward whose backward is timed, clearing .grad), and on CUDA a 256 MiB buffer is zeroed between samples
so that no sample starts with its operands in L2, as triton's do_bench does. It takes at least
`min_samples` samples (the 20/80 quantiles need some) and more while the samples total less than
`target_ms`, up to `max_samples`.

`peak_extra_bytes` measures the most a call holds at once beyond what existed when it started: on CUDA
torch.cuda.max_memory_allocated; on a CPU the process's peak resident set (VmHWM, reset through
/proc/self/clear_refs before the call, after malloc_trim has handed back the free pages earlier calls left)
above its resident set at the start. On a CPU call `fix_malloc_thresholds` first (malloc's mmap threshold
fixed at 64 KiB, so that tensors freed within the call leave the resident set instead of being reused
unseen); it makes every allocation map and fault in fresh pages, so keep it out of processes that time.
"""

import ctypes
import datetime
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import triton
from torch import Tensor

from softmargin_triton.xmc.synthetic import zipf_label_sets

try:
    from tqdm import tqdm
except ImportError:  # the GPU machines' image has pandas, matplotlib and pytest, maybe not tqdm
    from shim.tqdm import tqdm  # bench/shim/tqdm.py: a few progress lines instead of a bar

QUANTILES = (0.5, 0.2, 0.8)
REPO = Path(__file__).resolve().parents[1]

__all__ = [
    "QUANTILES",
    "cpu_model",
    "device_name",
    "environment",
    "fix_malloc_thresholds",
    "git_commit",
    "held_bytes",
    "log",
    "peak_extra_bytes",
    "sample_ms",
    "tqdm",
    "zipf_padded",
]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def git_commit() -> str:
    """The checkout's short commit; GIT_COMMIT where the tree is a copy without .git (a GPU machine's)."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_model() -> str:
    """The CPU's model name and core count (no host name)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        name = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        name = "unknown CPU"
    return f"{name}, {os.cpu_count()} cores"


def zipf_padded(counts: Tensor, num_labels: int, generator: torch.Generator | None = None) -> Tensor:
    """Sparse targets as XMC data has them: (B, max(counts) or 1) int64 label ids padded with -1, row i
    holding min(counts[i], L) distinct labels drawn from Zipf(1) frequencies over the ids (label 0 the most
    frequent) by the package's sampler, `softmargin_triton.xmc.synthetic.zipf_label_sets`. counts (B,) and
    `generator` on the CPU (None: the global generator); `SparseTargets.from_padded(padded, L)` makes the
    target."""
    rows, labels = zipf_label_sets(counts, num_labels, generator=generator)
    per_row = torch.bincount(rows, minlength=counts.numel())
    width = max(int(per_row.max()) if counts.numel() else 0, 1)
    padded = torch.full((counts.numel(), width), -1, dtype=torch.int64)
    starts = per_row.cumsum(0) - per_row
    padded[rows, torch.arange(rows.numel()) - starts[rows]] = labels
    return padded


def environment() -> dict[str, str]:
    """The machine, versions, commit and time every result row carries."""
    import softmargin_triton as st

    cuda = torch.cuda.is_available()
    return {
        "gpu_name": torch.cuda.get_device_name() if cuda else "cpu",
        "torch_version": torch.__version__,
        "triton_version": triton.__version__,
        "package_version": st.__version__,
        "git_commit": git_commit(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _quantiles(samples: list[float]) -> tuple[float, float, float]:
    """(median, 20th, 80th percentile) of the samples."""
    if len(samples) == 1:
        return samples[0], samples[0], samples[0]
    q = statistics.quantiles(samples, n=10, method="inclusive")
    return statistics.median(samples), q[1], q[7]


def sample_ms(
    fn: Callable[[], object],
    device: str,
    setup: Callable[[], object] | None = None,
    min_samples: int = 10,
    target_ms: float = 100.0,
    max_samples: int = 200,
) -> tuple[float, float, float]:
    """Median, 20th and 80th percentile of fn's time in ms, setup excluded; fn has run once before (the
    caller's warm-up: compilation and autotuning stay out of the samples)."""
    setup = setup or (lambda: None)
    if device != "cuda":
        samples = []
        while len(samples) < min_samples or (sum(samples) < target_ms and len(samples) < max_samples):
            setup()
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1e3)
        return _quantiles(samples)
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    # Estimate from two samples how many fit in target_ms.
    estimate = []
    for _ in range(2):
        setup()
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        estimate.append(start.elapsed_time(end))
    count = min(max_samples, max(min_samples, int(target_ms / max(min(estimate), 1e-3))))
    events = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(count)
    ]
    for start, end in events:
        setup()
        flush.zero_()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return _quantiles([start.elapsed_time(end) for start, end in events])


def device_name(device: str) -> str:
    """cpu, or the GPU's name as bench/unpack.py spells it: 'NVIDIA H200' → 'h200'."""
    if device != "cuda":
        return "cpu"
    name = re.sub(r"^nvidia\s+", "", torch.cuda.get_device_name(), flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def fix_malloc_thresholds() -> None:
    """Freed tensors of 64 KiB and more go back to the system at once (glibc), so that a call's peak
    resident set counts its own allocations, not pages an earlier call freed and this one reused."""
    libc = ctypes.CDLL("libc.so.6")
    if not (libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024) and libc.mallopt(_M_TRIM_THRESHOLD, 64 * 1024)):
        raise RuntimeError("mallopt refused the thresholds: CPU peak memory would be unreliable")


def _status_bytes(field: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1]) * 1024  # kB


def held_bytes(device: str) -> int:
    """What the process holds now: on CUDA the allocator's allocated bytes; on a CPU the resident set after
    malloc_trim has handed back the free pages."""
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return _status_bytes("VmRSS:")


def peak_extra_bytes(fn: Callable[[], object], device: str) -> int:
    """The most `fn` holds at once beyond what existed when it started (see the module docstring)."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = held_bytes(device)
    if device != "cuda":
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM restarts from the current resident set
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    return _status_bytes("VmHWM:") - base


def log(message: str) -> None:
    """A line on stderr, flushed: what a cut-off run's log shows of where it stood."""
    print(message, file=sys.stderr, flush=True)
