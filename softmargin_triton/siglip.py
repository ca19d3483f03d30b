"""Sigmoid contrastive (SigLIP) loss of image and text features, without the B×T logits.

SigLIP (Zhai et al., 2023) scores every image of a batch against every text with
x_ij = logit_scale · img_i · txt_j + logit_bias and sums the sigmoid loss -log σ(z_ij · x_ij), z_ij = +1 for
a matching pair and -1 otherwise, over all pairs, divided by the number of images (open_clip's SigLipLoss).
That is the fused linear + multi-label soft-margin loss of features logit_scale · img against the
"classifier" txt with bias logit_bias and the matches as sparse targets: 'sum' there is Σ_i (1/L) Σ_j ℓ_ij
with L labels, and the chunk loop is told to divide by the number of images instead. So the logits are
never formed; the extra memory is the (B, D) product logit_scale · img, the chunk loop's fp32 (B, D) sum
and its bounded scratch. The scale's gradient comes from that product by autograd, the bias's from its
expansion to the T texts (a stride-0 view, no copy).

The label-sharding machinery computes the same loss over torch.distributed:
`softmargin_triton.distributed.distributed_sigmoid_contrastive_loss`.
"""

import torch
from torch import Tensor, nn

from softmargin_triton.backend import use_triton_for
from softmargin_triton.common import FLOAT_DTYPES
from softmargin_triton.linear_soft_margin import LinearSoftMarginFunction, autocast_operands
from softmargin_triton.sparse_targets import SparseTargets, index_dtype

__all__ = ["SigmoidContrastiveLoss", "sigmoid_contrastive_loss"]


def diagonal_positives(rows: int, device: torch.device) -> SparseTargets:
    """The (rows, rows) targets of matching pairs, row i's one positive label i, built on `device` without
    a host sync."""
    indptr = torch.arange(rows + 1, device=device)
    indices = torch.arange(rows, dtype=index_dtype(rows), device=device)
    return SparseTargets.from_canonical(indptr, indices, rows)


def siglip_operands(
    image_features: Tensor,
    text_features: Tensor,
    logit_scale: Tensor,
    logit_bias: Tensor,
    positives: SparseTargets | None,
    world_size: int = 1,
) -> tuple[Tensor, Tensor, Tensor, torch.dtype]:
    """Checks the arguments of a SigLIP loss and returns the fused linear loss's operands: the features
    logit_scale · image_features (B, D), the texts (T, D) and the bias expanded to (T,) (under autocast in
    its dtype, as the GEMM's operands), and the loss's dtype. The positives span world_size · T texts (all
    ranks' in the distributed loss). Raises on a bad argument."""
    for name, features in (("image_features", image_features), ("text_features", text_features)):
        if not isinstance(features, Tensor) or features.dim() != 2 or 0 in features.shape:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(f"{name} must be a non-empty 2-D tensor, got {shape}")
        if features.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {features.dtype}")
    images, dim = image_features.shape
    if text_features.shape[1] != dim:
        raise ValueError(
            f"image_features (B, D) and text_features (T, D) disagree in D: {tuple(image_features.shape)}, "
            f"{tuple(text_features.shape)}"
        )
    for name, scalar in (("logit_scale", logit_scale), ("logit_bias", logit_bias)):
        if not isinstance(scalar, Tensor) or scalar.dim() != 0:
            shape = tuple(scalar.shape) if isinstance(scalar, Tensor) else type(scalar).__name__
            raise ValueError(f"{name} must be a 0-dim tensor (one learnable scalar), got {shape}")
        if not scalar.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {scalar.dtype}")
    if positives is not None and not isinstance(positives, SparseTargets):
        raise TypeError(
            f"positives must be a SparseTargets (e.g. SparseTargets.from_dense(matches)), got "
            f"{type(positives).__name__}"
        )
    device = image_features.device
    for name, operand in (
        ("text_features", text_features),
        ("logit_scale", logit_scale),
        ("logit_bias", logit_bias),
        ("positives", positives),
    ):
        if operand is not None and operand.device != device:
            raise RuntimeError(f"{name} is on {operand.device}, image_features on {device}")
    if positives is None:
        if images != text_features.shape[0]:
            raise ValueError(
                f"{images} images and {text_features.shape[0]} texts: without `positives` image i matches "
                "text i, so the counts must be equal"
            )
    elif tuple(positives.shape) != (images, world_size * text_features.shape[0]):
        raise ValueError(
            f"positives of shape {tuple(positives.shape)} must be (images, texts) = "
            f"({images}, {world_size * text_features.shape[0]})"
        )
    # open_clip's order: the scale multiplies the image features, the bias is added to the logits.
    features, texts, bias = autocast_operands(logit_scale * image_features, text_features, logit_bias)
    if texts.dtype != features.dtype:
        raise TypeError(
            f"image_features and text_features must share one dtype, got {features.dtype}, {texts.dtype}"
        )
    return features, texts, bias.to(features.dtype).expand(texts.shape[0]), features.dtype


def sigmoid_contrastive_loss(
    image_features: Tensor,
    text_features: Tensor,
    logit_scale: Tensor,
    logit_bias: Tensor,
    *,
    positives: SparseTargets | None = None,
) -> Tensor:
    """SigLIP's loss, `-logsigmoid(z * (logit_scale * image_features @ text_features.T + logit_bias)).sum()
    / B` with z = +1 at the matching pairs and -1 elsewhere (open_clip's SigLipLoss in one process), without
    forming the (B, T) logits.

    Args:
        image_features: (B, D) float16/bfloat16/float32/float64.
        text_features: (T, D), image_features' dtype (under autocast both are cast to its dtype, float64
            excepted).
        logit_scale: () floating, the already exponentiated scale (open_clip passes `logit_scale.exp()`).
        logit_bias: () floating.
        positives: (B, T) SparseTargets: the texts each image matches (several captions per image, repeated
            images). None: image i matches text i only (T = B).

    Returns:
        The loss, (), in image_features' dtype (under autocast in its dtype), computed in fp32 (float64 for
        float64 features). Gradients flow to all four tensors. Memory beyond the inputs and their gradients:
        the (B, D) product logit_scale · image_features, an fp32 (B, D) sum and one (B, T_c) gradient chunk
        (`SOFTMARGIN_TRITON_SCRATCH_MB`, default 64); no host sync.
    """
    features, texts, bias, out_dtype = siglip_operands(
        image_features, text_features, logit_scale, logit_bias, positives
    )
    images = features.shape[0]
    if positives is None:
        positives = diagonal_positives(images, features.device)
    with torch.autocast(features.device.type, enabled=False):  # the chunk loop picks its own precisions
        return LinearSoftMarginFunction.apply(
            features,
            texts,
            bias,
            None,
            positives.indptr,
            positives.indices,
            None,
            None,
            "sum",
            out_dtype,
            use_triton_for(features) and features.dtype != torch.float64,  # the kernel computes in fp32
            torch.is_grad_enabled(),
            0,
            images,  # 'sum' divides each row's sum by this: the number of images, as SigLIP does
        )


class SigmoidContrastiveLoss(nn.Module):
    """SigLIP's loss as a module, open_clip SigLipLoss's single-process semantics: `forward(image_features,
    text_features, logit_scale, logit_bias, positives=None)` returns `sigmoid_contrastive_loss` of them. The
    model owns the learnable scale and bias (pass the exponentiated scale), as in open_clip."""

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor,
        logit_bias: Tensor,
        positives: SparseTargets | None = None,
    ) -> Tensor:
        return sigmoid_contrastive_loss(
            image_features, text_features, logit_scale, logit_bias, positives=positives
        )
