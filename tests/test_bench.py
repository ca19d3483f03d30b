"""The benchmark sweeps and their plots and report, as the README's main-job command runs them, at a tiny
size: two logits dtypes, the dense sweep over L and the batch sweep over B, the sparse and linear sweeps."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
PROVIDERS = ["softmargin-triton", "torch-mlsm"]
LABELS = [64, 256]
BATCHES = [4, 8]


def run(*args: str) -> None:
    subprocess.run([sys.executable, *args], cwd=REPO, check=True, capture_output=True, text=True, timeout=600)


def read_sweep(path: Path) -> pd.DataFrame:
    """A sweep CSV with its extra_config fields as columns, after checking that it has no error row."""
    frame = pd.read_csv(path, dtype={"git_commit": str})
    assert "error" not in set(frame["metric"]), frame.get("error")
    config = pd.DataFrame(frame["extra_config"].map(json.loads).tolist(), index=frame.index)
    return frame.join(config)


def test_sweep_writes_csv_plot_and_report(tmp_path):
    run(
        "bench/sweep.py",
        "--out",
        str(tmp_path),
        "--sweeps",
        "dense",
        "batch",
        "sparse",
        "linear",
        "--dtypes",
        "fp32",
        "bf16",
        "--targets",
        "fp32",
        "uint8",
        "--batch",
        "8",
        "--labels",
        *map(str, LABELS),
        "--batches",
        *map(str, BATCHES),
        "--batch-sweep-labels",
        "128",
        "--linear-batches",
        "8",
        "--dims",
        "16",
        "--providers",
        *PROVIDERS,
        "torch-linear-mlsm",
    )
    dense = read_sweep(tmp_path / "dense_sweep.csv")
    assert set(dense["x_name"]) == {"labels"} and sorted(set(dense["x_value"])) == LABELS
    assert (dense["batch"] == 8).all()
    times = dense[dense["metric"] == "time"]
    # forward and backward besides full at the first logits dtype only; every provider, target and L
    modes = times.groupby("dtype")["mode"].agg(set).to_dict()
    assert modes == {"fp32": {"forward", "backward", "full"}, "bf16": {"full"}}
    assert len(times) == len(PROVIDERS) * 2 * len(LABELS) * (3 + 1)
    assert set(times["provider"]) == set(PROVIDERS)
    full = times[times["mode"] == "full"]
    assert (full["y_50"] > 0).all() and (full["y_20"] <= full["y_80"]).all()
    # "fp32" is the float target whatever the logits: bf16 logits + fp32 targets + bf16 gradient = 8 bytes
    element_bytes = zip(full["dtype"], full["target_dtype"], full["min_bytes_per_element"], strict=True)
    assert {(dtype, target): size for dtype, target, size in element_bytes} == {
        ("bf16", "fp32"): 8,
        ("bf16", "uint8"): 5,
        ("fp32", "fp32"): 12,
        ("fp32", "uint8"): 9,
    }
    roofline = dense[dense["metric"] == "roofline"]
    assert len(roofline) == len(full) and (roofline["y_50"] > 0).all()
    for column in (
        "gpu_name",
        "torch_version",
        "triton_version",
        "package_version",
        "git_commit",
        "timestamp",
    ):
        assert dense[column].notna().all(), column

    batch = read_sweep(tmp_path / "batch_sweep.csv")
    assert set(batch["x_name"]) == {"batch"} and sorted(set(batch["x_value"])) == BATCHES
    assert (batch["labels"] == 128).all() and "batch" not in batch.columns  # the fixed L, never the swept B
    assert set(batch["mode"]) == {"full"} and set(batch["dtype"]) == {"fp32", "bf16"}
    batch_times = batch[batch["metric"] == "time"]
    assert len(batch_times) == len(PROVIDERS) * 2 * 2 * len(BATCHES) and (batch_times["y_50"] > 0).all()

    sparse = read_sweep(tmp_path / "sparse_sweep.csv")
    # ours on SparseTargets and on each dense target dtype, torch on the dense target in the logits' dtype
    for dtype in ("fp32", "bf16"):
        rows = sparse[sparse["dtype"] == dtype]
        assert set(zip(rows["provider"], rows["target_dtype"], strict=True)) == {
            ("softmargin-triton", "sparse"),
            ("softmargin-triton", "fp32"),
            ("softmargin-triton", "uint8"),
            ("torch-mlsm", dtype),
        }
    target_mb = sparse[(sparse["metric"] == "target_memory") & (sparse["dtype"] == "fp32")]
    target_mb = target_mb.set_index(["provider", "target_dtype", "x_value"])["y_50"] * 2**20
    for labels in LABELS:  # positives: (B+1)·8 + nnz·4 bytes, not B·L
        assert target_mb[("softmargin-triton", "sparse", labels)] < 8 * 9 + 4 * 8 * 40
        assert target_mb[("torch-mlsm", "fp32", labels)] == 8 * labels * 4

    linear = read_sweep(tmp_path / "linear_sweep.csv")
    assert set(linear["provider"]) == {"softmargin-triton", "torch-linear-mlsm"}  # the sweep's own providers
    floor = linear[linear["metric"] == "gemm_roofline"]
    assert len(floor) == 2 * len(LABELS) * 2 and (floor["y_50"] > 0).all()
    assert set(linear["dim"]) == {16} and set(linear["x_name"]) == {"labels"}

    run("bench/plot.py", str(tmp_path))
    report = (tmp_path / "REPORT.md").read_text()
    assert f"at commit {dense['git_commit'].iloc[0]}," in report  # a hash, even one that reads as a number
    # the tables are at bf16 logits, present among the dtypes swept, and their ratios are the CSVs'
    dense_ratio = _time(dense, "torch-mlsm", 256) / _time(dense, "softmargin-triton", 256)
    assert "### Dense targets — fwd+bwd, B=8, L=256, bf16 logits, uint8 targets" in report, report
    assert f"| speed-up vs eager MLSM | {dense_ratio:.2f}× |" in report, report
    assert "### Dense targets against the batch — fwd+bwd, L=128, bf16 logits, uint8 targets" in report
    for b in BATCHES:
        ratio = _time(batch, "torch-mlsm", b) / _time(batch, "softmargin-triton", b)
        assert re.search(rf"^\| {b} \| [\d.e+-]+ \| [\d.e+-]+ \| {ratio:.2f}× \|", report, re.MULTILINE), (
            report
        )
    # positives per row as the CSV records them, and the sparse target's size beside our uint8 target's
    sampled = sparse[(sparse["dtype"] == "bf16") & (sparse["metric"] == "time")]["positives_per_row"]
    positives = (
        f"{sampled.min():.3g}–{sampled.max():.3g}" if sampled.nunique() > 1 else f"{sampled.min():.3g}"
    )
    assert f"### Sparse targets — fwd+bwd, B=8, bf16 logits, {positives} Zipf positives per row" in report
    assert "5.45" not in report
    sparse_rows = [line for line in report.splitlines() if re.match(r"\| (64|256) \|", line)]
    assert len(sparse_rows) == 2 and all(re.search(r"\| \d+\.\d\d× \|", line) for line in sparse_rows)
    for line, labels in zip(sparse_rows, LABELS, strict=True):
        assert f"/ {8 * labels / 2**20:.3g} |" in line, line  # the uint8 dense target: B·L bytes
    # on a CPU: what ours ran, and no GPU goal beside a CPU's figures
    cuda = dense["gpu_name"].iloc[0] != "cpu"
    assert set(dense["ours_path"]) == {"Triton kernels" if cuda else "plain-torch fallback"}
    if not cuda:
        assert (
            "here 'ours' (softmargin-triton) is the package's plain-torch fallback, and no Triton" in report
        )
        assert "goal" not in report.split("## Measured on a CPU")[1].split("\n\n", 2)[2], report
        assert "Note: no prediction for cpu" in report  # no GPU bound beside a CPU's measurement
    assert "### Fused linear + loss — fwd+bwd, L=256, bf16, sparse targets" in report
    for sweep in ("dense", "batch", "sparse", "linear"):
        for dtype in ("fp32", "bf16"):
            image = matplotlib.image.imread(tmp_path / f"{sweep}_sweep_time_{dtype}.png")
            assert image.shape[0] > 200 and image.shape[1] > 300
            assert image[..., :3].std() > 0.05, f"{sweep} {dtype} plot is blank"


VARIANTS = ("focal", "asl", "smoothing", "partial")


def test_variants_sweep_writes_csv_plot_and_report(tmp_path, monkeypatch):
    """Issue 18's variants at a toy size, fwd+bwd only (the dry run of tests/test_gpu_session.py times
    forward and backward alone too): ours and each eager formula, the same columns as the other sweeps,
    the parameters in extra_config; then its plot and REPORT.md's "Loss variants" from the CSV."""
    run(
        "bench/sweep.py",
        "--out",
        str(tmp_path),
        "--sweeps",
        "variants",
        "--batch",
        "4",
        "--labels",
        "64",
        "--dtypes",
        "fp32",
        "--breakdown-dtypes",
    )
    frame = read_sweep(tmp_path / "variants_sweep.csv")
    cuda = frame["gpu_name"].iloc[0] != "cpu"
    kinds = ("softmargin-triton-{}", "torch-{}", *(("torch-{}-compile",) if cuda else ()))
    assert set(frame["provider"]) == {kind.format(variant) for variant in VARIANTS for kind in kinds}
    for column in (
        "kernel",
        "mode",
        "x_name",
        "x_value",
        "y_50",
        "copy_bandwidth_gbs",
        "ours_path",
        "git_commit",
    ):
        assert frame[column].notna().all(), column
    assert (
        set(frame["x_name"]) == {"labels"} and set(frame["x_value"]) == {64} and (frame["batch"] == 4).all()
    )
    times = frame[frame["metric"] == "time"]
    assert set(times["mode"]) == {"full"} and len(times) == len(VARIANTS) * len(kinds)
    assert (times["y_50"] > 0).all() and (times["y_20"] <= times["y_80"]).all()
    assert len(frame[frame["metric"] == "roofline"]) == len(times)
    targets = {
        (v, p.split("-")[0]): t
        for v, p, t in zip(times["variant"], times["provider"], times["target_dtype"], strict=True)
    }
    assert targets == {
        **{(v, "softmargin"): "uint8" for v in VARIANTS[:3]},
        **{(v, "torch"): "fp32" for v in VARIANTS[:3]},  # torch's formulas take float targets
        ("partial", "softmargin"): "int8",
        ("partial", "torch"): "int8",  # the eager formula masks the {-1, 0, 1} target itself
    }
    parameters = dict(zip(times["variant"], times["parameters"], strict=True))
    assert parameters["focal"] == {"alpha": 0.25, "gamma": 2.0}
    assert parameters["smoothing"] == {"label_smoothing": 0.1}
    assert parameters["partial"] == {"ignore_value": -1}
    assert parameters["asl"]["gamma_neg"] == 4 and parameters["asl"]["clip"] == 0.05

    monkeypatch.syspath_prepend(str(REPO / "bench"))  # plot.py imports report.py from beside it
    (png,) = importlib.import_module("plot").plot_csv(tmp_path / "variants_sweep.csv")
    assert png.name == "variants_sweep_time_fp32.png"
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 200 and image[..., :3].std() > 0.05, "blank variants plot"
    report.write_report(tmp_path)
    text = (tmp_path / "REPORT.md").read_text()
    assert "### Loss variants — fwd+bwd, B=4, L=64, fp32 logits" in text, text
    for variant in VARIANTS:
        ours = times.loc[times["provider"] == f"softmargin-triton-{variant}", "y_50"].iloc[0]
        eager = times.loc[times["provider"] == f"torch-{variant}", "y_50"].iloc[0]
        row = next(line for line in text.splitlines() if line.startswith(f"| {variant} | "))
        assert f"| {eager / ours:.2f}× |" in row, row
    if not cuda:
        assert "torch.compile not run" in text and "(measured on CUDA only: n/a here)" in text


