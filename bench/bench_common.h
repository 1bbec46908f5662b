// Shared pieces of the fakequant microbenchmarks: device selection, timing (CUDA events
// with manual time on the GPU, real time on the CPU), input rotation so that small sizes
// do not measure a warm cache, cached random inputs, the size sweep and the layer shapes
// every family uses (so that the copy baseline exists at each size), decimal GB/s counters,
// the frame that times one op, and the registration of each fakequant / ATen pair under the
// names the report pairs them by.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <initializer_list>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#if defined(FAKEQUANT_BENCH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace fakequant_bench {

// The typed dispatcher handle of fakequant op `name` ("fakequant::..."): benchmarks call the ops
// as Python does, through the dispatcher.
template <typename Sig>
c10::TypedOperatorHandle<Sig> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

inline bool use_cuda() {
#if defined(FAKEQUANT_BENCH_CUDA)
  static const bool available = torch::cuda::is_available();
  return available;
#else
  return false;
#endif
}

inline torch::Device bench_device() { return use_cuda() ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU); }

// Bytes the rotating input sets should span: twice the GPU's L2, or 1 GB on the CPU. The
// CPU figure was measured, not taken from the reported cache size: a virtual machine's host
// cache can be larger than the VM is told (docs/perf-notes.md, "Method").
// FAKEQUANT_BENCH_ROTATION_MB overrides it.
inline int64_t rotation_bytes() {
  if (const char* mb = std::getenv("FAKEQUANT_BENCH_ROTATION_MB")) {
    const int64_t v = std::atoll(mb);
    if (v > 0) return v << 20;
  }
#if defined(FAKEQUANT_BENCH_CUDA)
  if (use_cuda()) {
    int l2 = 0;
    if (cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, 0) == cudaSuccess && l2 > 0) return 2LL * l2;
    return 128LL << 20;
  }
#endif
  return 1LL << 30;
}

// How many copies of a working set of `set_bytes` to rotate through so that together they
// span rotation_bytes(): one for sets at least that large (a 256M-element fp32 set is used
// alone, so the memory a benchmark holds stays about twice its working set), at most 32768
// for the smallest (a 4K-element fp32 set, 32 KB with its output, needs 32768 on the CPU and
// about 3200 on an H100 to leave L2).
inline int rotation_sets(int64_t set_bytes) {
  const int64_t want = (rotation_bytes() + set_bytes - 1) / std::max<int64_t>(set_bytes, 1);
  return static_cast<int>(std::clamp<int64_t>(want, 1, 32768));
}

inline bool quick_mode() { return std::getenv("FAKEQUANT_BENCH_QUICK") != nullptr; }

// FAKEQUANT_BENCH_MAX_NUMEL: no size (sweep or layer shape) above it is registered.
inline int64_t max_numel() {
  const char* cap = std::getenv("FAKEQUANT_BENCH_MAX_NUMEL");
  const int64_t v = cap ? std::atoll(cap) : 0;
  return v > 0 ? v : INT64_MAX;
}

// The size sweep of every family: 4K to 256M elements in steps of 4 (full mode), 4K and 1M
// (quick mode; ctest's bench_smoke runs the 4K ones). FAKEQUANT_BENCH_MAX_NUMEL drops larger
// sizes (for a device with less memory, or a shorter run; the report says which sizes ran).
inline std::vector<int64_t> sweep_sizes() {
  std::vector<int64_t> sizes;
  if (quick_mode()) {
    sizes = {int64_t{1} << 12, int64_t{1} << 20};
  } else {
    for (int shift = 12; shift <= 28; shift += 2) sizes.push_back(int64_t{1} << shift);
  }
  sizes.erase(std::remove_if(sizes.begin(), sizes.end(), [](int64_t n) { return n > max_numel(); }), sizes.end());
  return sizes;
}

// Real layer shapes: ResNet-50 conv weights and activations (batch 32, NCHW) and a 4096 x 4096
// Linear weight, plus [64, 64] (4096 elements, the smoke size). Benchmarks take the index as
// their `shape` argument and label the run with the shape; per-channel ops use axis 0 for
// weights and axis 1 (C) for activations.
struct LayerShape {
  std::vector<int64_t> sizes;
  bool activation;
  const char* what;
};

