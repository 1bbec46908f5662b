// CPU reference of weight fake quantization with per-channel abs-max scales.
//
// The abs-max is an integer max over the bits of |x| (abs_bits in quant_math.h): exact,
// NaN-propagating, independent of the order, and a loop the compiler vectorises. The
// quant-dequant itself is fake_quant_per_channel_cpu with zero points 0, so the values are
// those of the per-channel op by construction.
#include <algorithm>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "fakequant/dispatch.h"
#include "fakequant/weight_quant.h"
#include "abs_max_bits.h"
#include "pack_bits.h"

// The contiguous path's per-tile loops are compiled twice (GCC target_clones): AVX2 (8 float
// lanes) and the baseline; integer and IEEE arithmetic only, so both give the same bits.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FQ_WEIGHT_CLONES __attribute__((target_clones("default", "arch=x86-64-v3")))
#else
#define FQ_WEIGHT_CLONES
#endif

namespace fakequant {
namespace {

// WeightAbsMaxArgs carries no seed: stochastic rounding cannot be honoured (the CUDA launcher
// returns cudaErrorInvalidValue for it). Checked before anything is written.
void check_deterministic_rounding(const WeightAbsMaxArgs& a) {
  if (a.rounding != Rounding::kHalfEven && a.rounding != Rounding::kHalfAway) {
    throw std::invalid_argument(
        "fakequant: weight abs-max quantization takes no seed: rounding must be half_even or half_away");
  }
}

// Elements per tile of the contiguous path: channels are reduced, then quantised, a tile at
// a time, so that the second read of a tile comes from cache (64 KB of fp32: inside L2).
constexpr int64_t kTileElements = 16384;

// max |x| over a run, as abs_bits. |x| bits are non-negative as signed integers, so a signed
// max (which SSE2 and every later x86 extension vectorise) orders them correctly. kLanes
// independent maxima (four vector registers) keep the loop from waiting on one dependency
// chain of compare-and-select.
template <typename Bits, int kLanes, typename Load>
Bits abs_max_lanes(int64_t n, Load load) {
  Bits m[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const Bits b = load(i + j);
      m[j] = b > m[j] ? b : m[j];
    }
  }
  Bits r = 0;
  for (; i < n; ++i) {
    const Bits b = load(i);
    r = b > r ? b : r;
  }
  for (int j = 0; j < kLanes; ++j) r = m[j] > r ? m[j] : r;
  return r;
}

uint32_t abs_max_bits_run(const float* x, int64_t n) {
  return static_cast<uint32_t>(abs_max_lanes<int32_t, 16>(n, [x](int64_t i) {
    uint32_t u;
    std::memcpy(&u, x + i, sizeof(u));
    return static_cast<int32_t>(u & 0x7FFFFFFFu);
  }));
}

// 16-bit floats: the same integer max on the 16-bit patterns (magnitude in the low 15 bits,
// NaN above inf in both fp16 and bf16), widened to the fp32 abs_bits at the end.
template <typename T>
uint32_t abs_max_bits_run(const T* x, int64_t n) {
  const int16_t m = abs_max_lanes<int16_t, 32>(n, [x](int64_t i) { return static_cast<int16_t>(x[i].bits & 0x7FFFu); });
  return abs_bits(to_float(T{static_cast<uint16_t>(m)}));
}

// Channel fastest in memory (channel_stride 1): one row of channels [c, c + n) at a time.
template <typename T>
void abs_max_bits_row(const T* x, int64_t n, uint32_t* acc) {
  for (int64_t j = 0; j < n; ++j) {
    const int32_t b = static_cast<int32_t>(abs_bits(to_float(x[j])));
    const int32_t a = static_cast<int32_t>(acc[j]);
    acc[j] = static_cast<uint32_t>(b > a ? b : a);
  }
}

// Memory order, stepping the channel from run to run (no division per run: runs can be a
// few elements long, e.g. the 3x3 kernel positions of axis 1 of a conv weight).
template <typename T>
void channel_abs_max_typed(const T* x, int64_t channels, int64_t stride, int64_t begin, int64_t end,
                           uint32_t* acc) {
  if (stride == 1 && channels > 1) {
    for (int64_t e = begin, c = begin % channels; e < end; c = 0) {
      const int64_t n = std::min(channels - c, end - e);
      abs_max_bits_row(x + e, n, acc + c);
      e += n;
    }
    return;
  }
  int64_t run = begin / stride;
  int64_t c = run % channels;
  for (int64_t e = begin, run_end = (run + 1) * stride; e < end; run_end += stride) {
    const int64_t n = std::min(run_end, end) - e;
    acc[c] = std::max(acc[c], abs_max_bits_run(x + e, n));
    e += n;
    if (++c == channels) c = 0;
  }
}

// The scales of `channels` contiguous runs of `len` elements each (one tile): the abs-max of
// a run as an integer max over the |x| bits (abs_max_bits.h, inlined into each clone), then
// weight_scale.
template <typename T>
FQ_WEIGHT_CLONES void tile_scales(const T* __restrict__ x, int64_t channels, int64_t len, float half, float eps,
                                  DType scale_dtype, float* __restrict__ scale) {
  for (int64_t c = 0; c < channels; ++c) {
    const uint32_t bits = abs_max_bits(x + c * len, len);
    scale[c] = weight_scale(bits_float(bits), half, eps, scale_dtype);
  }
}

// The quant-dequant of one tile: fake_quant_per_channel_cpu's values with zero points 0
// (quant_dequant with the same arguments; a channel whose scale is out of contract gets the
// NaN poison and mask 0, as there), the element loop free of control flow so that it
// vectorises, and the in-range flags packed 8 at a time. The tile starts on a mask byte.
template <typename T, Rounding kMode>
FQ_WEIGHT_CLONES void tile_quant(const T* __restrict__ x, T* __restrict__ y, uint8_t* __restrict__ flags,
                                 uint8_t* __restrict__ mask, int64_t channels, int64_t len,
                                 const float* __restrict__ scale, int32_t quant_min, int32_t quant_max) {
  const float qmin = static_cast<float>(quant_min);
  const float qmax = static_cast<float>(quant_max);
  for (int64_t c = 0; c < channels; ++c) {
    const float s = scale[c];
    const T* __restrict__ xc = x + c * len;
    T* __restrict__ yc = y + c * len;
    uint8_t* __restrict__ fc = flags + c * len;
    if (!qparams_valid(s, 0, quant_min, quant_max)) {
      const T poison = from_float<T>(bits_float(0x7FC00000u));
      for (int64_t i = 0; i < len; ++i) yc[i] = poison, fc[i] = 0;
      continue;
    }
    const float inv = inverse_scale(s);
    for (int64_t i = 0; i < len; ++i) {
      const QuantDequantResult r = quant_dequant(to_float(xc[i]), s, inv, 0.0f, qmin, qmax, kMode);
      yc[i] = from_float<T>(r.value);
      fc[i] = static_cast<uint8_t>(r.in_range);
    }
  }
  if (mask == nullptr) return;
  const int64_t n = channels * len;
  const int64_t full = n / kMaskGroup;
  for (int64_t g = 0; g < full; ++g) mask[g] = pack_bits(flags + g * kMaskGroup);
  if (n % kMaskGroup != 0) {  // the tensor's last, partial byte: padding bits 0
    std::memset(flags + n, 0, static_cast<size_t>(kMaskGroup - n % kMaskGroup));
    mask[full] = pack_bits(flags + full * kMaskGroup);
  }
}

}  // namespace

