// Stochastic rounding: the shared Philox4x32-10 against the Random123 known-answer vectors
// and a Philox written out here, the rounding step against floor(v + u) in double, and the
// CPU reference of both quant-dequant ops against the whole formula written out here.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <tuple>
#include <vector>

#include "fakequant/fake_quant.h"
#include "fakequant/quant_math.h"

#include "test_util.h"

namespace fq = fakequant;
using namespace fakequant_test;

namespace {

// Philox4x32-10 written out from the paper (Salmon et al., SC 2011): 64-bit products split
// into hi/lo halves, the key bumped after every round (the last bump is unused).
std::array<uint32_t, 4> philox_reference(std::array<uint32_t, 4> ctr, std::array<uint32_t, 2> key) {
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = 0xD2511F53ull * ctr[0];
    const uint64_t p1 = 0xCD9E8D57ull * ctr[2];
    ctr = {static_cast<uint32_t>(p1 >> 32) ^ ctr[1] ^ key[0], static_cast<uint32_t>(p1),
           static_cast<uint32_t>(p0 >> 32) ^ ctr[3] ^ key[1], static_cast<uint32_t>(p0)};
    key = {key[0] + 0x9E3779B9u, key[1] + 0xBB67AE85u};
  }
  return ctr;
}

// The random word of the element at memory offset i (docs/numerics.md).
uint32_t word_of(int64_t i, int64_t key, int64_t offset) {
  const uint64_t quad = static_cast<uint64_t>(i) / 4;
  const uint64_t k = static_cast<uint64_t>(key), o = static_cast<uint64_t>(offset);
  const auto w = philox_reference({static_cast<uint32_t>(quad), static_cast<uint32_t>(quad >> 32),
                                   static_cast<uint32_t>(o), static_cast<uint32_t>(o >> 32)},
                                  {static_cast<uint32_t>(k), static_cast<uint32_t>(k >> 32)});
  return w[static_cast<size_t>(i % 4)];
}

// floor(v + u) in double, u = (r >> 8) * 2^-24: exact for |v| < 2^23 (v's bits and u's fit in
// 53 bits); larger floats are integers and do not move; inf and NaN pass through.
double floor_plus_u(float v, uint32_t r) {
  if (!std::isfinite(v) || std::fabs(v) >= 8388608.0f) return v;
  return std::floor(static_cast<double>(v) + static_cast<double>(r >> 8) * 0x1p-24);
}

struct Expected {
  float value;
  bool in_range;
};

// The whole stochastic quant-dequant of one element, integer zero point.
Expected reference_int_zp(float x, float scale, int zp, int qmin, int qmax, uint32_t r) {
  if (std::isnan(x)) return {x, false};
  const float inv = 1.0f / scale;
  const double q = floor_plus_u(x * inv, r) + zp;
  const double c = std::min<double>(std::max<double>(q, qmin), qmax);
  return {static_cast<float>((c - zp) * static_cast<double>(scale)), q >= qmin && q <= qmax};
}

// Float zero point: added before rounding with one fused multiply-add.
Expected reference_float_zp(float x, float scale, float zp, int qmin, int qmax, uint32_t r) {
  if (std::isnan(x)) return {x, false};
  const float inv = 1.0f / scale;
  const double q = floor_plus_u(std::fmaf(x, inv, zp), r);
  const double c = std::min<double>(std::max<double>(q, qmin), qmax);
  return {static_cast<float>((c - static_cast<double>(zp)) * static_cast<double>(scale)), q >= qmin && q <= qmax};
}

std::array<int64_t, 2> random_seed(uint32_t s) {
  std::mt19937_64 rng(s);
  return {static_cast<int64_t>(rng()), static_cast<int64_t>(rng())};
}

