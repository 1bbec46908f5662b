// The shared scalar math against hand-computed cases and against the C library.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "fakequant/fake_quant.h"
#include "fakequant/quant_math.h"

namespace fq = fakequant;

namespace {

float random_float_bits(std::mt19937& rng) {
  // Any finite float: uniform over bit patterns, non-finite ones skipped.
  for (;;) {
    const uint32_t u = rng();
    float f;
    std::memcpy(&f, &u, sizeof(f));
    if (std::isfinite(f)) return f;
  }
}

TEST(RoundHalfEven, HandComputedTies) {
  EXPECT_EQ(fq::round_half_even(0.5f), 0.0f);
  EXPECT_EQ(fq::round_half_even(1.5f), 2.0f);
  EXPECT_EQ(fq::round_half_even(2.5f), 2.0f);
  EXPECT_EQ(fq::round_half_even(-2.5f), -2.0f);
  EXPECT_EQ(fq::round_half_even(-3.5f), -4.0f);
  EXPECT_EQ(fq::round_half_even(2.4999998f), 2.0f);
  EXPECT_EQ(fq::round_half_even(8388607.5f), 8388608.0f);
  EXPECT_EQ(fq::round_half_even(16777216.0f), 16777216.0f);
  EXPECT_TRUE(std::signbit(fq::round_half_even(-0.25f)));
  EXPECT_EQ(fq::round_half_even(std::numeric_limits<float>::infinity()), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(fq::round_half_even(std::nanf(""))));
}

// 200000 floats, alternately any finite float and one in [-300, 300] (where the fractions
// that rounding decides on lie), each passed to check.
template <typename Check>
void for_random_floats(uint32_t seed, Check check) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> small(-300.0f, 300.0f);
  for (int i = 0; i < 200000; ++i) {
    check((i % 2) ? small(rng) : random_float_bits(rng));
    if (::testing::Test::HasFatalFailure()) return;
  }
}

TEST(RoundHalfEven, MatchesNearbyintOnRandomFloats) {
  for_random_floats(1234, [](float v) { ASSERT_EQ(fq::round_half_even(v), std::nearbyint(v)) << "v=" << v; });
  if (HasFatalFailure()) return;
  for (int k = -1000; k <= 1000; ++k) {  // every tie in a window
    const float v = static_cast<float>(k) + 0.5f;
    ASSERT_EQ(fq::round_half_even(v), std::nearbyint(v)) << "v=" << v;
  }
}

TEST(RoundHalfAway, HandComputedTies) {
  EXPECT_EQ(fq::round_half_away(0.5f), 1.0f);
  EXPECT_EQ(fq::round_half_away(1.5f), 2.0f);
  EXPECT_EQ(fq::round_half_away(2.5f), 3.0f);
  EXPECT_EQ(fq::round_half_away(-2.5f), -3.0f);
  EXPECT_EQ(fq::round_half_away(0.49999997f), 0.0f);
  EXPECT_EQ(fq::round_half_away(8388607.5f), 8388608.0f);
}

TEST(RoundHalfAway, MatchesRoundOnRandomFloats) {
  for_random_floats(99, [](float v) { ASSERT_EQ(fq::round_half_away(v), std::round(v)) << "v=" << v; });
}

TEST(HalfConversion, RoundTripsEveryHalf) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const fq::Half h{static_cast<uint16_t>(b)};
    const float f = fq::to_float(h);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(fq::to_float(fq::from_float<fq::Half>(f))));
      continue;
    }
    ASSERT_EQ(fq::from_float<fq::Half>(f).bits, b) << "bits=" << b;
  }
}

TEST(HalfConversion, HandComputedValues) {
  EXPECT_EQ(fq::from_float<fq::Half>(1.0f).bits, 0x3C00);
  EXPECT_EQ(fq::from_float<fq::Half>(-2.0f).bits, 0xC000);
  EXPECT_EQ(fq::from_float<fq::Half>(65504.0f).bits, 0x7BFF);
  EXPECT_EQ(fq::from_float<fq::Half>(65520.0f).bits, 0x7C00);           // rounds to inf
  EXPECT_EQ(fq::from_float<fq::Half>(65519.996f).bits, 0x7BFF);
  EXPECT_EQ(fq::from_float<fq::Half>(5.9604644775390625e-8f).bits, 0x0001);  // 2^-24
  EXPECT_EQ(fq::from_float<fq::Half>(2.98023223876953125e-8f).bits, 0x0000);  // 2^-25 ties to even 0
  EXPECT_EQ(fq::from_float<fq::Half>(8.940696716308594e-8f).bits, 0x0002);   // 1.5 * 2^-24 ties to 2
  EXPECT_EQ(fq::from_float<fq::Half>(1.0009765625f).bits, 0x3C01);          // 1 + 2^-10
  EXPECT_EQ(fq::from_float<fq::Half>(1.00048828125f).bits, 0x3C00);         // 1 + 2^-11: tie to even
  EXPECT_EQ(fq::from_float<fq::Half>(1.00146484375f).bits, 0x3C02);         // 1 + 3*2^-11: tie to even
  EXPECT_EQ(fq::to_float(fq::Half{0x3555}), 0.333251953125f);
}

