"""XMCModel and the trainer CLI: the model's two loss implementations agree; training on a small synthetic
preset learns far beyond the label-frequency baseline; resuming from a checkpoint continues exactly; XC
directories load."""

import dataclasses
import json
import math
import subprocess
import sys

import pandas as pd
import pytest
import torch
from conftest import DEVICE, assert_close
from xmc_helpers import xc_text

from softmargin_triton.fused_sgd import FusedClassifierSGD
from softmargin_triton.xmc.batching import batches
from softmargin_triton.xmc.metrics import precision_at_k, propensity, psp_at_k
from softmargin_triton.xmc.model import XMCModel
from softmargin_triton.xmc.synthetic import PRESETS, synthetic
from softmargin_triton.xmc.train import TrainConfig, evaluate, main, make_optimizers

# A tiny run: eurlex-4k's 3,993 labels and 5,000 features, a tenth of its points.
SMALL = ["--dataset", "eurlex-4k", "--scale", "0.1", "--batch-size", "32", "--hidden", "128", "--lr", "1e-2"]


def run(tmp_path, *args: str) -> dict:
    return main([*SMALL, "--device", DEVICE, "--no-progress", "--out", str(tmp_path), *args])


def test_model_losses_agree_and_features_may_be_dense(backend):
    shape = dataclasses.replace(PRESETS["eurlex-4k"], num_features=300, num_labels=200)
    train, _ = synthetic(shape, num_points=40, seed=1)
    features, targets = next(batches(train, 40, shuffle=False, device=DEVICE))
    torch.manual_seed(0)
    # Smoothing as the fused loss applies it; dropout (off in eval mode) leaves the comparison exact.
    options = dict(dropout=0.5, label_smoothing=0.1, device=DEVICE)
    fused = XMCModel(train.num_features, train.num_labels, 32, **options).eval()
    eager = XMCModel(train.num_features, train.num_labels, 32, loss="torch", **options).eval()
    eager.load_state_dict(fused.state_dict())
    models = (fused, eager)
    assert_close(fused.encode(features.to_dense()), fused.encode(features))
    assert_close(fused(features, targets), eager(features, targets))
    grads = [torch.autograd.grad(model(features, targets), list(model.parameters())) for model in models]
    for fused_grad, eager_grad in zip(*grads, strict=True):  # the embedding's gradients are sparse
        assert_close(fused_grad.to_dense(), eager_grad.to_dense())
    values, labels = fused.topk(features, 5)
    logits = fused.head.logits(fused.encode(features))
    assert_close(values, logits.topk(5).values)
    assert torch.equal(logits.gather(1, labels), values)
    with pytest.raises(ValueError, match="loss must be 'fused' or 'torch'"):
        XMCModel(4, 4, loss="eager")


def test_dropout_acts_in_training_only_and_the_shape_rebuilds_the_model():
    features = torch.tensor([[0.0, 1.0, 0.5, 0.0], [2.0, 0.0, 0.0, 1.0]])
    torch.manual_seed(0)
    model = XMCModel(4, 3, 64, dropout=0.5, label_smoothing=0.01)
    first, second = model.encode(features), model.encode(features)
    assert not torch.equal(first, second)
    assert 0.3 < (first == 0).float().mean() < 0.7  # about half the entries dropped
    rebuilt = XMCModel(**model.shape())
    rebuilt.load_state_dict(model.state_dict())
    assert (rebuilt.dropout, rebuilt.label_smoothing) == (0.5, 0.01)
    model.eval(), rebuilt.eval()
    assert torch.equal(model.encode(features), model.encode(features))
    assert torch.equal(model.encode(features), rebuilt.encode(features))
    assert (model.encode(features) != 0).all()


@pytest.mark.parametrize("head_optimizer", ["adamw", "fused-row-adaptive"])
def test_a_step_updates_only_the_embedding_rows_of_the_batch_features(head_optimizer):
    """The embedding's gradient is sparse and SparseAdam touches only the rows the batch read: a step costs
    the batch's non-zeros, not the table. A fused head optimizer steps the classifier without its gradient."""
    shape = dataclasses.replace(PRESETS["eurlex-4k"], num_features=2_000, num_labels=100)
    train, _ = synthetic(shape, num_points=16, seed=4)
    features, targets = next(batches(train, 16, shuffle=False))
    torch.manual_seed(0)
    model = XMCModel(train.num_features, train.num_labels, 16)
    model.set_label_prior(train.label_counts(), train.num_points)
    optimizers = make_optimizers(model, TrainConfig(dataset="", out="", head_optimizer=head_optimizer))
    assert isinstance(optimizers[2], FusedClassifierSGD) is (head_optimizer != "adamw")
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    model(features, targets).backward()
    assert model.embedding.weight.grad.is_sparse
    for optimizer in optimizers:
        optimizer.step()
    changed = (model.embedding.weight != before["embedding.weight"]).any(dim=1).nonzero().flatten()
    assert changed.tolist() == features.indices.unique().tolist()
    assert 0 < changed.numel() < train.num_features / 2
    for name, parameter in model.named_parameters():  # the dense parameters all move
        assert name == "embedding.weight" or not torch.equal(parameter, before[name]), name
    assert (model.head.weight.grad is None) is (head_optimizer != "adamw")


