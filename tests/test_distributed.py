"""The label-sharded fused linear loss on 2 and 3 gloo processes against the single-process loss.

Each test spawns its ranks once (`torch.multiprocessing`, CPU, gloo) and runs every check inside them; a
failing assertion on any rank fails the test with that rank's traceback. Collectives time out after a
minute, so a rank left waiting fails the test instead of hanging it.
"""

import datetime
import itertools
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import softmargin_triton as st
from softmargin_triton.distributed import (
    ShardedLinearMultiLabelSoftMarginLoss,
    shard_range,
    sharded_linear_multilabel_soft_margin_loss,
)

ROWS, DIM, LABELS = 6, 5, 37
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5}
# (backend, dtype): the plain-torch path in float64, the Triton kernels (interpreted on CPU) in float32.
PATHS = (("torch", torch.float64), ("triton", torch.float32))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(worker, world: int) -> None:
    # The ranks compute on CPU tensors over gloo, where the Triton path is Triton's interpreter, on a CUDA
    # machine too (whose test process leaves the interpreter off): the children inherit the switch.
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        mp.spawn(_run_rank, args=(world, _free_port(), worker), nprocs=world, join=True)
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


def _run_rank(rank: int, world: int, port: int, worker) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        worker(rank, world)
    finally:
        dist.destroy_process_group()


def _assert_close(actual, expected, dtype, what):
    tol = TOLERANCE[dtype]
    scale = max(expected.abs().max().item(), 1e-30) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale, msg=lambda m: f"{what}: {m}")


def _problem(dtype: torch.dtype, rows: int, seed: int):
    """The same random problem on every rank: features, classifier, bias, positives (0 to 5 per row, some
    rows empty), per-label and per-(row, label) weights, a grad_output per reduction."""
    g = torch.Generator().manual_seed(seed)
    input = torch.randn(rows, DIM, generator=g, dtype=torch.float64)
    weight = torch.randn(LABELS, DIM, generator=g, dtype=torch.float64) * (2 / DIM**0.5)
    bias = torch.randn(LABELS, generator=g, dtype=torch.float64)
    counts = torch.randint(0, 6, (rows,), generator=g).tolist()
    lists = [torch.randperm(LABELS, generator=g)[:count].tolist() for count in counts]
    label_weight = torch.rand(LABELS, generator=g, dtype=torch.float64) + 0.5
    pos_weight = torch.rand(rows, LABELS, generator=g, dtype=torch.float64) + 0.5
    grad_rows = torch.randn(rows, generator=g, dtype=torch.float64)
    grad_scalar = torch.randn((), generator=g, dtype=torch.float64)
    cast = [t.to(dtype) for t in (input, weight, bias, label_weight, pos_weight, grad_rows, grad_scalar)]
    return lists, *cast


