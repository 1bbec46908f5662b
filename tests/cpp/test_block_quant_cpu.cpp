// The CPU reference of block-scaled fake quantization (fakequant/block_quant.h) against values
// worked out by hand: the minifloat grids (ties, subnormals, saturation, NaN, signed zeros) of
// every element format, the E8M0 exponent of each MX scale mode at its edges, whole blocks of
// each scale rule (scales, outputs and mask bits), tile geometry (partial and 2-D tiles, the
// tensor abs-max pass), the argument checks and the reproducibility of stochastic rounding.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "fakequant/block_quant.h"
#include "test_util.h"

namespace fq = fakequant;
using fakequant_test::mask_bit;

namespace {

constexpr fq::Rounding kEven = fq::Rounding::kHalfEven;
constexpr fq::Rounding kAway = fq::Rounding::kHalfAway;

uint32_t bits_of(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof(b));
  return b;
}

// The same float, bit for bit (so +0 and -0 differ; every NaN is accepted for a NaN).
::testing::AssertionResult same_float(float want, float got) {
  if (std::isnan(want) && std::isnan(got)) return ::testing::AssertionSuccess();
  if (bits_of(want) == bits_of(got)) return ::testing::AssertionSuccess();
  char bits[48];
  std::snprintf(bits, sizeof(bits), " (0x%08X vs 0x%08X)", bits_of(want), bits_of(got));
  return ::testing::AssertionFailure() << "want " << want << ", got " << got << bits;
}

float round_mf(float v, fq::BlockFormat f, fq::Rounding mode = kEven, uint32_t random = 0) {
  return fq::round_minifloat(v, fq::minifloat_of(f), mode, random);
}

// --- element formats -------------------------------------------------------------------------

TEST(RoundMiniFloat, FormatConstants) {
  const fq::MiniFloat e4m3 = fq::minifloat_of(fq::BlockFormat::kE4M3);
  EXPECT_EQ(e4m3.mbits, 3);
  EXPECT_EQ(e4m3.emin, -6);
  EXPECT_EQ(e4m3.max, 448.0f);
  EXPECT_EQ(e4m3.max_pow2, 8);
  const fq::MiniFloat e5m2 = fq::minifloat_of(fq::BlockFormat::kE5M2);
  EXPECT_EQ(e5m2.max, 57344.0f);
  EXPECT_EQ(e5m2.emin, -14);
  EXPECT_EQ(fq::minifloat_of(fq::BlockFormat::kE3M2).max, 28.0f);
  EXPECT_EQ(fq::minifloat_of(fq::BlockFormat::kE2M3).max, 7.5f);
  EXPECT_EQ(fq::minifloat_of(fq::BlockFormat::kE2M1).max, 6.0f);
}

// E2M1's whole grid: 0, 0.5, 1, 1.5, 2, 3, 4, 6. Midpoints go to the even mantissa.
TEST(RoundMiniFloat, E2M1GridAndTies) {
  const fq::BlockFormat f = fq::BlockFormat::kE2M1;
  const float grid[] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  for (float g : grid) {
    EXPECT_TRUE(same_float(g, round_mf(g, f))) << g;
    EXPECT_TRUE(same_float(-g, round_mf(-g, f))) << -g;
  }
  // Ties: 0.25 -> 0, 0.75 -> 1, 1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4.
  const float ties[][2] = {{0.25f, 0.0f}, {0.75f, 1.0f}, {1.25f, 1.0f}, {1.75f, 2.0f},
                           {2.5f, 2.0f},  {3.5f, 4.0f},  {5.0f, 4.0f}};
  for (const auto& t : ties) {
    EXPECT_TRUE(same_float(t[1], round_mf(t[0], f))) << t[0];
    EXPECT_TRUE(same_float(-t[1], round_mf(-t[0], f))) << -t[0];
  }
  // Half away from zero moves every tie up in magnitude.
  const float away[][2] = {{0.25f, 0.5f}, {1.25f, 1.5f}, {2.5f, 3.0f}, {5.0f, 6.0f}};
  for (const auto& t : away) {
    EXPECT_TRUE(same_float(t[1], round_mf(t[0], f, kAway))) << t[0];
    EXPECT_TRUE(same_float(-t[1], round_mf(-t[0], f, kAway))) << -t[0];
  }
  // Off-tie values go to the nearest point.
  EXPECT_TRUE(same_float(6.0f, round_mf(5.01f, f)));
  EXPECT_TRUE(same_float(4.0f, round_mf(4.99f, f)));
  EXPECT_TRUE(same_float(0.5f, round_mf(0.26f, f)));
}

TEST(RoundMiniFloat, SaturationNaNAndSignedZeros) {
  struct Case {
    fq::BlockFormat f;
    float max, above;
  };
  const Case cases[] = {{fq::BlockFormat::kE4M3, 448.0f, 464.0f},     {fq::BlockFormat::kE5M2, 57344.0f, 61440.0f},
                        {fq::BlockFormat::kE3M2, 28.0f, 30.0f},        {fq::BlockFormat::kE2M3, 7.5f, 7.75f},
                        {fq::BlockFormat::kE2M1, 6.0f, 7.0f}};
  for (const Case& c : cases) {
    SCOPED_TRACE(static_cast<int>(c.f));
    EXPECT_TRUE(same_float(c.max, round_mf(c.max, c.f)));
    EXPECT_TRUE(same_float(c.max, round_mf(c.above, c.f)));  // the midpoint to the next binade saturates
    EXPECT_TRUE(same_float(-c.max, round_mf(-c.above, c.f)));
    EXPECT_TRUE(same_float(c.max, round_mf(1e30f, c.f)));
    EXPECT_TRUE(same_float(c.max, round_mf(INFINITY, c.f)));
    EXPECT_TRUE(same_float(-c.max, round_mf(-INFINITY, c.f)));
    EXPECT_TRUE(same_float(c.max, round_mf(INFINITY, c.f, fq::Rounding::kStochastic, 0xFFFFFFFFu)));
    EXPECT_TRUE(std::isnan(round_mf(NAN, c.f)));
    EXPECT_TRUE(std::isnan(round_mf(-NAN, c.f, kAway)));
    EXPECT_TRUE(same_float(0.0f, round_mf(0.0f, c.f)));
    EXPECT_TRUE(same_float(-0.0f, round_mf(-0.0f, c.f)));
    // A negative value rounding to zero keeps its sign.
    EXPECT_TRUE(same_float(-0.0f, round_mf(-1e-30f, c.f)));
    EXPECT_TRUE(same_float(0.0f, round_mf(1e-30f, c.f)));
  }
}

