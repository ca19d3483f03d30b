"""Compile every kernel's autotune configs for a GPU ahead of time and record what each costs on chip.

    python bench/kernel_resources.py [--arch 90] [--kernels ...] [--out reports/resources]

No GPU is needed: Triton compiles for a named target (default sm_90a, H100/H200) on any machine, and
cuobjdump (shipped with Triton) reads each cubin's registers per thread and stack frame. A stack frame
means local memory: registers spilled (or arrays the compiler could not keep in registers), which an
epilogue-heavy kernel pays for in L1/L2 traffic. Shared memory comes from Triton's metadata: a config above
the device's per-block limit (227 KiB on sm_90) fails to launch, and the autotuner skips it.

Each variant is one argument signature the package launches (pointer dtypes, constexpr flags, shapes), with
the specialization Triton's launcher would give it: integers equal to 1 become constants, pointers and
integers divisible by 16 are marked so, so that loads vectorize as they would at run time.

From each cubin's SASS it also counts what one element costs and predicts the throughput that allows on an
H100 and an H200 (the model of bench/sass_model.py, explained in bench/README.md): for the memory-bound
loss kernels the steady-state loop's instructions and MUFU operations per element, for the fused linear
kernels (the fused linear loss's chunk and the classifier's SGD update) their epilogue's per element (logit or
weight) against the tile's tensor-core clocks.

Writes sm_<arch>-triton<version>.csv into --out: kernel, variant, config (JSON), num_warps, num_stages,
registers, stack_bytes, shared_bytes, fits_shared, mma (wgmma / mma.sync / none), ctas_per_sm,
elements_per_thread (per loop trip, or logits per thread of a GEMM tile), instructions_per_element,
mufu_per_element, load_bits and store_bits (the global accesses' widths, "+"-separated),
rare_instructions (the rarely run sides of branches and nested loops, not per element), bytes_per_element,
epilogue_clocks and mma_clocks (per GEMM tile), bound_elements_per_s_<GPU> and limiter_<GPU> for H100
and H200, arch, triton_version, git_commit, timestamp. The model columns are empty for a kernel it does
not cover (design (a)'s tiled kernel).
Run it with TRITON_INTERPRET unset: Triton's interpreter has no compiler to measure.
"""

import argparse
import datetime
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import sass_model  # bench/sass_model.py
import triton
import triton.language as tl
from linear_tiled import linear_soft_margin_tiled_kernel, tiled_configs  # bench/linear_tiled.py
from timing import git_commit  # bench/timing.py
from tqdm import tqdm
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from softmargin_triton.kernels import fused_sgd, linear_soft_margin, soft_margin

REPO = Path(__file__).resolve().parent.parent

# Largest shared memory one block may use, per compute capability (CUDA programming guide, "Technical
# Specifications per Compute Capability").
MAX_SHARED_BYTES = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024, 100: 227 * 1024}


@dataclass(frozen=True)
class Variant:
    """One launch signature: example values of the runtime arguments (pointers as Triton type strings such
    as "*bf16", integers and floats as values) and the constexpr flags, both by parameter name; and the
    bytes that one element (one logit) moves to or from memory, the fused minimum of the launch."""

    name: str
    args: dict[str, object]
    constexprs: dict[str, object]
    bytes_per_element: float
    headline: bool = False  # compiled by `--headline` too


def _dense_loss_args(logits: str, target: str, rows: int, cols: int, weights: bool) -> dict[str, object]:
    """soft_margin_forward_kernel on a contiguous (rows, cols) problem, weights as broadcast (cols,) views."""
    return {
        "X": logits,
        "Y": target,
        "INDPTR": "*i64",
        "INDICES": "*i32",
        "W": "*fp32" if weights else logits,
        "PW": "*fp32" if weights else logits,
        "ROW_SCALE": "*fp32",
        "GRAD": logits,
        "LOSS": "*fp32",
        "PARTIAL": "*fp32",
        "R": rows,
        "C": cols,
        "stride_x_row": cols,
        "stride_x_col": 1,
        "stride_y_row": cols,
        "stride_y_col": 1,
        "stride_w_row": 0,
        "stride_w_col": 1 if weights else 0,
        "stride_pw_row": 0,
        "stride_pw_col": 1 if weights else 0,
        "stride_row_scale": 1,
        "stride_grad_row": cols,
        "stride_grad_col": 1,
        "grad_scale": 0.5,
        "label_smoothing": 0.1,
        "ignore_value": -1.0,
        "alpha": 0.25,
        "gamma_pos": 2.0,
        "gamma_neg": 2.0,
        "clip": 0.05,
        "log_eps": -18.42,
    }


