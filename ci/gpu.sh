#!/usr/bin/env bash
# The whole GPU check on an offline CUDA machine, in one call: build the CUDA path, run
# every test on the GPU (ctest + pytest), run compute-sanitizer (memcheck, racecheck) over
# the CUDA tests, and run the benchmarks. Logs, JSON and the report go to $OUT when set
# (else build/gpu/out). Assumes the machine has nvcc, CMake, ninja and a CUDA torch with
# pytest and scikit-build-core; what it lacks comes from $FAKEQUANT_DEPS, made by
# ci/pack_gpu_deps.sh (docs/gpu.md).
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
BUILD=${FAKEQUANT_BUILD_DIR:-build/gpu}
DEPS=$(realpath -m "${FAKEQUANT_DEPS:-.carry/deps}")
ARCHS=${FAKEQUANT_CUDA_ARCHITECTURES:-90}
OUT=${OUT:-$PWD/$BUILD/out}
mkdir -p "$OUT" "$BUILD"
log="$OUT/gpu.log"
: > "$log"
status=0
step() { echo "== $*" | tee -a "$log"; }
run() {  # run a command, log it, remember a failure, keep going
  "$@" >> "$log" 2>&1
  local rc=$?
  if [ $rc -ne 0 ]; then echo "FAILED ($rc): $*" | tee -a "$log"; status=1; fi
  return $rc
}

step "environment"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nvcc --version | tail -1
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
  cmake --version | head -1; date -u; git rev-parse --short=12 HEAD; } 2>&1 | tee -a "$log"

step "dependencies from $DEPS"
prefixes=""
if [ -d "$DEPS/googletest" ]; then
  run cmake -S "$DEPS/googletest" -B "$BUILD/deps/googletest" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DBUILD_GMOCK=OFF -DCMAKE_INSTALL_PREFIX="$PWD/$BUILD/deps/prefix" &&
    run cmake --build "$BUILD/deps/googletest" && run cmake --install "$BUILD/deps/googletest"
  prefixes="$PWD/$BUILD/deps/prefix"
fi
[ -d "$DEPS/benchmark" ] && prefixes="$prefixes;$DEPS/benchmark"
if [ -d "$DEPS/wheels" ] && ls "$DEPS"/wheels/*.whl >/dev/null 2>&1; then
  # The pure-Python wheels and the binary ones built for this Python.
  pyver=$("$PYTHON" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  mapfile -t wheels < <(ls "$DEPS"/wheels/*.whl | grep -E -- "-(py3|py2\.py3)-none-any\.whl$|-$pyver-")
  [ ${#wheels[@]} -gt 0 ] && run "$PYTHON" -m pip install -q --no-index --no-deps --target "$PWD/$BUILD/deps/site" "${wheels[@]}"
  export PYTHONPATH="$PWD/$BUILD/deps/site${PYTHONPATH:+:$PYTHONPATH}"
fi

step "configure + build (CUDA architectures $ARCHS)"
run cmake -S . -B "$BUILD/cmake" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFAKEQUANT_CUDA=ON \
    -DFAKEQUANT_CUDA_ARCHITECTURES="$ARCHS" -DFAKEQUANT_PYTHON="$(command -v "$PYTHON")" \
    -DCMAKE_PREFIX_PATH="$prefixes"
run cmake --build "$BUILD/cmake" -j "$(nproc)"
grep -q "FAKEQUANT_TORCH_CUDA:INTERNAL=ON\|CUDA bindings ON" "$log" || echo "note: torch CUDA bindings not reported ON" | tee -a "$log"

step "ctest (GoogleTest on the GPU)"
(cd "$BUILD/cmake" && ctest --output-on-failure -j 4) > "$OUT/ctest.log" 2>&1 || { echo "FAILED: ctest" | tee -a "$log"; status=1; }
grep -E "tests passed|tests failed" "$OUT/ctest.log" | tee -a "$log"

step "pip install + pytest (CUDA cases run)"
run "$PYTHON" -m pip install -q --no-build-isolation --no-deps --no-index \
    --config-settings=cmake.define.FAKEQUANT_CUDA_ARCHITECTURES="$ARCHS" .
(cd tests/python && "$PYTHON" -m pytest -q -rs -p no:cacheprovider) > "$OUT/pytest.log" 2>&1 ||
  { echo "FAILED: pytest" | tee -a "$log"; status=1; }
tail -n 3 "$OUT/pytest.log" | tee -a "$log"

step "compute-sanitizer"
san="$OUT/sanitizer.log"
: > "$san"
for tool in memcheck racecheck; do
  echo "-- $tool" >> "$san"
  compute-sanitizer --tool "$tool" --error-exitcode 1 "$BUILD/cmake/tests/fakequant_cuda_tests" \
      --gtest_brief=1 >> "$san" 2>&1 || { echo "FAILED: compute-sanitizer $tool" | tee -a "$log"; status=1; }
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$san" | tail -n 1 | tee -a "$log"
done

step "benchmarks"
FAKEQUANT_SKIP_SETUP=1 FAKEQUANT_BUILD_DIR="$BUILD/cmake" OUT="$OUT" bash ci/bench.sh ${FAKEQUANT_BENCH_ARGS:-} \
    > "$OUT/bench.log" 2>&1 || { echo "FAILED: benchmarks" | tee -a "$log"; status=1; }
tail -n 5 "$OUT/bench.log" | tee -a "$log"

step "done: status $status (logs in $OUT)"
exit $status
