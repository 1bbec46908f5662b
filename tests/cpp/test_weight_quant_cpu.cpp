// The CPU reference of weight fake quantization with per-channel abs-max scales against the
// formula written out here (double arithmetic and the C library), on fresh random data, for
// weights laid out as [outer, C, inner] in memory (channel stride = inner).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <tuple>
#include <vector>

#include "fakequant/weight_quant.h"

namespace fq = fakequant;

namespace {

struct Layout {
  int64_t outer, channels, inner;
  int64_t numel() const { return outer * channels * inner; }
};

// Written out: absmax_c = max |x| over the channel, in double (exact); the scale is the
// float32 quotient absmax / ((qmax - qmin) / 2) - the double quotient of two floats rounded
// once to float is the correctly rounded float quotient - raised to eps; then
// q = round(x * float(1 / scale)), y = clamp(q) * scale.
std::vector<float> formula_scales(const std::vector<float>& x, Layout l, int qmin, int qmax, float eps) {
  std::vector<double> absmax(l.channels, 0.0);
  for (int64_t i = 0; i < l.numel(); ++i) {
    const int64_t c = (i / l.inner) % l.channels;
    absmax[c] = std::isnan(x[i]) || std::isnan(absmax[c]) ? NAN : std::max(absmax[c], std::fabs(double{x[i]}));
  }
  std::vector<float> s(l.channels);
  for (int64_t c = 0; c < l.channels; ++c) {
    const float q = static_cast<float>(absmax[c] / ((qmax - qmin) / 2.0));
    s[c] = std::isnan(q) ? q : std::max(q, eps);
  }
  return s;
}

struct Expected {
  float value;
  bool in_range;
};

Expected formula_value(float x, float scale, int qmin, int qmax, fq::Rounding mode) {
  if (std::isnan(x)) return {x, false};
  const float prod = x * (1.0f / scale);
  // + 0.0: the (integer) zero point 0 added after rounding, which turns -0 into +0 as ATen's
  // integer arithmetic does.
  const double q = (mode == fq::Rounding::kHalfAway ? std::round(prod) : std::nearbyint(prod)) + 0.0;
  const double c = std::min<double>(std::max<double>(q, qmin), qmax);
  return {static_cast<float>(c * static_cast<double>(scale)), q >= qmin && q <= qmax};
}

bool mask_bit(const std::vector<uint8_t>& mask, int64_t i) { return (mask[i / 8] >> (i % 8)) & 1u; }

std::vector<float> random_weight(Layout l, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::uniform_real_distribution<float> spread(0.05f, 4.0f);
  std::vector<float> per_channel(l.channels);
  for (auto& s : per_channel) s = spread(rng);  // channels differ in magnitude
  std::vector<float> x(l.numel());
  for (int64_t i = 0; i < l.numel(); ++i) x[i] = dist(rng) * per_channel[(i / l.inner) % l.channels];
  return x;
}

fq::WeightAbsMaxArgs make_args(fq::DType dtype, const void* w, void* y, uint8_t* mask, float* scale, Layout l,
                               int qmin, int qmax, fq::Rounding mode) {
  fq::WeightAbsMaxArgs a;
  a.dtype = dtype;
  a.weight = w;
  a.output = y;
  a.mask = mask;
  a.scale = scale;
  a.numel = l.numel();
  a.channels = l.channels;
  a.channel_stride = l.inner;
  a.quant_min = qmin;
  a.quant_max = qmax;
  a.rounding = mode;
  return a;
}

const std::vector<Layout> kLayouts = {
    {1, 64, 576},  {1, 64, 147}, {1, 32, 9},  {1, 7, 6}, {1, 1, 1001}, {1, 5, 1},  // contiguous channels
    {1, 1030, 32}, {1, 700, 16}, // many small contiguous channels (per-group), several tiles
    {64, 3, 49},   {4, 33, 9},   {96, 40, 1}, {1, 1, 8}, {3, 1, 5},    {17, 3, 1}, // other axes
};

TEST(WeightAbsMaxCpu, Float32MatchesFormulaEveryLayoutRangeRounding) {
  for (const Layout& l : kLayouts) {
    for (const auto& [qmin, qmax] : {std::pair{-127, 127}, {-128, 127}, {-7, 7}, {-8, 7}, {-32768, 32767}}) {
      for (const fq::Rounding mode : {fq::Rounding::kHalfEven, fq::Rounding::kHalfAway}) {
        const int64_t n = l.numel();
        const std::vector<float> x = random_weight(l, static_cast<uint32_t>(n + l.channels + qmax));
        std::vector<float> y(n, -3.0f), scale(l.channels, -1.0f);
        std::vector<uint8_t> mask(fq::mask_bytes(n), 0xA5);
        fq::fake_quant_weight_abs_max_cpu(
            make_args(fq::DType::kFloat32, x.data(), y.data(), mask.data(), scale.data(), l, qmin, qmax, mode));
        const std::vector<float> s = formula_scales(x, l, qmin, qmax, fq::kFloat32Eps);
        for (int64_t c = 0; c < l.channels; ++c) ASSERT_EQ(scale[c], s[c]) << "c=" << c;
        for (int64_t i = 0; i < n; ++i) {
          const Expected e = formula_value(x[i], s[(i / l.inner) % l.channels], qmin, qmax, mode);
          ASSERT_EQ(fq::float_bits(y[i]), fq::float_bits(e.value))  // bitwise: the sign of zero too
              << l.outer << "x" << l.channels << "x" << l.inner << " i=" << i << " y=" << y[i] << " e=" << e.value;
          ASSERT_EQ(mask_bit(mask, i), e.in_range) << "i=" << i;
        }
        for (int64_t i = n; i < fq::mask_bytes(n) * 8; ++i) ASSERT_FALSE(mask_bit(mask, i)) << "padding bit " << i;
      }
    }
  }
}

TEST(WeightAbsMaxCpu, HalfAndBFloat16MatchFormula) {
  for (const Layout& l : kLayouts) {
    const int64_t n = l.numel();
    const std::vector<float> xf = random_weight(l, static_cast<uint32_t>(3 * n + 1));
    std::vector<fq::Half> xh(n), yh(n);
    std::vector<fq::BFloat16> xb(n), yb(n);
    std::vector<float> xh_f(n), xb_f(n);
    for (int64_t i = 0; i < n; ++i) {
      xh[i] = fq::from_float<fq::Half>(xf[i]), xh_f[i] = fq::to_float(xh[i]);
      xb[i] = fq::from_float<fq::BFloat16>(xf[i]), xb_f[i] = fq::to_float(xb[i]);
    }
    std::vector<float> sh(l.channels), sb(l.channels);
    std::vector<uint8_t> mh(fq::mask_bytes(n)), mb(fq::mask_bytes(n));
    fq::fake_quant_weight_abs_max_cpu(make_args(fq::DType::kFloat16, xh.data(), yh.data(), mh.data(), sh.data(), l,
                                                -128, 127, fq::Rounding::kHalfEven));
    fq::fake_quant_weight_abs_max_cpu(make_args(fq::DType::kBFloat16, xb.data(), yb.data(), mb.data(), sb.data(), l,
                                                -7, 7, fq::Rounding::kHalfEven));
    const std::vector<float> eh = formula_scales(xh_f, l, -128, 127, fq::kFloat32Eps);
    const std::vector<float> eb = formula_scales(xb_f, l, -7, 7, fq::kFloat32Eps);
    ASSERT_EQ(sh, eh);
    ASSERT_EQ(sb, eb);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t c = (i / l.inner) % l.channels;
      const Expected h = formula_value(xh_f[i], eh[c], -128, 127, fq::Rounding::kHalfEven);
      ASSERT_EQ(yh[i].bits, fq::from_float<fq::Half>(h.value).bits) << i;
      ASSERT_EQ(mask_bit(mh, i), h.in_range) << i;
      const Expected b = formula_value(xb_f[i], eb[c], -7, 7, fq::Rounding::kHalfEven);
      ASSERT_EQ(yb[i].bits, fq::from_float<fq::BFloat16>(b.value).bits) << i;
      ASSERT_EQ(mask_bit(mb, i), b.in_range) << i;
    }
  }
}