std::string check_symmetric_quant_range(int64_t quant_min, int64_t quant_max) {
  if (quant_max >= 1 && (quant_min == -quant_max || quant_min == -quant_max - 1)) return {};
  std::ostringstream os;
  os << "quant_min and quant_max must describe a symmetric signed range with quant_max >= 1: "
        "quant_min == -quant_max (narrow, e.g. [-127, 127]) or quant_min == -quant_max - 1 (full, "
        "e.g. [-128, 127]), got ["
     << quant_min << ", " << quant_max << "]";
  return os.str();
}

std::string check_eps_value(double eps) {
  const float e = static_cast<float>(eps);
  if (e == e && e >= 1.17549435e-38f && e <= 3.40282347e+38f) return {};
  std::ostringstream os;
  os << "eps must be finite and >= 1.17549435e-38 (the smallest normal float32) as a float32, got " << eps;
  return os.str();
}

PerChannelQParams weight_quant_qparams(const WeightAbsMaxArgs& a, const int32_t* zeros) {
  PerChannelQParams qp;
  qp.scale = a.scale;
  qp.zero_point = zeros;
  qp.zero_point_type = ZeroPointType::kInt32;
  qp.channels = std::max<int64_t>(a.channels, 1);
  qp.channel_stride = a.channels > 1 ? a.channel_stride : 1;
  qp.quant_min = a.quant_min;
  qp.quant_max = a.quant_max;
  qp.rounding = a.rounding;
  return qp;
}

