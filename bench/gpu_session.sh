#!/usr/bin/env bash
# One call on a lent GPU machine: install, then the steps asked for, in this order: `tests` (the whole
# suite, gpu tier included), the sweeps (dense batch sparse linear) with their plots and REPORT.md, and
# `xmc` (the trainer on an amazon-670k-shaped dataset with the fused loss vs eager torch, into $OUT/xmc).
# Results go to $OUT (the device tool's return folder) or ./gpu-out.
#   bash bench/gpu_session.sh [STEP ...]      (default: tests dense batch sparse linear xmc)
# A call is limited to 10 minutes and dense + batch alone take about 8 on an H100 (estimate in
# bench/sweep.py's docstring): run them in a call of their own, e.g. `tests sparse linear`, then `dense batch`.
set -uo pipefail
out="${OUT:-gpu-out}"
# The device image's interpreter is python3 (a bare `python` may be missing or another one).
py="${PYTHON:-python3}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
tests=0
xmc=0
sweeps=()
for step in ${*:-tests dense batch sparse linear xmc}; do
    case "$step" in
        tests) tests=1 ;;
        xmc) xmc=1 ;;
        dense | batch | sparse | linear) sweeps+=("$step") ;;
        *) echo "unknown step '$step': expected tests, dense, batch, sparse, linear or xmc" >&2; exit 2 ;;
    esac
done
"$py" -m pip install --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1 || { cat "$out/install.log"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
"$py" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
if ((tests)); then
    "$py" -m pytest -q -rs 2>&1 | tee "$out/pytest.log"
fi
if ((${#sweeps[@]})); then
    # The log keeps the progress bars: where the sweeps stood if the call ran out of time.
    "$py" bench/sweep.py --out "$out" --sweeps "${sweeps[@]}" >"$out/sweep.log" 2>&1 || tail -n 20 "$out/sweep.log"
    grep -a "^wrote" "$out/sweep.log"
    "$py" bench/plot.py "$out" | tail -n 1
fi
if ((xmc)); then
    "$py" bench/xmc_compare.py --out "$out/xmc" 2>&1 | tail -n 12
fi
