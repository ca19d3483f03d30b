"""What a kernel's SASS costs per element, and the throughput that cost allows on a GPU: a static model.

A memory-bound kernel reaches its GPU's bandwidth only if the SMs can issue its instructions as fast as the
bytes arrive. Per SM and clock a Hopper GPU issues 4 warp-instructions (128 thread-instructions) and its
MUFU units (ex2, lg2, rcp, …) return 16 results, so per element

    bandwidth bound  = copy bandwidth / bytes per element
    issue bound      = SMs · clock · 128 / SASS instructions per element
    MUFU bound       = SMs · clock · 16 / MUFU instructions per element

and the kernel can run no faster than the least of the three. The instructions are counted in the SASS of
the steady-state loop (a loop holding a global store), leaving out loops nested in it that run rarely
(scanning a row's few positive labels); elements per thread per trip come from the tile and warps.

For a GEMM with an epilogue (the fused linear loss's chunk kernel) the epilogue is the code after the
tensor-core main loop, outside loops: its issue clocks per tile, against the tile's tensor-core clocks,
say whether it can hide behind the MMA (several CTAs per SM) or adds to it (one CTA per SM).

These are upper bounds from the code alone: latency, occupancy and clocks under load only lower them.
Every constant below is a model input, named and sourced; a GPU run checks the model against measurement.
"""

import math
import re
from collections import Counter
from dataclasses import dataclass

# Per SM and clock on Hopper (sm_90): warp schedulers issue 4 warp-instructions (CUDA C++ Programming
# Guide, "Compute Capability 9.0"), MUFU returns 16 results ("Arithmetic Instructions" throughput table),
# tensor cores do 1024 dense bf16/fp16 FMA (2048 flop; H100 SXM: 989 Tflop/s at 132 SMs · 1.83 GHz), half
# that with tf32 operands.
ISSUE_PER_CLOCK = 128
MUFU_PER_CLOCK = 16
MMA_FLOP_PER_CLOCK = {"bf16": 4096, "fp16": 4096, "tf32": 2048}
# Registers and threads per SM, shared memory per SM and reserved per block on sm_90.
REGISTERS_PER_SM = 65536
THREADS_PER_SM = 2048
MAX_CTAS_PER_SM = 32
SHARED_PER_SM = 228 * 1024
SHARED_RESERVED_PER_CTA = 1024


@dataclass(frozen=True)
class GPU:
    """The model's inputs for one GPU: SM count, the clock every unit is assumed to run at (the maximum
    boost: an upper bound) and device-to-device copy bandwidth (read + write bytes per second)."""

    name: str
    sms: int
    clock_hz: float
    copy_bytes_per_s: float


# Copy bandwidth as achieved by a device copy, not the datasheet's (H100 SXM 3.35 TB/s, H200 4.8 TB/s):
# bench/gpu_session.sh measures it in the same run as the kernels, which is the figure to compare with.
GPUS = (
    GPU("H100", sms=132, clock_hz=1.98e9, copy_bytes_per_s=3.0e12),
    GPU("H200", sms=132, clock_hz=1.98e9, copy_bytes_per_s=4.3e12),
)


@dataclass(frozen=True)
class Instruction:
    address: int
    opcode: str  # with its modifiers, e.g. "LDG.E.128" or "MUFU.EX2", the predicate guard removed
    text: str  # the operands too, the guard removed
    guarded: bool  # executes under a predicate (@P0, @!P1); a guarded branch may fall through


_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_BRANCH_TARGET = re.compile(r"\bBRA\b.*?0x([0-9a-f]+)")


def parse_sass(text: str) -> list[Instruction]:
    """The instructions of one kernel's `cuobjdump -sass` listing, in address order."""
    instructions = []
    for match in _LINE.finditer(text):
        guard = re.match(r"^@(!?)U?P([T0-9]+)\s+", match.group(2))
        body = match.group(2)[guard.end() :] if guard else match.group(2)
        guarded = guard is not None and not (guard.group(2) == "T" and not guard.group(1))
        instructions.append(Instruction(int(match.group(1), 16), body.split()[0], body, guarded))
    if not instructions:
        raise ValueError("no SASS instructions found")
    return instructions


