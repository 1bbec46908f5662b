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

// The group of elements [base, base + kMaskGroup) of a tensor of numel elements, which may be
// the last, partial one (full: all its elements exist; load_group / store_group then). The
// partial group's loops are unrolled with a guard, not bounded by numel, so that the group
// stays in registers (a runtime index would put it in local memory); its missing elements load
// as 0.
template <typename T, bool kVector>
__device__ __forceinline__ Group<T> load_group_padded(const T* __restrict__ p, int64_t base, bool full,
                                                      int64_t numel) {
  if (full) return load_group<T, kVector>(p + base);
  Group<T> g;
#pragma unroll
  for (int j = 0; j < kMaskGroup; ++j) g.v[j] = base + j < numel ? p[base + j] : from_float<T>(0.0f);
  return g;
}

template <typename T, bool kVector>
__device__ __forceinline__ void store_group_padded(T* __restrict__ p, const Group<T>& g, int64_t base, bool full,
                                                   int64_t numel) {
  if (full) {
    store_group<T, kVector>(p + base, g);
    return;
  }
#pragma unroll
  for (int j = 0; j < kMaskGroup; ++j) {
    if (base + j < numel) p[base + j] = g.v[j];
  }
}

// The larger of two abs_bits values: abs-max reductions fold bits, not floats, so that a NaN
// (bits above 0x7F800000) wins and every order of folding gives the same result.
__device__ __forceinline__ uint32_t umax(uint32_t a, uint32_t b) { return a > b ? a : b; }

template <typename T>
__device__ __forceinline__ uint32_t abs_bits_of(T v) {
  return abs_bits(to_float(v));
}

// The grid-stride walk of the elementwise kernels over the mask groups of numel elements:
// body(g, base, full) for each group g of this thread, base = g's first element, full = all
// kMaskGroup elements of g exist.
template <typename Body>
__device__ __forceinline__ void for_each_group(int64_t numel, Body&& body) {
  const int64_t full_groups = numel / kMaskGroup;
  const int64_t groups = mask_bytes(numel);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups; g += stride) {
    body(g, g * kMaskGroup, g < full_groups);
  }
}

// A quant-dequant kernel whose `enabled` switch is off: the whole grid copies the groups
// through and sets every mask bit (same grid-stride layout as the kernels).
template <typename T, bool kVector>
__device__ void pass_through_groups(const T* __restrict__ in, T* __restrict__ out, uint8_t* __restrict__ mask,
                                    int64_t numel) {
  for_each_group(numel, [&](int64_t g, int64_t base, bool full) {
    int valid = kMaskGroup;
    if (full) {
      store_group<T, kVector>(out + base, load_group<T, kVector>(in + base));
    } else {
      valid = static_cast<int>(numel - base);
      for (int j = 0; j < valid; ++j) out[base + j] = in[base + j];
    }
    if (mask != nullptr) mask[g] = static_cast<uint8_t>((1u << valid) - 1u);
  });
}

__device__ __forceinline__ bool switched_off(const int64_t* enabled) { return enabled != nullptr && *enabled == 0; }

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

// The Philox key and offset of a kernel's seed tensor: read for stochastic rounding only (the
// deterministic modes do no Philox work), and the random words of group g in that mode.
struct PhiloxSeed {
  uint64_t key, offset;
};

template <Rounding kMode>
__device__ __forceinline__ PhiloxSeed philox_seed(const int64_t* __restrict__ seed) {
  if constexpr (kMode == Rounding::kStochastic) return {static_cast<uint64_t>(seed[0]), static_cast<uint64_t>(seed[1])};
  return {0, 0};
}

template <Rounding kMode>
__device__ __forceinline__ GroupRandom group_random_for(int64_t g, PhiloxSeed seed) {
  GroupRandom r{};
  if constexpr (kMode == Rounding::kStochastic) r = group_random(g, seed.key, seed.offset);
  return r;
}

}  // namespace cuda
}  // namespace fakequant