def test_variants_section_compiled_and_memory():
    """The section's CUDA-only columns from a synthetic CSV: torch.compile, the peak-memory ratio."""
    rows = []
    for provider, target, ms, mb, roofline in (
        ("softmargin-triton-focal", "uint8", 1.0, 2.0, 80.0),
        ("torch-focal", "bf16", 25.0, 11.0, 3.2),
        ("torch-focal-compile", "bf16", 1.5, 4.0, 53.0),
    ):
        config = {"batch": 4096, "dtype": "bf16", "target_dtype": target, "variant": "focal"}
        config |= {"parameters": {"alpha": 0.25, "gamma": 2.0}, "reduction": "mean"}
        base = {"provider": provider, "mode": "full", "x_value": 131072, "extra_config": json.dumps(config)}
        rows += [
            {**base, "metric": "time", "y_50": ms},
            {**base, "metric": "memory", "y_50": mb},
            {**base, "metric": "roofline", "y_50": roofline},
        ]
    full = report._headline(pd.DataFrame(rows).assign(ours_path="Triton kernels"))
    lines = report.variants_section(full)
    assert lines[0] == "### Loss variants — fwd+bwd, B=4096, L=131072, bf16 logits"
    assert (
        "| focal | alpha=0.25, gamma=2.0; mean | uint8 / bf16 | 1 | 25 | 25.00× | 1.5 | 1.50× | 5.50× | 80 |"
        in lines
    )