def _branch_target(instruction: Instruction) -> int | None:
    match = _BRANCH_TARGET.search(instruction.text)
    return int(match.group(1), 16) if match and instruction.opcode.startswith("BRA") else None


def loops(instructions: list[Instruction]) -> list[tuple[int, int]]:
    """(first, last) instruction addresses of every loop: a branch back to an earlier address."""
    spans = []
    for instruction in instructions:
        target = _branch_target(instruction)
        if target is not None and target < instruction.address:
            spans.append((target, instruction.address))
    return spans


def shortest_path(region: list[Instruction]) -> list[Instruction]:
    """The fewest instructions that run from the region's first to its last, branches taken or not, back
    edges (nested loops' repeats) never: a loop body's path when every rarely taken side is skipped."""
    addresses = [i.address for i in region]
    leaders = {addresses[0]}
    for index, instruction in enumerate(region):
        target = _branch_target(instruction)
        if target is not None:
            leaders.add(target)
            if index + 1 < len(region):
                leaders.add(addresses[index + 1])
    blocks: list[list[Instruction]] = []
    for instruction in region:
        if instruction.address in leaders or not blocks:
            blocks.append([])
        blocks[-1].append(instruction)
    start = {block[0].address: index for index, block in enumerate(blocks)}
    # Blocks in address order and forward edges only: a DAG, relaxed in that order.
    best: list[list[Instruction] | None] = [None] * len(blocks)
    best[0] = []
    for index, block in enumerate(blocks):
        if best[index] is None:
            continue
        path = best[index] + block
        last = block[-1]
        target = _branch_target(last)
        successors = []
        if target is not None and target > last.address and target in start:
            successors.append(start[target])
        # Only an unguarded plain BRA never falls through (BRA.DIV and guarded ones may).
        if index + 1 < len(blocks) and (target is None or last.guarded or last.opcode != "BRA"):
            successors.append(index + 1)
        if index == len(blocks) - 1:
            return path
        for successor in successors:
            if best[successor] is None or len(path) < len(best[successor]):
                best[successor] = path
    raise ValueError("no path through the region")


