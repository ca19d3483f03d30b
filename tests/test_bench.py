"""The benchmark sweep and its plots, as the README's main-job command runs them, at a tiny size."""

import json
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def run(*args: str) -> None:
    subprocess.run([sys.executable, *args], cwd=REPO, check=True, capture_output=True, text=True, timeout=600)


def test_sweep_writes_csv_and_plot(tmp_path):
    providers = ["softmargin-triton", "torch-mlsm"]
    run(
        "bench/sweep.py",
        "--out",
        str(tmp_path),
        "--sweeps",
        "dense",
        "sparse",
        "linear",
        "--linear-batches",
        "8",
        "--dims",
        "16",
        "--batch",
        "8",
        "--labels",
        "64",
        "256",
        "--dtype",
        "fp32",
        "--targets",
        "uint8",
        "--providers",
        *providers,
        "torch-linear-mlsm",
    )
    frame = pd.read_csv(tmp_path / "dense_sweep.csv")
    assert "error" not in set(frame["metric"]), frame.get("error")
    times = frame[frame["metric"] == "time"]
    # one time per (provider, mode, label count)
    assert len(times) == len(providers) * 3 * 2
    assert set(times["provider"]) == set(providers)
    assert set(times["mode"]) == {"forward", "backward", "full"}
    assert sorted(set(times["x_value"])) == [64, 256]
    full = times[times["mode"] == "full"]
    assert (full["y_50"] > 0).all() and (full["y_20"] <= full["y_80"]).all()
    roofline = frame[frame["metric"] == "roofline"]
    assert len(roofline) == len(providers) * 2 and (roofline["y_50"] > 0).all()
    for column in (
        "gpu_name",
        "torch_version",
        "triton_version",
        "package_version",
        "git_commit",
        "timestamp",
    ):
        assert frame[column].notna().all(), column

    sparse = pd.read_csv(tmp_path / "sparse_sweep.csv")
    assert "error" not in set(sparse["metric"]), sparse.get("error")
    target = sparse["extra_config"].map(lambda c: json.loads(c)["target_dtype"])
    # ours on SparseTargets and on the uint8 dense target, torch on the fp32 dense target
    assert set(zip(sparse["provider"], target, strict=True)) == {
        ("softmargin-triton", "sparse"),
        ("softmargin-triton", "uint8"),
        ("torch-mlsm", "fp32"),
    }
    target_mb = (
        sparse[sparse["metric"] == "target_memory"].assign(target=target).set_index(["target", "x_value"])
    )
    for labels in (64, 256):  # positives: (B+1)·8 + nnz·4 bytes, not B·L
        assert target_mb.loc[("sparse", labels), "y_50"] * 2**20 < 8 * 9 + 4 * 8 * 40
        assert target_mb.loc[("fp32", labels), "y_50"] * 2**20 == 8 * labels * 4

    linear = pd.read_csv(tmp_path / "linear_sweep.csv")
    assert "error" not in set(linear["metric"]), linear.get("error")
    assert set(linear["provider"]) == {"softmargin-triton", "torch-linear-mlsm"}  # the sweep's own providers
    floor = linear[linear["metric"] == "gemm_roofline"]
    assert len(floor) == 2 * 2 and (floor["y_50"] > 0).all()
    assert {json.loads(c)["dim"] for c in linear["extra_config"]} == {16}

    run("bench/plot.py", str(tmp_path))
    report = (tmp_path / "REPORT.md").read_text()
    for heading in ("### Dense targets", "### Sparse targets", "### Fused linear + loss"):
        assert heading in report
    # every ratio the sweep could measure is a number: ours vs eager MLSM (dense), vs ours dense (sparse)
    assert re.search(r"speed-up vs eager MLSM \| \d+\.\d\d× \|", report), report
    sparse_rows = [line for line in report.splitlines() if re.match(r"\| (64|256) \|", line)]
    assert len(sparse_rows) == 2 and all(re.search(r"\| \d+\.\d\d× \|", line) for line in sparse_rows)
    for png in ("dense_sweep_time_uint8.png", "sparse_sweep_time_all.png", "linear_sweep_time_B8-D16.png"):
        image = matplotlib.image.imread(tmp_path / png)
        assert image.shape[0] > 200 and image.shape[1] > 300
        assert image[..., :3].std() > 0.05, f"{png} is blank"
