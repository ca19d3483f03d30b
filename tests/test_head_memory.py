"""bench/head_memory.py: its JSON line, the CPU memory bound of FusedClassifierSGD (peak resident set of a
fresh process), and the sweep's bookkeeping (skips with their reason, the CSV, the plot and the table)."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
LABELS, DIM, BATCH = 2**17, 64, 32
SCRATCH_MB = 4  # the chunk loop's budget in the subprocesses: far below the 32 MiB (L, D) fp32 gradient


@pytest.fixture(scope="module")
def lines() -> dict[str, dict]:
    """One fused step with each head optimizer, fp32 on the CPU, the two processes run side by side."""
    env = {**os.environ, "SOFTMARGIN_TRITON_SCRATCH_MB": str(SCRATCH_MB), "SOFTMARGIN_TRITON_BACKEND": "auto"}
    size = ["--labels", str(LABELS), "--dim", str(DIM), "--batch", str(BATCH), "--dtype", "fp32"]
    processes = {
        optimizer: subprocess.Popen(
            [sys.executable, "bench/head_memory.py", *size, "--device", "cpu", "--head-optimizer", optimizer],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for optimizer in ("fused-sgd", "adamw")
    }
    results = {}
    for optimizer, process in processes.items():
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err[-3000:]
        (line,) = out.strip().splitlines()  # exactly one line on stdout
        results[optimizer] = json.loads(line)
    return results


def test_json_line_format(lines):
    for optimizer, result in lines.items():
        assert result["method"] == f"fused+{optimizer}"
        assert (result["labels"], result["dim"], result["batch"]) == (LABELS, DIM, BATCH)
        assert (result["dtype"], result["device"], result["scratch_mb"]) == ("fp32", "cpu", SCRATCH_MB)
        assert result["weights_bytes"] == (LABELS * DIM + LABELS) * 4  # weight and bias, fp32
        for key in ("peak_bytes", "held_before_step_bytes", "process_baseline_bytes"):
            assert isinstance(result[key], int) and result[key] > 0, key
        assert result["peak_minus_weights_bytes"] == result["peak_bytes"] - result["weights_bytes"]
        assert result["peak_bytes"] >= result["held_before_step_bytes"] >= result["weights_bytes"]
        assert result["step_s"] > 0 and result["loss"] > 0
        assert result["ours_path"] == "plain-torch fallback"
        assert "warmup" in result and result["memory_method"] == "peak RSS (VmHWM)"
        for key in ("torch_version", "triton_version", "git_commit", "timestamp", "cpu", "command"):
            assert result[key], key


def test_fused_sgd_never_holds_the_weight_gradient(lines):
    """AdamW's path holds dW (plus its moments) at its peak; fused-sgd's peak beyond the weights stays well
    below dW's bytes, which it would exceed if dW were formed whole."""
    grad_bytes = LABELS * DIM * 4
    sgd, adamw = lines["fused-sgd"], lines["adamw"]
    assert not sgd["weight_grad_stored"] and adamw["weight_grad_stored"]
    # dW and AdamW's two moments: the probe sees what the step holds
    assert adamw["peak_minus_weights_bytes"] > 2 * grad_bytes, adamw
    assert sgd["peak_minus_weights_bytes"] < grad_bytes / 2, sgd


def test_sweep_skips_with_reasons_and_reports(tmp_path, monkeypatch):
    """The sweep's bookkeeping with the measurement stubbed: a configuration predicted not to fit and every
    larger L of its method are skipped with the reason, a failed one is an error row; CSV, plot and table."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))  # head_memory.py imports timing.py from beside it
    head_memory = importlib.import_module("head_memory")

    def fake_run(args, method, labels):
        if method == "fused+adamw" and labels == 4096:
            return "exit 1: RuntimeError: out of memory"
        peak = labels * (64 if method == "eager+adamw" else 1)
        return {
            **{key: 1 for key in head_memory.METRICS},
            "peak_bytes": peak,
            "peak_minus_weights_bytes": peak // 2,
            "weights_bytes": peak // 2,
            "process_baseline_bytes": 0,
            "gpu_name": "cpu",
            "cpu": "test CPU",
            "memory_method": "peak RSS (VmHWM)",
            "scratch_mb": 64.0,
            "threads": 1,
            "torch_version": "t",
            "triton_version": "t",
            "git_commit": "abc",
        }

    monkeypatch.setattr(head_memory, "run_one", fake_run)
    monkeypatch.setattr(head_memory, "available_bytes", lambda device: 300_000)
    monkeypatch.setattr(sys, "argv", ["head_memory.py", "--sweep"])
    args = head_memory.argparse.Namespace(
        out=tmp_path, labels=[1024, 2048, 4096, 8192], dim=8, batch=4, dtype="fp32", device="cpu"
    )
    args.methods = list(head_memory.METHODS)
    path = head_memory.sweep(args)
    frame = pd.read_csv(path)
    status = frame.drop_duplicates(["method", "labels"]).set_index(["method", "labels"])["metric"]
    assert (status.loc["fused+fused-sgd"] == "peak").all()
    assert list(status.loc["fused+adamw"]) == ["peak", "peak", "error", "skipped"]
    # eager: 64 bytes a label, 2048 → 131,072 bytes measured; 4096 predicted 262,144 > 85% of 300,000
    assert list(status.loc["eager+adamw"]) == ["peak", "peak", "skipped", "skipped"]
    reasons = frame.set_index(["method", "labels"])["reason"]
    assert "predicted peak" in reasons.loc["eager+adamw", 4096]
    assert "failed" in reasons.loc["fused+adamw", 8192]
    table = head_memory.report(path)
    assert path.with_suffix(".png").stat().st_size > 0
    assert "| 4,096 |" in table and "skipped" in table and "error" in table
