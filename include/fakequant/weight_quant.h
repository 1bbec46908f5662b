// Weight fake quantization with per-channel abs-max scales: the scale of each channel comes
// from the weight itself (symmetric, zero point 0), then the weight is quant-dequantised
// with it exactly as fake_quant_per_channel does. CPU reference here; the CUDA launcher is
// declared in <fakequant/cuda/weight_quant.h>.
//
// Tensors are raw pointers processed in memory order (dense layouts). With `channel_stride`
// the stride of the channel axis, the channel of memory offset i is
// (i / channel_stride) % channels, as for PerChannelQParams.
#pragma once

#include <cstdint>
#include <string>

#include "fakequant/fake_quant.h"

namespace fakequant {

// torch.finfo(torch.float32).eps: the floor PyTorch's observers put under every scale.
constexpr float kFloat32Eps = 1.1920928955078125e-07f;

struct WeightAbsMaxArgs {
  DType dtype = DType::kFloat32;
  const void* weight = nullptr;
  void* output = nullptr;
  uint8_t* mask = nullptr;  // mask_bytes(numel) bytes, or null (no mask)
  float* scale = nullptr;   // [channels], written
  int64_t numel = 0;
  int64_t channels = 1;
  int64_t channel_stride = 1;
  int32_t quant_min = -127;
  int32_t quant_max = 127;
  float eps = kFloat32Eps;
  Rounding rounding = Rounding::kHalfEven;
  // The dtype the quotient absmax / half range is rounded to before the eps floor: float32
  // (PyTorch's observers), or the input's dtype (torchao computes its per-group scales with
  // tensor ops on the input, so a bfloat16 weight gets a bfloat16-rounded scale). The scale
  // is float32 either way.
  DType scale_dtype = DType::kFloat32;
};

// v rounded to `dtype` (to nearest, ties to even), back in float32.
FQ_HD float round_to_dtype(float v, DType dtype) {
  if (dtype == DType::kFloat16) return load_acc(from_float<Half>(v));
  if (dtype == DType::kBFloat16) return load_acc(from_float<BFloat16>(v));
  return v;
}

// The scale of a channel or group from its abs-max: symmetric_scale with the quotient rounded
// to `scale_dtype` first (WeightAbsMaxArgs::scale_dtype).
FQ_HD float weight_scale(float absmax, float half_range, float eps, DType scale_dtype) {
  return floor_at_eps(round_to_dtype(absmax / half_range, scale_dtype), eps);
}

// Accepted ranges: symmetric around 0, quant_min == -quant_max (narrow: Paddle's
// channel_wise_abs_max with bin_cnt = quant_max) or quant_min == -quant_max - 1 (full:
// PyTorch's qint8 symmetric), with quant_max >= 1, on top of check_quant_range's rules.
// Empty string when accepted, else a message naming the arguments and what is accepted.
std::string check_symmetric_quant_range(int64_t quant_min, int64_t quant_max);
// eps must be finite and at least the smallest normal float32 once rounded to float32.
std::string check_eps_value(double eps);

// Each channel is one contiguous run of numel / channels elements (the channel axis is
// outermost in memory), so a channel can be reduced and quantised while it is in cache.
inline bool weight_channels_contiguous(const WeightAbsMaxArgs& a) {
  return a.channels <= 1 || a.channel_stride * a.channels == a.numel;
}

inline int64_t weight_channel_length(const WeightAbsMaxArgs& a) {
  return a.channels > 0 ? a.numel / a.channels : 0;
}

// Contiguous channels are processed in blocks of this many channels: the smallest count
// whose elements fill whole mask bytes (8 / gcd(L, 8)), so that blocks never share a mask
// byte and can run on different threads (or CUDA blocks).
inline int64_t weight_channels_per_block(int64_t channel_length) {
  int64_t g = 8;
  int64_t l = channel_length % 8;
  while (l != 0) {  // gcd(8, L)
    const int64_t t = g % l;
    g = l;
    l = t;
  }
  return 8 / g;
}

// The per-channel qparams of the quant-dequant step: the scales in a.scale, zero points
// `zeros` (channels int32 zeros, in the memory space of the data).
PerChannelQParams weight_quant_qparams(const WeightAbsMaxArgs& a, const int32_t* zeros);
FakeQuantArgs weight_quant_fake_quant_args(const WeightAbsMaxArgs& a);

// --- CPU reference --------------------------------------------------------------------
// Contiguous channels: blocks [block_begin, block_end) of weight_channels_per_block(L)
// channels each; every channel is reduced and quantised while it is in cache, its scale
// written to a.scale. Disjoint block ranges may run on different threads.
void fake_quant_weight_abs_max_cpu_blocks(const WeightAbsMaxArgs& a, int64_t block_begin, int64_t block_end);

// Any dense layout, first pass: acc[c] = max(acc[c], abs_bits(x)) over the elements at
// memory offsets [begin, end) (acc holds `channels` entries; start from zeros). Disjoint
// ranges with their own acc arrays may run on different threads; merge with a max.
void channel_abs_max_bits_cpu(const WeightAbsMaxArgs& a, int64_t begin, int64_t end, uint32_t* acc);

// Scales from merged abs-max bits: a.scale[c] = weight_scale(|x|max of c, ...).
void weight_scales_from_abs_max_bits(const WeightAbsMaxArgs& a, const uint32_t* acc);

// Everything on the calling thread, any layout (the second pass of a non-contiguous layout
// is fake_quant_per_channel_cpu with weight_quant_qparams).
// Rounding::kStochastic (WeightAbsMaxArgs has no seed) throws std::invalid_argument before
// anything is written, here and in fake_quant_weight_abs_max_cpu_blocks.
void fake_quant_weight_abs_max_cpu(const WeightAbsMaxArgs& a);

}  // namespace fakequant
