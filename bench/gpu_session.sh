#!/usr/bin/env bash
# One call on a lent GPU machine: install, run the whole test suite (gpu tier included), run the sweeps
# and plot them. Results go to $OUT (the device tool's return folder) or ./gpu-out.
#   bash bench/gpu_session.sh [SWEEP ...]      (default: dense sparse linear; split them across calls
#                                               when one call's time limit is short)
set -uo pipefail
out="${OUT:-gpu-out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python -m pip install --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1 || { cat "$out/install.log"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
python -m pytest -q -rs 2>&1 | tee "$out/pytest.log"
python bench/sweep.py --out "$out" --sweeps ${*:-dense sparse linear} 2>&1 | tail -4
python bench/plot.py "$out"
