#!/usr/bin/env bash
# One prepared check of the CUDA paths on a single-GPU machine without network access,
# within 8 minutes in all (every step under `timeout`, and a step is skipped once the budget
# is spent). Steps, each logged to its own file under $OUT and summarised at the end:
#   env          python, torch, torchvision, CUDA; installs the carried wheels if needed
#   nvidia-smi   nvidia-smi -L
#   smoke        python -m acsl_cli train schedule=smoke device=cuda progress=false
#   smoke_bf16   the same with amp=bf16
#   bench_train  scripts/bench_train.py --device cuda --backbone r50 --size 800 --batch 2
#                --iters 20
#   bench_bf16   the same with --amp bf16 --batch 8
#   bench_losses scripts/bench_losses.py --device cuda --n 8192 --classes 1230 --repeats 7
#
# Before (here, with network): scripts/fetch_gpu_wheels.sh  -> .gpu_wheels/ (hydra-core,
# omegaconf, antlr4-python3-runtime; the GPU machine's python3 has the rest).
# On the GPU machine, from the checkout (device tool: carry [".gpu_wheels"], timeout_s 540):
#   bash scripts/gpu_check.sh
# If python3 cannot import hydra / omegaconf / antlr4, the wheels in .gpu_wheels are
# installed with `pip install --no-index --no-deps --target .gpu_site` (else unpacked with
# zipfile) and .gpu_site goes on PYTHONPATH, with the checkout itself (no install needed).
#
# Settings (environment):
#   OUT=DIR         logs and summary.txt (default /tmp/acsl_gpu_check/out); at most 7 files,
#                   all directly in DIR, so that the device tool brings every one back
#   DEVICE=cpu      run every step on the CPU instead (tests this script's logic anywhere)
#   QUICK=1         tiny settings (small backbone, 128 px, few iterations, small loss bench)
#   BUDGET=480      seconds for all steps together
#   PYTHON=python3  the interpreter;  FORCE_WHEELS=1 installs the wheels even if not needed
#   GPU_WHEELS=.gpu_wheels  GPU_SITE=.gpu_site   where the wheels are and go
#   WORK=DIR        output_root of the smoke runs (default /tmp/acsl_gpu_check/work; kept
#                   out of $OUT, whose files the device tool brings back 8 at most)
# CPU test of the logic here: scripts/gpu_check.sh --quick (= DEVICE=cpu QUICK=1)
# Exit status: 0 if every step passed, 1 otherwise. The last lines are the summary.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
export PYTHONUNBUFFERED=1

if [ "${1:-}" = "--quick" ]; then  # CI: every step on the CPU, tiny settings
  DEVICE=cpu QUICK=1 BUDGET=${BUDGET:-400}
fi
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
BUDGET=${BUDGET:-480}
OUT=${OUT:-/tmp/acsl_gpu_check/out}
WORK=${WORK:-/tmp/acsl_gpu_check/work}
WHEELS=${GPU_WHEELS:-.gpu_wheels}
SITE=${GPU_SITE:-.gpu_site}
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$WORK"
SUMMARY_FILE=$OUT/summary.txt
: > "$SUMMARY_FILE"

if [ "$QUICK" = 1 ]; then
    BENCH=(--backbone small --size 128 --batch 2 --iters 2)
    BENCH_BF16=(--backbone small --size 128 --batch 2 --iters 2 --amp bf16)
    LOSSES=(--n 1024 --classes 100 --repeats 2)
    # the tests' tiny benchmark (8 classes), 2 iterations a stage, 8 val images: the logic
    # is the same, each smoke run takes seconds
    SMOKE_SET=(dataset.num_classes=8 dataset.max_images_per_class=12
               dataset.val_instances_per_class=2 schedule.max_iters=2
               schedule.eval_max_images=8)
else
    SMOKE_SET=()
    BENCH=(--backbone r50 --size 800 --batch 2 --iters 20)
    BENCH_BF16=(--backbone r50 --size 800 --batch 8 --iters 20 --amp bf16)
    LOSSES=(--n 8192 --classes 1230 --repeats 7)
fi

START=$SECONDS
FAILED=0
ROWS=()

# step NAME LIMIT_S PATTERN CMD...: run CMD under timeout, tee to $OUT/NAME.log, record a
# summary row with the status, the seconds and the log lines matching PATTERN (grep -E)
step() {
    local name=$1 limit=$2 pattern=$3
    shift 3
    local log=$OUT/$name.log left=$((BUDGET - (SECONDS - START)))
    if [ "$left" -lt 15 ]; then
        ROWS+=("$(printf '%-13s SKIPPED  (the %s s budget is spent)' "$name" "$BUDGET")")
        FAILED=1
        return
    fi
    [ "$DEVICE" = cpu ] && limit=$((limit * 2))  # CPU logic tests are slower; BUDGET caps
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (timeout ${limit}s): $*" | tee "$log"
    local t0=$SECONDS rc status
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$log"
    rc=${PIPESTATUS[0]}
    case $rc in
        0) status=ok ;;
        124|137) status="TIMEOUT"; FAILED=1 ;;
        *) status="FAILED rc=$rc"; FAILED=1 ;;
    esac
    local key
    key=$(grep -E -- "$pattern" "$log" | grep -v '^== ' | tail -n 3 | tr -s ' ' | paste -sd ';' -)
    ROWS+=("$(printf '%-13s %-13s %4d s  %s' "$name" "$status" $((SECONDS - t0)) "$key")")
}

