// CPU reference of block-scaled fake quantization (fakequant/block_quant.h).
//
// A band is one row of tiles. Each tile is reduced (abs-max as an integer max over abs_bits,
// min and max as float comparisons that keep NaN: exact and order-free), its transform
// computed by block_transform, and its elements quant-dequantised by block_element, the same
// scalar functions the CUDA kernel calls.
#include <algorithm>
#include <cstdint>
#include <sstream>
#include <stdexcept>

#include "fakequant/block_quant.h"
#include "fakequant/dispatch.h"

namespace fakequant {
namespace {

struct FormatName {
  const char* name;
  BlockFormat format;
};
constexpr FormatName kFormats[] = {{"int", BlockFormat::kInt},   {"e4m3", BlockFormat::kE4M3},
                                   {"e5m2", BlockFormat::kE5M2}, {"e3m2", BlockFormat::kE3M2},
                                   {"e2m3", BlockFormat::kE2M3}, {"e2m1", BlockFormat::kE2M1}};

struct RuleName {
  const char* name;
  BlockScaleRule rule;
};
constexpr RuleName kRules[] = {
    {"int_affine", BlockScaleRule::kIntAffine},       {"int_affine_float_zp", BlockScaleRule::kIntAffineFloatZp},
    {"int_modelopt", BlockScaleRule::kIntModelOpt},   {"fp8_torchao", BlockScaleRule::kFp8Torchao},
    {"fp8_modelopt", BlockScaleRule::kFp8ModelOpt},   {"mx_floor", BlockScaleRule::kMxFloor},
    {"mx_ceil", BlockScaleRule::kMxCeil},             {"mx_even", BlockScaleRule::kMxEven},
    {"mx_rceil", BlockScaleRule::kMxRceil},           {"nvfp4_torchao", BlockScaleRule::kNvfp4Torchao},
    {"nvfp4_modelopt", BlockScaleRule::kNvfp4ModelOpt}};

const char* rule_name(BlockScaleRule r) {
  for (const RuleName& n : kRules) {
    if (n.rule == r) return n.name;
  }
  return "?";
}

// Which element formats a rule accepts.
bool rule_accepts(BlockScaleRule r, BlockFormat f) {
  if (block_rule_is_int(r)) return f == BlockFormat::kInt;
  if (r == BlockScaleRule::kFp8Torchao || r == BlockScaleRule::kFp8ModelOpt) {
    return f == BlockFormat::kE4M3 || f == BlockFormat::kE5M2;
  }
  if (r == BlockScaleRule::kNvfp4Torchao || r == BlockScaleRule::kNvfp4ModelOpt) return f == BlockFormat::kE2M1;
  return f != BlockFormat::kInt;  // MX: any minifloat
}

template <typename T>
BlockStats tile_stats(const T* x, int64_t cols, int64_t r0, int64_t r1, int64_t c0, int64_t c1, bool min_max) {
  uint32_t amax_bits = 0;
  float lo = INFINITY;
  float hi = -INFINITY;
  bool nan = false;
  for (int64_t r = r0; r < r1; ++r) {
    const T* row = x + r * cols;
    for (int64_t c = c0; c < c1; ++c) {
      const float v = to_float(row[c]);
      const uint32_t b = abs_bits(v);
      amax_bits = b > amax_bits ? b : amax_bits;
      if (min_max) {
        nan |= is_nan(v);
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
      }
    }
  }
  const float qnan = bits_float(0x7FC00000u);
  const float amax = amax_bits > 0x7F800000u ? qnan : bits_float(amax_bits);
  return {amax, nan ? qnan : lo, nan ? qnan : hi};
}

void set_mask_bit(uint8_t* mask, int64_t i, bool on) {
  const uint8_t bit = static_cast<uint8_t>(1u << (i % kMaskGroup));
  if (on) {
    mask[i / kMaskGroup] |= bit;
  } else {
    mask[i / kMaskGroup] &= static_cast<uint8_t>(~bit);
  }
}

template <typename T>
void quant_bands(const BlockQuantArgs& a, int64_t band_begin, int64_t band_end) {
  const T* x = static_cast<const T*>(a.input);
  T* y = static_cast<T*>(a.output);
  const int64_t gcols = block_grid_cols(a);
  const bool whole = block_covers_tensor(a);
  const float tensor_amax = a.tensor_amax != nullptr ? *a.tensor_amax : 0.0f;
  const bool min_max = block_rule_uses_min_max(a.rule);
  const MiniFloat mf = minifloat_of(a.format);
  const float qmin = static_cast<float>(a.quant_min);
  const float qmax = static_cast<float>(a.quant_max);
  const bool stochastic = a.rounding == Rounding::kStochastic;
  const uint64_t key = stochastic ? static_cast<uint64_t>(a.seed[0]) : 0;
  const uint64_t counter = stochastic ? static_cast<uint64_t>(a.seed[1]) : 0;
  for (int64_t band = band_begin; band < band_end; ++band) {
    const int64_t r0 = band * a.block_rows;
    const int64_t r1 = std::min(r0 + a.block_rows, a.rows);
    for (int64_t g = 0; g < gcols; ++g) {
      const int64_t c0 = g * a.block_cols;
      const int64_t c1 = std::min(c0 + a.block_cols, a.cols);
      const BlockStats s = tile_stats(x, a.cols, r0, r1, c0, c1, min_max);
      const BlockTransform t = block_transform(a, s, tensor_amax, whole);
      const int64_t tile = band * gcols + g;
      a.scale[tile] = t.scale;
      if (a.zero_point != nullptr) a.zero_point[tile] = static_cast<int32_t>(t.zero_point);
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = c0; c < c1; ++c) {
          const int64_t i = r * a.cols + c;
          const uint32_t random =
              stochastic ? stochastic_words(static_cast<uint64_t>(i) / 4, key, counter).v[i % 4] : 0u;
          const BlockElementResult e = block_element(to_float(x[i]), t, a.format, mf, qmin, qmax, a.rounding, random);
          y[i] = from_float<T>(e.value);
          if (a.mask != nullptr) set_mask_bit(a.mask, i, e.in_range);
        }
      }
    }
  }
}

}  // namespace