#if defined(__FLT16_MAX__)
TEST(HalfConversion, MatchesCompilerFloat16OnRandomFloats) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> mid(-70000.0f, 70000.0f);
  std::uniform_real_distribution<float> tiny(-1e-4f, 1e-4f);
  for (int i = 0; i < 300000; ++i) {
    const float v = (i % 3 == 0) ? mid(rng) : (i % 3 == 1) ? tiny(rng) : random_float_bits(rng);
    if (std::isnan(v)) {  // the compiler keeps sign and payload; our contract stores 0x7FFF
      ASSERT_EQ(fq::from_float<fq::Half>(v).bits, fq::kCanonicalNaN16) << "v=" << v;
      continue;
    }
    const _Float16 ref = static_cast<_Float16>(v);
    uint16_t ref_bits;
    std::memcpy(&ref_bits, &ref, sizeof(ref_bits));
    ASSERT_EQ(fq::from_float<fq::Half>(v).bits, ref_bits) << "v=" << v;
  }
}
#endif

TEST(BFloat16Conversion, HandComputedValues) {
  EXPECT_EQ(fq::from_float<fq::BFloat16>(1.0f).bits, 0x3F80);
  EXPECT_EQ(fq::from_float<fq::BFloat16>(1.00390625f).bits, 0x3F80);  // tie -> even
  EXPECT_EQ(fq::from_float<fq::BFloat16>(1.01171875f).bits, 0x3F82);  // tie -> even (up)
  EXPECT_EQ(fq::from_float<fq::BFloat16>(1.0078125f).bits, 0x3F81);
  EXPECT_EQ(fq::from_float<fq::BFloat16>(-3.0f).bits, 0xC040);
  EXPECT_EQ(fq::to_float(fq::BFloat16{0x4049}), 3.140625f);
  EXPECT_TRUE(std::isnan(fq::to_float(fq::from_float<fq::BFloat16>(std::nanf("")))));
}

// The NaN contract of 16-bit outputs: whatever the NaN's sign and payload, fp16 and bf16 store
// 0x7FFF, the canonical NaN of the GPU's conversions (CUDA's cvt.rn.f16.f32 / .bf16.f32).
TEST(SixteenBitConversion, EveryNaNStoresTheCanonicalNaN) {
  for (const uint32_t nan_bits : {0x7FC00000u, 0xFFC00000u, 0x7F800001u, 0xFF800001u, 0x7FFFFFFFu, 0x7FA5A5A5u}) {
    float v;
    std::memcpy(&v, &nan_bits, sizeof(v));
    ASSERT_TRUE(std::isnan(v));
    EXPECT_EQ(fq::from_float<fq::Half>(v).bits, 0x7FFF) << std::hex << nan_bits;
    EXPECT_EQ(fq::from_float<fq::BFloat16>(v).bits, 0x7FFF) << std::hex << nan_bits;
  }
  EXPECT_EQ(fq::from_float<fq::Half>(-INFINITY).bits, 0xFC00);  // infinities keep their sign
  EXPECT_EQ(fq::from_float<fq::BFloat16>(-INFINITY).bits, 0xFF80);
}

