"""Bytes each rank moves per step in the label-sharded fused linear loss, measured on gloo (CPU) groups.

    python bench/distributed_comm.py --out DIR [--worlds 2 4] [--labels 4096 16384 65536] [--batch 256]
        [--dim 64] [--dtypes fp32 bf16] [--modes replicated data_parallel]

For each world size W one gloo group is spawned on CPU (torch.multiprocessing). In it, for each mode, dtype
and label count L, every rank runs one uncounted warm-up step and then one counted forward+backward step of
`ShardedLinearMultiLabelSoftMarginLoss` (reduction 'mean', features that require grad, SparseTargets with
Poisson(5.45) positives per row drawn from Zipf(1) label frequencies). Both modes score the same B rows
against all L labels: `replicated` passes the B rows on every rank, `data_parallel` passes B/W rows per rank.
The positives' counts are drawn before their labels, so every L gets the same number of positives.

During the counted step the collectives that `softmargin_triton.distributed` calls — `dist.all_reduce`,
`dist.all_gather_object` and its module-level `_all_gather_single` / `_reduce_scatter_single` — are
replaced in each rank by counting wrappers (and restored after) that record, per (collective, call site),
the calls and the bytes of their input and output tensors (`all_gather_object`: pickled sizes). The call
site is the function of that module which asked for the collective, so the features' all-gather and the
agreement step's all-gather are told apart.

Writes to --out:
- distributed_comm.csv: long format, one row per (world, mode, dtype, labels, batch, dim, rank, collective,
  site, metric) with value and unit; metrics calls / input_bytes / output_bytes per collective, and per
  step (collective "step") the rank's positives, the step's wall time (CPU, informative only) and the
  rank's peak RSS so far; plus CPU model, torch and package versions, git commit, timestamp and command.
- COMM.md, generated from the CSV: the measured bytes against the formula, and the per-rank memory and
  communication this implies for L = 3,000,000 labels, D = 768, B = 8192 on 8 GPUs.
"""

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import pickle
import resource
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from types import CodeType

import pandas as pd
import torch
import torch.distributed as dist
import torch.distributed.nn  # before any process group exists: see the note below
import torch.multiprocessing as mp

import softmargin_triton as st
import softmargin_triton.distributed as sharded
from softmargin_triton.linear_soft_margin import SCRATCH_ENV_VAR, chunk_labels

REPO = Path(__file__).resolve().parents[1]
MODES = ("replicated", "data_parallel")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
POSITIVES_PER_ROW = 5.45  # Amazon-670K's average
# The formula's constants: the agreement step gathers an error flag and the call's fields per rank, as
# int64; the positives travel as int64 row counts and int64 label ids.
AGREEMENT_INTS, INT64_BYTES, ID_BYTES = 1 + len(sharded._CALL_FIELDS), 8, 8
# Helpers that only forward to a collective: the call site is their caller.
FORWARDING_HELPERS = {"_all_gather_rows"}
SITE_NAMES = {
    ("all_gather", "_agree"): "agreement all-gather",
    ("all_reduce", "_SumOverRanks.forward"): "loss all-reduce",
    ("all_reduce", "_CopyToRanks.backward"): "dE all-reduce",
    ("all_gather", "_GatherRows.forward"): "features all-gather",
    ("all_gather", "_gather_positives"): "positives all-gather",
    ("reduce_scatter", "_GatherRows.backward"): "dE reduce-scatter",
}
# The deployment the report sizes: labels, features, ranks, global batch, parameter dtype.
TARGET = {"labels": 3_000_000, "dim": 768, "world": 8, "batch": 8192, "dtype": "bf16"}
Traffic = dict[tuple[str, str], tuple[int, int, int]]  # (collective, site) → (calls, input, output bytes)
# Note: torch.distributed.nn is imported above, in every rank before its process group exists, because its
# functions take `group=group.WORLD` as default arguments, evaluated at import. Imported later — torch._dynamo
# imports it, on the fused loss's first call — they hold the live group past destroy_process_group; it is
# then torn down at interpreter exit, where gloo's threads abort the rank now and then (SIGABRT).


# --------------------------------------------------------------------------------------------------------
# Counting the collectives
# --------------------------------------------------------------------------------------------------------