def _time(frame: pd.DataFrame, provider: str, x: int) -> float:
    """Median fwd+bwd time at bf16 logits and uint8 targets."""
    rows = frame[
        (frame["metric"] == "time")
        & (frame["mode"] == "full")
        & (frame["dtype"] == "bf16")
        & (frame["target_dtype"] == "uint8")
        & (frame["provider"] == provider)
        & (frame["x_value"] == x)
    ]
    assert len(rows) == 1
    return float(rows["y_50"].iloc[0])


# --------------------------------------------------------------------------------------------------------
# REPORT.md's "Measured vs the static model": synthetic sweeps and resource CSVs
# --------------------------------------------------------------------------------------------------------

_SPEC = importlib.util.spec_from_file_location("bench_report", REPO / "bench" / "report.py")
report = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(report)

# (sweep, our target, B, L, D, forward ms, profiled kernel ms, the device kernel's name)
CASES = [
    ("dense", "uint8", 4096, 131072, None, 0.70, 0.62, "soft_margin_forward_kernel"),
    ("sparse", "sparse", 4096, 670091, None, 2.9, 2.6, "soft_margin_forward_kernel"),
    ("linear", "sparse", 8192, 670091, 768, 48.0, 30.0, "linear_soft_margin_chunk_kernel"),
]


