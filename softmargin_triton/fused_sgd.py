"""SGD for the fused linear loss's classifier, applied inside the loss's backward one label chunk at a time.

In extreme multi-label training the classifier's gradient dW (L × D) and the optimizer's state dominate
memory. `FusedClassifierSGD` owns the weight and bias of a `LinearMultiLabelSoftMarginLoss`; while it is
attached, the module's backward recomputes each label chunk's logit gradient G_c and consumes
dW_c = G_cᵀ · E at once in a step of that chunk (on CUDA one Triton kernel forms dW_c tile by tile and
steps it in its epilogue, kernels/fused_sgd.py), so dW is never stored. The encoder still gets
dE = Σ_c G_c · W_c through autograd, formed before each chunk's step. This costs one more GEMM than the
plain fused loss (the logits are formed in the forward for the loss and again in the backward: 8·B·D·L flop
in all, not 6) and saves the 2·L·D bytes of a bf16 gradient and AdamW's two moments (4·L·D bytes more
in bf16, 8·L·D in fp32).

The step is torch.optim.SGD's, or, with `row_adaptive`, one whose size each label row sets for itself from
a running mean of its squared gradient (RMSProp with one second moment per label row and one for its
bias: 8 bytes a label, not per weight). Rare labels then move as fast as frequent ones, which plain SGD's
single learning rate cannot give them (the README's "Which step" table measures the difference). The
row's mean square needs no dW: it is diag(G_cᵀ·K·G_c)/D with K = E·Eᵀ, the (B, B) Gram matrix of the
batch's features.

What `loss.backward()` means: the step for the gradient of the scalar backward is called on, so grad_output
scales it (loss / k per micro-batch steps k times by a k-th); there is no accumulation across backwards, and
no step without one (eval, torch.no_grad, or a loss never backpropagated).
"""

import weakref
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from softmargin_triton.backend import TRITON_IMPORT_ERROR
from softmargin_triton.common import compute_dtype, dot_precision, launch
from softmargin_triton.reference import mix32, sgd_step_reference

if TRITON_IMPORT_ERROR is None:
    import triton

    from softmargin_triton.backend import TRITON_INTERPRETED
    from softmargin_triton.kernels import fused_sgd as kernels

__all__ = ["FusedClassifierSGD"]

# id(parameter) → (the parameter, its FusedClassifierSGD), both weakly held, so that other optimizers holding
# it are refused; weak references on the side keep the parameter itself picklable.
_OWNERS: dict[int, tuple[weakref.ref, weakref.ref]] = {}


class StepBuffers(NamedTuple):
    """The state one step reads and updates: (L, D) tensors for the weight, (L,) for the bias, float32
    (float64 for a float64 classifier), each None where the configuration has none."""

    weight_momentum: Tensor | None
    bias_momentum: Tensor | None
    weight_master: Tensor | None
    bias_master: Tensor | None
    weight_second_moment: Tensor | None  # (L,): each row's running mean of its squared gradient
    bias_second_moment: Tensor | None  # (L,)


class StepSettings(NamedTuple):
    """The numbers of one step (sgd_step in kernels/fused_sgd.py): weight_decay is the coupled decay (SGD's),
    shrink = 1 − lr·decay the decoupled one (the row-adaptive step's); beta2, eps and bias_correction
    (1 − beta2^t) serve the row-adaptive step only."""

    lr: float
    momentum: float
    weight_decay: float
    shrink: float
    beta2: float
    eps: float
    bias_correction: float