// The grid step is 2^(max(e, emin) - mbits): below the smallest normal 2^emin the step stays
// 2^(emin - mbits) (subnormals); a tie with the smallest subnormal goes to zero.
TEST(RoundMiniFloat, NormalsAndSubnormalsEveryFormat) {
  struct Case {
    fq::BlockFormat f;
    float in, want;
  };
  const Case cases[] = {
      // E4M3: step 1/8 on [1, 2); subnormal step 2^-9.
      {fq::BlockFormat::kE4M3, 1.0625f, 1.0f},
      {fq::BlockFormat::kE4M3, 1.1875f, 1.25f},
      {fq::BlockFormat::kE4M3, 447.0f, 448.0f},
      {fq::BlockFormat::kE4M3, 3.3f / 2.0f, 1.625f},
      {fq::BlockFormat::kE4M3, std::ldexp(1.0f, -6), std::ldexp(1.0f, -6)},     // smallest normal
      {fq::BlockFormat::kE4M3, std::ldexp(1.0f, -9), std::ldexp(1.0f, -9)},     // smallest subnormal
      {fq::BlockFormat::kE4M3, std::ldexp(1.0f, -10), 0.0f},                    // tie -> 0
      {fq::BlockFormat::kE4M3, std::ldexp(3.0f, -11), std::ldexp(1.0f, -9)},    // 0.75 step -> 1 step
      {fq::BlockFormat::kE4M3, std::ldexp(3.0f, -10), std::ldexp(1.0f, -8)},    // 1.5 steps -> 2 (even)
      {fq::BlockFormat::kE4M3, std::ldexp(5.0f, -10), std::ldexp(1.0f, -8)},    // 2.5 steps -> 2 (even)
      // E5M2: step 1/4 on [1, 2); subnormal step 2^-16.
      {fq::BlockFormat::kE5M2, 1.125f, 1.0f},
      {fq::BlockFormat::kE5M2, 1.375f, 1.5f},
      {fq::BlockFormat::kE5M2, 3.0f * 4096.0f + 1024.0f, 3.0f * 4096.0f},      // 13312: tie between 12288 and 14336
      {fq::BlockFormat::kE5M2, std::ldexp(1.0f, -17), 0.0f},
      {fq::BlockFormat::kE5M2, std::ldexp(3.0f, -17), std::ldexp(1.0f, -15)},
      {fq::BlockFormat::kE5M2, std::ldexp(1.0f, -16), std::ldexp(1.0f, -16)},
      // E3M2: step 4 on [16, 28]; subnormal step 1/16.
      {fq::BlockFormat::kE3M2, 26.0f, 24.0f},
      {fq::BlockFormat::kE3M2, 27.0f, 28.0f},
      {fq::BlockFormat::kE3M2, 1.0f / 32.0f, 0.0f},
      {fq::BlockFormat::kE3M2, 3.0f / 32.0f, 0.125f},
      {fq::BlockFormat::kE3M2, 0.1875f, 0.1875f},
      // E2M3: step 1/2 on [4, 7.5]; subnormal step 1/8.
      {fq::BlockFormat::kE2M3, 7.25f, 7.0f},
      {fq::BlockFormat::kE2M3, 6.75f, 7.0f},
      {fq::BlockFormat::kE2M3, 0.0625f, 0.0f},
      {fq::BlockFormat::kE2M3, 0.1875f, 0.25f},
      {fq::BlockFormat::kE2M3, 0.875f, 0.875f},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << "format " << static_cast<int>(c.f) << " in " << c.in);
    EXPECT_TRUE(same_float(c.want, round_mf(c.in, c.f)));
    EXPECT_TRUE(same_float(-c.want, round_mf(-c.in, c.f)));
  }
}

// Stochastic: floor(v / step + u) * step with u = (random >> 8) * 2^-24.
TEST(RoundMiniFloat, StochasticUsesTheRandomWord) {
  const fq::BlockFormat f = fq::BlockFormat::kE2M1;
  const fq::Rounding sr = fq::Rounding::kStochastic;
  EXPECT_TRUE(same_float(2.0f, round_mf(2.5f, f, sr, 0u)));           // u = 0
  EXPECT_TRUE(same_float(2.0f, round_mf(2.5f, f, sr, 0x7FFFFF00u)));  // u = 1/2 - 2^-24
  EXPECT_TRUE(same_float(3.0f, round_mf(2.5f, f, sr, 0x80000000u)));  // u = 1/2
  EXPECT_TRUE(same_float(3.0f, round_mf(2.5f, f, sr, 0xFFFFFFFFu)));
  EXPECT_TRUE(same_float(3.0f, round_mf(2.0f + 1.0f / 64.0f, f, sr, 0xFFFFFFFFu)));
  EXPECT_TRUE(same_float(2.0f, round_mf(2.0f, f, sr, 0xFFFFFFFFu)));  // grid points never move
  // Negative values: floor(-2.5 + u) is -3 for u < 1/2 and -2 from 1/2 on.
  EXPECT_TRUE(same_float(-3.0f, round_mf(-2.5f, f, sr, 0u)));
  EXPECT_TRUE(same_float(-2.0f, round_mf(-2.5f, f, sr, 0x80000000u)));
  // Near the top: 5.5 is between 4 and 6 (step 2); it cannot go past max.
  EXPECT_TRUE(same_float(6.0f, round_mf(5.5f, f, sr, 0x40000000u)));  // 2.75 + 0.25 = 3
  EXPECT_TRUE(same_float(4.0f, round_mf(5.5f, f, sr, 0x3FFFFF00u)));
}

// --- MX scale exponents ------------------------------------------------------------------------

uint32_t mx_exp(float amax, fq::BlockFormat f, fq::MxScaleMode m) {
  return fq::mx_scale_exponent(amax, fq::minifloat_of(f), m);
}

// The exponent of each (amax, exponent) pair under one element format and mode.
void expect_mx_exps(fq::BlockFormat f, fq::MxScaleMode m, std::initializer_list<std::pair<float, uint32_t>> cases) {
  for (const auto& [amax, exponent] : cases) EXPECT_EQ(mx_exp(amax, f, m), exponent) << "amax " << amax;
}

TEST(MxScaleExponent, FloorCeilEven) {
  using M = fq::MxScaleMode;
  const fq::BlockFormat e2m1 = fq::BlockFormat::kE2M1, e4m3 = fq::BlockFormat::kE4M3;
  // floor(log2 amax) - max_pow2 + 127.
  expect_mx_exps(e4m3, M::kFloor, {{1.0f, 119u}});
  expect_mx_exps(e2m1, M::kFloor, {{1.0f, 125u}, {6.0f, 127u}, {7.99f, 127u}, {8.0f, 128u}, {3.0e38f, 252u}});
  // CEIL adds one unless amax is a power of two.
  expect_mx_exps(e4m3, M::kCeil, {{1.0f, 119u}, {1.5f, 120u}});
  expect_mx_exps(e2m1, M::kCeil, {{std::nextafter(1.0f, 2.0f), 126u}});
  // EVEN rounds amax half up to the element's mantissa width first: E2M1 keeps 1 bit
  // (1.5 stays, 1.75 -> 2), E4M3 3 bits (1.875 stays, 1.9375 -> 2).
  expect_mx_exps(e2m1, M::kEven, {{1.5f, 125u}, {1.25f, 125u}, {1.75f, 126u}});
  expect_mx_exps(e4m3, M::kEven, {{1.875f, 119u}, {1.9375f, 120u}});
}

