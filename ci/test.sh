#!/usr/bin/env bash
# The test command: setup if needed, build (CMake, with tests and benchmarks), install to a
# prefix, ctest (GoogleTest, the find_package consumer, the benchmark smoke run, the CUDA
# resource gate, then the CUDA kernels executed on the CPU in three orders), the sanitizer
# build of the CPU kernels' GoogleTests and the fuzz smoke run (ci/sanitize.sh), then
# `pip install --no-build-isolation .` and pytest. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
BUILD=${FAKEQUANT_BUILD_DIR:-build/ci}
JOBS=${FAKEQUANT_JOBS:-$(nproc)}

bash ci/setup.sh

echo "== configure + build ($BUILD)"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DFAKEQUANT_PYTHON="$(command -v "$PYTHON")" \
  -DFAKEQUANT_TEST_INSTALL_PREFIX="$PWD/$BUILD/prefix"
cmake --build "$BUILD" -j "$JOBS"
cmake --install "$BUILD" --prefix "$BUILD/prefix" >/dev/null

echo "== ctest"
ctest --test-dir "$BUILD" --output-on-failure -j "$JOBS" -LE cuda_emulation

# The CUDA kernels executed on the CPU (tests/emu, docs/cuda-emulation.md): the CUDA
# GoogleTests in three thread/block orders under AddressSanitizer + UBSan, and the harness'
# own tests. They must run wherever the CUDA headers are (CI: always).
echo "== ctest: CUDA kernels under emulation (forward, reversed, shuffled orders)"
emulated=$(ctest --test-dir "$BUILD" -N -L cuda_emulation | sed -n 's/^Total Tests: //p')
if [ "${emulated:-0}" -eq 0 ]; then
  echo "no emulated CUDA tests were configured (FAKEQUANT_CUDA_EMULATION needs the CUDA headers)" >&2
  exit 1
fi
ctest --test-dir "$BUILD" --output-on-failure -j "$JOBS" -L cuda_emulation
echo "emulated CUDA tests: $emulated run and passed"

# The CPU kernels and their GoogleTests under AddressSanitizer + UBSan, and the fuzz target over
# quant_math.h: its corpus, then a 60-second libFuzzer run (docs/sanitizers.md). ci/setup.sh
# installs Clang's libFuzzer, so here a missing one is an error, not a skipped step.
echo "== sanitizers (ASan + UBSan) and the fuzz smoke run"
FAKEQUANT_FUZZ_REQUIRED=1 FAKEQUANT_JOBS="$JOBS" bash ci/sanitize.sh

echo "== pip install --no-build-isolation ."
"$PYTHON" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps .

echo "== benchmarks, quick mode (a check that they run and render; not a report)"
FAKEQUANT_SKIP_SETUP=1 FAKEQUANT_BUILD_DIR="$BUILD" bash ci/bench.sh --quick > "$BUILD/bench-quick.log" 2>&1 ||
  { cat "$BUILD/bench-quick.log"; exit 1; }
tail -n 1 "$BUILD/bench-quick.log"

echo "== pytest"
# Run from the tests folder so that `import fakequant` resolves to the installed package.
cd tests/python
"$PYTHON" -m pytest -q -rs -p no:cacheprovider