env_step() {
    echo "checkout: $ROOT ($(git -C "$ROOT" log -1 --format='%h %s' 2>/dev/null | cut -c1-60))"
    echo "python: $(command -v "$PY") $("$PY" -c 'import sys; print(sys.version.split()[0])')"
    if ! "$PY" -c "import hydra, omegaconf, antlr4" 2>/dev/null || [ "${FORCE_WHEELS:-0}" = 1 ]
    then
        if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
            echo "error: python cannot import hydra/omegaconf/antlr4 and $WHEELS holds no" \
                 "wheels: run scripts/fetch_gpu_wheels.sh where there is network, then carry" \
                 "$WHEELS along"
            return 1
        fi
        local wheels=() w
        for w in "$WHEELS"/*.whl; do
            # a PyYAML wheel (C extension, one CPython version) only where yaml is missing
            case "$(basename "$w")" in
                [Pp][Yy][Yy][Aa][Mm][Ll]-*) "$PY" -c "import yaml" 2>/dev/null && continue ;;
            esac
            wheels+=("$w")
        done
        echo "installing $(printf '%s\n' "${wheels[@]##*/}" | paste -sd ' ' -) into $SITE"
        mkdir -p "$SITE"
        if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade \
                --target "$SITE" "${wheels[@]}"; then
            echo "pip failed; unpacking the wheels with zipfile instead"
            for w in "${wheels[@]}"; do "$PY" -m zipfile -e "$w" "$SITE" || return 1; done
        fi
    fi
    if ! "$PY" -c "import yaml" 2>/dev/null; then
        echo "error: this python has no PyYAML (import yaml fails); omegaconf needs it. It is" \
             "not pure Python: run WITH_YAML=1 scripts/fetch_gpu_wheels.sh (a CPython 3.12" \
             "x86_64 wheel) and carry $WHEELS again"
        return 1
    fi
    "$PY" - "$DEVICE" <<'EOF'
import sys

import hydra
import omegaconf
import torch
import torchvision

device = sys.argv[1]
print(f"torch {torch.__version__} torchvision {torchvision.__version__} hydra "
      f"{hydra.__version__} omegaconf {omegaconf.__version__}; cuda available "
      f"{torch.cuda.is_available()}"
      + (f", {torch.cuda.get_device_name()} (torch CUDA {torch.version.cuda})"
         if torch.cuda.is_available() else ""))
if device == "cuda" and not torch.cuda.is_available():
    sys.exit("error: DEVICE=cuda but torch sees no CUDA device")
EOF
}

# the checkout and the carried wheels are importable without installing anything
case $SITE in /*) SITE_ABS=$SITE ;; *) SITE_ABS=$ROOT/$SITE ;; esac
export PYTHONPATH="$ROOT:$SITE_ABS${PYTHONPATH:+:$PYTHONPATH}"

export -f env_step  # timeout runs programs, not shell functions: bash -c env_step
export PY WHEELS SITE DEVICE ROOT
step env 60 '^(torch |error)' bash -c env_step
if [ "$DEVICE" = cuda ]; then
    step nvidia-smi 20 '^GPU ' nvidia-smi -L
fi
SMOKE=("$PY" -m acsl_cli train schedule=smoke "device=$DEVICE" progress=false
       "output_root=$WORK/o" "${SMOKE_SET[@]}")
PAT_SMOKE='(^│ |^run directory|^error|Error)'  # the metrics rows, the run folder (time)
step smoke 100 "$PAT_SMOKE" "${SMOKE[@]}"
step smoke_bf16 80 "$PAT_SMOKE" "${SMOKE[@]}" amp=bf16
PAT_BENCH='(^stage-|^note|^warning|Error|error)'
step bench_train 90 "$PAT_BENCH" "$PY" scripts/bench_train.py --device "$DEVICE" "${BENCH[@]}"
step bench_bf16 90 "$PAT_BENCH" "$PY" scripts/bench_train.py --device "$DEVICE" "${BENCH_BF16[@]}"
step bench_losses 60 '(^\| acsl \||^\| BCE|Error|error)' \
    "$PY" scripts/bench_losses.py --device "$DEVICE" "${LOSSES[@]}"
if [ "$DEVICE" = cuda ]; then  # host-sync counts of every loss (deselected on CPU)
    step cuda_tests 90 '(passed|failed|error)' "$PY" -m pytest -q -p no:cacheprovider -m cuda \
        tests/test_amp.py tests/test_losses_ecm.py tests/test_losses_efl.py tests/test_losses_gol.py
fi

{
    echo
    echo "== summary: DEVICE=$DEVICE QUICK=$QUICK, $((SECONDS - START)) s of a $BUDGET s budget"
    printf '%s\n' "${ROWS[@]}"
    [ "$FAILED" = 0 ] && echo "all steps passed" || echo "SOME STEPS FAILED (logs in $OUT)"
} | tee "$SUMMARY_FILE"
exit "$FAILED"