TEST(MxScaleExponent, Rceil) {
  using M = fq::MxScaleMode;
  const fq::BlockFormat e4m3 = fq::BlockFormat::kE4M3, e2m1 = fq::BlockFormat::kE2M1;
  // ceil(log2(amax / max)) + 127; for E2M1 ceil(log2(1/6)) = -2 and ceil(log2(5e37)) = 126.
  expect_mx_exps(e4m3, M::kRceil, {{448.0f, 127u}, {449.0f, 128u}, {224.0f, 126u}, {225.0f, 127u}});
  expect_mx_exps(e2m1, M::kRceil, {{6.0f, 127u}, {1.0f, 125u}, {3.0e38f, 253u}});
}

TEST(MxScaleExponent, NaNInfZeroSubnormal) {
  using M = fq::MxScaleMode;
  const fq::BlockFormat e4m3 = fq::BlockFormat::kE4M3, e2m1 = fq::BlockFormat::kE2M1;
  for (M m : {M::kFloor, M::kCeil, M::kEven, M::kRceil}) {
    SCOPED_TRACE(static_cast<int>(m));
    EXPECT_EQ(mx_exp(NAN, e4m3, m), 255u);
    EXPECT_EQ(mx_exp(NAN, e2m1, m), 255u);
    EXPECT_EQ(mx_exp(0.0f, e4m3, m), 0u);  // clamped to 2^-127 (RCEIL: log2 0 = -inf)
    EXPECT_EQ(mx_exp(1e-40f, e2m1, m), 0u);  // subnormal amax: clamped as well
  }
  // inf: the exponent field 255 minus max_pow2 (FLOOR / CEIL / EVEN: no mantissa bits).
  EXPECT_EQ(mx_exp(INFINITY, e4m3, M::kFloor), 247u);
  EXPECT_EQ(mx_exp(INFINITY, e4m3, M::kCeil), 247u);
  EXPECT_EQ(mx_exp(INFINITY, e4m3, M::kEven), 247u);
  EXPECT_EQ(mx_exp(INFINITY, e2m1, M::kFloor), 253u);
  EXPECT_EQ(mx_exp(INFINITY, e4m3, M::kRceil), 254u);
  // The largest normal below 2^-126 * 2^max_pow2 still clamps at 0; 2^-119 does not (E4M3).
  EXPECT_EQ(mx_exp(std::ldexp(1.0f, -119), e4m3, M::kFloor), 0u);
  EXPECT_EQ(mx_exp(std::ldexp(1.0f, -118), e4m3, M::kFloor), 1u);
}

TEST(MxScaleExponent, E8M0Values) {
  EXPECT_TRUE(same_float(1.0f, fq::e8m0_value(127u)));
  EXPECT_TRUE(same_float(0.5f, fq::e8m0_value(126u)));
  EXPECT_TRUE(same_float(std::ldexp(1.0f, 127), fq::e8m0_value(254u)));
  EXPECT_TRUE(same_float(std::ldexp(1.0f, -126), fq::e8m0_value(1u)));
  EXPECT_EQ(bits_of(fq::e8m0_value(0u)), 0x00400000u);  // 2^-127, a subnormal
  EXPECT_TRUE(std::isnan(fq::e8m0_value(255u)));
}

// --- whole blocks ----------------------------------------------------------------------------

struct Outputs {
  std::vector<float> y, scale, amax;
  std::vector<int32_t> zp;
  std::vector<uint8_t> mask;
};

// block_quant_cpu on float32 x (rows x cols), every output buffer given.
Outputs run_cpu(fq::BlockQuantArgs a, const std::vector<float>& x) {
  const int64_t n = a.rows * a.cols;
  Outputs r;
  r.y.assign(n, -7.0f);
  r.mask.assign(fq::mask_bytes(n), 0);
  r.scale.assign(fq::block_grid_rows(a) * fq::block_grid_cols(a), -7.0f);
  r.zp.assign(r.scale.size(), -7);
  r.amax.assign(1, -7.0f);
  a.input = x.data();
  a.output = r.y.data();
  a.mask = r.mask.data();
  a.scale = r.scale.data();
  a.zero_point = fq::block_rule_is_int(a.rule) ? r.zp.data() : nullptr;
  a.tensor_amax = r.amax.data();
  fq::block_quant_cpu(a);
  return r;
}

fq::BlockQuantArgs row_args(int64_t rows, int64_t cols, int64_t block_cols, fq::BlockFormat f,
                            fq::BlockScaleRule rule) {
  fq::BlockQuantArgs a;
  a.rows = rows;
  a.cols = cols;
  a.block_rows = 1;
  a.block_cols = block_cols;
  a.format = f;
  a.rule = rule;
  return a;
}

// MX FLOOR, E2M1, one block of 32 with abs-max 3.5: exponent floor(log2 3.5) - 2 = -1, scale
// 0.5; x / 0.5 is rounded to E2M1 and scaled back. 3.5 / 0.5 = 7 saturates (mask bit 0).
TEST(BlockQuantCpu, MxFloorE2M1Block) {
  std::vector<float> x(32, 0.0f);
  const float in[] = {3.5f, 3.0f, 1.3f, 0.3f, -2.2f, 0.125f, -0.375f, 1.25f};
  const float want[] = {3.0f, 3.0f, 1.5f, 0.25f, -2.0f, 0.0f, -0.5f, 1.0f};
  for (int i = 0; i < 8; ++i) x[i * 4] = in[i];
  x[31] = -0.1f;  // -0.2 in E2M1 steps of 0.5: -0
  const Outputs r = run_cpu(row_args(1, 32, 32, fq::BlockFormat::kE2M1, fq::BlockScaleRule::kMxFloor), x);
  EXPECT_TRUE(same_float(0.5f, r.scale[0]));
  for (int i = 0; i < 8; ++i) EXPECT_TRUE(same_float(want[i], r.y[i * 4])) << in[i];
  EXPECT_TRUE(same_float(-0.0f, r.y[31]));
  EXPECT_TRUE(same_float(0.0f, r.y[1]));
  EXPECT_FALSE(mask_bit(r.mask, 0));
  for (int i = 1; i < 32; ++i) EXPECT_TRUE(mask_bit(r.mask, i)) << i;
}

// MX RCEIL multiplies by the reciprocal 2^(127 - e); E4M3 elements, abs-max 449 -> e = 128,
// scale 2, so 449 * 0.5 = 224.5 -> 224 (step 16 on [128, 256)), * 2 = 448.
TEST(BlockQuantCpu, MxRceilE4M3Block) {
  std::vector<float> x = {449.0f, 3.0f, -100.0f, 0.01f};
  const Outputs r = run_cpu(row_args(1, 4, 32, fq::BlockFormat::kE4M3, fq::BlockScaleRule::kMxRceil), x);
  EXPECT_TRUE(same_float(2.0f, r.scale[0]));
  EXPECT_TRUE(same_float(448.0f, r.y[0]));
  EXPECT_TRUE(same_float(3.0f, r.y[1]));
  EXPECT_TRUE(same_float(-96.0f, r.y[2]));  // -50 -> -48 (step 4 on [32, 64)), * 2
  EXPECT_TRUE(same_float(std::ldexp(3.0f, -8), r.y[3]));  // 0.005: 2.56 subnormal steps of 2^-9 -> 3, * 2
}

