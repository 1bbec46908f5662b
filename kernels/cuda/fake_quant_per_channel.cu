// CUDA per-channel quant-dequant. Same layout as the per-tensor kernel (one thread per
// 8-element mask group, 16-byte accesses when aligned); the channel of each element follows
// from its memory offset, (offset / channel_stride) % channels, computed once per group and
// stepped per element (qparams reloaded only when it changes), so any axis and any dense layout (channels_last included) works.
// Stochastic rounding takes the same Philox words as the per-tensor kernel (by memory offset).
#include <cstdint>

#include "fakequant/cuda/launch.h"
#include "fakequant/dispatch.h"
#include "group_io.cuh"
#include "launch_utils.cuh"

namespace fakequant {
namespace cuda {
namespace {

template <typename T, Rounding kMode, bool kFloatZeroPoint, bool kVector>
__global__ void fake_quant_per_channel_kernel(const T* __restrict__ in, T* __restrict__ out,
                                              uint8_t* __restrict__ mask, int64_t numel,
                                              const float* __restrict__ scales,
                                              const void* __restrict__ zero_points, int64_t channels,
                                              int64_t channel_stride, int32_t quant_min, int32_t quant_max,
                                              const int64_t* __restrict__ seed,
                                              const int64_t* __restrict__ enabled) {
  if (switched_off(enabled)) return pass_through_groups<T, kVector>(in, out, mask, numel);
  const float qmin = static_cast<float>(quant_min);
  const float qmax = static_cast<float>(quant_max);
  const float poison = __uint_as_float(0x7FC00000u);
  const PhiloxSeed philox = philox_seed<kMode>(seed);
  for_each_group(numel, [&](int64_t g, int64_t base, bool full) {
    const int64_t run = base / channel_stride;
    int64_t within = base - run * channel_stride;  // position inside the run of one channel
    int64_t c = run % channels;
    const Group<T> x = load_group_padded<T, kVector>(in, base, full, numel);
    // The channel's qparams, reloaded (and 1/scale recomputed) only when the channel changes.
    float s = 0.0f, inv = 0.0f, z = 0.0f;
    bool valid = false;
    auto load_channel = [&](int64_t ch) {
      s = scales[ch];
      inv = inverse_scale(s);
      if constexpr (kFloatZeroPoint) {
        z = static_cast<const float*>(zero_points)[ch];
        valid = qparams_valid_float_zp(s, z, quant_min, quant_max);
      } else {
        const int32_t zi = static_cast<const int32_t*>(zero_points)[ch];
        z = static_cast<float>(zi);
        valid = qparams_valid(s, zi, quant_min, quant_max);
      }
    };
    load_channel(c);
    const GroupRandom rnd = group_random_for<kMode>(g, philox);
    Group<T> y;
    uint8_t bits = 0;
#pragma unroll
    for (int j = 0; j < kMaskGroup; ++j) {
      if (j > 0 && ++within == channel_stride) {
        within = 0;
        if (++c == channels) c = 0;
        load_channel(c);
      }
      const float xf = to_float(x.v[j]);
      const QuantDequantResult r = kFloatZeroPoint ? quant_dequant_float_zp(xf, s, inv, z, qmin, qmax, kMode, rnd.v[j])
                                                   : quant_dequant(xf, s, inv, z, qmin, qmax, kMode, rnd.v[j]);
      y.v[j] = from_float<T>(valid ? r.value : poison);
      const bool exists = full || base + j < numel;  // padding of the last group: bit 0
      bits |= static_cast<uint8_t>((valid && r.in_range && exists) ? 1u : 0u) << j;
    }
    store_group_padded<T, kVector>(out, y, base, full, numel);
    if (mask != nullptr) mask[g] = bits;
  });
}

template <typename T, Rounding kMode, bool kFloatZeroPoint>
void launch_typed(const FakeQuantArgs& a, const PerChannelQParams& qp, cudaStream_t stream) {
  const T* in = static_cast<const T*>(a.input);
  T* out = static_cast<T*>(a.output);
  const LaunchShape shape = grid_for(mask_bytes(a.numel));
  auto go = [&](auto kernel) {
    kernel<<<shape.blocks, shape.threads, 0, stream>>>(in, out, a.mask, a.numel, qp.scale, qp.zero_point,
                                                       qp.channels, qp.channel_stride, qp.quant_min, qp.quant_max,
                                                       qp.seed, qp.enabled);
  };
  if (is_aligned16(in) && is_aligned16(out)) {
    go(fake_quant_per_channel_kernel<T, kMode, kFloatZeroPoint, true>);
  } else {
    go(fake_quant_per_channel_kernel<T, kMode, kFloatZeroPoint, false>);
  }
}

template <typename T>
void launch_dispatch(const FakeQuantArgs& a, const PerChannelQParams& qp, cudaStream_t stream) {
  const bool float_zp = qp.zero_point_type == ZeroPointType::kFloat32;
  dispatch_rounding(qp.rounding, [&](auto r) {
    constexpr Rounding kMode = decltype(r)::value;
    float_zp ? launch_typed<T, kMode, true>(a, qp, stream) : launch_typed<T, kMode, false>(a, qp, stream);
  });
}

}  // namespace

cudaError_t launch_fake_quant_per_channel(const FakeQuantArgs& a, const PerChannelQParams& qp,
                                          cudaStream_t stream) {
  if (a.numel == 0) return cudaSuccess;
  if (a.numel < 0 || qp.channels <= 0 || qp.channel_stride <= 0) return cudaErrorInvalidValue;
  // An unknown rounding, zero-point type or dtype would launch nothing and report success.
  const bool known_rounding = qp.rounding == Rounding::kHalfEven || qp.rounding == Rounding::kHalfAway ||
                              qp.rounding == Rounding::kStochastic;
  const bool known_zero_point =
      qp.zero_point_type == ZeroPointType::kInt32 || qp.zero_point_type == ZeroPointType::kFloat32;
  if (!known_rounding || !known_zero_point) return cudaErrorInvalidValue;
  if (qp.rounding == Rounding::kStochastic && qp.seed == nullptr) return cudaErrorInvalidValue;
  return dispatch_dtype(a.dtype, cudaErrorInvalidValue, [&](auto t) {
    launch_dispatch<typename decltype(t)::type>(a, qp, stream);
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace fakequant
