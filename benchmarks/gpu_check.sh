#!/usr/bin/env bash
# The one command for a machine with an NVIDIA GPU (torch, Python, nvcc and
# compute-sanitizer there; no package registry needed):
#
#   bash benchmarks/gpu_check.sh [OUTDIR]        # OUTDIR defaults to benchmarks/
#
# In at most ~8 minutes: builds the extension in place for the visible GPU's
# architecture only, runs every CUDA test, compute-sanitizer memcheck and
# racecheck over benchmarks/gpu_sanitize.py (every op forward and backward, bad
# switches, boxes far outside the image, empty and large inputs), the CUDA
# benchmarks (benchmarks/gpu_bench.py), and writes OUTDIR/gpu_check.md and
# OUTDIR/gpu_check.json. Each section has a time budget; a failing section is
# recorded and the script goes on to the summary. Exit status: 0 when every
# section passed. Without a GPU it prints one line saying so and exits 0.
#
# PYTHON (default python3) picks the interpreter; GPU_CHECK_SKIP_BUILD=1 uses the
# extension already built in place.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
PY="${PYTHON:-python3}"
OUT="${1:-benchmarks}"

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
  echo "gpu_check: no CUDA GPU visible to $PY (torch.cuda.is_available() is False or torch is missing): nothing to check"
  exit 0
fi

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LOGS="$OUT/gpu_check_logs"
mkdir -p "$LOGS"
STATUS="$LOGS/sections.tsv"
: > "$STATUS"
TOTAL_BUDGET="${GPU_CHECK_BUDGET:-470}"   # seconds for all sections (8 min with the summary)
START=$SECONDS
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

# run NAME BUDGET_SECONDS COMMAND...: runs it under timeout (never past the total
# budget), logs to $LOGS/NAME.log, records "name rc seconds" in $STATUS.
run() {
  local name="$1" budget="$2"
  shift 2
  local left=$(( TOTAL_BUDGET - (SECONDS - START) ))
  if (( left < 10 )); then
    printf '%s\tskipped\t0\n' "$name" >> "$STATUS"
    echo "gpu_check: $name skipped (total time budget spent)"
    return
  fi
  (( budget > left )) && budget=$left
  echo "gpu_check: $name (budget ${budget}s) ..."
  local t0=$SECONDS
  timeout --kill-after=10 "$budget" "$@" > "$LOGS/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( SECONDS - t0 ))" >> "$STATUS"
  if (( rc == 0 )); then
    echo "gpu_check: $name ok ($(( SECONDS - t0 ))s)"
  else
    echo "gpu_check: $name FAILED rc=$rc ($(( SECONDS - t0 ))s; log $LOGS/$name.log):"
    tail -n 15 "$LOGS/$name.log" | sed 's/^/    /'
  fi
}

ARCH="$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')"
DEVICE_NAME="$("$PY" -c 'import torch; print(torch.cuda.get_device_name())')"
echo "gpu_check: $DEVICE_NAME (compute capability $ARCH), $("$PY" -c 'import torch; print("torch", torch.__version__)')"
"$PY" - > "$LOGS/environment.log" 2>&1 <<'PYEOF'
import platform, shutil, subprocess, sys, torch
print("python", sys.version)
print("torch", torch.__version__, "cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name(), torch.cuda.get_device_capability())
for tool in ("nvcc", "compute-sanitizer", "ninja", "nvidia-smi"):
    print(tool, shutil.which(tool))
try:
    import pytest
    print("pytest", pytest.__version__)
except ImportError:
    print("pytest missing")
PYEOF

# ---- 1. build, the visible GPU's architecture only
if [ "${GPU_CHECK_SKIP_BUILD:-0}" = "1" ]; then
  printf 'build\tskipped\t0\n' >> "$STATUS"
else
  run build 240 env TORCH_CUDA_ARCH_LIST="$ARCH" DECONVNET_EXT_CUDA=1 \
      MAX_JOBS="$(nproc)" "$PY" setup.py build_ext --inplace
fi
run build_info 30 "$PY" -c '
import sys, deconvnet_ext as dx
info = dx.build_info(); print(info)
sys.exit(0 if info["with_cuda"] else 1)'

# ---- 2. every CUDA test (test_aggregate_ops.py runs its CUDA cases unmarked)
if "$PY" -c 'import pytest' >/dev/null 2>&1; then
  run cuda_tests 120 "$PY" -m pytest -q -x -p no:cacheprovider \
      tests/test_pool_cuda.py tests/test_aggregate_ops.py tests/test_pool_portable.py
  run cuda_marked_tests 60 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests \
      --ignore=tests/test_pool_cuda.py
else
  printf 'cuda_tests\tno-pytest\t0\n' >> "$STATUS"
  echo "gpu_check: cuda_tests FAILED: pytest is not installed for $PY"
fi

# ---- 3. compute-sanitizer (no caching allocator: each tensor its own allocation,
# so an access past a tensor's end is outside any allocation)
SANITIZER="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)"
if [ -n "$SANITIZER" ]; then
  run memcheck 75 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool memcheck \
      --error-exitcode 1 --print-limit 20 "$PY" benchmarks/gpu_sanitize.py
  run racecheck 75 "$SANITIZER" --tool racecheck --error-exitcode 1 --print-limit 20 \
      "$PY" benchmarks/gpu_sanitize.py --quick
else
  printf 'memcheck\tno-compute-sanitizer\t0\nracecheck\tno-compute-sanitizer\t0\n' >> "$STATUS"
  echo "gpu_check: compute-sanitizer not found: memcheck / racecheck not run"
fi

# ---- 4. CUDA benchmarks
LEFT=$(( TOTAL_BUDGET - (SECONDS - START) ))
run benchmarks 200 "$PY" benchmarks/gpu_bench.py --out "$OUT/gpu_bench.json" \
    --budget $(( (LEFT < 200 ? LEFT : 200) - 45 ))

# ---- 5. summary: markdown + JSON
"$PY" benchmarks/gpu_summary.py "$OUT" "$STATUS" "$DEVICE_NAME" "$(( SECONDS - START ))"
rc=$?
echo "gpu_check: summary in $OUT/gpu_check.md and $OUT/gpu_check.json ($(( SECONDS - START ))s)"
exit $rc
