"""softmargin_triton.xmc.dataset: the containers' checks and the embedding bag's inputs."""

import pytest
import torch
from xmc_helpers import SMALL

from softmargin_triton.sparse_targets import SparseTargets
from softmargin_triton.xmc.batching import batches
from softmargin_triton.xmc.dataset import SparseFeatures, XMCDataset
from softmargin_triton.xmc.synthetic import synthetic


def test_containers_check_shapes_and_dtypes():
    indptr, ids, values = torch.tensor([0, 1, 2]), torch.tensor([0, 3]), torch.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match="indices must be a 1-D int64 tensor"):
        SparseFeatures(indptr, ids.int(), values, 4)
    with pytest.raises(ValueError, match="values must be float32"):
        SparseFeatures(indptr, ids, values.double(), 4)
    features = SparseFeatures(indptr, ids, values, 4)
    with pytest.raises(ValueError, match="2 feature rows but 3 label rows"):
        XMCDataset(features, SparseTargets.from_lists([[0], [], [1]], num_labels=2))


def test_embedding_bag_inputs_match_the_dense_product():
    # Empty rows, the last one included, are the case offsets get wrong.
    features = SparseFeatures(
        torch.tensor([0, 2, 2, 5, 5]),
        torch.tensor([1, 6, 0, 3, 6]),
        torch.tensor([0.5, -1.0, 2.0, 0.25, 3.0]),
        num_features=7,
    )
    bag = torch.nn.EmbeddingBag(7, 4, mode="sum")
    torch.testing.assert_close(bag(*features.embedding_bag_inputs()), features.to_dense() @ bag.weight)
    train, _ = synthetic(SMALL, num_points=64)
    batch, _ = next(batches(train, 16, shuffle=True, generator=torch.Generator().manual_seed(0)))
    bag = torch.nn.EmbeddingBag(SMALL.num_features, 8, mode="sum")
    torch.testing.assert_close(bag(*batch.embedding_bag_inputs()), batch.to_dense() @ bag.weight)


def test_data_module_gathers_the_public_names():
    from softmargin_triton.xmc import batching, data, dataset, synthetic, xc_format

    for module in (batching, dataset, synthetic, xc_format):
        for name in module.__all__:
            assert getattr(data, name) is getattr(module, name) and name in data.__all__
