"""Train an extreme multi-label classifier with the fused loss, from the command line.

    python -m softmargin_triton.xmc.train --dataset eurlex-4k --scale 0.25 --threads 2 --out runs/eurlex

`--dataset` is a synthetic preset (eurlex-4k, amazoncat-13k, wiki10-31k, amazon-670k; `--scale` sets the
number of points) or a directory of the Extreme Classification Repository holding train.txt and test.txt
(one file per split) or trn_X_Xf.txt, trn_X_Y.txt, tst_X_Xf.txt and tst_X_Y.txt (features and labels
apart). It picks CUDA when there is one (the Triton kernels, bf16 autocast) and the CPU otherwise (the
plain-torch path), evaluates P@k, nDCG@k and PSP@k on the test split every `--eval-every` epochs, and
writes into `--out`: log.csv (long format: one row per split, epoch, step and metric), curves.png,
summary.json and checkpoint.pt (self-contained: the model's shape is stored beside its weights, so
`python -m softmargin_triton.xmc.predict` rebuilds it without the data; `--resume` continues from it, with
the same settings but for --epochs, --eval-every, --device, --threads and --out). The embedding table
trains with sparse gradients (SparseAdam), so a step costs the batch's non-zeros × hidden, not
features × hidden; `--threads` sets torch's CPU threads (on a shared machine, fewer than its cores).
`--dropout` (on the point embedding) and `--label-smoothing` regularise the model, which otherwise fits
every training point and ranks rare labels above a test point's likelier ones. `--head-optimizer`
fused-sgd or fused-row-adaptive steps the classifier inside the loss's backward
(softmargin_triton.fused_sgd), so that neither its (L, hidden) gradient nor AdamW's moments exist.
summary.json's time per epoch leaves out the first epoch, which also compiles and autotunes the
kernels; its config records autocast as it ran (off on a CPU) and `loss_path` the code that computed the
loss. Needs the xmc extra: `pip install "softmargin-triton[xmc]"`.
"""

import argparse
import dataclasses
import json
import math
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

try:  # the xmc extra's packages (matplotlib.pyplot is imported where curves.png is drawn)
    import matplotlib
    import pandas as pd
    from tqdm import tqdm
except ImportError as error:
    raise ImportError(
        f"the XMC trainer needs {error.name or error}, which the package's core install leaves out: "
        'pip install "softmargin-triton[xmc]" (or pip install -e ".[xmc]" in a checkout)'
    ) from error

import softmargin_triton
from softmargin_triton.backend import use_triton_for
from softmargin_triton.fused_sgd import FusedClassifierSGD
from softmargin_triton.xmc.batching import batches
from softmargin_triton.xmc.dataset import XMCDataset
from softmargin_triton.xmc.metrics import ndcg_at_k, precision_at_k, propensity, psp_at_k
from softmargin_triton.xmc.model import XMCModel
from softmargin_triton.xmc.synthetic import PRESETS, synthetic
from softmargin_triton.xmc.xc_format import read_xc, read_xc_split

__all__ = ["TrainConfig", "load_dataset", "main", "make_head_optimizer", "make_optimizers", "train"]

KS = (1, 3, 5)
# Settings a resumed run may change; any other difference from the checkpoint's is refused.
_RESUMABLE_CHANGES = {"epochs", "resume", "progress", "out", "device", "eval_every", "threads"}


@dataclass
class TrainConfig:
    """Everything a run depends on; stored in the checkpoint and summary.json."""

    dataset: str
    out: str
    scale: float = 1.0
    data_seed: int = 0
    epochs: int = 15
    batch_size: int = 64
    lr: float = 1e-2
    embedding_lr: float = 5e-2
    weight_decay: float = 0.1
    hidden: int = 256
    dropout: float = 0.15
    label_smoothing: float = 1e-4
    loss: str = "fused"
    head_optimizer: str = "adamw"
    head_lr: float | None = None
    head_dtype: str = "auto"
    head_master_weights: bool = False
    device: str = "auto"
    autocast: bool = True
    eval_every: int = 1
    seed: int = 0
    resume: bool = False
    progress: bool = True
    threads: int | None = None


