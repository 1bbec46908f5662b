// The CPU reference of per-tensor quant-dequant against the formula written out here with
// the C library (std::nearbyint / std::round, double arithmetic), on fresh random data.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "fakequant/fake_quant.h"

#include "test_util.h"

namespace fq = fakequant;
using namespace fakequant_test;

namespace {

struct Expected {
  float value;
  bool in_range;
};

// Independent formula: the double-precision evaluation of
//   q = round(x * float(1/scale)) + zp;  y = (clamp(q) - zp) * scale.
// Every intermediate is exact in double, so rounding the product once to float gives the
// correctly rounded fp32 result the kernel must match bit for bit.
Expected reference(float x, float scale, int zp, int qmin, int qmax, fq::Rounding mode) {
  if (std::isnan(x)) return {x, false};
  const float inv = 1.0f / scale;
  const float prod = x * inv;  // fp32 product, as ATen computes it
  const double r = mode == fq::Rounding::kHalfAway ? std::round(prod) : std::nearbyint(prod);
  const double q = r + zp;
  const bool in_range = q >= qmin && q <= qmax;
  const double c = std::min<double>(std::max<double>(q, qmin), qmax);
  return {static_cast<float>((c - zp) * static_cast<double>(scale)), in_range};
}

// Int zero points along the channel axis of stride `inner`, the other fields at their defaults.
fq::PerChannelQParams int_zp_qparams(const std::vector<float>& scales, const std::vector<int32_t>& zps, int64_t inner) {
  fq::PerChannelQParams qp;
  qp.scale = scales.data();
  qp.zero_point = zps.data();
  qp.channels = static_cast<int64_t>(scales.size());
  qp.channel_stride = inner;
  return qp;
}

class FakeQuantCpu : public ::testing::TestWithParam<int64_t> {};

TEST_P(FakeQuantCpu, Float32MatchesFormula) {
  const int64_t n = GetParam();
  for (const fq::Rounding mode : {fq::Rounding::kHalfEven, fq::Rounding::kHalfAway}) {
    for (const auto& [qmin, qmax, zp] : {std::tuple{-128, 127, 0}, std::tuple{0, 255, 37}, std::tuple{-8, 7, -3},
                                         std::tuple{0, 3, 1}, std::tuple{-32768, 32767, 100}}) {
      const float scale = 0.0173f;
      std::vector<float> x = random_inputs(n, 1.5f, static_cast<uint32_t>(n * 31 + qmin));
      if (n > 3) x[1] = 1e30f, x[2] = -1e30f;  // far outside the range, still finite
      std::vector<float> y(n, -777.0f);
      std::vector<uint8_t> mask(fq::mask_bytes(n), 0xAB);
      const int32_t zp32 = zp;
      fq::FakeQuantArgs a{fq::DType::kFloat32, x.data(), y.data(), mask.data(), n};
      fq::PerTensorQParams qp{&scale, &zp32, qmin, qmax, mode};
      fq::fake_quant_per_tensor_cpu(a, qp);
      for (int64_t i = 0; i < n; ++i) {
        const Expected e = reference(x[i], scale, zp, qmin, qmax, mode);
        ASSERT_EQ(y[i], e.value) << "i=" << i << " x=" << x[i];
        ASSERT_EQ(mask_bit(mask, i), e.in_range) << "i=" << i << " x=" << x[i];
      }
      for (int64_t i = n; i < fq::mask_bytes(n) * 8; ++i) ASSERT_FALSE(mask_bit(mask, i)) << "padding bit " << i;
    }
  }
}

TEST_P(FakeQuantCpu, HalfAndBFloat16MatchFormula) {
  const int64_t n = GetParam();
  const float scale = 0.05f;
  const int32_t zp = 3;
  const std::vector<float> xf = random_inputs(n, 4.0f, static_cast<uint32_t>(n + 5));
  std::vector<fq::Half> xh(n), yh(n);
  std::vector<fq::BFloat16> xb(n), yb(n);
  for (int64_t i = 0; i < n; ++i) xh[i] = fq::from_float<fq::Half>(xf[i]), xb[i] = fq::from_float<fq::BFloat16>(xf[i]);
  std::vector<uint8_t> mh(fq::mask_bytes(n)), mb(fq::mask_bytes(n));
  fq::PerTensorQParams qp{&scale, &zp, -128, 127, fq::Rounding::kHalfEven};
  fq::fake_quant_per_tensor_cpu({fq::DType::kFloat16, xh.data(), yh.data(), mh.data(), n}, qp);
  fq::fake_quant_per_tensor_cpu({fq::DType::kBFloat16, xb.data(), yb.data(), mb.data(), n}, qp);
  for (int64_t i = 0; i < n; ++i) {
    const Expected eh = reference(fq::to_float(xh[i]), scale, zp, -128, 127, fq::Rounding::kHalfEven);
    ASSERT_EQ(yh[i].bits, fq::from_float<fq::Half>(eh.value).bits) << i;
    ASSERT_EQ(mask_bit(mh, i), eh.in_range) << i;
    const Expected eb = reference(fq::to_float(xb[i]), scale, zp, -128, 127, fq::Rounding::kHalfEven);
    ASSERT_EQ(yb[i].bits, fq::from_float<fq::BFloat16>(eb.value).bits) << i;
    ASSERT_EQ(mask_bit(mb, i), eb.in_range) << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, FakeQuantCpu, ::testing::Values(1, 7, 8, 9, 63, 1000, 65537));

TEST(FakeQuantCpuRanges, SplitRangesEqualOnePass) {
  const int64_t n = 100003;
  const float scale = 0.02f;
  const int32_t zp = -5;
  const std::vector<float> x = random_inputs(n, 2.0f, 11);
  std::vector<float> whole(n), split(n, 1234.0f);
  std::vector<uint8_t> mw(fq::mask_bytes(n)), ms(fq::mask_bytes(n), 0xFF);
  fq::PerTensorQParams qp{&scale, &zp, -128, 127, fq::Rounding::kHalfEven};
  fq::fake_quant_per_tensor_cpu({fq::DType::kFloat32, x.data(), whole.data(), mw.data(), n}, qp);
  const fq::FakeQuantArgs a{fq::DType::kFloat32, x.data(), split.data(), ms.data(), n};
  for (int64_t g = 0; g < fq::mask_bytes(n); g += 977) fq::fake_quant_per_tensor_cpu_range(a, qp, g, g + 977);
  EXPECT_EQ(0, std::memcmp(whole.data(), split.data(), n * sizeof(float)));
  EXPECT_EQ(mw, ms);
}

TEST(FakeQuantCpuEdges, EmptyAndNullMask) {
  const float scale = 1.0f;
  const int32_t zp = 0;
  fq::PerTensorQParams qp{&scale, &zp, -128, 127, fq::Rounding::kHalfEven};
  fq::fake_quant_per_tensor_cpu({fq::DType::kFloat32, nullptr, nullptr, nullptr, 0}, qp);  // no access
  std::vector<float> x = random_inputs(13, 50.0f, 3), y(13);
  fq::fake_quant_per_tensor_cpu({fq::DType::kFloat32, x.data(), y.data(), nullptr, 13}, qp);
  for (int i = 0; i < 13; ++i) ASSERT_EQ(y[i], reference(x[i], 1.0f, 0, -128, 127, fq::Rounding::kHalfEven).value);
}

TEST(FakeQuantCpuEdges, NonFiniteInputs) {
  const float scale = 0.5f;
  const int32_t zp = 0;
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> x = {std::nanf(""), inf, -inf, 1.0f}, y(4);
  std::vector<uint8_t> mask(1);
  fq::fake_quant_per_tensor_cpu({fq::DType::kFloat32, x.data(), y.data(), mask.data(), 4},
                                {&scale, &zp, -128, 127, fq::Rounding::kHalfEven});
  EXPECT_TRUE(std::isnan(y[0]));
  EXPECT_EQ(y[1], 63.5f);
  EXPECT_EQ(y[2], -64.0f);
  EXPECT_EQ(y[3], 1.0f);
  EXPECT_EQ(mask[0], 0b1000);
}

TEST(FakeQuantCpuEdges, OutOfContractQParamsPoisonOutput) {
  const int32_t zp = 0;
  std::vector<float> x = random_inputs(20, 1.0f, 5), y(20);
  std::vector<uint8_t> mask(3, 0xFF);
  for (const float bad_scale : {0.0f, -1.0f, std::nanf(""), std::numeric_limits<float>::infinity()}) {
    fq::fake_quant_per_tensor_cpu({fq::DType::kFloat32, x.data(), y.data(), mask.data(), 20},
                                  {&bad_scale, &zp, -128, 127, fq::Rounding::kHalfEven});
    for (float v : y) ASSERT_TRUE(std::isnan(v));
    for (uint8_t m : mask) ASSERT_EQ(m, 0);
  }
  const float scale = 0.1f;
  const int32_t bad_zp = 300;
  fq::fake_quant_per_tensor_cpu({fq::DType::kFloat32, x.data(), y.data(), mask.data(), 20},
                                {&scale, &bad_zp, -128, 127, fq::Rounding::kHalfEven});
  for (float v : y) ASSERT_TRUE(std::isnan(v));
}

TEST(MaskedGradCpu, KeepsGradientWhereMaskIsSet) {
  for (const int64_t n : {1, 8, 13, 4099}) {
    const std::vector<float> g = random_inputs(n, 1.0f, static_cast<uint32_t>(n) + 1);
    const std::vector<uint8_t> mask = random_mask(n, static_cast<uint32_t>(n));
    std::vector<float> out(n, 99.0f);
    fq::masked_grad_cpu({fq::DType::kFloat32, g.data(), mask.data(), out.data(), n});
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(out[i], mask_bit(mask, i) ? g[i] : 0.0f) << i;
    std::vector<fq::BFloat16> gb(n), ob(n);
    for (int64_t i = 0; i < n; ++i) gb[i] = fq::from_float<fq::BFloat16>(g[i]);
    fq::masked_grad_cpu({fq::DType::kBFloat16, gb.data(), mask.data(), ob.data(), n});
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(ob[i].bits, mask_bit(mask, i) ? gb[i].bits : 0) << i;
  }
}

}  // namespace

namespace {

// Per-channel reference, written out: the channel of memory offset i in a [outer, C, inner]
// contiguous layout is (i / inner) % C.
TEST(FakeQuantPerChannelCpu, IntZeroPointMatchesFormulaAlongEveryAxisLayout) {
  for (const auto& [outer, channels, inner] : {std::tuple<int64_t, int64_t, int64_t>{3, 5, 7}, {1, 4, 1}, {6, 3, 1},
                                               {1, 1, 9}, {2, 17, 33}}) {
    const int64_t n = outer * channels * inner;
    const std::vector<float> x = random_inputs(n, 2.0f, static_cast<uint32_t>(n + channels));
    std::mt19937 rng(static_cast<uint32_t>(channels));
    std::uniform_real_distribution<float> sd(0.005f, 0.05f);
    std::uniform_int_distribution<int> zd(-20, 20);
    std::vector<float> scales(channels);
    std::vector<int32_t> zps(channels);
    for (int64_t c = 0; c < channels; ++c) scales[c] = sd(rng), zps[c] = zd(rng);
    std::vector<float> y(n, -5.0f);
    std::vector<uint8_t> mask(fq::mask_bytes(n), 0xEE);
    fq::fake_quant_per_channel_cpu({fq::DType::kFloat32, x.data(), y.data(), mask.data(), n},
                                   int_zp_qparams(scales, zps, inner));
    for (int64_t i = 0; i < n; ++i) {
      const int64_t c = (i / inner) % channels;
      const Expected e = reference(x[i], scales[c], zps[c], -128, 127, fq::Rounding::kHalfEven);
      ASSERT_EQ(y[i], e.value) << "i=" << i << " c=" << c;
      ASSERT_EQ(mask_bit(mask, i), e.in_range) << "i=" << i;
    }
    for (int64_t i = n; i < fq::mask_bytes(n) * 8; ++i) ASSERT_FALSE(mask_bit(mask, i));
  }
}

TEST(FakeQuantPerChannelCpu, FloatZeroPointAddsBeforeRounding) {
  // Hand-computed: scale 0.5 (inverse 2), zero point 0.25, x = 1.0 -> fma = 2.25 -> q = 2 ->
  // (2 - 0.25) * 0.5 = 0.875; x = -100 -> q = -200 -> clamped to -128 -> (-128.25) * 0.5.
  const std::vector<float> x = {1.0f, -100.0f, 0.6f};
  const float scale = 0.5f;
  const float zp = 0.25f;
  std::vector<float> y(3);
  std::vector<uint8_t> mask(1);
  fq::PerChannelQParams qp;
  qp.scale = &scale;
  qp.zero_point = &zp;
  qp.zero_point_type = fq::ZeroPointType::kFloat32;
  fq::fake_quant_per_channel_cpu({fq::DType::kFloat32, x.data(), y.data(), mask.data(), 3}, qp);
  EXPECT_EQ(y[0], 0.875f);
  EXPECT_EQ(y[1], -64.125f);
  EXPECT_EQ(y[2], 0.375f);  // 1.2 + 0.25 = 1.45 -> 1 -> (1 - 0.25) * 0.5
  EXPECT_EQ(mask[0], 0b101);
}

TEST(FakeQuantPerChannelCpu, BadChannelPoisonsOnlyItsElements) {
  const int64_t channels = 3, inner = 4, n = channels * inner;
  const std::vector<float> x = random_inputs(n, 1.0f, 77);
  const std::vector<float> scales = {0.1f, -1.0f, 0.2f};
  const std::vector<int32_t> zps = {0, 0, 0};
  std::vector<float> y(n);
  std::vector<uint8_t> mask(fq::mask_bytes(n));
  fq::fake_quant_per_channel_cpu({fq::DType::kFloat32, x.data(), y.data(), mask.data(), n},
                                 int_zp_qparams(scales, zps, inner));
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(std::isnan(y[i]), i / inner == 1) << i;
    if (i / inner == 1) ASSERT_FALSE(mask_bit(mask, i));
  }
}

}  // namespace
