// Block-scaled fake quantization: the input, seen as a row-major [rows, cols] matrix, is cut
// into tiles of block_rows x block_cols elements (1 x 32 for MX, 1 x 16 or 16 x 16 for NVFP4,
// 1 x group for per-group int, 1 x cols for per-token int8 and per-row FP8, 128 x 128 for
// block FP8, the whole matrix for per-tensor FP8); each tile's statistics (abs-max, or min and
// max) give its scale by the rule of a reference (torchao, ModelOpt; docs/block-formats.md),
// and its elements are quant-dequantised to the format in the same pass, with the 1-bit
// clipped-STE mask. Tiles at the right and bottom edges may be partial.
//
// Rules that read a whole-tensor abs-max (NVFP4 with a tensor scale; a tile that covers the
// whole matrix) take it from `tensor_amax`, which block_tensor_amax_* fills first: two passes,
// no host synchronisation on the GPU. CPU reference here; the CUDA launcher is declared in
// <fakequant/cuda/block_quant.h>.
#pragma once

#include <cstdint>
#include <string>

#include "fakequant/fake_quant.h"
#include "fakequant/math/block.h"
#include "fakequant/weight_quant.h"

namespace fakequant {

enum class BlockScaleRule : int32_t {
  // Integer grids (format kInt), [quant_min, quant_max]:
  kIntAffine = 0,         // torchao choose_qparams_affine, asymmetric (PerToken): 0 in range
  kIntAffineFloatZp = 1,  // torchao per-group asymmetric (float-domain zero point, truncated)
  kIntModelOpt = 2,       // ModelOpt: scale quant_max / amax multiplies, amax <= 2^-24 -> zeros
  // FP8 (E4M3, E5M2):
  kFp8Torchao = 3,   // scale = amax / max in the input's dtype, x / scale
  kFp8ModelOpt = 4,  // scale = (1 / amax) * max, x * scale, back by * (1 / scale); amax <= 2^-24 -> 1
  // MX (any minifloat element), E8M0 scales:
  kMxFloor = 5,
  kMxCeil = 6,
  kMxEven = 7,
  kMxRceil = 8,
  // NVFP4 (E2M1 elements), E4M3 block scales, optional tensor scale amax / (448 * 6):
  kNvfp4Torchao = 9,    // block scale clamped to [2^-6, 448]
  kNvfp4ModelOpt = 10,  // no lower clamp; a total block scale below 1e-5 becomes 1.0
};

struct BlockQuantArgs {
  DType dtype = DType::kFloat32;
  const void* input = nullptr;
  void* output = nullptr;
  uint8_t* mask = nullptr;  // mask_bytes(rows * cols) bytes (bits past the last element: 0), or null
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t block_rows = 1;
  int64_t block_cols = 32;
  BlockFormat format = BlockFormat::kE2M1;
  BlockScaleRule rule = BlockScaleRule::kMxFloor;
  int32_t quant_min = -128;  // kInt only
  int32_t quant_max = 127;
  // The scale floor of the integer rules (torchao's eps); NaN means the rule's default:
  // finfo(dtype).smallest_normal for kIntAffine, 1e-6 for kIntAffineFloatZp.
  float eps = NAN;
  // kFp8Torchao: the abs-max is clamped to [amax_lower, amax_upper] first (torchao's
  // hp_value_lb / hp_value_ub); the defaults clamp nothing.
  float amax_lower = -INFINITY;
  float amax_upper = INFINITY;
  bool tensor_scale = false;  // NVFP4: two-level scaling with the tensor scale
  float* scale = nullptr;        // [grid_rows * grid_cols] (block_grid_*), written
  int32_t* zero_point = nullptr;  // [grid_rows * grid_cols], integer rules only (else null)
  float* tensor_amax = nullptr;  // [1], when block_quant_needs_tensor_amax: filled by pass 1
  Rounding rounding = Rounding::kHalfEven;
  const int64_t* seed = nullptr;  // [kSeedWords], Rounding::kStochastic only
};

inline int64_t block_grid_rows(const BlockQuantArgs& a) {
  return a.block_rows > 0 ? (a.rows + a.block_rows - 1) / a.block_rows : 0;
}
inline int64_t block_grid_cols(const BlockQuantArgs& a) {
  return a.block_cols > 0 ? (a.cols + a.block_cols - 1) / a.block_cols : 0;
}
inline bool block_covers_tensor(const BlockQuantArgs& a) { return a.block_rows >= a.rows && a.block_cols >= a.cols; }
inline bool block_rule_is_int(BlockScaleRule r) { return r <= BlockScaleRule::kIntModelOpt; }
inline bool block_rule_uses_min_max(BlockScaleRule r) {
  return r == BlockScaleRule::kIntAffine || r == BlockScaleRule::kIntAffineFloatZp;
}
inline bool block_quant_needs_tensor_amax(const BlockQuantArgs& a) {
  const bool nvfp4 = a.rule == BlockScaleRule::kNvfp4Torchao || a.rule == BlockScaleRule::kNvfp4ModelOpt;
  return (nvfp4 && a.tensor_scale) || (!block_rule_uses_min_max(a.rule) && block_covers_tensor(a));
}

// Everything a kernel needs that reads no tensor values: geometry, format/rule pairs, ranges,
// rounding and seed, the buffers present. Empty string when accepted, else a message naming
// the argument and what is accepted. The kernels assume it passed.
std::string check_block_quant_args(const BlockQuantArgs& a);

// "int" | "e4m3" | "e5m2" | "e3m2" | "e2m3" | "e2m1"; "int_affine" | "int_affine_float_zp" |
// "int_modelopt" | "fp8_torchao" | "fp8_modelopt" | "mx_floor" | "mx_ceil" | "mx_even" |
// "mx_rceil" | "nvfp4_torchao" | "nvfp4_modelopt". False (out untouched) for anything else.
bool parse_block_format(const std::string& name, BlockFormat* out);
bool parse_block_scale_rule(const std::string& name, BlockScaleRule* out);
constexpr const char* kAcceptedBlockFormats = "'int', 'e4m3', 'e5m2', 'e3m2', 'e2m3', 'e2m1'";
constexpr const char* kAcceptedBlockScaleRules =
    "'int_affine', 'int_affine_float_zp', 'int_modelopt', 'fp8_torchao', 'fp8_modelopt', 'mx_floor', "
    "'mx_ceil', 'mx_even', 'mx_rceil', 'nvfp4_torchao', 'nvfp4_modelopt'";

// One tile's statistics, as the references compute them on the input's dtype: amax = max |x|,
// lo = min x, hi = max x (each NaN when any element is NaN; exact, order-free).
struct BlockStats {
  float amax;
  float lo;
  float hi;
};

// The scale floor of an integer rule (BlockQuantArgs::eps, or the rule's default).
FQ_HD float block_int_eps(BlockScaleRule rule, float eps, DType dtype) {
  if (!is_nan(eps)) return eps;
  if (rule == BlockScaleRule::kIntAffineFloatZp) return 1e-6f;
  return dtype == DType::kFloat16 ? 6.103515625e-05f : 1.17549435e-38f;  // finfo(dtype).smallest_normal
}

FQ_HD float clamp_keep_nan(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

// The scale of both torchao int rules, in T: range / (quant_max - quant_min), with the rule's
// eps as its floor.
FQ_HD float block_int_scale(const BlockQuantArgs& a, float range, DType T) {
  const float levels = static_cast<float>(a.quant_max - a.quant_min);
  const float scale = round_to_dtype(round_to_dtype(range, T) / levels, T);
  const float eps = block_int_eps(a.rule, a.eps, T);
  return scale < eps ? round_to_dtype(eps, T) : scale;
}

// An int rule's transform from its scale and int32 zero point: block_element adds the zero point
// after rounding and subtracts it before scaling back, in T.
FQ_HD BlockTransform block_int_affine(float scale, int32_t zero_point, DType T) {
  BlockTransform t;
  t.scale = scale;
  t.zero_point = static_cast<float>(zero_point);
  t.affine = true;
  t.affine_dtype = static_cast<int32_t>(T);
  t.in_factor = 1.0f / scale;
  t.out_factor = scale;
  return t;
}

// The transform of one tile from its statistics (and the whole tensor's abs-max where the rule
// reads it), by the rule of its reference (docs/block-formats.md). "In T": the reference runs
// that tensor op on the input's dtype, so the float32 result is rounded to it.
FQ_HD BlockTransform block_transform(const BlockQuantArgs& a, const BlockStats& s, float tensor_amax, bool whole) {
  BlockTransform t;
  const MiniFloat mf = minifloat_of(a.format);
  const DType T = a.dtype;
  const float amax = whole ? tensor_amax : s.amax;
  switch (a.rule) {
    case BlockScaleRule::kIntAffine: {  // torchao choose_qparams_affine, preserve_zero
      const float lo = s.lo < 0.0f ? s.lo : (is_nan(s.lo) ? s.lo : 0.0f);
      const float hi = s.hi > 0.0f ? s.hi : (is_nan(s.hi) ? s.hi : 0.0f);
      const float scale = block_int_scale(a, hi - lo, T);
      float zp = static_cast<float>(a.quant_min) - round_half_even(round_to_dtype(lo / scale, T));
      zp = clamp_keep_nan(zp, static_cast<float>(a.quant_min), static_cast<float>(a.quant_max));
      return block_int_affine(scale, trunc_to_int32(zp), T);  // the int32 zero point (NaN: INT32_MIN)
    }
    case BlockScaleRule::kIntAffineFloatZp: {  // torchao _choose_qparams_affine_tinygemm
      const float scale = block_int_scale(a, s.hi - s.lo, T);
      const float mid = (static_cast<float>(a.quant_max - a.quant_min) + 1.0f) * 0.5f;
      const float zp_float = round_to_dtype(s.lo + round_to_dtype(scale * mid, T), T);
      return block_int_affine(scale, trunc_to_int32(zp_float), T);  // the conversion to an int32 zero point
    }
    case BlockScaleRule::kIntModelOpt: {  // ModelOpt _tensor_quant
      // amax <= 2^-24: the quantising scale is 0 (every element rounds to a zero of its sign)
      // and the one divided by afterwards is 1.
      const bool zero = amax <= 5.9604644775390625e-8f;
      const float scale = static_cast<float>(a.quant_max) / amax;
      t.scale = zero ? 1.0f : scale;
      t.in_factor = zero ? 0.0f : scale;
      t.out_factor = t.scale;
      t.out_divide = true;
      return t;
    }
    case BlockScaleRule::kFp8Torchao: {
      const float clamped = round_to_dtype(clamp_keep_nan(amax, a.amax_lower, a.amax_upper), T);
      const float scale = round_to_dtype(clamped / mf.max, T);
      t.scale = scale;
      t.in_factor = scale;
      t.in_divide = true;
      t.out_factor = scale;
      return t;
    }
    case BlockScaleRule::kFp8ModelOpt: {  // ModelOpt _fp8_eager
      // amax <= 2^-24 counts as 1 (ModelOpt's safe_amax). `448.0 / safe_amax` with a Python
      // scalar is torch's reciprocal-then-product (Tensor.__rtruediv__), so two roundings;
      // back by the float32 reciprocal of the scale.
      const float safe_amax = amax <= 5.9604644775390625e-8f ? 1.0f : amax;
      const float scale = mul_rn(1.0f / safe_amax, mf.max);
      t.scale = scale;
      t.in_factor = scale;
      t.out_factor = 1.0f / scale;
      return t;
    }
    case BlockScaleRule::kMxFloor:
    case BlockScaleRule::kMxCeil:
    case BlockScaleRule::kMxEven:
    case BlockScaleRule::kMxRceil: {
      const MxScaleMode mode = static_cast<MxScaleMode>(static_cast<int32_t>(a.rule) - 5);
      const uint32_t e = mx_scale_exponent(amax, mf, mode);
      t.scale = e8m0_value(e);
      t.out_factor = t.scale;
      if (mode == MxScaleMode::kRceil) {
        // torchao's reciprocal: NaN for 255, 2^-127 for 254, 1.0 for 0, else 2^(127 - e).
        const float rcp = e == 0u ? 1.0f : pow2_normal(127 - static_cast<int32_t>(e));
        t.in_factor = e == 255u ? t.scale : (e == 254u ? e8m0_value(0u) : rcp);
      } else {
        const float divisor = bits_float(e << 23);  // 255 gives inf: finite elements become 0
        t.in_factor = divisor < 1.17549435e-38f ? 1.17549435e-38f : divisor;
        t.in_divide = true;
      }
      return t;
    }
    case BlockScaleRule::kNvfp4Torchao: {
      const MiniFloat e4m3 = minifloat_of(BlockFormat::kE4M3);
      const float block_scale = s.amax / 6.0f;
      if (a.tensor_scale) {
        const float ts = tensor_amax / 2688.0f;  // amax / (448 * 6)
        const float e4 =
            round_minifloat(clamp_keep_nan(block_scale / ts, 0.015625f, 448.0f), e4m3, Rounding::kHalfEven);
        t.scale = e4;
        t.in_factor = (1.0f / ts) / e4;
        t.out_factor = ts * e4;
      } else {
        const float e4 = round_minifloat(clamp_keep_nan(block_scale, 0.015625f, 448.0f), e4m3, Rounding::kHalfEven);
        t.scale = e4;
        t.in_factor = 1.0f / e4;
        t.out_factor = e4;
      }
      return t;
    }
    case BlockScaleRule::kNvfp4ModelOpt: {  // ModelOpt fp4_fake_quant_block
      // The E4M3 block scale of amax / (6 * ts) (a zero tensor scale divides as 1e-12), times
      // ts, is what the elements are divided by and multiplied back with; where that product
      // is below 1e-5 (an E4M3 scale that rounded to 0, a tiny tensor) it is 1.0 instead.
      // A NaN product stays NaN (ModelOpt's kernel leaves NaN undefined).
      const MiniFloat e4m3 = minifloat_of(BlockFormat::kE4M3);
      const float ts = a.tensor_scale ? tensor_amax / 2688.0f : 1.0f;
      const float ts_safe = ts > 0.0f ? ts : 1e-12f;
      const float e4 = round_minifloat(s.amax / (6.0f * ts_safe), e4m3, Rounding::kHalfEven);
      const float product = mul_rn(e4, ts);
      const float factor = product < 1e-5f ? 1.0f : product;
      t.scale = e4;
      t.in_factor = factor;
      t.in_divide = true;
      t.out_factor = factor;
      return t;
    }
  }
  return t;
}

// --- CPU reference --------------------------------------------------------------------
// Pass 1 where needed (block_quant_needs_tensor_amax): the abs-max bits (abs_bits) of the
// elements [begin, end) in memory order; merge partial results with a max, then
// *a.tensor_amax = bits_float(merged).
uint32_t block_abs_max_bits_cpu(const BlockQuantArgs& a, int64_t begin, int64_t end);

// Pass 2 over the bands [band_begin, band_end): band b is the tile row b (rows
// [b * block_rows, (b + 1) * block_rows)). Chunks of block_bands_per_chunk(a) bands start on
// mask byte boundaries, so disjoint chunk ranges may run on different threads.
int64_t block_bands_per_chunk(const BlockQuantArgs& a);
void block_quant_cpu_bands(const BlockQuantArgs& a, int64_t band_begin, int64_t band_end);

// block_quant_cpu_bands takes the row fast path (kernels/cpu/block_quant_rows.cpp: the
// format, scaling directions and dtype as template arguments, a vectorised element loop, the
// mask packed 8 bits at a time) when block_quant_rows_applies: 1-row tiles of a multiple of 8
// elements dividing the row, rounding half to even. Otherwise, and always in
// block_quant_cpu_bands_generic, one element at a time (the reference the fast path is tested
// against, bit for bit).
bool block_quant_rows_applies(const BlockQuantArgs& a);
void block_quant_cpu_rows(const BlockQuantArgs& a, int64_t row_begin, int64_t row_end);
void block_quant_cpu_bands_generic(const BlockQuantArgs& a, int64_t band_begin, int64_t band_end);

// Both passes on the calling thread. Throws std::invalid_argument when
// check_block_quant_args rejects the arguments (nothing written).
void block_quant_cpu(const BlockQuantArgs& a);

}  // namespace fakequant
