// libFuzzer target over the scalar math of include/fakequant/quant_math.h and the validators
// of fake_quant.h / weight_quant.h, against the double-precision reference in reference.h
// (docs/sanitizers.md). The first input byte picks a property; the rest feeds it values
// through Input, which returns zeros once the data runs out, so every input is valid. A
// property that does not hold prints what it compared and aborts (libFuzzer keeps the input
// as a crash file); the sanitizers report undefined behaviour and bad memory accesses.
//
// Everything compared is bit-exact where docs/numerics.md promises it: rounding, 16-bit
// conversions, quant-dequant values (NaN inputs keep their bits in fp32; 16-bit NaN is
// 0x7FFF) and masks, choose_qparams, the symmetric weight scale and the learnable zero point
// rules, the minifloat rounding of the block formats; the validators accept exactly what their
// comments say and name the argument.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "fakequant/fake_quant.h"
#include "fakequant/quant_math.h"
#include "fakequant/weight_quant.h"
#include "reference.h"

namespace fq = fakequant;
namespace ref = fuzzref;

namespace {

// ---------------------------------------------------------------------------------------
// Input decoding.

class Input {
 public:
  Input(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  uint8_t u8() {
    if (size_ == 0) return 0;
    --size_;
    return *data_++;
  }
  uint16_t u16() {
    const uint16_t lo = u8();
    return static_cast<uint16_t>(lo | (u8() << 8));
  }
  uint32_t u32() {
    const uint32_t lo = u16();
    return lo | (static_cast<uint32_t>(u16()) << 16);
  }
  uint64_t u64() {
    const uint64_t lo = u32();
    return lo | (static_cast<uint64_t>(u32()) << 32);
  }
  bool empty() const { return size_ == 0; }

 private:
  const uint8_t* data_;
  size_t size_;
};

const float kInf = std::numeric_limits<float>::infinity();

// Values where the math has edges: zeros, ties, the 2^23 cut of the host rounding, the fp16
// and bf16 overflow points and subnormal boundaries, the float range ends.
const float kSpecialFloats[] = {0.0f,
                                -0.0f,
                                0.5f,
                                -0.5f,
                                1.5f,
                                -2.5f,
                                0.49999997f,
                                8388607.5f,
                                -8388607.5f,
                                8388608.0f,
                                16777215.0f,
                                16777217.0f,
                                65504.0f,
                                65519.996f,
                                65520.0f,
                                -65520.0f,
                                6.1035156e-05f,   // 2^-14, the smallest normal fp16
                                2.9802322e-08f,   // 2^-25, half the smallest fp16 subnormal
                                5.9604645e-08f,   // 2^-24
                                8.940697e-08f,    // 1.5 * 2^-24
                                1.17549435e-38f,  // 2^-126
                                1.1754942e-38f,   // the largest float subnormal
                                1e-45f,           // 2^-149
                                3.38953139e+38f,  // the largest bf16
                                3.40282347e+38f,  // FLT_MAX
                                -3.40282347e+38f,
                                kInf,
                                -kInf,
                                std::numeric_limits<float>::quiet_NaN(),
                                -std::numeric_limits<float>::quiet_NaN(),
                                ref::float_of(0x7F800001u),  // signalling NaN
                                ref::float_of(0xFFC12345u)};
constexpr int kSpecialCount = sizeof(kSpecialFloats) / sizeof(kSpecialFloats[0]);

// Move f by `steps` units in the last place (through zero and into inf/NaN bit patterns as
// the bits go; any float is a fine input).
float nudge(float f, int steps) {
  uint32_t u = ref::bits_of(f);
  if (u & 0x80000000u) steps = -steps;  // keep "positive steps = larger magnitude"
  return ref::float_of(u + static_cast<uint32_t>(steps));
}

// A float drawn to hit the edges: raw bits, the table above, a value on a 1/256 grid, a tie
// n + 0.5 a few ulps off, or a mantissa whose low bits sit at the fp16 / bf16 rounding points.
float any_float(Input& in) {
  const uint8_t kind = in.u8();
  switch (kind % 6) {
    case 0:
    case 1:
      return ref::float_of(in.u32());
    case 2:
      return nudge(kSpecialFloats[in.u8() % kSpecialCount], static_cast<int8_t>(in.u8()) / 32);
    case 3:
      return static_cast<float>(static_cast<int16_t>(in.u16())) + static_cast<float>(in.u8()) / 256.0f;
    case 4: {
      const int32_t n = static_cast<int32_t>(in.u32() % 33554432u) - 16777216;  // |n| <= 2^24
      return nudge(static_cast<float>(n) + 0.5f, static_cast<int8_t>(in.u8()) % 4);
    }
    default: {
      static const uint32_t kLowBits[] = {0x0FFFu, 0x1000u, 0x1001u,  0x2FFFu, 0x3000u, 0x7FFFu,
                                          0x8000u, 0x8001u, 0x18000u, 0x0u,    0x1FFFu, 0xFFFFu};
      const uint32_t top = in.u32() & 0xFFFE0000u;  // sign, exponent, 6 high mantissa bits
      return ref::float_of(top | kLowBits[in.u8() % (sizeof(kLowBits) / sizeof(kLowBits[0]))]);
    }
  }
}

// A valid scale (a positive normal float), mostly; raw bits now and then for the
// out-of-contract paths.
float any_scale(Input& in, bool allow_invalid) {
  const uint8_t kind = in.u8();
  if (allow_invalid && kind % 8 == 7) return any_float(in);
  switch (kind % 4) {
    case 0: {
      static const float kScales[] = {1.0f,    0.1f,  1.0f / 3.0f, 0.0078125f, 1.17549435e-38f, 3.40282347e+38f,
                                      6.1e-5f, 0.02f, 2.0f,        1e-3f};
      return kScales[in.u8() % (sizeof(kScales) / sizeof(kScales[0]))];
    }
    case 1: {
      const int exponent = static_cast<int>(in.u8()) - 126;  // [-126, 129]
      const float mantissa = 1.0f + static_cast<float>(in.u32() & 0x7FFFFFu) * 0x1p-23f;
      return std::ldexp(mantissa, exponent > 127 ? 127 : exponent);
    }
    default: {
      const int exponent = static_cast<int>(in.u8() % 24) - 16;  // the usual [2^-16, 2^8)
      return std::ldexp(1.0f + static_cast<float>(in.u32() & 0x7FFFFFu) * 0x1p-23f, exponent);
    }
  }
}

struct QuantRange {
  int32_t quant_min, quant_max;
};

// A valid range: the usual 2-16 bit ranges (signed, narrow, unsigned), any valid pair, or a
// boundary one.
QuantRange any_range(Input& in) {
  const uint8_t kind = in.u8();
  switch (kind % 4) {
    case 0:
    case 1: {
      const int bits = 2 + in.u8() % 15;
      const int32_t half = 1 << (bits - 1);
      switch (in.u8() % 3) {
        case 0:
          return {-half, half - 1};
        case 1:
          return {-(half - 1), half - 1};
        default:
          return {0, 2 * half - 1};
      }
    }
    case 2: {
      const int32_t quant_min = static_cast<int32_t>(in.u32() % 131072u) - 65536;
      int64_t quant_max = static_cast<int64_t>(quant_min) + in.u32() % 65536u;
      if (quant_max > 65535) quant_max = 65535;
      return {quant_min, static_cast<int32_t>(quant_max)};
    }
    default: {
      static const QuantRange kRanges[] = {{-65536, -1}, {0, 65535},     {-32768, 32767}, {-65535, 0},
                                           {0, 0},       {-1, 0},        {0, 1},          {-1, 1},
                                           {127, 127},   {65535, 65535}, {-65536, -65536}};
      return kRanges[in.u8() % (sizeof(kRanges) / sizeof(kRanges[0]))];
    }
  }
}

ref::Mode to_ref(fq::Rounding r) {
  switch (r) {
    case fq::Rounding::kHalfAway:
      return ref::Mode::kHalfAway;
    case fq::Rounding::kStochastic:
      return ref::Mode::kStochastic;
    case fq::Rounding::kHalfEven:
      break;
  }
  return ref::Mode::kHalfEven;
}

fq::Rounding any_rounding(Input& in) { return static_cast<fq::Rounding>(in.u8() % 3); }

// An element value relative to a scale: x = t * scale for t on ties, on the 1/256 grid or
// anywhere, a few ulps off; raw now and then.
float any_element(Input& in, float scale) {
  const uint8_t kind = in.u8();
  if (kind % 4 == 3) return any_float(in);
  const float t = any_float(in);
  return nudge(t * scale, static_cast<int8_t>(in.u8()) % 3);
}

// ---------------------------------------------------------------------------------------
// Reporting.

std::string hex(uint32_t u) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%x", u);
  return buf;
}

std::string describe(float f) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%a (0x%08x)", static_cast<double>(f), ref::bits_of(f));
  return buf;
}