// What the bindings do on several threads equals one pass on one thread.
TEST(WeightAbsMaxCpu, SplitBlocksAndSplitReductionsEqualOnePass) {
  for (const Layout& l : {Layout{1, 50, 9}, Layout{1, 130, 64}, Layout{1, 3, 20001}}) {
    const int64_t n = l.numel();
    const std::vector<float> x = random_weight(l, 7);
    std::vector<float> y1(n), y2(n, 5.0f), s1(l.channels), s2(l.channels, 5.0f);
    std::vector<uint8_t> m1(fq::mask_bytes(n)), m2(fq::mask_bytes(n), 0xFF);
    fq::fake_quant_weight_abs_max_cpu(
        make_args(fq::DType::kFloat32, x.data(), y1.data(), m1.data(), s1.data(), l, -127, 127, fq::Rounding::kHalfEven));
    const fq::WeightAbsMaxArgs a =
        make_args(fq::DType::kFloat32, x.data(), y2.data(), m2.data(), s2.data(), l, -127, 127, fq::Rounding::kHalfEven);
    ASSERT_TRUE(fq::weight_channels_contiguous(a));
    const int64_t per_block = fq::weight_channels_per_block(l.inner);
    const int64_t blocks = (l.channels + per_block - 1) / per_block;
    for (int64_t b = blocks; b > 0; b -= 3) fq::fake_quant_weight_abs_max_cpu_blocks(a, std::max<int64_t>(b - 3, 0), b);
    EXPECT_EQ(0, std::memcmp(y1.data(), y2.data(), n * sizeof(float)));
    EXPECT_EQ(m1, m2);
    EXPECT_EQ(s1, s2);
  }
  const Layout l{37, 11, 3};
  const std::vector<float> x = random_weight(l, 9);
  std::vector<float> y(l.numel()), s(l.channels);
  const fq::WeightAbsMaxArgs a =
      make_args(fq::DType::kFloat32, x.data(), y.data(), nullptr, s.data(), l, -127, 127, fq::Rounding::kHalfEven);
  std::vector<uint32_t> whole(l.channels, 0), merged(l.channels, 0);
  fq::channel_abs_max_bits_cpu(a, 0, l.numel(), whole.data());
  for (int64_t begin = 0; begin < l.numel(); begin += 101) {
    std::vector<uint32_t> part(l.channels, 0);
    fq::channel_abs_max_bits_cpu(a, begin, begin + 101, part.data());
    for (int64_t c = 0; c < l.channels; ++c) merged[c] = std::max(merged[c], part[c]);
  }
  EXPECT_EQ(whole, merged);
  fq::weight_scales_from_abs_max_bits(a, whole.data());
  EXPECT_EQ(s, formula_scales(x, l, -127, 127, fq::kFloat32Eps));
}