def test_label_prior_sets_the_bias_to_the_training_log_odds():
    model = XMCModel(10, 3, 4)
    model.set_label_prior(torch.tensor([0, 5, 50]), 100)
    expected = torch.tensor([0.005, 0.05, 0.5]).logit()
    torch.testing.assert_close(model.head.bias.detach(), expected)


def test_trainer_learns_far_beyond_label_frequency(tmp_path):
    summary = run(tmp_path, "--epochs", "4")
    baseline, metrics = summary["label_frequency_baseline"], summary["metrics"]
    assert metrics["P@1"] > baseline["P@1"] + 0.15, (metrics, baseline)
    assert metrics["P@5"] > baseline["P@5"] + 0.05, (metrics, baseline)
    assert all(0 < value <= 1 for value in metrics.values()), metrics
    assert summary["train_points"] == 1554 and summary["num_labels"] == 3993
    assert summary["seconds_per_epoch"] > 0 and summary["peak_memory_mb"] > 0
    # What ran: bf16 autocast and the kernels on CUDA; on a CPU neither ("auto" backend).
    assert summary["config"]["autocast"] is (DEVICE == "cuda")
    cpu_path = "plain-torch chunk loop (no Triton kernel)"
    assert summary["loss_path"] == ("Triton kernels" if DEVICE == "cuda" else cpu_path)

    log = pd.read_csv(tmp_path / "log.csv")
    assert set(log.split) == {"train", "test"}
    losses = log[(log.split == "train") & (log.metric == "loss")]
    assert losses.step.is_monotonic_increasing and losses.value.gt(0).all()
    assert losses.value.iloc[-5:].mean() < 0.7 * losses.value.iloc[:5].mean()  # the loss falls
    p_at_1 = log[(log.split == "test") & (log.metric == "P@1")]
    assert list(p_at_1.epoch) == [1, 2, 3, 4]
    assert math.isclose(p_at_1.value.iloc[-1], metrics["P@1"])
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "summary.json").read_text())["metrics"] == metrics


@pytest.mark.parametrize(
    "head",
    [[], ["--head-optimizer", "fused-row-adaptive", "--head-dtype", "bfloat16"]],
    ids=["adamw", "fused"],
)
def test_resume_continues_where_the_checkpoint_stopped(tmp_path, monkeypatch, head):
    """A run that crashed during its second epoch, resumed, ends as the run that never stopped (same
    shuffles, steps, learning rates and losses; the fused head's stochastic rounding too)."""
    tiny = ["--epochs", "2", "--scale", "0.03", "--hidden", "32", "--threads", "1", *head]  # also --threads
    threads = torch.get_num_threads()
    try:
        straight = run(tmp_path / "straight", *tiny)
        calls = []

        def crash_in_epoch_2(*args):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return evaluate(*args)

        monkeypatch.setattr("softmargin_triton.xmc.train.evaluate", crash_in_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path / "resumed", *tiny)
        monkeypatch.undo()
        resumed = run(tmp_path / "resumed", *tiny, "--resume")
    finally:
        torch.set_num_threads(threads)
    assert straight["threads"] == resumed["threads"] == 1
    assert resumed["metrics"] == straight["metrics"]
    straight_log = pd.read_csv(tmp_path / "straight" / "log.csv")
    resumed_log = pd.read_csv(tmp_path / "resumed" / "log.csv")
    losses = [log[log.metric == "loss"].reset_index(drop=True) for log in (straight_log, resumed_log)]
    pd.testing.assert_frame_equal(*losses)


