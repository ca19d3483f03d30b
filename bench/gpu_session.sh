#!/usr/bin/env bash
# One prepared run on a lent GPU machine that brings back the headline evidence (bench/README.md: the
# steps, what each measures, its estimate and how it was estimated).
#
#   bash bench/gpu_session.sh [--out DIR] [--budget SECONDS] [--steps STEP ...] [--dry-run]
#
# --out DIR      the output folder (default: $OUT, else ./gpu-out); it ends holding three files:
#                gpu-results.tar.gz (every result, refreshed after each step), summary.md (the headline
#                table and each step's status) and session.log (everything the steps printed).
# --budget S     wall-time budget of the whole run in seconds (default 420; dry run 185). Each step runs
#                under `timeout`, limited by its own cap, by the budget left and by the estimates of the
#                headline steps after it (so that a slow step cannot starve the headline); the wider
#                sweeps (step e) only use what is left.
# --steps ...    run only these steps (default: all, in order): install ceilings check gpu-tests dense
#                sparse linear head-memory variants wide-dense wide-batch wide-linear wide-sparse xmc
#                wide-dtypes.
#                `install` always runs first. A second call, e.g. `--steps variants wide-dense wide-batch
#                wide-linear wide-sparse xmc wide-dtypes --budget 540`, spends a second window on the
#                wider sweeps.
# --dry-run      CPU only: the same steps at toy sizes, our kernels under Triton's interpreter, the pip
#                install as `pip install --dry-run`; a CI test runs it (tests/test_gpu_session.py).
#
# The device tree is a copy without .git: pass the commit as GIT_COMMIT=<hash> in front of the command.
# PYTHON overrides the interpreter (default python3, the device image's).
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
cd "$repo" || exit 1
py="${PYTHON:-python3}"

# ---------------------------------------------------------------------------------------------------------
# Sizes: the GPU run's, or the dry run's toy ones (DRY=1)
# ---------------------------------------------------------------------------------------------------------
sizes() {
    if ((DRY)); then
        ceiling_args=(--copy-mib 16 --batch 16 --dim 16 --labels 300)
        check_args=(--size 8 300 16)
        # 3 timed calls a measurement: the interpreter takes ~50 ms a call
        sweep_args=(--samples 3)
        dense_args=(--batch 8 --labels 256)
        sparse_args=(--batch 8 --labels 300)
        linear_args=(--labels 300 --linear-batches 16 --dims 16)
        # the headline method only: each method is a process of its own (~5 s to start on 2 cores)
        head_memory_args=(--labels 4096 --dim 16 --batch 8 --methods fused+fused-sgd)
        # fwd+bwd only: forward and backward alone would triple the step's measurements
        variants_args=(--batch 8 --labels 256 --breakdown-dtypes)
        # torch.compile on a CPU builds C++ for minutes: the dry run leaves the compiled providers out
        dense_providers=(softmargin-triton torch-mlsm torch-bce)
        linear_providers=(softmargin-triton torch-linear-mlsm torch-chunked)
        wide_dense_args=(--batch 8 --labels 64 512 --providers "${dense_providers[@]}")
        wide_batch_args=(--batches 4 16 --batch-sweep-labels 128 --providers "${dense_providers[@]}")
        wide_linear_args=(--labels 512 --linear-batches 8 --dims 16 --providers "${linear_providers[@]}")
        wide_sparse_args=(--batch 8 --labels 512 2048)
        xmc_args=(--dataset eurlex-4k --scale 0.005 -- --epochs 2 --batch-size 64 --hidden 32)
    else
        ceiling_args=(--copy-mib 2048 --batch 8192 --dim 768 --labels 670091)
        check_args=()
        sweep_args=()
        dense_args=(--batch 4096 --labels 131072)
        sparse_args=(--batch 4096 --labels 670091)
        linear_args=(--labels 670091 --linear-batches 8192 --dims 768)
        # Amazon-3M's classifier: fused-sgd, and the AdamW heads, which fit an H200 too
        head_memory_args=(--labels 2812281 --dim 768 --batch 512)
        variants_args=(--batch 4096 --labels 131072 --breakdown-dtypes bf16)
        dense_providers=(softmargin-triton torch-mlsm torch-bce torch-mlsm-compile torch-bce-compile)
        linear_providers=(softmargin-triton torch-linear-mlsm torch-linear-mlsm-compile torch-chunked)
        wide_dense_args=(--batch 4096 --labels 1024 4096 16384 65536 131072 262144 1048576)
        wide_batch_args=(--batches 256 1024 4096 16384 --batch-sweep-labels 131072)
        wide_linear_args=(--labels 131072 670091 2097152 --linear-batches 1024 8192 --dims 256 768)
        wide_sparse_args=(--batch 4096 --labels 131072 2097152)
        xmc_args=(--dataset amazon-670k --scale 0.1 -- --epochs 3)
    fi
}