def _site_names() -> dict[CodeType, str]:
    """Code object → qualified name of every function and autograd method defined in the sharded module."""
    names = {}
    for value in vars(sharded).values():
        if getattr(value, "__module__", None) != sharded.__name__:
            continue
        for member in vars(value).values() if isinstance(value, type) else [value]:
            function = getattr(member, "__func__", member)  # a staticmethod's function
            if hasattr(function, "__code__"):
                names[function.__code__] = function.__qualname__
    return names


class _Overridden:
    """A module seen through some replaced attributes; everything else is the module's own."""

    def __init__(self, module: object, **overrides: object) -> None:
        self._module = module
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> object:
        return getattr(self._module, name)


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class CollectiveCounter:
    """Calls, input bytes and output bytes per (collective, call site) of the collectives that
    `softmargin_triton.distributed` issues while `installed()` is active in this process."""

    def __init__(self) -> None:
        self.traffic: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
        self._sites = _site_names()

    def _record(self, collective: str, input_bytes: int, output_bytes: int) -> None:
        frame = sys._getframe()
        while frame is not None and self._sites.get(frame.f_code, "") in ("", *FORWARDING_HELPERS):
            frame = frame.f_back
        entry = self.traffic[collective, "unknown" if frame is None else self._sites[frame.f_code]]
        entry[0] += 1
        entry[1] += input_bytes
        entry[2] += output_bytes

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Route the sharded module's collectives through counting wrappers; restore them on exit."""
        real_gather, real_scatter, real_dist = (
            sharded._all_gather_single,
            sharded._reduce_scatter_single,
            sharded.dist,
        )

        def all_gather(output: torch.Tensor, input: torch.Tensor, *args: object, **kwargs: object) -> object:
            self._record("all_gather", _nbytes(input), _nbytes(output))
            return real_gather(output, input, *args, **kwargs)

        def reduce_scatter(
            output: torch.Tensor, input: torch.Tensor, *args: object, **kwargs: object
        ) -> object:
            self._record("reduce_scatter", _nbytes(input), _nbytes(output))
            return real_scatter(output, input, *args, **kwargs)

        def all_reduce(tensor: torch.Tensor, *args: object, **kwargs: object) -> object:
            self._record("all_reduce", _nbytes(tensor), _nbytes(tensor))
            return real_dist.all_reduce(tensor, *args, **kwargs)

        def all_gather_object(object_list: list, obj: object, *args: object, **kwargs: object) -> object:
            work = real_dist.all_gather_object(object_list, obj, *args, **kwargs)
            gathered = sum(len(pickle.dumps(item)) for item in object_list)
            self._record("all_gather_object", len(pickle.dumps(obj)), gathered)
            return work

        sharded._all_gather_single, sharded._reduce_scatter_single = all_gather, reduce_scatter
        sharded.dist = _Overridden(real_dist, all_reduce=all_reduce, all_gather_object=all_gather_object)
        try:
            yield
        finally:
            sharded._all_gather_single, sharded._reduce_scatter_single, sharded.dist = (
                real_gather,
                real_scatter,
                real_dist,
            )


# --------------------------------------------------------------------------------------------------------
# The ranks
# --------------------------------------------------------------------------------------------------------


