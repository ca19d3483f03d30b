"""Bytes each rank moves per step in the label-sharded fused linear loss, measured on gloo (CPU) groups.

    python bench/distributed_comm.py --out DIR [--worlds 2 4] [--labels 4096 16384 65536] [--batch 256]
        [--dim 64] [--dtypes fp32 bf16] [--modes replicated data_parallel]

For each world size W one gloo group is spawned on CPU (torch.multiprocessing). In it, for each mode, dtype
and label count L, every rank runs one uncounted warm-up step and then one counted forward+backward step of
`ShardedLinearMultiLabelSoftMarginLoss` (reduction 'mean', features that require grad, SparseTargets with
Poisson(5.45) distinct positives per row drawn from Zipf(1) label frequencies). Both modes score the same B
rows against all L labels: `replicated` passes the B rows on every rank, `data_parallel` passes B/W rows per
rank. The positives' counts are drawn before their labels, so every L gets the same number of positives.

The loss makes its collective calls through a `softmargin_triton.distributed.Collectives`, each naming its
site (agreement, loss, features, positives, dE); for the counted step the loss's group is a
`CollectiveCounter`, the subclass that records per (collective, site) the calls and the bytes of their input
and output tensors (`all_gather_object`: pickled sizes).

Writes to --out:
- distributed_comm.csv: long format, one row per (world, mode, dtype, labels, batch, dim, rank, collective,
  site, metric) with value and unit; metrics calls / input_bytes / output_bytes per collective, and per
  step (collective "step") the rank's positives, the step's wall time (CPU, informative only) and the
  rank's peak RSS so far; plus CPU model, torch and package versions, git commit, timestamp and command.
- COMM.md, bench/COMM.template.md filled from the CSV: the measured bytes against the formula (checked
  exactly), and the per-rank memory and communication this implies for L = 3,000,000 labels, D = 768,
  B = 8192 on 8 GPUs.
"""

import argparse
import dataclasses
import datetime
import json
import os
import pickle
import resource
import shlex
import socket
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
import torch.distributed.nn  # before any process group exists: see the note below
import torch.multiprocessing as mp
from timing import cpu_model, git_commit, zipf_padded  # bench/timing.py, beside this script

import softmargin_triton as st
import softmargin_triton.distributed as sharded
from softmargin_triton.distributed import Collectives
from softmargin_triton.linear_soft_margin import SCRATCH_ENV_VAR, chunk_labels

TEMPLATE = Path(__file__).with_name("COMM.template.md")
MODES = ("replicated", "data_parallel")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
POSITIVES_PER_ROW = 5.45  # Amazon-670K's average
# The formula's constants: the agreement step gathers an error flag and the call's fields per rank, as
# int64; the positives travel as int64 row counts and int64 label ids.
AGREEMENT_INTS, INT64_BYTES, ID_BYTES = 1 + len(sharded.CALL_FIELDS), 8, 8
# (collective, site) in the order of the tables' columns
SITES = [
    ("all_gather", "agreement"),
    ("all_reduce", "loss"),
    ("all_reduce", "dE"),
    ("all_gather", "features"),
    ("all_gather", "positives"),
    ("reduce_scatter", "dE"),
]
# The deployment the report sizes: labels, features, ranks, global batch, parameter dtype.
TARGET = {"labels": 3_000_000, "dim": 768, "world": 8, "batch": 8192, "dtype": "bf16"}
Traffic = dict[tuple[str, str], tuple[int, int, int]]  # (collective, site) → (calls, input, output bytes)
# Note: torch.distributed.nn is imported above, in every rank before its process group exists, because its
# functions take `group=group.WORLD` as default arguments, evaluated at import. Imported later — torch._dynamo
# imports it, on the fused loss's first call — they hold the live group past destroy_process_group; it is
# then torn down at interpreter exit, where gloo's threads abort the rank now and then (SIGABRT).


