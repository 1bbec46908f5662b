// Launch-shape helpers shared by the CUDA kernels of this library.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace fakequant {
namespace cuda {

struct LaunchShape {
  unsigned int blocks;
  unsigned int threads;
};

inline bool is_aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Multiprocessor count of the current device. cudaDeviceGetAttribute is a host-side query
// (no synchronisation); it is cached per device anyway because it sits on every launch.
// If the query fails (its error is then reported by the launch that follows), any
// reasonable count will do: the grid only caps how many blocks stride over the work.
inline int current_sm_count() {
  constexpr int kMaxDevices = 64;
  constexpr int kFallbackSmCount = 128;
  static std::atomic<int> cache[kMaxDevices];  // zero-initialised (static storage)
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) return kFallbackSmCount;
  int sms = cache[device].load(std::memory_order_relaxed);
  if (sms == 0) {
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || sms <= 0) {
      return kFallbackSmCount;
    }
    cache[device].store(sms, std::memory_order_relaxed);
  }
  return sms;
}

// One thread per work item, 256 threads a block, at most 32 blocks per multiprocessor
// (the kernels stride over the rest, which keeps the grid small for huge tensors).
inline LaunchShape grid_for(int64_t items, unsigned int threads = 256) {
  const int64_t needed = (items + threads - 1) / threads;
  const int64_t cap = static_cast<int64_t>(current_sm_count()) * 32;
  return {static_cast<unsigned int>(std::max<int64_t>(1, std::min(needed, cap))), threads};
}

}  // namespace cuda
}  // namespace fakequant
