#!/usr/bin/env bash
# The GPU check on an offline CUDA machine, in one call that fits a short lease of the
# machine (docs/gpu.md): every step has a time limit, the whole run a budget, and each step's
# log lands in $OUT (default build/gpu/out) as soon as the step ends.
#
#   1. (background) build the op library and the benchmark for this machine's torch
#   2. the CUDA GoogleTests on the GPU: the test binary prebuilt by ci/pack_gpu_deps.sh
#      (static CUDA runtime and libstdc++, so nothing is compiled for it here)
#   3. compute-sanitizer memcheck and racecheck over that binary
#   4. pytest's CUDA cases against the freshly built op library
#   5. the quick benchmarks (ci/bench.sh --quick: raw JSON, report)
#
# The machine needs nvcc, CMake, ninja, a CUDA build of torch with pytest, and
# compute-sanitizer; what it lacks comes from $FAKEQUANT_DEPS (default .carry/deps), made by
# ci/pack_gpu_deps.sh. Environment: FAKEQUANT_CUDA_ARCHITECTURES (default 90),
# FAKEQUANT_GPU_BUDGET_S (whole run, default 600), FAKEQUANT_BENCH_ARGS (default --quick),
# FAKEQUANT_GPU_TEST_FILTER (a --gtest_filter for steps 2-3, default all).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PYTHON=${PYTHON:-python3}
BUILD=${FAKEQUANT_BUILD_DIR:-build/gpu}
DEPS=$(realpath -m "${FAKEQUANT_DEPS:-.carry/deps}")
ARCHS=${FAKEQUANT_CUDA_ARCHITECTURES:-90}
BUDGET=${FAKEQUANT_GPU_BUDGET_S:-600}
OUT=${OUT:-$ROOT/$BUILD/out}
mkdir -p "$OUT" "$BUILD"
log="$OUT/gpu.log"
: > "$log"
status=0
start=$(date +%s)

say() { echo "$*" | tee -a "$log"; }
step() { say "== [$(( $(date +%s) - start ))s] $*"; }
# Seconds a step may take: its own limit, or what is left of the budget if that is less.
limit() {
  local left=$(( BUDGET - ($(date +%s) - start) ))
  [ "$left" -lt "$1" ] && echo $(( left > 5 ? left : 5 )) || echo "$1"
}
# run_step NAME SECONDS LOGFILE CMD...: run with a time limit, log to LOGFILE, record failure.
run_step() {
  local name=$1 secs; secs=$(limit "$2"); local out=$3; shift 3
  step "$name (limit ${secs}s, log $(basename "$out"))"
  timeout --signal=INT --kill-after=20 "$secs" "$@" > "$out" 2>&1
  local rc=$?
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    say "TIMED OUT after ${secs}s: $name"; status=1
  elif [ $rc -ne 0 ]; then
    say "FAILED ($rc): $name"; status=1
  fi
  return $rc
}

step "environment"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nvcc --version | tail -1
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
  cmake --version | head -1; date -u; git rev-parse --short=12 HEAD 2>/dev/null; } 2>&1 | tee -a "$log"

