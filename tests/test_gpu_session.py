"""The prepared GPU run (bench/gpu_session.sh) as a CPU dry run: every step at toy sizes, our kernels under
Triton's interpreter, so that a shell or path mistake shows here instead of wasting a GPU window. Then the
archive it leaves is unpacked into a reports folder as a later session would (bench/unpack.py)."""

import io
import json
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
HEADLINE = ("dense", "sparse", "linear")
VARIANTS = ("focal", "asl", "smoothing", "partial")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-out")
    start = time.monotonic()
    completed = subprocess.run(
        ["bash", "bench/gpu_session.sh", "--dry-run", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    return out, completed, time.monotonic() - start


def _archive(out: Path) -> dict[str, bytes]:
    with tarfile.open(out / "gpu-results.tar.gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_dry_run_leaves_three_files_within_its_time(dry_run):
    out, completed, seconds = dry_run
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    files = sorted(path.name for path in out.iterdir())
    # the device tool brings back at most 8 files, no deeper than OUT/a/b/file: the run leaves 3, flat
    assert files == ["gpu-results.tar.gz", "session.log", "summary.md"], files
    assert all(path.stat().st_size < 16 * 2**20 for path in out.iterdir())
    assert seconds < 195, f"the dry run took {seconds:.0f} s, over its 195 s (budget 185 s + archiving)"


def test_dry_run_every_step_ok_and_logged(dry_run):
    out, _, _ = dry_run
    files = _archive(out)
    steps = pd.read_csv(io.BytesIO(files["gpu-results/steps.csv"]))
    assert list(steps["step"]) == [
        "install",
        "ceilings",
        "check",
        "gpu-tests",
        "dense",
        "sparse",
        "linear",
        "head-memory",
        "variants",
        "wide-dense",
        "wide-batch",
        "wide-linear",
        "wide-sparse",
        "xmc",
        "wide-dtypes",
    ]
    assert (steps["status"] == "ok").all(), steps.to_string()
    log = (out / "session.log").read_text()
    for step in steps["step"]:
        assert f"=== {step}: ok" in log, step
    env = files["gpu-results/env.txt"].decode()
    for field in ("command: bash bench/gpu_session.sh --dry-run", "torch:", "triton:", "gpu: cpu"):
        assert field in env, env


def test_dry_run_archive_holds_the_headline(dry_run):
    out, _, _ = dry_run
    files = _archive(out)
    for sweep in HEADLINE:
        frame = pd.read_csv(io.BytesIO(files[f"gpu-results/{sweep}_sweep.csv"]), dtype={"git_commit": str})
        assert "error" not in set(frame["metric"]), frame.get("error")
        times = frame[frame["metric"] == "time"]
        ours = times[times["provider"] == "softmargin-triton"]
        # fwd+bwd, forward alone and backward alone, each a positive median within its quantiles
        assert set(ours["mode"]) == {"full", "forward", "backward"}, sweep
        assert (times["y_50"] > 0).all() and (times["y_20"] <= times["y_80"]).all()
        assert len(set(times["provider"])) >= 3, sweep
        # the roofline is the ceilings step's copy bandwidth, not one the sweep measured itself
        ceilings = pd.read_csv(io.BytesIO(files["gpu-results/ceilings.csv"]))
        copy = ceilings.loc[ceilings["metric"] == "copy_bandwidth", "y_50"].iloc[0]
        assert (frame["copy_bandwidth_gbs"] == copy).all()
    linear = pd.read_csv(io.BytesIO(files["gpu-results/linear_sweep.csv"]))
    config = linear["extra_config"].map(json.loads)
    assert all(c["gemm_source"].startswith("ceilings: 3 GEMMs at B=16 D=16") for c in config)
    checks = pd.read_csv(io.BytesIO(files["gpu-results/check_kernels.csv"]))
    assert checks["passed"].all() and checks["variant"].nunique() >= 17
    for wide in ("dense", "batch", "sparse", "linear", "variants"):
        assert f"gpu-results/wide/{wide}_sweep.csv" in files, wide
    # issue 18's variants, ours and the eager formula each (no torch.compile in the dry run), fwd+bwd
    variants = pd.read_csv(io.BytesIO(files["gpu-results/wide/variants_sweep.csv"]))
    assert "error" not in set(variants["metric"]), variants.get("error")
    assert set(variants["provider"]) == {
        f"{kind}-{variant}" for kind in ("softmargin-triton", "torch") for variant in VARIANTS
    }
    variant_times = variants[variants["metric"] == "time"]
    assert set(variant_times["mode"]) == {"full"} and (variant_times["y_50"] > 0).all()
    dtypes = pd.read_csv(io.BytesIO(files["gpu-results/wide/dense_sweep.csv"]))["extra_config"]
    assert {json.loads(c)["dtype"] for c in dtypes} == {"bf16", "fp16", "fp32"}  # appended, not replaced
    assert "gpu-results/xmc/xmc_compare.csv" in files
    # one head step of the fused-sgd head, measured (bench/head_memory.py), with its plot
    head = pd.read_csv(io.BytesIO(files["gpu-results/head_memory/cpu.csv"]), dtype={"git_commit": str})
    assert set(head["method"]) == {"fused+fused-sgd"} and "error" not in set(head["metric"]), head
    assert (head.loc[head["metric"] == "peak", "value"] > 0).all()
    assert "gpu-results/head_memory/cpu.png" in files
    summary = (out / "summary.md").read_text()
    for heading in ("## Steps", "### Dense targets", "### Sparse targets", "### Fused linear + loss"):
        assert heading in summary, summary
    checked = re.search(r"(\d+) of (\d+) checks passed", summary)
    assert checked and checked[1] == checked[2] == str(len(checks)), summary
    assert "Note: no prediction for cpu" in summary  # no GPU: no static bound beside the measurement


def test_unpack_into_reports(dry_run, tmp_path):
    out, _, _ = dry_run
    subprocess.run(
        [sys.executable, "bench/unpack.py", str(out), "--reports", str(tmp_path)],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=120,
    )
    target = tmp_path / "cpu-no-cuda-device"  # from env.txt's 'gpu: cpu (no CUDA device)'
    for name in (
        "REPORT.md",
        "summary.md",
        "session.log",
        "dense_sweep_time_bf16.png",
        "wide/REPORT.md",
        "wide/variants_sweep_time_bf16.png",
    ):
        assert (target / name).exists(), name
    assert (
        "### Loss variants — fwd+bwd, B=8, L=256, bf16 logits" in (target / "wide" / "REPORT.md").read_text()
    )
    report = (target / "REPORT.md").read_text()
    assert "bash bench/gpu_session.sh --dry-run" in report  # the command that reproduces it
    assert "## Correctness of the compiled kernels" in report and "### Measured vs the static model" in report