def load_dataset(name: str, scale: float = 1.0, seed: int = 0) -> tuple[XMCDataset, XMCDataset]:
    """(train, test): an XC repository directory (see the module doc), else a synthetic preset at `scale`."""
    folder = Path(name)
    splits = None
    if (folder / "train.txt").is_file():
        splits = read_xc(folder / "train.txt"), read_xc(folder / "test.txt")
    elif (folder / "trn_X_Xf.txt").is_file():
        splits = (
            read_xc_split(folder / "trn_X_Xf.txt", folder / "trn_X_Y.txt"),
            read_xc_split(folder / "tst_X_Xf.txt", folder / "tst_X_Y.txt"),
        )
    elif name in PRESETS and not folder.exists():
        return synthetic(name, scale=scale, seed=seed)
    if splits is not None:
        train, test = splits
        if (train.num_features, train.num_labels) != (test.num_features, test.num_labels):
            raise ValueError(
                f"--dataset {name!r}: the training split has {train.num_features} features and "
                f"{train.num_labels} labels, the test split {test.num_features} and {test.num_labels}"
            )
        return splits
    raise ValueError(
        f"--dataset {name!r} is neither a preset ({', '.join(PRESETS)}) nor a directory holding train.txt "
        "and test.txt, or trn_X_Xf.txt, trn_X_Y.txt, tst_X_Xf.txt and tst_X_Y.txt"
    )


HEAD_OPTIMIZERS = ("adamw", "fused-sgd", "fused-row-adaptive")
# fused-sgd's default step per unit gradient of the loss summed over the batch's rows and labels: the best of
# 1, 3, 10 and 30 in exploratory runs on eurlex-4k × 0.25 (no better with momentum); plain SGD stays far
# below AdamW whatever the rate (reports/xmc/head-optimizers).
FUSED_SGD_SUM_LR = 10.0


def head_learning_rate(config: "TrainConfig", num_labels: int) -> float:
    """The head optimizer's learning rate before decay. AdamW and the row-adaptive step are invariant to the
    gradient's scale and take `--head-lr` (default `--lr`). Plain SGD is not: the mean loss divides each
    logit's gradient by batch × labels, so `--head-lr` (default FUSED_SGD_SUM_LR) is its step on the summed
    loss and the optimizer gets it times batch × labels."""
    if config.head_optimizer == "fused-sgd":
        sum_lr = FUSED_SGD_SUM_LR if config.head_lr is None else config.head_lr
        return sum_lr * config.batch_size * num_labels
    return config.lr if config.head_lr is None else config.head_lr


def make_head_optimizer(model: XMCModel, config: "TrainConfig") -> torch.optim.Optimizer:
    """The optimizer of the head's (L, hidden) classifier and (L,) bias, per `--head-optimizer`: AdamW with
    `--weight-decay`, or a FusedClassifierSGD that steps them inside the loss's backward, so that their
    gradient and AdamW's two moments are never held: plain SGD (fused-sgd) or the row-adaptive step
    (fused-row-adaptive, decoupled weight decay `--weight-decay`)."""
    lr = head_learning_rate(config, model.num_labels)
    if config.head_optimizer == "adamw":
        # fused: one pass over each tensor instead of one per arithmetic step (~5x faster on a CPU)
        return torch.optim.AdamW(model.head.parameters(), lr=lr, weight_decay=config.weight_decay, fused=True)
    row_adaptive = config.head_optimizer == "fused-row-adaptive"
    return FusedClassifierSGD(
        model.head,
        lr=lr,
        weight_decay=config.weight_decay if row_adaptive else 0.0,
        row_adaptive=row_adaptive,
        master_weights=config.head_master_weights,
        seed=config.seed,
    )


def make_optimizers(model: XMCModel, config: "TrainConfig") -> list[torch.optim.Optimizer]:
    """[SparseAdam at `--embedding-lr` for the embedding table, whose gradient holds only the rows of the
    batch's features (a step costs the batch's non-zeros × hidden, not features × hidden); AdamW at `--lr`
    with `--weight-decay` for the block; the head's (`make_head_optimizer`)]. Their base learning rates are
    `base_learning_rates`."""
    return [
        torch.optim.SparseAdam([model.embedding.weight], lr=config.embedding_lr),
        torch.optim.AdamW(
            model.block.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True
        ),
        make_head_optimizer(model, config),
    ]


def base_learning_rates(config: "TrainConfig", num_labels: int) -> list[float]:
    """The learning rate of each of make_optimizers' optimizers before the linear decay."""
    return [config.embedding_lr, config.lr, head_learning_rate(config, num_labels)]