[[noreturn]] void fail(const char* property, const std::string& detail) {
  std::fprintf(stderr, "\nfuzz_quant_math: property '%s' does not hold:\n  %s\n", property, detail.c_str());
  std::fflush(stderr);
  std::abort();
}

bool same_float(float got, float want) { return ref::bits_of(got) == ref::bits_of(want); }

const char* rounding_label(fq::Rounding r) { return fq::rounding_name(r); }

// ---------------------------------------------------------------------------------------
// Properties.

// round_half_even = rint, round_half_away = std::round, round_stochastic = exact
// floor(v + u), each bit for bit (NaN stays NaN).
void check_rounding(Input& in) {
  const float v = any_float(in);
  const uint32_t random = in.u32();
  const fq::Rounding modes[] = {fq::Rounding::kHalfEven, fq::Rounding::kHalfAway, fq::Rounding::kStochastic};
  for (fq::Rounding mode : modes) {
    const float want = ref::round_with(v, to_ref(mode), random);
    const float got = fq::round_with(v, mode, random);
    const bool ok = std::isnan(want) ? std::isnan(got) : same_float(got, want);
    if (!ok) {
      fail("rounding", std::string(rounding_label(mode)) + "(" + describe(v) + ", random=" + std::to_string(random) +
                           ") = " + describe(got) + ", reference " + describe(want));
    }
  }
  const float even = fq::round_half_even(v), away = fq::round_half_away(v),
              stochastic = fq::round_stochastic(v, random);
  if (!(std::isnan(v)
            ? std::isnan(even) && std::isnan(away) && std::isnan(stochastic)
            : same_float(even, ref::round_nearest(v, true)) && same_float(away, ref::round_nearest(v, false)) &&
                  same_float(stochastic, ref::round_stochastic(v, random)))) {
    fail("rounding", "the named rounding functions disagree with round_with at " + describe(v));
  }
}