class FusedClassifierSGD(torch.optim.Optimizer):
    """SGD on the classifier of a `LinearMultiLabelSoftMarginLoss`, taken inside the loss's backward chunk by
    chunk: dW is never stored.

    Args:
        head: the module whose `weight` (L, D) and `bias` (L,) it owns; a head has at most one.
        lr, momentum, weight_decay: as torch.optim.SGD's (coupled decay, momentum without dampening). One
            parameter group holds weight and bias; an LR scheduler changes its `lr` as for any optimizer.
        row_adaptive: divide each label's step by the root of a running mean (rate 1 − beta2, bias-corrected
            as Adam's) of its row's squared gradient, plus eps; the bias's by its own. Weight decay is then
            decoupled, as AdamW's: w ← (1 − lr·weight_decay)·w − step.
        master_weights: keep float32 master copies of a 16-bit classifier (taken now, 4 bytes a weight), step
            them and write them rounded to nearest into the parameters. Else (the default) a bfloat16
            classifier is rounded stochastically (unbiased: each weight rounds up with the probability of
            its distance from the value below), which needs no copy. float16 is refused: its logit
            gradient, formed with the reduction's factor, underflows, and a GradScaler's factor would
            scale the step itself.
        beta2, eps: the row-adaptive step's averaging rate (1 − beta2 of the new square each step) and the
            floor added to the root.
        seed: the stochastic rounding's stream; weight i at step t rounds with random bits that are a hash of
            (seed, t, i) alone, the same bits on CUDA and on the CPU reference (the values they round may
            differ in their last fp32 bit between the two); the same device and config reproduce a run.

    The step happens during `loss.backward()` of a loss from the head in training mode with grad enabled; it
    is the step for that backward's gradient (grad_output scales it). `step()` does nothing (the update has
    been made) and exists so that training loops and LR schedulers treat it as any optimizer. Another
    optimizer holding the head's parameters raises at its step, as do a double backward (create_graph)
    and tracing the head with torch.compile. One backward steps once: a graph that uses the head twice
    steps at its first use and fails at the second, and torch.autograd.grad through the head steps too.
    Under DistributedDataParallel each rank would step its replica with its own gradient: shard the labels
    instead (softmargin_triton.distributed). `state_dict()` holds the momentum buffers, master weights,
    second moments, step count and the options that shape them (loading refuses other options), so a
    resumed run is exact.
    """

    def __init__(
        self,
        head: nn.Module,
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        *,
        row_adaptive: bool = False,
        beta2: float = 0.999,
        eps: float = 1e-8,
        master_weights: bool = False,
        seed: int = 0,
    ) -> None:
        for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay), ("eps", eps)):
            if not value >= 0.0:
                raise ValueError(f"{name} must be a non-negative number, got {value}")
        if not 0.0 <= beta2 < 1.0:
            raise ValueError(f"beta2 must be in [0, 1), got {beta2}")
        if getattr(head, "fused_optimizer", None) is not None:
            raise RuntimeError(
                "this head already has a FusedClassifierSGD; a head is stepped by one optimizer"
            )
        weight, bias = head.weight, head.bias
        if weight.dtype == torch.float16:
            raise TypeError("FusedClassifierSGD steps bfloat16, float32 or float64 classifiers, not float16")
        params = [weight] if bias is None else [weight, bias]
        options = dict(
            row_adaptive=bool(row_adaptive),
            master_weights=bool(master_weights) and weight.dtype == torch.bfloat16,
            seed=int(seed),
        )
        defaults = dict(lr=float(lr), momentum=float(momentum), weight_decay=float(weight_decay))
        super().__init__(params, dict(defaults, beta2=float(beta2), eps=float(eps), **options))
        self.state[weight]["step"] = 0
        for param in params:
            state_dtype = compute_dtype(param.dtype)
            if self.master_weights:
                self.state[param]["master"] = param.detach().to(state_dtype, copy=True)
            if self.row_adaptive:
                self.state[param]["second_moment"] = torch.zeros(
                    param.shape[0], dtype=state_dtype, device=param.device
                )
            _OWNERS[id(param)] = (weakref.ref(param), weakref.ref(self))
        _refuse_other_optimizers_once()
        head.fused_optimizer = self

    @property
    def parameters_owned(self) -> list[Tensor]:
        """[weight] or [weight, bias]."""
        return self.param_groups[0]["params"]

    @property
    def weight(self) -> Tensor:
        return self.parameters_owned[0]

    @property
    def bias(self) -> Tensor | None:
        return self.parameters_owned[1] if len(self.parameters_owned) > 1 else None

    @property
    def row_adaptive(self) -> bool:
        return self.param_groups[0]["row_adaptive"]

    @property
    def master_weights(self) -> bool:
        return self.param_groups[0]["master_weights"]

    def step(self, closure=None) -> None:
        """Nothing to do: the loss's backward has taken the step. Runs `closure` if given, as SGD would."""
        if closure is not None:
            with torch.enable_grad():
                closure()

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's, refusing a state dict of other options (its buffers would not fit the step), and keeping
        the float32 buffers in float32 (torch's loader casts floating state to each parameter's dtype)."""
        saved_group = state_dict["param_groups"][0]
        for option in ("row_adaptive", "master_weights", "seed"):
            if saved_group.get(option) != self.param_groups[0][option]:
                raise ValueError(
                    f"the state dict was saved with {option}={saved_group.get(option)!r}, this optimizer "
                    f"has {self.param_groups[0][option]!r}"
                )
        super().load_state_dict(state_dict)
        for index, saved in state_dict["state"].items():  # parameters without state have no entry
            param = self.parameters_owned[int(index)]
            for key in ("momentum_buffer", "master", "second_moment"):
                if key in saved:
                    self.state[param][key] = saved[key].to(
                        param.device, compute_dtype(param.dtype), copy=True
                    )

    def begin_step(self) -> tuple[StepSettings, StepBuffers, int | None]:
        """Counts a step and returns what it needs: its settings, its buffers (momentum buffers start at zero
        when momentum is first nonzero) and its stochastic rounding's uint32 key (None where the classifier
        rounds to nearest)."""
        group = self.param_groups[0]
        state = self.state[self.weight]
        state["step"] += 1
        step = state["step"]
        lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
        settings = StepSettings(
            lr=lr,
            momentum=momentum,
            weight_decay=0.0 if self.row_adaptive else decay,
            shrink=1.0 - lr * decay if self.row_adaptive else 1.0,
            beta2=group["beta2"],
            eps=group["eps"],
            bias_correction=1.0 - group["beta2"] ** step,
        )
        buffers = []
        for key in ("momentum_buffer", "master", "second_moment"):
            for param in (self.weight, self.bias):
                param_state = {} if param is None else self.state[param]
                if key == "momentum_buffer" and momentum and param is not None and key not in param_state:
                    param_state[key] = torch.zeros_like(param, dtype=compute_dtype(param.dtype))
                wanted = key != "momentum_buffer" or momentum
                buffers.append(param_state.get(key) if wanted else None)
        rounding_stream = None
        if self.weight.dtype == torch.bfloat16 and not self.master_weights:
            word = 0xFFFFFFFF
            key = (group["seed"] ^ int(mix32(torch.tensor(step & word)))) & word
            rounding_stream = int(mix32(torch.tensor(key)))
        return settings, StepBuffers(*buffers), rounding_stream


def check_owner(optimizer: FusedClassifierSGD, weight: Tensor, bias: Tensor | None) -> None:
    """Raises unless `optimizer` owns exactly these classifier parameters."""
    if optimizer.weight is not weight or optimizer.bias is not bias:
        raise ValueError("fused_sgd owns other parameters than this weight and bias")


def _refuse_other_optimizers(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    """An optimizer step pre-hook: another optimizer must not step the parameters a FusedClassifierSGD owns
    (their .grad stays None, so it would skip or misread them silently)."""
    if isinstance(optimizer, FusedClassifierSGD):
        return
    for group in optimizer.param_groups:
        for param in group["params"]:
            param_ref, owner = _OWNERS.get(id(param), (None, None))
            if param_ref is not None and param_ref() is param and owner() is not None:
                raise RuntimeError(
                    f"{type(optimizer).__name__} holds a classifier parameter that a FusedClassifierSGD "
                    "steps inside the loss's backward; leave the head's weight and bias out of it"
                )


_hook_handle = None


def _refuse_other_optimizers_once() -> None:
    global _hook_handle
    if _hook_handle is None:
        _hook_handle = register_optimizer_step_pre_hook(_refuse_other_optimizers)


# --------------------------------------------------------------------------------------------------------
# One chunk's step: Triton kernel or plain torch
# --------------------------------------------------------------------------------------------------------

# The plain-torch step holds about this many (labels, D) 8-byte temporaries at once (the stochastic
# rounding's int64 words), the row-adaptive Triton step a few (R, labels) fp32 ones: both walk a chunk in
# pieces that keep them within the scratch budget.
STEP_TEMPORARIES = 8


def sgd_update_chunk_(
    grad: Tensor,
    input: Tensor,
    gram: Tensor | None,
    weight: Tensor,
    bias: Tensor | None,
    settings: StepSettings,
    buffers: StepBuffers,
    rounding_stream: int | None,
    start: int,
    stop: int,
    piece_labels: int,
    use_triton: bool,
) -> None:
    """One step of labels [start, stop) of `weight` (L, D) and `bias` (L,), in place, from the gradient
    w.r.t. their logits `grad` (R, stop - start) and `input` (R, D): dW_c = gradᵀ·input, db_c = Σ_rows grad,
    in fp32 (fp64 for fp64). `buffers` are whole (L, ·) (FusedClassifierSGD.begin_step); `gram` is
    input·inputᵀ (R, R) in fp32 where the step is row-adaptive on the Triton path, else None. The plain-torch
    path and the row norms walk the chunk `piece_labels` labels at a time (STEP_TEMPORARIES)."""
    dtype = compute_dtype(input.dtype)
    dim = weight.shape[1]
    (weight_momentum, bias_momentum, weight_master, bias_master, weight_moment, bias_moment) = (
        None if buffer is None else buffer[start:stop] for buffer in buffers
    )
    if use_triton:
        row_step = None
        if weight_moment is not None:
            # Each row's mean square Σ_d dW_ld² / D = (gᵀ·K·g)_l / D, with no dW formed.
            square = torch.cat(
                [(gram @ part.to(dtype)).mul_(part).sum(dim=0) for part in grad.split(piece_labels, dim=1)]
            ).clamp_min_(0)  # a quadratic form ≥ 0, which cancellation in fp32 can take below 0
            row_step = _row_step_sizes(weight_moment, square / dim, settings)
        labels = stop - start
        launch(
            kernels.classifier_sgd_update,
            lambda meta: (triton.cdiv(labels, meta["BLOCK_L"]), triton.cdiv(dim, meta["BLOCK_D"])),
            kernels.HEURISTIC_CONFIG,
            G=grad,
            E=input,
            W=weight[start:stop],
            MOMENTUM=weight_momentum,
            MASTER=weight_master,
            ROW_STEP_SIZE=row_step,
            B=input.shape[0],
            D=dim,
            chunk_labels=labels,
            label_start=start,
            lr=settings.lr,
            momentum=settings.momentum,
            weight_decay=settings.weight_decay,
            shrink=settings.shrink,
            rounding_stream=0 if rounding_stream is None else rounding_stream,
            stride_g_row=grad.stride(0),
            stride_e_row=input.stride(0),
            stride_e_col=input.stride(1),
            stride_w_row=weight.stride(0),
            stride_w_col=weight.stride(1),
            DOT_PRECISION=dot_precision(input.dtype),
            DOT_IN_FP32=TRITON_INTERPRETED,
            STOCHASTIC_ROUNDING=rounding_stream is not None,
        )
    else:
        for lo in range(start, stop, piece_labels):
            hi = min(lo + piece_labels, stop)
            part = slice(lo - start, hi - start)
            grad_weight = grad[:, part].to(dtype).T @ input.to(dtype)
            row_step = settings.lr
            if weight_moment is not None:
                square = grad_weight.square().mean(dim=1)
                row_step = _row_step_sizes(weight_moment[part], square, settings)[:, None]
            sgd_step_reference(
                weight[lo:hi],
                grad_weight,
                None if weight_momentum is None else weight_momentum[part],
                None if weight_master is None else weight_master[part],
                row_step,
                settings.momentum,
                settings.weight_decay,
                settings.shrink,
                rounding_stream,
                None if rounding_stream is None else _element_ids(lo, hi, dim, weight.device),
            )
    if bias is not None:  # its gradient is G's column sums: one more read of G, only where it steps
        grad_bias = grad.sum(dim=0, dtype=dtype)
        num_labels = weight.shape[0]
        bias_step = settings.lr
        if bias_moment is not None:
            bias_step = _row_step_sizes(bias_moment, grad_bias.square(), settings)
        sgd_step_reference(
            bias[start:stop],
            grad_bias,
            bias_momentum,
            bias_master,
            bias_step,
            settings.momentum,
            settings.weight_decay,
            settings.shrink,
            rounding_stream,
            None
            if rounding_stream is None
            else torch.arange(start, stop, device=bias.device) + num_labels * dim,
        )


def _row_step_sizes(second_moment: Tensor, square: Tensor, settings: StepSettings) -> Tensor:
    """Updates `second_moment` (n,) with this step's mean squares (n,) and returns each row's step size,
    lr / (√(second_moment / bias_correction) + eps), (n,) contiguous."""
    second_moment.mul_(settings.beta2).add_(square, alpha=1 - settings.beta2)
    return settings.lr / ((second_moment / settings.bias_correction).sqrt() + settings.eps)


def _element_ids(start: int, stop: int, dim: int, device: torch.device) -> Tensor:
    """The stochastic rounding's ids of weight rows [start, stop): (stop - start, dim) int64, l·dim + d."""
    return torch.arange(start * dim, stop * dim, device=device).view(stop - start, dim)
