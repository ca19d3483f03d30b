"""Unpack what a GPU session (bench/gpu_session.sh) brought back into reports/<gpu>/, then plot it and
regenerate its REPORT.md.

    python bench/unpack.py OUT_FOLDER_OR_ARCHIVE [--reports reports] [--name NAME]

OUT_FOLDER_OR_ARCHIVE: the session's output folder (gpu-results.tar.gz, summary.md, session.log) or the
archive itself. <gpu> is the GPU's name from the archive's env.txt, lower-case with runs of other
characters as '-' and without the vendor ("NVIDIA H200" → h200); --name overrides it. The archive's files
land in reports/<gpu>/ as they are (the headline CSVs, ceilings.csv, check_kernels.csv, env.txt,
steps.csv, the logs, wide/ and xmc/), with the session's summary.md and session.log beside them where
given; then bench/plot.py draws the plots and writes REPORT.md in reports/<gpu>/ and reports/<gpu>/wide/.
The README's performance section is then taken from reports/<gpu>/REPORT.md.
"""

import argparse
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ARCHIVE = "gpu-results.tar.gz"
ROOT = "gpu-results"


def gpu_slug(env_text: str) -> str:
    """'gpu: NVIDIA H200' → 'h200'."""
    match = re.search(r"^gpu: (.+)$", env_text, re.MULTILINE)
    name = match.group(1) if match else "unknown-gpu"
    name = re.sub(r"^nvidia\s+", "", name.strip(), flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown-gpu"


def unpack(source: Path, reports: Path, name: str | None = None, plot: bool = True) -> Path:
    archive = source / ARCHIVE if source.is_dir() else source
    if not archive.exists():
        raise SystemExit(f"no {ARCHIVE} in {source}")
    with tempfile.TemporaryDirectory() as scratch:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.isfile() or m.isdir()]
            for member in members:  # no absolute paths, no '..', no links
                if member.name.startswith("/") or ".." in Path(member.name).parts:
                    raise SystemExit(f"refusing {member.name} in {archive}")
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python ≥ 3.10.12
            tar.extractall(scratch, members=members, **safe)
        results = Path(scratch) / ROOT
        env = results / "env.txt"
        slug = name or gpu_slug(env.read_text() if env.exists() else "")
        target = reports / slug
        target.mkdir(parents=True, exist_ok=True)
        shutil.copytree(results, target, dirs_exist_ok=True)
    if source.is_dir():
        for extra in ("summary.md", "session.log"):
            if (source / extra).exists():
                shutil.copy2(source / extra, target / extra)
    if plot:
        bench = Path(__file__).resolve().parent
        folders = [str(folder) for folder in (target, target / "wide") if list(folder.glob("*_sweep.csv"))]
        if folders:
            subprocess.run([sys.executable, str(bench / "plot.py"), *folders], check=True)
        else:
            subprocess.run([sys.executable, str(bench / "report.py"), str(target)], check=True)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", type=Path, help="the session's output folder, or its gpu-results.tar.gz")
    parser.add_argument("--reports", type=Path, default=Path("reports"))
    parser.add_argument("--name", help="folder name under reports/ (default: from the GPU's name)")
    parser.add_argument("--no-plot", dest="plot", action="store_false", help="unpack only")
    args = parser.parse_args()
    target = unpack(args.source, args.reports, args.name, args.plot)
    print(f"unpacked into {target}; REPORT.md: {target / 'REPORT.md'}")


if __name__ == "__main__":
    main()