// NVFP4 torchao: block scale amax / 6 rounded to E4M3 (clamped to [2^-6, 448]), elements
// multiplied by its reciprocal. amax 2.7 -> 0.45 -> 0.4375 (E4M3 step 1/32 on [0.25, 0.5)).
TEST(BlockQuantCpu, Nvfp4TorchaoBlock) {
  std::vector<float> x(16, 0.0f);
  x[0] = 2.7f, x[1] = 1.0f, x[2] = -0.7f, x[15] = 2.0f;
  const Outputs r = run_cpu(row_args(1, 16, 16, fq::BlockFormat::kE2M1, fq::BlockScaleRule::kNvfp4Torchao), x);
  EXPECT_TRUE(same_float(0.4375f, r.scale[0]));
  EXPECT_TRUE(same_float(6.0f * 0.4375f, r.y[0]));  // 6.17 saturates
  EXPECT_FALSE(mask_bit(r.mask, 0));
  EXPECT_TRUE(same_float(2.0f * 0.4375f, r.y[1]));   // 2.29 -> 2
  EXPECT_TRUE(same_float(-1.5f * 0.4375f, r.y[2]));  // -1.6 -> -1.5
  EXPECT_TRUE(same_float(4.0f * 0.4375f, r.y[15]));  // 4.57 -> 4
  EXPECT_TRUE(mask_bit(r.mask, 15));
  // An all-zero block takes the lower clamp 2^-6 and outputs zeros.
  std::vector<float> z(16, 0.0f);
  const Outputs rz = run_cpu(row_args(1, 16, 16, fq::BlockFormat::kE2M1, fq::BlockScaleRule::kNvfp4Torchao), z);
  EXPECT_TRUE(same_float(0.015625f, rz.scale[0]));
  for (float v : rz.y) EXPECT_TRUE(same_float(0.0f, v));
}

// NVFP4 with the tensor scale: ts = tensor_amax / 2688. A block holding 5376 sets ts = 2; the
// first block (amax 2.7) gets E4M3(0.45 / 2) = 0.21875 and the same elements as above.
TEST(BlockQuantCpu, Nvfp4TensorScale) {
  std::vector<float> x(32, 0.0f);
  x[0] = 2.7f, x[1] = 1.0f, x[16] = 5376.0f, x[17] = -100.0f;
  for (auto rule : {fq::BlockScaleRule::kNvfp4Torchao, fq::BlockScaleRule::kNvfp4ModelOpt}) {
    fq::BlockQuantArgs a = row_args(1, 32, 16, fq::BlockFormat::kE2M1, rule);
    a.tensor_scale = true;
    ASSERT_TRUE(fq::block_quant_needs_tensor_amax(a));
    const Outputs r = run_cpu(a, x);
    EXPECT_TRUE(same_float(5376.0f, r.amax[0]));
    EXPECT_TRUE(same_float(0.21875f, r.scale[0]));
    EXPECT_TRUE(same_float(448.0f, r.scale[1]));  // 5376 / 6 / 2
    EXPECT_TRUE(same_float(6.0f * 0.4375f, r.y[0]));
    EXPECT_TRUE(same_float(2.0f * 0.4375f, r.y[1]));
    EXPECT_TRUE(same_float(5376.0f, r.y[16]));
    EXPECT_TRUE(same_float(-0.0f, r.y[17]));  // -100 / 896 = -0.11: below E2M1's 0.25 midpoint
  }
}

// NVFP4 ModelOpt: no lower clamp; the E4M3 block scale of 4e-5 / 6 rounds to 0 (below half
// of E4M3's smallest subnormal 2^-9) and is reported as 0, the elements are divided by 1.0.
TEST(BlockQuantCpu, Nvfp4ModelOptTinyBlock) {
  std::vector<float> x(16, 0.0f);
  x[0] = 1e-6f, x[1] = -4e-5f;
  const Outputs r = run_cpu(row_args(1, 16, 16, fq::BlockFormat::kE2M1, fq::BlockScaleRule::kNvfp4ModelOpt), x);
  EXPECT_TRUE(same_float(0.0f, r.scale[0]));
  EXPECT_TRUE(same_float(0.0f, r.y[0]));
  EXPECT_TRUE(same_float(-0.0f, r.y[1]));
}

// FP8 torchao, per row: scale = amax / 448 (in the input's dtype), x / scale to E4M3, * scale.
TEST(BlockQuantCpu, Fp8TorchaoRow) {
  std::vector<float> x = {896.0f, 3.3f, -896.0f, 0.001f, 0.0f, -1.0f, 7.0f, 100.0f};
  fq::BlockQuantArgs a = row_args(1, 8, 8, fq::BlockFormat::kE4M3, fq::BlockScaleRule::kFp8Torchao);
  a.block_cols = 8;
  const Outputs r = run_cpu(a, x);
  EXPECT_TRUE(same_float(2.0f, r.scale[0]));
  // 3.3 / 2 = 1.65 -> 1.625 (step 1/8); 0.001 / 2 is 0.26 subnormal steps -> 0; 100 / 2 = 50 is
  // 12.5 steps of 4 -> 48.
  const float want[] = {896.0f, 3.25f, -896.0f, 0.0f, 0.0f, -1.0f, 7.0f, 96.0f};
  for (int i = 0; i < 8; ++i) EXPECT_TRUE(same_float(want[i], r.y[i])) << i;
  // amax_upper clamps the abs-max first: scale 1, 896 saturates at 448 (mask 0).
  a.amax_upper = 448.0f;
  const Outputs c = run_cpu(a, x);
  EXPECT_TRUE(same_float(1.0f, c.scale[0]));
  EXPECT_TRUE(same_float(448.0f, c.y[0]));
  EXPECT_FALSE(mask_bit(c.mask, 0));
  EXPECT_TRUE(mask_bit(c.mask, 1));
}

// The scale is rounded to the input dtype: 1000 / 448 in bfloat16 is 2.234375.
TEST(BlockQuantCpu, Fp8TorchaoScaleInInputDtype) {
  const std::vector<fq::BFloat16> x = {fq::from_float<fq::BFloat16>(1000.0f), fq::from_float<fq::BFloat16>(1.0f)};
  std::vector<fq::BFloat16> y(2);
  std::vector<uint8_t> m(1);
  float scale = 0.0f;
  float amax = 0.0f;
  fq::BlockQuantArgs a = row_args(1, 2, 2, fq::BlockFormat::kE4M3, fq::BlockScaleRule::kFp8Torchao);
  a.dtype = fq::DType::kBFloat16;
  a.input = x.data(), a.output = y.data(), a.mask = m.data(), a.scale = &scale, a.tensor_amax = &amax;
  fq::block_quant_cpu(a);
  EXPECT_TRUE(same_float(2.234375f, scale));
}

