#!/usr/bin/env bash
# The sanitizer step (docs/sanitizers.md):
#   1. the CPU kernels and their GoogleTests (fakequant_cpp_tests) built with AddressSanitizer +
#      UBSan (float-cast-overflow included, every finding fatal) in a build folder of their own,
#      and run;
#   2. the fuzz target over quant_math.h (tests/fuzz): one pass over the checked-in corpus, then
#      a libFuzzer run of FAKEQUANT_FUZZ_SECONDS (60) from it. Needs Clang with libFuzzer
#      (Debian: clang-14 libclang-rt-14-dev); without it the target is built with GCC and
#      replays the corpus once, and the script says so;
#   3. with --torch: the op library built with the same sanitizers, and pytest run against it
#      (the sanitizer runtimes preloaded into Python).
# The emulated CUDA tests already run under ASan + UBSan in ci/test.sh (label cuda_emulation).
#
#   bash ci/sanitize.sh [--torch] [--fuzz-seconds N] [--no-fuzz] [-- PYTEST_ARGS...]
#
# Environment: FAKEQUANT_SANITIZE_BUILD_DIR (build/sanitize), FAKEQUANT_SANITIZE_CXX (g++: the
# compiler of the regular build and of torch, whose OpenMP runtime the op library shares),
# FAKEQUANT_FUZZ_CXX (the first clang++ found; "none": the replay build, as without Clang),
# FAKEQUANT_FUZZ_REQUIRED=1 (a missing libFuzzer is an error), FAKEQUANT_JOBS, PYTHON.
# Exits non-zero on any finding or failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

TORCH=0
FUZZ=1
FUZZ_SECONDS=${FAKEQUANT_FUZZ_SECONDS:-60}
PYTEST_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --torch) TORCH=1 ;;
    --no-fuzz) FUZZ=0 ;;
    --fuzz-seconds)
      [ $# -ge 2 ] || { echo "ci/sanitize.sh: --fuzz-seconds needs a number" >&2; exit 2; }
      FUZZ_SECONDS=$2
      shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; PYTEST_ARGS=("$@"); break ;;
    *) echo "ci/sanitize.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
case "$FUZZ_SECONDS" in
  '' | *[!0-9]*)
    echo "ci/sanitize.sh: --fuzz-seconds must be a whole number of seconds, got '$FUZZ_SECONDS'" >&2
    exit 2 ;;
esac

PYTHON=${PYTHON:-python3}
BUILD=${FAKEQUANT_SANITIZE_BUILD_DIR:-build/sanitize}
JOBS=${FAKEQUANT_JOBS:-$(nproc)}
SAN_CXX=${FAKEQUANT_SANITIZE_CXX:-g++}
SECONDS=0

# Every finding stops the program with a stack trace. detect_leaks=0 only where torch is
# loaded (below): Python and torch keep allocations alive at exit by design.
ASAN_DEFAULTS=abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1
export ASAN_OPTIONS=${ASAN_OPTIONS:-$ASAN_DEFAULTS}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
SAN_FLAGS="-fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=all -fno-omit-frame-pointer"
SAN_LINK="-fsanitize=address,undefined"

# --------------------------------------------------------------------------------------------
echo "== sanitize: configure ($BUILD, $SAN_CXX, torch $([ $TORCH = 1 ] && echo on || echo off))"
# RelWithDebInfo with -O1: fast enough, line numbers in every report, assertions on (no NDEBUG).
cmake_args=(
  -S . -B "$BUILD" -G Ninja
  -DCMAKE_CXX_COMPILER="$SAN_CXX"
  -DCMAKE_BUILD_TYPE=RelWithDebInfo
  "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g"
  "-DCMAKE_CXX_FLAGS=$SAN_FLAGS"
  "-DCMAKE_EXE_LINKER_FLAGS=$SAN_LINK"
  "-DCMAKE_SHARED_LINKER_FLAGS=$SAN_LINK"
  -DFAKEQUANT_CUDA=OFF
  -DFAKEQUANT_CUDA_EMULATION=OFF
  -DFAKEQUANT_BUILD_TESTS=ON
  -DFAKEQUANT_BUILD_BENCH=OFF
)
if [ "$TORCH" = 1 ]; then
  cmake_args+=(-DFAKEQUANT_BUILD_TORCH=ON -DFAKEQUANT_PYTHON="$(command -v "$PYTHON")")
else
  cmake_args+=(-DFAKEQUANT_BUILD_TORCH=OFF)
fi
mkdir -p "$BUILD"
BUILD_ABS=$(cd "$BUILD" && pwd)
cmake "${cmake_args[@]}" > "$BUILD/configure.log" 2>&1 || { cat "$BUILD/configure.log"; exit 1; }

targets=(fakequant_cpp_tests)
[ "$TORCH" = 1 ] && targets+=(fakequant_ops)
echo "== sanitize: build ${targets[*]}"
cmake --build "$BUILD" -j "$JOBS" --target "${targets[@]}"

echo "== sanitize: GoogleTests of the CPU kernels under ASan + UBSan"
"$BUILD/tests/fakequant_cpp_tests" --gtest_brief=1
echo "sanitize: GoogleTests passed (${SECONDS}s so far)"

