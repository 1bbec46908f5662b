#!/usr/bin/env bash
# Gathers what an offline CUDA machine lacks for ci/gpu.sh into one folder (default
# .carry/deps, git-ignored) on a machine that has Debian's packages:
#   googletest/   GoogleTest sources (libgtest-dev ships them); ci/gpu.sh builds them there
#   benchmark/    Google Benchmark headers, shared library and CMake package (libbenchmark-dev)
#   wheels/       wheels the tests and the benchmark report need beyond the machine's own:
#                 expecttest, and matplotlib with its dependencies (binary wheels for the
#                 CPython versions in FAKEQUANT_WHEEL_PYTHONS, default this machine's, x86-64;
#                 numpy left out, torch's own is used)
# Copy or mount the folder next to the checkout on the CUDA machine and point
# FAKEQUANT_DEPS at it (docs/gpu.md).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.carry/deps}
bash ci/setup.sh >/dev/null

lib="$DEST/benchmark/lib/x86_64-linux-gnu"
rm -rf "$DEST" && mkdir -p "$DEST/benchmark/include" "$lib/cmake" "$DEST/wheels"
cp -r /usr/src/googletest "$DEST/googletest"
cp -r /usr/include/benchmark "$DEST/benchmark/include/"
# Same layout as under /usr, so the relocatable CMake package finds its files.
cp -a /usr/lib/x86_64-linux-gnu/libbenchmark.so* /usr/lib/x86_64-linux-gnu/libbenchmark_main.a "$lib/"
cp -r /usr/lib/x86_64-linux-gnu/cmake/benchmark "$lib/cmake/"
python3 -m pip download -q --no-deps --only-binary=:all: -d "$DEST/wheels" expecttest
# matplotlib's binary wheels (x86-64) for the CPython versions in FAKEQUANT_WHEEL_PYTHONS
# (default: this machine's; e.g. FAKEQUANT_WHEEL_PYTHONS="3.11 3.12"): the target's version
# must be among them. About 24 MB a version.
for v in ${FAKEQUANT_WHEEL_PYTHONS:-$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}; do
  python3 -m pip download -q --only-binary=:all: --implementation cp --python-version "$v" \
    --abi "cp${v/./}" --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_28_x86_64 -d "$DEST/wheels" matplotlib
done
rm -f "$DEST"/wheels/numpy-*.whl
du -sh "$DEST"