# ---------------------------------------------------------------------------------------------------------
# The steps. Each writes under $RES and prints to the session log; `--step NAME` runs one (under timeout).
# ---------------------------------------------------------------------------------------------------------
sweep() {
    # the copy bandwidth and 3-GEMM floor of step b where it ran, else sweep.py measures its own
    local ceilings=()
    [[ -f "$RES/ceilings.csv" ]] && ceilings=(--ceilings "$RES/ceilings.csv")
    "$py" bench/sweep.py "${ceilings[@]}" "${sweep_args[@]}" "$@"
}

step_install() {
    local dry=()
    ((DRY)) && dry=(--dry-run)
    "$py" -m pip install "${dry[@]}" --no-deps --no-build-isolation -e . >"$RES/install.log" 2>&1
    local rc=$?
    tail -n 3 "$RES/install.log"
    {
        echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "command: bash bench/gpu_session.sh $ARGS"
        echo "commit: ${GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
        echo "host: $(uname -srm), $(nproc) cores"
        if command -v nvidia-smi >/dev/null; then
            echo "nvidia-smi: $(nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
                --format=csv,noheader 2>&1 | head -n 1)"
        else
            echo "nvidia-smi: not found"
        fi
        "$py" - <<'EOF' 2>&1
import platform, sys
import torch, triton
print("python:", platform.python_version())
print("torch:", torch.__version__, "cuda", torch.version.cuda)
print("triton:", triton.__version__)
print("gpu:", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (no CUDA device)")
try:
    import softmargin_triton
    print("softmargin_triton:", softmargin_triton.__version__, "from", softmargin_triton.__file__)
except Exception as error:
    print("softmargin_triton: import failed:", error)
    sys.exit(1)
EOF
    } >"$RES/env.txt"
    local rc_env=$?
    cat "$RES/env.txt"
    return $((rc || rc_env))
}

step_ceilings() { "$py" bench/ceilings.py --out "$RES/ceilings.csv" "${ceiling_args[@]}"; }

step_check() { "$py" bench/check_kernels.py --out "$RES/check_kernels.csv" "${check_args[@]}"; }

step_gpu_tests() {
    # the gpu tier (skipped with its reason on a CPU); -p no:cacheprovider keeps .pytest_cache out
    "$py" -m pytest -q -rs -m gpu -p no:cacheprovider --junit-xml "$RES/gpu-tests.xml" 2>&1 |
        tee "$RES/gpu-tests.log" | tail -n 25
}

step_dense() {
    sweep --out "$RES" --sweeps dense "${dense_args[@]}" --dtypes bf16 --targets uint8 bf16 \
        --breakdown-dtypes bf16 --providers "${dense_providers[@]}" --profile
}

step_sparse() {
    sweep --out "$RES" --sweeps sparse "${sparse_args[@]}" --dtypes bf16 --targets uint8 \
        --breakdown-dtypes bf16 --providers softmargin-triton torch-mlsm torch-bce --profile
}

step_linear() {
    sweep --out "$RES" --sweeps linear "${linear_args[@]}" --dtypes bf16 --breakdown-dtypes bf16 \
        --providers "${linear_providers[@]}" --profile
}