bool parse_block_format(const std::string& name, BlockFormat* out) {
  for (const FormatName& n : kFormats) {
    if (name == n.name) {
      *out = n.format;
      return true;
    }
  }
  return false;
}

bool parse_block_scale_rule(const std::string& name, BlockScaleRule* out) {
  for (const RuleName& n : kRules) {
    if (name == n.name) {
      *out = n.rule;
      return true;
    }
  }
  return false;
}

std::string check_block_quant_args(const BlockQuantArgs& a) {
  std::ostringstream os;
  if (a.rows < 0 || a.cols < 0) {
    os << "rows and cols must be >= 0, got " << a.rows << " x " << a.cols;
  } else if (a.cols > 0 && a.rows > INT64_MAX / a.cols) {
    os << "rows * cols must fit in int64, got " << a.rows << " x " << a.cols;
  } else if (a.dtype != DType::kFloat32 && a.dtype != DType::kFloat16 && a.dtype != DType::kBFloat16) {
    os << "dtype must be float32, float16 or bfloat16, got value " << static_cast<int32_t>(a.dtype);
  } else if (a.rounding != Rounding::kHalfEven && a.rounding != Rounding::kHalfAway &&
             a.rounding != Rounding::kStochastic) {
    os << "rounding must be one of " << kAcceptedRoundings << ", got value " << static_cast<int32_t>(a.rounding);
  } else if (a.block_rows < 1 || a.block_cols < 1) {
    os << "block_rows and block_cols must be >= 1, got " << a.block_rows << " x " << a.block_cols;
  } else if (static_cast<int32_t>(a.rule) < 0 || a.rule > BlockScaleRule::kNvfp4ModelOpt) {
    os << "scale_rule must be one of " << kAcceptedBlockScaleRules;
  } else if (static_cast<int32_t>(a.format) < 0 || a.format > BlockFormat::kE2M1) {
    os << "format must be one of " << kAcceptedBlockFormats;
  } else if (!rule_accepts(a.rule, a.format)) {
    os << "scale_rule '" << rule_name(a.rule) << "' does not take format '" << kFormats[static_cast<int>(a.format)].name
       << "': int rules take 'int', fp8 rules 'e4m3' or 'e5m2', nvfp4 rules 'e2m1', mx rules any float format";
  } else if (block_rule_is_int(a.rule) && !check_quant_range(a.quant_min, a.quant_max).empty()) {
    os << check_quant_range(a.quant_min, a.quant_max);
  } else if (a.rule == BlockScaleRule::kIntModelOpt && !check_symmetric_quant_range(a.quant_min, a.quant_max).empty()) {
    os << check_symmetric_quant_range(a.quant_min, a.quant_max);
  } else if (block_rule_is_int(a.rule) && !is_nan(a.eps) && !check_eps_value(a.eps).empty()) {
    os << check_eps_value(a.eps);
  } else if (!(a.amax_lower <= a.amax_upper)) {
    os << "amax_lower must be <= amax_upper, got " << a.amax_lower << " and " << a.amax_upper;
  } else if (a.rounding == Rounding::kStochastic && a.seed == nullptr) {
    os << "rounding 'stochastic' needs a seed";
  } else if (a.rounding == Rounding::kStochastic && block_rule_is_int(a.rule)) {
    os << "rounding must be 'half_even' for the int rules (their references round half to even), got 'stochastic'";
  } else if (a.rounding == Rounding::kHalfAway && block_rule_is_int(a.rule)) {
    os << "rounding must be 'half_even' for the int rules (their references round half to even), got 'half_away'";
  } else if (a.rows * a.cols > 0 && (a.input == nullptr || a.output == nullptr || a.scale == nullptr)) {
    os << "input, output and scale must be given";
  } else if (a.rows * a.cols > 0 && block_quant_needs_tensor_amax(a) && a.tensor_amax == nullptr) {
    os << "this rule and block shape read the tensor's abs-max: tensor_amax must be given";
  }
  return os.str();
}