// fp16: decoding is exact, encoding rounds to nearest-even, overflows to inf, NaN -> 0x7FFF.
void check_half(Input& in) {
  const uint16_t h = in.u16();
  const float decoded = fq::half_bits_to_float(h), decoded_via = fq::to_float(fq::Half{h});
  const float want_decoded = ref::half_to_float(h);
  const bool decode_ok = std::isnan(want_decoded)
                             ? std::isnan(decoded) && std::isnan(decoded_via)
                             : same_float(decoded, want_decoded) && same_float(decoded_via, want_decoded);
  if (!decode_ok)
    fail("fp16 decode", "half " + hex(h) + " -> " + describe(decoded) + ", reference " + describe(want_decoded));
  if (!std::isnan(want_decoded) && fq::float_to_half_bits(decoded) != h) {
    fail("fp16 round trip",
         "half " + hex(h) + " -> " + describe(decoded) + " -> " + hex(fq::float_to_half_bits(decoded)));
  }
  const float v = any_float(in);
  const uint16_t want = ref::float_to_half(v);
  const uint16_t got = fq::float_to_half_bits(v), got_via = fq::from_float<fq::Half>(v).bits;
  if (got != want || got_via != want) {
    fail("fp16 encode", describe(v) + " -> " + hex(got) + " / " + hex(got_via) + ", reference " + hex(want));
  }
}

// bf16: the same rules on the bfloat16 grid.
void check_bfloat16(Input& in) {
  const uint16_t b = in.u16();
  const float decoded = fq::to_float(fq::BFloat16{b});
  const float want_decoded = ref::bfloat16_to_float(b);
  if (!(std::isnan(want_decoded) ? std::isnan(decoded) : same_float(decoded, want_decoded))) {
    fail("bf16 decode", "bfloat16 " + hex(b) + " -> " + describe(decoded) + ", reference " + describe(want_decoded));
  }
  const float v = any_float(in);
  const uint16_t want = ref::float_to_bfloat16(v);
  const uint16_t got = fq::float_to_bfloat16_bits(v), got_via = fq::from_float<fq::BFloat16>(v).bits;
  if (got != want || got_via != want) {
    fail("bf16 encode", describe(v) + " -> " + hex(got) + " / " + hex(got_via) + ", reference " + hex(want));
  }
}

// The dtype an element is stored in: the value goes through that dtype's conversions on both
// sides (load exact, store rounded once from the fp32 result).
enum class Storage { kFloat32, kFloat16, kBFloat16 };

float load(Storage s, float v, uint16_t* bits16) {
  switch (s) {
    case Storage::kFloat16:
      *bits16 = ref::float_to_half(v);
      return ref::half_to_float(*bits16);
    case Storage::kBFloat16:
      *bits16 = ref::float_to_bfloat16(v);
      return ref::bfloat16_to_float(*bits16);
    case Storage::kFloat32:
      break;
  }
  return v;
}

uint32_t stored_bits(Storage s, float y) {
  switch (s) {
    case Storage::kFloat16:
      return ref::float_to_half(y);
    case Storage::kBFloat16:
      return ref::float_to_bfloat16(y);
    case Storage::kFloat32:
      break;
  }
  return ref::bits_of(y);
}

uint32_t quant_math_stored_bits(Storage s, float y) {
  switch (s) {
    case Storage::kFloat16:
      return fq::from_float<fq::Half>(y).bits;
    case Storage::kBFloat16:
      return fq::from_float<fq::BFloat16>(y).bits;
    case Storage::kFloat32:
      break;
  }
  return ref::bits_of(y);
}

float quant_math_load(Storage s, uint16_t bits16, float v) {
  switch (s) {
    case Storage::kFloat16:
      return fq::to_float(fq::Half{bits16});
    case Storage::kBFloat16:
      return fq::to_float(fq::BFloat16{bits16});
    case Storage::kFloat32:
      break;
  }
  return v;
}

