// CPU reference of the ConvBN kernels against the formulas written out here (long double
// sums, two-pass variance), for NCHW and channels_last layouts.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <ostream>
#include <string>
#include <vector>

#include "fakequant/convbn.h"

#include "convbn_test_util.h"
#include "test_util.h"

namespace fq = fakequant;
using namespace fakequant_test;

namespace {

using Case = ConvBnShape;

std::vector<float> random_values(int64_t n, uint32_t seed, float mean, float stddev) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(mean, stddev);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = dist(rng);
  return v;
}

class ConvBnCpu : public ::testing::TestWithParam<Case> {};

TEST_P(ConvBnCpu, MomentsMatchTwoPassVariance) {
  const Case k = GetParam();
  const fq::ActivationLayout l = layout_of(k);
  // A large mean over a small spread: naive sums of squares would cancel catastrophically.
  const std::vector<float> x = random_values(l.numel(), 7, 1000.0f, 0.5f);
  std::vector<double> mean(k.c), var(k.c);
  fq::ChannelMomentsArgs a;
  a.input = x.data(), a.layout = l, a.mean = mean.data(), a.var = var.data();
  fq::channel_moments_cpu(a);
  for (int64_t c = 0; c < k.c; ++c) {
    long double s = 0, n = 0;
    for (int64_t i = 0; i < l.numel(); ++i)
      if (channel_of(l, i) == c) s += x[i], n += 1;
    const long double m = s / n;
    long double v = 0;
    for (int64_t i = 0; i < l.numel(); ++i)
      if (channel_of(l, i) == c) v += (x[i] - m) * (x[i] - m);
    v /= n;
    EXPECT_NEAR(mean[c], static_cast<double>(m), 1e-12 * 1000) << "channel " << c;
    EXPECT_NEAR(var[c], static_cast<double>(v), 1e-9 * static_cast<double>(v)) << "channel " << c;
  }
}

TEST_P(ConvBnCpu, EpilogueWithReluAndSplitRanges) {
  const Case k = GetParam();
  const fq::ActivationLayout l = layout_of(k);
  const std::vector<float> x = random_values(l.numel(), 11, 0.0f, 1.0f);
  std::vector<float> coef(2 * k.c);
  for (int64_t c = 0; c < k.c; ++c) coef[c] = 0.5f + 0.25f * c, coef[k.c + c] = (c % 2 ? 0.3f : -0.2f);
  std::vector<float> y(x.size());
  std::vector<uint8_t> mask(fq::mask_bytes(l.numel()), 0xAB);
  fq::ConvBnEpilogueArgs a;
  a.input = x.data(), a.output = y.data(), a.relu_mask = mask.data(), a.coef = coef.data(), a.layout = l;
  const int64_t groups = fq::mask_bytes(l.numel());
  fq::convbn_epilogue_cpu_range(a, 0, groups / 3);  // two pieces = the whole
  fq::convbn_epilogue_cpu_range(a, groups / 3, groups);
  for (int64_t i = 0; i < l.numel(); ++i) {
    const int64_t c = channel_of(l, i);
    const float v = x[i] * coef[c] + coef[k.c + c];
    ASSERT_EQ(y[i], v > 0 ? v : 0.0f) << i;
    ASSERT_EQ(mask_bit(mask, i), v > 0) << i;
  }
  // In place and without ReLU.
  std::vector<float> z = x;
  a.input = z.data(), a.output = z.data(), a.relu_mask = nullptr;
  fq::convbn_epilogue_cpu(a);
  for (int64_t i = 0; i < l.numel(); ++i) {
    const int64_t c = channel_of(l, i);
    ASSERT_EQ(z[i], x[i] * coef[c] + coef[k.c + c]);
  }
}

