"""Benchmark sweeps of the fused losses against PyTorch: long-format CSVs, one row per measurement.

    python bench/sweep.py [--out DIR] [--sweeps dense batch sparse linear] [--dtypes ...] [--targets ...]
        [--batch B] [--labels ...] [--batches ...] [--batch-sweep-labels L] [--providers ...] ...

dense:  multilabel_soft_margin_loss over a dense (B, L) target against L, per logits and target dtype.
batch:  the same against B, at one L.
sparse: the same loss with Zipf-distributed positive labels (~5.45 per row, as Amazon-670K): ours with
        SparseTargets, against ours and torch's losses on the dense equivalent.
linear: linear_multilabel_soft_margin_loss (sparse targets) against eager and compiled F.linear + MLSM,
        our chunked plain-torch loop and, on CUDA only, design (a) of DESIGN.md, one tiled kernel with
        fp32 atomics (bench/linear_tiled.py, "softmargin-triton-tiled"), per (B, D), with the 3-GEMM floor
        of bench/ceilings.py where given, else at the rate of one GEMM measured here.
variants: the losses and options of issue 18 at one dense shape, each against its published formula in
        eager torch, written here as a user writes it (and its torch.compile, by default on CUDA only):
        sigmoid_focal_loss vs torchvision's formula ("focal"), asymmetric_loss vs the ASL authors'
        reference ("asl"), MLSM with label_smoothing=0.1 vs torch's MLSM on the target smoothed inside
        the timed call ("smoothing"), MLSM with ignore_value=-1 on an int8 {-1, 0, 1} target vs the masked
        formula ("partial"). Providers softmargin-triton-<variant>, torch-<variant>,
        torch-<variant>-compile; extra_config names the variant and its parameters.

Defaults on a CUDA machine: dense at B=4096, L = 2^10 … 2^20 and batch at L=131072, B = 2^8 … 2^14, both
with bf16, fp16 and fp32 logits and fp32, bf16 and uint8 targets against all five providers; sparse and
linear with bf16 logits at L ∈ {131072, 670091, 2^21} (linear at B ∈ {1024, 8192}, D ∈ {256, 768});
variants with bf16 logits at B=4096, L=131072. On CPU a small sweep of the CPU paths in about a minute:
fp32 logits, fp32 and uint8 targets, dense at B=64 and L up to 2^14, batch at L=4096 and B ∈ {16, 64,
256}; variants only on request (--sweeps variants: B=64, L=4096, ~25 s on 2 cores), without the compiled
providers (inductor builds C++ for minutes on a CPU).

A target dtype names the dense target's own dtype: "fp32" is the float target whatever the logits' dtype.
Torch's losses take floating targets only, so they get a uint8 target in the logits' dtype (converted
outside the timed region); min_bytes_per_element counts the target's own dtype for every provider, the
fused minimum of the problem.

Every case is timed fwd+bwd ('full' mode); forward and backward are also timed alone only at
--breakdown-dtypes (default: bf16, the first logits dtype, in the sweeps over L; none in the batch sweep).
Each is timed by itself (bench/timing.py's sample_ms): the backward alone after an untimed fresh forward
each sample, not as fwd+bwd minus forward. A measurement takes --samples timed calls at least (default
10), more while they total under 100 ms, L2 flushed before each on CUDA; the first call (compilation,
autotuning) is never timed. For a single call on a lent GPU machine, bench/gpu_session.sh picks the
headline cases and runs the wider sweeps only while its budget lasts (bench/README.md: the steps and their
estimates). torch.compile runs with its defaults: each function's first shape is compiled static, the later
ones dynamic in the swept dimension (automatic dynamic shapes).

--ceilings CSV (bench/ceilings.py) takes the copy bandwidth and the 3-GEMM floor from there, measured in
the same run, instead of measuring them here; --append keeps the rows already in each sweep's CSV (the GPU
session's wider sweeps add dtypes to one CSV); --profile records, on CUDA, the device time of each kernel
of our fwd+bwd by torch's profiler (metric kernel_time, column device_kernel): what bench/report.py puts
beside the static model's predicted bound.

Each sweep writes <sweep>_sweep.csv, rewritten every 2 s while it runs (a run cut off keeps what it
measured): kernel, provider, mode, metric, unit, x_name ("labels", or "batch" in the batch sweep),
x_value, y_50, y_20, y_80, extra_config (JSON of the fixed parameters: B or L, dtype, target_dtype,
reduction, min_bytes_per_element, ...), error, copy_bandwidth_gbs, ours_path (what the softmargin-triton
rows ran: the Triton kernels, or on a CPU the plain-torch fallback), and the machine, versions, commit and
time. Plot with bench/plot.py.
"""

import argparse
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path

try:
    import pandas as pd