// quant_dequant with an integer zero point (ATen's per-tensor and int per-channel ops) and
// quant_dequant_float_zp (ATen's per-channel op with a float zero point): value and mask,
// every dtype and rounding, valid qparams.
void check_quant_dequant(Input& in, bool float_zero_point) {
  const QuantRange range = any_range(in);
  const float scale = any_scale(in, false);
  const fq::Rounding mode = any_rounding(in);
  const uint32_t random = in.u32();
  const Storage storage = static_cast<Storage>(in.u8() % 3);
  const uint32_t levels = static_cast<uint32_t>(range.quant_max - range.quant_min) + 1u;
  const int32_t int_zp = range.quant_min + static_cast<int32_t>(in.u32() % levels);
  float float_zp = static_cast<float>(int_zp);
  if (float_zero_point) {
    // Any float in [quant_min, quant_max]: integral, fractional, tiny, signed zero.
    const uint8_t kind = in.u8();
    if (kind % 4 == 1) float_zp = float_zp + static_cast<float>(in.u16()) / 65536.0f;
    if (kind % 4 == 2) float_zp = any_float(in);
    if (kind % 4 == 3) float_zp = (in.u8() & 1) ? -0.0f : 0.0f;
    if (!(float_zp >= range.quant_min && float_zp <= range.quant_max)) float_zp = static_cast<float>(int_zp);
  }
  uint16_t bits16 = 0;
  const float x = load(storage, any_element(in, scale), &bits16);
  const float x_loaded = quant_math_load(storage, bits16, x);
  if (!(std::isnan(x) ? std::isnan(x_loaded) : same_float(x_loaded, x))) {
    fail("quant-dequant load", "stored 16-bit " + std::to_string(bits16) + " loads as " + describe(x_loaded));
  }

  const float inv = fq::inverse_scale(scale);
  if (!same_float(inv, static_cast<float>(1.0 / static_cast<double>(scale)))) {
    fail("inverse_scale", "1/" + describe(scale) + " = " + describe(inv));
  }
  const ref::QuantDequant want =
      float_zero_point
          ? ref::quant_dequant_float_zp(x, scale, float_zp, range.quant_min, range.quant_max, to_ref(mode), random)
          : ref::quant_dequant_int_zp(x, scale, int_zp, range.quant_min, range.quant_max, to_ref(mode), random);
  const fq::QuantDequantResult got =
      float_zero_point
          ? fq::quant_dequant_float_zp(x_loaded, scale, inv, float_zp, static_cast<float>(range.quant_min),
                                       static_cast<float>(range.quant_max), mode, random)
          : fq::quant_dequant(x_loaded, scale, inv, static_cast<float>(int_zp), static_cast<float>(range.quant_min),
                              static_cast<float>(range.quant_max), mode, random);
  const uint32_t want_bits = stored_bits(storage, want.value);
  const uint32_t got_bits = quant_math_stored_bits(storage, got.value);
  if (got_bits != want_bits || got.in_range != want.in_range) {
    char buf[256];
    std::snprintf(buf, sizeof(buf),
                  "range [%d, %d], zero point %s, rounding %s, random %u, dtype %d: ", range.quant_min, range.quant_max,
                  float_zero_point ? describe(float_zp).c_str() : std::to_string(int_zp).c_str(), rounding_label(mode),
                  random, static_cast<int>(storage));
    fail(float_zero_point ? "quant_dequant_float_zp" : "quant_dequant",
         buf + std::string("x ") + describe(x) + ", scale " + describe(scale) + " -> value bits " + hex(got_bits) +
             " mask " + std::to_string(got.in_range) + ", reference bits " + hex(want_bits) + " (" +
             describe(want.value) + ") mask " + std::to_string(want.in_range));
  }
}

// The validators accept exactly the documented sets and name the argument when they refuse.
void check_validators(Input& in) {
  // Bounds near the accepted edges, or anything.
  auto any_bound = [&in]() -> int64_t {
    const uint8_t kind = in.u8();
    static const int64_t kEdges[] = {-65537,
                                     -65536,
                                     -65535,
                                     -1,
                                     0,
                                     1,
                                     65534,
                                     65535,
                                     65536,
                                     std::numeric_limits<int64_t>::min(),
                                     std::numeric_limits<int64_t>::max(),
                                     std::numeric_limits<int32_t>::min(),
                                     std::numeric_limits<int32_t>::max()};
    switch (kind % 3) {
      case 0: {
        // Wrapping arithmetic: the edges include the int64 limits.
        const uint64_t edge = static_cast<uint64_t>(kEdges[in.u8() % (sizeof(kEdges) / sizeof(kEdges[0]))]);
        return static_cast<int64_t>(edge +
                                    static_cast<uint64_t>(static_cast<int64_t>(static_cast<int8_t>(in.u8()) % 3)));
      }
      case 1:
        return static_cast<int64_t>(in.u64());
      default:
        return static_cast<int64_t>(in.u32() % 262144u) - 131072;
    }
  };
  const int64_t quant_min = any_bound(), quant_max = any_bound(), zero_point = any_bound();

  const bool range_ok =
      quant_min <= quant_max && quant_min >= -65536 && quant_max <= 65535 && quant_max - quant_min + 1 <= 65536;
  const std::string range_msg = fq::check_quant_range(quant_min, quant_max);
  if (range_msg.empty() != range_ok || (!range_ok && (range_msg.find("quant_min") == std::string::npos ||
                                                      range_msg.find("quant_max") == std::string::npos))) {
    fail("check_quant_range", "[" + std::to_string(quant_min) + ", " + std::to_string(quant_max) + "] -> '" +
                                  range_msg + "', accepted by the rule: " + std::to_string(range_ok));
  }

  const bool symmetric_ok = quant_max >= 1 && (quant_min == -quant_max || quant_min == -quant_max - 1);
  const std::string symmetric_msg = fq::check_symmetric_quant_range(quant_min, quant_max);
  if (symmetric_msg.empty() != symmetric_ok ||
      (!symmetric_ok && symmetric_msg.find("quant_min") == std::string::npos)) {
    fail("check_symmetric_quant_range",
         "[" + std::to_string(quant_min) + ", " + std::to_string(quant_max) + "] -> '" + symmetric_msg + "'");
  }

  const bool zero_point_ok = zero_point >= quant_min && zero_point <= quant_max;
  const std::string zero_point_msg = fq::check_zero_point_value(zero_point, quant_min, quant_max);
  if (zero_point_msg.empty() != zero_point_ok ||
      (!zero_point_ok && zero_point_msg.find("zero_point") == std::string::npos)) {
    fail("check_zero_point_value", std::to_string(zero_point) + " in [" + std::to_string(quant_min) + ", " +
                                       std::to_string(quant_max) + "] -> '" + zero_point_msg + "'");
  }

  const float scale = any_float(in);
  const double scale_d = scale;
  const bool scale_ok = scale_d >= 0x1p-126 && scale_d <= static_cast<double>(ref::kFloatMax);  // NaN: false
  const std::string scale_msg = fq::check_scale_value(scale);
  if (scale_msg.empty() != scale_ok || (!scale_ok && scale_msg.find("scale") == std::string::npos)) {
    fail("check_scale_value", describe(scale) + " -> '" + scale_msg + "'");
  }

  // eps: accepted when it rounds to a normal, finite float32: [2^-126 - 2^-150, 2^128 - 2^103).
  double eps;
  switch (in.u8() % 3) {
    case 0:
      eps = any_float(in);
      break;
    case 1: {
      uint64_t u = in.u64();
      std::memcpy(&eps, &u, sizeof(eps));
      break;
    }
    default: {
      static const double kEdges[] = {0x1p-126 - 0x1p-150, 0x1p-126, 0x1p128 - 0x1p103, 0x1p-149, 0x1p-127};
      const double e = kEdges[in.u8() % 5];
      eps = std::nextafter(e, (in.u8() & 1) ? 1e300 : -1e300);
      if (in.u8() & 1) eps = e;
      break;
    }
  }
  const bool eps_ok = eps >= 0x1p-126 - 0x1p-150 && eps < 0x1p128 - 0x1p103;
  const std::string eps_msg = fq::check_eps_value(eps);
  if (eps_msg.empty() != eps_ok || (!eps_ok && eps_msg.find("eps") == std::string::npos)) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%a", eps);
    fail("check_eps_value", std::string(buf) + " -> '" + eps_msg + "'");
  }

  // The kernels' own guards agree with the validators.
  if (range_ok) {
    const int32_t zp32 = zero_point_ok ? static_cast<int32_t>(zero_point) : static_cast<int32_t>(quant_min);
    const bool valid = fq::qparams_valid(scale, zp32, static_cast<int32_t>(quant_min), static_cast<int32_t>(quant_max));
    if (valid != scale_ok) fail("qparams_valid", "scale " + describe(scale) + " -> " + std::to_string(valid));
    const float zp_float = any_float(in);
    const bool zp_float_ok = zp_float >= quant_min && zp_float <= quant_max;
    const bool valid_float =
        fq::qparams_valid_float_zp(scale, zp_float, static_cast<int32_t>(quant_min), static_cast<int32_t>(quant_max));
    if (valid_float != (scale_ok && zp_float_ok)) {
      fail("qparams_valid_float_zp", "scale " + describe(scale) + " zero point " + describe(zp_float));
    }
    const bool learnable = fq::learnable_qparams_valid(scale, zp_float);
    if (learnable != (scale_ok && std::isfinite(zp_float))) {
      fail("learnable_qparams_valid", "scale " + describe(scale) + " zero point " + describe(zp_float));
    }
  }

  // parse_rounding accepts the three names only and leaves `out` alone otherwise.
  char name[12];
  const size_t length = in.u8() % sizeof(name);
  static const char* const kNames[] = {"half_even", "half_away", "stochastic", "half_eveN", "half_even\n",
                                       "stochasti", "",          "Half_away",  "half"};
  std::string text;
  if (in.u8() & 1) {
    for (size_t i = 0; i < length; ++i) name[i] = static_cast<char>(in.u8());
    text.assign(name, length);
  } else {
    text = kNames[in.u8() % (sizeof(kNames) / sizeof(kNames[0]))];
  }
  fq::Rounding parsed = static_cast<fq::Rounding>(77);
  const bool accepted = fq::parse_rounding(text, &parsed);
  const bool known = text == "half_even" || text == "half_away" || text == "stochastic";
  if (accepted != known || (accepted && text != fq::rounding_name(parsed)) ||
      (!accepted && parsed != static_cast<fq::Rounding>(77))) {
    fail("parse_rounding", "'" + text + "' -> " + std::to_string(accepted));
  }
}

