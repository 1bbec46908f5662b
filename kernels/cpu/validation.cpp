// Validation rules and names shared by every binding (declared in fakequant/fake_quant.h).
#include <cmath>
#include <sstream>
#include <string>

#include "fakequant/fake_quant.h"

namespace fakequant {

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "float32";
    case DType::kFloat16:
      return "float16";
    case DType::kBFloat16:
      return "bfloat16";
  }
  return "unknown";
}

std::string check_quant_range(int64_t quant_min, int64_t quant_max) {
  std::ostringstream os;
  if (quant_min > quant_max) {
    os << "quant_min (" << quant_min << ") must be <= quant_max (" << quant_max << ")";
  } else if (quant_min < kQuantBoundMin || quant_max > kQuantBoundMax) {
    os << "quant_min and quant_max must lie in [" << kQuantBoundMin << ", " << kQuantBoundMax
       << "], got [" << quant_min << ", " << quant_max << "]";
  } else if (quant_max - quant_min + 1 > kMaxQuantLevels) {
    os << "the range [quant_min, quant_max] = [" << quant_min << ", " << quant_max << "] has "
       << (quant_max - quant_min + 1) << " levels; at most " << kMaxQuantLevels
       << " (16 bits) are accepted";
  }
  return os.str();
}

std::string check_scale_value(float scale) {
  if (std::isfinite(scale) && scale >= 1.17549435e-38f) return {};
  std::ostringstream os;
  os << "scale must be finite and >= 1.17549435e-38 (the smallest normal float32, so that "
        "1/scale is finite), got "
     << scale;
  return os.str();
}

std::string check_zero_point_value(int64_t zero_point, int64_t quant_min, int64_t quant_max) {
  if (zero_point >= quant_min && zero_point <= quant_max) return {};
  std::ostringstream os;
  os << "zero_point (" << zero_point << ") must lie in [quant_min, quant_max] = [" << quant_min
     << ", " << quant_max << "]";
  return os.str();
}

namespace {

// The rounding modes' names, for both directions.
struct RoundingName {
  Rounding mode;
  const char* name;
};
constexpr RoundingName kRoundingNames[] = {
    {Rounding::kHalfEven, "half_even"},
    {Rounding::kHalfAway, "half_away"},
    {Rounding::kStochastic, "stochastic"},
};

}  // namespace

bool parse_rounding(const std::string& name, Rounding* out) {
  for (const RoundingName& r : kRoundingNames) {
    if (name == r.name) {
      *out = r.mode;
      return true;
    }
  }
  return false;
}

// An out-of-range value reads as the default mode.
const char* rounding_name(Rounding rounding) {
  for (const RoundingName& r : kRoundingNames) {
    if (r.mode == rounding) return r.name;
  }
  return "half_even";
}

}  // namespace fakequant