step_head_memory() {
    # one head training step per method, each in a fresh process: peak memory against the weights' bytes
    "$py" bench/head_memory.py --sweep --out "$RES/head_memory" --dtype bf16 "${head_memory_args[@]}"
}

step_variants() {
    # issue 18's losses and options against their eager formulas (compiled too on CUDA; not in the dry run)
    sweep --out "$RES/wide" --append --sweeps variants "${variants_args[@]}" --dtypes bf16
}

step_wide_dense() {
    sweep --out "$RES/wide" --append --sweeps dense "${wide_dense_args[@]}" --dtypes bf16 \
        --targets uint8 bf16 fp32 --breakdown-dtypes
}

step_wide_batch() {
    sweep --out "$RES/wide" --append --sweeps batch "${wide_batch_args[@]}" --dtypes bf16 \
        --targets uint8 bf16 fp32 --breakdown-dtypes
}

step_wide_linear() {
    # every linear provider, the tiled design (a) included on CUDA
    sweep --out "$RES/wide" --append --sweeps linear "${wide_linear_args[@]}" --dtypes bf16 --breakdown-dtypes
}

step_wide_sparse() {
    sweep --out "$RES/wide" --append --sweeps sparse "${wide_sparse_args[@]}" --dtypes bf16 \
        --targets uint8 --breakdown-dtypes
}

step_xmc() { "$py" bench/xmc_compare.py --out "$RES/xmc" "${xmc_args[@]}"; }

step_wide_dtypes() {
    sweep --out "$RES/wide" --append --sweeps dense "${wide_dense_args[@]}" --dtypes fp16 fp32 \
        --targets uint8 fp32 --breakdown-dtypes
}

if [[ "${1:-}" == "--step" ]]; then # re-entry: one step, in its own process group under timeout
    sizes
    "step_${2//-/_}"
    exit
fi