// choose_qparams = ATen's ChooseQuantizationParams on its domain (min <= max, qmin < qmax),
// NaN statistics give quant_min, unobserved statistics (+inf, -inf) give scale 0.1; the zero
// point always lies in the (reduced) range.
void check_choose_qparams(Input& in) {
  QuantRange range = any_range(in);
  const bool symmetric = in.u8() & 1, reduce_range = in.u8() & 1;
  float min = any_float(in), max = any_float(in);
  switch (in.u8() % 4) {
    case 0:
      if (min > max) std::swap(min, max);
      break;
    case 1:
      min = kInf, max = -kInf;  // unobserved
      break;
    default:
      break;
  }
  const fq::AffineQParams got = fq::choose_qparams(min, max, range.quant_min, range.quant_max, symmetric, reduce_range);
  const int32_t qmin = reduce_range ? range.quant_min / 2 : range.quant_min;
  const int32_t qmax = reduce_range ? range.quant_max / 2 : range.quant_max;
  const bool unobserved = min == kInf && max == -kInf;
  const bool in_domain = qmin < qmax && (min <= max || std::isnan(min) || std::isnan(max) || unobserved);
  if (!in_domain) return;  // out of contract: the sanitizers still watched the call
  char buf[200];
  std::snprintf(buf, sizeof(buf),
                "min %a max %a range [%d, %d] symmetric %d reduce_range %d: ", static_cast<double>(min),
                static_cast<double>(max), range.quant_min, range.quant_max, symmetric, reduce_range);
  const ref::QParams want = ref::choose_qparams(min, max, range.quant_min, range.quant_max, symmetric, reduce_range);
  const bool scale_ok = std::isnan(want.scale) ? std::isnan(got.scale) : same_float(got.scale, want.scale);
  if (!scale_ok || got.zero_point != want.zero_point) {
    fail("choose_qparams", buf + std::string("scale ") + describe(got.scale) + " zero point " +
                               std::to_string(got.zero_point) + ", reference " + describe(want.scale) + " " +
                               std::to_string(want.zero_point));
  }
  if (got.zero_point < qmin || got.zero_point > qmax) {
    fail("choose_qparams zero point in range", buf + std::to_string(got.zero_point));
  }
  if (unobserved && !same_float(got.scale, 0.1f)) fail("choose_qparams unobserved", buf + describe(got.scale));
}