TEST(QuantDequant, HandComputedCases) {
  // scale 0.5 (inverse 2), zero point 0, int8 range: q = round(2x).
  const float s = 0.5f, inv = fq::inverse_scale(s);
  auto qd = [&](float x, fq::Rounding mode) { return fq::quant_dequant(x, s, inv, 0.0f, -128.0f, 127.0f, mode); };
  EXPECT_EQ(qd(1.25f, fq::Rounding::kHalfEven).value, 1.0f);  // 2.5 -> 2
  EXPECT_EQ(qd(1.25f, fq::Rounding::kHalfAway).value, 1.5f);  // 2.5 -> 3
  EXPECT_EQ(qd(-64.25f, fq::Rounding::kHalfEven).value, -64.0f);  // -128.5 -> -128, in range
  EXPECT_TRUE(qd(-64.25f, fq::Rounding::kHalfEven).in_range);
  EXPECT_FALSE(qd(-64.25f, fq::Rounding::kHalfAway).in_range);    // -128.5 -> -129
  EXPECT_EQ(qd(-64.25f, fq::Rounding::kHalfAway).value, -64.0f);  // clamped to -128
  EXPECT_EQ(qd(100.0f, fq::Rounding::kHalfEven).value, 63.5f);    // 200 -> 127
  EXPECT_FALSE(qd(100.0f, fq::Rounding::kHalfEven).in_range);
  EXPECT_EQ(qd(63.5f, fq::Rounding::kHalfEven).value, 63.5f);
  EXPECT_TRUE(qd(63.5f, fq::Rounding::kHalfEven).in_range);
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(qd(inf, fq::Rounding::kHalfEven).value, 63.5f);
  EXPECT_FALSE(qd(inf, fq::Rounding::kHalfEven).in_range);
  EXPECT_EQ(qd(-inf, fq::Rounding::kHalfEven).value, -64.0f);
  EXPECT_FALSE(qd(-inf, fq::Rounding::kHalfEven).in_range);
  EXPECT_TRUE(std::isnan(qd(std::nanf(""), fq::Rounding::kHalfEven).value));
  EXPECT_FALSE(qd(std::nanf(""), fq::Rounding::kHalfEven).in_range);
  EXPECT_EQ(qd(3.0e38f, fq::Rounding::kHalfEven).value, 63.5f);  // x * inv overflows to inf
  // Asymmetric uint8 with zero point 10, scale 0.25: x = 1.0 -> q = 4 + 10 = 14 -> 1.0.
  const fq::QuantDequantResult r = fq::quant_dequant(1.0f, 0.25f, 4.0f, 10.0f, 0.0f, 255.0f, fq::Rounding::kHalfEven);
  EXPECT_EQ(r.value, 1.0f);
  EXPECT_TRUE(r.in_range);
  // x = -3.0 -> q = -12 + 10 = -2 -> clamped to 0 -> (0 - 10) * 0.25 = -2.5.
  const fq::QuantDequantResult c = fq::quant_dequant(-3.0f, 0.25f, 4.0f, 10.0f, 0.0f, 255.0f, fq::Rounding::kHalfEven);
  EXPECT_EQ(c.value, -2.5f);
  EXPECT_FALSE(c.in_range);
}

TEST(Validation, QuantRange) {
  EXPECT_TRUE(fq::check_quant_range(-128, 127).empty());
  EXPECT_TRUE(fq::check_quant_range(0, 65535).empty());
  EXPECT_TRUE(fq::check_quant_range(-32768, 32767).empty());
  EXPECT_TRUE(fq::check_quant_range(0, 1).empty());
  EXPECT_NE(fq::check_quant_range(5, 4).find("quant_min (5) must be <= quant_max (4)"), std::string::npos);
  EXPECT_NE(fq::check_quant_range(-32768, 32768).find("levels"), std::string::npos);
  EXPECT_NE(fq::check_quant_range(0, 70000).find("must lie in"), std::string::npos);
}

TEST(Validation, ScaleAndZeroPoint) {
  EXPECT_TRUE(fq::check_scale_value(0.1f).empty());
  EXPECT_FALSE(fq::check_scale_value(0.0f).empty());
  EXPECT_FALSE(fq::check_scale_value(-1.0f).empty());
  EXPECT_FALSE(fq::check_scale_value(std::nanf("")).empty());
  EXPECT_FALSE(fq::check_scale_value(std::numeric_limits<float>::infinity()).empty());
  EXPECT_FALSE(fq::check_scale_value(1e-40f).empty());  // subnormal: 1/scale overflows
  EXPECT_NE(fq::check_scale_value(-1.0f).find("scale must be"), std::string::npos);
  EXPECT_TRUE(fq::check_zero_point_value(0, -128, 127).empty());
  EXPECT_NE(fq::check_zero_point_value(200, -128, 127).find("zero_point (200)"), std::string::npos);
  fq::Rounding r{};
  EXPECT_TRUE(fq::parse_rounding("half_away", &r));
  EXPECT_EQ(r, fq::Rounding::kHalfAway);
  EXPECT_TRUE(fq::parse_rounding("stochastic", &r));
  EXPECT_EQ(r, fq::Rounding::kStochastic);
  EXPECT_STREQ(fq::rounding_name(r), "stochastic");
  EXPECT_FALSE(fq::parse_rounding("nearest", &r));
  EXPECT_EQ(r, fq::Rounding::kStochastic);  // left alone
}

}  // namespace