uint32_t block_abs_max_bits_cpu(const BlockQuantArgs& a, int64_t begin, int64_t end) {
  end = std::min(end, a.rows * a.cols);
  uint32_t m = 0;
  dispatch_dtype(a.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* x = static_cast<const T*>(a.input);
    for (int64_t i = begin; i < end; ++i) {
      const uint32_t b = abs_bits(to_float(x[i]));
      m = b > m ? b : m;
    }
  });
  return m;
}

int64_t block_bands_per_chunk(const BlockQuantArgs& a) {
  // Bands of block_rows * cols elements; the smallest count whose elements fill whole mask
  // bytes, as weight_channels_per_block.
  const int64_t band = std::max<int64_t>(a.block_rows, 1) * a.cols;
  return weight_channels_per_block(band);
}

void block_quant_cpu_bands(const BlockQuantArgs& a, int64_t band_begin, int64_t band_end) {
  if (block_quant_rows_applies(a)) {
    block_quant_cpu_rows(a, band_begin, band_end);  // bands are rows; whole mask bytes
    return;
  }
  block_quant_cpu_bands_generic(a, band_begin, band_end);
}

void block_quant_cpu_bands_generic(const BlockQuantArgs& a, int64_t band_begin, int64_t band_end) {
  band_end = std::min(band_end, block_grid_rows(a));
  if (band_begin >= band_end || a.cols == 0) return;
  dispatch_dtype(a.dtype, [&](auto tag) { quant_bands<typename decltype(tag)::type>(a, band_begin, band_end); });
  // The last mask byte's bits past the last element are 0 (the elements set their bits one
  // by one, so those would be left as allocated).
  const int64_t numel = a.rows * a.cols;
  if (a.mask != nullptr && band_end == block_grid_rows(a) && numel % kMaskGroup != 0) {
    a.mask[numel / kMaskGroup] &= static_cast<uint8_t>((1u << (numel % kMaskGroup)) - 1u);
  }
}

void block_quant_cpu(const BlockQuantArgs& a) {
  const std::string error = check_block_quant_args(a);
  if (!error.empty()) throw std::invalid_argument("fakequant: " + error);
  if (a.rows * a.cols == 0) return;  // nothing to read or write (as the CUDA launcher)
  if (block_quant_needs_tensor_amax(a)) {
    const uint32_t bits = block_abs_max_bits_cpu(a, 0, a.rows * a.cols);
    *a.tensor_amax = bits > 0x7F800000u ? bits_float(0x7FC00000u) : bits_float(bits);
  }
  block_quant_cpu_bands(a, 0, block_grid_rows(a));
}

}  // namespace fakequant