def _dense_loss_flags(**flags: object) -> dict[str, object]:
    base = dict(
        SPAN=soft_margin.MAX_SPAN,
        LOSS_FORM="mlsm",
        IGNORE=False,
        FOCUS_GRAD=False,
        SPARSE_TARGET=False,
        HAS_WEIGHT=False,
        HAS_POS_WEIGHT=False,
        HAS_ROW_SCALE=False,
        SMOOTH=False,
        ALPHA_WEIGHT=False,
        CLIP=False,
        INTEGER_GAMMA=-1,
        WRITE_GRAD=True,
        WRITE_LOSS=False,
        WRITE_PARTIAL=True,
        COMPUTE_DTYPE=tl.float32,
        PRECISE=False,
    )
    return {**base, **flags}


def _linear_chunk_args(dtype: str, rows: int, dim: int, chunk: int, dense_target: bool) -> dict[str, object]:
    """linear_soft_margin_chunk_kernel on contiguous operands; a dense target as uint8 (rows, L)."""
    labels = 670208  # Amazon-670K's label count rounded up to a multiple of 256 (strides divisible by 16)
    return {
        "E": dtype,
        "W": dtype,
        "BIAS": dtype,
        "Y": "*u8" if dense_target else dtype,
        "POSITIVES_START": "*i64",
        "POSITIVES_STOP": "*i64",
        "INDICES": "*i32",
        "LW": "*fp32",
        "PW": "*fp32",
        "ROW_SCALE": "*fp32",
        "G": dtype,
        "PARTIAL": "*fp32",
        "B": rows,
        "D": dim,
        "chunk_labels": chunk,
        "label_start": chunk,
        "label_id_offset": 0,
        "label_smoothing": 0.0,  # a runtime scalar: only the SMOOTH flag changes the code
        "stride_e_row": dim,
        "stride_e_col": 1,
        "stride_w_row": dim,
        "stride_w_col": 1,
        "stride_bias": 1,
        "stride_y_row": labels if dense_target else 0,
        "stride_y_col": 1 if dense_target else 0,
        "stride_lw_row": 0,
        "stride_lw_col": 1 if dense_target else 0,
        "stride_pw_row": 0,
        "stride_pw_col": 1 if dense_target else 0,
        "stride_g_row": chunk,
        "stride_partial_row": chunk // linear_soft_margin.MIN_BLOCK_L,
    }


def _linear_chunk_flags(sparse: bool, dtype: str, weights: bool, **flags: object) -> dict[str, object]:
    base = dict(
        HAS_BIAS=True,
        SPARSE_TARGET=sparse,
        HAS_LABEL_WEIGHT=weights,
        HAS_POS_WEIGHT=weights,
        HAS_ROW_SCALE=False,
        WRITE_GRAD=True,
        DOT_PRECISION="tf32" if dtype == "*fp32" else "ieee",
        DOT_IN_FP32=False,
        PRECISE=dtype == "*fp32",  # the loss in the logits' dtype
        SMOOTH=False,
    )
    return {**base, **flags}


def _linear_tiled_args(dtype: str, rows: int, dim: int, labels: int) -> dict[str, object]:
    """Design (a)'s tiled kernel (bench/linear_tiled.py) on contiguous operands."""
    return {
        "E": dtype,
        "W": dtype,
        "BIAS": dtype,
        "INDPTR": "*i64",
        "INDICES": "*i32",
        "DE": "*fp32",
        "DW": "*fp32",
        "DB": "*fp32",
        "PARTIAL": "*fp32",
        "B": rows,
        "L": labels,
        "D": dim,
        "scale": 1.0 / (rows * labels),
        "stride_e_row": dim,
        "stride_e_col": 1,
        "stride_w_row": dim,
        "stride_w_col": 1,
        "stride_bias": 1,
    }