except ImportError as error:
    raise ImportError(
        f"bench/ needs {error.name or error}, which the package's core install leaves out: "
        'pip install -e ".[bench]"'
    ) from error
import torch
import torch.nn.functional as F
from linear_tiled import tiled_linear_multilabel_soft_margin_loss  # bench/linear_tiled.py, beside this
from timing import environment, log, sample_ms, tqdm, zipf_padded  # bench/timing.py, beside this

import softmargin_triton as st
from softmargin_triton.backend import use_triton_for

# The compiled providers get a graph per (logits dtype, target dtype, shape regime: static, dynamic L,
# dynamic B), up to 3 · 4 · 3 per function, past Dynamo's default limit of 8 (meant for runaway recompiles
# in training). Past the limit Dynamo raises, an error row, instead of silently running eager as "compile".
torch._dynamo.config.recompile_limit = 64
torch._dynamo.config.fail_on_recompile_limit_hit = True

PROVIDERS: dict[str, Callable] = {
    "softmargin-triton": st.multilabel_soft_margin_loss,
    "torch-mlsm": F.multilabel_soft_margin_loss,
    "torch-bce": F.binary_cross_entropy_with_logits,
    "torch-mlsm-compile": torch.compile(F.multilabel_soft_margin_loss),
    "torch-bce-compile": torch.compile(F.binary_cross_entropy_with_logits),
}
SWEEPS = ("dense", "batch", "sparse", "linear", "variants")
CPU_SWEEPS = SWEEPS[:4]  # the default on a CPU: variants would add ~25 s to the minute (2 cores), on request
SPARSE_DEFAULT_PROVIDERS = ["softmargin-triton", "torch-mlsm", "torch-bce"]
MODES = ("forward", "backward", "full")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "uint8": torch.uint8}
LOGITS_DTYPES = ("bf16", "fp16", "fp32")
POSITIVES_PER_ROW = 5.45  # Amazon-670K's average
MIN_SAMPLES = [10]  # samples per measurement at least (--samples), more while they total < 100 ms


# ---------------------------------------------------------------------------------------------------------
# The variants sweep: issue 18's losses and options against their published formulas in eager torch
# ---------------------------------------------------------------------------------------------------------


def torch_sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
    """torchvision.ops.sigmoid_focal_loss's formula (torchvision does not import beside the CPU torch build:
    DESIGN.md)."""
    p = torch.sigmoid(inputs)
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


def torch_asymmetric_loss(
    x, y, gamma_neg=4, gamma_pos=1, clip=0.05, eps=1e-8, disable_torch_grad_focal_loss=True, reduction="sum"
):
    """The ASL authors' AsymmetricLoss.forward (Alibaba-MIIL/ASL, src/loss_functions/losses.py); its -sum is
    reduction 'sum'."""
    xs_pos = torch.sigmoid(x)
    xs_neg = 1 - xs_pos
    if clip is not None and clip > 0:
        xs_neg = (xs_neg + clip).clamp(max=1)
    loss = y * torch.log(xs_pos.clamp(min=eps)) + (1 - y) * torch.log(xs_neg.clamp(min=eps))
    if gamma_neg > 0 or gamma_pos > 0:
        with torch.set_grad_enabled(not disable_torch_grad_focal_loss):
            pt = xs_pos * y + xs_neg * (1 - y)
            weight = torch.pow(1 - pt, gamma_pos * y + gamma_neg * (1 - y))
        loss = loss * weight
    loss = -loss
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


def torch_smoothed_mlsm(input, target, label_smoothing=0.1, reduction="mean"):
    """torch's MLSM on the target smoothed as label_smoothing defines it, y·(1 − ε) + ε/2."""
    smoothed = target * (1 - label_smoothing) + label_smoothing / 2
    return F.multilabel_soft_margin_loss(input, smoothed, reduction=reduction)


def torch_masked_mlsm(input, target, ignore_value=-1, reduction="mean"):
    """MLSM over the known labels (target != ignore_value), each row divided by its number of known
    labels, 'mean' over the rows with at least one: what ignore_value means (tests/test_label_options.py)."""
    known = target != ignore_value
    y = torch.where(known, target, 0).to(input.dtype)
    x = torch.where(known, input, 0.0)
    terms = torch.where(known, -(y * F.logsigmoid(x) + (1 - y) * F.logsigmoid(-x)), 0.0)
    counts = known.sum(-1)
    per_row = torch.where(counts > 0, terms.sum(-1) / counts.clamp(min=1), 0.0)
    return {"none": per_row, "sum": per_row.sum(), "mean": per_row.sum() / (counts > 0).sum()}[reduction]