def _frames(gpu: str, triton: str = "3.6.0", profiled: bool = True) -> dict[str, pd.DataFrame]:
    frames = {}
    for sweep, target, batch, labels, dim, forward_ms, kernel_ms, device_kernel in CASES:
        config = {"batch": batch, "dtype": "bf16", "target_dtype": target, **({"dim": dim} if dim else {})}
        base = {
            "gpu_name": gpu,
            "torch_version": "2.11.0",
            "triton_version": triton,
            "package_version": "0.1.0",
            "git_commit": "1234567",
            "timestamp": "2026-12-01T00:00:00+00:00",
            "provider": "softmargin-triton",
            "x_name": "labels",
            "x_value": labels,
            "extra_config": json.dumps(config),
            "unit": "ms",
        }
        rows = [
            {
                **base,
                "mode": "forward",
                "metric": "time",
                "y_50": forward_ms,
                "y_20": forward_ms,
                "y_80": forward_ms,
            },
            {
                **base,
                "mode": "full",
                "metric": "time",
                "y_50": 1.1 * forward_ms,
                "y_20": forward_ms,
                "y_80": 2.0,
            },
        ]
        if profiled:  # our kernel (two launch names, summed) and another kernel that must not count
            rows += [
                {
                    **base,
                    "mode": "full",
                    "metric": "kernel_time",
                    "y_50": kernel_ms / 2,
                    "device_kernel": device_kernel,
                },
                {
                    **base,
                    "mode": "full",
                    "metric": "kernel_time",
                    "y_50": kernel_ms / 2,
                    "device_kernel": device_kernel,
                },
                {
                    **base,
                    "mode": "full",
                    "metric": "kernel_time",
                    "y_50": 99.0,
                    "device_kernel": "other_kernel",
                },
            ]
        frames[sweep] = pd.DataFrame(rows)
    return frames