// FP8 ModelOpt: scale = 448 / amax multiplies, the float32 reciprocal scales back; an abs-max
// <= 2^-24 counts as 1 (scale 448: tiny elements round to zeros of their sign).
TEST(BlockQuantCpu, Fp8ModelOptRowsAndZeroBlock) {
  std::vector<float> x = {896.0f, 3.3f, -1.0f, 100.0f, -1e-8f, 5e-8f, 0.0f, -0.0f};
  fq::BlockQuantArgs a = row_args(2, 4, 4, fq::BlockFormat::kE4M3, fq::BlockScaleRule::kFp8ModelOpt);
  const Outputs r = run_cpu(a, x);
  EXPECT_TRUE(same_float(0.5f, r.scale[0]));
  EXPECT_TRUE(same_float(896.0f, r.y[0]));
  EXPECT_TRUE(same_float(3.25f, r.y[1]));
  EXPECT_TRUE(same_float(-1.0f, r.y[2]));
  EXPECT_TRUE(same_float(96.0f, r.y[3]));
  EXPECT_TRUE(same_float(448.0f, r.scale[1]));
  const float zeros[] = {-0.0f, 0.0f, 0.0f, -0.0f};
  for (int i = 4; i < 8; ++i) {
    EXPECT_TRUE(same_float(zeros[i - 4], r.y[i])) << i;
    EXPECT_TRUE(mask_bit(r.mask, i)) << i;
  }
}

// Int ModelOpt: scale = quant_max / amax multiplies, round half even, clamp, divide back.
TEST(BlockQuantCpu, IntModelOptBlock) {
  std::vector<float> x = {3.5f, 1.25f, 1.75f, -3.5f, 0.2f, -0.25f, 0.0f, 2.6f};
  fq::BlockQuantArgs a = row_args(1, 8, 8, fq::BlockFormat::kInt, fq::BlockScaleRule::kIntModelOpt);
  a.quant_min = -8;
  a.quant_max = 7;
  const Outputs r = run_cpu(a, x);
  EXPECT_TRUE(same_float(2.0f, r.scale[0]));
  EXPECT_EQ(r.zp[0], 0);
  // -0.25 * 2 = -0.5 rounds to -0, which stays -0 (no zero point is added).
  const float want[] = {3.5f, 1.0f, 2.0f, -3.5f, 0.0f, -0.0f, 0.0f, 2.5f};
  for (int i = 0; i < 8; ++i) EXPECT_TRUE(same_float(want[i], r.y[i])) << x[i];
  for (int i = 0; i < 8; ++i) EXPECT_TRUE(mask_bit(r.mask, i)) << i;
  // An abs-max <= 2^-24 multiplies by 0 and divides by 1: zeros of the elements' signs.
  const std::vector<float> tiny = {1e-8f, -5e-8f, 0.0f, 2e-9f, -0.0f, 0.0f, 0.0f, 0.0f};
  const Outputs z = run_cpu(a, tiny);
  EXPECT_TRUE(same_float(1.0f, z.scale[0]));
  const float signs[] = {0.0f, -0.0f, 0.0f, 0.0f, -0.0f, 0.0f, 0.0f, 0.0f};
  for (int i = 0; i < 8; ++i) EXPECT_TRUE(same_float(signs[i], z.y[i])) << i;
}

