// CPU reference of per-tensor quant-dequant and its masked (clipped-STE) backward.
//
// Work is split in groups of 8 elements, one mask byte each, so that callers can run
// disjoint group ranges on different threads without sharing a mask byte. The inner
// loop over a group is branch-free so the compiler can vectorise it.
#include <algorithm>

#include "fakequant/fake_quant.h"

namespace fakequant {
namespace {

template <typename T>
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
  const Rounding mode = qp.rounding;

  const int64_t full_groups = numel / kMaskGroup;
  const int64_t end_full = std::min(group_end, full_groups);
  for (int64_t g = group_begin; g < end_full; ++g) {
    const int64_t base = g * kMaskGroup;
    uint8_t bits = 0;
    for (int j = 0; j < kMaskGroup; ++j) {
      const QuantDequantResult r =
          quant_dequant(to_float(in[base + j]), scale, inv, zpf, qmin, qmax, mode);
      out[base + j] = from_float<T>(valid ? r.value : poison);
      bits |= static_cast<uint8_t>((valid && r.in_range) ? 1u : 0u) << j;
    }
    if (mask) mask[g] = bits;
  }
  if (group_end > full_groups && full_groups < mask_bytes(numel) && group_begin <= full_groups) {
    // The tail group (numel % 8 elements); its unused mask bits are 0.
    const int64_t base = full_groups * kMaskGroup;
    uint8_t bits = 0;
    for (int64_t j = 0; base + j < numel; ++j) {
      const QuantDequantResult r =
          quant_dequant(to_float(in[base + j]), scale, inv, zpf, qmin, qmax, mode);
      out[base + j] = from_float<T>(valid ? r.value : poison);
      bits |= static_cast<uint8_t>((valid && r.in_range) ? 1u : 0u) << j;
    }
    if (mask) mask[full_groups] = bits;
  }
}

template <typename T>
void masked_grad_groups(const T* __restrict__ grad, const uint8_t* __restrict__ mask,
                        T* __restrict__ grad_in, int64_t numel, int64_t group_begin,
                        int64_t group_end) {
  const T zero = from_float<T>(0.0f);
  const int64_t end = std::min(group_end * kMaskGroup, numel);
  for (int64_t i = group_begin * kMaskGroup; i < end; ++i) {
    const bool keep = (mask[i / kMaskGroup] >> (i % kMaskGroup)) & 1u;
    grad_in[i] = keep ? grad[i] : zero;
  }
}

}  // namespace

void fake_quant_per_tensor_cpu_range(const FakeQuantArgs& a, const PerTensorQParams& qp,
                                     int64_t group_begin, int64_t group_end) {
  group_end = std::min(group_end, mask_bytes(a.numel));
  if (group_begin >= group_end) return;
  switch (a.dtype) {
    case DType::kFloat32:
      fake_quant_groups(static_cast<const float*>(a.input), static_cast<float*>(a.output), a.mask,
                        a.numel, qp, group_begin, group_end);
      break;
    case DType::kFloat16:
      fake_quant_groups(static_cast<const Half*>(a.input), static_cast<Half*>(a.output), a.mask,
                        a.numel, qp, group_begin, group_end);
      break;
    case DType::kBFloat16:
      fake_quant_groups(static_cast<const BFloat16*>(a.input), static_cast<BFloat16*>(a.output),
                        a.mask, a.numel, qp, group_begin, group_end);
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
      masked_grad_groups(static_cast<const float*>(a.grad_output), a.mask,
                         static_cast<float*>(a.grad_input), a.numel, group_begin, group_end);
      break;
    case DType::kFloat16:
      masked_grad_groups(static_cast<const Half*>(a.grad_output), a.mask,
                         static_cast<Half*>(a.grad_input), a.numel, group_begin, group_end);
      break;
    case DType::kBFloat16:
      masked_grad_groups(static_cast<const BFloat16*>(a.grad_output), a.mask,
                         static_cast<BFloat16*>(a.grad_input), a.numel, group_begin, group_end);
      break;
  }
}

void masked_grad_cpu(const MaskedGradArgs& a) { masked_grad_cpu_range(a, 0, mask_bytes(a.numel)); }

}  // namespace fakequant
