// CPU reference of per-tensor quant-dequant and its masked (clipped-STE) backward.
//
// Work is addressed in groups of 8 elements, one mask byte each, so that callers can run
// disjoint group ranges on different threads without sharing a mask byte. Inside a range,
// elements are processed in blocks: a branch-free elementwise loop that the compiler
// vectorises (values out, one in-range byte per element to a stack buffer), then a
// packing loop that turns 8 such bytes into one mask byte with a multiply.
#include <algorithm>
#include <cstring>

#include "fakequant/fake_quant.h"

namespace fakequant {
namespace {

constexpr int64_t kBlockGroups = 64;  // 512 elements per block
constexpr int64_t kBlock = kBlockGroups * kMaskGroup;

// 8 bytes, each 0 or 1 (element j in byte j, little-endian load) -> bit j of the result.
inline uint8_t pack_bits(const uint8_t* flags) {
  uint64_t word;
  std::memcpy(&word, flags, sizeof(word));
  return static_cast<uint8_t>((word * 0x0102040810204080ull) >> 56);
}

template <typename T, Rounding kMode>
void fake_quant_groups(const T* __restrict__ in, T* __restrict__ out, uint8_t* __restrict__ mask,
                       int64_t numel, const PerTensorQParams& qp, int64_t group_begin,
                       int64_t group_end) {
  const float scale = *qp.scale;
  const int32_t zp = *qp.zero_point;
  const bool valid = qparams_valid(scale, zp, qp.quant_min, qp.quant_max);
  const float inv = inverse_scale(scale);
  const float zpf = static_cast<float>(zp);
  const float qmin = static_cast<float>(qp.quant_min);
  const float qmax = static_cast<float>(qp.quant_max);
  const float poison = bits_float(0x7FC00000u);
  const uint8_t keep = valid ? 1 : 0;

  alignas(64) uint8_t flags[kBlock];
  for (int64_t g0 = group_begin; g0 < group_end; g0 += kBlockGroups) {
    const int64_t g1 = std::min(g0 + kBlockGroups, group_end);
    const int64_t begin = g0 * kMaskGroup;
    const int64_t len = std::min(g1 * kMaskGroup, numel) - begin;
    const T* __restrict__ x = in + begin;
    T* __restrict__ y = out + begin;
    for (int64_t i = 0; i < len; ++i) {
      const QuantDequantResult r = quant_dequant(to_float(x[i]), scale, inv, zpf, qmin, qmax, kMode);
      y[i] = from_float<T>(valid ? r.value : poison);
      flags[i] = static_cast<uint8_t>(r.in_range) & keep;
    }
    if (mask == nullptr) continue;
    // Padding bits of the last, partial group are 0.
    std::memset(flags + len, 0, static_cast<size_t>((g1 - g0) * kMaskGroup - len));
    for (int64_t g = g0; g < g1; ++g) mask[g] = pack_bits(flags + (g - g0) * kMaskGroup);
  }
}

template <typename T>
void fake_quant_dispatch(const FakeQuantArgs& a, const PerTensorQParams& qp, int64_t group_begin,
                         int64_t group_end) {
  const T* in = static_cast<const T*>(a.input);
  T* out = static_cast<T*>(a.output);
  if (qp.rounding == Rounding::kHalfAway) {
    fake_quant_groups<T, Rounding::kHalfAway>(in, out, a.mask, a.numel, qp, group_begin, group_end);
  } else {
    fake_quant_groups<T, Rounding::kHalfEven>(in, out, a.mask, a.numel, qp, group_begin, group_end);
  }
}

// Zero is all-zero bits in every supported dtype, so the masked gradient is a bitwise
// AND of the raw element bits with 0 or ~0 - a select the compiler vectorises.
template <typename Bits>
void masked_grad_groups(const Bits* __restrict__ grad, const uint8_t* __restrict__ mask,
                        Bits* __restrict__ grad_in, int64_t numel, int64_t group_begin,
                        int64_t group_end) {
  alignas(64) uint8_t flags[kBlock];
  for (int64_t g0 = group_begin; g0 < group_end; g0 += kBlockGroups) {
    const int64_t g1 = std::min(g0 + kBlockGroups, group_end);
    for (int64_t g = g0; g < g1; ++g) {
      const uint32_t bits = mask[g];
      for (int j = 0; j < kMaskGroup; ++j) flags[(g - g0) * kMaskGroup + j] = (bits >> j) & 1u;
    }
    const int64_t begin = g0 * kMaskGroup;
    const int64_t len = std::min(g1 * kMaskGroup, numel) - begin;
    const Bits* __restrict__ gp = grad + begin;
    Bits* __restrict__ op = grad_in + begin;
    for (int64_t i = 0; i < len; ++i) op[i] = gp[i] & static_cast<Bits>(0u - flags[i]);
  }
}

template <typename Bits>
void masked_grad_dispatch(const MaskedGradArgs& a, int64_t group_begin, int64_t group_end) {
  masked_grad_groups(static_cast<const Bits*>(a.grad_output), a.mask, static_cast<Bits*>(a.grad_input), a.numel,
                     group_begin, group_end);
}

}  // namespace

void fake_quant_per_tensor_cpu_range(const FakeQuantArgs& a, const PerTensorQParams& qp,
                                     int64_t group_begin, int64_t group_end) {
  group_end = std::min(group_end, mask_bytes(a.numel));
  if (group_begin >= group_end) return;
  switch (a.dtype) {
    case DType::kFloat32:
      fake_quant_dispatch<float>(a, qp, group_begin, group_end);
      break;
    case DType::kFloat16:
      fake_quant_dispatch<Half>(a, qp, group_begin, group_end);
      break;
    case DType::kBFloat16:
      fake_quant_dispatch<BFloat16>(a, qp, group_begin, group_end);
      break;
  }
}

void fake_quant_per_tensor_cpu(const FakeQuantArgs& a, const PerTensorQParams& qp) {
  fake_quant_per_tensor_cpu_range(a, qp, 0, mask_bytes(a.numel));
}

void masked_grad_cpu_range(const MaskedGradArgs& a, int64_t group_begin, int64_t group_end) {
  group_end = std::min(group_end, mask_bytes(a.numel));
  if (group_begin >= group_end) return;
  switch (a.dtype) {
    case DType::kFloat32:
      masked_grad_dispatch<uint32_t>(a, group_begin, group_end);
      break;
    case DType::kFloat16:
    case DType::kBFloat16:
      masked_grad_dispatch<uint16_t>(a, group_begin, group_end);
      break;
  }
}

void masked_grad_cpu(const MaskedGradArgs& a) { masked_grad_cpu_range(a, 0, mask_bytes(a.numel)); }

}  // namespace fakequant