def _sgd_update_args(dtype: str, rows: int, dim: int, chunk: int) -> dict[str, object]:
    """classifier_sgd_update_kernel on contiguous operands: a chunk of a 768-wide classifier."""
    return {
        "G": dtype,
        "E": dtype,
        "W": dtype,
        "MOMENTUM": "*fp32",
        "MASTER": "*fp32",
        "ROW_STEP_SIZE": "*fp32",
        "B": rows,
        "D": dim,
        "chunk_labels": chunk,
        "label_start": chunk,
        "lr": 0.1,  # runtime scalars: only the flags change the code
        "momentum": 0.9,
        "weight_decay": 0.01,
        "shrink": 0.999,
        "rounding_stream": 12345,
        "stride_g_row": chunk,
        "stride_e_row": dim,
        "stride_e_col": 1,
        "stride_w_row": dim,
        "stride_w_col": 1,
    }


def _sgd_update_flags(
    dtype: str, momentum: bool, master: bool, weight_decay: bool, row_adaptive: bool
) -> dict[str, object]:
    return dict(
        DOT_PRECISION="tf32" if dtype == "*fp32" else "ieee",
        DOT_IN_FP32=False,
        STOCHASTIC_ROUNDING=dtype == "*bf16" and not master,
        HAS_MOMENTUM=momentum,
        HAS_MASTER=master,
        HAS_ROW_STEP_SIZE=row_adaptive,
        WEIGHT_DECAY=weight_decay,
    )


def _scale_grad_args(dtype: str, rows: int, cols: int) -> dict[str, object]:
    return {
        "GRAD": dtype,
        "GRAD_OUTPUT": "*fp32",
        "R": rows,
        "C": cols,
        "stride_grad_row": cols,
        "stride_grad_col": 1,
        "stride_go_row": 1,
        "stride_go_col": 0,
        "scale": 1.0,
    }


def _tile_constexprs(config: triton.Config, args: dict, flags: dict) -> dict:
    """The soft-margin kernels' block shape from TILE and whether every tile is full (their heuristics)."""
    shape = soft_margin.tile_shape(config.kwargs["TILE"], flags["SPAN"])
    even = soft_margin.tiles_even(args["R"], args["C"], flags["SPAN"], shape["BLOCK_R"])
    return {**config.kwargs, **shape, "EVEN": even}


@dataclass(frozen=True)
class Kernel:
    """A jitted kernel, its autotune configs, the launch signatures worth compiling, how a config's
    parameters become constexprs (the soft-margin kernels derive their block shape from TILE), and which
    cost model applies: "memory" (a loop over tiles of TILE elements), "gemm" (a tile of the two block
    sizes named in gemm_tile, reduced over the argument named third, with an epilogue) or None."""

    fn: object
    configs: Callable[[], list[triton.Config]]
    variants: list[Variant]
    config_constexprs: Callable[[triton.Config, dict, dict], dict]
    model: str | None
    gemm_tile: tuple[str, str, str] = ("BLOCK_B", "BLOCK_L", "D")