TEST_P(ConvBnCpu, BackwardSumsAndElementwise) {
  const Case k = GetParam();
  const fq::ActivationLayout l = layout_of(k);
  const std::vector<float> dy = random_values(l.numel(), 3, 0.0f, 1.0f);
  const std::vector<float> z = random_values(l.numel(), 4, 2.0f, 3.0f);
  const std::vector<uint8_t> mask = random_mask(l.numel(), 5);
  std::vector<double> mean(k.c);
  for (int64_t c = 0; c < k.c; ++c) mean[c] = 1.5 + 0.1 * c;
  std::vector<double> sums(2 * k.c);
  fq::ChannelGradSumsArgs s;
  s.grad_output = dy.data(), s.pre_bn = z.data(), s.relu_mask = mask.data();
  s.mean = mean.data(), s.layout = l, s.sums = sums.data();
  fq::channel_grad_sums_cpu(s);
  for (int64_t c = 0; c < k.c; ++c) {
    long double g = 0, gz = 0;
    for (int64_t i = 0; i < l.numel(); ++i) {
      if (channel_of(l, i) != c || !mask_bit(mask, i)) continue;
      g += dy[i];
      gz += static_cast<long double>(dy[i]) * (z[i] - mean[c]);
    }
    EXPECT_NEAR(sums[c], static_cast<double>(g), 1e-9);
    EXPECT_NEAR(sums[k.c + c], static_cast<double>(gz), 1e-8);
  }
  std::vector<float> coef(4 * k.c);
  for (int64_t c = 0; c < k.c; ++c) {
    coef[c] = 0.7f + 0.1f * c;
    coef[k.c + c] = 0.05f * c;
    coef[2 * k.c + c] = 1.5f;
    coef[3 * k.c + c] = -0.02f * (c + 1);
  }
  std::vector<float> dz(l.numel());
  fq::ConvBnBackwardArgs b;
  b.grad_output = dy.data(), b.pre_bn = z.data(), b.relu_mask = mask.data();
  b.coef = coef.data(), b.grad_pre_bn = dz.data(), b.layout = l;
  fq::convbn_backward_cpu(b);
  for (int64_t i = 0; i < l.numel(); ++i) {
    const int64_t c = channel_of(l, i);
    const float g = mask_bit(mask, i) ? dy[i] : 0.0f;
    ASSERT_EQ(dz[i], coef[c] * ((g - coef[k.c + c]) - (z[i] - coef[2 * k.c + c]) * coef[3 * k.c + c])) << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, ConvBnCpu,
                         ::testing::Values(Case{3, 5, 49, false}, Case{3, 5, 49, true}, Case{2, 4, 1, false},
                                           Case{1, 7, 13, true}, Case{4, 3, 64, false}),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           const Case& k = info.param;
                           return "n" + std::to_string(k.n) + "c" + std::to_string(k.c) + "hw" + std::to_string(k.hw) +
                                  (k.channels_last ? "_channels_last" : "_nchw");
                         });

TEST(ConvBnCpuWeight, FoldAndWeightGrad) {
  const int64_t C = 6, L = 27;
  const std::vector<float> w = random_values(C * L, 9, 0.0f, 1.0f);
  const std::vector<float> gc = random_values(C * L, 10, 0.0f, 1.0f);
  std::vector<double> s(C);
  for (int64_t c = 0; c < C; ++c) s[c] = 0.3 + 0.37 * c;
  std::vector<float> folded(C * L);
  fq::FoldWeightArgs f;
  f.weight = w.data(), f.folded = folded.data(), f.scale = s.data(), f.channels = C, f.channel_length = L;
  fq::fold_weight_cpu(f);
  for (int64_t i = 0; i < C * L; ++i) ASSERT_EQ(folded[i], w[i] * static_cast<float>(s[i / L]));

  const std::vector<uint8_t> mask = random_mask(C * L, 12);
  std::vector<float> gw(C * L);
  std::vector<double> sums(C);
  fq::WeightGradArgs g;
  g.grad_conv = gc.data(), g.weight = w.data(), g.mask = mask.data(), g.scale = s.data();
  g.grad_weight = gw.data(), g.weight_sums = sums.data(), g.channels = C, g.channel_length = L;
  fq::weight_grad_cpu(g);
  for (int64_t c = 0; c < C; ++c) {
    long double sum = 0;
    for (int64_t j = c * L; j < (c + 1) * L; ++j) {
      const float d = mask_bit(mask, j) ? gc[j] : 0.0f;
      ASSERT_EQ(gw[j], d * static_cast<float>(s[c]));
      sum += static_cast<long double>(d) * w[j];
    }
    EXPECT_NEAR(sums[c], static_cast<double>(sum), 1e-12);
  }
}

