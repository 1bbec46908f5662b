#!/usr/bin/env bash
# Gathers what an offline CUDA machine lacks for ci/gpu.sh into one folder (default
# .carry/deps, git-ignored) on a machine that has nvcc and Debian's packages:
#   bin/          the CUDA GoogleTest binary, built here (static CUDA runtime, static
#                 libstdc++ and GoogleTest: it runs on any x86-64 Linux with a CUDA 13 driver),
#                 and sources.sha256, the hash of the sources it was built from (ci/gpu.sh
#                 refuses a binary built from other sources)
#   benchmark/    Google Benchmark headers, shared library and CMake package (libbenchmark-dev)
#   wheels/       wheels the tests and the benchmark report need beyond the machine's own:
#                 expecttest, and matplotlib with its dependencies (binary wheels for the
#                 CPython versions in FAKEQUANT_WHEEL_PYTHONS, default this machine's, x86-64;
#                 numpy left out, torch's own is used)
# Copy or mount the folder next to the checkout on the CUDA machine and point
# FAKEQUANT_DEPS at it (docs/gpu.md). FAKEQUANT_CUDA_ARCHITECTURES (default "80;90") sets the
# architectures of the test binary.
#   bash ci/pack_gpu_deps.sh [DEST]
#   bash ci/pack_gpu_deps.sh --sources-hash     prints the hash of the test binary's sources
set -euo pipefail
cd "$(dirname "$0")/.."

# The sources the CUDA GoogleTest binary is built from (file names and contents).
sources_hash() {
  find CMakeLists.txt include kernels tests/CMakeLists.txt tests/cpp -type f | LC_ALL=C sort |
    while read -r f; do echo "$f"; cat "$f"; done | sha256sum | cut -d' ' -f1
}
if [ "${1:-}" = "--sources-hash" ]; then
  sources_hash
  exit 0
fi

DEST=${1:-.carry/deps}
bash ci/setup.sh >/dev/null

lib="$DEST/benchmark/lib/x86_64-linux-gnu"
rm -rf "$DEST" && mkdir -p "$DEST/benchmark/include" "$lib/cmake" "$DEST/wheels" "$DEST/bin"

prebuilt=build/gpu-prebuilt
cmake -S . -B "$prebuilt" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFAKEQUANT_CUDA=ON -DFAKEQUANT_BUILD_TORCH=OFF \
  -DFAKEQUANT_BUILD_BENCH=OFF -DFAKEQUANT_CUDA_EMULATION=OFF -DFAKEQUANT_CUDA_STATIC_RUNTIME=ON \
  -DFAKEQUANT_CUDA_ARCHITECTURES="${FAKEQUANT_CUDA_ARCHITECTURES:-80;90}" >/dev/null
cmake --build "$prebuilt" --target fakequant_cuda_tests -j "${FAKEQUANT_JOBS:-$(nproc)}"
cp "$prebuilt/tests/fakequant_cuda_tests" "$DEST/bin/"
sources_hash > "$DEST/bin/sources.sha256"
if ldd "$DEST/bin/fakequant_cuda_tests" | grep -qE "libcudart|libstdc\+\+|libgtest"; then
  echo "ci/pack_gpu_deps.sh: the test binary still links a shared CUDA runtime, libstdc++ or GoogleTest" >&2
  exit 1
fi

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