def test_trains_from_an_xc_directory(tmp_path):
    train, test = synthetic("eurlex-4k", num_points=200, num_test_points=50, seed=2)
    (tmp_path / "train.txt").write_text(xc_text(train))
    (tmp_path / "test.txt").write_text(xc_text(test))
    args = ["--dataset", str(tmp_path), "--epochs", "1", "--hidden", "16", "--out", str(tmp_path / "run")]
    summary = main([*args, "--device", DEVICE, "--no-progress"])
    assert (summary["train_points"], summary["test_points"]) == (200, 50)
    assert set(summary["metrics"]) == {f"{name}@{k}" for name in ("P", "nDCG", "PSP") for k in (1, 3, 5)}
    with pytest.raises(ValueError, match="neither a preset"):
        main(["--dataset", str(tmp_path / "missing"), "--out", str(tmp_path / "run")])
    named_like_a_preset = tmp_path / "eurlex-4k"  # a directory wins over the preset of the same name
    named_like_a_preset.mkdir()
    (tmp_path / "train.txt").rename(named_like_a_preset / "train.txt")
    narrower = dataclasses.replace(PRESETS["eurlex-4k"], num_labels=3000)
    (named_like_a_preset / "test.txt").write_text(xc_text(synthetic(narrower, num_points=20, seed=2)[1]))
    with pytest.raises(ValueError, match="3993 labels, the test split 5000 and 3000"):
        main(["--dataset", str(named_like_a_preset), "--out", str(tmp_path / "run")])


def test_evaluation_scores_the_whole_split_at_once():
    """Metrics do not depend on the evaluation batch size: PSP@k is the split's ratio of means."""
    shape = dataclasses.replace(PRESETS["eurlex-4k"], num_features=80, num_labels=50)
    train, test = synthetic(shape, num_points=200, num_test_points=70, seed=3)
    torch.manual_seed(0)
    model = XMCModel(80, 50, 16)
    label_propensity = propensity(train.label_counts(), train.num_points)
    topk = model.topk(test.features, 5)[1]
    expected = {
        "PSP@5": psp_at_k(topk, test.labels, 5, label_propensity),
        "P@3": precision_at_k(topk, test.labels, 3),
    }
    for batch_size in (7, 32, 1000):
        metrics = evaluate(model, test, label_propensity, batch_size, torch.device("cpu"))
        for name, value in expected.items():
            assert metrics[name] == pytest.approx(float(value), rel=1e-6), (batch_size, name)


def test_resume_refuses_changed_settings_and_redoes_unsaved_epochs(tmp_path):
    tiny = ["--scale", "0.03", "--hidden", "32"]
    run(tmp_path, "--epochs", "1", *tiny)
    with pytest.raises(ValueError, match=r"settings other than the checkpoint's.*'lr': \(0.01, 1e-06\)"):
        run(tmp_path, "--epochs", "2", *tiny, "--lr", "1e-6", "--resume")
    log = pd.read_csv(tmp_path / "log.csv")
    crashed = pd.concat([log, log.assign(epoch=2)])  # rows a crash left after the checkpoint's epoch
    crashed.to_csv(tmp_path / "log.csv", index=False)
    run(tmp_path, "--epochs", "2", *tiny, "--resume")
    resumed = pd.read_csv(tmp_path / "log.csv")
    assert not resumed.duplicated(["split", "epoch", "step", "metric"]).any()
    assert sorted(set(resumed.epoch)) == [1, 2]


@pytest.mark.parametrize(
    "args, match",
    [
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--eval-every", "-1"], "--eval-every must be at least 1"),
        (["--scale", "0"], "--scale must be positive"),
        (["--threads", "0"], "--threads must be at least 1"),
        (["--dropout", "1"], r"--dropout must be in \[0, 1\)"),
        (["--label-smoothing", "-0.1"], r"--label-smoothing must be in \[0, 1\)"),
        (["--loss", "torch", "--head-optimizer", "fused-row-adaptive"], "use --loss fused"),
    ],
)
def test_bad_arguments_fail_before_training(tmp_path, args, match):
    with pytest.raises(ValueError, match=match):
        run(tmp_path, *args)
    assert not (tmp_path / "log.csv").exists()


def test_help_runs_and_a_missing_extra_names_the_install_line():
    command = [sys.executable, "-m", "softmargin_triton.xmc.train", "--help"]
    shown = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "--dataset" in shown.stdout, shown.stderr
    for missing in ("tqdm", "pandas", "matplotlib"):  # None in sys.modules: the import fails as if absent
        code = f"import sys, runpy; sys.modules[{missing!r}] = None; sys.argv[1:] = ['--help']; "
        code += "runpy.run_module('softmargin_triton.xmc.train', run_name='__main__')"
        failed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert failed.returncode != 0
        last = failed.stderr.strip().splitlines()[-1]
        assert last.startswith(f"ImportError: the XMC trainer needs {missing}"), failed.stderr
        assert 'pip install "softmargin-triton[xmc]"' in last, failed.stderr