def _resources(folder: Path, version: str, with_bounds: bool) -> Path:
    """A per-config CSV as bench/kernel_resources.py writes it: 3 configs per headline kernel."""
    rows = []
    for kernel, variant in report.STATIC_HEADLINE:
        for index, bound in enumerate((1e11, 2e11, 4e11)):
            row = {"kernel": kernel, "variant": variant, "config": json.dumps({"i": index}), "registers": 40}
            if with_bounds:
                row |= {
                    "bound_elements_per_s_H100": bound / 2,
                    "limiter_H100": "issue",
                    "bound_elements_per_s_H200": bound,
                    "limiter_H200": "bandwidth",
                }
            rows.append(row)
    rows.append(
        {"kernel": "soft_margin_scale_grad", "variant": "bf16-per-row", "config": "{}", "registers": 30}
    )
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(folder / f"sm_90-triton{version}.csv", index=False)
    return folder


def _table(lines: list[str]) -> dict[str, list[str]]:
    """The static-model table's rows by variant: their cells."""
    rows = [line.split(" | ") for line in lines if line.startswith("| ") and "---" not in line]
    return {cells[1]: cells for cells in rows[1:]}


def test_static_model_before_the_columns_exist(tmp_path):
    """The resources CSV lacks the bound columns: the report says so and still shows the measurement."""
    resources = _resources(tmp_path, "3.6.0", with_bounds=False)
    lines = report.static_model_section(_frames("NVIDIA H200"), resources)
    assert "Note: no static prediction in sm_90-triton3.6.0.csv." in lines
    table = _table(lines)
    assert set(table) == {"mlsm-bf16-uint8", "mlsm-bf16-sparse", "bf16-sparse"}
    dense = table["mlsm-bf16-uint8"]
    assert dense[3].startswith("0.62 (soft_margin_forward_kernel, profiler)")
    assert float(dense[4]) == pytest.approx(4096 * 131072 / 0.62e-3, rel=1e-2)
    assert dense[5] == "n/a" and dense[7].startswith("n/a")


@pytest.mark.parametrize(
    ("gpu", "column", "limiter"),
    [("NVIDIA H200", "H200", "bandwidth"), ("NVIDIA H100 80GB HBM3", "H100", "issue")],
    ids=["H200", "H100"],
)
def test_static_model_bound_beside_the_measurement(tmp_path, gpu, column, limiter):
    resources = _resources(tmp_path, "3.6.0", with_bounds=True)
    lines = report.static_model_section(_frames(gpu), resources)
    assert not any(line.startswith("Note:") for line in lines), lines
    bound = 2e11 if column == "H200" else 1e11  # the median over the three configs
    for sweep, _, batch, labels, _, _, kernel_ms, _ in CASES:
        variant = {"dense": "mlsm-bf16-uint8", "sparse": "mlsm-bf16-sparse", "linear": "bf16-sparse"}[sweep]
        cells = _table(lines)[variant]
        measured = batch * labels / (kernel_ms / 1e3)
        assert float(cells[4]) == pytest.approx(measured, rel=1e-2)
        assert cells[5] == f"{bound:.3g} (3 configs)" and cells[6] == limiter
        assert cells[7].rstrip(" |") == f"{measured / bound:.2f}×"


