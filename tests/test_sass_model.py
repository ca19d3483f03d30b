"""bench/sass_model.py on hand-written SASS: loops, the shortest path through a branch, the counts and the
bounds they give (the compile tier, tests/test_kernel_resources.py, runs it on real cubins)."""

import importlib.util
import math
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "sass_model", Path(__file__).resolve().parent.parent / "bench" / "sass_model.py"
)
sass_model = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(sass_model)

# A loop (0x0010–0x00a0) holding a branch around two rare instructions, then a nested loop guarded by a
# branch that skips it, then the back edge; an EXIT and the padding self-branch after it.
LISTING = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0020*/                   MUFU.EX2 R6, R5 ;
        /*0030*/               @P0 BRA 0x60 ;
        /*0040*/                   FFMA R7, R6, R6, R5 ;
        /*0050*/                   MUFU.RCP R7, R7 ;
        /*0060*/               @!P1 BRA 0x90 ;
        /*0070*/                   IADD3 R8, R8, 0x1, RZ ;
        /*0080*/               @P2 BRA 0x70 ;
        /*0090*/                   STG.E.64 desc[UR4][R2.64], R6 ;
        /*00a0*/               @P3 BRA 0x10 ;
        /*00b0*/                   EXIT ;
        /*00c0*/                   BRA 0xc0;
"""


def test_loops_are_the_back_edges():
    instructions = sass_model.parse_sass(LISTING)
    assert sass_model.loops(instructions) == [(0x70, 0x80), (0x10, 0xA0)]


def test_steady_loop_takes_the_shortest_path_and_leaves_the_rest_as_rare():
    body, rare, unrolled = sass_model.steady_loop(sass_model.parse_sass(LISTING))
    assert [i.address for i in body] == [0x10, 0x20, 0x30, 0x60, 0x90, 0xA0]
    assert [i.address for i in rare] == [0x40, 0x50, 0x70, 0x80]
    assert not unrolled
    counts = sass_model.Counts.of(body, rare)
    assert (counts.instructions, counts.mufu, counts.rare_instructions) == (6, 1, 4)
    assert (counts.load_bits, counts.store_bits) == ((128,), (64,))


def test_an_unrolled_kernel_is_its_whole_shortest_path():
    listing = """
        /*0000*/                   LDG.E R4, desc[UR4][R2.64] ;
        /*0010*/               @P0 EXIT ;
        /*0020*/                   STG.E.U16 desc[UR4][R2.64], R4 ;
        /*0030*/                   EXIT ;
    """
    body, rare, unrolled = sass_model.steady_loop(sass_model.parse_sass(listing))
    assert unrolled and len(body) == 4 and not rare
    assert sass_model.Counts.of(body, rare).store_bits == (16,)


def test_memory_bound_kernel_takes_the_least_of_its_bounds():
    gpu = sass_model.GPU("test", sms=100, clock_hz=1e9, copy_bytes_per_s=1e12)
    # 100 SMs · 1 GHz · 128 / 64 = 2e11 elements/s by issue, 1e12 / 4 = 2.5e11 by bandwidth.
    assert sass_model.memory_bound_kernel(gpu, 4, 64, 2) == (pytest.approx(2e11), "issue")
    assert sass_model.memory_bound_kernel(gpu, 4, 16, 2) == (pytest.approx(2.5e11), "bandwidth")
    # 16 MUFU results a clock per SM: 8 MUFU an element allow 2e11.
    assert sass_model.memory_bound_kernel(gpu, 1, 16, 8) == (pytest.approx(2e11), "mufu")


def test_gemm_epilogue_adds_to_the_mma_at_one_cta_and_hides_at_two():
    gpu = sass_model.GPU("test", sms=1, clock_hz=1e9, copy_bytes_per_s=math.inf)
    tile, depth = 128 * 128, 768
    mma = 2 * tile * depth / 4096  # 6144 clocks of bf16 MMA
    bound, limiter, epilogue, mma_clocks = sass_model.gemm_epilogue_kernel(gpu, tile, depth, "bf16", 24, 1, 2)
    assert (mma_clocks, epilogue) == (mma, tile * 24 / 128)
    assert limiter == "mma+epilogue" and bound == pytest.approx(1e9 * tile / (mma + epilogue))
    bound, limiter, _, _ = sass_model.gemm_epilogue_kernel(gpu, tile, depth, "bf16", 24, 2, 2)
    assert limiter == "mma" and bound == pytest.approx(1e9 * tile / mma)


def test_ctas_per_sm_by_registers_threads_and_shared_memory():
    assert sass_model.ctas_per_sm(registers=32, threads=128, shared_bytes=0) == 16  # threads: 2048 / 128
    assert sass_model.ctas_per_sm(registers=255, threads=256, shared_bytes=0) == 1  # 65536 / (256 · 256)
    assert sass_model.ctas_per_sm(registers=32, threads=128, shared_bytes=100 * 1024) == 2