def site_name(collective: str, site: str) -> str:
    return f"{site} {collective.replace('_', '-')}"


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class CollectiveCounter(Collectives):
    """The sharded loss's collectives over the default group, counting the calls, input bytes and output
    bytes per (collective, site) in `traffic`."""

    def __init__(self) -> None:
        super().__init__()
        self.traffic: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])

    def _record(self, collective: str, site: str, input_bytes: int, output_bytes: int) -> None:
        entry = self.traffic[collective, site]
        entry[0], entry[1], entry[2] = entry[0] + 1, entry[1] + input_bytes, entry[2] + output_bytes

    def all_reduce(self, tensor: torch.Tensor, site: str) -> torch.Tensor:
        self._record("all_reduce", site, _nbytes(tensor), _nbytes(tensor))
        return super().all_reduce(tensor, site)

    def all_gather_rows(self, input: torch.Tensor, site: str) -> torch.Tensor:
        out = super().all_gather_rows(input, site)
        self._record("all_gather", site, _nbytes(input), _nbytes(out))
        return out

    def reduce_scatter_rows(self, input: torch.Tensor, site: str) -> torch.Tensor:
        out = super().reduce_scatter_rows(input, site)
        self._record("reduce_scatter", site, _nbytes(input), _nbytes(out))
        return out

    def all_gather_object(self, obj: object, site: str) -> list:
        objects = super().all_gather_object(obj, site)
        gathered = sum(len(pickle.dumps(item)) for item in objects)
        self._record("all_gather_object", site, len(pickle.dumps(obj)), gathered)
        return objects


# --------------------------------------------------------------------------------------------------------
# The ranks
# --------------------------------------------------------------------------------------------------------


