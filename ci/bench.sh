#!/usr/bin/env bash
# The main command: build and run the microbenchmarks on the device present (the GPU when
# torch sees one, else the CPU), keep the raw Google Benchmark JSON (with device, date,
# commit) under bench/results/<device>/ with the host-overhead JSON of bench/bench_modules.py,
# the ConvBnReLU2d training-step JSON of bench/bench_convbn_step.py and the LLM-format JSON
# of bench/bench_llm_formats.py (against torchao),
# render the Markdown report beside them (tables, %copy and speedup_vs_aten, a derived JSON,
# one GB/s plot per op family under plots/) and refresh README's benchmark section.
#   bash ci/bench.sh            full: sizes 4K .. 256M elements and the layer shapes, 5
#                               repetitions, medians (about 20 minutes on a 2-core CPU)
#   bash ci/bench.sh --quick    two sizes and two shapes, 3 short repetitions (CI runs this;
#                               results go to the build folder, not bench/results)
# Environment: FAKEQUANT_BUILD_DIR (default build/bench), FAKEQUANT_SKIP_SETUP=1 to skip
# ci/setup.sh (an offline machine that has what it needs), OUT (also copy results there).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
BUILD=${FAKEQUANT_BUILD_DIR:-build/bench}
quick=0
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    *) echo "ci/bench.sh: unknown argument '$arg' (accepted: --quick)" >&2; exit 2 ;;
  esac
done

[ "${FAKEQUANT_SKIP_SETUP:-0}" = 1 ] || bash ci/setup.sh

if [ ! -f "$BUILD/build.ninja" ]; then
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFAKEQUANT_BUILD_TESTS=OFF \
    -DFAKEQUANT_PYTHON="$(command -v "$PYTHON")" ${FAKEQUANT_CMAKE_ARGS:-}
fi
cmake --build "$BUILD" --target fakequant_bench -j "${FAKEQUANT_JOBS:-$(nproc)}"
LIB="$(cd "$BUILD" && pwd)/torch_ext/libfakequant_ops.so"   # FAKEQUANT_BUILD_DIR may be relative or absolute

device=$("$PYTHON" bench/bench_env.py device-name)
slug=$(echo "$device" | tr '[:upper:]' '[:lower:]' | sed -E 's/\(r\)|\(tm\)//g; s/[^a-z0-9]+/-/g; s/^-+|-+$//g')
mode=full
[ "$quick" = 1 ] && mode=quick
outdir="bench/results/$slug"
[ "$quick" = 1 ] && outdir="$BUILD/results/$slug"   # quick runs are checks, not reports
mkdir -p "$outdir"
json="$outdir/fake_quant.json"

commit=$("$PYTHON" bench/bench_env.py commit)
date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1 || true)
versions=$("$PYTHON" -c "import torch; print(torch.__version__, torch.version.cuda or 'none')")

bench_args=(--benchmark_out="$json" --benchmark_out_format=json
            --benchmark_context=device_name="$device" --benchmark_context=commit="$commit"
            --benchmark_context=date="$date" --benchmark_context=torch_version="${versions% *}"
            --benchmark_context=cuda_version="${versions#* }" --benchmark_context=driver="${driver:-none}"
            --benchmark_context=mode="$mode")
modules_args=(--out "$outdir/modules.json" --context device_name="$device" --context commit="$commit"
              --context date="$date")
if [ "$quick" = 1 ]; then
  export FAKEQUANT_BENCH_QUICK=1
  bench_args+=(--benchmark_repetitions=3 --benchmark_min_time=0.02 --benchmark_report_aggregates_only=true)
  modules_args+=(--quick)
else
  bench_args+=(--benchmark_repetitions=5 --benchmark_min_time=0.2 --benchmark_report_aggregates_only=true)
fi

echo "== fakequant_bench on $device ($mode) -> $json"
"$BUILD/bench/fakequant_bench" "${bench_args[@]}"

echo "== bench/bench_modules.py (per-call host cost, FakeQuantize module steps) -> $outdir/modules.json"
PYTHONPATH="$PWD/torch_ext${PYTHONPATH:+:$PYTHONPATH}" FAKEQUANT_LIBRARY="$LIB" \
  "$PYTHON" bench/bench_modules.py "${modules_args[@]}"

echo "== bench/bench_convbn_step.py (ConvBnReLU2d training step) -> $outdir/convbn_step.json"
step_args=(--out "$outdir/convbn_step.json")
[ "$quick" = 1 ] && step_args+=(--quick)
PYTHONPATH="$PWD/torch_ext${PYTHONPATH:+:$PYTHONPATH}" FAKEQUANT_LIBRARY="$LIB" \
  "$PYTHON" bench/bench_convbn_step.py "${step_args[@]}"

echo "== bench/bench_llm_formats.py (LLM formats against torchao) -> $outdir/llm_formats.json"
llm_args=(--out "$outdir/llm_formats.json" --context device_name="$device" --context commit="$commit"
          --context date="$date")
[ "$quick" = 1 ] && llm_args+=(--quick)
PYTHONPATH="$PWD/torch_ext${PYTHONPATH:+:$PYTHONPATH}" FAKEQUANT_LIBRARY="$LIB" \
  "$PYTHON" bench/bench_llm_formats.py "${llm_args[@]}"

# The raw JSON goes to $OUT before rendering, so that it comes back even where rendering
# cannot run (no matplotlib): render it then on any machine (docs/gpu.md).
[ -n "${OUT:-}" ] && cp "$json" "$outdir/modules.json" "$outdir/convbn_step.json" "$outdir/llm_formats.json" "$OUT/"
"$PYTHON" bench/render_report.py "$json" --out "$outdir/report.md" --modules "$outdir/modules.json" \
  --convbn-step "$outdir/convbn_step.json" --llm "$outdir/llm_formats.json"
if [ "$quick" = 0 ]; then
  "$PYTHON" bench/render_report.py --update-readme README.md bench/results/*/fake_quant.json
fi
if [ -n "${OUT:-}" ]; then
  cp "$outdir/fake_quant.derived.json" "$OUT/" && cp "$outdir/report.md" "$OUT/report-$slug.md" &&
    mkdir -p "$OUT/plots" && cp "$outdir"/plots/*.png "$OUT/plots/"
fi
echo "== report: $outdir/report.md"
