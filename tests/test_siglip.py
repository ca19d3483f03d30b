"""sigmoid_contrastive_loss, its module and distributed_sigmoid_contrastive_loss against SigLIP's formula.

The formula is open_clip SigLipLoss's, written out here: -logsigmoid(z · (scale · img @ txtᵀ + bias)).sum()
/ B with z = 2·matches - 1. Small odd sizes, a scratch budget small enough for several text chunks, values
and the gradients of all four inputs against float64 on both backends; bad arguments; peak memory far
below the B×B logits; two gloo ranks against the single-process loss on the concatenated batch.
"""

import datetime
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import DEVICE, TOLERANCE, assert_close

import softmargin_triton as st
from softmargin_triton.backend import TRITON_INTERPRETED
from softmargin_triton.distributed import distributed_sigmoid_contrastive_loss

IMAGES, TEXTS, DIM = 6, 14, 5


def siglip_formula(image_features, text_features, logit_scale, logit_bias, matches):
    """open_clip SigLipLoss's loss of one process (its `_loss`), with `matches` (B, T) 0/1 as the labels."""
    logits = logit_scale * image_features @ text_features.T + logit_bias
    labels = 2 * matches - 1
    return -F.logsigmoid(labels * logits).sum() / image_features.shape[0]


@pytest.fixture
def small_chunks(monkeypatch):
    """A scratch budget of 4 fp32 texts' gradient for 16 images: several text chunks at test sizes."""
    monkeypatch.setenv(st.SCRATCH_ENV_VAR, str(16 * 4 * 4 / 2**20))


def problem(images, texts, dtype=torch.float32, generator=None, device=DEVICE):
    """Unit-norm image and text features in `dtype`, and scale and bias as SigLIP learns them (scale
    around 10, bias a few units below 0; float32 as open_clip's parameters, float64 for float64 features),
    all drawn fresh."""
    g = generator
    scalar_dtype = torch.float64 if dtype == torch.float64 else torch.float32

    def unit(rows):
        return F.normalize(torch.randn(rows, DIM, generator=g, dtype=torch.float64), dim=-1).to(dtype)

    scale = 5 + 10 * torch.rand((), generator=g, dtype=torch.float64)
    bias = -2 - 6 * torch.rand((), generator=g, dtype=torch.float64)
    operands = unit(images), unit(texts), scale.to(scalar_dtype), bias.to(scalar_dtype)
    return [t.to(device) for t in operands]


def random_matches(images, texts, generator=None, device=DEVICE):
    """Several positives per image, one image without any, and the diagonal always matched."""
    matches = torch.rand(images, texts, generator=generator) < 0.25
    matches[torch.arange(images), torch.arange(images)] = True
    matches[-1] = False
    return matches.to(device)


def loss_and_grads(fn, operands, grad_output, **kwargs):
    """(loss, d(loss · grad_output) / d each operand) for fresh leaf copies."""
    leaves = [t.detach().clone().requires_grad_(True) for t in operands]
    loss = fn(*leaves, **kwargs)
    return loss, torch.autograd.grad(loss, leaves, grad_output)


def assert_matches_formula(
    loss, grads, operands, matches, grad_output, dtype, what="", rows=(slice(None),) * 2
):
    """`loss` and `grads` (image, text, scale, bias) against the formula in float64 on `operands` (the
    values the loss saw), within `dtype`'s tolerance; `grads` may hold the image and text gradients of
    some `rows` only. The scale's and bias's gradients are sums over all pairs whose terms cancel, so their
    error is measured against the sum of the terms' magnitudes, which the rounding of each term bounds,
    rather than against the sum itself."""
    operands = [t.double() for t in operands]
    matches, grad_output = matches.double(), grad_output.double()
    expected, expected_grads = loss_and_grads(siglip_formula, operands, grad_output, matches=matches)
    image, text, scale, bias = operands
    similarity = image @ text.T
    terms = (torch.sigmoid(scale * similarity + bias) - matches) * grad_output / image.shape[0]
    magnitudes = ((terms * similarity).abs().sum(), terms.abs().sum())
    try:
        assert_close(loss, expected, dtype)
        assert_close(grads[0], expected_grads[0][rows[0]], dtype)
        assert_close(grads[1], expected_grads[1][rows[1]], dtype)
        for name, grad, expected_grad, magnitude in zip(
            ("scale", "bias"), grads[2:], expected_grads[2:], magnitudes, strict=True
        ):
            error = (grad.double() - expected_grad).abs()
            assert error <= TOLERANCE[dtype] * magnitude, f"{name} gradient {grad} != {expected_grad}"
    except AssertionError as error:
        raise AssertionError(f"{what}: {error}") from None