def _loss_and_grads(loss_fn, input, weight, target, bias, grad_output, **kwargs):
    """(loss, d/d input, d/d weight, d/d bias) of loss_fn(input, weight, target, bias, **kwargs)."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (input, weight, bias)]
    loss = loss_fn(leaves[0], leaves[1], target, leaves[2], **kwargs)
    return (loss.detach(), *torch.autograd.grad(loss, leaves, grad_output))


def _layouts(world: int) -> list[list[int]]:
    """Label counts per rank: the even split, and an uneven one with an empty shard where world > 2."""
    even = [stop - start for start, stop in (shard_range(LABELS, world, rank) for rank in range(world))]
    uneven = [30, 7] if world == 2 else [0, 30, 7]
    return [even, uneven]


def _check_replicated(rank: int, world: int) -> None:
    """Every rank passes the whole batch: loss and dE equal the single-process ones, dW/db its rows."""
    case = 0
    for backend, dtype in PATHS:
        with st.use_backend(backend):
            for reduction in ("none", "mean", "sum"):
                for sparse in (True, False):
                    for weighted in (False, True):
                        case += 1
                        sizes = _layouts(world)[case % 2]
                        start = sum(sizes[:rank])
                        stop = start + sizes[rank]
                        lists, input, weight, bias, label_weight, pos_weight, grad_rows, grad_scalar = (
                            _problem(dtype, ROWS, seed=case)
                        )
                        targets = st.SparseTargets.from_lists(lists, LABELS)
                        target = targets if sparse else targets.to_dense(torch.uint8)
                        # weighted cases smooth the labels too (ε as the ranks must agree on it)
                        weights = (
                            dict(label_weight=label_weight, pos_weight=pos_weight, label_smoothing=0.1)
                            if weighted
                            else {}
                        )
                        grad_output = grad_rows if reduction == "none" else grad_scalar
                        expected = _loss_and_grads(
                            st.linear_multilabel_soft_margin_loss,
                            input,
                            weight,
                            target,
                            bias,
                            grad_output,
                            reduction=reduction,
                            **weights,
                        )
                        actual = _loss_and_grads(
                            sharded_linear_multilabel_soft_margin_loss,
                            input,
                            weight[start:stop],
                            target,
                            bias[start:stop],
                            grad_output,
                            label_start=start,
                            num_labels=LABELS,
                            reduction=reduction,
                            **weights,
                        )
                        what = f"rank {rank}, {backend}, {reduction}, sparse={sparse}, weighted={weighted}"
                        _assert_close(actual[0], expected[0], dtype, f"loss ({what})")
                        _assert_close(actual[1], expected[1], dtype, f"dE ({what})")
                        _assert_close(actual[2], expected[2][start:stop], dtype, f"dW ({what})")
                        _assert_close(actual[3], expected[3][start:stop], dtype, f"db ({what})")


def _check_data_parallel(rank: int, world: int) -> None:
    """Each rank passes its own rows: the loss is that of all ranks' rows; dE is this rank's rows' part of
    the single-process dE, dW/db this rank's labels' part."""
    rows = 3
    for backend, dtype in PATHS:
        with st.use_backend(backend):
            for case, reduction in enumerate(("none", "mean", "sum")):
                sizes = _layouts(world)[case % 2]
                start = sum(sizes[:rank])
                stop = start + sizes[rank]
                lists, input, weight, bias, label_weight, _, grad_rows, grad_scalar = _problem(
                    dtype, rows * world, seed=100 + case
                )
                pos_weight = torch.linspace(0.5, 2.0, LABELS, dtype=dtype)
                own = slice(rank * rows, (rank + 1) * rows)
                weights = dict(label_weight=label_weight[None], pos_weight=pos_weight)
                weights["label_smoothing"] = 0.1 * case  # none for 'none', smoothed for 'mean' and 'sum'
                grad_output = grad_rows if reduction == "none" else grad_scalar
                expected = _loss_and_grads(
                    st.linear_multilabel_soft_margin_loss,
                    input,
                    weight,
                    st.SparseTargets.from_lists(lists, LABELS),
                    bias,
                    grad_output,
                    reduction=reduction,
                    **weights,
                )
                actual = _loss_and_grads(
                    sharded_linear_multilabel_soft_margin_loss,
                    input[own],
                    weight[start:stop],
                    st.SparseTargets.from_lists(lists[own], LABELS),
                    bias[start:stop],
                    grad_output[own] if reduction == "none" else grad_output,
                    label_start=start,
                    num_labels=LABELS,
                    reduction=reduction,
                    data_parallel=True,
                    **weights,
                )
                what = f"rank {rank}, {backend}, data_parallel, {reduction}"
                expected_loss = expected[0][own] if reduction == "none" else expected[0]
                _assert_close(actual[0], expected_loss, dtype, f"loss ({what})")
                _assert_close(actual[1], expected[1][own], dtype, f"dE ({what})")
                _assert_close(actual[2], expected[2][start:stop], dtype, f"dW ({what})")
                _assert_close(actual[3], expected[3][start:stop], dtype, f"db ({what})")


def _check_module(rank: int, world: int) -> None:
    """The module's shard is its even split; its loss and its global top-k (also with shards smaller than
    k, and per-rank batches) equal the single-process module's over the same classifier."""
    torch.manual_seed(0)  # the same classifier on every rank
    full = st.LinearMultiLabelSoftMarginLoss(DIM, LABELS, dtype=torch.float64)
    lists, input = _problem(torch.float64, ROWS, seed=7)[:2]
    targets = st.SparseTargets.from_lists(lists, LABELS)
    for data_parallel in (False, True):
        sharded = ShardedLinearMultiLabelSoftMarginLoss(
            DIM, LABELS, data_parallel=data_parallel, dtype=torch.float64
        )
        start, stop = shard_range(LABELS, world, rank)
        assert (sharded.label_start, sharded.label_stop) == (start, stop)
        assert sharded.weight.shape == (stop - start, DIM)
        bound = 1 / DIM**0.5  # nn.Linear's initialization bound
        assert 0 < sharded.weight.abs().max() <= bound and sharded.bias.abs().max() <= bound
        with torch.no_grad():
            sharded.weight.copy_(full.weight[start:stop])
            sharded.bias.copy_(full.bias[start:stop])
        own = slice(rank * 2, rank * 2 + 2) if data_parallel else slice(None)
        rows_input = input[: 2 * world][own] if data_parallel else input
        rows_targets = lists[: 2 * world][own] if data_parallel else lists
        reference_input = input[: 2 * world] if data_parallel else input
        reference_targets = (
            st.SparseTargets.from_lists(lists[: 2 * world], LABELS) if data_parallel else targets
        )
        loss = sharded(rows_input, st.SparseTargets.from_lists(rows_targets, LABELS))
        _assert_close(loss.detach(), full(reference_input, reference_targets).detach(), torch.float64, "loss")
        for k in (1, 20, LABELS):  # 20 exceeds every shard (ranks pad their candidates); LABELS: all
            values, labels = sharded.topk(rows_input, k)
            expected_values, expected_labels = full.topk(reference_input, k)
            _assert_close(values, expected_values[own], torch.float64, f"top-{k} values")
            assert torch.equal(labels, expected_labels[own]), f"top-{k} labels"
        with pytest.raises(ValueError, match="k must be in"):
            sharded.topk(rows_input, LABELS + 1 if rank == 0 else 1)  # a bad k on one rank fails all


