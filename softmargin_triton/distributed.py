"""The fused linear + multi-label soft-margin loss with its classifier sharded by label across ranks.

Rank r owns the classifier rows of labels [label_start, label_start + L_r). The sigmoid loss has no
normalizer across labels, so each rank computes its labels' share of the loss and of dE with the
single-GPU chunk loop, its dW/db with no communication at all, and only the loss and dE cross ranks:

- replicated input (every rank passes the same batch): the loss shares are summed over ranks (an all-reduce
  of one number, or of B for 'none') and dE is all-reduced in the backward: O(B·D) per step.
- `data_parallel=True` (each rank passes its own batch, the same size on every rank): the features are
  all-gathered, each rank scores every row against its labels, and dE is reduce-scattered back to the rows'
  owners; still O(B·D) per step, independent of L. Targets must then be `SparseTargets`, whose positives
  are all-gathered (O(nnz)); a dense target would cost O(B·L).

Targets, label_weight and pos_weight always span all `num_labels` labels; each rank reads its range of them
in place (sparse positives by label id, with no relabelling and no communication).

Each call first all-gathers a few integers per rank (shapes, label range, reduction, ...) so that a bad call
— shards that do not tile [0, num_labels), mismatched batch sizes, an invalid argument on one rank — raises
the same clear error on every rank instead of leaving the others waiting in a collective. That is one small
collective and one host sync per call.

SigLIP's loss over the ranks' batches, `distributed_sigmoid_contrastive_loss`, is the data-parallel case with
each rank's own texts as its label shard.
"""

import math
import struct

import torch
import torch.distributed as dist

# torch.distributed.nn binds the world group in default arguments when first imported, and the custom ops'
# first call imports it (through torch._dynamo). Imported after init_process_group, it would keep the group
# alive past destroy_process_group, into interpreter exit, where gloo's threads can abort the process.
import torch.distributed.nn
from torch import Tensor, nn

from softmargin_triton.backend import use_triton_for
from softmargin_triton.common import (
    FLOAT_DTYPES,
    REDUCTIONS,
    check_label_smoothing,
    resolve_reduction,
    rows_view,
)
from softmargin_triton.linear_soft_margin import (
    LinearSoftMarginFunction,
    autocast_operands,
    check_operands,
    merge_topk,
    streaming_topk,
)
from softmargin_triton.siglip import diagonal_positives, siglip_operands
from softmargin_triton.sparse_targets import SparseTargets

__all__ = [
    "Collectives",
    "ShardedLinearMultiLabelSoftMarginLoss",
    "distributed_sigmoid_contrastive_loss",
    "shard_range",
    "sharded_linear_multilabel_soft_margin_loss",
]

# What every rank reports to the call's agreement step (see _local_call).
CALL_FIELDS = (
    "rows",
    "dim",
    "label_start",
    "shard_labels",
    "num_labels",
    "reduction",
    "data_parallel",
    "sparse",
    "dtype",
    "out_dtype",
    "bias",
    "input_grad",
    "graph",
    "nnz",
    "label_smoothing",
)
# torch 2.13 renamed the single-tensor collectives; the old names still work there, with a warning.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def shard_range(num_labels: int, world_size: int, rank: int) -> tuple[int, int]:
    """The labels [start, stop) of `rank` in an even split: the first num_labels % world_size ranks own one
    label more than the others."""
    base, remainder = divmod(num_labels, world_size)
    start = rank * base + min(rank, remainder)
    return start, start + base + (rank < remainder)


# --------------------------------------------------------------------------------------------------------
# Collectives
# --------------------------------------------------------------------------------------------------------