FakeQuantArgs weight_quant_fake_quant_args(const WeightAbsMaxArgs& a) {
  return FakeQuantArgs{a.dtype, a.weight, a.output, a.mask, a.numel};
}

void fake_quant_weight_abs_max_cpu_blocks(const WeightAbsMaxArgs& a, int64_t block_begin, int64_t block_end) {
  check_deterministic_rounding(a);
  const int64_t channels = a.channels;
  const int64_t len = weight_channel_length(a);
  const int64_t per_block = weight_channels_per_block(len);
  const int64_t c_begin = std::min(block_begin * per_block, channels);
  const int64_t c_end = std::min(block_end * per_block, channels);
  if (c_begin >= c_end) return;
  const float half = symmetric_half_range(a.quant_min, a.quant_max);
  // Channels per tile: whole blocks, at least one, about kTileElements elements.
  const int64_t tile_blocks = std::max<int64_t>(1, kTileElements / std::max<int64_t>(per_block * len, 1));
  const int64_t tile_channels = tile_blocks * per_block;
  // One in-range flag per element of a tile, plus the padding of a last partial mask byte.
  std::vector<uint8_t> flags(static_cast<size_t>(std::min(tile_channels, c_end - c_begin) * len + kMaskGroup));

  dispatch_dtype(a.dtype, [&](auto t) {
    using T = typename decltype(t)::type;
    const T* x = static_cast<const T*>(a.weight);
    T* y = static_cast<T*>(a.output);
    for (int64_t c0 = c_begin; c0 < c_end; c0 += tile_channels) {
      const int64_t c1 = std::min(c0 + tile_channels, c_end);
      const int64_t offset = c0 * len;
      tile_scales(x + offset, c1 - c0, len, half, a.eps, a.scale_dtype, a.scale + c0);
      // offset is a multiple of 8 (c0 is a multiple of per_block), so the tile's mask starts
      // on a byte boundary.
      uint8_t* mask = a.mask != nullptr ? a.mask + offset / kMaskGroup : nullptr;
      if (a.rounding == Rounding::kHalfAway) {
        tile_quant<T, Rounding::kHalfAway>(x + offset, y + offset, flags.data(), mask, c1 - c0, len, a.scale + c0,
                                           a.quant_min, a.quant_max);
      } else {
        tile_quant<T, Rounding::kHalfEven>(x + offset, y + offset, flags.data(), mask, c1 - c0, len, a.scale + c0,
                                           a.quant_min, a.quant_max);
      }
    }
  });
}

void channel_abs_max_bits_cpu(const WeightAbsMaxArgs& a, int64_t begin, int64_t end, uint32_t* acc) {
  end = std::min(end, a.numel);
  if (begin >= end) return;
  const int64_t channels = std::max<int64_t>(a.channels, 1);
  const int64_t stride = a.channels > 1 ? a.channel_stride : a.numel;
  dispatch_dtype(a.dtype, [&](auto t) {
    using T = typename decltype(t)::type;
    channel_abs_max_typed(static_cast<const T*>(a.weight), channels, stride, begin, end, acc);
  });
}

void weight_scales_from_abs_max_bits(const WeightAbsMaxArgs& a, const uint32_t* acc) {
  const float half = symmetric_half_range(a.quant_min, a.quant_max);
  for (int64_t c = 0; c < a.channels; ++c) a.scale[c] = weight_scale(bits_float(acc[c]), half, a.eps, a.scale_dtype);
}

void fake_quant_weight_abs_max_cpu(const WeightAbsMaxArgs& a) {
  check_deterministic_rounding(a);
  if (a.channels <= 0) return;
  if (weight_channels_contiguous(a)) {
    const int64_t per_block = weight_channels_per_block(weight_channel_length(a));
    fake_quant_weight_abs_max_cpu_blocks(a, 0, (a.channels + per_block - 1) / per_block);
    return;
  }
  std::vector<uint32_t> acc(static_cast<size_t>(a.channels), 0u);
  channel_abs_max_bits_cpu(a, 0, a.numel, acc.data());
  weight_scales_from_abs_max_bits(a, acc.data());
  const std::vector<int32_t> zeros(static_cast<size_t>(a.channels), 0);
  fake_quant_per_channel_cpu(weight_quant_fake_quant_args(a), weight_quant_qparams(a, zeros.data()));
}

}  // namespace fakequant