TEST(WeightAbsMaxCpu, NonFiniteChannelsAndEps) {
  for (const Layout& l : {Layout{1, 4, 10}, Layout{10, 4, 1}}) {
    std::vector<float> x = random_weight(l, 3);
    const auto at = [&](int64_t c, int64_t k) -> float& { return x[(k / l.inner) * l.channels * l.inner + c * l.inner + k % l.inner]; };
    at(1, 4) = std::nanf("");
    at(2, 7) = -std::numeric_limits<float>::infinity();
    for (int64_t k = 0; k < 10; ++k) at(3, k) = 1e-9f;  // abs-max / 127 below eps
    std::vector<float> y(l.numel()), s(l.channels);
    std::vector<uint8_t> m(fq::mask_bytes(l.numel()));
    fq::fake_quant_weight_abs_max_cpu(
        make_args(fq::DType::kFloat32, x.data(), y.data(), m.data(), s.data(), l, -127, 127, fq::Rounding::kHalfEven));
    EXPECT_TRUE(std::isnan(s[1]));  // NaN propagates into its channel's scale
    EXPECT_TRUE(std::isinf(s[2]));
    EXPECT_EQ(s[3], fq::kFloat32Eps);
    for (int64_t i = 0; i < l.numel(); ++i) {
      const int64_t c = (i / l.inner) % l.channels;
      if (c == 1 || c == 2) {  // out-of-contract scale: NaN output, mask 0
        ASSERT_TRUE(std::isnan(y[i])) << i;
        ASSERT_FALSE(mask_bit(m, i)) << i;
      } else {
        const Expected e = formula_value(x[i], s[c], -127, 127, fq::Rounding::kHalfEven);
        ASSERT_EQ(y[i], e.value) << i;
        ASSERT_EQ(mask_bit(m, i), e.in_range) << i;
      }
    }
  }
}

