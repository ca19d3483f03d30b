"""SGD for the fused linear loss's classifier, applied inside the loss's backward one label chunk at a time.

In extreme multi-label training the classifier's gradient dW (L × D) and the optimizer's state dominate
memory. `FusedClassifierSGD` owns the weight and bias of a `LinearMultiLabelSoftMarginLoss`; while it is
attached, the module's backward recomputes each label chunk's logit gradient G_c and consumes
dW_c = G_cᵀ · E at once in an SGD step of that chunk (on CUDA one Triton kernel forms dW_c tile by tile and
steps it in its epilogue, kernels/fused_sgd.py), so dW is never stored. The encoder still gets
dE = Σ_c G_c · W_c through autograd, formed before each chunk's step. This costs one more GEMM than the
plain fused loss (the logits are formed in the forward for the loss and again in the backward: 8·B·D·L flop
in all, not 6) and saves 2·L·D bytes of bf16 gradient plus AdamW's 8·L·D bytes of moments.

What `loss.backward()` means: the step for the gradient of the scalar backward is called on, so grad_output
scales it (loss / k per micro-batch steps k times by a k-th); there is no accumulation across backwards, and
no step without one (eval, torch.no_grad, or a loss never backpropagated).
"""

import weakref

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

# Set on each parameter a FusedClassifierSGD owns (a weak reference to it), so other optimizers are refused.
_OWNER_ATTRIBUTE = "_softmargin_fused_sgd"


class FusedClassifierSGD(torch.optim.Optimizer):
    """SGD (torch.optim.SGD's step: coupled weight decay, momentum without dampening) on the classifier of a
    `LinearMultiLabelSoftMarginLoss`, taken inside the loss's backward chunk by chunk: dW is never stored.

    Args:
        head: the module whose `weight` (L, D) and `bias` (L,) it owns; a head has at most one.
        lr, momentum, weight_decay: as torch.optim.SGD's. One parameter group holds weight and bias; an LR
            scheduler changes its `lr` as for any optimizer.
        master_weights: keep float32 master copies of a 16-bit classifier (taken now, 4 bytes a weight), step
            them and write them rounded to nearest into the parameters. Else (the default) a bfloat16
            classifier is rounded stochastically (unbiased: each weight rounds up with the probability of
            its distance from the value below), which needs no copy; float16 requires master weights.
        seed: the stochastic rounding's stream; weight i at step t rounds with random bits that are a hash of
            (seed, t, i) alone, the same on CUDA and on the CPU reference, so runs reproduce exactly.

    The step happens during `loss.backward()` of a loss from the head in training mode with grad enabled; it
    is the step for that backward's gradient (grad_output scales it). `step()` does nothing (the update has
    been made) and exists so that training loops and LR schedulers treat it as any optimizer. Another
    optimizer holding the head's parameters raises at its step; a double backward (create_graph) raises.
    `state_dict()` holds the momentum buffers, master weights and step count, so a resumed run is exact.
    """

    def __init__(
        self,
        head: nn.Module,
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        *,
        master_weights: bool = False,
        seed: int = 0,
    ) -> None:
        for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            if not value >= 0.0:
                raise ValueError(f"{name} must be a non-negative number, got {value}")
        if getattr(head, "fused_optimizer", None) is not None:
            raise RuntimeError(
                "this head already has a FusedClassifierSGD; a head is stepped by one optimizer"
            )
        weight, bias = head.weight, head.bias
        if weight.dtype == torch.float16 and not master_weights:
            raise TypeError(
                "a float16 classifier needs master_weights=True (stochastic rounding serves bfloat16)"
            )
        self.parameters_owned = [weight] if bias is None else [weight, bias]
        super().__init__(
            self.parameters_owned,
            dict(lr=float(lr), momentum=float(momentum), weight_decay=float(weight_decay)),
        )
        self.master_weights = master_weights and weight.dtype in (torch.float16, torch.bfloat16)
        self.seed = int(seed)
        self.state[weight]["step"] = 0
        for param in self.parameters_owned:
            if self.master_weights:
                self.state[param]["master"] = param.detach().to(torch.float32, copy=True)
            setattr(param, _OWNER_ATTRIBUTE, weakref.ref(self))
        _refuse_other_optimizers_once()
        head.fused_optimizer = self

    @property
    def weight(self) -> Tensor:
        return self.parameters_owned[0]

    @property
    def bias(self) -> Tensor | None:
        return self.parameters_owned[1] if len(self.parameters_owned) > 1 else None

    def step(self, closure=None) -> None:
        """Nothing to do: the loss's backward has taken the step. Runs `closure` if given, as SGD would."""
        if closure is not None:
            with torch.enable_grad():
                closure()

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's, but keeping the float32 momentum buffers and master weights in float32 (torch's loader
        casts floating state to each parameter's dtype)."""
        super().load_state_dict(state_dict)
        for param, saved in zip(self.parameters_owned, state_dict["state"].values(), strict=True):
            for key in ("momentum_buffer", "master"):
                if key in saved:
                    self.state[param][key] = saved[key].to(
                        param.device, compute_dtype(param.dtype), copy=True
                    )

    def step_buffers(self) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
        """(weight momentum, bias momentum, weight master, bias master) for the coming step, each None where
        absent; momentum buffers start at zero when momentum is first nonzero."""
        momentum = self.param_groups[0]["momentum"]
        buffers = []
        for key in ("momentum_buffer", "master"):
            for param in (self.weight, self.bias):
                if param is None:
                    buffers.append(None)
                    continue
                state = self.state[param]
                if key == "momentum_buffer" and momentum and key not in state:
                    state[key] = torch.zeros_like(param, dtype=compute_dtype(param.dtype))
                buffers.append(state.get(key) if key == "master" or momentum else None)
        return tuple(buffers)

    def next_rounding_stream(self) -> int | None:
        """Counts a step; returns its stochastic rounding's uint32 key, None if the classifier rounds to
        nearest."""
        state = self.state[self.weight]
        step = state["step"]
        state["step"] = step + 1
        if self.weight.dtype != torch.bfloat16 or self.master_weights:
            return None
        word = 0xFFFFFFFF
        return int(mix32(torch.tensor((self.seed ^ int(mix32(torch.tensor(step & word)))) & word)))

    def hyperparameters(self) -> tuple[float, float, float]:
        """(lr, momentum, weight_decay) of the coming step."""
        group = self.param_groups[0]
        return group["lr"], group["momentum"], group["weight_decay"]


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
            owner = getattr(param, _OWNER_ATTRIBUTE, None)
            if owner is not None and owner() is not None:
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