KERNELS = {
    "soft_margin_forward": Kernel(
        soft_margin.soft_margin_forward_kernel,
        soft_margin.tile_configs,
        [
            Variant(
                "mlsm-bf16-uint8",
                _dense_loss_args("*bf16", "*u8", 4096, 131072, weights=False),
                _dense_loss_flags(),
                bytes_per_element=5,  # bf16 logits and gradient, uint8 target
                headline=True,
            ),
            Variant(
                "mlsm-bf16-sparse",
                _dense_loss_args("*bf16", "*bf16", 4096, 131072, weights=False),
                _dense_loss_flags(SPARSE_TARGET=True),
                bytes_per_element=4,  # bf16 logits and gradient
                headline=True,
            ),
            Variant(
                "bce-fp32-weighted-none",
                _dense_loss_args("*fp32", "*fp32", 4096, 131072, weights=True),
                _dense_loss_flags(
                    LOSS_FORM="bce",
                    HAS_WEIGHT=True,
                    HAS_POS_WEIGHT=True,
                    WRITE_LOSS=True,
                    WRITE_PARTIAL=False,
                    PRECISE=True,
                ),
                bytes_per_element=16,  # fp32 logits, target, gradient and loss (weights are (C,) views)
            ),
            Variant(
                "mlsm-bf16-uint8-smoothed",
                _dense_loss_args("*bf16", "*u8", 4096, 131072, weights=False),
                _dense_loss_flags(SMOOTH=True),
                bytes_per_element=5,
            ),
            Variant(
                "mlsm-bf16-sparse-smoothed",
                _dense_loss_args("*bf16", "*bf16", 4096, 131072, weights=False),
                _dense_loss_flags(SPARSE_TARGET=True, SMOOTH=True),
                bytes_per_element=4,
            ),
            Variant(
                "mlsm-bf16-int8-partial-labels",
                _dense_loss_args("*bf16", "*i8", 4096, 131072, weights=False),
                _dense_loss_flags(IGNORE=True, HAS_ROW_SCALE=True),
                bytes_per_element=5,  # and the count pass's 1 byte of target before it
            ),
            Variant(
                "focal-bf16-uint8",
                _dense_loss_args("*bf16", "*u8", 4096, 131072, weights=False),
                _dense_loss_flags(LOSS_FORM="focal", ALPHA_WEIGHT=True, FOCUS_GRAD=True, INTEGER_GAMMA=2),
                bytes_per_element=5,
            ),
            Variant(
                "asymmetric-bf16-uint8",
                _dense_loss_args("*bf16", "*u8", 4096, 131072, weights=False),
                _dense_loss_flags(LOSS_FORM="asymmetric", CLIP=True),
                bytes_per_element=5,
            ),
        ],
        _tile_constexprs,
        model="memory",
    ),
    "soft_margin_scale_grad": Kernel(
        soft_margin.soft_margin_scale_grad_kernel,
        soft_margin.tile_configs,
        [
            Variant(
                "bf16-per-row",
                _scale_grad_args("*bf16", 4096, 131072),
                dict(SPAN=soft_margin.MAX_SPAN, COMPUTE_DTYPE=tl.float32),
                bytes_per_element=4,  # bf16 gradient read and written
                headline=True,
            )
        ],
        _tile_constexprs,
        model="memory",
    ),
    "linear_soft_margin_chunk": Kernel(
        linear_soft_margin.linear_soft_margin_chunk_kernel,
        linear_soft_margin.chunk_configs,
        [
            Variant(
                "bf16-sparse",
                _linear_chunk_args("*bf16", 8192, 768, 4096, dense_target=False),
                _linear_chunk_flags(sparse=True, dtype="*bf16", weights=False),
                bytes_per_element=2,  # G written; E and W are read once per tile, not per logit
                headline=True,
            ),
            Variant(
                "bf16-sparse-smoothed",
                _linear_chunk_args("*bf16", 8192, 768, 4096, dense_target=False),
                _linear_chunk_flags(sparse=True, dtype="*bf16", weights=False, SMOOTH=True),
                bytes_per_element=2,
            ),
            Variant(
                "bf16-uint8",
                _linear_chunk_args("*bf16", 8192, 768, 4096, dense_target=True),
                _linear_chunk_flags(sparse=False, dtype="*bf16", weights=False),
                bytes_per_element=3,  # uint8 target read, bf16 G written
            ),
            Variant(
                "bf16-uint8-smoothed",
                _linear_chunk_args("*bf16", 8192, 768, 4096, dense_target=True),
                _linear_chunk_flags(sparse=False, dtype="*bf16", weights=False, SMOOTH=True),
                bytes_per_element=3,
            ),
            Variant(
                "bf16-uint8-weighted",
                _linear_chunk_args("*bf16", 8192, 768, 4096, dense_target=True),
                _linear_chunk_flags(sparse=False, dtype="*bf16", weights=True),
                bytes_per_element=3,  # the weights are (L,) views
            ),
            Variant(
                "fp16-sparse-row-scale",
                _linear_chunk_args("*fp16", 8192, 768, 4096, dense_target=False),
                _linear_chunk_flags(sparse=True, dtype="*fp16", weights=False, HAS_ROW_SCALE=True),
                bytes_per_element=2,
            ),
            Variant(
                "fp32-tf32-sparse",
                _linear_chunk_args("*fp32", 8192, 768, 2048, dense_target=False),
                _linear_chunk_flags(sparse=True, dtype="*fp32", weights=False),
                bytes_per_element=4,
            ),
        ],
        lambda config, args, flags: dict(config.kwargs),
        model="gemm",
    ),
    "classifier_sgd_update": Kernel(
        fused_sgd.classifier_sgd_update_kernel,
        fused_sgd.update_configs,
        [
            Variant(
                "bf16-stochastic",
                _sgd_update_args("*bf16", 512, 768, 65536),
                _sgd_update_flags(
                    "*bf16", momentum=False, master=False, weight_decay=False, row_adaptive=False
                ),
                bytes_per_element=4,  # the bf16 weight read and written; G and E are read once per tile
                headline=True,
            ),
            Variant(
                "bf16-stochastic-row-adaptive",
                _sgd_update_args("*bf16", 512, 768, 65536),
                _sgd_update_flags(
                    "*bf16", momentum=False, master=False, weight_decay=False, row_adaptive=True
                ),
                bytes_per_element=4,  # plus a 4-byte step size per row of D weights
            ),
            Variant(
                "bf16-master-momentum",
                _sgd_update_args("*bf16", 512, 768, 65536),
                _sgd_update_flags("*bf16", momentum=True, master=True, weight_decay=True, row_adaptive=False),
                bytes_per_element=18,  # fp32 master and momentum read and written, the bf16 weight written
            ),
            Variant(
                "fp32-tf32-momentum",
                _sgd_update_args("*fp32", 512, 768, 32768),
                _sgd_update_flags(
                    "*fp32", momentum=True, master=False, weight_decay=True, row_adaptive=False
                ),
                bytes_per_element=16,
            ),
        ],
        lambda config, args, flags: dict(config.kwargs),
        model="gemm",
        gemm_tile=("BLOCK_L", "BLOCK_D", "B"),
    ),
    "linear_soft_margin_tiled": Kernel(
        linear_soft_margin_tiled_kernel,
        tiled_configs,
        [
            Variant(
                "bf16-sparse",
                _linear_tiled_args("*bf16", 8192, 768, 670091),
                dict(HAS_BIAS=True, DOT_PRECISION="ieee", DOT_IN_FP32=False),
                bytes_per_element=0,  # dE, dW and db by atomics: no per-logit traffic of its own
                headline=True,
            )
        ],
        lambda config, args, flags: dict(config.kwargs),
        model=None,
    ),
}