class Collectives:
    """The torch.distributed calls the sharded loss makes, over one process group (None: the default
    group, looked up at each call).

    Each call names its site, what it carries in the loss: 'agreement' (the call's fields, and the error
    messages of a bad call), 'loss' (the shares' sum, or the rows' losses scattered back with
    `data_parallel` and reduction 'none'), 'loss gradient', 'features' (the gathered rows with
    `data_parallel`), 'positives' (their targets' row counts and label ids), 'dE' (the features' gradient:
    all-reduced, or reduce-scattered back to the rows' owners), 'top-k features', 'top-k candidates'. Pass
    a subclass as the `group` of the sharded loss to observe or replace the calls: bench/distributed_comm.py
    counts the bytes per site this way.
    """

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        self.group = group

    @property
    def world_size(self) -> int:
        return dist.get_world_size(self.group)

    @property
    def rank(self) -> int:
        return dist.get_rank(self.group)

    @property
    def device(self) -> torch.device:
        """Where the group's collectives take tensors: the current CUDA device for NCCL, else the CPU."""
        if dist.get_backend(self.group) == dist.Backend.NCCL:
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def all_reduce(self, tensor: Tensor, site: str) -> Tensor:
        """Sum `tensor` over the ranks, in place; returns it."""
        dist.all_reduce(tensor, group=self.group)
        return tensor

    def all_gather_rows(self, input: Tensor, site: str) -> Tensor:
        """The ranks' `input` blocks (one shape on every rank) concatenated along dim 0, in rank order."""
        out = input.new_empty((input.shape[0] * self.world_size, *input.shape[1:]))
        _all_gather_single(out, input.contiguous(), group=self.group)
        return out

    def reduce_scatter_rows(self, input: Tensor, site: str) -> Tensor:
        """This rank's block of rows of the sum over ranks of `input` (rows a multiple of the world size)."""
        out = input.new_empty((input.shape[0] // self.world_size, *input.shape[1:]))
        _reduce_scatter_single(out, input.contiguous(), group=self.group)
        return out

    def all_gather_object(self, obj: object, site: str) -> list:
        """Every rank's picklable `obj`, in rank order."""
        objects = [None] * self.world_size
        dist.all_gather_object(objects, obj, group=self.group)
        return objects


def _collectives(group: dist.ProcessGroup | Collectives | None) -> Collectives:
    return group if isinstance(group, Collectives) else Collectives(group)


class _CopyToRanks(torch.autograd.Function):
    """Identity forward on a tensor every rank holds; the backward sums its gradient over ranks."""

    @staticmethod
    def forward(ctx, input, comm):
        ctx.comm = comm
        return input.view_as(input)

    @staticmethod
    def backward(ctx, grad):
        return ctx.comm.all_reduce(grad.contiguous(), "dE"), None


class _GatherRows(torch.autograd.Function):
    """All-gather of equal-sized row blocks; the backward reduce-scatters the rows' gradients back."""

    @staticmethod
    def forward(ctx, input, comm):
        ctx.comm = comm
        return comm.all_gather_rows(input, "features")

    @staticmethod
    def backward(ctx, grad):
        return ctx.comm.reduce_scatter_rows(grad, "dE"), None


class _ScatterRows(torch.autograd.Function):
    """Sum over ranks of a row-block tensor, each rank keeping its own block (reduce-scatter); the backward
    all-gathers the blocks' gradients, since every rank's share of a row needs the row owner's gradient."""

    @staticmethod
    def forward(ctx, input, comm):
        ctx.comm = comm
        return comm.reduce_scatter_rows(input, "loss")

    @staticmethod
    def backward(ctx, grad):
        return ctx.comm.all_gather_rows(grad, "loss gradient"), None


class _SumOverRanks(torch.autograd.Function):
    """Sum of each rank's share of the loss; the backward hands grad_output to this rank's share as is
    (every rank backpropagates the same loss)."""

    @staticmethod
    def forward(ctx, share, comm):
        return comm.all_reduce(share.clone(), "loss")

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _gather_positives(
    targets: SparseTargets, nnz_per_rank: list[int], comm: Collectives
) -> tuple[Tensor, Tensor]:
    """All ranks' positives as (indptr, indices) over the gathered rows, in rank order: rows' counts and
    the ids (padded to the largest rank's nnz, known on the host from the call's agreement step)."""
    counts = comm.all_gather_rows(targets.indptr.diff(), "positives")
    indptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    padded = targets.indices.new_zeros(max(nnz_per_rank), dtype=torch.int64)  # ranks' id dtypes may differ
    padded[: targets.nnz] = targets.indices
    ids = comm.all_gather_rows(padded, "positives").view(len(nnz_per_rank), -1)
    return indptr, torch.cat([ids[rank, :nnz] for rank, nnz in enumerate(nnz_per_rank)])


# --------------------------------------------------------------------------------------------------------
# Agreement: every rank raises the same error for a bad call
# --------------------------------------------------------------------------------------------------------


def _agree(fields: dict[str, int], local_error: Exception | None, comm: Collectives) -> list[dict]:
    """All ranks' `fields`, after every rank learnt whether any rank's call is invalid (then all raise)."""
    names = ["error", *fields]
    local = torch.tensor([int(local_error is not None), *fields.values()], dtype=torch.int64)
    device = comm.device
    if device.type == "cuda":  # from page-locked memory the copy does not wait for the stream: one sync
        local = local.pin_memory().to(device, non_blocking=True)
    table = comm.all_gather_rows(local, "agreement")
    rows = [dict(zip(names, row, strict=True)) for row in table.view(-1, len(names)).tolist()]  # host sync
    failed = [rank for rank, row in enumerate(rows) if row["error"]]
    if failed:
        messages = comm.all_gather_object(None if local_error is None else str(local_error), "agreement")
        if local_error is not None:
            raise local_error
        details = "; ".join(f"rank {rank}: {messages[rank]}" for rank in failed)
        raise ValueError(f"sharded loss: an invalid call on another rank ({details})")
    return rows


def _require_equal(rows: list[dict], *names: str) -> None:
    for name in names:
        values = [row[name] for row in rows]
        if len(set(values)) > 1:
            raise ValueError(f"sharded loss: ranks disagree on {name}: {values} (by rank)")


def _check_tiling(rows: list[dict], num_labels: int) -> None:
    """Shards [label_start, label_start + shard_labels) must tile [0, num_labels) without gaps or overlaps."""
    order = sorted(range(len(rows)), key=lambda rank: (rows[rank]["label_start"], rows[rank]["shard_labels"]))
    covered = 0
    for rank in order:
        if rows[rank]["label_start"] != covered:
            break
        covered += rows[rank]["shard_labels"]
    else:
        if covered == num_labels:
            return
    ranges = ", ".join(
        f"rank {rank}: [{row['label_start']}, {row['label_start'] + row['shard_labels']})"
        for rank, row in enumerate(rows)
    )
    raise ValueError(f"sharded loss: label shards must tile [0, {num_labels}) exactly, got {ranges}")


# --------------------------------------------------------------------------------------------------------
# Functional API and module
# --------------------------------------------------------------------------------------------------------


def _local_call(
    input: Tensor,
    weight_shard: Tensor,
    target: Tensor | SparseTargets,
    bias_shard: Tensor | None,
    label_start: int,
    num_labels: int,
    label_weight: Tensor | None,
    pos_weight: Tensor | None,
    reduction: str,
    data_parallel: bool,
    label_smoothing: float,
) -> dict:
    """This rank's checks, its operands as the chunk loop takes them (under autocast in its dtype; label
    dimensions cut to the shard, viewed as rows), and the fields all ranks must agree on; raises on a bad
    argument."""
    reduction = resolve_reduction(None, None, reduction)
    label_smoothing = check_label_smoothing(label_smoothing)
    input, weight_shard, bias_shard = autocast_operands(input, weight_shard, bias_shard)
    out_dtype = check_operands(
        input, weight_shard, target, bias_shard, label_weight, pos_weight, num_labels, "weight_shard"
    )
    shard_labels = weight_shard.shape[0]
    stop = label_start + shard_labels
    if not 0 <= label_start <= stop <= num_labels:
        raise ValueError(
            f"labels [{label_start}, {stop}) of this shard are not inside [0, num_labels={num_labels})"
        )
    sparse = isinstance(target, SparseTargets)
    differentiable = [t for t in (label_weight, pos_weight, None if sparse else target) if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in differentiable):
        raise NotImplementedError("the sharded loss has no gradient for target, label_weight or pos_weight")
    if data_parallel and not sparse:
        raise NotImplementedError(
            "data_parallel=True takes SparseTargets: gathering a dense target would move O(B·L) per step"
        )

    rows = math.prod(input.shape[:-1])
    shard_shape = torch.Size((*input.shape[:-1], shard_labels))

    def shard_rows(name: str, operand: Tensor | None) -> Tensor | None:
        """The operand's columns of this shard as a (rows, L_r) view: no copy."""
        if operand is None:
            return None
        given = tuple(operand.shape)  # for the message: the shape the caller passed, not the shard's
        if operand.dim() > 0 and operand.shape[-1] == num_labels:
            operand = operand[..., label_start:stop]
        view = rows_view(operand, shard_shape, shard_labels)
        if view is None or (data_parallel and rows > 1 and view.stride(0) != 0):
            raise NotImplementedError(
                f"{name} of shape {given}: the sharded loss takes weights whose leading dimensions view "
                f"as the input's rows"
                + (", and with data_parallel=True none that vary by row" if data_parallel else "")
            )
        return view

    graph = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (input, weight_shard, bias_shard)
    )
    input_grad = torch.is_grad_enabled() and input.requires_grad
    return dict(
        input=input,
        weight_shard=weight_shard,
        bias_shard=bias_shard,
        input_grad=input_grad,
        reduction=reduction,
        rows=rows,
        shard_labels=shard_labels,
        sparse=sparse,
        out_dtype=out_dtype,
        target=None if sparse else shard_rows("target", target),
        label_weight=shard_rows("label_weight", label_weight),
        pos_weight=shard_rows("pos_weight", pos_weight),
        fields=dict(
            rows=rows,
            dim=input.shape[-1],
            label_start=label_start,
            shard_labels=shard_labels,
            num_labels=num_labels,
            reduction=REDUCTIONS.index(reduction),
            data_parallel=int(data_parallel),
            sparse=int(sparse),
            dtype=FLOAT_DTYPES.index(input.dtype),
            out_dtype=FLOAT_DTYPES.index(out_dtype),
            bias=int(bias_shard is not None),
            input_grad=int(input_grad),
            graph=int(graph),  # whether backward runs, and with it the backward's collectives
            nnz=target.nnz if sparse else 0,
            # ε's float64 bits, so that the ranks agree on it exactly (ε ≥ 0: no sign bit, fits int64)
            label_smoothing=int.from_bytes(struct.pack("<d", label_smoothing), "little"),
        ),
        label_smoothing=label_smoothing,
    )


def sharded_linear_multilabel_soft_margin_loss(
    input: Tensor,
    weight_shard: Tensor,
    target: Tensor | SparseTargets,
    bias_shard: Tensor | None = None,
    *,
    label_start: int,
    num_labels: int,
    group: dist.ProcessGroup | Collectives | None = None,
    label_weight: Tensor | None = None,
    pos_weight: Tensor | None = None,
    reduction: str = "mean",
    data_parallel: bool = False,
    label_smoothing: float = 0.0,
) -> Tensor:
    """`linear_multilabel_soft_margin_loss` over a classifier whose rows are split by label across the ranks
    of `group`; a collective call (every rank calls it, and backpropagates the result alike).

    Args:
        input: (..., D) float16/bfloat16/float32/float64 features: the same on every rank, or with
            `data_parallel=True` this rank's own batch (the same shape on every rank).
        weight_shard: (L_r, D) this rank's classifier rows: labels [label_start, label_start + L_r).
        target: (..., num_labels) dense, or a SparseTargets (N, num_labels) for a (N, D) input, over all
            labels (each rank reads its range in place); with `data_parallel=True` a SparseTargets only.
        bias_shard: (L_r,) or None (on every rank alike).
        label_start: this shard's first label; the ranks' shards must tile [0, num_labels).
        num_labels: L, the whole classifier's label count.
        group: the process group whose ranks share the labels; None for the default group; or a
            `Collectives` over one, whose methods then make the loss's collective calls.
        label_weight, pos_weight: as in `linear_multilabel_soft_margin_loss`, broadcastable to
            (..., num_labels); with `data_parallel=True` without a per-row dimension.
        reduction: 'none' → input.shape[:-1] (this rank's rows with `data_parallel=True`); 'mean' / 'sum' →
            () over all rows of all ranks.
        label_smoothing: ε in [0, 1), as in `linear_multilabel_soft_margin_loss`; the same on every rank.

    Returns:
        The loss, equal on every rank to the single-process loss over the whole classifier (and, with
        `data_parallel=True`, over the concatenation of the ranks' batches in rank order). The input's
        gradient is that of the single-process loss (its rows of it with `data_parallel=True`: encoders under
        DistributedDataParallel, which averages gradients over ranks, get 1/world_size of the total), and
        each rank's weight_shard and bias_shard gradients are that loss's for its labels.
    """
    try:
        call, error = (
            _local_call(
                input,
                weight_shard,
                target,
                bias_shard,
                label_start,
                num_labels,
                label_weight,
                pos_weight,
                reduction,
                data_parallel,
                label_smoothing,
            ),
            None,
        )
    except Exception as caught:  # whatever fails here must reach the other ranks, or they would wait
        call, error = None, caught
    fields = call["fields"] if call else dict.fromkeys(CALL_FIELDS, 0)
    comm = _collectives(group)
    table = _agree(fields, error, comm)
    _require_equal(table, "num_labels", "rows", "dim", "reduction", "data_parallel", "sparse", "dtype")
    _require_equal(table, "out_dtype", "bias", "input_grad", "graph", "label_smoothing")
    _check_tiling(table, num_labels)

    input, weight_shard, bias_shard = call["input"], call["weight_shard"], call["bias_shard"]
    input_grad, reduction = call["input_grad"], call["reduction"]
    rows_in = input.reshape(call["rows"], input.shape[-1])
    label_weight_rows, pos_weight_rows = call["label_weight"], call["pos_weight"]
    indptr, indices = (target.indptr, target.indices) if call["sparse"] else (None, None)
    if data_parallel:
        features = (
            _GatherRows.apply(rows_in, comm) if input_grad else comm.all_gather_rows(rows_in, "features")
        )
        indptr, indices = _gather_positives(target, [row["nnz"] for row in table], comm)
        shard_shape = (features.shape[0], call["shard_labels"])
        label_weight_rows = None if label_weight_rows is None else label_weight_rows[:1].expand(shard_shape)
        pos_weight_rows = None if pos_weight_rows is None else pos_weight_rows[:1].expand(shard_shape)
    else:
        features = _CopyToRanks.apply(rows_in, comm) if input_grad else rows_in
    # Shares are summed over ranks in at least fp32, and rounded to the loss's dtype once, after the sum.
    share_dtype = torch.promote_types(call["out_dtype"], torch.float32)
    with torch.autocast(input.device.type, enabled=False):  # the chunk loop picks its own precisions
        share = LinearSoftMarginFunction.apply(
            features,
            weight_shard,
            bias_shard,
            call["target"],
            indptr,
            indices,
            label_weight_rows,
            pos_weight_rows,
            reduction,
            share_dtype,
            use_triton_for(input)
            and input.dtype != torch.float64  # the kernel computes in fp32
            and min(features.shape[0], features.shape[1], call["shard_labels"]) > 0,
            torch.is_grad_enabled(),
            label_start,
            num_labels,
            call["label_smoothing"],
        )
    if data_parallel and reduction == "none":
        loss = _ScatterRows.apply(share, comm)
    else:
        loss = _SumOverRanks.apply(share, comm)
    loss = loss.to(call["out_dtype"])
    return loss.view(input.shape[:-1]) if reduction == "none" else loss


@torch.no_grad()
def _sharded_topk(
    input: Tensor,
    weight_shard: Tensor,
    bias_shard: Tensor | None,
    k: int,
    label_start: int,
    num_labels: int,
    group: dist.ProcessGroup | Collectives | None,
    data_parallel: bool,
) -> tuple[Tensor, Tensor]:
    """The k best logits over all shards and their label ids, (..., k) each: each rank streams its shard's
    candidates, all ranks' candidates are gathered and merged."""
    error = None if 0 < k <= num_labels else ValueError(f"k must be in [1, num_labels={num_labels}], got {k}")
    rows = math.prod(input.shape[:-1])
    comm = _collectives(group)
    table = _agree(dict(rows=rows, dim=input.shape[-1], k=k), error, comm)
    _require_equal(table, "rows", "dim", "k")
    features = input.reshape(rows, input.shape[-1])
    if data_parallel:
        features = comm.all_gather_rows(features, "top-k features")
    values, labels = streaming_topk(features, weight_shard, bias_shard, k)
    missing = k - values.shape[-1]  # a shard with fewer than k labels pads its candidates
    values = torch.nn.functional.pad(values, (0, missing), value=-math.inf)
    labels = torch.nn.functional.pad(labels + label_start, (0, missing), value=-1)
    world = comm.world_size
    gathered_values = comm.all_gather_rows(values, "top-k candidates").view(world, -1, k)
    gathered_labels = comm.all_gather_rows(labels, "top-k candidates").view(world, -1, k)
    gathered_values = gathered_values.permute(1, 0, 2).flatten(1)
    gathered_labels = gathered_labels.permute(1, 0, 2).flatten(1)
    values, labels = merge_topk(gathered_values, gathered_labels, k)
    if data_parallel:
        own = slice(comm.rank * rows, (comm.rank + 1) * rows)
        values, labels = values[own], labels[own]
    return values.view(*input.shape[:-1], k), labels.view(*input.shape[:-1], k)


class ShardedLinearMultiLabelSoftMarginLoss(nn.Module):
    """`LinearMultiLabelSoftMarginLoss` with its classifier split by label over the ranks of `group`.

    This rank owns the labels `shard_range(num_labels, world_size, rank)`: an even split, the first
    num_labels % world_size ranks one label more. Parameters are initialized as nn.Linear's (each rank
    draws its own rows from its own generator). `forward(input, target)` and `topk(input, k)` are
    collective calls, with `input`, `target`, `label_weight` and `pos_weight` as in
    `sharded_linear_multilabel_soft_margin_loss`; `topk` returns global label ids.
    """

    def __init__(
        self,
        in_features: int,
        num_labels: int,
        group: dist.ProcessGroup | Collectives | None = None,
        bias: bool = True,
        *,
        label_weight: Tensor | None = None,
        pos_weight: Tensor | None = None,
        reduction: str = "mean",
        data_parallel: bool = False,
        label_smoothing: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        # None: the default group, looked up at each call (holding it keeps it alive); or a Collectives
        self.group = group
        self.in_features, self.num_labels, self.reduction = in_features, num_labels, reduction
        self.data_parallel = data_parallel
        self.label_smoothing = check_label_smoothing(label_smoothing)
        comm = _collectives(group)
        self.label_start, self.label_stop = shard_range(num_labels, comm.world_size, comm.rank)
        shard_labels = self.label_stop - self.label_start
        self.weight = nn.Parameter(torch.empty((shard_labels, in_features), device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(shard_labels, device=device, dtype=dtype)) if bias else None
        self.register_buffer("label_weight", label_weight)
        self.register_buffer("pos_weight", pos_weight)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's initialization: bounds from in_features, as for the whole classifier."""
        bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
        nn.init.uniform_(self.weight, -bound, bound)  # kaiming_uniform_ with a=√5 comes to this bound
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Tensor, target: Tensor | SparseTargets) -> Tensor:
        return sharded_linear_multilabel_soft_margin_loss(
            input,
            self.weight,
            target,
            self.bias,
            label_start=self.label_start,
            num_labels=self.num_labels,
            group=self.group,
            label_weight=self.label_weight,
            pos_weight=self.pos_weight,
            reduction=self.reduction,
            data_parallel=self.data_parallel,
            label_smoothing=self.label_smoothing,
        )

    def topk(self, input: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """The k largest logits of each row over all labels and their global label ids, (..., k) each, best
        first; each rank streams over its shard's label chunks, so no rank holds (..., num_labels)."""
        return _sharded_topk(
            input,
            self.weight,
            self.bias,
            k,
            self.label_start,
            self.num_labels,
            self.group,
            self.data_parallel,
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_labels={self.num_labels}, "
            f"labels=[{self.label_start}, {self.label_stop}), bias={self.bias is not None}, "
            f"reduction={self.reduction!r}, data_parallel={self.data_parallel}, "
            f"label_smoothing={self.label_smoothing}"
        )


# --------------------------------------------------------------------------------------------------------
# SigLIP over the ranks' batches: each rank's texts are its label shard
# --------------------------------------------------------------------------------------------------------


def distributed_sigmoid_contrastive_loss(
    image_features: Tensor,
    text_features: Tensor,
    logit_scale: Tensor,
    logit_bias: Tensor,
    *,
    positives: SparseTargets | None = None,
    group: dist.ProcessGroup | Collectives | None = None,
) -> Tensor:
    """`sigmoid_contrastive_loss` of the concatenation of all ranks' batches (in rank order), each rank
    holding its own; a collective call (every rank calls it, and backpropagates the result alike).

    The data-parallel sharded loss with this rank's texts as its label shard: the scaled image features are
    all-gathered, each rank scores every image against its own texts with the fused chunk loop, the loss
    shares are summed, and the features' gradient is reduce-scattered back to the images' owners: O(B·D)
    per step each way, no rank forming more than a (B_world, T_c) gradient chunk. One small all-gather of
    the call's sizes (and one host sync) first, so that a bad call raises on every rank.

    Args:
        image_features: (B, D) this rank's images; float16/bfloat16/float32/float64; B alike on every rank.
        text_features: (T, D) this rank's texts, image_features' dtype; T alike on every rank.
        logit_scale, logit_bias: () floating, the same on every rank (the scale already exponentiated).
        positives: (B, world_size · T) SparseTargets: the texts each of this rank's images matches, by their
            index in the concatenation of all ranks' texts. None: image i of a rank matches that rank's text
            i (T = B).
        group: the process group, None for the default one, or a `Collectives` over one.

    Returns:
        The loss over all ranks' images and texts, (), equal on every rank. Each rank's image_features and
        text_features receive the gradient of that loss; logit_scale and logit_bias receive this rank's
        share of theirs, as do the encoders' parameters: sum them over ranks (DistributedDataParallel
        averages, 1/world_size of the total).
    """
    comm = _collectives(group)
    rank, world = comm.rank, comm.world_size
    try:
        features, texts, bias, out_dtype = siglip_operands(
            image_features, text_features, logit_scale, logit_bias, positives, world
        )
        input_grad = torch.is_grad_enabled() and features.requires_grad
        fields = dict(
            images=features.shape[0],
            texts=texts.shape[0],
            dim=features.shape[1],
            dtype=FLOAT_DTYPES.index(features.dtype),
            positives=int(positives is not None),
            nnz=0 if positives is None else positives.nnz,
            input_grad=int(input_grad),  # whether the backward's reduce-scatter runs
        )
        error = None
    except Exception as caught:  # whatever fails here must reach the other ranks, or they would wait
        fields = dict.fromkeys(("images", "texts", "dim", "dtype", "positives", "nnz", "input_grad"), 0)
        error = caught
    table = _agree(fields, error, comm)
    _require_equal(table, "images", "texts", "dim", "dtype", "positives", "input_grad")

    images, shard_texts = features.shape[0], texts.shape[0]
    gathered = _GatherRows.apply(features, comm) if input_grad else comm.all_gather_rows(features, "features")
    if positives is None:  # the concatenated batch's matches: gathered row i, text i; nothing to send
        positives = diagonal_positives(world * images, gathered.device)
        indptr, indices = positives.indptr, positives.indices
    else:
        indptr, indices = _gather_positives(positives, [row["nnz"] for row in table], comm)
    # Shares are summed over ranks in at least fp32 and rounded to the loss's dtype once, after the sum.
    share_dtype = torch.promote_types(out_dtype, torch.float32)
    with torch.autocast(gathered.device.type, enabled=False):  # the chunk loop picks its own precisions
        share = LinearSoftMarginFunction.apply(
            gathered,
            texts,
            bias,
            None,
            indptr,
            indices,
            None,
            None,
            "sum",
            share_dtype,
            use_triton_for(gathered) and gathered.dtype != torch.float64,  # the kernel computes in fp32
            torch.is_grad_enabled(),
            rank * shard_texts,  # this rank's first text among all ranks' texts
            world * images,  # 'sum' divides each row's sum by this: all ranks' images, as SigLIP does
        )
    return _SumOverRanks.apply(share, comm).to(out_dtype)
