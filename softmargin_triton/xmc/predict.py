"""Predict the top-k labels of points with a trained XMC model, from the command line.

    python -m softmargin_triton.xmc.predict --checkpoint runs/eurlex/checkpoint.pt --dataset DIR_OR_FILE \\
        --k 5 --out predictions.txt

`--checkpoint` is the trainer's checkpoint.pt, which holds the model's shape beside its weights, so nothing
else is needed to rebuild it. `--dataset` is a file in the repository's one-file format (train.txt,
test.txt), a directory (its test split: test.txt, or tst_X_Xf.txt with tst_X_Y.txt) or a synthetic preset
(its test split at `--scale` and `--data-seed`, as the trainer draws it). Scores stream over label
chunks, as training does: the (points, labels) scores are never held.

The output is text: a header line "<points> <k>", then one line per point in the input's order holding
its k best labels, best first, as "label:score" pairs separated by spaces; a score is the sigmoid of the
logit, the model's probability that the label is a positive, written with 6 significant digits.
"""

import argparse
from pathlib import Path

import torch
from torch import Tensor

from softmargin_triton.xmc.batching import batches
from softmargin_triton.xmc.dataset import XMCDataset
from softmargin_triton.xmc.model import XMCModel
from softmargin_triton.xmc.synthetic import PRESETS
from softmargin_triton.xmc.train import load_dataset
from softmargin_triton.xmc.xc_format import read_xc

__all__ = ["load_model", "main", "predict", "write_predictions"]


def load_model(checkpoint: str | Path, device: torch.device | str = "cpu") -> XMCModel:
    """The model saved in a trainer checkpoint, rebuilt from the shape stored in it, in eval mode."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = XMCModel(**state["model_shape"], device=device)
    model.load_state_dict(state["model"])
    return model.eval()


def predict(model: XMCModel, dataset: XMCDataset, k: int, batch_size: int = 1024) -> tuple[Tensor, Tensor]:
    """Each point's k best (scores (N, k) float32 in (0, 1), label ids (N, k) int64), best first; the
    dataset is batched onto the model's device."""
    if dataset.num_features != model.num_features:
        raise ValueError(
            f"the dataset has {dataset.num_features} features, the model was trained on {model.num_features}"
        )
    if not 0 < k <= model.num_labels:
        raise ValueError(f"--k must be in [1, {model.num_labels}] (the model's labels), got {k}")
    device = model.embedding.weight.device
    results = [
        model.topk(features, k) for features, _ in batches(dataset, batch_size, shuffle=False, device=device)
    ]
    logits = torch.cat([values for values, _ in results]).float().cpu()
    return torch.sigmoid(logits), torch.cat([labels for _, labels in results]).cpu()


def write_predictions(path: str | Path, scores: Tensor, labels: Tensor) -> None:
    """The documented text format (module doc) of `scores` (N, k) float and `labels` (N, k) int."""
    with open(path, "w", encoding="utf-8") as file:
        file.write(f"{labels.shape[0]} {labels.shape[1]}\n")
        for row_labels, row_scores in zip(labels.tolist(), scores.tolist(), strict=True):
            file.write(
                " ".join(f"{label}:{score:.6g}" for label, score in zip(row_labels, row_scores, strict=True))
            )
            file.write("\n")


def _points(name: str, scale: float, data_seed: int) -> XMCDataset:
    path = Path(name)
    if path.is_file():
        return read_xc(path)
    if path.is_dir() or name in PRESETS:
        return load_dataset(name, scale, data_seed)[1]
    raise ValueError(f"--dataset {name!r} is neither a file, a directory nor a preset ({', '.join(PRESETS)})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m softmargin_triton.xmc.predict", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="the trainer's checkpoint.pt")
    parser.add_argument(
        "--dataset", required=True, help="an XC file, an XC directory (its test split) or a preset"
    )
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--out", required=True, type=Path, help="the predictions' text file")
    parser.add_argument("--scale", type=float, default=1.0, help="a preset's points × the preset's")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=1024)
    args = parser.parse_args(argv)
    model = load_model(args.checkpoint, args.device)
    scores, labels = predict(
        model, _points(args.dataset, args.scale, args.data_seed), args.k, args.batch_size
    )
    write_predictions(args.out, scores, labels)


if __name__ == "__main__":
    main()