# What the machine lacks, from the deps folder: Python wheels (expecttest for opcheck,
# matplotlib for the report's plots) and Google Benchmark.
prefixes=""
[ -d "$DEPS/benchmark" ] && prefixes="$DEPS/benchmark"
if [ -d "$DEPS/wheels" ] && ls "$DEPS"/wheels/*.whl >/dev/null 2>&1; then
  pyver=$("$PYTHON" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  mapfile -t wheels < <(ls "$DEPS"/wheels/*.whl | grep -E -- "-(py3|py2\.py3)-none-any\.whl$|-$pyver-")
  [ ${#wheels[@]} -gt 0 ] && "$PYTHON" -m pip install -q --no-index --no-deps --target "$ROOT/$BUILD/deps/site" \
      "${wheels[@]}" >> "$log" 2>&1
  export PYTHONPATH="$ROOT/$BUILD/deps/site${PYTHONPATH:+:$PYTHONPATH}"
fi

# 1. The build runs in the background (CPU) while the GPU runs the GoogleTests.
step "build (background): op library + benchmark, CUDA architectures $ARCHS"
build_log="$OUT/build.log"
(
  cmake -S . -B "$BUILD/cmake" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFAKEQUANT_CUDA=ON \
      -DFAKEQUANT_CUDA_ARCHITECTURES="$ARCHS" -DFAKEQUANT_PYTHON="$(command -v "$PYTHON")" \
      -DFAKEQUANT_BUILD_TESTS=OFF -DFAKEQUANT_CUDA_EMULATION=OFF -DCMAKE_PREFIX_PATH="$prefixes" &&
    cmake --build "$BUILD/cmake" -j "$(nproc)" --target fakequant_ops fakequant_bench
) > "$build_log" 2>&1 &
build_pid=$!

# 2-3. The prebuilt CUDA GoogleTest binary, if it was built from these sources.
tests_bin="$DEPS/bin/fakequant_cuda_tests"
gtest_args=(--gtest_brief=1)
[ -n "${FAKEQUANT_GPU_TEST_FILTER:-}" ] && gtest_args+=(--gtest_filter="$FAKEQUANT_GPU_TEST_FILTER")
if [ ! -x "$tests_bin" ]; then
  say "FAILED: no prebuilt $tests_bin (run ci/pack_gpu_deps.sh on a machine with nvcc and GoogleTest)"; status=1
elif [ "$(cat "$DEPS/bin/sources.sha256" 2>/dev/null)" != "$(bash ci/pack_gpu_deps.sh --sources-hash)" ]; then
  say "FAILED: $tests_bin was built from other sources than this checkout's (rerun ci/pack_gpu_deps.sh)"; status=1
else
  run_step "CUDA GoogleTests on the GPU" 150 "$OUT/gtest.log" \
    "$tests_bin" "${gtest_args[@]}" --gtest_output=xml:"$OUT/gtest.xml"
  tail -n 3 "$OUT/gtest.log" | tee -a "$log"
  for tool in memcheck racecheck; do
    run_step "compute-sanitizer $tool" 180 "$OUT/sanitizer-$tool.log" \
      compute-sanitizer --tool "$tool" --error-exitcode 1 "$tests_bin" "${gtest_args[@]}"
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/sanitizer-$tool.log" | tail -n 1 | tee -a "$log"
  done
fi

# 4. Wait for the build, then pytest's CUDA cases against it.
step "waiting for the build"
build_limit=$(limit 480)
waited=0
while kill -0 "$build_pid" 2>/dev/null && [ "$waited" -lt "$build_limit" ]; do sleep 2; waited=$((waited + 2)); done
if kill -0 "$build_pid" 2>/dev/null; then
  kill "$build_pid" 2>/dev/null; say "TIMED OUT: build (see build.log)"; status=1; built=0
elif wait "$build_pid"; then
  built=1
else
  say "FAILED: build (see build.log)"; tail -n 20 "$build_log" | tee -a "$log"; status=1; built=0
fi

if [ "$built" = 1 ]; then
  lib="$ROOT/$BUILD/cmake/torch_ext/libfakequant_ops.so"
  cd tests/python
  run_step "pytest, CUDA cases" 240 "$OUT/pytest.log" \
    env PYTHONPATH="$ROOT/torch_ext${PYTHONPATH:+:$PYTHONPATH}" FAKEQUANT_LIBRARY="$lib" \
      "$PYTHON" -m pytest -q -rs -p no:cacheprovider -k cuda
  cd "$ROOT"
  tail -n 3 "$OUT/pytest.log" | tee -a "$log"

  # 5. Benchmarks (quick by default), with the same build.
  run_step "benchmarks (${FAKEQUANT_BENCH_ARGS---quick})" 240 "$OUT/bench.log" \
    env FAKEQUANT_SKIP_SETUP=1 FAKEQUANT_BUILD_DIR="$BUILD/cmake" OUT="$OUT" \
      bash ci/bench.sh ${FAKEQUANT_BENCH_ARGS---quick}
  tail -n 3 "$OUT/bench.log" | tee -a "$log"
fi

step "done: status $status (logs in $OUT)"
exit $status