# ---------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------
ARGS="$*"
out="${OUT:-gpu-out}"
DRY=0
budget=""
only=()
while (($#)); do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --budget) budget="$2"; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        --steps)
            shift
            while (($#)) && [[ "$1" != --* ]]; do only+=("$1"); shift; done
            ;;
        -h | --help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "unknown argument '$1' (see: bash bench/gpu_session.sh --help)" >&2; exit 2 ;;
    esac
done
budget="${budget:-$( ((DRY)) && echo 185 || echo 420)}"

# name, estimate (s) on an H100/H200 (bench/README.md says how each was estimated), estimate of the dry run
# on a 2-core CPU (measured), cap (s), headline (1: its time is kept free while the steps before it run)
STEPS=(
    "install 15 5 120 1"
    "ceilings 15 3 60 1"
    "check 75 15 150 1"
    "gpu-tests 90 8 150 1"
    "dense 45 10 150 1"
    "sparse 25 10 120 1"
    "linear 60 15 150 1"
    "head-memory 70 14 180 1"
    "variants 90 10 180 0"
    "wide-dense 70 8 150 0"
    "wide-batch 45 6 120 0"
    "wide-linear 120 8 240 0"
    "wide-sparse 20 6 90 0"
    "xmc 90 15 240 0"
    "wide-dtypes 150 8 300 0"
)
for name in "${only[@]}"; do
    printf '%s\n' "${STEPS[@]}" | grep -q "^$name " || {
        echo "unknown step '$name'" >&2
        exit 2
    }
done

mkdir -p "$out" || exit 1
out="$(cd "$out" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/gpu-session.XXXXXX")"
RES="$work/gpu-results"
mkdir -p "$RES"
export RES DRY ARGS py
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10
if ((DRY)); then # CPU only by construction, a GPU machine's included
    export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
fi
# The image promises pandas, matplotlib and pytest; the trainer imports tqdm: a stand-in where it is missing.
if ! "$py" -c "import tqdm" 2>/dev/null; then
    export PYTHONPATH="$here/shim${PYTHONPATH:+:$PYTHONPATH}"
fi
rm -f "$out/gpu-results.tar.gz" "$out/summary.md" "$out/session.log"
exec 3>&1 4>&2
exec > >(tee -a "$out/session.log") 2>&1
tee_pid=$!

start=$(date +%s)
deadline=$((start + budget))
echo "step,status,rc,seconds,estimate_s,limit_s" >"$RES/steps.csv"
echo "gpu_session: budget ${budget} s, dry run ${DRY}, results in $out (work folder $work)"

pack() {
    # REPORT.md (headline and wide) and summary.md from what exists, then the archive; never fatal
    "$py" bench/report.py "$RES" "$RES/wide" --summary "$out/summary.md" >/dev/null 2>"$work/report.err" ||
        {
            echo "report.py failed: $(tail -n 1 "$work/report.err")"
            {
                echo "# GPU session summary (report.py failed: see session.log)"
                echo
                echo '```'
                cat "$RES/steps.csv"
                echo '```'
            } >"$out/summary.md"
        }
    tar -czf "$out/gpu-results.tar.gz.tmp" -C "$work" gpu-results && mv -f "$out/gpu-results.tar.gz.tmp" \
        "$out/gpu-results.tar.gz"
}

# the estimate of a step entry: the GPU's, or the dry run's
estimate_of() {
    local name gpu dry rest
    read -r name gpu dry rest <<<"$1"
    if ((DRY)); then echo "$dry"; else echo "$gpu"; fi
}

# seconds the headline steps after step $1 are estimated to need
reserve_after() {
    local seen=0 total=0 name rest headline
    for entry in "${STEPS[@]}"; do
        read -r name rest <<<"$entry"
        headline="${entry##* }"
        if ((seen && headline)) && wanted "$name"; then total=$((total + $(estimate_of "$entry"))); fi
        [[ "$name" == "$1" ]] && seen=1
    done
    echo "$total"
}

wanted() {
    [[ "$1" == install ]] && return 0
    ((${#only[@]} == 0)) && return 0
    printf '%s\n' "${only[@]}" | grep -qx "$1"
}

for entry in "${STEPS[@]}"; do
    read -r name _ _ cap headline <<<"$entry"
    estimate=$(estimate_of "$entry")
    wanted "$name" || continue
    now=$(date +%s)
    left=$((deadline - now))
    # a step gets its cap, but no more than the budget left and, before the last headline step, no more
    # than what the headline steps after it leave free, though always twice its own estimate
    limit=$left
    if ((headline)); then
        keep=$((left - $(reserve_after "$name")))
        ((keep < 2 * estimate)) && keep=$((2 * estimate))
        ((limit > keep)) && limit=$keep
    fi
    ((limit > cap)) && limit=$cap
    ((limit > left)) && limit=$left
    if ((limit < 5)); then
        echo "=== $name: skipped, no time left in the ${budget} s budget"
        echo "$name,skipped,,0,$estimate,$limit" >>"$RES/steps.csv"
        continue
    fi
    echo "=== $name: estimate ${estimate} s, limit ${limit} s, $((now - start)) s into the run"
    step_env=()
    if ((DRY)); then # the headline's ours under the interpreter; the wider sweeps and xmc on the torch path
        case "$name" in
            check | dense | sparse | linear) step_env=(SOFTMARGIN_TRITON_BACKEND=triton) ;;
            *) step_env=(SOFTMARGIN_TRITON_BACKEND=auto) ;;
        esac
    fi
    env "${step_env[@]}" timeout -k 10 "$limit" bash "$0" --step "$name"
    rc=$?
    seconds=$(($(date +%s) - now))
    case $rc in
        0) status=ok ;;
        124 | 137) status="timed out" ;;
        *) status=failed ;;
    esac
    echo "=== $name: $status (rc $rc) in ${seconds} s"
    echo "$name,$status,$rc,$seconds,$estimate,$limit" >>"$RES/steps.csv"
    pack
done
echo "gpu_session: done in $(($(date +%s) - start)) s; $out holds: $(cd "$out" && ls | tr '\n' ' ')"
exec 1>&3 2>&4
wait "$tee_pid" 2>/dev/null
rm -rf "$work"