// The symmetric weight scale max(absmax / ((qmax - qmin) / 2), eps) in fp32, and the
// learnable zero point's three roundings (docs/numerics.md's table).
void check_scales_and_zero_points(Input& in) {
  const int32_t quant_max = 1 + static_cast<int32_t>(in.u16() % 65535u);
  const bool full = in.u8() & 1;
  const int32_t quant_min = full && quant_max < 65536 ? -quant_max - 1 : -quant_max;
  const float absmax = std::fabs(any_float(in));
  float eps = any_float(in);
  if (!fq::check_eps_value(eps).empty()) eps = 1.1920929e-07f;
  const float half = fq::symmetric_half_range(quant_min, quant_max);
  if (!same_float(half, static_cast<float>((static_cast<double>(quant_max) - quant_min) / 2.0))) {
    fail("symmetric_half_range", std::to_string(quant_min) + ", " + std::to_string(quant_max));
  }
  const float got = fq::symmetric_scale(absmax, half, eps);
  const float quotient = static_cast<float>(static_cast<double>(absmax) / static_cast<double>(half));
  const float want = std::isnan(quotient) ? quotient : (quotient < eps ? eps : quotient);
  if (!(std::isnan(want) ? std::isnan(got) : same_float(got, want))) {
    fail("symmetric_scale", "absmax " + describe(absmax) + " half range " + describe(half) + " eps " + describe(eps) +
                                " -> " + describe(got) + ", reference " + describe(want));
  }

  const float zp = any_float(in);
  const QuantRange range = any_range(in);
  if (!std::isfinite(zp)) return;
  const double lo = range.quant_min, hi = range.quant_max;
  auto clamp = [&](double v) { return v < lo ? lo : (v > hi ? hi : v); };
  const double forward_want = clamp(ref::round_nearest(zp, true));
  const float plus_half = static_cast<float>(static_cast<double>(zp) + 0.5);  // the fp32 add
  const double backward_want = std::trunc(clamp(plus_half));
  const float fmin = static_cast<float>(range.quant_min), fmax = static_cast<float>(range.quant_max);
  const float got_forward = fq::learnable_zero_point_forward(zp, fmin, fmax);
  const float got_backward = fq::learnable_zero_point_backward_per_tensor(zp, fmin, fmax);
  const float got_channel = fq::learnable_zero_point_backward_per_channel(zp, fmin, fmax);
  if (static_cast<double>(got_forward) != forward_want || static_cast<double>(got_channel) != forward_want ||
      static_cast<double>(got_backward) != backward_want) {
    fail("learnable zero point", describe(zp) + " in [" + std::to_string(range.quant_min) + ", " +
                                     std::to_string(range.quant_max) + "]: forward " + describe(got_forward) +
                                     " per-channel " + describe(got_channel) + " per-tensor backward " +
                                     describe(got_backward));
  }
}

// Element i of a buffer of the storage dtype that starts at byte `offset`, as raw bits.
uint32_t element_bits(const std::vector<uint8_t>& buffer, size_t offset, Storage storage, int64_t i) {
  if (storage == Storage::kFloat32) {
    uint32_t u;
    std::memcpy(&u, &buffer[offset + i * 4], 4);
    return u;
  }
  uint16_t h;
  std::memcpy(&h, &buffer[offset + i * 2], 2);
  return h;
}

