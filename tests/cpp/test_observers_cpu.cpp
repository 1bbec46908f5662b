// CPU reference of the reductions and observer updates against hand-computed values and
// brute-force loops written out here.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "fakequant/observers.h"

namespace fq = fakequant;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

std::vector<float> random_floats(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.5f, 3.0f);
  std::vector<float> v(n);
  for (auto& e : v) e = dist(rng);
  return v;
}

// [outer, channels, inner] in memory order, every (channel_stride = inner) combination.
struct Layout {
  int64_t outer, channels, inner;
};

class ReduceLayouts : public ::testing::TestWithParam<Layout> {};

TEST_P(ReduceLayouts, PerChannelMatchesBruteForce) {
  const Layout l = GetParam();
  const int64_t n = l.outer * l.channels * l.inner;
  const std::vector<float> x = random_floats(n, static_cast<uint32_t>(n));
  fq::ReduceArgs args{fq::DType::kFloat32, x.data(), n, l.channels, l.inner};
  std::vector<float> abs_max(l.channels), mn(l.channels), mx(l.channels);
  fq::reduce_cpu(args, fq::ReduceKind::kAbsMax, abs_max.data(), nullptr);
  fq::reduce_cpu(args, fq::ReduceKind::kMinMax, mn.data(), mx.data());
  for (int64_t c = 0; c < l.channels; ++c) {
    float a = 0.0f, lo = kInf, hi = -kInf;
    for (int64_t o = 0; o < l.outer; ++o) {
      for (int64_t i = 0; i < l.inner; ++i) {
        const float v = x[(o * l.channels + c) * l.inner + i];
        a = std::max(a, std::fabs(v));
        lo = std::min(lo, v);
        hi = std::max(hi, v);
      }
    }
    EXPECT_EQ(abs_max[c], a) << "channel " << c;
    EXPECT_EQ(mn[c], lo) << "channel " << c;
    EXPECT_EQ(mx[c], hi) << "channel " << c;
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, ReduceLayouts,
                         ::testing::Values(Layout{1, 1, 1000}, Layout{1, 7, 13}, Layout{5, 3, 1}, Layout{4, 6, 9},
                                           Layout{33, 64, 1}, Layout{1, 1, 3}));

TEST(Reduce, SplitRangesCombineToTheWhole) {
  const std::vector<float> x = random_floats(10001, 3);
  fq::ReduceArgs args{fq::DType::kFloat32, x.data(), 10001, 5, 7};
  std::vector<float> whole_a(5), whole_b(5), a(5), b(5), pa(5), pb(5);
  fq::reduce_cpu(args, fq::ReduceKind::kMinMax, whole_a.data(), whole_b.data());
  fq::reduce_identity(fq::ReduceKind::kMinMax, 5, a.data(), b.data());
  for (int64_t begin = 0; begin < 10001; begin += 997) {
    fq::reduce_identity(fq::ReduceKind::kMinMax, 5, pa.data(), pb.data());
    fq::reduce_cpu_range(args, fq::ReduceKind::kMinMax, begin, begin + 997, pa.data(), pb.data());
    fq::reduce_combine(fq::ReduceKind::kMinMax, 5, pa.data(), pb.data(), a.data(), b.data());
  }
  EXPECT_EQ(a, whole_a);
  EXPECT_EQ(b, whole_b);
}

TEST(Reduce, NanPropagatesAndEmptyIsTheIdentity) {
  std::vector<float> x = random_floats(100, 9);
  x[37] = std::nanf("");
  float a = 0.0f, lo = 0.0f, hi = 0.0f;
  fq::reduce_cpu({fq::DType::kFloat32, x.data(), 100}, fq::ReduceKind::kAbsMax, &a, nullptr);
  fq::reduce_cpu({fq::DType::kFloat32, x.data(), 100}, fq::ReduceKind::kMinMax, &lo, &hi);
  EXPECT_TRUE(std::isnan(a) && std::isnan(lo) && std::isnan(hi));
  fq::reduce_cpu({fq::DType::kFloat32, x.data(), 0}, fq::ReduceKind::kMinMax, &lo, &hi);
  EXPECT_EQ(lo, kInf);
  EXPECT_EQ(hi, -kInf);
}

// min / max of +0 and -0 may be either, depending on the order they are met in; the
// reference (and the CUDA reduction) returns +0 for every zero result, so that the result
// does not depend on the order, the chunking or the lane a zero lands in.
TEST(Reduce, ZeroResultsArePositiveZero) {
  auto bits = [](float v) {
    uint32_t u;
    std::memcpy(&u, &v, 4);
    return u;
  };
  const std::vector<float> only_negative_zeros(37, -0.0f);
  std::vector<float> mixed(100, 1.0f);
  for (int i = 0; i < 100; i += 3) mixed[i] = (i / 3) % 2 ? -0.0f : 0.0f;
  const std::vector<float>* inputs[] = {&only_negative_zeros, &mixed};
  for (const std::vector<float>* x : inputs) {
    const int64_t n = static_cast<int64_t>(x->size());
    float lo = 1.0f, hi = 1.0f, a = 1.0f;
    fq::reduce_cpu({fq::DType::kFloat32, x->data(), n}, fq::ReduceKind::kMinMax, &lo, &hi);
    fq::reduce_cpu({fq::DType::kFloat32, x->data(), n}, fq::ReduceKind::kAbsMax, &a, nullptr);
    EXPECT_EQ(bits(lo), 0u) << "min over " << n;
    if (x == &only_negative_zeros) EXPECT_EQ(bits(hi), 0u);
    EXPECT_EQ(bits(a), x == &mixed ? bits(1.0f) : 0u);
    // Per channel, element by element (channel stride 1): 4 channels.
    std::vector<float> clo(4), chi(4);
    fq::reduce_cpu({fq::DType::kFloat32, x->data(), n / 4 * 4, 4, 1}, fq::ReduceKind::kMinMax, clo.data(), chi.data());
    for (int c = 0; c < 4; ++c) EXPECT_NE(bits(clo[c]), 0x80000000u) << c;
    // Partials combined.
    float part_lo = -0.0f, part_hi = -0.0f, total_lo = kInf, total_hi = -kInf;
    fq::reduce_combine(fq::ReduceKind::kMinMax, 1, &part_lo, &part_hi, &total_lo, &total_hi);
    EXPECT_EQ(bits(total_lo), 0u);
    EXPECT_EQ(bits(total_hi), 0u);
  }
}

TEST(Reduce, HalfAndBFloat16AreWidenedExactly) {
  const std::vector<float> xf = random_floats(777, 5);
  std::vector<fq::Half> h(777);
  std::vector<fq::BFloat16> b(777);
  float want_h = 0.0f, want_b = 0.0f;
  for (size_t i = 0; i < xf.size(); ++i) {
    h[i] = fq::from_float<fq::Half>(xf[i]);
    b[i] = fq::from_float<fq::BFloat16>(xf[i]);
    want_h = std::max(want_h, std::fabs(fq::to_float(h[i])));
    want_b = std::max(want_b, std::fabs(fq::to_float(b[i])));
  }
  float got_h = 0.0f, got_b = 0.0f;
  fq::reduce_cpu({fq::DType::kFloat16, h.data(), 777}, fq::ReduceKind::kAbsMax, &got_h, nullptr);
  fq::reduce_cpu({fq::DType::kBFloat16, b.data(), 777}, fq::ReduceKind::kAbsMax, &got_b, nullptr);
  EXPECT_EQ(got_h, want_h);
  EXPECT_EQ(got_b, want_b);
}

TEST(ChooseQParams, HandComputedCases) {
  // Affine [-1, 1] in [-128, 127]: scale 2/255; both zero-point candidates are -0.5 -> rint -> 0.
  fq::AffineQParams q = fq::choose_qparams(-1.0f, 1.0f, -128, 127, false, false);
  EXPECT_EQ(q.scale, static_cast<float>(2.0 / 255.0));
  EXPECT_EQ(q.zero_point, 0);
  // Symmetric [-1, 0.5] in [0, 255]: max_scale 1/128, range [-1, 127/128], scale 1/128, zp 127.5 -> 128.
  q = fq::choose_qparams(-1.0f, 0.5f, 0, 255, true, false);
  EXPECT_EQ(q.scale, 1.0f / 128.0f);
  EXPECT_EQ(q.zero_point, 128);
  // Affine [0.5, 2] in [0, 255]: the range is extended to 0, so zp = 0, scale 2/255.
  q = fq::choose_qparams(0.5f, 2.0f, 0, 255, false, false);
  EXPECT_EQ(q.scale, static_cast<float>(2.0 / 255.0));
  EXPECT_EQ(q.zero_point, 0);
  // A zero range falls back to scale 0.1; a tiny one is cut off at 6.1e-5.
  EXPECT_EQ(fq::choose_qparams(0.0f, 0.0f, 0, 255, false, false).scale, 0.1f);
  EXPECT_EQ(fq::choose_qparams(0.0f, 1e-6f, 0, 255, false, false).scale, fq::kSmallScaleThreshold);
  // Unobserved statistics (+inf, -inf) behave as the range [0, 0].
  EXPECT_EQ(fq::choose_qparams(kInf, -kInf, -128, 127, false, false).scale, 0.1f);
  // reduce_range halves the integer range: [0, 255] -> [0, 127].
  q = fq::choose_qparams(0.0f, 1.27f, 0, 255, false, true);
  EXPECT_EQ(q.scale, static_cast<float>(1.27 / 127.0));
}

// Ranges whose initial zero point is NaN: the zero point is quant_min (a defined value, where
// ATen converts the NaN to int32), and the scale is NaN or infinite, so the quant-dequant that
// uses these qparams is poisoned (qparams_valid is false).
TEST(ChooseQParams, NaNZeroPointBecomesQuantMin) {
  const float kInf = std::numeric_limits<float>::infinity();
  const float kNaN = std::numeric_limits<float>::quiet_NaN();
  struct Case {
    float min, max;
    int32_t qmin, qmax;
    bool symmetric;
  };
  for (const Case& c : {Case{kNaN, 1.0f, -128, 127, false}, Case{-1.0f, kNaN, 0, 255, false},
                        Case{kNaN, kNaN, -128, 127, true}, Case{-2.0f, kInf, 0, 255, false},
                        Case{-3.0f, 5.0f, -1, 0, true}}) {
    const fq::AffineQParams q = fq::choose_qparams(c.min, c.max, c.qmin, c.qmax, c.symmetric, false);
    EXPECT_EQ(q.zero_point, c.qmin) << c.min << " " << c.max << " [" << c.qmin << ", " << c.qmax << "]";
    EXPECT_FALSE(fq::qparams_valid(q.scale, q.zero_point, c.qmin, c.qmax)) << q.scale;
  }
}

TEST(MovingAverage, FirstObservationThenExponentialAverage) {
  EXPECT_EQ(fq::moving_average_min_max(kInf, -2.5f, 0.01f), -2.5f);
  EXPECT_EQ(fq::moving_average_min_max(-kInf, 3.0f, 0.01f), 3.0f);
  const float running = 2.0f, current = 4.0f, c = 0.25f;
  EXPECT_EQ(fq::moving_average_min_max(running, current, c), running + c * (current - running));
}

TEST(MovingAverageMinMax, UpdateThenQParamsPerChannel) {
  float rmin[2] = {kInf, -1.0f}, rmax[2] = {-kInf, 1.0f}, scale[2] = {0, 0};
  int32_t zp[2] = {7, 7};
  const int64_t on = 1, off = 0;
  fq::MovingAverageMinMaxState s;
  s.observer_on = &on;
  s.fake_quant_on = &on;
  s.running_min = rmin;
  s.running_max = rmax;
  s.scale = scale;
  s.zero_point = zp;
  s.channels = 2;
  s.averaging_const = 0.5f;
  const float cur_min[2] = {-2.0f, -3.0f}, cur_max[2] = {2.0f, 3.0f};
  fq::moving_average_min_max_update_cpu(s, cur_min, cur_max, true);
  EXPECT_EQ(rmin[0], -2.0f);  // first observation
  EXPECT_EQ(rmax[0], 2.0f);
  EXPECT_EQ(rmin[1], -2.0f);  // -1 + 0.5 * (-3 + 1)
  EXPECT_EQ(rmax[1], 2.0f);
  EXPECT_EQ(scale[0], static_cast<float>(4.0 / 255.0));
  EXPECT_EQ(scale[1], scale[0]);
  s.observer_on = &off;
  s.fake_quant_on = &off;
  scale[0] = 9.0f;
  fq::moving_average_min_max_update_cpu(s, cur_max, cur_max, true);
  EXPECT_EQ(rmin[0], -2.0f);  // observer off: unchanged
  EXPECT_EQ(scale[0], 9.0f);  // fake quant off: qparams untouched
}

TEST(PaddleMovingAverageAbsMax, ThreeSteps) {
  float scale = 0, state = 0, accum = 0;
  const fq::MovingAverageAbsMaxState s{&scale, &state, &accum, 0.9f};
  fq::moving_average_abs_max_update_cpu(s, 2.0f);
  EXPECT_EQ(state, 1.0f);
  EXPECT_EQ(accum, 2.0f);
  EXPECT_EQ(scale, 2.0f);
  fq::moving_average_abs_max_update_cpu(s, 4.0f);
  EXPECT_EQ(state, 0.9f * 1.0f + 1.0f);
  EXPECT_EQ(accum, 0.9f * 2.0f + 4.0f);
  EXPECT_EQ(scale, (0.9f * 2.0f + 4.0f) / (0.9f * 1.0f + 1.0f));
  EXPECT_EQ(fq::abs_max_step(254.0f, 127), 2.0f);
  EXPECT_EQ(fq::abs_max_step(0.0f, 127), fq::kSmallestNormal);
}

TEST(PaddleRangeAbsMax, EvictingTheMaximumRescansTheWindow) {
  float scale = 0;
  float window[3] = {0, 0, 0};
  int64_t iter = 0;
  const fq::RangeAbsMaxState s{&scale, window, 3, &iter};
  for (float cur : {5.0f, 3.0f, 2.0f}) fq::range_abs_max_update_cpu(s, cur);
  EXPECT_EQ(scale, 5.0f);
  EXPECT_EQ(iter, 3);
  fq::range_abs_max_update_cpu(s, 1.0f);  // evicts 5 (the maximum): rescan of window[0:3] = {1, 3, 2}
  EXPECT_EQ(scale, 3.0f);
  fq::range_abs_max_update_cpu(s, 0.5f);  // evicts 3: rescan {1, 0.5, 2}
  EXPECT_EQ(scale, 2.0f);
  EXPECT_EQ(fq::range_abs_max_update_cpu(s, 7.0f), 7.0f);  // a new maximum; the scale is returned
  EXPECT_EQ(scale, 7.0f);
  EXPECT_EQ(window[2], 7.0f);
  EXPECT_EQ(iter, 6);
}

// The rescan starts from 0 and propagates NaN: a NaN anywhere in the rescanned part of the
// window makes the scale NaN (it used to start from window[0] with std::max, which kept a
// NaN in position 0 only).
TEST(PaddleRangeAbsMax, RescanPropagatesNaNAnywhereInTheWindow) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int nan_at : {0, 1, 3}) {
    float window[4] = {0.5f, 0.25f, 4.0f, 0.75f};
    window[nan_at] = nan;
    float scale = 4.0f;
    int64_t iter = 6;  // idx 2: evicts 4, the scale
    const fq::RangeAbsMaxState s{&scale, window, 4, &iter};
    EXPECT_TRUE(std::isnan(fq::range_abs_max_update_cpu(s, 0.125f))) << "NaN at " << nan_at;
    EXPECT_TRUE(std::isnan(scale)) << "NaN at " << nan_at;
    EXPECT_EQ(iter, 7);
  }
  // Without a NaN, the maximum of the rescanned entries (|.|, from 0).
  float window[4] = {0.5f, 0.25f, 4.0f, 0.75f};
  float scale = 4.0f;
  int64_t iter = 6;
  EXPECT_EQ(fq::range_abs_max_update_cpu({&scale, window, 4, &iter}, 0.125f), 0.75f);
  // Only the first min(iter, window_size) entries are rescanned.
  float early[4] = {2.0f, 1.0f, 9.0f, 9.0f};
  scale = 2.0f;
  iter = 2;  // idx 2 is not evicted; the rescan is forced by removed == scale below
  early[2] = 2.0f;
  EXPECT_EQ(fq::range_abs_max_update_cpu({&scale, early, 4, &iter}, 0.5f), 2.0f);
  EXPECT_EQ(early[2], 0.5f);
}

// iter < 0 is out of contract (the binding rejects it): the update touches nothing and
// returns a NaN scale, which poisons the quant-dequant, as the CUDA launcher does.
TEST(PaddleRangeAbsMax, NegativeIterLeavesStateAndReturnsNaN) {
  float window[5] = {1.0f, 2.0f, 3.0f, 0.5f, 0.25f};
  float scale = 3.0f;
  int64_t iter = -3;
  const fq::RangeAbsMaxState s{&scale, window, 5, &iter};
  EXPECT_TRUE(std::isnan(fq::range_abs_max_update_cpu(s, 10.0f)));
  EXPECT_EQ(scale, 3.0f);
  EXPECT_EQ(iter, -3);
  const float unchanged[5] = {1.0f, 2.0f, 3.0f, 0.5f, 0.25f};
  for (int k = 0; k < 5; ++k) EXPECT_EQ(window[k], unchanged[k]) << k;
  EXPECT_FALSE(fq::qparams_valid(fq::abs_max_step(fq::range_abs_max_update_cpu(s, 1.0f), 127), 0, -127, 127));
}

}  // namespace
