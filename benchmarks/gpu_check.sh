#!/usr/bin/env bash
# The device check, in two commands of a few minutes each (run from the repository root on the GPU machine):
#
#   bash benchmarks/gpu_check.sh tests      # build for sm_90, then every gpu-marked test in parallel (pytest-xdist)
#   bash benchmarks/gpu_check.sh sanitize   # build if needed, compute-sanitizer memcheck (caching off),
#                                           # racecheck and synccheck on every kernel, then the timing table
#
# Each writes its logs and a results table under $OUT (else ./gpu_results), keeps going past a failing
# test or tool, and prints a summary last; the exit status is 0 only if every step passed.
# DRY_RUN=1 tries the same steps on a machine without a GPU: no build (the installed hbi_ops), GPU tests
# skipped, no sanitizers, the timing script on the CPU with small sizes.
set -uo pipefail
STAGE=${1:-}
OUT=${OUT:-gpu_results}
PY=${PYTHON:-python3}
DRY_RUN=${DRY_RUN:-0}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)  # absolute: the tests run from another directory
SUMMARY="$OUT/summary-$STAGE.md"
: > "$SUMMARY"
status=0
step() { echo "== $1 ($(date +%T))"; }
record() {  # record NAME RC DETAIL
  local verdict=passed
  [ "$2" -eq 0 ] || { verdict="FAILED (exit $2)"; status=1; }
  echo "| $1 | $verdict | $3 |" >> "$SUMMARY"
}

case "$STAGE" in
  tests|sanitize) ;;
  *) echo "usage: bash benchmarks/gpu_check.sh tests|sanitize" >&2; exit 2 ;;
esac

card() {
  step "card"
  if [ "$DRY_RUN" = 1 ]; then
    echo "dry run: no GPU" | tee "$OUT/card.txt"
  else
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/card.txt"
  fi
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" \
    | tee -a "$OUT/card.txt"
}

build() {  # the CUDA kernels for sm_90; CUDA_HOME from the nvcc on PATH
  if [ "$DRY_RUN" = 1 ]; then
    record "build" 0 "dry run: the installed hbi_ops"
    return
  fi
  if [ "${1:-}" = if-needed ] && (cd /tmp && $PY -c "import hbi_ops, sys; sys.exit('cuda' not in hbi_ops.backends())") 2>/dev/null; then
    record "build" 0 "already installed with the cuda backend"
    return
  fi
  step "build (CUDA kernels for sm_90)"
  local nvcc_path
  nvcc_path=$(command -v nvcc) && export CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(readlink -f "$nvcc_path")")")}
  local start=$SECONDS
  TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} HBI_OPS_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} \
    $PY -m pip install --no-build-isolation --no-deps . > "$OUT/build.log" 2>&1
  local rc=$?
  record "build" $rc "$((SECONDS - start)) s, CUDA_HOME=${CUDA_HOME:-?}, log build.log"
  if [ $rc -ne 0 ]; then tail -40 "$OUT/build.log"; fi
  (cd /tmp && $PY -c "import hbi_ops; print('backends', hbi_ops.backends())") | tee -a "$OUT/card.txt"
  return $rc
}

run_tests() {
  step "gpu-marked tests: tests/gpu and the cuda rows of tests/ops (pytest-xdist)"
  local start=$SECONDS parallel=(-n "${WORKERS:-8}")
  $PY -c "import xdist" 2>/dev/null || parallel=()
  # From /tmp: the tests import the installed build (tests/conftest.py also guards a checkout run).
  local root=$PWD
  (cd /tmp && $PY -m pytest "$root/tests" -m gpu -q -rfE -p no:cacheprovider \
     "${parallel[@]}" --junitxml="$OUT/tests.xml") > "$OUT/tests.log" 2>&1
  local rc=$?
  record "gpu tests" $rc "$(tail -1 "$OUT/tests.log"), $((SECONDS - start)) s, log tests.log"
  grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -40
}

sanitize() {  # sanitize TOOL [extra compute-sanitizer options]
  local tool=$1
  shift
  step "compute-sanitizer --tool $tool"
  if [ "$DRY_RUN" = 1 ]; then
    $PY benchmarks/gpu_sanitize.py --device cpu --backends cpu > "$OUT/$tool.log" 2>&1
    record "$tool" $? "dry run: the kernels' program on the CPU, no sanitizer"
    return
  fi
  local start=$SECONDS
  # Caching off: an out-of-bounds access inside a block the caching allocator holds would go unseen.
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 420 compute-sanitizer --tool "$tool" --error-exitcode 9 "$@" \
    $PY benchmarks/gpu_sanitize.py > "$OUT/$tool.log" 2>&1
  local rc=$?
  record "$tool" $rc "$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/$tool.log" | tail -1), $((SECONDS - start)) s (9: errors, 124: timed out)"
}

timing() {
  step "timing"
  local args=(--out "$OUT/gpu_results.md" --repeats 50)
  [ "$DRY_RUN" = 1 ] && args=(--out "$OUT/gpu_results.md" --repeats 3 --quick --device cpu)
  $PY benchmarks/gpu_timing.py "${args[@]}" > "$OUT/timing.log" 2>&1
  local rc=$?
  record "timing" $rc "table gpu_results.md, log timing.log"
}

card
if [ "$STAGE" = tests ]; then
  build && run_tests
else
  build if-needed && {
    sanitize memcheck --leak-check no
    sanitize racecheck
    sanitize synccheck
    timing
  }
fi
echo "== summary ($STAGE)"
{ echo "| step | result | detail |"; echo "|---|---|---|"; cat "$SUMMARY"; } | tee "$SUMMARY.tmp" && mv "$SUMMARY.tmp" "$SUMMARY"
[ -f "$OUT/gpu_results.md" ] && cat "$OUT/gpu_results.md"
exit $status