// Int affine (torchao choose_qparams_affine): min and max widened to include 0, scale =
// (max - min) / (qmax - qmin) >= eps, zero point qmin - round(min / scale) clamped.
TEST(BlockQuantCpu, IntAffineBlocks) {
  // Row 0: [-1, 2] -> scale 3 / 15 = 0.2, zero point 0 - round(-5) = 5. Row 1: all positive,
  // min 0 -> scale 4 / 15, zero point 0. Row 2: all zero -> scale eps, zero point 0.
  std::vector<float> x = {-1.0f, 2.0f, 0.3f, 0.5f, 1.0f, 4.0f, 2.0f, 3.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  fq::BlockQuantArgs a = row_args(3, 4, 4, fq::BlockFormat::kInt, fq::BlockScaleRule::kIntAffine);
  a.quant_min = 0;
  a.quant_max = 15;
  const Outputs r = run_cpu(a, x);
  EXPECT_TRUE(same_float(0.2f, r.scale[0]));
  EXPECT_EQ(r.zp[0], 5);
  EXPECT_TRUE(same_float(4.0f / 15.0f, r.scale[1]));
  EXPECT_EQ(r.zp[1], 0);
  EXPECT_TRUE(same_float(std::numeric_limits<float>::min(), r.scale[2]));
  EXPECT_EQ(r.zp[2], 0);
  // Elements: q = clamp(rint(x * (1 / scale)) + zp, 0, 15), y = (q - zp) * scale.
  for (int i = 0; i < 12; ++i) {
    const float s = r.scale[i / 4];
    const float zp = static_cast<float>(r.zp[i / 4]);
    const float q = std::nearbyint(x[i] * (1.0f / s)) + zp;
    const float want = (std::min(std::max(q, 0.0f), 15.0f) - zp) * s;
    EXPECT_TRUE(same_float(want, r.y[i])) << i;
  }
  EXPECT_TRUE(same_float(0.4f, r.y[2]));  // 0.3 * 5 = 1.5 -> 2 (even)
  EXPECT_TRUE(same_float(0.4f, r.y[3]));  // 0.5 * 5 = 2.5 -> 2 (even)
}

// Int affine with the float-domain zero point (torchao's tinygemm): zero point
// trunc(min + scale * (levels + 1) / 2), scale floor 1e-6.
TEST(BlockQuantCpu, IntAffineFloatZeroPoint) {
  std::vector<float> x = {-1.0f, 2.0f, 0.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f};
  fq::BlockQuantArgs a = row_args(2, 4, 4, fq::BlockFormat::kInt, fq::BlockScaleRule::kIntAffineFloatZp);
  a.quant_min = 0;
  a.quant_max = 15;
  const Outputs r = run_cpu(a, x);
  EXPECT_TRUE(same_float(0.2f, r.scale[0]));
  EXPECT_EQ(r.zp[0], 0);  // -1 + 0.2 * 8 = 0.6 -> 0
  EXPECT_TRUE(same_float(1e-6f, r.scale[1]));  // max - min = 0: the floor
  EXPECT_EQ(r.zp[1], 1);  // 1 + 8e-6 -> 1
}

// Zero points become int32 as torch's CPU cast does: truncated, NaN and out-of-range values
// INT32_MIN. A NaN tile of an affine rule gets a NaN scale and that zero point.
TEST(BlockQuantCpu, ZeroPointConversion) {
  EXPECT_EQ(fq::trunc_to_int32(-3.7f), -3);
  EXPECT_EQ(fq::trunc_to_int32(3.7f), 3);
  EXPECT_EQ(fq::trunc_to_int32(2147483520.0f), 2147483520);  // the largest float below 2^31
  EXPECT_EQ(fq::trunc_to_int32(2147483648.0f), INT32_MIN);
  EXPECT_EQ(fq::trunc_to_int32(-2147483648.0f), INT32_MIN);
  EXPECT_EQ(fq::trunc_to_int32(-3e9f), INT32_MIN);
  EXPECT_EQ(fq::trunc_to_int32(NAN), INT32_MIN);
  EXPECT_EQ(fq::trunc_to_int32(INFINITY), INT32_MIN);
  for (auto rule : {fq::BlockScaleRule::kIntAffine, fq::BlockScaleRule::kIntAffineFloatZp}) {
    std::vector<float> x = {1.0f, NAN, 2.0f, 3.0f};
    fq::BlockQuantArgs a = row_args(2, 2, 2, fq::BlockFormat::kInt, rule);
    a.quant_min = -8;
    a.quant_max = 7;
    const Outputs r = run_cpu(a, x);
    EXPECT_TRUE(std::isnan(r.scale[0]));
    EXPECT_EQ(r.zp[0], INT32_MIN);
    EXPECT_FALSE(std::isnan(r.scale[1]));
  }
}

// --- geometry -------------------------------------------------------------------------------

// 2-D tiles with partial edge tiles: a 5 x 7 matrix in 2 x 3 tiles (3 x 3 of them), per-tile
// abs-max read back from the MX scales (E2M1 FLOOR: scale = 2^(floor(log2 amax) - 2)).
TEST(BlockQuantCpu, TwoDimensionalPartialTiles) {
  const int64_t rows = 5, cols = 7;
  std::vector<float> x(rows * cols, 0.25f);
  // Tile (tr, tc) gets the abs-max 2^(tr * 3 + tc) at its last element.
  for (int64_t tr = 0; tr < 3; ++tr) {
    for (int64_t tc = 0; tc < 3; ++tc) {
      const int64_t r = std::min<int64_t>(tr * 2 + 1, rows - 1), c = std::min<int64_t>(tc * 3 + 2, cols - 1);
      x[r * cols + c] = -std::ldexp(1.0f, static_cast<int>(tr * 3 + tc));
    }
  }
  fq::BlockQuantArgs a = row_args(rows, cols, 3, fq::BlockFormat::kE2M1, fq::BlockScaleRule::kMxFloor);
  a.block_rows = 2;
  const Outputs r = run_cpu(a, x);
  ASSERT_EQ(r.scale.size(), 9u);
  for (int t = 0; t < 9; ++t) EXPECT_TRUE(same_float(std::ldexp(1.0f, t - 2), r.scale[t])) << t;
}

// A tile over the whole tensor reads the tensor abs-max of pass 1; NaN anywhere makes it NaN
// (the quiet NaN 0x7FC00000) and the scale NaN.
TEST(BlockQuantCpu, WholeTensorTileAndNaN) {
  std::vector<float> x = {1.0f, -896.0f, 2.0f, 3.0f, 0.5f, 7.0f};
  fq::BlockQuantArgs a = row_args(2, 3, 64, fq::BlockFormat::kE4M3, fq::BlockScaleRule::kFp8Torchao);
  a.block_rows = 4;
  ASSERT_TRUE(fq::block_covers_tensor(a));
  ASSERT_TRUE(fq::block_quant_needs_tensor_amax(a));
  Outputs r = run_cpu(a, x);
  EXPECT_TRUE(same_float(896.0f, r.amax[0]));
  ASSERT_EQ(r.scale.size(), 1u);
  EXPECT_TRUE(same_float(2.0f, r.scale[0]));
  x[4] = -NAN;
  r = run_cpu(a, x);
  EXPECT_EQ(bits_of(r.amax[0]), 0x7FC00000u);
  EXPECT_TRUE(std::isnan(r.scale[0]));
  for (int i = 0; i < 6; ++i) EXPECT_FALSE(mask_bit(r.mask, i)) << i;  // x / NaN is NaN: out of range
}

// Splitting the bands into chunks (block_bands_per_chunk) gives the same bits as one call.
TEST(BlockQuantCpu, BandChunksMatchOneCall) {
  const int64_t rows = 13, cols = 9;
  const std::vector<float> x = fakequant_test::random_inputs(rows * cols, 2.0f, 7u);
  fq::BlockQuantArgs a = row_args(rows, cols, 4, fq::BlockFormat::kE2M3, fq::BlockScaleRule::kMxEven);
  a.block_rows = 2;
  const Outputs whole = run_cpu(a, x);
  Outputs parts;
  parts.y.assign(x.size(), 0.0f);
  parts.mask.assign(fq::mask_bytes(rows * cols), 0);
  parts.scale.assign(whole.scale.size(), 0.0f);
  a.input = x.data(), a.output = parts.y.data(), a.mask = parts.mask.data(), a.scale = parts.scale.data();
  const int64_t per_chunk = fq::block_bands_per_chunk(a);
  EXPECT_EQ(per_chunk, 4);  // 2 * 9 = 18 elements a band: 4 bands fill whole mask bytes
  // Last chunk first: each chunk owns its mask bytes, so the order does not matter.
  for (int64_t b0 = (fq::block_grid_rows(a) - 1) / per_chunk * per_chunk; b0 >= 0; b0 -= per_chunk) {
    fq::block_quant_cpu_bands(a, b0, b0 + per_chunk);
  }
  EXPECT_EQ(whole.y, parts.y);
  EXPECT_EQ(whole.mask, parts.mask);
  EXPECT_EQ(whole.scale, parts.scale);
}

// --- stochastic rounding ------------------------------------------------------------------------

TEST(BlockQuantCpu, StochasticRoundingIsReproducible) {
  const int64_t rows = 4, cols = 64;
  const std::vector<float> x = fakequant_test::random_inputs(rows * cols, 1.0f, 11u);
  fq::BlockQuantArgs a = row_args(rows, cols, 32, fq::BlockFormat::kE2M1, fq::BlockScaleRule::kMxFloor);
  a.rounding = fq::Rounding::kStochastic;
  const int64_t seed[2] = {1234, 5};
  a.seed = seed;
  const Outputs r1 = run_cpu(a, x);
  const Outputs r2 = run_cpu(a, x);
  EXPECT_EQ(r1.y, r2.y);
  EXPECT_EQ(r1.mask, r2.mask);
  // Element i takes word i % 4 of quad i / 4.
  const fq::MiniFloat mf = fq::minifloat_of(a.format);
  int64_t differs_from_even = 0;
  for (int64_t i = 0; i < rows * cols; ++i) {
    const float s = r1.scale[i / 32];
    const uint32_t word = fq::stochastic_words(static_cast<uint64_t>(i / 4), 1234u, 5u).v[i % 4];
    const float want = fq::round_minifloat(x[i] / s, mf, fq::Rounding::kStochastic, word) * s;
    EXPECT_TRUE(same_float(want, r1.y[i])) << i;
    differs_from_even += fq::round_minifloat(x[i] / s, mf, kEven) * s != r1.y[i];
  }
  EXPECT_GT(differs_from_even, 0);
  const int64_t other[2] = {1234, 6};
  a.seed = other;
  EXPECT_NE(run_cpu(a, x).y, r1.y);
}

// --- arguments ----------------------------------------------------------------------------------

struct BadArgs {
  const char* what;
  void (*apply)(fq::BlockQuantArgs&);
  const char* message;
};

TEST(BlockQuantArgs, RejectedWithAMessage) {
  static float buffer[64];
  static const int64_t seed[2] = {1, 2};
  const auto base = [] {
    fq::BlockQuantArgs a = row_args(2, 32, 32, fq::BlockFormat::kE2M1, fq::BlockScaleRule::kMxFloor);
    a.input = buffer, a.output = buffer, a.scale = buffer;
    return a;
  };
  EXPECT_EQ(fq::check_block_quant_args(base()), "");
  const BadArgs cases[] = {
      {"negative rows", [](fq::BlockQuantArgs& a) { a.rows = -1; }, "rows and cols must be >= 0"},
      {"zero block", [](fq::BlockQuantArgs& a) { a.block_cols = 0; }, "block_rows and block_cols must be >= 1"},
      {"rule", [](fq::BlockQuantArgs& a) { a.rule = static_cast<fq::BlockScaleRule>(11); },
       "scale_rule must be one of"},
      {"format", [](fq::BlockQuantArgs& a) { a.format = static_cast<fq::BlockFormat>(-1); }, "format must be one of"},
      {"mx int", [](fq::BlockQuantArgs& a) { a.format = fq::BlockFormat::kInt; },
       "scale_rule 'mx_floor' does not take format 'int'"},
      {"nvfp4 e4m3",
       [](fq::BlockQuantArgs& a) { a.rule = fq::BlockScaleRule::kNvfp4Torchao, a.format = fq::BlockFormat::kE4M3; },
       "scale_rule 'nvfp4_torchao' does not take format 'e4m3'"},
      {"fp8 e2m1", [](fq::BlockQuantArgs& a) { a.rule = fq::BlockScaleRule::kFp8ModelOpt; },
       "scale_rule 'fp8_modelopt' does not take format 'e2m1'"},
      {"int e4m3",
       [](fq::BlockQuantArgs& a) { a.rule = fq::BlockScaleRule::kIntAffine, a.format = fq::BlockFormat::kE4M3; },
       "does not take format 'e4m3'"},
      {"range",
       [](fq::BlockQuantArgs& a) {
         a.rule = fq::BlockScaleRule::kIntAffine, a.format = fq::BlockFormat::kInt, a.quant_min = 5, a.quant_max = 4;
       },
       "quant_min (5) must be <= quant_max (4)"},
      {"modelopt asymmetric",
       [](fq::BlockQuantArgs& a) {
         a.rule = fq::BlockScaleRule::kIntModelOpt, a.format = fq::BlockFormat::kInt, a.quant_min = 0, a.quant_max = 15;
       },
       "quant_min"},
      {"eps",
       [](fq::BlockQuantArgs& a) {
         a.rule = fq::BlockScaleRule::kIntAffine, a.format = fq::BlockFormat::kInt, a.eps = INFINITY;
       },
       "eps"},
      {"amax bounds", [](fq::BlockQuantArgs& a) { a.amax_lower = 2.0f, a.amax_upper = 1.0f; },
       "amax_lower must be <= amax_upper"},
      {"amax NaN", [](fq::BlockQuantArgs& a) { a.amax_lower = NAN; }, "amax_lower must be <= amax_upper"},
      {"no seed", [](fq::BlockQuantArgs& a) { a.rounding = fq::Rounding::kStochastic; },
       "rounding 'stochastic' needs a seed"},
      {"int stochastic",
       [](fq::BlockQuantArgs& a) {
         a.rule = fq::BlockScaleRule::kIntModelOpt, a.format = fq::BlockFormat::kInt;
         a.rounding = fq::Rounding::kStochastic, a.seed = seed;
       },
       "rounding must be 'half_even' for the int rules"},
      {"int half away",
       [](fq::BlockQuantArgs& a) {
         a.rule = fq::BlockScaleRule::kIntAffine, a.format = fq::BlockFormat::kInt;
         a.rounding = fq::Rounding::kHalfAway;
       },
       "got 'half_away'"},
      {"no input", [](fq::BlockQuantArgs& a) { a.input = nullptr; }, "input, output and scale must be given"},
      {"no scale", [](fq::BlockQuantArgs& a) { a.scale = nullptr; }, "input, output and scale must be given"},
      {"no tensor_amax",
       [](fq::BlockQuantArgs& a) { a.rule = fq::BlockScaleRule::kNvfp4ModelOpt, a.tensor_scale = true; },
       "tensor_amax must be given"},
      {"whole tile without tensor_amax", [](fq::BlockQuantArgs& a) { a.block_rows = 2, a.block_cols = 32; },
       "tensor_amax must be given"},
  };
  for (const BadArgs& c : cases) {
    fq::BlockQuantArgs a = base();
    c.apply(a);
    const std::string msg = fq::check_block_quant_args(a);
    EXPECT_NE(msg.find(c.message), std::string::npos) << c.what << ": " << msg;
    // block_quant_cpu throws and writes nothing.
    std::vector<float> y(64, -3.0f), s(4, -3.0f);
    a.output = a.output != nullptr ? y.data() : nullptr;
    a.scale = a.scale != nullptr ? s.data() : nullptr;
    if (a.rows * a.cols > 0 && a.input != nullptr) {
      EXPECT_THROW(fq::block_quant_cpu(a), std::invalid_argument) << c.what;
      for (float v : y) ASSERT_EQ(v, -3.0f) << c.what;
      for (float v : s) ASSERT_EQ(v, -3.0f) << c.what;
    }
  }
  // Empty tensors need no buffers.
  fq::BlockQuantArgs empty = row_args(0, 32, 32, fq::BlockFormat::kE2M1, fq::BlockScaleRule::kMxFloor);
  EXPECT_EQ(fq::check_block_quant_args(empty), "");
}

TEST(BlockQuantArgs, NamesRoundTrip) {
  const char* formats[] = {"int", "e4m3", "e5m2", "e3m2", "e2m3", "e2m1"};
  for (int i = 0; i < 6; ++i) {
    fq::BlockFormat f = fq::BlockFormat::kE2M1;
    ASSERT_TRUE(fq::parse_block_format(formats[i], &f)) << formats[i];
    EXPECT_EQ(static_cast<int>(f), i);
  }
  const char* rules[] = {"int_affine", "int_affine_float_zp", "int_modelopt", "fp8_torchao", "fp8_modelopt", "mx_floor",
                         "mx_ceil",    "mx_even",             "mx_rceil",     "nvfp4_torchao", "nvfp4_modelopt"};
  for (int i = 0; i < 11; ++i) {
    fq::BlockScaleRule r = fq::BlockScaleRule::kMxFloor;
    ASSERT_TRUE(fq::parse_block_scale_rule(rules[i], &r)) << rules[i];
    EXPECT_EQ(static_cast<int>(r), i);
  }
  fq::BlockFormat f = fq::BlockFormat::kE4M3;
  EXPECT_FALSE(fq::parse_block_format("fp4", &f));
  EXPECT_EQ(f, fq::BlockFormat::kE4M3);  // untouched
  fq::BlockScaleRule r = fq::BlockScaleRule::kMxCeil;
  EXPECT_FALSE(fq::parse_block_scale_rule("mx", &r));
  EXPECT_EQ(r, fq::BlockScaleRule::kMxCeil);
}

}  // namespace