// The CPU kernels built on this math (kernels/cpu/fake_quant.cpp), on a small tensor with
// exactly sized buffers at storage offsets: per-tensor and per-channel (int or float zero
// points, any channel stride), every dtype and rounding, split into two mask-group ranges, the
// disabled switch, out-of-contract qparams (NaN output, mask 0); then the masked backward.
void check_cpu_kernel(Input& in) {
  const bool per_channel = in.u8() & 1;
  const bool float_zero_point = per_channel && (in.u8() & 1);
  const int64_t channels = per_channel ? 1 + in.u8() % 5 : 1;
  const int64_t inner = per_channel ? 1 + in.u8() % 4 : 1;
  const int64_t outer = 1 + in.u8() % (per_channel ? 4 : 67);
  const int64_t numel = channels * inner * outer;
  const QuantRange range = any_range(in);
  const fq::Rounding mode = any_rounding(in);
  const Storage storage = static_cast<Storage>(in.u8() % 3);
  const uint64_t seed_words[2] = {in.u64(), in.u64()};
  const int64_t seed[2] = {static_cast<int64_t>(seed_words[0]), static_cast<int64_t>(seed_words[1])};
  const uint8_t switches = in.u8();
  const bool disabled = switches % 16 == 15;
  const uint8_t split_choice = in.u8();  // where the two mask-group ranges meet
  const uint8_t placement = in.u8();     // the buffers' offsets: 0-3 elements, 0-7 mask bytes

  std::vector<float> scale(channels);
  std::vector<int32_t> int_zp(channels);
  std::vector<float> float_zp(channels);
  std::vector<uint8_t> valid(channels);
  const uint32_t levels = static_cast<uint32_t>(range.quant_max - range.quant_min) + 1u;
  for (int64_t c = 0; c < channels; ++c) {
    scale[c] = any_scale(in, true);
    int_zp[c] = range.quant_min + static_cast<int32_t>(in.u32() % levels);
    float_zp[c] = static_cast<float>(int_zp[c]) + ((in.u8() & 3) == 1 ? 0.25f : 0.0f);
    if (!(float_zp[c] <= range.quant_max)) float_zp[c] = static_cast<float>(int_zp[c]);
    const bool zp_out = (in.u8() % 16) == 0;  // an out-of-range zero point now and then
    if (zp_out) int_zp[c] = range.quant_max + 1, float_zp[c] = static_cast<float>(range.quant_max) + 0.5f;
    const bool scale_ok = scale[c] >= ref::kSmallestNormal && scale[c] <= ref::kFloatMax;
    valid[c] = scale_ok && !zp_out;
  }

  // Element values, stored in the dtype; a scale-relative value while input lasts, then raw.
  std::vector<float> x(numel);
  std::vector<uint16_t> x16(numel);
  uint64_t state = seed_words[0] ^ 0x9E3779B97F4A7C15ull;
  for (int64_t i = 0; i < numel; ++i) {
    const int64_t c = (i / inner) % channels;
    float v;
    if (!in.empty()) {
      v = any_element(in, valid[c] ? scale[c] : 1.0f);
    } else {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      v = static_cast<float>(static_cast<int32_t>(state >> 40) - (1 << 23)) * 0x1p-16f * (valid[c] ? scale[c] : 1.0f);
    }
    x[i] = load(storage, v, &x16[i]);
  }

  const fq::DType dtype = storage == Storage::kFloat32   ? fq::DType::kFloat32
                          : storage == Storage::kFloat16 ? fq::DType::kFloat16
                                                         : fq::DType::kBFloat16;
  // Each buffer ends where the tensor ends (an overrun is a heap-buffer-overflow) and starts a
  // few elements (bytes, for the mask) into its allocation, as a view with a storage offset.
  const size_t element_bytes = storage == Storage::kFloat32 ? 4 : 2;
  const size_t data_offset = (placement & 3u) * element_bytes;
  const size_t mask_offset = (placement >> 2) & 7u;
  const size_t data_bytes = data_offset + static_cast<size_t>(numel) * element_bytes;
  std::vector<uint8_t> input(data_bytes), output(data_bytes, 0xA5);
  for (int64_t i = 0; i < numel; ++i) {
    if (storage == Storage::kFloat32) {
      std::memcpy(&input[data_offset + i * 4], &x[i], 4);
    } else {
      std::memcpy(&input[data_offset + i * 2], &x16[i], 2);
    }
  }
  const int64_t groups = fq::mask_bytes(numel);
  std::vector<uint8_t> mask(mask_offset + groups, 0xA5);
  uint8_t* const mask_data = mask.data() + mask_offset;
  const int64_t enabled = disabled ? 0 : 1;
  fq::FakeQuantArgs args{dtype, input.data() + data_offset, output.data() + data_offset, mask_data, numel};
  const int64_t split = split_choice % (groups + 1);
  // The fields both kinds of qparams have: the range, the rounding, its seed and the switch.
  const auto set_shared_qparams = [&](auto& qp) {
    qp.quant_min = range.quant_min;
    qp.quant_max = range.quant_max;
    qp.rounding = mode;
    qp.seed = mode == fq::Rounding::kStochastic ? seed : nullptr;
    qp.enabled = (switches & 16) ? &enabled : nullptr;
  };
  if (per_channel) {
    fq::PerChannelQParams qp;
    qp.scale = scale.data();
    qp.zero_point = float_zero_point ? static_cast<const void*>(float_zp.data()) : int_zp.data();
    qp.zero_point_type = float_zero_point ? fq::ZeroPointType::kFloat32 : fq::ZeroPointType::kInt32;
    qp.channels = channels;
    qp.channel_stride = inner;
    set_shared_qparams(qp);
    fq::fake_quant_per_channel_cpu_range(args, qp, split, groups);
    fq::fake_quant_per_channel_cpu_range(args, qp, 0, split);
  } else {
    fq::PerTensorQParams qp;
    qp.scale = &scale[0];
    qp.zero_point = &int_zp[0];
    set_shared_qparams(qp);
    fq::fake_quant_per_tensor_cpu_range(args, qp, split, groups);
    fq::fake_quant_per_tensor_cpu_range(args, qp, 0, split);
  }
  const bool passed_through = disabled && (switches & 16);

  for (int64_t i = 0; i < numel; ++i) {
    const int64_t c = (i / inner) % channels;
    uint32_t want_bits;
    bool want_mask;
    if (passed_through) {
      want_bits = storage == Storage::kFloat32 ? ref::bits_of(x[i]) : x16[i];
      want_mask = true;
    } else if (!valid[c]) {
      want_bits = storage == Storage::kFloat32 ? 0x7FC00000u : ref::kCanonicalNaN16;
      want_mask = false;
    } else {
      const uint32_t random = ref::element_random(static_cast<uint64_t>(i), seed_words[0], seed_words[1]);
      const ref::QuantDequant r = float_zero_point
                                      ? ref::quant_dequant_float_zp(x[i], scale[c], float_zp[c], range.quant_min,
                                                                    range.quant_max, to_ref(mode), random)
                                      : ref::quant_dequant_int_zp(x[i], scale[c], int_zp[c], range.quant_min,
                                                                  range.quant_max, to_ref(mode), random);
      want_bits = stored_bits(storage, r.value);
      want_mask = r.in_range;
    }
    const uint32_t got_bits = element_bits(output, data_offset, storage, i);
    const bool got_mask = (mask_data[i / 8] >> (i % 8)) & 1u;
    // An invalid channel's fp32 NaN has no promised payload.
    const bool nan_ok =
        !valid[c] && !passed_through && storage == Storage::kFloat32 && std::isnan(ref::float_of(got_bits));
    if ((got_bits != want_bits && !nan_ok) || got_mask != want_mask) {
      char buf[320];
      std::snprintf(buf, sizeof(buf),
                    "%s, %ld elements, channels %ld, stride %ld, dtype %d, rounding %s, range [%d, %d], split %ld, "
                    "element %ld (channel %ld, x %a, scale %a, zp %d / %a): bits 0x%x mask %d, reference 0x%x mask %d",
                    per_channel ? (float_zero_point ? "per-channel float zp" : "per-channel") : "per-tensor",
                    static_cast<long>(numel), static_cast<long>(channels), static_cast<long>(inner),
                    static_cast<int>(storage), rounding_label(mode), range.quant_min, range.quant_max,
                    static_cast<long>(split), static_cast<long>(i), static_cast<long>(c), static_cast<double>(x[i]),
                    static_cast<double>(scale[c]), int_zp[c], static_cast<double>(float_zp[c]), got_bits, got_mask,
                    want_bits, want_mask);
      fail("cpu kernel", buf);
    }
  }
  if (numel % 8 != 0 && (mask_data[groups - 1] >> (numel % 8)) != 0) fail("cpu kernel", "mask padding bits are not 0");

  // The clipped straight-through backward with that mask: grad_input = mask bit ? grad_output
  // : +0, bit for bit (any grad_output bits, NaN included), with the same split and offsets.
  std::vector<uint8_t> grad_output(data_bytes), grad_input(data_bytes, 0xA5);
  for (size_t b = data_offset; b < data_bytes; ++b) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    grad_output[b] = static_cast<uint8_t>(state >> 56);
  }
  fq::MaskedGradArgs grad{dtype, grad_output.data() + data_offset, mask_data, grad_input.data() + data_offset, numel};
  fq::masked_grad_cpu_range(grad, split, groups);
  fq::masked_grad_cpu_range(grad, 0, split);
  for (int64_t i = 0; i < numel; ++i) {
    const bool kept = (mask_data[i / 8] >> (i % 8)) & 1u;
    const uint32_t want = kept ? element_bits(grad_output, data_offset, storage, i) : 0u;
    const uint32_t got = element_bits(grad_input, data_offset, storage, i);
    if (got != want) {
      fail("masked backward", "element " + std::to_string(i) + " of " + std::to_string(numel) + ", mask bit " +
                                  std::to_string(kept) + ": " + hex(got) + ", expected " + hex(want));
    }
  }
}