def _outermost(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    return [s for s in spans if not any(o != s and o[0] <= s[0] and s[1] <= o[1] for o in spans)]


@dataclass(frozen=True)
class Counts:
    """Instructions of one stretch of code: all, MUFU, and the global loads' and stores' widths in bits."""

    instructions: int
    mufu: int
    load_bits: tuple[int, ...]
    store_bits: tuple[int, ...]
    rare_instructions: int  # on the stretch's rarely run sides and nested loops, not in `instructions`

    @staticmethod
    def of(body: list[Instruction], rare: list[Instruction]) -> "Counts":
        return Counts(
            instructions=len(body),
            mufu=sum(i.opcode.startswith("MUFU") for i in body),
            load_bits=_widths(body, "LDG"),
            store_bits=_widths(body, "STG"),
            rare_instructions=len(rare),
        )


def _widths(body: list[Instruction], opcode: str) -> tuple[int, ...]:
    widths = set()
    for instruction in body:
        parts = instruction.opcode.split(".")
        if parts[0] == opcode:
            sizes = [int(p) for p in parts[1:] if p in ("64", "128")]
            widths.add(sizes[0] if sizes else 32 if not {"U8", "S8", "U16", "S16"} & set(parts) else 16)
    return tuple(sorted(widths))


def opcode_histogram(body: list[Instruction]) -> Counter:
    return Counter(i.opcode for i in body)


def steady_loop(instructions: list[Instruction]) -> tuple[list[Instruction], list[Instruction], bool]:
    """(body, rare, unrolled): the shortest path through the outermost loop that stores to global memory
    and the rest of that loop (the other sides of its branches, loops nested in it); where the compiler
    unrolled that loop away, the shortest path through the whole kernel and `unrolled` True."""
    spans = loops(instructions)
    storing = [
        span
        for span in _outermost(spans)
        if any(i.opcode.startswith("STG") for i in instructions if span[0] <= i.address <= span[1])
    ]
    if len(storing) > 1:
        raise ValueError(f"expected one outermost loop that stores to global memory, found {storing}")
    if storing:
        first, last = storing[0]
    else:
        first, last = instructions[0].address, max(i.address for i in instructions if i.opcode == "EXIT")
    region = [i for i in instructions if first <= i.address <= last]
    body = shortest_path(region)
    taken = {i.address for i in body}
    return body, [i for i in region if i.address not in taken], not storing


def epilogue(instructions: list[Instruction]) -> tuple[list[Instruction], list[Instruction]]:
    """(body, rare): the shortest path from the end of the tensor-core main loop to the last EXIT, and the
    rest of that code (rarely run sides, loops)."""
    mainloops = [
        span
        for span in _outermost(loops(instructions))
        if any("MMA" in i.opcode for i in instructions if span[0] <= i.address <= span[1])
    ]
    if len(mainloops) != 1:
        raise ValueError(f"expected one tensor-core main loop, found {mainloops}")
    end = max(i.address for i in instructions if i.opcode == "EXIT")
    region = [i for i in instructions if mainloops[0][1] < i.address <= end]
    body = shortest_path(region)
    taken = {i.address for i in body}
    return body, [i for i in region if i.address not in taken]


def ctas_per_sm(registers: int, threads: int, shared_bytes: int) -> int:
    """Resident CTAs per SM allowed by threads, registers (allocated per warp in units of 256) and shared
    memory."""
    warps = threads // 32
    registers_per_warp = math.ceil(registers * 32 / 256) * 256
    by_registers = REGISTERS_PER_SM // (registers_per_warp * warps)
    by_shared = SHARED_PER_SM // (shared_bytes + SHARED_RESERVED_PER_CTA)
    return min(THREADS_PER_SM // threads, by_registers, by_shared, MAX_CTAS_PER_SM)


def memory_bound_kernel(gpu: GPU, bytes_per_element: float, per_element: float, mufu_per_element: float):
    """(elements per second, limiter) of a memory-bound kernel on `gpu`: the least of the three bounds."""
    bounds = {
        "bandwidth": gpu.copy_bytes_per_s / bytes_per_element,
        "issue": gpu.sms * gpu.clock_hz * ISSUE_PER_CLOCK / per_element,
        "mufu": gpu.sms * gpu.clock_hz * MUFU_PER_CLOCK / mufu_per_element if mufu_per_element else math.inf,
    }
    limiter = min(bounds, key=bounds.get)
    return bounds[limiter], limiter


def gemm_epilogue_kernel(
    gpu: GPU,
    tile_elements: int,
    depth: int,
    operand: str,
    epilogue_per_element: float,
    ctas: int,
    bytes_per_element: float,
):
    """(elements per second, limiter, epilogue clocks, MMA clocks) of a GEMM tile kernel with an epilogue.

    A tile's MMA takes 2·tile_elements·depth / MMA_FLOP_PER_CLOCK clocks of its SM and its epilogue
    tile_elements · epilogue_per_element / ISSUE_PER_CLOCK issue clocks. With one CTA per SM they follow
    each other; with two or more, one CTA's epilogue can run under another's MMA."""
    mma_clocks = 2 * tile_elements * depth / MMA_FLOP_PER_CLOCK[operand]
    epilogue_clocks = tile_elements * epilogue_per_element / ISSUE_PER_CLOCK
    if ctas < 2:
        tile_clocks, compute = mma_clocks + epilogue_clocks, "mma+epilogue"
    else:
        tile_clocks = max(mma_clocks, epilogue_clocks)
        compute = "mma" if mma_clocks >= epilogue_clocks else "epilogue"
    bounds = {
        compute: gpu.sms * gpu.clock_hz * tile_elements / tile_clocks,
        "bandwidth": gpu.copy_bytes_per_s / bytes_per_element,
    }
    limiter = min(bounds, key=bounds.get)
    return bounds[limiter], limiter, epilogue_clocks, mma_clocks
