// Shared pieces of the fakequant microbenchmarks: device selection, timing (CUDA events
// with manual time on the GPU, real time on the CPU), input rotation so that small sizes
// do not measure a warm cache, and decimal GB/s counters.
#pragma once

#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <vector>

#if defined(FAKEQUANT_BENCH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace fakequant_bench {

inline bool use_cuda() {
#if defined(FAKEQUANT_BENCH_CUDA)
  static const bool available = torch::cuda::is_available();
  return available;
#else
  return false;
#endif
}

inline torch::Device bench_device() { return use_cuda() ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU); }

// Bytes the rotating input sets should span: twice the GPU's L2, or 64 MB on the CPU
// (above the last-level cache of the machines we run on).
inline int64_t rotation_bytes() {
#if defined(FAKEQUANT_BENCH_CUDA)
  if (use_cuda()) {
    int l2 = 0;
    if (cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, 0) == cudaSuccess && l2 > 0) return 2LL * l2;
    return 128LL << 20;
  }
#endif
  return 64LL << 20;
}

// How many copies of a working set of `set_bytes` to rotate through (at most 64).
inline int rotation_sets(int64_t set_bytes) {
  const int64_t want = (rotation_bytes() + set_bytes - 1) / std::max<int64_t>(set_bytes, 1);
  return static_cast<int>(std::clamp<int64_t>(want, 1, 64));
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

}  // namespace fakequant_bench