def sgd_update_chunk_(
    grad: Tensor,
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    buffers: tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None],
    start: int,
    stop: int,
    hyperparameters: tuple[float, float, float],
    rounding_stream: int | None,
    use_triton: bool,
) -> None:
    """One SGD step of labels [start, stop) of `weight` (L, D) and `bias` (L,), in place, from the gradient
    w.r.t. their logits `grad` (R, stop - start) and `input` (R, D): dW_c = gradᵀ·input, db_c = Σ_rows grad,
    both in fp32 (fp64 for fp64). `buffers` are FusedClassifierSGD.step_buffers(), whole; `rounding_stream`
    the step's stochastic rounding key (bfloat16 weight without master copies) or None."""
    lr, momentum, weight_decay = hyperparameters
    weight_momentum, bias_momentum, weight_master, bias_master = (
        None if buffer is None else buffer[start:stop] for buffer in buffers
    )
    num_labels, dim = weight.shape
    if use_triton:
        labels = stop - start
        launch(
            kernels.classifier_sgd_update,
            lambda meta: (triton.cdiv(labels, meta["BLOCK_L"]), triton.cdiv(dim, meta["BLOCK_D"])),
            kernels.HEURISTIC_CONFIG,
            G=grad,
            E=input,
            W=weight[start:stop],
            BIAS=None if bias is None else bias[start:stop],
            W_MOMENTUM=weight_momentum,
            BIAS_MOMENTUM=bias_momentum,
            W_MASTER=weight_master,
            BIAS_MASTER=bias_master,
            B=input.shape[0],
            D=dim,
            chunk_labels=labels,
            label_start=start,
            num_labels=num_labels,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            rounding_stream=0 if rounding_stream is None else rounding_stream,
            stride_g_row=grad.stride(0),
            stride_e_row=input.stride(0),
            stride_e_col=input.stride(1),
            stride_w_row=weight.stride(0),
            stride_w_col=weight.stride(1),
            stride_bias=0 if bias is None else bias.stride(0),
            DOT_PRECISION=dot_precision(input.dtype),
            DOT_IN_FP32=TRITON_INTERPRETED,
            STOCHASTIC_ROUNDING=rounding_stream is not None,
        )
        return
    dtype = compute_dtype(input.dtype)
    chunk_grad = grad.to(dtype)
    ids = None
    if rounding_stream is not None:
        ids = torch.arange(start * dim, stop * dim, device=weight.device).view(stop - start, dim)
    sgd_step_reference(
        weight[start:stop],
        chunk_grad.T @ input.to(dtype),
        weight_momentum,
        weight_master,
        lr,
        momentum,
        weight_decay,
        rounding_stream,
        ids,
    )
    if bias is not None:
        if rounding_stream is not None:
            ids = torch.arange(num_labels * dim + start, num_labels * dim + stop, device=bias.device)
        sgd_step_reference(
            bias[start:stop],
            chunk_grad.sum(dim=0),
            bias_momentum,
            bias_master,
            lr,
            momentum,
            weight_decay,
            rounding_stream,
            ids,
        )