# variant → (the kernel column, its parameters, ours, torch's eager formula, our target: "binary" is the
# uint8 {0, 1} target, "partial" the int8 {-1, 0, 1} one; torch's formulas take the binary target in the
# logits' dtype, converted outside the timed region as in the dense sweep, and the partial one as it is)
VARIANTS: dict[str, tuple[str, dict, Callable, Callable, str]] = {
    "focal": (
        "sigmoid_focal_loss",
        {"alpha": 0.25, "gamma": 2.0, "reduction": "mean"},
        st.sigmoid_focal_loss,
        torch_sigmoid_focal_loss,
        "binary",
    ),
    "asl": (
        "asymmetric_loss",
        {"gamma_neg": 4, "gamma_pos": 1, "clip": 0.05, "eps": 1e-8, "disable_torch_grad_focal_loss": True}
        | {"reduction": "sum"},
        st.asymmetric_loss,
        torch_asymmetric_loss,
        "binary",
    ),
    "smoothing": (
        "multilabel_soft_margin_loss",
        {"label_smoothing": 0.1, "reduction": "mean"},
        st.multilabel_soft_margin_loss,
        torch_smoothed_mlsm,
        "binary",
    ),
    "partial": (
        "multilabel_soft_margin_loss",
        {"ignore_value": -1, "reduction": "mean"},
        st.multilabel_soft_margin_loss,
        torch_masked_mlsm,
        "partial",
    ),
}
UNKNOWN_FRACTION = 0.5  # of the partial target's labels are -1; the known ones hold 1% positives


def _bound(loss: Callable, params: dict) -> Callable:
    """loss(input, target) with the variant's parameters: constants to torch.compile, not graph inputs."""

    def call(input, target):
        return loss(input, target, **params)

    return call


def _variant_providers() -> dict[str, tuple[str, Callable]]:
    """provider → (variant, its call): softmargin-triton-<variant>, torch-<variant> and
    torch-<variant>-compile."""
    providers = {}
    for variant, (_, params, ours, eager, _) in VARIANTS.items():
        providers[f"softmargin-triton-{variant}"] = (variant, _bound(ours, params))
        providers[f"torch-{variant}"] = (variant, _bound(eager, params))
        providers[f"torch-{variant}-compile"] = (variant, torch.compile(_bound(eager, params)))
    return providers


VARIANT_PROVIDERS = _variant_providers()


