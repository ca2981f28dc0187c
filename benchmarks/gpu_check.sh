#!/usr/bin/env bash
# The one device script (issue 3): build, test, memcheck, time. Run from the repository root on the
# GPU machine:  bash benchmarks/gpu_check.sh   (results under $OUT, else ./gpu_results)
# Device-time budget: about 10 minutes on an H100 (build ~3, tests ~2, memcheck ~2, timing ~3).
set -uo pipefail
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
status=0
step() { echo "== $1 ($(date +%T))"; }

step "card"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/card.txt"
$PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" | tee -a "$OUT/card.txt"

step "build (CUDA kernels for sm_90)"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} HBI_OPS_CUDA=1 MAX_JOBS=${MAX_JOBS:-16}
if ! $PY -m pip install --no-build-isolation --no-deps . > "$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
(cd /tmp && $PY -c "import hbi_ops; print('backends', hbi_ops.backends())") | tee -a "$OUT/card.txt"

step "tests (CPU, triton and the GPU tests)"
# --maxfail, not -x: one device run should show every failing kernel, not the first
$PY -m pytest tests/ops tests/gpu tests/test_dispatch.py -q -rf --maxfail=25 --timeout=600 -p no:cacheprovider > "$OUT/tests.log" 2>&1 || status=1
grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests.log" | tail -30

step "compute-sanitizer memcheck on the GPU tests (small cases)"
if command -v compute-sanitizer > /dev/null; then
  timeout 300 compute-sanitizer --tool memcheck --error-exitcode 9 $PY -m pytest tests/gpu -q -x \
    -k "not gradcheck and not spec_size and not out_of_range" -p no:cacheprovider > "$OUT/memcheck.log" 2>&1
  echo "memcheck exit code $? (0 clean, 9 errors found, 124 timed out)" | tee -a "$OUT/memcheck.log"
  grep -E "ERROR SUMMARY|passed|failed" "$OUT/memcheck.log" | tail -3
fi

step "timing"
$PY benchmarks/gpu_timing.py --out "$OUT/gpu_results.md" --repeats 50 > "$OUT/timing.log" 2>&1 || status=1
tail -40 "$OUT/timing.log"
exit $status
