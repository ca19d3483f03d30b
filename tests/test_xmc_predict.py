"""softmargin_triton.xmc.predict: the checkpoint rebuilds the model without the data, and the prediction
file holds each point's top k as documented."""

import pytest
import torch
from conftest import DEVICE
from xmc_helpers import SMALL, xc_text

from softmargin_triton.xmc.batching import batches
from softmargin_triton.xmc.predict import load_model, main
from softmargin_triton.xmc.synthetic import synthetic
from softmargin_triton.xmc.train import main as train


def read_predictions(path) -> tuple[list[int], list[list[tuple[int, float]]]]:
    header, *lines = path.read_text().splitlines()
    rows = [
        [(int(label), float(score)) for label, score in (pair.split(":") for pair in line.split(" "))]
        for line in lines
    ]
    return [int(number) for number in header.split(" ")], rows


def test_checkpoint_predicts_from_the_command_line(tmp_path):
    args = ["--dataset", "eurlex-4k", "--scale", "0.03", "--hidden", "16", "--epochs", "1", "--no-progress"]
    train([*args, "--device", DEVICE, "--out", str(tmp_path / "run")])
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    model = load_model(checkpoint)  # the shape comes from the checkpoint alone
    assert (model.num_features, model.num_labels, model.hidden) == (5_000, 3_993, 16)

    _, test = synthetic("eurlex-4k", scale=0.03)
    (tmp_path / "test.txt").write_text(xc_text(test))
    for dataset in (str(tmp_path / "test.txt"), "eurlex-4k"):  # a file, and the preset's test split
        out = tmp_path / "predictions.txt"
        main(
            [
                "--checkpoint",
                str(checkpoint),
                "--dataset",
                dataset,
                "--scale",
                "0.03",
                "--k",
                "4",
                "--out",
                str(out),
            ]
        )
        header, rows = read_predictions(out)
        assert header == [test.num_points, 4] and len(rows) == test.num_points
        features = next(batches(test, test.num_points, shuffle=False))[0]
        expected_logits, expected_labels = model.topk(features, 4)
        assert [[label for label, _ in row] for row in rows] == expected_labels.tolist()
        scores = torch.tensor([[score for _, score in row] for row in rows])
        torch.testing.assert_close(scores, torch.sigmoid(expected_logits), rtol=1e-5, atol=1e-6)
        assert bool((scores[:, :-1] >= scores[:, 1:]).all()), "best first"

    with pytest.raises(ValueError, match="the dataset has 300 features, the model was trained on 5000"):
        other = synthetic(SMALL, num_points=3)[1]
        (tmp_path / "other.txt").write_text(xc_text(other))
        main(["--checkpoint", str(checkpoint), "--dataset", str(tmp_path / "other.txt"), "--out", str(out)])