def copy_bandwidth_gbs(device: str) -> float:
    """Device-to-device copy rate, bytes read plus written, in GB/s: the roofline for a memory-bound loss
    (bench/ceilings.py measures it over a larger buffer; --ceilings takes that one)."""
    src = torch.empty(256 * 2**20 if device == "cuda" else 32 * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    ms, _, _ = sample_ms(lambda: dst.copy_(src), device)
    return 2 * src.numel() / ms / 1e6


def zipf_targets(batch: int, labels: int, device: str) -> st.SparseTargets:
    """Poisson(5.45) distinct positives per row from Zipf(1) label frequencies (bench/timing.py's sampler)."""
    counts = torch.poisson(torch.full((batch,), POSITIVES_PER_ROW)).long()
    return st.SparseTargets.from_padded(zipf_padded(counts, labels).to(device), labels)


def ours_path(device: str) -> str:
    """What the softmargin-triton rows measure on `device` under the current backend (the ours_path column):
    the Triton kernels, compiled or under Triton's CPU interpreter, or the plain-torch fallback."""
    if not use_triton_for(torch.empty(0, device=device)):
        return "plain-torch fallback"
    return "Triton kernels (CPU interpreter)" if device == "cpu" else "Triton kernels"


def target_bytes(target: torch.Tensor | st.SparseTargets) -> int:
    if isinstance(target, st.SparseTargets):
        return target.indptr.nbytes + target.indices.nbytes
    return target.nbytes


def kernel_times(fn: Callable[[], object], setup: Callable[[], object], calls: int = 3) -> dict:
    """CUDA kernels launched by `calls` calls of fn, by torch's profiler: name → (ms of device time per
    call, launches per call). What the static model (bench/kernel_resources.py) predicts is one kernel's
    time, which fwd+bwd wall time does not isolate."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as profiler:
        for _ in range(calls):
            setup()
            fn()
        torch.cuda.synchronize()
    times = {}
    for event in profiler.key_averages():
        device_us = getattr(event, "self_device_time_total", None)
        if device_us is None:  # torch < 2.4 names it after CUDA
            device_us = getattr(event, "self_cuda_time_total", 0)
        if device_us > 0:
            times[event.key[:200]] = (device_us / 1e3 / calls, event.count / calls)
    return times


def measure(
    forward: Callable[[], torch.Tensor],
    leaves: list[torch.Tensor],
    mode: str,
    device: str,
    profile: bool = False,
):
    """(time quantiles in ms, peak extra memory in bytes or None, kernel times or None) of one loss on one
    problem; `leaves` are the tensors that receive gradients.

    'full' times forward + backward, 'forward' the forward alone, 'backward' the backward alone: each
    sample runs a fresh forward first, untimed (our backward scales the forward's saved gradient in place,
    and compiled graphs donate their buffers, so no backward can be repeated over one graph)."""

    def clear_grads():
        for leaf in leaves:
            leaf.grad = None  # a fresh .grad each step, as after optimizer.zero_grad(): no accumulation

    pending = []

    def forward_for_backward():
        clear_grads()
        pending[:] = [forward()]

    def backward():
        pending.pop().backward()

    def full():
        forward().backward()

    fn, setup = {
        "full": (full, clear_grads),
        "forward": (forward, clear_grads),
        "backward": (backward, forward_for_backward),
    }[mode]
    forward().backward()  # compile and autotune outside the timed region
    clear_grads()
    peak = None
    if device == "cuda":
        torch.cuda.synchronize()
        setup()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    times = sample_ms(fn, device, setup, min_samples=MIN_SAMPLES[0])
    kernels = None
    if profile and device == "cuda":
        try:
            kernels = kernel_times(fn, setup)
        except Exception as error:  # the profiler is evidence, not a requirement
            log(f"profiler failed: {type(error).__name__}: {error}")
    clear_grads()
    return times, peak, kernels


def cases(sweep: str, targets: list[str], providers: list[str], dtype: str) -> list[tuple[str, str]]:
    """(target, provider) pairs of a sweep. Sparse sweep: ours on SparseTargets and on each dense target
    dtype, torch's losses on the dense target in the logits' dtype (they take float targets only)."""
    if sweep != "sparse":
        return [(target, provider) for target in targets for provider in providers]
    ours = "softmargin-triton"
    pairs = [("sparse", ours), *((target, ours) for target in targets)] if ours in providers else []
    return pairs + [(dtype, provider) for provider in providers if provider != ours]


def result_rows(row: dict, measured: tuple, rates: dict[str, tuple[str, float]]) -> list[dict]:
    """Rows of one measurement: time, peak memory (CUDA), each kernel's device time where profiled, and in
    'full' mode each rate, metric → (unit, amount of work per ms), its 20th/80th percentiles from the
    80th/20th of the time."""
    (t50, t20, t80), peak, kernels = measured
    rows = [{**row, "metric": "time", "unit": "ms", "y_50": t50, "y_20": t20, "y_80": t80}]
    if peak is not None:
        rows.append({**row, "metric": "memory", "unit": "MB", "y_50": peak / 2**20})
    for name, (ms, launches) in (kernels or {}).items():
        rows.append(
            {
                **row,
                "metric": "kernel_time",
                "unit": "ms",
                "y_50": ms,
                "device_kernel": name,
                "launches": launches,
            }
        )
    if row["mode"] == "full":
        rows += [
            {
                **row,
                "metric": metric,
                "unit": unit,
                "y_50": work / t50,
                "y_20": work / t80,
                "y_80": work / t20,
            }
            for metric, (unit, work) in rates.items()
        ]
    return rows


def copy_rates(batch: int, labels: int, element_bytes: int, copy_gbs: float) -> dict[str, tuple[str, float]]:
    """The rates of a memory-bound loss: its fused minimum of bytes per ms as GB/s and as % of the copy
    bandwidth."""
    gb_per_ms = batch * labels * element_bytes / 1e6
    return {"bandwidth": ("GB/s", gb_per_ms), "roofline": ("% copy", 100 * gb_per_ms / copy_gbs)}


def timed_rows(
    row: dict, forward: Callable, leaves: list[torch.Tensor], device: str, args, rates: dict, extra=()
) -> list[dict]:
    """The rows of one measurement (`extra` added in 'full' mode), or its error row: the sweep goes on."""
    try:
        rows = result_rows(row, measure(forward, leaves, row["mode"], device, profiled(row, args)), rates)
        return rows + list(extra) if row["mode"] == "full" else rows
    except Exception as error:
        for leaf in leaves:
            leaf.grad = None
        return [error_row(row, error, device)]


def problem_sizes(
    sweep: str, args: argparse.Namespace, device: str
) -> tuple[str, list[tuple[int, int, int]]]:
    """(x_name, [(x_value, B, L)]) of a sweep of the dense loss: over B for the batch sweep, else over L."""
    if sweep == "batch":
        return "batch", [(batch, batch, args.batch_sweep_labels) for batch in args.batches]
    return "labels", [(labels, args.batch, labels) for labels in args.labels or default_labels(sweep, device)]


def dtype_modes(sweep: str, args: argparse.Namespace, device: str) -> list[tuple[str, tuple[str, ...]]]:
    """(logits dtype, modes timed) of a sweep: fwd+bwd everywhere, forward and backward as well at the
    breakdown dtypes (default: the first logits dtype of each sweep over L; none for the batch sweep)."""
    dtypes = args.dtypes or default_dtypes(sweep, device)
    if args.breakdown_dtypes is not None:
        breakdown = args.breakdown_dtypes
    else:
        breakdown = [] if sweep == "batch" else dtypes[:1]
    return [(dtype, MODES if dtype in breakdown else ("full",)) for dtype in dtypes]


def error_row(row: dict, error: Exception, device: str) -> dict:
    """An OOM or a compile failure, recorded so that the sweep goes on."""
    if device == "cuda":
        torch.cuda.empty_cache()
    return {**row, "metric": "error", "unit": "", "error": f"{type(error).__name__}: {error}"[:300]}


class Sink:
    """A sweep's rows, rewritten to its CSV at least every 2 s while cases finish and at the end: a run cut
    off by a timeout keeps all but its last seconds. With append=True the rows already in the CSV stay in
    front of the new ones."""

    def __init__(self, path: Path, append: bool):
        self.path = path
        self.before = pd.read_csv(path, dtype={"git_commit": str}) if append and path.exists() else None
        self.rows: list[dict] = []
        self.written = 0.0

    def add(self, rows: list[dict]) -> None:
        self.rows += rows
        if time.monotonic() - self.written >= 2.0:
            self.write()

    def write(self) -> None:
        self.written = time.monotonic()
        if not self.rows:
            return
        frame = pd.DataFrame(self.rows)
        if self.before is not None:
            frame = pd.concat([self.before, frame], ignore_index=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(self.path, index=False)


def profiled(row: dict, args) -> bool:
    """Kernel times by the profiler: ours, fwd+bwd, where asked for (on CUDA only, in measure)."""
    return args.profile and row["mode"] == "full" and row["provider"].startswith("softmargin-triton")


def run_sweep(sweep: str, args, device: str, common: dict, sink: Sink) -> int:
    """The dense (over L), batch (over B) or sparse sweep into the sink; returns the number of cases."""
    default = SPARSE_DEFAULT_PROVIDERS if sweep == "sparse" else list(PROVIDERS)
    providers = [p for p in args.providers if p in PROVIDERS] if args.providers else default
    kernel = (
        "multilabel_soft_margin_loss_sparse" if sweep == "sparse" else "multilabel_soft_margin_loss_dense"
    )
    x_name, sizes = problem_sizes(sweep, args, device)
    dtypes = dtype_modes(sweep, args, device)
    pairs = {dtype: cases(sweep, args.targets, providers, dtype) for dtype, _ in dtypes}
    total = sum(len(sizes) * len(pairs[dtype]) * len(modes) for dtype, modes in dtypes)
    progress = tqdm(total=total, desc=f"{sweep} sweep", unit="case")
    copy_gbs = common["copy_bandwidth_gbs"]
    for dtype_name, modes in dtypes:
        dtype = DTYPES[dtype_name]
        for x_value, batch, labels in sizes:
            x = torch.randn(batch, labels, device=device, dtype=dtype).requires_grad_(True)
            sparse = zipf_targets(batch, labels, device) if sweep == "sparse" else None
            if sparse is None:
                binary = torch.rand(batch, labels, device=device) < 0.01
            else:
                binary = sparse.to_dense(torch.bool)
            for target_name, provider in pairs[dtype_name]:
                if target_name == "sparse":
                    target = sparse
                else:
                    # torch's losses take float targets only; the conversion happens outside the timed region
                    torch_target = provider.startswith("torch") and target_name == "uint8"
                    target = binary.to(dtype if torch_target else DTYPES[target_name])
                # Fused minimum: read the logits and the target once, write the gradient once; for the sparse
                # sweep's problem the positives are the target, O(nnz) bytes, whatever a provider is given.
                target_element_bytes = 0 if sweep == "sparse" else DTYPES[target_name].itemsize
                element_bytes = 2 * dtype.itemsize + target_element_bytes
                config = {
                    **({"labels": labels} if x_name == "batch" else {"batch": batch}),
                    "dtype": dtype_name,
                    "target_dtype": target_name,
                    "reduction": "mean",
                    "min_bytes_per_element": element_bytes,
                }
                if sparse is not None:
                    config["positives_per_row"] = sparse.nnz / batch
                rates = copy_rates(batch, labels, element_bytes, copy_gbs)
                target_mb = target_bytes(target) / 2**20
                for mode in modes:
                    row = {
                        **common,
                        "kernel": kernel,
                        "provider": provider,
                        "mode": mode,
                        "x_name": x_name,
                        "x_value": x_value,
                        "extra_config": json.dumps(config),
                    }
                    forward = functools.partial(PROVIDERS[provider], x, target)
                    target_row = {**row, "metric": "target_memory", "unit": "MB", "y_50": target_mb}
                    sink.add(timed_rows(row, forward, [x], device, args, rates, [target_row]))
                    progress.update()
                del target
            del x, sparse, binary
    progress.close()
    return total


def variant_targets(batch: int, labels: int, device: str) -> dict[str, torch.Tensor]:
    """The variants' targets: "binary", bool with the dense sweep's 1% positives, and "partial", int8 with
    UNKNOWN_FRACTION of the labels -1 (unknown) and the others 0 or 1 as in "binary"."""
    binary = torch.rand(batch, labels, device=device) < 0.01
    unknown = torch.rand(batch, labels, device=device) < UNKNOWN_FRACTION
    return {"binary": binary, "partial": binary.to(torch.int8).masked_fill_(unknown, -1)}


def run_variants_sweep(args, device: str, common: dict, sink: Sink) -> int:
    """Each variant of VARIANTS, ours against torch's eager formula (and its torch.compile), at each
    (B, L) of problem_sizes: the dense sweep's measurements and rates (bytes: the logits read, the 1-byte
    target read, the gradient written)."""
    default = [p for p in VARIANT_PROVIDERS if device == "cuda" or not p.endswith("-compile")]
    providers = [p for p in args.providers if p in VARIANT_PROVIDERS] if args.providers else default
    x_name, sizes = problem_sizes("variants", args, device)
    dtypes = dtype_modes("variants", args, device)
    total = sum(len(sizes) * len(providers) * len(modes) for _, modes in dtypes)
    progress = tqdm(total=total, desc="variants sweep", unit="case")
    for dtype_name, modes in dtypes:
        dtype = DTYPES[dtype_name]
        for x_value, batch, labels in sizes:
            x = torch.randn(batch, labels, device=device, dtype=dtype).requires_grad_(True)
            targets = variant_targets(batch, labels, device)
            element_bytes = 2 * dtype.itemsize + 1  # both targets hold one byte an element
            rates = copy_rates(batch, labels, element_bytes, common["copy_bandwidth_gbs"])
            for provider in providers:
                variant, loss = VARIANT_PROVIDERS[provider]
                kernel, params, _, _, kind = VARIANTS[variant]
                if kind == "partial":
                    target, target_name = targets["partial"], "int8"
                elif provider.startswith("torch"):  # a float target, converted outside the timed region
                    target, target_name = targets["binary"].to(dtype), dtype_name
                else:
                    target, target_name = targets["binary"].to(torch.uint8), "uint8"
                config = {
                    "batch": batch,
                    "dtype": dtype_name,
                    "target_dtype": target_name,
                    "variant": variant,
                    "parameters": {k: v for k, v in params.items() if k != "reduction"},
                    "reduction": params["reduction"],
                    "min_bytes_per_element": element_bytes,
                    **({"unknown_fraction": UNKNOWN_FRACTION} if kind == "partial" else {}),
                }
                target_row = {"metric": "target_memory", "unit": "MB", "y_50": target.nbytes / 2**20}
                for mode in modes:
                    row = {
                        **common,
                        "kernel": kernel,
                        "provider": provider,
                        "mode": mode,
                        "x_name": x_name,
                        "x_value": x_value,
                        "extra_config": json.dumps(config),
                    }
                    forward = functools.partial(loss, x, target)
                    sink.add(timed_rows(row, forward, [x], device, args, rates, [{**row, **target_row}]))
                    progress.update()
                del target
            del x, targets
    progress.close()
    return total


def _torch_linear_mlsm(input, weight, target):
    return F.multilabel_soft_margin_loss(F.linear(input, weight), target)


def _chunked_torch_loop(input, weight, target):
    with st.use_backend("torch"):  # our label-chunked fallback: plain torch, never the B×L logits
        return st.linear_multilabel_soft_margin_loss(input, weight, target)


# Fused linear + loss providers; torch's take the dense target, ours and the chunked loop SparseTargets.
LINEAR_PROVIDERS: dict[str, Callable] = {
    "softmargin-triton": st.linear_multilabel_soft_margin_loss,
    "torch-chunked": _chunked_torch_loop,
    "torch-linear-mlsm": _torch_linear_mlsm,
    "torch-linear-mlsm-compile": torch.compile(_torch_linear_mlsm),
}
if torch.cuda.is_available():  # design (a), the comparison point of issue 4; its kernel runs on CUDA only
    LINEAR_PROVIDERS["softmargin-triton-tiled"] = tiled_linear_multilabel_soft_margin_loss


def gemm_tflops(batch: int, dim: int, dtype: torch.dtype, device: str) -> float:
    """Measured rate of a (batch, dim) × (dim, 16384) GEMM in TFLOP/s: the roofline of the linear loss
    where bench/ceilings.py did not measure the 3-GEMM floor at this (B, D)."""
    a = torch.randn(batch, dim, device=device, dtype=dtype)
    b = torch.randn(dim, 16384, device=device, dtype=dtype)
    a @ b
    ms, _, _ = sample_ms(lambda: a @ b, device)
    return 2 * batch * dim * 16384 / ms / 1e9


def floor_rate(ceilings: pd.DataFrame | None, batch: int, dim: int, labels: int, dtype: str) -> tuple | None:
    """(TFLOP/s, where from) of the 3-GEMM floor measured by bench/ceilings.py at this (B, D, dtype):
    at this L if it was measured there, else at the largest L measured; None if none matches."""
    if ceilings is None:
        return None
    rows = ceilings[(ceilings["metric"] == "gemm_3_floor") & (ceilings["kernel"] == "gemm")]
    config = pd.DataFrame(rows["extra_config"].map(json.loads).tolist(), index=rows.index)
    if rows.empty:
        return None
    match = rows[(config["batch"] == batch) & (config["dim"] == dim) & (config["dtype"] == dtype)]
    if match.empty:
        return None
    at = config.loc[match.index, "labels"]
    chosen = match[at == labels] if (at == labels).any() else match.loc[[at.idxmax()]]
    shape = json.loads(chosen["extra_config"].iloc[0])
    return float(chosen["y_50"].iloc[0]), f"ceilings: 3 GEMMs at B={batch} D={dim} L={shape['labels']}"


def run_linear_sweep(args, device: str, common: dict, sink: Sink, ceilings: pd.DataFrame | None) -> int:
    """Fused linear + MLSM, fwd+bwd over labels, per (batch, dim): time, memory, TFLOP/s and % of the
    3-GEMM floor (6·B·D·L flop at the floor's rate from bench/ceilings.py where it measured this (B, D),
    else at the rate of one GEMM measured here)."""
    labels_list = args.labels or default_labels("linear", device)
    providers = (
        [p for p in args.providers if p in LINEAR_PROVIDERS] if args.providers else list(LINEAR_PROVIDERS)
    )
    shapes = [(batch, dim) for batch in args.linear_batches for dim in args.dims]
    dtypes = dtype_modes("linear", args, device)
    total = sum(len(shapes) * len(labels_list) * len(providers) * len(modes) for _, modes in dtypes)
    progress = tqdm(total=total, desc="linear sweep", unit="case")
    for dtype_name, modes in dtypes:
        dtype = DTYPES[dtype_name]
        for batch, dim in shapes:
            measured_here = None
            for labels in labels_list:
                floor = floor_rate(ceilings, batch, dim, labels, dtype_name)
                if floor is None:
                    measured_here = measured_here or (
                        gemm_tflops(batch, dim, dtype, device),
                        f"one ({batch}, {dim}) x ({dim}, 16384) GEMM",
                    )
                    floor = measured_here
                rate, source = floor
                input = torch.randn(batch, dim, device=device, dtype=dtype).requires_grad_(True)
                weight = torch.randn(labels, dim, device=device, dtype=dtype) / dim**0.5
                weight.requires_grad_(True)
                sparse = zipf_targets(batch, labels, device)
                tflop_per_ms = 6 * batch * dim * labels / 1e9
                rates = {
                    "tflops": ("TFLOP/s", tflop_per_ms),
                    "gemm_roofline": ("% 3-GEMM floor", 100 * tflop_per_ms / rate),
                }
                for provider in providers:
                    dense = provider.startswith("torch-linear")
                    target = sparse.to_dense(dtype) if dense else sparse
                    config = {
                        "batch": batch,
                        "dim": dim,
                        "dtype": dtype_name,
                        "target_dtype": dtype_name if dense else "sparse",
                        "reduction": "mean",
                        "gemm_tflops": rate,
                        "gemm_source": source,
                        "positives_per_row": sparse.nnz / batch,
                    }
                    for mode in modes:
                        row = {
                            **common,
                            "kernel": "linear_multilabel_soft_margin_loss",
                            "provider": provider,
                            "mode": mode,
                            "x_name": "labels",
                            "x_value": labels,
                            "extra_config": json.dumps(config),
                        }
                        forward = functools.partial(LINEAR_PROVIDERS[provider], input, weight, target)
                        sink.add(timed_rows(row, forward, [input, weight], device, args, rates))
                        progress.update()
                    del target
                del input, weight, sparse
    progress.close()
    return total


def default_labels(sweep: str, device: str) -> list[int]:
    if sweep == "variants":  # the dense headline's shape
        return [131072] if device == "cuda" else [4096]
    if device != "cuda":
        return [2**10, 2**12, 2**14]
    return [2**k for k in range(10, 21)] if sweep == "dense" else [131072, 670091, 2**21]


def default_dtypes(sweep: str, device: str) -> list[str]:
    """Logits dtypes: the dense loss's sweeps cover all three on CUDA; CPU runs fp32 only, to stay short."""
    if device != "cuda":
        return ["fp32"]
    return list(LOGITS_DTYPES) if sweep in ("dense", "batch") else ["bf16"]


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("bench-out"), help="folder for the CSVs")
    parser.add_argument(
        "--sweeps",
        nargs="+",
        choices=SWEEPS,
        default=list(SWEEPS) if cuda else list(CPU_SWEEPS),
        help="default: all on CUDA; on a CPU all but variants (%(default)s)",
    )
    parser.add_argument(
        "--batch", type=int, default=4096 if cuda else 64, help="B of the dense, sparse and variants sweeps"
    )
    parser.add_argument(
        "--labels",
        type=int,
        nargs="+",
        help="L of the dense, sparse, linear and variants sweeps (default: per sweep and device)",
    )
    parser.add_argument(
        "--batches",
        type=int,
        nargs="+",
        default=[2**k for k in range(8, 15)] if cuda else [16, 64, 256],
        help="B of the batch sweep",
    )
    parser.add_argument(
        "--batch-sweep-labels", type=int, default=131072 if cuda else 4096, help="L of the batch sweep"
    )
    parser.add_argument(
        "--dtypes",
        nargs="+",
        choices=LOGITS_DTYPES,
        help="logits dtypes (default: CUDA bf16 fp16 fp32 for dense and batch, bf16 for the rest; CPU fp32)",
    )
    parser.add_argument(
        "--breakdown-dtypes",
        nargs="*",
        choices=LOGITS_DTYPES,
        help="logits dtypes at which forward and backward are also timed alone (default: the first dtype of "
        "the sweeps over L, none for the batch sweep)",
    )
    parser.add_argument(
        "--targets",
        nargs="+",
        choices=list(DTYPES),
        default=["fp32", "bf16", "uint8"] if cuda else ["fp32", "uint8"],
        help="dense target dtypes; fp32 is the float target whatever the logits' dtype",
    )
    parser.add_argument(
        "--providers",
        nargs="+",
        choices=sorted(set(PROVIDERS) | set(LINEAR_PROVIDERS) | set(VARIANT_PROVIDERS)),
        help="default: all for the dense, batch and linear sweeps; ours and eager torch for the sparse one; "
        "for the variants all on CUDA, all but the compiled ones on a CPU",
    )
    parser.add_argument(
        "--linear-batches", type=int, nargs="+", default=[1024, 8192] if cuda else [64], help="linear sweep B"
    )
    parser.add_argument(
        "--dims", type=int, nargs="+", default=[256, 768] if cuda else [32], help="linear sweep D"
    )
    parser.add_argument(
        "--ceilings",
        type=Path,
        help="CSV of bench/ceilings.py: its copy bandwidth and 3-GEMM floor instead of measuring them here",
    )
    parser.add_argument(
        "--append", action="store_true", help="keep the rows already in each sweep's CSV, add the new ones"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="on CUDA, also record the device time of every kernel of our fwd+bwd (torch's profiler)",
    )
    parser.add_argument(
        "--samples", type=int, default=10, help="timed calls per measurement at least (more up to 100 ms)"
    )
    args = parser.parse_args()
    MIN_SAMPLES[0] = args.samples

    device = "cuda" if cuda else "cpu"
    ceilings = pd.read_csv(args.ceilings) if args.ceilings else None
    copy = None if ceilings is None else ceilings[ceilings["metric"] == "copy_bandwidth"]["y_50"]
    if copy is not None and len(copy):
        copy_gbs, copy_source = float(copy.iloc[0]), str(args.ceilings)
    else:
        copy_gbs, copy_source = copy_bandwidth_gbs(device), "sweep.py, 256 MiB"
    common = {**environment(), "copy_bandwidth_gbs": copy_gbs, "ours_path": ours_path(device)}
    log(f"copy bandwidth {copy_gbs:.0f} GB/s ({copy_source}) on {common['gpu_name']}")
    args.out.mkdir(parents=True, exist_ok=True)
    for sweep in args.sweeps:
        start = time.perf_counter()
        path = args.out / f"{sweep}_sweep.csv"
        sink = Sink(path, args.append)
        if sweep == "linear":
            cases_run = run_linear_sweep(args, device, common, sink, ceilings)
        elif sweep == "variants":
            cases_run = run_variants_sweep(args, device, common, sink)
        else:
            cases_run = run_sweep(sweep, args, device, common, sink)
        sink.write()
        print(f"wrote {cases_run} cases to {path} in {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