def specialize(fn, args: dict[str, object], constexprs: dict[str, object]):
    """(signature, constexprs, attrs) for ASTSource, as Triton's launcher specializes these argument values:
    an integer 1 becomes a constant, 16-divisible integers and every pointer (torch allocations are
    aligned) carry tt.divisibility 16."""
    signature, constants, attrs = {}, dict(constexprs), {}
    for param in fn.params:
        name = param.name
        if param.is_constexpr:
            signature[name] = "constexpr"
            continue
        value = args[name]
        if isinstance(value, str):
            signature[name] = value
            attrs[(param.num,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = "fp32"
        elif value == 1:
            signature[name] = "constexpr"
            constants[name] = 1
        else:
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(param.num,)] = [["tt.divisibility", 16]]
    missing = set(constexprs) ^ {param.name for param in fn.params if param.is_constexpr}
    if missing:
        raise ValueError(f"{fn.__name__}: constexprs given and declared differ in {sorted(missing)}")
    return signature, constants, attrs


def cuobjdump_path() -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def _cuobjdump(cubin: bytes, flag: str) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        return subprocess.run(
            [cuobjdump_path(), flag, file.name], capture_output=True, text=True, check=True
        ).stdout


def resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers per thread, stack frame bytes per thread) of the one kernel in a cubin."""
    report = _cuobjdump(cubin, "-res-usage")
    match = re.search(r"REG:(\d+) STACK:(\d+)", report)
    if match is None:
        raise RuntimeError(f"cuobjdump printed no resource usage:\n{report}")
    return int(match.group(1)), int(match.group(2))


def mma_kind(ptx: str) -> str:
    if "wgmma.mma_async" in ptx:
        return "wgmma"
    if "mma.sync" in ptx:
        return "mma.sync"
    return "none"


def _gemm_operand(variant: Variant) -> str:
    dtype = variant.args["E"]
    return "tf32" if dtype == "*fp32" else dtype[1:]


def cost_model(
    kernel: Kernel, variant: Variant, config: triton.Config, constexprs: dict, sass: str, ctas: int
) -> dict:
    """The per-element counts of one compiled config and the throughput they allow on each modelled GPU
    (bench/sass_model.py); empty for a kernel without a model."""
    if kernel.model is None:
        return {}
    instructions = sass_model.parse_sass(sass)
    threads = 32 * config.num_warps
    if kernel.model == "memory":
        body, rare, unrolled = sass_model.steady_loop(instructions)
        # A loop trip covers one TILE; an unrolled kernel its program's whole span of BLOCK_R rows.
        program_elements = constexprs["BLOCK_R"] * constexprs["SPAN"] if unrolled else config.kwargs["TILE"]
        elements_per_thread = program_elements / threads
    else:
        body, rare = sass_model.epilogue(instructions)
        tile_rows, tile_cols, depth = kernel.gemm_tile
        tile_elements = config.kwargs[tile_rows] * config.kwargs[tile_cols]
        elements_per_thread = tile_elements / threads
    counts = sass_model.Counts.of(body, rare)
    per_element = counts.instructions / elements_per_thread
    mufu_per_element = counts.mufu / elements_per_thread
    row = {
        "elements_per_thread": elements_per_thread,
        "instructions_per_element": round(per_element, 2),
        "mufu_per_element": round(mufu_per_element, 3),
        "load_bits": "+".join(map(str, counts.load_bits)),
        "store_bits": "+".join(map(str, counts.store_bits)),
        "rare_instructions": counts.rare_instructions,
        "bytes_per_element": variant.bytes_per_element,
    }
    for gpu in sass_model.GPUS:
        if kernel.model == "memory":
            bound, limiter = sass_model.memory_bound_kernel(
                gpu, variant.bytes_per_element, per_element, mufu_per_element
            )
        else:
            bound, limiter, row["epilogue_clocks"], row["mma_clocks"] = sass_model.gemm_epilogue_kernel(
                gpu,
                tile_elements,
                variant.args[depth],
                _gemm_operand(variant),
                per_element,
                ctas,
                variant.bytes_per_element,
            )
        row[f"bound_elements_per_s_{gpu.name}"] = float(f"{bound:.4g}")
        row[f"limiter_{gpu.name}"] = limiter
    return row


def compile_rows(arch: int, kernels: list[str], headline: bool) -> list[dict]:
    target = GPUTarget("cuda", arch, 32)
    jobs = [
        (name, variant, config)
        for name in kernels
        for variant in KERNELS[name].variants
        if variant.headline or not headline
        for config in KERNELS[name].configs()
    ]
    rows = []
    for name, variant, config in tqdm(jobs, desc=f"compiling for sm_{arch}", unit="kernel"):
        kernel = KERNELS[name]
        config_constexprs = kernel.config_constexprs(config, variant.args, variant.constexprs)
        constexprs = {**variant.constexprs, **config_constexprs}
        signature, constants, attrs = specialize(kernel.fn, variant.args, constexprs)
        options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
        source = ASTSource(kernel.fn, signature, constants, attrs)
        compiled = triton.compile(source, target=target, options=options)
        registers, stack = resource_usage(compiled.asm["cubin"])
        shared = compiled.metadata.shared
        ctas = sass_model.ctas_per_sm(registers, 32 * config.num_warps, shared)
        sass = _cuobjdump(compiled.asm["cubin"], "-sass")
        rows.append(
            {
                "kernel": name,
                "variant": variant.name,
                "config": json.dumps(config.kwargs),
                "num_warps": config.num_warps,
                "num_stages": config.num_stages,
                "registers": registers,
                "stack_bytes": stack,
                "shared_bytes": shared,
                "fits_shared": shared <= MAX_SHARED_BYTES.get(arch, MAX_SHARED_BYTES[90]),
                "mma": mma_kind(compiled.asm["ptx"]),
                "ctas_per_sm": ctas,
                **cost_model(kernel, variant, config, constexprs, sass, ctas),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability × 10 (default 90: sm_90a)")
    parser.add_argument("--kernels", nargs="+", choices=list(KERNELS), default=list(KERNELS))
    parser.add_argument("--headline", action="store_true", help="only the headline variants")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "resources")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("unset TRITON_INTERPRET: the interpreter has no compiler to measure")
    frame = pd.DataFrame(compile_rows(args.arch, args.kernels, args.headline))
    frame["arch"] = f"sm_{args.arch}"
    frame["triton_version"] = triton.__version__
    frame["git_commit"] = git_commit()
    frame["timestamp"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"sm_{args.arch}-triton{triton.__version__}.csv"
    frame.to_csv(path, index=False)
    print(f"wrote {path} ({len(frame)} kernels)")


if __name__ == "__main__":
    main()