def test_static_model_other_gpu_nearest_version_and_wall_time(tmp_path):
    _resources(tmp_path, "3.6.0", with_bounds=True)
    _resources(tmp_path, "3.9.0", with_bounds=True)
    # triton 3.7 on the GPU: the nearest CSV (3.6) with a note; no profiler rows: the forward's wall time
    lines = report.static_model_section(_frames("NVIDIA H200", "3.7.1", profiled=False), tmp_path)
    assert any("nearest, sm_90-triton3.6.0.csv" in line for line in lines), lines
    cells = _table(lines)["bf16-sparse"]
    assert cells[3] == "48 (forward wall time (with its dE, dW GEMMs))"
    lines = report.static_model_section(_frames("NVIDIA A100-SXM4-80GB"), tmp_path)
    assert (
        "Note: no prediction for NVIDIA A100-SXM4-80GB: the static model has columns for H100 and H200 only."
        in lines
    )
    assert all(cells[5] == "n/a" for cells in _table(lines).values())


# --------------------------------------------------------------------------------------------------------
# Points to distrust, and what a CPU run says
# --------------------------------------------------------------------------------------------------------


def _line(medians: dict[int, float], bands: dict[int, tuple[float, float]] | None = None) -> pd.DataFrame:
    bands = bands or {}
    return pd.DataFrame(
        [
            {"x_value": x, "y_50": y, "y_20": bands.get(x, (y, y))[0], "y_80": bands.get(x, (y, y))[1]}
            for x, y in medians.items()
        ]
    )


def test_outliers_flag_a_jump_and_a_median_outside_its_band():
    # linear growth, with a flat start (launch overhead): nothing to flag
    assert report.outliers(_line({2**10: 0.05, 2**12: 0.05, 2**14: 0.2, 2**16: 0.8, 2**18: 3.2})) == {}
    # the case: 182 ms at 2^10 on a line that runs 0.8–70 ms elsewhere
    line = _line({2**10: 182.0, 2**12: 0.8, 2**14: 3.0, 2**16: 12.0, 2**18: 70.0})
    flagged = report.outliers(line)
    assert list(flagged) == [0] and "more than 10× off its neighbours (0.8 at 4096)" in flagged[0]
    # a spike in the middle is flagged; its neighbours, each fine on its other side, are not
    flagged = report.outliers(_line({2**10: 1.0, 2**12: 4.0, 2**14: 900.0, 2**16: 16.0, 2**18: 64.0}))
    assert list(flagged) == [2]
    flagged = report.outliers(_line({64: 1.0, 256: 4.0}, bands={256: (0.5, 3.0)}))
    assert list(flagged) == [1] and "outside its band" in flagged[1]


def test_cpu_report_says_what_ran_and_sets_no_goal(tmp_path):
    frames = _frames("cpu")
    for frame in frames.values():
        frame["ours_path"] = "plain-torch fallback"
    lines = report.cpu_section(frames)
    assert any("plain-torch fallback, and no Triton kernel ran" in line for line in lines), lines
    dense = report.headline_lines({"dense": frames["dense"]}, detail=False)
    assert dense[2] == "| metric | value |" and not any("goal" in line or "≥" in line for line in dense)
    on_gpu = report.headline_lines({"dense": _frames("NVIDIA H200")["dense"]}, detail=False)
    assert (
        on_gpu[2] == "| metric | value | goal (GPU) |"
        and "| speed-up vs eager MLSM | n/a | ≥ 10× |" in on_gpu
    )
    for frame in frames.values():
        frame["ours_path"] = "Triton kernels (CPU interpreter)"
    assert any("under Triton's CPU interpreter" in line for line in report.cpu_section(frames))


def test_plot_names_the_lines_that_coincide(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))  # plot.py imports report.py from beside it
    plot = importlib.import_module("plot")
    same = _line({1024: 0.25, 4096: 1.0})
    lines = {"ours": _line({1024: 0.06, 4096: 0.25}), "torch-bce": same, "torch-mlsm": same.copy()}
    assert plot.coinciding(lines) == [["torch-bce", "torch-mlsm"]]
    lines["torch-mlsm"] = _line({1024: 0.25, 4096: 1.1})  # 10% apart: separate lines
    assert plot.coinciding(lines) == []
    empty = _line({1024: float("nan"), 4096: float("nan")})  # no values (peak memory on a CPU): not "equal"
    assert plot.coinciding({"ours": empty, "torch-bce": empty.copy()}) == []
