// CPU reference of per-tensor and per-channel quant-dequant and the masked (clipped-STE)
// backward.
//
// Work is addressed in groups of 8 elements, one mask byte each, so that callers can run
// disjoint group ranges on different threads without sharing a mask byte. Inside a range,
// elements are processed in blocks: a branch-free elementwise loop that the compiler
// vectorises (values out, one in-range byte per element to a stack buffer), then a
// packing loop that turns 8 such bytes into one mask byte with a multiply. Stochastic
// rounding first fills a block-sized buffer with the Philox words of the block's elements
// (one Philox call per 4 elements), which the elementwise loop then reads like an input.
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "fakequant/dispatch.h"
#include "fakequant/fake_quant.h"
#include "pack_bits.h"

namespace fakequant {
namespace {

constexpr int64_t kBlockGroups = 64;  // 512 elements per block
constexpr int64_t kBlock = kBlockGroups * kMaskGroup;

// Quantization parameters of one channel (or of the whole tensor), precomputed once.
struct QParamTable {
  std::vector<float> scale, inv, zero_point;
  std::vector<uint8_t> valid;
  explicit QParamTable(int64_t n) : scale(n), inv(n), zero_point(n), valid(n) {}
  void set(int64_t c, float s, float zp, bool ok) {
    scale[c] = s, inv[c] = inverse_scale(s), zero_point[c] = zp, valid[c] = ok ? 1 : 0;
  }
};

// The qparams in force from one element on: per-tensor ops have one segment; per-channel
// ops one per run of channel_stride elements of one channel, or - when channel_stride is 1
// (the channel varies fastest, e.g. channels_last along C) - one per row of channels, with
// the table read element by element.
struct Segment {
  const float* scale;
  const float* inv;
  const float* zero_point;
  const uint8_t* valid;
  bool per_element;  // entry k - start for element k, else entry 0 throughout
  int64_t end;       // first element (memory offset) the segment does not cover
};

// The seed of stochastic rounding, as the Philox key and counter offset.
struct Seed {
  uint64_t key = 0;
  uint64_t offset = 0;
};

// The Philox words of quads [first_quad, first_quad + quads) (element e takes word e % 4 of
// quad e / 4) into words[4 * (quad - first_quad) + j]: stochastic_words, evaluated round by
// round across the block (structure of arrays) so that the compiler vectorises the rounds.
// On x86-64 an AVX2 clone (8 lanes of 32 x 32 -> 64-bit products instead of SSE2's 2-4) is
// picked at load time where the CPU has it; integer arithmetic, so every clone gives the same
// words.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define FQ_PHILOX_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FQ_PHILOX_CLONES
#endif
constexpr int64_t kBlockQuads = kBlock / 4;
FQ_PHILOX_CLONES void philox_block(uint32_t* __restrict__ words, int64_t first_quad, int64_t quads, const Seed& seed) {
  alignas(64) uint32_t c0[kBlockQuads], c1[kBlockQuads], c2[kBlockQuads], c3[kBlockQuads];
  const uint32_t k0 = static_cast<uint32_t>(seed.key), k1 = static_cast<uint32_t>(seed.key >> 32);
  const uint32_t o0 = static_cast<uint32_t>(seed.offset), o1 = static_cast<uint32_t>(seed.offset >> 32);
  for (int64_t q = 0; q < kBlockQuads; ++q) {
    const uint64_t quad = static_cast<uint64_t>(first_quad + q);
    c0[q] = static_cast<uint32_t>(quad), c1[q] = static_cast<uint32_t>(quad >> 32), c2[q] = o0, c3[q] = o1;
  }
  for (int round = 0; round < kPhiloxRounds; ++round) {
    const uint32_t rk0 = philox_round_key0(k0, round), rk1 = philox_round_key1(k1, round);
    for (int64_t q = 0; q < kBlockQuads; ++q) philox_round(c0[q], c1[q], c2[q], c3[q], rk0, rk1);
  }
  for (int64_t q = 0; q < quads; ++q) {
    words[4 * q] = c0[q], words[4 * q + 1] = c1[q], words[4 * q + 2] = c2[q], words[4 * q + 3] = c3[q];
  }
}

// `random[k]` is element k's Philox word (read by Rounding::kStochastic only).
template <typename T, Rounding kMode, bool kFloatZeroPoint, bool kPerElement>
inline void fake_quant_segment(const T* __restrict__ x, T* __restrict__ y, uint8_t* __restrict__ flags,
                               const uint32_t* __restrict__ random, int64_t count, const Segment& seg, float qmin,
                               float qmax) {
  const float poison = bits_float(0x7FC00000u);
  for (int64_t k = 0; k < count; ++k) {
    const int64_t t = kPerElement ? k : 0;
    const float s = seg.scale[t], inv = seg.inv[t], zp = seg.zero_point[t];
    const uint8_t keep = seg.valid[t];
    const uint32_t bits = kMode == Rounding::kStochastic ? random[k] : 0u;
    const QuantDequantResult r = kFloatZeroPoint
                                     ? quant_dequant_float_zp(to_float(x[k]), s, inv, zp, qmin, qmax, kMode, bits)
                                     : quant_dequant(to_float(x[k]), s, inv, zp, qmin, qmax, kMode, bits);
    y[k] = from_float<T>(keep ? r.value : poison);
    flags[k] = static_cast<uint8_t>(r.in_range) & keep;
  }
}

template <typename T, Rounding kMode, bool kFloatZeroPoint, typename SegmentAt>
void fake_quant_groups(const T* __restrict__ in, T* __restrict__ out, uint8_t* __restrict__ mask,
                       int64_t numel, int32_t quant_min, int32_t quant_max, int64_t group_begin,
                       int64_t group_end, Seed seed, SegmentAt segment_at) {
  const float qmin = static_cast<float>(quant_min);
  const float qmax = static_cast<float>(quant_max);

  alignas(64) uint8_t flags[kBlock];
  alignas(64) uint32_t random[kBlock];  // one Philox word per element
  static_assert(kBlock % 4 == 0, "blocks start on a Philox quad");
  for (int64_t g0 = group_begin; g0 < group_end; g0 += kBlockGroups) {
    const int64_t g1 = std::min(g0 + kBlockGroups, group_end);
    const int64_t begin = g0 * kMaskGroup;
    const int64_t len = std::min(g1 * kMaskGroup, numel) - begin;
    if constexpr (kMode == Rounding::kStochastic) philox_block(random, begin / 4, (len + 3) / 4, seed);
    for (int64_t i = 0; i < len;) {
      const Segment seg = segment_at(begin + i);
      const int64_t stop = std::min(len, seg.end - begin);
      if (seg.per_element) {
        fake_quant_segment<T, kMode, kFloatZeroPoint, true>(in + begin + i, out + begin + i, flags + i, random + i,
                                                            stop - i, seg, qmin, qmax);
      } else {
        fake_quant_segment<T, kMode, kFloatZeroPoint, false>(in + begin + i, out + begin + i, flags + i, random + i,
                                                             stop - i, seg, qmin, qmax);
      }
      i = stop;
    }
    if (mask == nullptr) continue;
    // Padding bits of the last, partial group are 0.
    std::memset(flags + len, 0, static_cast<size_t>((g1 - g0) * kMaskGroup - len));
    for (int64_t g = g0; g < g1; ++g) mask[g] = pack_bits(flags + (g - g0) * kMaskGroup);
  }
}

template <typename T, bool kFloatZeroPoint, typename SegmentAt>
void fake_quant_rounding_dispatch(const FakeQuantArgs& a, Rounding rounding, const int64_t* seed_ptr,
                                  int32_t quant_min, int32_t quant_max, int64_t group_begin, int64_t group_end,
                                  SegmentAt segment_at) {
  const T* in = static_cast<const T*>(a.input);
  T* out = static_cast<T*>(a.output);
  dispatch_rounding(rounding, [&](auto r) {
    constexpr Rounding kMode = decltype(r)::value;
    Seed seed{};
    if constexpr (kMode == Rounding::kStochastic) {
      if (seed_ptr == nullptr) throw std::invalid_argument("fakequant: stochastic rounding needs a seed");
      seed = Seed{static_cast<uint64_t>(seed_ptr[0]), static_cast<uint64_t>(seed_ptr[1])};
    }
    fake_quant_groups<T, kMode, kFloatZeroPoint>(in, out, a.mask, a.numel, quant_min, quant_max, group_begin,
                                                 group_end, seed, segment_at);
  });
}

template <bool kFloatZeroPoint, typename SegmentAt>
void fake_quant_dtype_dispatch(const FakeQuantArgs& a, Rounding rounding, const int64_t* seed, int32_t quant_min,
                               int32_t quant_max, int64_t group_begin, int64_t group_end, SegmentAt segment_at) {
  dispatch_dtype(a.dtype, [&](auto t) {
    fake_quant_rounding_dispatch<typename decltype(t)::type, kFloatZeroPoint>(a, rounding, seed, quant_min, quant_max,
                                                                              group_begin, group_end, segment_at);
  });
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

// The disabled op (qparams' `enabled` switch off): output = input, every mask bit set.
void pass_through_groups(const FakeQuantArgs& a, int64_t group_begin, int64_t group_end) {
  const int64_t elem = a.dtype == DType::kFloat32 ? 4 : 2;
  const int64_t begin = group_begin * kMaskGroup;
  const int64_t end = std::min(group_end * kMaskGroup, a.numel);
  std::memcpy(static_cast<char*>(a.output) + begin * elem, static_cast<const char*>(a.input) + begin * elem,
              static_cast<size_t>((end - begin) * elem));
  if (a.mask == nullptr) return;
  for (int64_t g = group_begin; g < group_end; ++g) {
    const int64_t valid = std::min<int64_t>(kMaskGroup, a.numel - g * kMaskGroup);
    a.mask[g] = static_cast<uint8_t>((1u << valid) - 1u);
  }
}

bool switched_off(const int64_t* enabled) { return enabled != nullptr && *enabled == 0; }

}  // namespace

void fake_quant_per_tensor_cpu_range(const FakeQuantArgs& a, const PerTensorQParams& qp,
                                     int64_t group_begin, int64_t group_end) {
  group_end = std::min(group_end, mask_bytes(a.numel));
  if (group_begin >= group_end) return;
  if (switched_off(qp.enabled)) return pass_through_groups(a, group_begin, group_end);
  QParamTable table(1);
  table.set(0, *qp.scale, static_cast<float>(*qp.zero_point),
            qparams_valid(*qp.scale, *qp.zero_point, qp.quant_min, qp.quant_max));
  const Segment whole{table.scale.data(), table.inv.data(), table.zero_point.data(), table.valid.data(), false,
                      a.numel};
  fake_quant_dtype_dispatch<false>(a, qp.rounding, qp.seed, qp.quant_min, qp.quant_max, group_begin, group_end,
                                   [&](int64_t) { return whole; });
}

void fake_quant_per_tensor_cpu(const FakeQuantArgs& a, const PerTensorQParams& qp) {
  fake_quant_per_tensor_cpu_range(a, qp, 0, mask_bytes(a.numel));
}

void fake_quant_per_channel_cpu_range(const FakeQuantArgs& a, const PerChannelQParams& qp,
                                      int64_t group_begin, int64_t group_end) {
  group_end = std::min(group_end, mask_bytes(a.numel));
  if (group_begin >= group_end) return;
  if (switched_off(qp.enabled)) return pass_through_groups(a, group_begin, group_end);
  const int64_t channels = qp.channels;
  const int64_t stride = qp.channel_stride;
  const bool float_zp = qp.zero_point_type == ZeroPointType::kFloat32;
  QParamTable t(channels);
  for (int64_t c = 0; c < channels; ++c) {
    const float s = qp.scale[c];
    if (float_zp) {
      const float z = static_cast<const float*>(qp.zero_point)[c];
      t.set(c, s, z, qparams_valid_float_zp(s, z, qp.quant_min, qp.quant_max));
    } else {
      const int32_t z = static_cast<const int32_t*>(qp.zero_point)[c];
      t.set(c, s, static_cast<float>(z), qparams_valid(s, z, qp.quant_min, qp.quant_max));
    }
  }
  auto segment_at = [&](int64_t e) {
    const int64_t run = e / stride;
    const int64_t c = run % channels;
    const bool per_element = stride == 1 && channels > 1;
    return Segment{&t.scale[c], &t.inv[c], &t.zero_point[c], &t.valid[c], per_element,
                   per_element ? e + (channels - c) : (run + 1) * stride};
  };
  if (float_zp) {
    fake_quant_dtype_dispatch<true>(a, qp.rounding, qp.seed, qp.quant_min, qp.quant_max, group_begin, group_end,
                                    segment_at);
  } else {
    fake_quant_dtype_dispatch<false>(a, qp.rounding, qp.seed, qp.quant_min, qp.quant_max, group_begin, group_end,
                                     segment_at);
  }
}

void fake_quant_per_channel_cpu(const FakeQuantArgs& a, const PerChannelQParams& qp) {
  fake_quant_per_channel_cpu_range(a, qp, 0, mask_bytes(a.numel));
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
