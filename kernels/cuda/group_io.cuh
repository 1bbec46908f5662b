// 8-element groups (one mask byte) loaded and stored with 16-byte accesses when aligned.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "fakequant/fake_quant.h"

namespace fakequant {
namespace cuda {

template <typename T>
struct Group {
  T v[kMaskGroup];
};

// Loads/stores of one full group. kVector selects 16-byte accesses.
template <typename T, bool kVector>
__device__ __forceinline__ Group<T> load_group(const T* __restrict__ p) {
  Group<T> g;
  if constexpr (kVector) {
    constexpr int kChunks = sizeof(Group<T>) / sizeof(uint4);
    const uint4* src = reinterpret_cast<const uint4*>(p);
    uint4 raw[kChunks];
#pragma unroll
    for (int c = 0; c < kChunks; ++c) raw[c] = src[c];
    memcpy(&g, raw, sizeof(g));
  } else {
#pragma unroll
    for (int j = 0; j < kMaskGroup; ++j) g.v[j] = p[j];
  }
  return g;
}

template <typename T, bool kVector>
__device__ __forceinline__ void store_group(T* __restrict__ p, const Group<T>& g) {
  if constexpr (kVector) {
    constexpr int kChunks = sizeof(Group<T>) / sizeof(uint4);
    uint4 raw[kChunks];
    memcpy(raw, &g, sizeof(g));
    uint4* dst = reinterpret_cast<uint4*>(p);
#pragma unroll
    for (int c = 0; c < kChunks; ++c) dst[c] = raw[c];
  } else {
#pragma unroll
    for (int j = 0; j < kMaskGroup; ++j) p[j] = g.v[j];
  }
}

// The Philox words of the 8 elements of group g (stochastic rounding): quads 2g and 2g + 1
// (docs/numerics.md), two Philox calls.
struct GroupRandom {
  uint32_t v[kMaskGroup];
};
static_assert(kMaskGroup == 8, "a group is two Philox quads");

__device__ __forceinline__ GroupRandom group_random(int64_t g, uint64_t key, uint64_t offset) {
  GroupRandom r;
  const uint64_t quad = 2 * static_cast<uint64_t>(g);
  const Philox4x32 lo = stochastic_words(quad, key, offset);
  const Philox4x32 hi = stochastic_words(quad + 1, key, offset);
#pragma unroll
  for (int j = 0; j < 4; ++j) r.v[j] = lo.v[j], r.v[4 + j] = hi.v[j];
  return r;
}

}  // namespace cuda
}  // namespace fakequant
