"""bench/distributed_comm.py on 2 gloo ranks at a tiny size: the bytes it measures per collective equal the
design's formula (O(B·D), independent of L), and its COMM.md says so."""

import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
WORLD, BATCH, DIM, LABELS = 2, 8, 4, (256, 1024)
FP32 = 4


def _traffic(frame: pd.DataFrame) -> dict[tuple, dict[tuple[str, str], dict[str, int]]]:
    """(mode, labels, rank) → (collective, site) → {calls, input_bytes, output_bytes}."""
    comm = frame[frame["collective"] != "step"]
    result: dict[tuple, dict[tuple[str, str], dict[str, int]]] = {}
    for row in comm.itertuples():
        entry = result.setdefault((row.mode, row.labels, row.rank), {}).setdefault(
            (row.collective, row.site), {}
        )
        entry[row.metric] = int(row.value)
    return result


def test_measured_bytes_match_formula(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "bench/distributed_comm.py",
            "--out",
            str(tmp_path),
            "--worlds",
            str(WORLD),
            "--labels",
            *map(str, LABELS),
            "--batch",
            str(BATCH),
            "--dim",
            str(DIM),
            "--dtypes",
            "fp32",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    frame = pd.read_csv(tmp_path / "distributed_comm.csv", keep_default_na=False)
    traffic = _traffic(frame)
    steps = frame[frame["collective"] == "step"]
    assert set(traffic) == {
        (mode, labels, rank)
        for mode in ("replicated", "data_parallel")
        for labels in LABELS
        for rank in range(WORLD)
    }
    features = BATCH * DIM * FP32  # the B×D fp32 tensor that crosses ranks in either mode
    totals = {}
    for (mode, labels, rank), measured in traffic.items():
        total = sum(entry["input_bytes"] + entry["output_bytes"] for entry in measured.values())
        totals.setdefault((mode, rank), set()).add(total)
        sites = dict(measured)  # each expected collective is popped; none may remain
        agreement = sites.pop(("all_gather", "agreement"))
        # a few int64 per rank, gathered from every rank
        assert agreement["calls"] == 1 and agreement["input_bytes"] % 8 == 0
        assert (
            agreement["input_bytes"] <= 32 * 8
            and agreement["output_bytes"] == WORLD * agreement["input_bytes"]
        )
        loss = sites.pop(("all_reduce", "loss"))
        assert (loss["calls"], loss["input_bytes"], loss["output_bytes"]) == (1, FP32, FP32)
        if mode == "replicated":
            dE = sites.pop(("all_reduce", "dE"))
            assert (dE["calls"], dE["input_bytes"], dE["output_bytes"]) == (1, features, features)
        else:
            gathered = sites.pop(("all_gather", "features"))
            assert (gathered["calls"], gathered["input_bytes"], gathered["output_bytes"]) == (
                1,
                features // WORLD,
                features,
            )
            scattered = sites.pop(("reduce_scatter", "dE"))
            assert (scattered["calls"], scattered["input_bytes"], scattered["output_bytes"]) == (
                1,
                features,
                features // WORLD,
            )
            case = steps[
                (steps["mode"] == mode) & (steps["labels"] == labels) & (steps["metric"] == "positives")
            ]
            most = int(case["value"].max())  # every rank pads its int64 ids to the largest rank's count
            positives = sites.pop(("all_gather", "positives"))
            assert positives["calls"] == 2  # int64 row counts, then int64 ids
            assert positives["output_bytes"] == BATCH * 8 + WORLD * most * 8
        assert not sites, f"unexpected collectives: {sites}"
    # the same positives for every L (counts drawn first), so the whole step's traffic does not depend on L
    assert all(len(per_labels) == 1 for per_labels in totals.values()), totals
    report = (tmp_path / "COMM.md").read_text()
    assert f"all {2 * len(LABELS) * WORLD} rank-steps match exactly" in report
    assert "independent of L" in report