def _check_bad_calls(rank: int, world: int) -> None:
    """Bad calls raise on every rank (no rank waits forever), and a good call works afterwards."""
    lists, input, weight = _problem(torch.float32, ROWS, seed=3)[:3]
    targets = st.SparseTargets.from_lists(lists, LABELS)
    targets_by_rows = {
        rows: st.SparseTargets.from_lists(lists[:rows], LABELS) for rows in (ROWS, ROWS - 1, 0)
    }
    start, stop = shard_range(LABELS, world, rank)

    def call(x=input, w=None, label_start=start, **kwargs):
        return sharded_linear_multilabel_soft_margin_loss(
            x,
            weight[start:stop] if w is None else w,
            targets_by_rows[x.shape[0]],
            label_start=label_start,
            num_labels=LABELS,
            **kwargs,
        )

    with pytest.raises(ValueError, match=r"tile \[0, 37\) exactly.*rank 1: \[1,"):
        call(label_start=1 if rank == 1 else start)  # rank 1's shard overlaps rank 0's
    with pytest.raises(ValueError, match=r"ranks disagree on rows: \[5,"):
        call(x=input[:-1] if rank == 0 else input)  # mismatched batch sizes
    with pytest.raises(ValueError, match="ranks disagree on reduction"):
        call(reduction="sum" if rank == 0 else "mean")
    with pytest.raises(ValueError, match="ranks disagree on label_smoothing"):
        call(label_smoothing=0.1 if rank == 0 else 0.1 + 1e-12)  # agreed exactly, not within rounding
    last = world - 1
    expected = (TypeError, "must share one floating dtype") if rank == last else (ValueError, f"rank {last}:")
    with pytest.raises(expected[0], match=expected[1]):
        call(w=weight[start:stop].double() if rank == last else None)  # a local error on one rank
    with pytest.raises(NotImplementedError, match="takes SparseTargets"):
        sharded_linear_multilabel_soft_margin_loss(
            input,
            weight[start:stop],
            targets.to_dense(),
            label_start=start,
            num_labels=LABELS,
            data_parallel=True,
        )
    expected = (AttributeError, "device") if rank == last else (ValueError, f"rank {last}:")
    with pytest.raises(expected[0], match=expected[1]):
        call(pos_weight=2.0 if rank == last else None)  # not a tensor: any local error reaches every rank
    # The message names the shape the caller passed, (ROWS, LABELS), not this rank's slice of it.
    with pytest.raises(NotImplementedError, match=re.escape(f"label_weight of shape {(ROWS, LABELS)}: ")):
        call(label_weight=torch.rand(ROWS, LABELS), data_parallel=True)  # varies by row: refused
    with pytest.raises(ValueError, match="ranks disagree on graph"):  # only some ranks would backpropagate
        call(w=weight[start:stop].requires_grad_(rank == 0))
    loss = call()
    _assert_close(loss, st.linear_multilabel_soft_margin_loss(input, weight, targets), torch.float32, "loss")
    # An empty batch gives NaN, as the single-process loss does; ranks whose ids have different dtypes (a
    # valid SparseTargets may hold int64 ids below 2^31 labels) still gather them.
    assert call(x=input[:0], label_start=start).isnan()
    wide = st.SparseTargets(targets.indptr, targets.indices.long(), LABELS) if rank == 0 else targets
    loss = sharded_linear_multilabel_soft_margin_loss(
        input, weight[start:stop], wide, label_start=start, num_labels=LABELS, data_parallel=True
    )
    everyone = st.SparseTargets.from_lists(lists * world, LABELS)
    expected_loss = st.linear_multilabel_soft_margin_loss(input.repeat(world, 1), weight, everyone)
    _assert_close(loss, expected_loss, torch.float32, "loss over mixed id dtypes")