def sample_batch(batch: int, dim: int, labels: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The same batch on every rank: features (batch, dim) and positives as (batch, K) label ids padded
    with -1, Poisson(5.45) per row, drawn from Zipf(1) label frequencies without repeats. Counts and
    features come first from the generator, so every label count gets the same positives per row."""
    generator = torch.Generator().manual_seed(0)
    counts = torch.poisson(torch.full((batch,), POSITIVES_PER_ROW), generator=generator).long()
    counts = counts.clamp_(max=labels).tolist()
    features = torch.randn(batch, dim, generator=generator).to(dtype)
    frequency = 1 / torch.arange(1, labels + 1, dtype=torch.float64)
    padded = torch.full((batch, max(max(counts), 1)), -1, dtype=torch.int64)
    for row, count in enumerate(counts):
        if count:
            padded[row, :count] = torch.multinomial(frequency, count, replacement=False, generator=generator)
    return features, padded


def measure_rank(rank: int, world: int, config: dict) -> list[dict]:
    """This rank's rows of the CSV: for each mode, dtype and label count, the traffic of one counted
    forward+backward step (after an uncounted warm-up) and the step's own metrics."""
    rows = []
    for mode in config["modes"]:
        data_parallel = mode == "data_parallel"
        for dtype_name in config["dtypes"]:
            dtype = DTYPES[dtype_name]
            for labels in config["labels"]:
                batch, dim = config["batch"], config["dim"]
                features, padded = sample_batch(batch, dim, labels, dtype)
                if data_parallel:
                    own = slice(rank * batch // world, (rank + 1) * batch // world)
                    features, padded = features[own], padded[own]
                features.requires_grad_(True)  # an encoder's output: dE crosses ranks
                targets = st.SparseTargets.from_padded(padded, labels, pad=-1)
                head = sharded.ShardedLinearMultiLabelSoftMarginLoss(
                    dim, labels, data_parallel=data_parallel, dtype=dtype
                )
                head(features, targets).backward()  # warm-up: first-call costs stay out of the wall time
                features.grad = None
                head.zero_grad(set_to_none=True)
                dist.barrier()
                counter = CollectiveCounter()
                with counter.installed():
                    start = time.perf_counter()
                    head(features, targets).backward()
                    wall_ms = (time.perf_counter() - start) * 1e3
                key = dict(world=world, mode=mode, dtype=dtype_name, labels=labels, batch=batch, dim=dim)
                key["rank"] = rank
                for (collective, site), values in sorted(counter.traffic.items()):
                    for metric, value, unit in zip(
                        ("calls", "input_bytes", "output_bytes"), values, ("count", "B", "B"), strict=True
                    ):
                        rows.append(
                            {**key, "collective": collective, "site": site, "metric": metric}
                            | {"value": value, "unit": unit}
                        )
                peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
                for metric, value, unit in (
                    ("positives", targets.nnz, "count"),
                    ("wall_time", wall_ms, "ms"),
                    ("peak_rss", peak_rss_mib, "MiB"),
                ):
                    rows.append(
                        {
                            **key,
                            "collective": "step",
                            "site": "",
                            "metric": metric,
                            "value": value,
                            "unit": unit,
                        }
                    )
    return rows


def _rank_main(rank: int, world: int, port: int, config: dict, out_dir: str) -> None:
    # Ranks share the CPU: split its threads between them instead of oversubscribing it.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        rows = measure_rank(rank, world, config)
    finally:
        dist.destroy_process_group()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(rows))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(worlds: list[int], config: dict) -> pd.DataFrame:
    """Every rank's rows of every world size, one gloo group per world size."""
    rows = []
    for world in worlds:
        with tempfile.TemporaryDirectory() as out_dir:
            mp.spawn(_rank_main, args=(world, _free_port(), config, out_dir), nprocs=world, join=True)
            for rank in range(world):
                rows += json.loads(Path(out_dir, f"rank{rank}.json").read_text())
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------
# The formula
# --------------------------------------------------------------------------------------------------------


def expected_traffic(
    mode: str, world: int, batch: int, dim: int, element_bytes: int, positives_by_rank: list[int]
) -> Traffic:
    """What the design sends through each collective in one 'mean' step of one rank, for B = `batch` rows
    in all (B/W per rank with data_parallel), D = `dim`, features of `element_bytes` bytes:

    - agreement all-gather: in AGREEMENT_INTS int64, out W times that;
    - loss all-reduce: the fp32 share (4 bytes; 8 for float64);
    - replicated: dE all-reduce of B·D elements;
    - data_parallel: features all-gather, in (B/W)·D, out B·D elements; positives all-gather (2 calls),
      in (B/W) int64 row counts + n_max int64 ids, out B int64 + W·n_max int64 (n_max: the largest rank's
      positives, to which every rank pads); dE reduce-scatter, in B·D, out (B/W)·D elements.
    """
    agreement = AGREEMENT_INTS * INT64_BYTES
    loss = max(element_bytes, 4)
    traffic = {
        ("all_gather", "_agree"): (1, agreement, world * agreement),
        ("all_reduce", "_SumOverRanks.forward"): (1, loss, loss),
    }
    features = batch * dim * element_bytes
    if mode == "replicated":
        traffic["all_reduce", "_CopyToRanks.backward"] = (1, features, features)
        return traffic
    rows, padded = batch // world, max(positives_by_rank) * ID_BYTES
    traffic["all_gather", "_GatherRows.forward"] = (1, features // world, features)
    traffic["all_gather", "_gather_positives"] = (
        2,
        rows * INT64_BYTES + padded,
        batch * INT64_BYTES + world * padded,
    )
    traffic["reduce_scatter", "_GatherRows.backward"] = (1, features, features // world)
    return traffic


def payload_bytes(collective: str, input_bytes: int, output_bytes: int) -> int:
    """Size of the collective's whole tensor: a gather's output, a reduce-scatter's input, an all-reduce's."""
    return input_bytes if collective == "reduce_scatter" else output_bytes


def sent_bytes(collective: str, world: int, input_bytes: int, output_bytes: int) -> float:
    """Bytes a rank sends under a bandwidth-optimal (ring) algorithm: all-reduce 2(W−1)/W of the tensor,
    all-gather (W−1) times its input, reduce-scatter (W−1) times its output."""
    if collective == "all_reduce":
        return 2 * (world - 1) / world * input_bytes
    return (world - 1) * (output_bytes if collective == "reduce_scatter" else input_bytes)


# --------------------------------------------------------------------------------------------------------
# COMM.md from the CSV
# --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Step:
    """One rank's counted step, read back from the CSV."""

    world: int
    mode: str
    dtype: str
    labels: int
    batch: int
    dim: int
    rank: int
    traffic: Traffic
    positives: int
    wall_ms: float
    peak_rss_mib: float

    @property
    def case(self) -> tuple:
        return self.world, self.mode, self.dtype, self.labels, self.batch, self.dim

    def totals(self) -> tuple[int, float]:
        """(payload bytes, ring bytes sent) over all of this step's collectives."""
        payload = sum(payload_bytes(c, i, o) for (c, _), (_, i, o) in self.traffic.items())
        sent = sum(sent_bytes(c, self.world, i, o) for (c, _), (_, i, o) in self.traffic.items())
        return payload, sent


def read_steps(frame: pd.DataFrame) -> list[Step]:
    """The CSV's rows regrouped into one Step per (world, mode, dtype, labels, batch, dim, rank)."""
    steps = []
    keys = ["world", "mode", "dtype", "labels", "batch", "dim", "rank"]
    for key, rows in frame.groupby(keys, sort=True):
        step_rows = rows[rows["collective"] == "step"].set_index("metric")["value"]
        comm = rows[rows["collective"] != "step"]
        table = comm.pivot_table(
            index=["collective", "site"], columns="metric", values="value", aggfunc="sum"
        )
        traffic = {
            index: (int(row["calls"]), int(row["input_bytes"]), int(row["output_bytes"]))
            for index, row in table.iterrows()
        }
        step_values = dict(
            positives=int(step_rows["positives"]),
            wall_ms=float(step_rows["wall_time"]),
            peak_rss_mib=float(step_rows["peak_rss"]),
        )
        steps.append(Step(*key, traffic=traffic, **step_values))
    order = list(DTYPES)
    return sorted(steps, key=lambda s: (order.index(s.dtype), s.world, MODES.index(s.mode), s.labels, s.rank))


def formula_of(step: Step, steps: list[Step]) -> Traffic:
    positives = [other.positives for other in steps if other.case == step.case]
    return expected_traffic(
        step.mode, step.world, step.batch, step.dim, DTYPES[step.dtype].itemsize, positives
    )


def _bytes(value: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.0f} B"


def measured_section(steps: list[Step]) -> list[str]:
    """Table (a): rank 0's bytes per collective per step against L, the totals, and the formula check."""
    mismatches = [step for step in steps if step.traffic != formula_of(step, steps)]
    rank_spread = {
        case for case in {s.case for s in steps} if len({str(s.traffic) for s in steps if s.case == case}) > 1
    }
    sites = list(SITE_NAMES) + sorted({key for s in steps for key in s.traffic} - set(SITE_NAMES))
    names = [SITE_NAMES.get(site, "{}@{}".format(*site)) for site in sites]
    lines = [
        "## (a) Measured bytes per rank per step",
        "",
        "Each cell is the collective's whole tensor on rank 0 (a gather's output, a reduce-scatter's input, "
        "an all-reduce's tensor), summed over its calls; *sent* is what a bandwidth-optimal (ring) algorithm "
        "sends per rank for those tensors: all-reduce 2(W−1)/W of its tensor, all-gather (W−1)/W of its "
        "output, reduce-scatter (W−1)/W of its input. *positives* counts all ranks' positives.",
        "",
        "| dtype | W | mode | L | positives | " + " | ".join(names) + " | total | total ÷ (B·D·e) | sent |",
        "|---" * (len(names) + 8) + "|",
    ]
    for step in steps:
        if step.rank != 0:
            continue
        cells = []
        for site in sites:
            calls, input_bytes, output_bytes = step.traffic.get(site, (0, 0, 0))
            payload = payload_bytes(site[0], input_bytes, output_bytes)
            cells.append(f"{payload:,}" + (f" ({calls} calls)" if calls > 1 else "") if calls else "—")
        # replicated: every rank holds all B rows' positives; data_parallel: each its own rows'
        positives = (
            step.positives
            if step.mode == "replicated"
            else sum(s.positives for s in steps if s.case == step.case)
        )
        payload, sent = step.totals()
        element_bytes = DTYPES[step.dtype].itemsize
        lines.append(
            f"| {step.dtype} | {step.world} | {step.mode} | {step.labels:,} | "
            f"{positives:,} | " + " | ".join(cells) + f" | {payload:,} | "
            f"{payload / (step.batch * step.dim * element_bytes):.3f} | {sent:,.0f} |"
        )
    agreement = (
        f"**Formula check: all {len(steps)} rank-steps match exactly** — every collective's call count, "
        "input bytes and output bytes equal the formula below."
        if not mismatches
        else f"**Formula check: {len(mismatches)} of {len(steps)} rank-steps differ from the formula**: "
        + "; ".join(f"W={s.world} {s.mode} {s.dtype} L={s.labels} rank {s.rank}" for s in mismatches[:10])
    )
    lines += ["", agreement, ""]
    lines += [
        "Formula per rank and step, for B rows in all (B/W per rank in data_parallel), D features of e "
        "bytes, W ranks:",
        "",
        f"- agreement all-gather: in {AGREEMENT_INTS} int64 ({AGREEMENT_INTS * INT64_BYTES} B), out W times "
        "that (every call, both modes; the error message all-gather runs only when a rank's call is bad);",
        "- loss all-reduce: the fp32 share of the loss, 4 B;",
        "- replicated: dE all-reduce of B·D·e bytes;",
        f"- data_parallel: features all-gather B·D·e (in B·D·e/W); positives all-gather B·{INT64_BYTES} "
        f"(row counts) + W·n_max·{ID_BYTES} (label ids padded to the largest rank's count n_max) in two "
        "calls; dE reduce-scatter B·D·e (out B·D·e/W).",
        "",
    ]
    by_mode = defaultdict(set)
    for step in steps:
        by_mode[step.world, step.mode, step.dtype].add((step.labels, step.totals()[0]))
    constant = [key for key, pairs in by_mode.items() if len({total for _, total in pairs}) == 1]
    labels = sorted({step.labels for step in steps})
    lines.append(
        f"**Against L**: the total is the same for every L in {{{', '.join(f'{x:,}' for x in labels)}}} in "
        f"{len(constant)} of the {len(by_mode)} (W, mode, dtype) series"
        + (
            "; it is O(B·D) (+ O(nnz) for the positives), independent of L."
            if len(constant) == len(by_mode)
            else f"; differing: {sorted(set(by_mode) - set(constant))}."
        )
    )
    lines.append(
        "Every rank moved the same bytes as rank 0 in every step."
        if not rank_spread
        else f"Ranks differ from rank 0 in: {sorted(rank_spread)}."
    )
    lines += [
        "",
        "Wall time of the counted step (slowest rank) and the rank processes' peak RSS so far (largest "
        "rank; it includes torch itself and only grows) — CPU, informative:",
        "",
    ]
    lines += ["| dtype | W | mode | L | step (ms) | peak RSS (MiB) |", "|---|---|---|---|---|---|"]
    for step in steps:
        if step.rank == 0:
            ranks = [s for s in steps if s.case == step.case]
            wall, rss = max(s.wall_ms for s in ranks), max(s.peak_rss_mib for s in ranks)
            lines.append(
                f"| {step.dtype} | {step.world} | {step.mode} | {step.labels:,} | {wall:.1f} | {rss:.0f} |"
            )
    return [*lines, ""]


def memory_rows(target: dict) -> list[tuple[str, str, int, int, int]]:
    """(item, formula, bytes on one GPU unsharded, per rank replicated, per rank data_parallel) of the
    classifier's training state and the loss's buffers, assuming mixed precision: bf16 weights and
    gradients, fp32 master copy and AdamW moments."""
    labels, dim, world, batch = target["labels"], target["dim"], target["world"], target["batch"]
    element = DTYPES[target["dtype"]].itemsize
    start, stop = sharded.shard_range(labels, world, 0)  # rank 0 holds the largest shard
    full, shard = labels * (dim + 1), (stop - start) * (dim + 1)  # weight and bias entries

    def scratch(shard_labels: int) -> int:
        return chunk_labels(batch, shard_labels, element) * batch * element

    features, own = batch * dim * element, batch // world * dim * element
    return [
        ("classifier weight + bias (bf16)", "L·(D+1)·2", full * 2, shard * 2, shard * 2),
        ("their gradients (bf16)", "L·(D+1)·2", full * 2, shard * 2, shard * 2),
        ("fp32 master copy", "L·(D+1)·4", full * 4, shard * 4, shard * 4),
        ("AdamW exp_avg + exp_avg_sq (fp32)", "L·(D+1)·8", full * 8, shard * 8, shard * 8),
        ("loss scratch G (bf16)", "B·chunk·2", scratch(labels), scratch(stop - start), scratch(stop - start)),
        (
            "dE: fp32 accumulator + bf16 result",
            "B·D·(4+2)",
            batch * dim * 6,
            batch * dim * 6,
            batch * dim * 6,
        ),
        ("features (DP: own rows + gathered)", "B·D·2 (DP: (B/W+B)·D·2)", features, features, own + features),
        ("own rows' dE after the reduce-scatter", "(B/W)·D·2", 0, 0, own),
    ]


def target_section(steps: list[Step]) -> list[str]:
    """Section (b): memory per rank at the target deployment, and its communication from the formula."""
    labels, dim, world, batch = (TARGET[k] for k in ("labels", "dim", "world", "batch"))
    element = DTYPES[TARGET["dtype"]].itemsize
    start, stop = sharded.shard_range(labels, world, 0)
    rows = memory_rows(TARGET)
    budget = os.environ.get(SCRATCH_ENV_VAR)
    chunk = chunk_labels(batch, stop - start, element)
    lines = [
        f"## (b) What this implies for L = {labels:,}, D = {dim}, B = {batch}, {world} GPUs",
        "",
        f"Per-rank memory of the classifier and the loss, computed from the design (not measured on a GPU): "
        f"rank 0 holds labels [{start:,}, {stop:,}) ({stop - start:,} labels). Assumed mixed precision: bf16 "
        "weights and gradients (the operands of the GEMMs), an fp32 master copy and fp32 AdamW moments (16 "
        "bytes per parameter). The loss's scratch G is the package's `chunk_labels` at "
        f"{SCRATCH_ENV_VAR}={budget or 'unset (default)'}: {chunk:,} labels × B rows × 2 B. The encoder's "
        "activations and short-lived B·D temporaries are not counted.",
        "",
        f"| item | formula | 1 GPU, unsharded | per rank, {world} GPUs, replicated | per rank, {world} GPUs, "
        "data_parallel |",
        "|---|---|---|---|---|",
    ]
    for item, formula, *sizes in rows:
        lines.append(
            f"| {item} | {formula} | " + " | ".join(_bytes(size) if size else "—" for size in sizes) + " |"
        )
    totals = [sum(row[i] for row in rows) for i in (2, 3, 4)]
    lines.append("| **total** | | " + " | ".join(f"**{_bytes(total)}**" for total in totals) + " |")
    # Plain torch.optim.AdamW on bf16 parameters keeps its moments in bf16 and no master copy.
    master, moments = rows[2], rows[3]
    plain = [total - master[i] - moments[i] // 2 for total, i in zip(totals, (2, 3, 4), strict=True)]
    lines += [
        "",
        "With plain `torch.optim.AdamW` on bf16 parameters (bf16 moments, no master copy: 8 instead of 16 "
        f"bytes per parameter) the totals are {', '.join(_bytes(p) for p in plain)}.",
        "",
    ]
    matched = all(step.traffic == formula_of(step, steps) for step in steps)
    bf16_checked = sum(step.dtype == TARGET["dtype"] for step in steps)
    per_rank_positives = round(POSITIVES_PER_ROW * batch / world)
    lines += [
        f"Communication per rank per step at B = {batch}, D = {dim}, W = {world}, bf16 features: "
        "extrapolated from the formula of (a), which "
        + (
            f"the measurements confirm exactly ({len(steps)} rank-steps, {bf16_checked} of them in bf16, "
            f"W ∈ {{{', '.join(str(w) for w in sorted({s.world for s in steps}))}}})"
            if matched
            else "the measurements did NOT all confirm (see (a))"
        )
        + f", with {POSITIVES_PER_ROW} positives per row ({per_rank_positives:,} per rank, equal ranks: "
        "no padding).",
        "",
        "| mode | collective | tensor | sent per rank (ring) |",
        "|---|---|---|---|",
    ]
    for mode in MODES:
        traffic = expected_traffic(mode, world, batch, dim, element, [per_rank_positives] * world)
        total_payload = total_sent = 0.0
        for (collective, site), (_, input_bytes, output_bytes) in traffic.items():
            payload = payload_bytes(collective, input_bytes, output_bytes)
            sent = sent_bytes(collective, world, input_bytes, output_bytes)
            total_payload, total_sent = total_payload + payload, total_sent + sent
            lines.append(f"| {mode} | {SITE_NAMES[collective, site]} | {_bytes(payload)} | {_bytes(sent)} |")
        lines.append(f"| {mode} | **total** | **{_bytes(total_payload)}** | **{_bytes(total_sent)}** |")
    gradient = labels * (dim + 1) * element
    lines += [
        "",
        f"For comparison, a classifier replicated on every GPU (plain DDP) would all-reduce its gradient, "
        f"L·(D+1)·2 = {_bytes(gradient)}, sending "
        f"{_bytes(sent_bytes('all_reduce', world, gradient, gradient))} per rank per step, and hold the "
        "unsharded column above on every GPU.",
        "",
    ]
    return lines


def write_report(csv_path: Path, report_path: Path) -> None:
    """COMM.md from the CSV alone: every number in it is read from the CSV or computed from the formulas."""
    text_columns = ("machine", "torch_version", "package_version", "git_commit", "timestamp", "command")
    frame = pd.read_csv(csv_path, keep_default_na=False, dtype=dict.fromkeys(text_columns, str))
    steps = read_steps(frame)
    meta = frame.iloc[0]
    first = steps[0]
    lines = [
        "# Communication volume of the label-sharded loss (gloo, CPU)",
        "",
        f"Generated by `bench/distributed_comm.py` from `{csv_path.name}`; no number here is typed by hand.",
        "",
        f"- machine: {meta['machine']}, torch.distributed gloo backend on CPU, no GPU",
        f"- torch {meta['torch_version']}, softmargin-triton {meta['package_version']}, "
        f"commit {meta['git_commit']}, {meta['timestamp']}",
        f"- command: `{meta['command']}`",
        f"- step: one forward+backward of `ShardedLinearMultiLabelSoftMarginLoss` (reduction 'mean', bias, "
        f"features that require grad, SparseTargets with Poisson({POSITIVES_PER_ROW}) positives per row from "
        f"Zipf(1) label frequencies) at B = {first.batch} rows, D = {first.dim}, counted after one warm-up "
        "step. replicated: every rank passes the B rows; data_parallel: each rank passes B/W of them — both "
        "score the same B rows against all L labels.",
        "",
    ]
    lines += measured_section(steps)
    lines += target_section(steps)
    report_path.write_text("\n".join(lines))


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True, check=True
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for distributed_comm.csv and COMM.md")
    parser.add_argument("--worlds", type=int, nargs="+", default=[2, 4], help="world sizes (gloo ranks)")
    parser.add_argument("--labels", type=int, nargs="+", default=[2**12, 2**14, 2**16], help="label counts L")
    parser.add_argument("--batch", type=int, default=256, help="B: rows per step in all, on all ranks")
    parser.add_argument("--dim", type=int, default=64, help="D: feature dimension")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    args = parser.parse_args(argv)
    if "data_parallel" in args.modes and any(args.batch % world for world in args.worlds):
        parser.error(f"data_parallel splits B={args.batch} rows evenly: B must be a multiple of every world")

    config = dict(modes=args.modes, dtypes=args.dtypes, labels=args.labels, batch=args.batch, dim=args.dim)
    start = time.perf_counter()
    frame = measure(args.worlds, config)
    command = shlex.join(["python", "bench/distributed_comm.py", *(sys.argv[1:] if argv is None else argv)])
    frame = frame.assign(
        machine=cpu_model(),
        torch_version=torch.__version__,
        package_version=st.__version__,
        git_commit=git_commit(),
        timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        command=command,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path = args.out / "distributed_comm.csv"
    frame.to_csv(csv_path, index=False)
    write_report(csv_path, args.out / "COMM.md")
    print(f"wrote {len(frame)} rows to {csv_path} and COMM.md in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
