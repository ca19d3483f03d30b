"""Extreme multi-label data in one import: the containers (`xmc.dataset`), the Extreme Classification
Repository's text formats (`xmc.xc_format`), the seeded synthetic generator with the real datasets' shapes
(`xmc.synthetic`) and batching into `SparseTargets` plus sparse or dense features (`xmc.batching`).

A dataset is an `XMCDataset`: N points whose features are a `SparseFeatures` (CSR rows of feature id and
float32 value) and whose positive labels are a `SparseTargets` (N, L), the losses' native sparse target.
Everything lives on the CPU until `batches` (or `XMCDataset.to`) moves it.
"""

from softmargin_triton.xmc.batching import batches
from softmargin_triton.xmc.dataset import SparseFeatures, XMCDataset
from softmargin_triton.xmc.synthetic import PRESETS, XMCShape, synthetic, zipf_label_sets
from softmargin_triton.xmc.xc_format import read_xc, read_xc_split

__all__ = [
    "PRESETS",
    "SparseFeatures",
    "XMCDataset",
    "XMCShape",
    "batches",
    "read_xc",
    "read_xc_split",
    "synthetic",
    "zipf_label_sets",
]