TEST(WeightAbsMaxCpu, EmptyChannelsGetEpsAndNullMaskIsAllowed) {
  std::vector<float> s(5, -1.0f);
  fq::fake_quant_weight_abs_max_cpu(
      make_args(fq::DType::kFloat32, nullptr, nullptr, nullptr, s.data(), Layout{1, 5, 0}, -127, 127, fq::Rounding::kHalfEven));
  for (float v : s) EXPECT_EQ(v, fq::kFloat32Eps);
  const Layout l{1, 3, 11};
  const std::vector<float> x = random_weight(l, 5);
  std::vector<float> y(l.numel()), s3(3);
  fq::fake_quant_weight_abs_max_cpu(
      make_args(fq::DType::kFloat32, x.data(), y.data(), nullptr, s3.data(), l, -8, 7, fq::Rounding::kHalfEven));
  const std::vector<float> e = formula_scales(x, l, -8, 7, fq::kFloat32Eps);
  for (int64_t i = 0; i < l.numel(); ++i) ASSERT_EQ(y[i], formula_value(x[i], e[i / 11], -8, 7, fq::Rounding::kHalfEven).value);
}

// The op takes no seed: stochastic rounding is refused before anything is written, on the
// contiguous (blocks) path, the two-pass path and for an empty weight.
TEST(WeightAbsMaxCpu, StochasticRoundingThrowsBeforeWriting) {
  for (const Layout l : {Layout{1, 16, 9}, Layout{4, 6, 5}, Layout{1, 5, 0}}) {
    const std::vector<float> x = random_weight(l, 11);
    std::vector<float> y(l.numel(), 7.0f), s(l.channels, 7.0f);
    std::vector<uint8_t> m(fq::mask_bytes(l.numel()), 0xA5);
    const fq::WeightAbsMaxArgs a = make_args(fq::DType::kFloat32, x.data(), y.data(), m.data(), s.data(), l, -127, 127,
                                             fq::Rounding::kStochastic);
    EXPECT_THROW(fq::fake_quant_weight_abs_max_cpu(a), std::invalid_argument);
    EXPECT_THROW(fq::fake_quant_weight_abs_max_cpu_blocks(a, 0, 1), std::invalid_argument);
    EXPECT_EQ(y, std::vector<float>(l.numel(), 7.0f));
    EXPECT_EQ(s, std::vector<float>(l.channels, 7.0f));
    EXPECT_EQ(m, std::vector<uint8_t>(fq::mask_bytes(l.numel()), 0xA5));
  }
}

TEST(WeightAbsMaxCpu, ScaleOfAnExactCaseByHand) {
  // absmax 63.5: narrow 8-bit scale 63.5 / 127 = 0.5; full 8-bit 63.5 / 127.5, rounded to float.
  const std::vector<float> x = {1.0f, -63.5f, 0.74f, 0.76f};
  std::vector<float> y(4), s(1);
  std::vector<uint8_t> m(1);
  fq::fake_quant_weight_abs_max_cpu(
      make_args(fq::DType::kFloat32, x.data(), y.data(), m.data(), s.data(), Layout{1, 1, 4}, -127, 127, fq::Rounding::kHalfEven));
  EXPECT_EQ(s[0], 0.5f);
  EXPECT_EQ(y, (std::vector<float>{1.0f, -63.5f, 0.5f, 1.0f}));
  EXPECT_EQ(m[0], 0b1111);
  fq::fake_quant_weight_abs_max_cpu(
      make_args(fq::DType::kFloat32, x.data(), y.data(), m.data(), s.data(), Layout{1, 1, 4}, -128, 127, fq::Rounding::kHalfEven));
  EXPECT_EQ(s[0], 63.5f / 127.5f);
}