def _check_all(rank: int, world: int) -> None:
    for check in (_check_replicated, _check_data_parallel, _check_module, _check_bad_calls):
        check(rank, world)


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_loss_equals_single_process(world):
    """Replicated and data-parallel inputs, the module and its top-k, and bad calls, in one set of ranks
    (starting ranks costs seconds; each check's assertion names it)."""
    _spawn(_check_all, world)


def test_shard_range_tiles_labels():
    for num_labels, world in ((37, 3), (2, 3), (10, 5), (0, 2)):
        ranges = [shard_range(num_labels, world, rank) for rank in range(world)]
        assert ranges[0][0] == 0 and ranges[-1][1] == num_labels
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
        sizes = [stop - start for start, stop in ranges]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_readme_torchrun_example_runs(tmp_path):
    """The README's label-sharding example, as written there, under torchrun with 2 gloo ranks."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme[readme.index("## Label sharding across GPUs") :]
    script = section[section.index("```python\n") + len("```python\n") : section.index("```\n", 10)]
    (tmp_path / "sharded.py").write_text(script)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # gloo on CPU, as in CI
    env.pop("TRITON_INTERPRET", None)  # the example runs the plain-torch path on CPU, as a user's would
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "sharded.py"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [float(line.split("loss ")[1]) for line in result.stdout.splitlines() if line.startswith("step")]
    assert len(losses) == 5 and losses[-1] < losses[0], result.stdout
    assert "rank 1: labels [65536, 131072)" in result.stdout
