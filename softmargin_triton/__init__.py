"""Fused Triton kernels for the multi-label soft-margin loss (sigmoid + binary cross-entropy).

Drop-in replacements for `torch.nn.functional.multilabel_soft_margin_loss`,
`torch.nn.functional.binary_cross_entropy_with_logits` and their modules, with PyTorch's semantics.
"""

from softmargin_triton.backend import BACKEND_ENV_VAR, current_backend, use_backend
from softmargin_triton.focal import AsymmetricLoss, SigmoidFocalLoss, asymmetric_loss, sigmoid_focal_loss
from softmargin_triton.fused_sgd import FusedClassifierSGD
from softmargin_triton.linear_soft_margin import (
    SCRATCH_ENV_VAR,
    LinearMultiLabelSoftMarginLoss,
    linear_multilabel_soft_margin_loss,
)
from softmargin_triton.siglip import SigmoidContrastiveLoss, sigmoid_contrastive_loss
from softmargin_triton.soft_margin import (
    BCEWithLogitsLoss,
    MultiLabelSoftMarginLoss,
    binary_cross_entropy_with_logits,
    multilabel_soft_margin_loss,
)
from softmargin_triton.sparse_targets import SparseTargets

__version__ = "0.1.0"

__all__ = [
    "BACKEND_ENV_VAR",
    "SCRATCH_ENV_VAR",
    "AsymmetricLoss",
    "BCEWithLogitsLoss",
    "FusedClassifierSGD",
    "LinearMultiLabelSoftMarginLoss",
    "MultiLabelSoftMarginLoss",
    "SigmoidContrastiveLoss",
    "SigmoidFocalLoss",
    "SparseTargets",
    "__version__",
    "asymmetric_loss",
    "binary_cross_entropy_with_logits",
    "current_backend",
    "linear_multilabel_soft_margin_loss",
    "multilabel_soft_margin_loss",
    "sigmoid_contrastive_loss",
    "sigmoid_focal_loss",
    "use_backend",
]