// scale_dtype: the quotient rounded to the input's dtype, then the eps floor (torchao's
// per-group scales). absmax 1, full 4-bit range: 1 / 7.5 = 0.13333334f; as bfloat16 (7
// fraction bits: 1.0666667 * 128 = 136.53 -> 137) 0.1337890625; as float16 (10 bits: 68.27 ->
// 68) 0.13330078125. A float16 group of subnormals: its quotient rounds to a float16 subnormal,
// then the floor at float16's smallest normal 2^-14 applies.
TEST(WeightAbsMaxCpu, ScaleRoundedToTheInputDtypeByHand) {
  const Layout l{1, 1, 4};
  const float xs[4] = {1.0f, -0.5f, 0.25f, 0.0f};
  std::vector<fq::BFloat16> xb(4), yb(4);
  std::vector<fq::Half> xh(4), yh(4);
  for (int i = 0; i < 4; ++i) xb[i] = fq::from_float<fq::BFloat16>(xs[i]), xh[i] = fq::from_float<fq::Half>(xs[i]);
  std::vector<float> s(1);
  std::vector<uint8_t> m(1);
  fq::WeightAbsMaxArgs a =
      make_args(fq::DType::kBFloat16, xb.data(), yb.data(), m.data(), s.data(), l, -8, 7, fq::Rounding::kHalfEven);
  fq::fake_quant_weight_abs_max_cpu(a);
  EXPECT_EQ(s[0], 1.0f / 7.5f);
  a.scale_dtype = fq::DType::kBFloat16;
  fq::fake_quant_weight_abs_max_cpu(a);
  EXPECT_EQ(s[0], 0.1337890625f);
  fq::WeightAbsMaxArgs h =
      make_args(fq::DType::kFloat16, xh.data(), yh.data(), m.data(), s.data(), l, -8, 7, fq::Rounding::kHalfEven);
  h.scale_dtype = fq::DType::kFloat16;
  fq::fake_quant_weight_abs_max_cpu(h);
  EXPECT_EQ(s[0], 0.13330078125f);
  for (int i = 0; i < 4; ++i) xh[i] = fq::from_float<fq::Half>(xs[i] * 6e-5f);  // subnormal halves
  h.eps = 0x1p-14f;
  fq::fake_quant_weight_abs_max_cpu(h);
  EXPECT_EQ(s[0], 0x1p-14f);
  h.eps = fq::kFloat32Eps * 1e-3f;  // below the rounded quotient: the float16 quotient itself
  fq::fake_quant_weight_abs_max_cpu(h);
  EXPECT_EQ(s[0], fq::to_float(fq::from_float<fq::Half>(fq::to_float(xh[0]) / 7.5f)));
  EXPECT_NE(s[0], fq::to_float(xh[0]) / 7.5f);
}

TEST(WeightAbsMaxCpu, ValidationMessagesAndBlockSizes) {
  EXPECT_TRUE(fq::check_symmetric_quant_range(-127, 127).empty());
  EXPECT_TRUE(fq::check_symmetric_quant_range(-128, 127).empty());
  EXPECT_TRUE(fq::check_symmetric_quant_range(-1, 1).empty());
  EXPECT_TRUE(fq::check_symmetric_quant_range(-2, 1).empty());
  for (const auto& [lo, hi] : {std::pair{0, 255}, {-128, 126}, {-126, 127}, {0, 0}, {-1, 0}}) {
    const std::string e = fq::check_symmetric_quant_range(lo, hi);
    EXPECT_NE(e.find("symmetric signed range"), std::string::npos) << lo << "," << hi;
    EXPECT_NE(e.find("got [" + std::to_string(lo) + ", " + std::to_string(hi) + "]"), std::string::npos) << e;
  }
  EXPECT_TRUE(fq::check_eps_value(1.1920928955078125e-07).empty());
  EXPECT_TRUE(fq::check_eps_value(1e-30).empty());
  for (const double bad : {0.0, -1.0, 1e-40, 1e39, std::nan(""), std::numeric_limits<double>::infinity()})
    EXPECT_NE(fq::check_eps_value(bad).find("eps must be finite"), std::string::npos) << bad;
  EXPECT_EQ(fq::weight_channels_per_block(576), 1);
  EXPECT_EQ(fq::weight_channels_per_block(9), 8);
  EXPECT_EQ(fq::weight_channels_per_block(6), 4);
  EXPECT_EQ(fq::weight_channels_per_block(4), 2);
  EXPECT_EQ(fq::weight_channels_per_block(0), 1);
}

}  // namespace