def head_dtype(config: "TrainConfig", use_autocast: bool) -> torch.dtype:
    """The classifier's dtype: `--head-dtype`, or for "auto" bfloat16 where a fused head optimizer runs
    under bf16 autocast (autocast would step a bf16 copy of a float32 classifier, which FusedClassifierSGD
    refuses) and float32 otherwise."""
    if config.head_dtype != "auto":
        return getattr(torch, config.head_dtype)
    return torch.bfloat16 if use_autocast and config.head_optimizer != "adamw" else torch.float32


def _rng_state(device: torch.device) -> list[torch.Tensor]:
    """The global generators' states that dropout draws from: the CPU's, and `device`'s on CUDA."""
    return [torch.get_rng_state()] + ([torch.cuda.get_rng_state(device)] if device.type == "cuda" else [])


def _set_rng_state(states: list[torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(states[0])
    if device.type == "cuda" and len(states) > 1:  # a run resumed on CUDA after a CPU run draws afresh
        torch.cuda.set_rng_state(states[1], device)


def _device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


@torch.no_grad()
def evaluate(
    model: XMCModel, test: XMCDataset, label_propensity: torch.Tensor, batch_size: int, device: torch.device
) -> dict[str, float]:
    """P@k, nDCG@k and PSP@k for k in KS over the whole test split (PSP as a ratio of means over all its
    points, as the XC repository's tools); `label_propensity` (L,) for PSP. `test` on `device`."""
    model.eval()
    k = min(max(KS), test.num_labels)
    # The (N, k) predicted ids are small: score the split at once rather than averaging batch ratios.
    topk = torch.cat([model.topk(features, k)[1] for features, _ in batches(test, batch_size, shuffle=False)])
    model.train()
    metrics = {}
    for at in (at for at in KS if at <= k):
        metrics[f"P@{at}"] = precision_at_k(topk, test.labels, at)
        metrics[f"nDCG@{at}"] = ndcg_at_k(topk, test.labels, at)
        metrics[f"PSP@{at}"] = psp_at_k(topk, test.labels, at, label_propensity)
    return {name: float(value) for name, value in metrics.items()}


def frequency_baseline(train: XMCDataset, test: XMCDataset) -> dict[str, float]:
    """P@k of predicting the training split's most frequent labels for every test point."""
    k = min(max(KS), test.num_labels)
    top = train.label_counts().topk(k).indices
    topk = top.expand(test.num_points, k)
    return {f"P@{at}": float(precision_at_k(topk, test.labels, at)) for at in KS if at <= k}


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux reports KiB


def _loss_path(loss: str, device: torch.device) -> str:
    """Which code computes the training loss on `device` under the current backend."""
    if loss == "torch":
        return "eager F.linear + torch MultiLabelSoftMarginLoss"
    if not use_triton_for(torch.empty(0, device=device)):
        return "plain-torch chunk loop (no Triton kernel)"
    return "Triton kernels" + (" (CPU interpreter)" if device.type == "cpu" else "")


def _plot(log: pd.DataFrame, baseline: dict[str, float], title: str, path: Path) -> None:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(11, 4))
    losses = log[(log.split == "train") & (log.metric == "loss")]
    loss_ax.plot(losses.step, losses.value)
    loss_ax.set(xlabel="step", ylabel="training loss (mean over logged steps)", yscale="log")
    evals = log[log.split == "test"]
    for name in ("P@1", "P@5", "nDCG@5", "PSP@5"):
        rows = evals[evals.metric == name]
        if len(rows):
            line = metric_ax.plot(rows.epoch, rows.value, marker="o", label=name)[0]
            if name in baseline:
                metric_ax.axhline(baseline[name], ls="--", color=line.get_color(), label=f"{name} frequency")
    metric_ax.set(xlabel="epoch", ylabel="test metric", ylim=(0, 1))
    metric_ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def train(config: TrainConfig) -> dict:
    """Run (or resume) training as `config` says; returns the summary also written to summary.json."""
    for name in ("epochs", "batch_size", "eval_every", "hidden", "threads"):
        if getattr(config, name) is not None and getattr(config, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    if not config.scale > 0:
        raise ValueError(f"--scale must be positive, got {config.scale}")
    for name in ("dropout", "label_smoothing"):
        if not 0 <= getattr(config, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(config, name)}")
    if config.head_optimizer != "adamw" and config.loss != "fused":
        raise ValueError(
            f"--head-optimizer {config.head_optimizer} steps the fused loss's head: use --loss fused"
        )
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    device = _device(config.device)
    use_autocast = config.autocast and device.type == "cuda"
    if use_autocast and config.head_optimizer != "adamw" and config.head_dtype == "float32":
        raise ValueError(
            "bf16 autocast would step a bfloat16 copy of a float32 fused head: --head-dtype auto or "
            "bfloat16, or --no-autocast"
        )
    train_set, test_set = load_dataset(config.dataset, config.scale, config.data_seed)
    train_set, test_set = train_set.to(device), test_set.to(device)  # batches then gather on the device
    # Jain et al.'s propensities from the training split's label frequencies, for PSP@k.
    label_propensity = propensity(train_set.label_counts(), train_set.num_points)

    torch.manual_seed(config.seed)
    model = XMCModel(
        train_set.num_features,
        train_set.num_labels,
        config.hidden,
        dropout=config.dropout,
        label_smoothing=config.label_smoothing,
        loss=config.loss,
        device=device,
    )
    model.set_label_prior(train_set.label_counts(), train_set.num_points)
    model.head.to(head_dtype(config, use_autocast))
    optimizers = make_optimizers(model, config)
    learning_rates = base_learning_rates(config, train_set.num_labels)
    shuffle = torch.Generator().manual_seed(config.seed)
    checkpoint_path, log_path = out / "checkpoint.pt", out / "log.csv"
    first_epoch, step, epoch_seconds = 1, 0, []
    if config.resume:
        # On the CPU: the shuffle generator's state must stay there, and load_state_dict moves the rest.
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        changed = {
            name: (before, getattr(config, name))
            for name, before in state["config"].items()
            if name not in _RESUMABLE_CHANGES and before != getattr(config, name)
        }
        if changed:
            raise ValueError(f"--resume with settings other than the checkpoint's (was, now): {changed}")
        model.load_state_dict(state["model"])
        for optimizer, optimizer_state in zip(optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(optimizer_state)
        shuffle.set_state(state["shuffle"])
        _set_rng_state(state["rng"], device)  # dropout draws from it
        first_epoch, step, epoch_seconds = state["epoch"] + 1, state["step"], state["epoch_seconds"]
        # Rows a crash left after the checkpoint's epoch are redone, not duplicated.
        records = [row for row in pd.read_csv(log_path).to_dict("records") if row["epoch"] < first_epoch]
    else:
        records = []
    baseline = frequency_baseline(train_set, test_set)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    steps_per_epoch = math.ceil(train_set.num_points / config.batch_size)
    log_every = max(1, steps_per_epoch // 20)  # a loss point every ~5% of an epoch; each costs a sync
    for epoch in range(first_epoch, config.epochs + 1):
        start = time.perf_counter()
        pending = torch.zeros((), device=device)  # summed on the device, read every log_every steps
        progress = tqdm(
            batches(train_set, config.batch_size, shuffle=True, generator=shuffle, device=device),
            total=steps_per_epoch,
            desc=f"epoch {epoch}/{config.epochs}",
            disable=not config.progress,
        )
        for index, (features, targets) in enumerate(progress, 1):
            # Linear decay: each learning rate falls from its setting to 0 over the run's steps.
            decay = 1 - step / (config.epochs * steps_per_epoch)
            for optimizer, base in zip(optimizers, learning_rates, strict=True):
                for group in optimizer.param_groups:
                    group["lr"] = base * decay
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast):
                loss = model(features, targets)
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            step += 1
            pending += loss.detach().float()
            if index % log_every == 0 or index == steps_per_epoch:
                mean = float(pending) / (log_every if index % log_every == 0 else index % log_every)
                pending.zero_()
                records.append(dict(split="train", epoch=epoch, step=step, metric="loss", value=mean))
                progress.set_postfix(loss=f"{mean:.4g}")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_seconds.append(time.perf_counter() - start)
        records.append(dict(split="train", epoch=epoch, step=step, metric="seconds", value=epoch_seconds[-1]))
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            metrics = evaluate(model, test_set, label_propensity, config.batch_size, device)
            records += [
                dict(split="test", epoch=epoch, step=step, metric=name, value=value)
                for name, value in metrics.items()
            ]
            shown = ", ".join(f"{name} {metrics[name]:.4f}" for name in ("P@1", "P@5") if name in metrics)
            tqdm.write(f"epoch {epoch}: {shown} (label-frequency P@1 {baseline['P@1']:.4f})")
        pd.DataFrame(records).to_csv(log_path, index=False)
        state = dict(
            model=model.state_dict(),
            model_shape=model.shape(),  # rebuilds the model without the data (xmc.predict)
            optimizers=[optimizer.state_dict() for optimizer in optimizers],
            shuffle=shuffle.get_state(),
            rng=_rng_state(device),
            epoch=epoch,
            step=step,
            epoch_seconds=epoch_seconds,
            config=dataclasses.asdict(config),
        )
        torch.save(state, checkpoint_path.with_suffix(".tmp"))
        checkpoint_path.with_suffix(".tmp").replace(checkpoint_path)  # a crash never leaves half a file

    log = pd.DataFrame(records)
    final = log[(log.split == "test") & (log.epoch == log.epoch.max())]
    summary = dict(
        # What ran, not what was asked: autocast only on CUDA (the checkpoint keeps the setting as given).
        config=dict(dataclasses.asdict(config), autocast=use_autocast),
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        torch=torch.__version__,
        softmargin_triton=softmargin_triton.__version__,
        backend=softmargin_triton.current_backend(),
        loss_path=_loss_path(config.loss, device),  # the code that computed the training loss
        num_labels=train_set.num_labels,
        num_features=train_set.num_features,
        train_points=train_set.num_points,
        test_points=test_set.num_points,
        # The first epoch also compiles and autotunes the kernels: leave it out when there are others.
        seconds_per_epoch=statistics.mean(epoch_seconds[1:] or epoch_seconds),
        threads=torch.get_num_threads(),
        peak_memory_mb=_peak_memory_mb(device),
        metrics=dict(zip(final.metric, final.value, strict=True)),
        label_frequency_baseline=baseline,
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _plot(log, baseline, f"{config.dataset} · {config.loss} loss · {summary['device']}", out / "curves.png")
    return summary


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m softmargin_triton.xmc.train", description=__doc__.split("\n\n")[0]
    )
    defaults = TrainConfig(dataset="", out="")
    parser.add_argument("--dataset", required=True, help=f"{', '.join(PRESETS)} or an XC directory")
    parser.add_argument("--out", required=True, help="folder for the log, plot, summary and checkpoint")
    parser.add_argument("--scale", type=float, default=defaults.scale, help="synthetic points × the preset's")
    parser.add_argument("--data-seed", type=int, default=defaults.data_seed)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--embedding-lr", type=float, default=defaults.embedding_lr, help="SparseAdam's")
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument(
        "--hidden",
        type=int,
        default=defaults.hidden,
        help="the embedding's width; the rates are tuned at 256: at width h scale --lr by 256/h and "
        "--embedding-lr by sqrt(256/h) (bench/xmc_rank.py's trainer_config)",
    )
    parser.add_argument(
        "--dropout", type=float, default=defaults.dropout, help="on the point embedding, in training"
    )
    parser.add_argument(
        "--label-smoothing", type=float, default=defaults.label_smoothing, help="ε: targets y·(1 − ε) + ε/2"
    )
    parser.add_argument(
        "--loss", choices=("fused", "torch"), default=defaults.loss, help="torch: eager F.linear + MLSM"
    )
    parser.add_argument(
        "--head-optimizer",
        choices=HEAD_OPTIMIZERS,
        default=defaults.head_optimizer,
        help="the classifier's: AdamW, or stepped inside the loss's backward (no gradient stored)",
    )
    parser.add_argument(
        "--head-lr", type=float, default=defaults.head_lr, help="default: --lr (fused-sgd: see the README)"
    )
    parser.add_argument(
        "--head-dtype",
        choices=("auto", "float32", "bfloat16"),
        default=defaults.head_dtype,
        help="the classifier's (auto: bfloat16 for a fused head optimizer under CUDA autocast)",
    )
    parser.add_argument(
        "--head-master-weights",
        action="store_true",
        help="fused head optimizers: float32 master weights of a bfloat16 classifier (else stochastic "
        "rounding)",
    )
    parser.add_argument("--device", default=defaults.device, help="auto (CUDA if present), cpu, cuda, cuda:N")
    parser.add_argument("--no-autocast", dest="autocast", action="store_false", help="fp32 on CUDA too")
    parser.add_argument("--eval-every", type=int, default=defaults.eval_every, help="epochs")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument(
        "--threads", type=int, default=defaults.threads, help="CPU threads (default: torch's)"
    )
    return parser


def main(argv: list[str] | None = None) -> dict:
    return train(TrainConfig(**vars(_parser().parse_args(argv))))


if __name__ == "__main__":
    main()