# --------------------------------------------------------------------------------------------
if [ "$FUZZ" = 1 ]; then
  FUZZ_CXX=${FAKEQUANT_FUZZ_CXX:-}
  if [ -z "$FUZZ_CXX" ]; then
    for c in clang++ clang++-19 clang++-18 clang++-17 clang++-16 clang++-15 clang++-14; do
      if command -v "$c" > /dev/null; then FUZZ_CXX=$c; break; fi
    done
  elif [ "$FUZZ_CXX" = none ]; then
    FUZZ_CXX=""  # the replay build, as on a machine without Clang
  fi
  FUZZ_BUILD="$BUILD/fuzz"
  engine=replay
  if [ -n "$FUZZ_CXX" ]; then
    echo "== fuzz: configure + build the libFuzzer target ($FUZZ_CXX)"
    mkdir -p "$FUZZ_BUILD"
    cmake -S tests/fuzz -B "$FUZZ_BUILD" -G Ninja -DCMAKE_CXX_COMPILER="$FUZZ_CXX" > "$FUZZ_BUILD/configure.log" 2>&1 ||
      { cat "$FUZZ_BUILD/configure.log"; exit 1; }
    engine=$(cat "$FUZZ_BUILD/engine.txt")
    [ "$engine" = libfuzzer ] || grep -A3 "CMake Warning" "$FUZZ_BUILD/configure.log" >&2 || true
  fi
  if [ "$engine" != libfuzzer ]; then
    msg="no Clang with libFuzzer (Debian: apt-get install clang libclang-rt-dev; or set FAKEQUANT_FUZZ_CXX)"
    if [ "${FAKEQUANT_FUZZ_REQUIRED:-0}" = 1 ]; then
      echo "ci/sanitize.sh: $msg, and FAKEQUANT_FUZZ_REQUIRED=1" >&2
      exit 1
    fi
    echo "== fuzz: $msg: the fuzz target is built with $SAN_CXX and replays the corpus once, NO fuzzing"
    FUZZ_BUILD="$BUILD/fuzz-replay"
    mkdir -p "$FUZZ_BUILD"
    cmake -S tests/fuzz -B "$FUZZ_BUILD" -G Ninja -DCMAKE_CXX_COMPILER="$SAN_CXX" -DFAKEQUANT_FUZZ_ENGINE=replay \
      > "$FUZZ_BUILD/configure.log" 2>&1 || { cat "$FUZZ_BUILD/configure.log"; exit 1; }
  fi
  cmake --build "$FUZZ_BUILD" -j "$JOBS"
  FUZZER="$FUZZ_BUILD/fakequant_fuzz_quant_math"

  echo "== fuzz: one pass over the checked-in corpus (tests/fuzz/corpus)"
  "$FUZZER" -runs=0 tests/fuzz/corpus

  if [ "$engine" = libfuzzer ] && [ "$FUZZ_SECONDS" -gt 0 ]; then
    echo "== fuzz: ${FUZZ_SECONDS}s of libFuzzer from the corpus"
    # New inputs go to a scratch copy of the corpus (kept between local runs), never into the
    # repository; a failing input is written to $FUZZ_BUILD/artifacts/.
    mkdir -p "$FUZZ_BUILD/corpus" "$FUZZ_BUILD/artifacts"
    cp -n tests/fuzz/corpus/* "$FUZZ_BUILD/corpus/" 2> /dev/null || true
    fuzz_rc=0
    "$FUZZER" "$FUZZ_BUILD/corpus" -max_total_time="$FUZZ_SECONDS" -max_len=512 -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="$FUZZ_BUILD/artifacts/" -print_final_stats=1 > "$FUZZ_BUILD/fuzz.log" 2>&1 || fuzz_rc=$?
    if [ "$fuzz_rc" -ne 0 ]; then
      tail -n 60 "$FUZZ_BUILD/fuzz.log"
      echo "ci/sanitize.sh: the fuzzer found a failing input (above; saved under $FUZZ_BUILD/artifacts/)." >&2
      echo "Reproduce: $FUZZER $FUZZ_BUILD/artifacts/<file>   (docs/sanitizers.md)" >&2
      exit 1
    fi
    grep -E "^stat::number_of_executed_units|^Done " "$FUZZ_BUILD/fuzz.log" || true
  fi
  echo "fuzz: passed (${SECONDS}s so far)"
fi

# --------------------------------------------------------------------------------------------
if [ "$TORCH" = 1 ]; then
  # The op library's sanitizer runtimes must come first in the process: Python is not
  # instrumented, so they are preloaded. detect_leaks=0: Python and torch keep memory alive at
  # exit. The other pytest processes (torch.compile's compiler calls, spawned workers) inherit
  # the preload; they are not instrumented and run as usual.
  runtimes=""
  for lib in libasan.so libubsan.so; do
    path=$("$SAN_CXX" -print-file-name="$lib")
    [ -f "$path" ] || { echo "ci/sanitize.sh: $SAN_CXX has no $lib" >&2; exit 1; }
    runtimes="$runtimes${runtimes:+ }$(readlink -f "$path")"
  done
  echo "== pytest against the sanitized op library (LD_PRELOAD=$runtimes)"
  cd tests/python
  LD_PRELOAD="$runtimes" \
    ASAN_OPTIONS="detect_leaks=0:abort_on_error=1" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
    PYTHONPATH="$ROOT/torch_ext${PYTHONPATH:+:$PYTHONPATH}" \
    FAKEQUANT_LIBRARY="$BUILD_ABS/torch_ext/libfakequant_ops.so" \
    "$PYTHON" -m pytest -q -p no:cacheprovider "${PYTEST_ARGS[@]}"
  cd "$ROOT"
fi

echo "sanitize: all passed in ${SECONDS}s"