inline const std::vector<LayerShape>& layer_shapes() {
  static const std::vector<LayerShape> shapes = {
      {{64, 64}, false, "weight"},
      {{64, 64, 3, 3}, false, "ResNet-50 conv weight"},
      {{256, 64, 1, 1}, false, "ResNet-50 conv weight"},
      {{512, 512, 3, 3}, false, "ResNet-50 conv weight"},
      {{2048, 512, 1, 1}, false, "ResNet-50 conv weight"},
      {{4096, 4096}, false, "Linear weight"},
      {{32, 64, 56, 56}, true, "ResNet-50 activation"},
      {{32, 256, 56, 56}, true, "ResNet-50 activation"},
      {{32, 2048, 7, 7}, true, "ResNet-50 activation"},
  };
  return shapes;
}

inline int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (const int64_t d : shape) n *= d;
  return n;
}

// "32x64x56x56", plus " axis A" when a per-channel axis is given.
inline std::string shape_label(const std::vector<int64_t>& shape, int64_t axis = -1) {
  std::string s;
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "x" : "") + std::to_string(shape[i]);
  if (axis >= 0) s += " axis " + std::to_string(axis);
  return s;
}

// Layer-shape indices a family runs: all (full mode), [64, 64] and [2048, 512, 1, 1] (quick).
inline std::vector<int64_t> layer_indices(bool weights_only) {
  std::vector<int64_t> idx;
  for (int64_t i = 0; i < static_cast<int64_t>(layer_shapes().size()); ++i) {
    if (weights_only && layer_shapes()[i].activation) continue;
    if (quick_mode() && i != 0 && i != 4) continue;
    if (numel_of(layer_shapes()[i].sizes) > max_numel()) continue;
    idx.push_back(i);
  }
  return idx;
}

// `sets` random 1-D tensors of `n` elements, N(0, scale^2) drawn in fp32 and cast to `dtype`,
// on the bench device: the first drawn, the others rotations of it by random offsets (the
// same values in other places; drawing up to 1 GB of normals per benchmark would take longer
// than many benchmarks). Cached: Google Benchmark calls a benchmark function again for its
// warm-up, its iteration estimate and each repetition, and drawing 256M normals takes seconds
// on the CPU. The cache keeps the tensors of one (n, dtype) at a time; `tag` tells apart
// inputs of the same size (x and grad_output). Benchmarks only read these tensors.
inline std::vector<torch::Tensor> random_sets(int64_t n, torch::ScalarType dtype, int sets, double scale,
                                              int tag = 0) {
  using Key = std::tuple<int, double, int>;
  static std::pair<int64_t, torch::ScalarType> current{-1, torch::kFloat};
  static std::map<Key, std::vector<torch::Tensor>> cache;
  if (current != std::make_pair(n, dtype)) {
    cache.clear();
    current = {n, dtype};
  }
  auto& entry = cache[Key{sets, scale, tag}];
  if (entry.empty()) {
    const auto opts = torch::TensorOptions().device(bench_device());
    entry.push_back(torch::randn({n}, opts).mul_(scale).to(dtype));
    const torch::Tensor shifts = torch::randint(0, std::max<int64_t>(n, 1), {sets}, torch::kLong);
    for (int s = 1; s < sets; ++s) entry.push_back(torch::roll(entry[0], shifts[s].item<int64_t>()));
  }
  return entry;
}

// The input set of a rotation that iteration `i` uses.
template <typename T>
const T& rotate(const std::vector<T>& sets, int64_t i) {
  return sets[i % sets.size()];
}

// random_sets with as many sets as an op that reads `n` elements and writes as many needs to
// rotate through rotation_bytes().
inline std::vector<torch::Tensor> rotating_inputs(int64_t n, torch::ScalarType dtype, double scale) {
  return random_sets(n, dtype, rotation_sets(2 * n * torch::elementSize(dtype)), scale);
}