// --- the row fast path against the generic path -------------------------------------------------

// Every rule with each format it takes, float32 / float16 / bfloat16 inputs, tiles of 8..256
// elements: block_quant_cpu_bands (the fast path where block_quant_rows_applies) gives the bits
// of block_quant_cpu_bands_generic, on random data with zero, tiny, huge, tie, NaN and inf tiles.
TEST(BlockQuantCpu, RowFastPathMatchesGenericPath) {
  struct Case {
    fq::BlockScaleRule rule;
    fq::BlockFormat format;
    int32_t quant_min = -8, quant_max = 7;  // int rules only
  };
  using R = fq::BlockScaleRule;
  using F = fq::BlockFormat;
  // int_affine twice: an 8-bit grid, whose levels and level - zero point differences the 16-bit
  // floats hold exactly (the fast path skips those roundings), and a 12-bit one, where they
  // must round.
  const Case cases[] = {{R::kIntAffine, F::kInt, -128, 127}, {R::kIntAffine, F::kInt, -2048, 2047},
                        {R::kIntAffineFloatZp, F::kInt},    {R::kIntModelOpt, F::kInt, -7, 7},
                        {R::kFp8Torchao, F::kE4M3},         {R::kFp8Torchao, F::kE5M2},
                        {R::kFp8ModelOpt, F::kE4M3},        {R::kMxFloor, F::kE2M1},
                        {R::kMxCeil, F::kE3M2},             {R::kMxEven, F::kE2M3},
                        {R::kMxRceil, F::kE4M3},            {R::kMxRceil, F::kE5M2},
                        {R::kNvfp4Torchao, F::kE2M1},       {R::kNvfp4ModelOpt, F::kE2M1}};
  const int64_t tiles[] = {8, 16, 32, 256};
  int checked = 0;
  for (const Case& c : cases) {
    for (int64_t tile : tiles) {
      for (fq::DType dtype : {fq::DType::kFloat32, fq::DType::kFloat16, fq::DType::kBFloat16}) {
        const int64_t rows = 5, cols = 2 * 256;
        std::vector<float> xf = fakequant_test::random_inputs(rows * cols, 3.0f, 17u + static_cast<uint32_t>(tile));
        for (int64_t i = 0; i < tile; ++i) xf[i] = 0.0f;                 // a zero tile
        for (int64_t i = tile; i < 2 * tile; ++i) xf[i] *= 1e-30f;       // a tiny one
        xf[2 * tile] = 3e4f;                                               // a huge element
        xf[3 * tile + 1] = NAN;                                            // a NaN tile
        xf[4 * tile + 2] = -INFINITY;                                      // an infinite one
        xf[5 * tile + 3] = 2.5f;                                           // ties somewhere
        std::vector<uint16_t> x16(xf.size());
        const void* input = xf.data();
        if (dtype != fq::DType::kFloat32) {
          for (size_t i = 0; i < xf.size(); ++i) {
            x16[i] = dtype == fq::DType::kFloat16 ? fq::from_float<fq::Half>(xf[i]).bits
                                                  : fq::from_float<fq::BFloat16>(xf[i]).bits;
          }
          input = x16.data();
        }
        const size_t esize = dtype == fq::DType::kFloat32 ? 4 : 2;
        fq::BlockQuantArgs a = row_args(rows, cols, tile, c.format, c.rule);
        a.dtype = dtype;
        a.quant_min = c.quant_min;
        a.quant_max = c.quant_max;
        a.tensor_scale = c.rule == R::kNvfp4Torchao || c.rule == R::kNvfp4ModelOpt;
        a.input = input;
        ASSERT_TRUE(fq::block_quant_rows_applies(a));
        std::vector<char> y[2];
        std::vector<uint8_t> mask[2];
        std::vector<float> scale[2];
        std::vector<int32_t> zp[2];
        float amax = 0.0f;
        a.tensor_amax = &amax;
        const uint32_t bits = fq::block_abs_max_bits_cpu(a, 0, rows * cols);
        amax = bits > 0x7F800000u ? NAN : fq::bits_float(bits);
        for (int path = 0; path < 2; ++path) {
          y[path].assign(xf.size() * esize, 0);
          mask[path].assign(fq::mask_bytes(rows * cols), 0xA5);
          scale[path].assign(rows * (cols / tile), -7.0f);
          zp[path].assign(scale[path].size(), -7);
          a.output = y[path].data();
          a.mask = mask[path].data();
          a.scale = scale[path].data();
          a.zero_point = fq::block_rule_is_int(c.rule) ? zp[path].data() : nullptr;
          if (path == 0) {
            fq::block_quant_cpu_bands(a, 0, rows);
          } else {
            fq::block_quant_cpu_bands_generic(a, 0, rows);
          }
        }
        const std::string what = "rule " + std::to_string(static_cast<int>(c.rule)) + " format " +
                                 std::to_string(static_cast<int>(c.format)) + " tile " + std::to_string(tile) +
                                 " dtype " + std::to_string(static_cast<int>(dtype));
        EXPECT_EQ(mask[0], mask[1]) << what;
        EXPECT_EQ(zp[0], zp[1]) << what;
        for (size_t i = 0; i < scale[0].size(); ++i) ASSERT_TRUE(same_float(scale[1][i], scale[0][i])) << what << " " << i;
        // Outputs bit for bit; NaN payloads may differ (docs/numerics.md), NaN positions not.
        for (size_t i = 0; i < xf.size(); ++i) {
          float f0, f1;
          if (dtype == fq::DType::kFloat32) {
            std::memcpy(&f0, y[0].data() + 4 * i, 4);
            std::memcpy(&f1, y[1].data() + 4 * i, 4);
          } else {
            uint16_t h0, h1;
            std::memcpy(&h0, y[0].data() + 2 * i, 2);
            std::memcpy(&h1, y[1].data() + 2 * i, 2);
            f0 = dtype == fq::DType::kFloat16 ? fq::to_float(fq::Half{h0}) : fq::to_float(fq::BFloat16{h0});
            f1 = dtype == fq::DType::kFloat16 ? fq::to_float(fq::Half{h1}) : fq::to_float(fq::BFloat16{h1});
          }
          ASSERT_TRUE(same_float(f1, f0)) << what << " element " << i;
        }
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 14 * 4 * 3);
}

// An empty tensor reads and writes nothing, even where the rule reads the tensor's abs-max and
// no tensor_amax is given (as the CUDA launcher); an unknown dtype or rounding is refused.
TEST(BlockQuantCpu, EmptyTensorAndUnknownEnumerators) {
  fq::BlockQuantArgs a = row_args(0, 32, 32, fq::BlockFormat::kE4M3, fq::BlockScaleRule::kFp8Torchao);
  a.block_rows = 1;
  EXPECT_TRUE(fq::block_quant_needs_tensor_amax(a));
  EXPECT_NO_THROW(fq::block_quant_cpu(a));
  a = row_args(1, 32, 32, fq::BlockFormat::kE2M1, fq::BlockScaleRule::kMxFloor);
  a.dtype = static_cast<fq::DType>(7);
  EXPECT_NE(fq::check_block_quant_args(a).find("dtype must be"), std::string::npos);
  a.dtype = fq::DType::kFloat32;
  a.rounding = static_cast<fq::Rounding>(9);
  EXPECT_NE(fq::check_block_quant_args(a).find("rounding must be one of"), std::string::npos);
}
