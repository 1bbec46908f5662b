// CUDA per-tensor quant-dequant and its masked (clipped-STE) backward.
//
// Each thread owns one mask group of 8 consecutive elements (one mask byte): 8 x 16-bit
// elements are one 16-byte load, 8 x fp32 are two. A warp therefore reads 256 or 512
// contiguous bytes and writes 32 contiguous mask bytes. The 16-byte path is taken when
// input and output are 16-byte aligned (checked at launch); otherwise a scalar path with
// the same math runs. The last, partial group is handled with bounds checks. Indices are
// 64-bit and the grid strides, so any numel works. Stochastic rounding (a separate
// instantiation; the deterministic modes do no Philox work) reads the seed on the device
// and makes two Philox calls per group.
#include <cstdint>

#include "fakequant/cuda/launch.h"
#include "fakequant/dispatch.h"
#include "group_io.cuh"
#include "launch_utils.cuh"

namespace fakequant {
namespace cuda {
namespace {

template <typename T, Rounding kMode, bool kVector>
__global__ void fake_quant_per_tensor_kernel(const T* __restrict__ in, T* __restrict__ out,
                                             uint8_t* __restrict__ mask, int64_t numel,
                                             const float* __restrict__ scale_ptr,
                                             const int32_t* __restrict__ zero_point_ptr,
                                             int32_t quant_min, int32_t quant_max,
                                             const int64_t* __restrict__ seed,
                                             const int64_t* __restrict__ enabled) {
  if (switched_off(enabled)) return pass_through_groups<T, kVector>(in, out, mask, numel);
  const float scale = *scale_ptr;
  const int32_t zp = *zero_point_ptr;
  const bool valid = qparams_valid(scale, zp, quant_min, quant_max);
  const float inv = inverse_scale(scale);
  const float zpf = static_cast<float>(zp);
  const float qmin = static_cast<float>(quant_min);
  const float qmax = static_cast<float>(quant_max);
  const float poison = __uint_as_float(0x7FC00000u);
  const PhiloxSeed philox = philox_seed<kMode>(seed);
  for_each_group(numel, [&](int64_t g, int64_t base, bool full) {
    uint8_t bits = 0;
    const GroupRandom rnd = group_random_for<kMode>(g, philox);
    if (full) {
      const Group<T> x = load_group<T, kVector>(in + base);
      Group<T> y;
#pragma unroll
      for (int j = 0; j < kMaskGroup; ++j) {
        const QuantDequantResult r = quant_dequant(to_float(x.v[j]), scale, inv, zpf, qmin, qmax, kMode, rnd.v[j]);
        y.v[j] = from_float<T>(valid ? r.value : poison);
        bits |= static_cast<uint8_t>((valid && r.in_range) ? 1u : 0u) << j;
      }
      store_group<T, kVector>(out + base, y);
    } else {
#pragma unroll
      for (int j = 0; j < kMaskGroup; ++j) {
        if (base + j >= numel) break;
        const QuantDequantResult r =
            quant_dequant(to_float(in[base + j]), scale, inv, zpf, qmin, qmax, kMode, rnd.v[j]);
        out[base + j] = from_float<T>(valid ? r.value : poison);
        bits |= static_cast<uint8_t>((valid && r.in_range) ? 1u : 0u) << j;
      }
    }
    if (mask != nullptr) mask[g] = bits;
  });
}

template <typename T, bool kVector>
__global__ void masked_grad_kernel(const T* __restrict__ grad, const uint8_t* __restrict__ mask,
                                   T* __restrict__ grad_in, int64_t numel) {
  const T zero = from_float<T>(0.0f);
  for_each_group(numel, [&](int64_t g, int64_t base, bool full) {
    const uint32_t bits = mask[g];
    if (full) {
      Group<T> d = load_group<T, kVector>(grad + base);
#pragma unroll
      for (int j = 0; j < kMaskGroup; ++j) d.v[j] = ((bits >> j) & 1u) ? d.v[j] : zero;
      store_group<T, kVector>(grad_in + base, d);
    } else {
      for (int j = 0; base + j < numel; ++j) grad_in[base + j] = ((bits >> j) & 1u) ? grad[base + j] : zero;
    }
  });
}

template <typename T>
cudaError_t launch_fq(const FakeQuantArgs& a, const PerTensorQParams& qp, cudaStream_t stream) {
  const T* in = static_cast<const T*>(a.input);
  T* out = static_cast<T*>(a.output);
  const bool vec = is_aligned16(in) && is_aligned16(out);
  const LaunchShape shape = grid_for(mask_bytes(a.numel));
  auto go = [&](auto kernel) {
    kernel<<<shape.blocks, shape.threads, 0, stream>>>(in, out, a.mask, a.numel, qp.scale,
                                                       qp.zero_point, qp.quant_min, qp.quant_max, qp.seed, qp.enabled);
  };
  dispatch_rounding(qp.rounding, [&](auto r) {
    constexpr Rounding kMode = decltype(r)::value;
    vec ? go(fake_quant_per_tensor_kernel<T, kMode, true>) : go(fake_quant_per_tensor_kernel<T, kMode, false>);
  });
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_mg(const MaskedGradArgs& a, cudaStream_t stream) {
  const T* grad = static_cast<const T*>(a.grad_output);
  T* grad_in = static_cast<T*>(a.grad_input);
  const LaunchShape shape = grid_for(mask_bytes(a.numel));
  if (is_aligned16(grad) && is_aligned16(grad_in)) {
    masked_grad_kernel<T, true><<<shape.blocks, shape.threads, 0, stream>>>(grad, a.mask, grad_in, a.numel);
  } else {
    masked_grad_kernel<T, false><<<shape.blocks, shape.threads, 0, stream>>>(grad, a.mask, grad_in, a.numel);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_fake_quant_per_tensor(const FakeQuantArgs& a, const PerTensorQParams& qp,
                                         cudaStream_t stream) {
  if (a.numel == 0) return cudaSuccess;
  // An unknown rounding would launch nothing and report success.
  const bool known_rounding = qp.rounding == Rounding::kHalfEven || qp.rounding == Rounding::kHalfAway ||
                              qp.rounding == Rounding::kStochastic;
  if (a.numel < 0 || !known_rounding) return cudaErrorInvalidValue;
  if (qp.rounding == Rounding::kStochastic && qp.seed == nullptr) return cudaErrorInvalidValue;
  return dispatch_dtype(a.dtype, cudaErrorInvalidValue,
                        [&](auto t) { return launch_fq<typename decltype(t)::type>(a, qp, stream); });
}

cudaError_t launch_masked_grad(const MaskedGradArgs& a, cudaStream_t stream) {
  if (a.numel == 0) return cudaSuccess;
  if (a.numel < 0) return cudaErrorInvalidValue;
  return dispatch_dtype(a.dtype, cudaErrorInvalidValue,
                        [&](auto t) { return launch_mg<typename decltype(t)::type>(a, stream); });
}

}  // namespace cuda
}  // namespace fakequant
