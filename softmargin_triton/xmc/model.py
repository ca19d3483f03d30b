"""A small extreme multi-label classifier: a sparse-feature encoder with the fused linear + MLSM head."""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from softmargin_triton.linear_soft_margin import LinearMultiLabelSoftMarginLoss
from softmargin_triton.sparse_targets import SparseTargets
from softmargin_triton.xmc.dataset import SparseFeatures

__all__ = ["XMCModel"]

LossImplementation = Literal["fused", "torch"]


class XMCModel(nn.Module):
    """Bag-of-features encoder → residual MLP block → dropout → `LinearMultiLabelSoftMarginLoss` head.

    The encoder is an `nn.EmbeddingBag` summing each point's feature embeddings weighted by the feature
    values (the product of the sparse feature row with the (F, hidden) embedding table; its gradient is
    sparse, the rows of the batch's features only), then LayerNorm → GELU → Linear with a residual
    connection. The head owns the (L, hidden) classifier. `dropout` drops entries of the (B, hidden) point
    embedding in training; `label_smoothing` ε trains against targets y·(1 − ε) + ε/2 (both regularise a
    model that otherwise fits every training point, rare labels with overconfident scores).

    `loss="fused"` trains with the fused loss, which never forms the (B, L) logits; `loss="torch"` with
    F.linear + torch's MultiLabelSoftMarginLoss on dense targets, the eager baseline it replaces (same
    parameters, same math).
    """

    def __init__(
        self,
        num_features: int,
        num_labels: int,
        hidden: int = 256,
        *,
        dropout: float = 0.0,
        label_smoothing: float = 0.0,
        loss: LossImplementation = "fused",
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if loss not in ("fused", "torch"):
            raise ValueError(f"loss must be 'fused' or 'torch', got {loss!r}")
        self.loss = loss
        self.num_features, self.num_labels, self.hidden = num_features, num_labels, hidden
        self.dropout, self.label_smoothing = dropout, label_smoothing
        self.embedding = nn.EmbeddingBag(num_features, hidden, mode="sum", sparse=True, device=device)
        nn.init.normal_(self.embedding.weight, std=hidden**-0.5)
        self.block = nn.Sequential(
            nn.LayerNorm(hidden, device=device), nn.GELU(), nn.Linear(hidden, hidden, device=device)
        )
        self.drop = nn.Dropout(dropout)
        self.head = LinearMultiLabelSoftMarginLoss(
            hidden, num_labels, label_smoothing=label_smoothing, device=device
        )

    @torch.no_grad()
    def set_label_prior(self, label_counts: Tensor, num_points: int) -> None:
        """Set the head's bias to each label's log-odds in the training data, from its counts (L,) int64 among
        `num_points` points (a label never seen counts as half a point): training starts from the label
        frequencies instead of spending its first steps pushing ~L - 5 logits per point down."""
        frequency = label_counts.to(self.head.bias).clamp(min=0.5) / num_points
        self.head.bias.copy_(torch.log(frequency) - torch.log1p(-frequency))

    def shape(self) -> dict[str, int | str]:
        """The constructor's arguments: `XMCModel(**model.shape())` builds a model of the same shape."""
        return dict(
            num_features=self.num_features,
            num_labels=self.num_labels,
            hidden=self.hidden,
            dropout=self.dropout,
            label_smoothing=self.label_smoothing,
            loss=self.loss,
        )

    def encode(self, features: SparseFeatures | Tensor) -> Tensor:
        """(B, hidden) point embeddings of sparse features, or of a dense (B, F) float matrix (dropout
        applied in training mode)."""
        if isinstance(features, SparseFeatures):
            indices, offsets, weights = features.embedding_bag_inputs()
            hidden = self.embedding(indices, offsets, per_sample_weights=weights)
        else:
            hidden = features @ self.embedding.weight
        return self.drop(hidden + self.block(hidden))

    def forward(self, features: SparseFeatures | Tensor, targets: SparseTargets) -> Tensor:
        """The mean multi-label soft-margin loss of the batch, a 0-dim tensor."""
        hidden = self.encode(features).to(self.head.weight.dtype)  # a bfloat16 head takes bfloat16 input
        if self.loss == "fused":
            return self.head(hidden, targets)
        logits = self.head.logits(hidden)
        dense = targets.to_dense(logits.dtype) * (1 - self.label_smoothing) + self.label_smoothing / 2
        return F.multilabel_soft_margin_loss(logits, dense)

    @torch.no_grad()
    def topk(self, features: SparseFeatures | Tensor, k: int) -> tuple[Tensor, Tensor]:
        """The k best scores and label ids of each point, (B, k) each, best first, streamed over label
        chunks (no (B, L) scores)."""
        return self.head.topk(self.encode(features).to(self.head.weight.dtype), k)