def sample_batch(batch: int, dim: int, labels: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The same batch on every rank: features (batch, dim) and positives as (batch, K) label ids padded
    with -1, Poisson(5.45) distinct ones per row from Zipf(1) label frequencies (bench/timing.py's
    sampler). Counts and features come first from the generator, so every label count gets the same
    positives per row."""
    generator = torch.Generator().manual_seed(0)
    counts = torch.poisson(torch.full((batch,), POSITIVES_PER_ROW), generator=generator).long()
    features = torch.randn(batch, dim, generator=generator).to(dtype)
    return features, zipf_padded(counts, labels, generator=generator)


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
                head.group = counter = CollectiveCounter()  # the default group, its calls counted
                start = time.perf_counter()
                head(features, targets).backward()
                wall_ms = (time.perf_counter() - start) * 1e3
                key = dict(world=world, mode=mode, dtype=dtype_name, labels=labels, batch=batch, dim=dim)
                measured = [
                    (collective, site, metric, value, unit)
                    for (collective, site), values in sorted(counter.traffic.items())
                    for metric, value, unit in zip(
                        ("calls", "input_bytes", "output_bytes"), values, ("count", "B", "B"), strict=True
                    )
                ]
                peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
                measured += [
                    ("step", "", "positives", targets.nnz, "count"),
                    ("step", "", "wall_time", wall_ms, "ms"),
                    ("step", "", "peak_rss", peak_rss_mib, "MiB"),
                ]
                columns = ("collective", "site", "metric", "value", "unit")
                rows += [{**key, "rank": rank, **dict(zip(columns, row, strict=True))} for row in measured]
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
        ("all_gather", "agreement"): (1, agreement, world * agreement),
        ("all_reduce", "loss"): (1, loss, loss),
    }
    features = batch * dim * element_bytes
    if mode == "replicated":
        traffic["all_reduce", "dE"] = (1, features, features)
        return traffic
    rows, padded = batch // world, max(positives_by_rank) * ID_BYTES
    traffic["all_gather", "features"] = (1, features // world, features)
    traffic["all_gather", "positives"] = (
        2,
        rows * INT64_BYTES + padded,
        batch * INT64_BYTES + world * padded,
    )
    traffic["reduce_scatter", "dE"] = (1, features, features // world)
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
    for key, rows in frame.groupby(["world", "mode", "dtype", "labels", "batch", "dim", "rank"], sort=True):
        comm = rows[rows["collective"] != "step"]
        table = comm.pivot_table(
            index=["collective", "site"], columns="metric", values="value", aggfunc="sum"
        )
        traffic = {
            index: (int(row["calls"]), int(row["input_bytes"]), int(row["output_bytes"]))
            for index, row in table.iterrows()
        }
        positives = rows[(rows["collective"] == "step") & (rows["metric"] == "positives")]["value"]
        steps.append(Step(*key, traffic=traffic, positives=int(positives.iloc[0])))
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


def _table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


def measured(steps: list[Step]) -> dict[str, str]:
    """Section (a)'s fields: rank 0's bytes per collective per step, the formula check, L and the ranks."""
    mismatches = [step for step in steps if step.traffic != formula_of(step, steps)]
    sites = SITES + sorted({key for s in steps for key in s.traffic} - set(SITES))
    rows = []
    for step in (s for s in steps if s.rank == 0):
        cells = []
        for site in sites:
            calls, input_bytes, output_bytes = step.traffic.get(site, (0, 0, 0))
            payload = payload_bytes(site[0], input_bytes, output_bytes)
            cells.append(f"{payload:,}" + (f" ({calls} calls)" if calls > 1 else "") if calls else "—")
        # replicated: every rank holds all B rows' positives; data_parallel: each its own rows'
        case = [s for s in steps if s.case == step.case]
        positives = step.positives if step.mode == "replicated" else sum(s.positives for s in case)
        payload, sent = step.totals()
        ratio = payload / (step.batch * step.dim * DTYPES[step.dtype].itemsize)
        key = [step.dtype, step.world, step.mode, f"{step.labels:,}", f"{positives:,}"]
        rows.append(key + cells + [f"{payload:,}", f"{ratio:.3f}", f"{sent:,.0f}"])
    header = ["dtype", "W", "mode", "L", "positives", *(site_name(*site) for site in sites)]
    by_series = defaultdict(set)
    for step in steps:
        by_series[step.world, step.mode, step.dtype].add(step.totals()[0])
    varying = sorted(key for key, totals in by_series.items() if len(totals) > 1)
    labels = ", ".join(f"{x:,}" for x in sorted({step.labels for step in steps}))
    spread = sorted(
        c for c in {s.case for s in steps} if len({str(s.traffic) for s in steps if s.case == c}) > 1
    )
    return {
        "measured_table": _table([*header, "total", "total ÷ (B·D·e)", "sent"], rows),
        "formula_check": (
            f"**Formula check: all {len(steps)} rank-steps match exactly** — every collective's call count, "
            "input bytes and output bytes equal the formula below."
            if not mismatches
            else f"**Formula check: {len(mismatches)} of {len(steps)} rank-steps differ from the formula**: "
            + "; ".join(f"W={s.world} {s.mode} {s.dtype} L={s.labels} rank {s.rank}" for s in mismatches[:10])
        ),
        "against_labels": f"the total is the same for every L in {{{labels}}} in "
        f"{len(by_series) - len(varying)} of the {len(by_series)} (W, mode, dtype) series"
        + (
            "; it is O(B·D) (+ O(nnz) for the positives), independent of L."
            if not varying
            else f"; differing: {varying}."
        ),
        "ranks_agree": "Every rank moved the same bytes as rank 0 in every step."
        if not spread
        else f"Ranks differ from rank 0 in: {spread}.",
    }


def memory_rows(target: dict) -> list[tuple[str, str, int, int, int]]:
    """(item, formula, bytes on one GPU unsharded, per rank replicated, per rank data_parallel) of the
    classifier's training state and the loss's buffers, assuming mixed precision: bf16 weights and
    gradients, fp32 master copy and AdamW moments."""
    labels, dim, world, batch = target["labels"], target["dim"], target["world"], target["batch"]
    element = DTYPES[target["dtype"]].itemsize
    start, stop = sharded.shard_range(labels, world, 0)  # rank 0 holds the largest shard
    full, shard = labels * (dim + 1), (stop - start) * (dim + 1)  # weight and bias entries
    scratch, shard_scratch = (
        chunk_labels(batch, n, element) * batch * element for n in (labels, stop - start)
    )
    features, own = batch * dim * element, batch // world * dim * element
    return [
        ("classifier weight + bias (bf16)", "L·(D+1)·2", full * 2, shard * 2, shard * 2),
        ("their gradients (bf16)", "L·(D+1)·2", full * 2, shard * 2, shard * 2),
        ("fp32 master copy", "L·(D+1)·4", full * 4, shard * 4, shard * 4),
        ("AdamW exp_avg + exp_avg_sq (fp32)", "L·(D+1)·8", full * 8, shard * 8, shard * 8),
        ("loss scratch G (bf16)", "B·chunk·2", scratch, shard_scratch, shard_scratch),
        ("dE: fp32 accumulator + bf16 result", "B·D·(4+2)", *[batch * dim * 6] * 3),
        ("features (DP: own rows + gathered)", "B·D·2 (DP: (B/W+B)·D·2)", features, features, own + features),
        ("own rows' dE after the reduce-scatter", "(B/W)·D·2", 0, 0, own),
    ]


def target(steps: list[Step]) -> dict[str, str]:
    """Section (b)'s fields: memory per rank at the target deployment, its communication from the formula."""
    labels, dim, world, batch = (TARGET[k] for k in ("labels", "dim", "world", "batch"))
    element = DTYPES[TARGET["dtype"]].itemsize
    start, stop = sharded.shard_range(labels, world, 0)
    rows = memory_rows(TARGET)
    totals = [sum(row[i] for row in rows) for i in (2, 3, 4)]
    memory = [
        [item, formula, *(_bytes(size) if size else "—" for size in sizes)] for item, formula, *sizes in rows
    ]
    memory.append(["**total**", "", *(f"**{_bytes(total)}**" for total in totals)])
    # Plain torch.optim.AdamW on bf16 parameters keeps its moments in bf16 and no master copy.
    plain = [total - rows[2][i] - rows[3][i] // 2 for total, i in zip(totals, (2, 3, 4), strict=True)]
    rank_positives = round(POSITIVES_PER_ROW * batch / world)
    communication = []
    for mode in MODES:
        total_payload = total_sent = 0.0
        traffic = expected_traffic(mode, world, batch, dim, element, [rank_positives] * world)
        for (collective, site), (_, input_bytes, output_bytes) in traffic.items():
            payload = payload_bytes(collective, input_bytes, output_bytes)
            sent = sent_bytes(collective, world, input_bytes, output_bytes)
            total_payload, total_sent = total_payload + payload, total_sent + sent
            communication.append([mode, site_name(collective, site), _bytes(payload), _bytes(sent)])
        communication.append([mode, "**total**", f"**{_bytes(total_payload)}**", f"**{_bytes(total_sent)}**"])
    matched = all(step.traffic == formula_of(step, steps) for step in steps)
    worlds = ", ".join(str(w) for w in sorted({s.world for s in steps}))
    bf16 = sum(step.dtype == TARGET["dtype"] for step in steps)
    gradient = labels * (dim + 1) * element
    budget = os.environ.get(SCRATCH_ENV_VAR)
    header = ["item", "formula", "1 GPU, unsharded"]
    header += [f"per rank, {world} GPUs, replicated", f"per rank, {world} GPUs, data_parallel"]
    return {
        "target_labels": f"{labels:,}",
        "target_dim": str(dim),
        "target_batch": str(batch),
        "target_world": str(world),
        "shard_start": f"{start:,}",
        "shard_stop": f"{stop:,}",
        "shard_labels": f"{stop - start:,}",
        "scratch_setting": f"{SCRATCH_ENV_VAR}={budget or 'unset (default)'}",
        "chunk": f"{chunk_labels(batch, stop - start, element):,}",
        "memory_table": _table(header, memory),
        "plain_adamw_totals": ", ".join(_bytes(p) for p in plain),
        "confirmation": f"the measurements confirm exactly ({len(steps)} rank-steps, {bf16} of them in bf16, "
        f"W ∈ {{{worlds}}})"
        if matched
        else "the measurements did NOT all confirm (see (a))",
        "rank_positives": f"{rank_positives:,}",
        "communication_table": _table(
            ["mode", "collective", "tensor", "sent per rank (ring)"], communication
        ),
        "ddp_gradient": _bytes(gradient),
        "ddp_sent": _bytes(sent_bytes("all_reduce", world, gradient, gradient)),
    }


def write_report(csv_path: Path, report_path: Path) -> None:
    """COMM.md: the template filled from the CSV and the formulas."""
    text_columns = ("machine", "torch_version", "package_version", "git_commit", "timestamp", "command")
    frame = pd.read_csv(csv_path, keep_default_na=False, dtype=dict.fromkeys(text_columns, str))
    steps = read_steps(frame)
    fields = {column: frame.iloc[0][column] for column in text_columns}
    fields |= dict(positives_per_row=POSITIVES_PER_ROW, batch=steps[0].batch, dim=steps[0].dim)
    fields |= dict(agreement_ints=AGREEMENT_INTS, agreement_bytes=AGREEMENT_INTS * INT64_BYTES)
    report_path.write_text(TEMPLATE.read_text().format_map(fields | measured(steps) | target(steps)))


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------


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