TEST(Philox4x32_10, Random123KnownAnswers) {
  struct Kat {
    std::array<uint32_t, 4> ctr;
    std::array<uint32_t, 2> key;
    std::array<uint32_t, 4> out;
  };
  const Kat kats[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
      {{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
       {0xffffffffu, 0xffffffffu},
       {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
      {{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
       {0xa4093822u, 0x299f31d0u},
       {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
  };
  for (const Kat& k : kats) {
    const fq::Philox4x32 got = fq::philox4x32_10(k.ctr[0], k.ctr[1], k.ctr[2], k.ctr[3], k.key[0], k.key[1]);
    for (int j = 0; j < 4; ++j) EXPECT_EQ(got.v[j], k.out[j]) << "word " << j;
    EXPECT_EQ(philox_reference(k.ctr, k.key), k.out);  // the test's own Philox, too
  }
}

TEST(Philox4x32_10, MatchesWrittenOutPhiloxOnRandomCountersAndKeys) {
  std::mt19937_64 rng(7);
  for (int n = 0; n < 20000; ++n) {
    const uint64_t quad = rng(), key = rng(), offset = rng();
    const fq::Philox4x32 got = fq::stochastic_words(quad, key, offset);
    const auto want = philox_reference({static_cast<uint32_t>(quad), static_cast<uint32_t>(quad >> 32),
                                        static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32)},
                                       {static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32)});
    for (int j = 0; j < 4; ++j) ASSERT_EQ(got.v[j], want[j]) << "quad=" << quad << " key=" << key;
  }
}

TEST(RoundStochastic, HandComputedThresholds) {
  // v = 2.25 (t = 0.25): up iff u >= 0.75, i.e. k >= 0.75 * 2^24 = 12582912.
  EXPECT_EQ(fq::round_stochastic(2.25f, 12582912u << 8), 3.0f);
  EXPECT_EQ(fq::round_stochastic(2.25f, (12582911u << 8) | 0xFFu), 2.0f);  // low 8 bits unused
  // v = -2.25 (t = 0.25): floor(-2.25 + u) = -3 iff u < 0.25, i.e. k < 2^22.
  EXPECT_EQ(fq::round_stochastic(-2.25f, (4194303u << 8)), -3.0f);
  EXPECT_EQ(fq::round_stochastic(-2.25f, (4194304u << 8)), -2.0f);
  // Integers never move, whatever u.
  for (const uint32_t r : {0u, 0x80000000u, 0xFFFFFFFFu}) {
    EXPECT_EQ(fq::round_stochastic(5.0f, r), 5.0f);
    EXPECT_EQ(fq::round_stochastic(-7.0f, r), -7.0f);
    EXPECT_EQ(fq::round_stochastic(0.0f, r), 0.0f);
    EXPECT_EQ(fq::round_stochastic(16777216.0f, r), 16777216.0f);
    EXPECT_EQ(fq::round_stochastic(std::numeric_limits<float>::infinity(), r), std::numeric_limits<float>::infinity());
    EXPECT_EQ(fq::round_stochastic(-std::numeric_limits<float>::infinity(), r),
              -std::numeric_limits<float>::infinity());
    EXPECT_TRUE(std::isnan(fq::round_stochastic(std::nanf(""), r)));
  }
  // Tiny magnitudes: 1e-30 goes up only with u >= 1 - 1e-30, which the 2^-24 grid never has.
  EXPECT_EQ(fq::round_stochastic(1e-30f, 0xFFFFFFFFu), 0.0f);
  EXPECT_EQ(fq::round_stochastic(-1e-30f, 0u), -1.0f);  // floor(-1e-30 + 0)
  EXPECT_EQ(fq::round_stochastic(-1e-30f, 1u << 8), 0.0f);
  // The fp32 sum v + u would round across the integer here (100 + (1 - 2^-24) -> 101.0f);
  // the exact floor does not.
  EXPECT_EQ(fq::round_stochastic(100.0f, 0xFFFFFFFFu), 100.0f);
  EXPECT_EQ(fq::round_stochastic(std::nextafter(100.0f, 0.0f), 0xFFFFFFFFu), 100.0f);
}

TEST(RoundStochastic, MatchesFloorOfExactSumOnRandomValues) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> wide(-70000.0f, 70000.0f), narrow(-3.0f, 3.0f);
  for (int n = 0; n < 2000000; ++n) {
    float v = (n % 2) ? wide(rng) : narrow(rng);
    if (n % 7 == 0) v = std::ldexp(v, -static_cast<int>(rng() % 60));  // tiny magnitudes
    const uint32_t r = rng();
    ASSERT_EQ(static_cast<double>(fq::round_stochastic(v, r)), floor_plus_u(v, r)) << "v=" << v << " r=" << r;
  }
}

class StochasticPerTensorCpu : public ::testing::TestWithParam<int64_t> {};

TEST_P(StochasticPerTensorCpu, Float32MatchesFormula) {
  const int64_t n = GetParam();
  for (const auto& [qmin, qmax, zp] : {std::tuple{-128, 127, 0}, std::tuple{0, 255, 37}, std::tuple{-8, 7, -3},
                                       std::tuple{-32768, 32767, 100}}) {
    const float scale = 0.0173f;
    const auto seed = random_seed(static_cast<uint32_t>(n + qmax));
    std::vector<float> x = random_inputs(n, 1.5f, static_cast<uint32_t>(n * 31 + qmin));
    if (n > 3) x[1] = 1e30f, x[2] = -1e30f;
    std::vector<float> y(n, -777.0f);
    std::vector<uint8_t> mask(fq::mask_bytes(n), 0xAB);
    const int32_t zp32 = zp;
    fq::PerTensorQParams qp{&scale, &zp32, qmin, qmax, fq::Rounding::kStochastic, seed.data()};
    fq::fake_quant_per_tensor_cpu({fq::DType::kFloat32, x.data(), y.data(), mask.data(), n}, qp);
    for (int64_t i = 0; i < n; ++i) {
      const Expected e = reference_int_zp(x[i], scale, zp, qmin, qmax, word_of(i, seed[0], seed[1]));
      ASSERT_EQ(y[i], e.value) << "i=" << i << " x=" << x[i];
      ASSERT_EQ(mask_bit(mask, i), e.in_range) << "i=" << i;
    }
    for (int64_t i = n; i < fq::mask_bytes(n) * 8; ++i) ASSERT_FALSE(mask_bit(mask, i)) << "padding bit " << i;
  }
}

TEST_P(StochasticPerTensorCpu, HalfAndBFloat16MatchFormula) {
  const int64_t n = GetParam();
  const float scale = 0.05f;
  const int32_t zp = 3;
  const auto seed = random_seed(static_cast<uint32_t>(n));
  const std::vector<float> xf = random_inputs(n, 4.0f, static_cast<uint32_t>(n + 5));
  std::vector<fq::Half> xh(n), yh(n);
  std::vector<fq::BFloat16> xb(n), yb(n);
  for (int64_t i = 0; i < n; ++i) xh[i] = fq::from_float<fq::Half>(xf[i]), xb[i] = fq::from_float<fq::BFloat16>(xf[i]);
  std::vector<uint8_t> mh(fq::mask_bytes(n)), mb(fq::mask_bytes(n));
  const fq::PerTensorQParams qp{&scale, &zp, -128, 127, fq::Rounding::kStochastic, seed.data()};
  fq::fake_quant_per_tensor_cpu({fq::DType::kFloat16, xh.data(), yh.data(), mh.data(), n}, qp);
  fq::fake_quant_per_tensor_cpu({fq::DType::kBFloat16, xb.data(), yb.data(), mb.data(), n}, qp);
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t r = word_of(i, seed[0], seed[1]);
    const Expected eh = reference_int_zp(fq::to_float(xh[i]), scale, zp, -128, 127, r);
    const Expected eb = reference_int_zp(fq::to_float(xb[i]), scale, zp, -128, 127, r);
    ASSERT_EQ(yh[i].bits, fq::from_float<fq::Half>(eh.value).bits) << "i=" << i;
    ASSERT_EQ(yb[i].bits, fq::from_float<fq::BFloat16>(eb.value).bits) << "i=" << i;
    ASSERT_EQ(mask_bit(mh, i), eh.in_range);
    ASSERT_EQ(mask_bit(mb, i), eb.in_range);
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, StochasticPerTensorCpu, ::testing::Values(1, 3, 7, 8, 9, 63, 1000, 65537));

TEST(StochasticCpu, SplitRangesEqualOnePass) {
  // The random word depends on the element's offset only, not on how the work is split.
  const int64_t n = 10007;
  const std::vector<float> x = random_inputs(n, 2.0f, 3);
  const float scale = 0.02f;
  const int32_t zp = 0;
  const auto seed = random_seed(3);
  const fq::PerTensorQParams qp{&scale, &zp, -128, 127, fq::Rounding::kStochastic, seed.data()};
  std::vector<float> y1(n), y2(n);
  std::vector<uint8_t> m1(fq::mask_bytes(n)), m2(fq::mask_bytes(n));
  fq::fake_quant_per_tensor_cpu({fq::DType::kFloat32, x.data(), y1.data(), m1.data(), n}, qp);
  const fq::FakeQuantArgs a{fq::DType::kFloat32, x.data(), y2.data(), m2.data(), n};
  for (const auto& [b, e] : {std::pair<int64_t, int64_t>{0, 1}, {1, 65}, {65, 66}, {66, 700}, {700, 1251}})
    fq::fake_quant_per_tensor_cpu_range(a, qp, b, e);
  ASSERT_EQ(0, std::memcmp(y1.data(), y2.data(), n * sizeof(float)));
  ASSERT_EQ(m1, m2);
}

TEST(StochasticCpu, SeedWordsEachChangeTheResult) {
  const int64_t n = 4096;
  const std::vector<float> x = random_inputs(n, 2.0f, 5);
  const float scale = 0.02f;
  const int32_t zp = 0;
  auto run = [&](std::array<int64_t, 2> seed) {
    std::vector<float> y(n);
    fq::fake_quant_per_tensor_cpu({fq::DType::kFloat32, x.data(), y.data(), nullptr, n},
                                  {&scale, &zp, -128, 127, fq::Rounding::kStochastic, seed.data()});
    return y;
  };
  const auto base = run({1, 2});
  EXPECT_EQ(base, run({1, 2}));
  EXPECT_NE(base, run({3, 2}));  // key
  EXPECT_NE(base, run({1, 3}));  // counter offset
  EXPECT_NE(base, run({1 + (int64_t{1} << 32), 2}));  // high key word
  EXPECT_NE(base, run({1, 2 + (int64_t{1} << 32)}));  // high offset word
}

TEST(StochasticCpu, MissingSeedThrows) {
  const float x = 1.0f, scale = 0.1f;
  float y = 0.0f;
  const int32_t zp = 0;
  EXPECT_THROW(fq::fake_quant_per_tensor_cpu({fq::DType::kFloat32, &x, &y, nullptr, 1},
                                             {&scale, &zp, -128, 127, fq::Rounding::kStochastic, nullptr}),
               std::invalid_argument);
  fq::PerChannelQParams qp;
  qp.scale = &scale;
  qp.zero_point = &zp;
  qp.rounding = fq::Rounding::kStochastic;
  EXPECT_THROW(fq::fake_quant_per_channel_cpu({fq::DType::kFloat32, &x, &y, nullptr, 1}, qp), std::invalid_argument);
}

TEST(StochasticCpu, NonFiniteInputs) {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> x = {std::nanf(""), inf, -inf, 1.0f, -0.5f, 0.3f, -0.3f, 7.25f, -100.0f};
  const int64_t n = static_cast<int64_t>(x.size());
  const float scale = 0.5f;
  const int32_t zp = 1;
  for (uint32_t s = 0; s < 50; ++s) {
    const auto seed = random_seed(s);
    std::vector<float> y(n);
    std::vector<uint8_t> mask(fq::mask_bytes(n));
    fq::fake_quant_per_tensor_cpu({fq::DType::kFloat32, x.data(), y.data(), mask.data(), n},
                                  {&scale, &zp, -8, 7, fq::Rounding::kStochastic, seed.data()});
    EXPECT_TRUE(std::isnan(y[0]));
    EXPECT_FALSE(mask_bit(mask, 0));
    EXPECT_EQ(y[1], (7 - 1) * 0.5f);
    EXPECT_FALSE(mask_bit(mask, 1));
    EXPECT_EQ(y[2], (-8 - 1) * 0.5f);
    EXPECT_FALSE(mask_bit(mask, 2));
    EXPECT_EQ(y[3], 1.0f);   // on a level: never moves
    EXPECT_EQ(y[4], -0.5f);  // on a level
    EXPECT_TRUE(y[5] == 0.0f || y[5] == 0.5f);
    EXPECT_TRUE(y[6] == 0.0f || y[6] == -0.5f);
    EXPECT_EQ(y[7], 3.0f);  // 7.25 / 0.5 + 1 = 15.5: both levels clamp to quant_max
    EXPECT_EQ(y[8], -4.5f);
    for (int64_t i = 3; i < 7; ++i) EXPECT_TRUE(mask_bit(mask, i)) << i;
    EXPECT_FALSE(mask_bit(mask, 7));
    EXPECT_FALSE(mask_bit(mask, 8));
  }
}

// Per-channel: every (outer, C, inner) split, int and float zero points; the random word
// follows the memory offset, whatever the channel.
TEST(StochasticPerChannelCpu, MatchesFormulaAlongEveryAxisLayout) {
  for (const auto& [outer, channels, inner] : {std::tuple<int64_t, int64_t, int64_t>{3, 5, 7}, {1, 64, 1},
                                               {257, 3, 1}, {2, 17, 33}, {1, 1, 1001}, {8, 96, 1}}) {
    for (const bool float_zp : {false, true}) {
      const int64_t n = outer * channels * inner;
      const std::vector<float> x = random_inputs(n, 3.0f, static_cast<uint32_t>(n + channels));
      std::mt19937 rng(static_cast<uint32_t>(channels * 13 + inner));
      std::uniform_real_distribution<float> sd(0.005f, 0.05f), zf(-20.0f, 20.0f);
      std::vector<float> scales(channels), zps_f(channels);
      std::vector<int32_t> zps_i(channels);
      for (int64_t c = 0; c < channels; ++c) {
        scales[c] = sd(rng), zps_f[c] = zf(rng), zps_i[c] = static_cast<int32_t>(zps_f[c]);
      }
      const auto seed = random_seed(static_cast<uint32_t>(n));
      fq::PerChannelQParams qp;
      qp.scale = scales.data();
      qp.zero_point = float_zp ? static_cast<const void*>(zps_f.data()) : static_cast<const void*>(zps_i.data());
      qp.zero_point_type = float_zp ? fq::ZeroPointType::kFloat32 : fq::ZeroPointType::kInt32;
      qp.channels = channels;
      qp.channel_stride = inner;
      qp.rounding = fq::Rounding::kStochastic;
      qp.seed = seed.data();
      std::vector<float> y(n);
      std::vector<uint8_t> mask(fq::mask_bytes(n));
      fq::fake_quant_per_channel_cpu({fq::DType::kFloat32, x.data(), y.data(), mask.data(), n}, qp);
      int64_t in_range = 0;
      for (int64_t i = 0; i < n; ++i) {
        const int64_t c = (i / inner) % channels;
        const uint32_t r = word_of(i, seed[0], seed[1]);
        const Expected e = float_zp ? reference_float_zp(x[i], scales[c], zps_f[c], -128, 127, r)
                                    : reference_int_zp(x[i], scales[c], zps_i[c], -128, 127, r);
        ASSERT_EQ(y[i], e.value) << outer << "x" << channels << "x" << inner << " i=" << i;
        ASSERT_EQ(mask_bit(mask, i), e.in_range) << "i=" << i;
        in_range += e.in_range;
      }
      EXPECT_GT(in_range, 0);
      EXPECT_LT(in_range, n);  // both branches of the STE
    }
  }
}

TEST(StochasticPerChannelCpu, EqualsPerTensorWithOneChannel) {
  const int64_t n = 777;
  const std::vector<float> x = random_inputs(n, 2.0f, 9);
  const float scale = 0.03f;
  const int32_t zp = -4;
  const auto seed = random_seed(9);
  std::vector<float> y1(n), y2(n);
  std::vector<uint8_t> m1(fq::mask_bytes(n)), m2(fq::mask_bytes(n));
  fq::fake_quant_per_tensor_cpu({fq::DType::kFloat32, x.data(), y1.data(), m1.data(), n},
                                {&scale, &zp, -128, 127, fq::Rounding::kStochastic, seed.data()});
  fq::PerChannelQParams qp;
  qp.scale = &scale;
  qp.zero_point = &zp;
  qp.rounding = fq::Rounding::kStochastic;
  qp.seed = seed.data();
  fq::fake_quant_per_channel_cpu({fq::DType::kFloat32, x.data(), y2.data(), m2.data(), n}, qp);
  ASSERT_EQ(y1, y2);
  ASSERT_EQ(m1, m2);
}

}  // namespace