CASES = {"pairs": (9, 9), "multi-positive": (IMAGES, TEXTS)}
PATHS = [
    ("torch", torch.float64),
    *((backend, dtype) for backend in ("torch", "triton") for dtype in (torch.float32, torch.bfloat16)),
    ("triton", torch.float16),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize(
    "path", PATHS, ids=[f"{backend}-{str(dtype).removeprefix('torch.')}" for backend, dtype in PATHS]
)
def test_matches_formula_in_float64(poisoned_allocations, small_chunks, path, case):
    backend, dtype = path
    images, texts = CASES[case]
    operands = problem(images, texts, dtype=dtype)
    matches = random_matches(images, texts) if case == "multi-positive" else torch.eye(images, device=DEVICE)
    positives = st.SparseTargets.from_dense(matches) if case == "multi-positive" else None
    grad_output = torch.rand((), device=DEVICE, dtype=dtype) + 0.5  # never 1: the backward must scale
    with st.use_backend(backend):
        loss, grads = loss_and_grads(st.sigmoid_contrastive_loss, operands, grad_output, positives=positives)
    assert loss.dtype == dtype and loss.shape == ()
    assert [grad.dtype for grad in grads] == [operand.dtype for operand in operands]
    assert_matches_formula(loss, grads, operands, matches, grad_output, dtype)


def test_autocast_and_module(backend):
    """Under bf16 autocast float32 features are scored in bf16, as open_clip's matmul is; the loss is bf16,
    the gradients keep the leaves' float32. The module is the function."""
    operands = problem(IMAGES, IMAGES)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        loss, grads = loss_and_grads(st.SigmoidContrastiveLoss(), operands, None)
    assert loss.dtype == torch.bfloat16
    assert all(grad.dtype == torch.float32 for grad in grads)
    rounded = [t.to(torch.bfloat16) for t in operands[:2]] + operands[2:]
    one = torch.ones((), device=DEVICE)
    assert_matches_formula(loss, grads, rounded, torch.eye(IMAGES, device=DEVICE), one, torch.bfloat16)


def _bad_calls():
    """name → (arguments that replace the good call's, exception, message pattern)."""
    img, txt, scale, bias = problem(IMAGES, TEXTS)
    positives = st.SparseTargets.from_dense(random_matches(IMAGES, TEXTS))
    pairs = txt[:IMAGES]
    return {
        "1-d-images": (dict(image_features=img[0]), ValueError, r"image_features must be a non-empty 2-D"),
        "empty-texts": (dict(text_features=txt[:0], positives=positives), ValueError, r"non-empty.*\(0, 5\)"),
        "texts-list": (dict(text_features=pairs.tolist()), ValueError, "text_features must be .* got list"),
        "dims": (dict(text_features=pairs[:, :-1]), ValueError, "disagree in D"),
        "counts": (dict(text_features=txt), ValueError, "6 images and 14 texts"),
        "scale-shape": (dict(logit_scale=scale[None]), ValueError, r"logit_scale must be a 0-dim.*\(1,\)"),
        "bias-float": (dict(logit_bias=-10.0), ValueError, "logit_bias must be a 0-dim tensor"),
        "scale-int": (dict(logit_scale=torch.tensor(10)), TypeError, "logit_scale must be a floating"),
        "image-int": (dict(image_features=img.long()), TypeError, "image_features must be float16"),
        "dtypes": (dict(text_features=pairs.double()), TypeError, "share one dtype"),
        "text-device": (dict(text_features=pairs.to("meta")), RuntimeError, "text_features is on meta"),
        "bias-device": (dict(logit_bias=bias.to("meta")), RuntimeError, "logit_bias is on meta"),
        "dense-positives": (
            dict(text_features=txt, positives=positives.to_dense()),
            TypeError,
            "positives must be a SparseTargets",
        ),
        "positives-shape": (
            dict(text_features=txt[:-1], positives=positives),
            ValueError,
            re.escape("positives of shape (6, 14) must be (images, texts) = (6, 13)"),
        ),
    }, dict(image_features=img, text_features=pairs, logit_scale=scale, logit_bias=bias)


@pytest.mark.parametrize("name", list(_bad_calls()[0]))
def test_bad_input_raises(name):
    bad_calls, good = _bad_calls()
    changes, error, match = bad_calls[name]
    with pytest.raises(error, match=match):
        st.sigmoid_contrastive_loss(**{**good, **changes})


def test_peak_memory_stays_far_below_the_logits():
    """At B = 4096 one B×B float32 tensor is 64 MiB. With a 4 MiB scratch our loss's extra peak (resident
    set above its start, its high-water mark reset before each call) must stay under half of that, while
    the formula's, measured the same way, exceeds it: the measurement sees B×B tensors."""
    script = textwrap.dedent(
        """
        import ctypes, torch, torch.nn.functional as F, softmargin_triton as st
        from pathlib import Path

        def peak_extra(fn):
            # Free pages an earlier call left resident go back first, so this call cannot reuse them unseen;
            # then the high-water mark restarts from the current RSS.
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")
            rss = lambda field: int(next(
                line.split()[1] for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith(field)
            )) * 1024
            before = rss("VmRSS:")
            loss = fn()
            loss.backward()
            return rss("VmHWM:") - before

        torch.set_num_threads(1)  # no thread pool's arenas in the figures, and no oversubscribed cores
        torch.manual_seed(0)
        images, dim = 4096, 16
        leaves = [F.normalize(torch.randn(images, dim), dim=-1).requires_grad_(True) for _ in range(2)]
        leaves += [torch.tensor(10.0, requires_grad=True), torch.tensor(-10.0, requires_grad=True)]

        def formula():
            logits = leaves[2] * leaves[0] @ leaves[1].T + leaves[3]
            return -F.logsigmoid((2 * torch.eye(images) - 1) * logits).sum() / images

        with st.use_backend("torch"):
            # The first call imports and sets up what stays resident (torch's custom-op machinery, threads):
            # a training step's memory is a later call's.
            st.sigmoid_contrastive_loss(*[t[:512] if t.dim() else t for t in leaves]).backward()
            ours = peak_extra(lambda: st.sigmoid_contrastive_loss(*leaves))
        print(ours, peak_extra(formula))
        """
    )
    env = {**os.environ, st.SCRATCH_ENV_VAR: "4"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    ours, formula = map(int, out.stdout.split())
    logits_bytes = 4096 * 4096 * 4
    assert ours < logits_bytes / 2, f"ours: {ours / 2**20:.1f} MiB"
    assert formula > logits_bytes, f"formula: {formula / 2**20:.1f} MiB"


# --------------------------------------------------------------------------------------------------------
# Distributed: two gloo ranks
# --------------------------------------------------------------------------------------------------------


# gloo takes CPU tensors: the kernels run on them under Triton's interpreter (no GPU: conftest switches it
# on); on a GPU machine the ranks check the plain-torch path only.
DISTRIBUTED_PATHS = [("torch", torch.float64)] + [("triton", torch.float32)] * TRITON_INTERPRETED


def _run_rank(rank: int, world: int, store: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        _check_distributed(rank, world)
    finally:
        dist.destroy_process_group()


def _check_distributed(rank: int, world: int) -> None:
    """Each rank its slice of one batch: the loss is the single-process loss of the whole batch; each
    rank's feature gradients are its rows of that loss's, and the scale's and bias's summed over ranks
    equal that loss's."""
    for case, (backend, dtype) in enumerate(DISTRIBUTED_PATHS):
        for multi_positive in (False, True):
            g = torch.Generator().manual_seed(10 * case + multi_positive)  # the same batch on every rank
            images, texts = (3, 5) if multi_positive else (4, 4)
            operands = problem(world * images, world * texts, dtype, g, "cpu")  # gloo: CPU tensors
            matches = random_matches(world * images, world * texts, g, "cpu") if multi_positive else None
            grad_output = torch.rand((), generator=g, dtype=dtype) + 0.5
            own_images = slice(rank * images, (rank + 1) * images)
            own_texts = slice(rank * texts, (rank + 1) * texts)
            with st.use_backend(backend):
                loss, grads = loss_and_grads(
                    distributed_sigmoid_contrastive_loss,
                    [operands[0][own_images], operands[1][own_texts], *operands[2:]],
                    grad_output,
                    positives=None if matches is None else st.SparseTargets.from_dense(matches[own_images]),
                )
            for share in grads[2:]:
                dist.all_reduce(share)
            assert_matches_formula(
                loss,
                grads,
                operands,
                torch.eye(world * images) if matches is None else matches,
                grad_output,
                dtype,
                f"rank {rank}, {backend}, multi-positive={multi_positive}",
                (own_images, own_texts),
            )

    # A bad call on one rank raises on every rank, a good one works afterwards.
    img, txt, scale, bias = problem(3, 3, generator=torch.Generator().manual_seed(0), device="cpu")
    call = distributed_sigmoid_contrastive_loss
    message = "logit_scale must be a 0-dim" if rank == 1 else "rank 1: logit_scale must be a 0-dim"
    with pytest.raises(ValueError, match=message):
        call(img, txt, scale[None] if rank == 1 else scale, bias)
    with pytest.raises(ValueError, match=r"ranks disagree on images: \[2, 3\]"):
        call(img[:2], txt[:2], scale, bias) if rank == 0 else call(img, txt, scale, bias)
    assert call(img, txt, scale, bias).isfinite()


def test_distributed_equals_single_process_on_the_whole_batch(tmp_path):
    mp.spawn(_run_rank, args=(2, str(tmp_path / "store")), nprocs=2, join=True)


def test_readme_example_runs(capsys):
    """The README's SigLIP training loop, as written there: it runs and its loss goes down."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme[readme.index("### Sigmoid contrastive (SigLIP) loss") :]
    script = section[section.index("```python\n") + len("```python\n") : section.index("```\n", 10)]
    exec(compile(script, "README.md", "exec"), {})
    losses = [float(line.split("loss ")[1]) for line in capsys.readouterr().out.splitlines()]
    assert len(losses) > 1 and losses[-1] < losses[0], losses


def test_bench_writes_its_csv(tmp_path):
    """bench/siglip.py at toy sizes: every provider and batch size timed and measured, no error rows."""
    bench = Path(__file__).parents[1] / "bench" / "siglip.py"
    command = [sys.executable, str(bench), "--out", str(tmp_path), "--batches", "32", "64", "--dim", "8"]
    out = subprocess.run([*command, "--samples", "2"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    frame = pd.read_csv(tmp_path / "cpu.csv")
    assert set(frame["metric"]) == {"time", "memory", "tflops"}
    counts = frame.groupby(["provider", "x_value"]).size()
    assert len(counts) == 6 and (counts == 3).all(), counts
    timed = frame[frame["metric"] != "memory"]
    assert (timed["y_50"] > 0).all() and (frame["y_50"] >= 0).all(), frame[["provider", "metric", "y_50"]]
    assert set(frame["ours_path"]) == {"plain-torch fallback"}