// round_minifloat (fakequant/math/block.h) for each element format and rounding against the
// table of the format's values decoded from its bits: any float, a grid value a few ulps off,
// or the midpoint of two neighbours (a tie) a few ulps off, either sign.
void check_minifloat(Input& in) {
  const int format = 1 + in.u8() % 5;
  const fq::Rounding mode = static_cast<fq::Rounding>(in.u8() % 3);
  const uint32_t random = in.u32();
  const std::vector<double> grid = ref::minifloat_values(ref::mini_format(format));
  const uint8_t kind = in.u8();
  float v;
  if (kind % 3 == 0) {
    v = any_float(in);
  } else {
    const size_t k = in.u8() % (grid.size() - 1);
    const double at = kind % 3 == 1 ? grid[k] : (grid[k] + grid[k + 1]) / 2.0;  // exact in float
    v = nudge(static_cast<float>(at), static_cast<int8_t>(in.u8()) / 32);
    if (kind & 4) v = -v;
  }
  const float got = fq::round_minifloat(v, fq::minifloat_of(static_cast<fq::BlockFormat>(format)), mode, random);
  const float want = ref::round_minifloat(v, format, to_ref(mode), random);
  if (!same_float(got, want)) {
    fail("minifloat rounding", "format " + std::to_string(format) + " " + rounding_label(mode) + " random " +
                                   hex(random) + " of " + describe(v) + ": " + describe(got) + ", expected " +
                                   describe(want));
  }
}

bool reference_self_check() {
  // Random123's known-answer vectors for Philox4x32-10.
  const ref::Words a = ref::philox4x32_10(0, 0, 0, 0, 0, 0);
  const ref::Words b = ref::philox4x32_10(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u, 0x299f31d0u);
  if (a.w[0] != 0x6627e8d5u || a.w[3] != 0x9b00dbd8u || b.w[0] != 0xd16cfe09u || b.w[3] != 0x24126ea1u) {
    fail("reference self-check", "Philox4x32-10 known-answer vectors");
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool self_checked = reference_self_check();
  (void)self_checked;
  Input in(data, size);
  switch (in.u8() % 10) {
    case 0:
      check_rounding(in);
      break;
    case 1:
      check_half(in);
      break;
    case 2:
      check_bfloat16(in);
      break;
    case 3:
      check_quant_dequant(in, false);
      break;
    case 4:
      check_quant_dequant(in, true);
      break;
    case 5:
      check_validators(in);
      break;
    case 6:
      check_choose_qparams(in);
      break;
    case 7:
      check_scales_and_zero_points(in);
      break;
    case 8:
      check_cpu_kernel(in);
      break;
    default:
      check_minifloat(in);
      break;
  }
  return 0;
}