// The per-channel formulas (docs/convbn.md), written out.
TEST(ConvBnCpuChannels, PhasesMatchFormulas) {
  const int64_t C = 4;
  const double eps = 1e-5, momentum = 0.1, n = 50;
  std::vector<double> gamma{1.2, 0.0, -0.7, 1e-30}, beta{0.1, -0.2, 0.3, 0.4}, bias{0.5, 0.0, -0.5, 1.0};
  std::vector<double> mean{0.3, -1.0, 2.0, 0.0}, var{2.0, 0.0, 0.5, 0.0};
  std::vector<float> rm{0.1f, 0.2f, -0.3f, 0.0f}, rv{1.5f, 0.0f, 0.25f, 3.0f};
  std::vector<double> rows(fq::kConvBnRows * C);
  std::vector<float> coef(4 * C);
  fq::ConvBnChannelArgs a;
  a.channels = C, a.count = n, a.eps = eps, a.momentum = momentum;
  a.gamma = gamma.data(), a.beta = beta.data(), a.bias = bias.data();
  a.running_mean = rm.data(), a.running_var = rv.data(), a.mean = mean.data(), a.var = var.data();
  a.rows = rows.data(), a.coef = coef.data();
  auto row = [&](int r, int64_t c) { return rows[r * C + c]; };

  // Eval: s = gamma / sqrt(rv + eps), shift = beta + s (bias - rm).
  a.phase = fq::ConvBnPhase::kEval;
  fq::convbn_channels_cpu(a);
  for (int64_t c = 0; c < C; ++c) {
    const double s = gamma[c] / std::sqrt(rv[c] + eps);
    EXPECT_DOUBLE_EQ(row(fq::kRowScale, c), s);
    EXPECT_FLOAT_EQ(coef[c], 1.0f);
    EXPECT_FLOAT_EQ(coef[C + c], static_cast<float>(beta[c] + s * (bias[c] - rm[c])));
  }

  // Batch: s = gamma / sigma_B; shift = beta - s mu_B; running stats from z + bias.
  std::vector<float> rm0 = rm, rv0 = rv;
  a.phase = fq::ConvBnPhase::kBatchStats;
  fq::convbn_channels_cpu(a);
  for (int64_t c = 0; c < C; ++c) {
    const double sigma = std::sqrt(var[c] + eps);
    EXPECT_DOUBLE_EQ(row(fq::kRowScale, c), gamma[c] / sigma);
    EXPECT_NEAR(coef[C + c], beta[c] - gamma[c] * mean[c] / sigma, 1e-6);
    EXPECT_FLOAT_EQ(rm[c], static_cast<float>((1 - momentum) * rm0[c] + momentum * (mean[c] + bias[c])));
    EXPECT_FLOAT_EQ(rv[c], static_cast<float>((1 - momentum) * rv0[c] + momentum * var[c] * n / (n - 1)));
    EXPECT_TRUE(std::isfinite(coef[c]) && std::isfinite(coef[C + c]));
  }

  // Running: s = gamma / sigma_run (1 where gamma == 0, held constant: r = 0); u's moments.
  rm = rm0, rv = rv0;
  a.phase = fq::ConvBnPhase::kRunningPreFold;
  fq::convbn_channels_cpu(a);
  a.phase = fq::ConvBnPhase::kRunningStats;
  fq::convbn_channels_cpu(a);
  for (int64_t c = 0; c < C; ++c) {
    const double s = gamma[c] == 0 ? 1.0 : gamma[c] / std::sqrt(rv0[c] + eps);
    EXPECT_NEAR(row(fq::kRowScale, c), s, 1e-15 * std::fabs(s));
    EXPECT_EQ(row(fq::kRowR, c) == 0.0, gamma[c] == 0.0);
    const double var_c = var[c] / (s * s), mu_c = mean[c] / s + bias[c];
    const double k = gamma[c] / std::sqrt(var_c + eps);
    // y = gamma (u / s + bias - mu_c) / sigma_c + beta = u * k / s + beta - k mean_u / s
    EXPECT_NEAR(coef[c], k / s, 1e-6 * std::fabs(k / s) + 1e-30);
    EXPECT_NEAR(coef[C + c], beta[c] - k * mean[c] / s, 1e-5);
    EXPECT_FLOAT_EQ(rm[c], static_cast<float>((1 - momentum) * rm0[c] + momentum * mu_c));
    EXPECT_FLOAT_EQ(rv[c], static_cast<float>((1 - momentum) * rv0[c] + momentum * var_c * n / (n - 1)));
    for (int r = 0; r < fq::kConvBnRows; ++r) EXPECT_TRUE(std::isfinite(row(r, c))) << r;
  }

  // Backward parameter gradients, eval: dgamma = (sum_W + (bias - rm) sum g) r, dbias = s sum g.
  a.phase = fq::ConvBnPhase::kEval;
  fq::convbn_channels_cpu(a);
  std::vector<double> sums{1.0, 2.0, 3.0, 4.0, 0.5, 0.6, 0.7, 0.8}, wsum{0.1, 0.2, 0.3, 0.4}, grads(3 * C);
  a.phase = fq::ConvBnPhase::kBackwardParams, a.training = false;
  a.sums = sums.data(), a.weight_sums = wsum.data(), a.grads = grads.data();
  fq::convbn_channels_cpu(a);
  for (int64_t c = 0; c < C; ++c) {
    const double r = 1.0 / std::sqrt(rv[c] + eps);
    EXPECT_DOUBLE_EQ(grads[c], (wsum[c] + (bias[c] - rm[c]) * sums[c]) * r);
    EXPECT_DOUBLE_EQ(grads[C + c], sums[c]);
    EXPECT_DOUBLE_EQ(grads[2 * C + c], gamma[c] * r * sums[c]);
  }
}

}  // namespace