// Runs `body(i)` once per benchmark iteration, timed the right way for the device.
inline void run_timed(benchmark::State& state, const std::function<void(int64_t)>& body) {
  int64_t i = 0;
#if defined(FAKEQUANT_BENCH_CUDA)
  if (use_cuda()) {
    cudaEvent_t start, stop;
    cudaEventCreate(&start);
    cudaEventCreate(&stop);
    for (auto _ : state) {
      // Torch's current stream is the default (legacy) stream in this program.
      cudaEventRecord(start, nullptr);
      body(i++);
      cudaEventRecord(stop, nullptr);
      cudaEventSynchronize(stop);
      float ms = 0.0f;
      cudaEventElapsedTime(&ms, start, stop);
      state.SetIterationTime(static_cast<double>(ms) * 1e-3);
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    return;
  }
#endif
  for (auto _ : state) body(i++);
}

// Decimal GB/s from the bytes one iteration must move (reads + writes).
inline void set_bandwidth(benchmark::State& state, double bytes_per_iteration, int64_t numel) {
  state.counters["GB/s"] = benchmark::Counter(bytes_per_iteration / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["bytes"] = bytes_per_iteration;
  state.counters["numel"] = static_cast<double>(numel);
}

// The per-tensor int8 quantization of the quant-dequant benchmarks: range, scale, zero point.
constexpr int64_t kQuantMin = -128;
constexpr int64_t kQuantMax = 127;
constexpr double kScale = 0.02;
constexpr int64_t kZeroPoint = 3;

// kScale and kZeroPoint as the one-element tensors fakequant's per-tensor ops take (fp32 scale,
// int32 zero point), on the bench device.
struct QParams {
  torch::Tensor scale, zero_point;
};
inline QParams per_tensor_qparams() {
  const auto opts = torch::TensorOptions().device(bench_device());
  return {torch::full({1}, kScale, opts.dtype(torch::kFloat)), torch::full({1}, kZeroPoint, opts.dtype(torch::kInt))};
}

// Bytes a quant-dequant must move: its input read and its output written, plus its mask,
// fakequant's packed one (1 bit per element) or ATen's bool one (1 byte per element).
enum class Mask { kPacked, kBool };
inline double quant_dequant_bytes(int64_t n, torch::ScalarType dtype, Mask mask) {
  return static_cast<double>(2 * n * torch::elementSize(dtype) + (mask == Mask::kPacked ? (n + 7) / 8 : n));
}

// Times `step(i)` (its result kept from the optimizer) once per iteration with run_timed and
// counts `bytes_per_iteration` over `numel` elements: the frame of every op benchmark.
template <typename Step>
void time_op(benchmark::State& state, double bytes_per_iteration, int64_t numel, const Step& step) {
  run_timed(state, [&](int64_t i) {
    auto out = step(i);
    benchmark::DoNotOptimize(out);
  });
  set_bandwidth(state, bytes_per_iteration, numel);
}

// Registers a benchmark with the timing mode of the device and the run's repetitions.
inline benchmark::internal::Benchmark* configure(benchmark::internal::Benchmark* b) {
  b->Unit(benchmark::kMicrosecond)->MinWarmUpTime(0.05);
  if (use_cuda()) {
    b->UseManualTime();
  } else {
    b->UseRealTime();
  }
  return b;
}

inline torch::ScalarType dtype_arg(int64_t code) {
  switch (code) {
    case 1:
      return torch::kBFloat16;
    case 2:
      return torch::kHalf;
    default:
      return torch::kFloat;
  }
}

// The arguments of a size-sweep run (sweep_args): numel and dtype.
struct SweepPoint {
  int64_t n;
  torch::ScalarType dtype;
};
inline SweepPoint sweep_point(const benchmark::State& state) { return {state.range(0), dtype_arg(state.range(1))}; }

// Registers the size sweep over `dtypes` (codes of dtype_arg) as {numel, dtype}.
inline void sweep_args(benchmark::internal::Benchmark* b, const std::vector<int64_t>& dtypes) {
  for (const int64_t dtype : dtypes)
    for (const int64_t n : sweep_sizes()) b->Args({n, dtype});
  b->ArgNames({"numel", "dtype"});
  configure(b);
}

// Registers layer shapes over `dtypes` as {numel, dtype, shape index}.
inline void layer_args(benchmark::internal::Benchmark* b, const std::vector<int64_t>& dtypes, bool weights_only) {
  for (const int64_t dtype : dtypes)
    for (const int64_t s : layer_indices(weights_only)) b->Args({numel_of(layer_shapes()[s].sizes), dtype, s});
  b->ArgNames({"numel", "dtype", "shape"});
  configure(b);
}

// A benchmark pair: fakequant's benchmark of `op` and the ATen benchmark doing the same job,
// with the same arguments.
using BenchmarkFn = void (*)(benchmark::State&);
using ArgsFn = void (*)(benchmark::internal::Benchmark*);
struct Pair {
  const char* op;
  BenchmarkFn fakequant, aten;
  ArgsFn args;
};

// Registers each pair under the names bench/render_report.py pairs them by: BM_<op>_fakequant
// and BM_<op>_aten. Returns true, so that a file calls it from the initializer of a variable at
// namespace scope, as BENCHMARK does.
inline bool register_pairs(std::initializer_list<Pair> pairs) {
  for (const Pair& p : pairs) {
    benchmark::RegisterBenchmark(("BM_" + std::string(p.op) + "_fakequant").c_str(), p.fakequant)->Apply(p.args);
    benchmark::RegisterBenchmark(("BM_" + std::string(p.op) + "_aten").c_str(), p.aten)->Apply(p.args);
  }
  return true;
}

}  // namespace fakequant_bench
