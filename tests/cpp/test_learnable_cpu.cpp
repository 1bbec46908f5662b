// The CPU reference of the learnable-qparam (LSQ / LSQ+) ops against the formulas written out
// here with the C library (std::fma, std::nearbyint, std::trunc) and double sums, on fresh
// random data.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <tuple>
#include <vector>

#include "fakequant/learnable.h"

#include "test_util.h"

namespace fq = fakequant;

namespace {

// --- the formulas, written out ---------------------------------------------------------------

float zp_forward(float zp, int qmin, int qmax) {
  return std::min<float>(std::max<float>(std::nearbyint(zp), static_cast<float>(qmin)), static_cast<float>(qmax));
}

float zp_backward(float zp, int qmin, int qmax, bool per_channel) {
  if (per_channel) return zp_forward(zp, qmin, qmax);
  const float t = zp + 0.5f;  // float32 addition, then clamp, then truncation toward zero
  return std::trunc(std::min<float>(std::max<float>(t, static_cast<float>(qmin)), static_cast<float>(qmax)));
}

float forward_formula(float x, float scale, float zp, int qmin, int qmax) {
  if (std::isnan(x)) return x;
  const float z = zp_forward(zp, qmin, qmax);
  const float inv = 1.0f / scale;
  const double q = std::nearbyint(x * inv) + static_cast<double>(z);
  const double c = std::min<double>(std::max<double>(q, qmin), qmax);
  return static_cast<float>((c - z) * static_cast<double>(scale));
}

struct Terms {
  float dx, ds, dz;
};

// zb: the backward-rounded zero point.
Terms backward_formula(float x, float dy, float scale, float zb, int qmin, int qmax, float gf) {
  const float inv = 1.0f / scale;
  const float q = std::nearbyint(std::fma(x, inv, zb));
  if (std::isnan(x)) return {dy * 0.0f, std::nanf(""), std::nanf("")};
  if (q < qmin || q > qmax) {
    const float edge = static_cast<float>(q < qmin ? qmin : qmax) - zb;
    return {dy * 0.0f, (dy * edge) * gf, ((dy * -1.0f) * scale) * gf};
  }
  return {dy * 1.0f, ((dy * std::fma(q - zb, scale, -x)) * inv) * gf, 0.0f};
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0; }

// Normal values, two of them (from four elements on) far outside any quantization range.
std::vector<float> random_inputs(int64_t n, float spread, uint32_t seed) {
  std::vector<float> x = fakequant_test::random_inputs(n, spread, seed);
  if (n > 3) x[1] = 3e4f, x[2] = -3e4f;
  return x;
}

// Qparams along a channel axis of stride `inner`: per channel, or per tensor for one channel.
fq::LearnableQParams learnable_qparams(const std::vector<float>& scales, const std::vector<float>& zps, int64_t inner) {
  fq::LearnableQParams qp;
  qp.scale = scales.data();
  qp.zero_point = zps.data();
  qp.channels = static_cast<int64_t>(scales.size());
  qp.kind = qp.channels > 1 ? fq::LearnableKind::kPerChannel : fq::LearnableKind::kPerTensor;
  qp.channel_stride = inner;
  return qp;
}

// Sums of one channel: |ours - float64 reference| within half an ulp plus the double
// accumulation error (numel * 2^-53 * sum |terms|).
void expect_sum_close(float ours, double ref, double ref_abs, const char* what, int64_t c) {
  const double bound = 6.0e-8 * std::fabs(ref) + 1e-10 * ref_abs + 1e-30;
  EXPECT_LE(std::fabs(static_cast<double>(ours) - ref), bound) << what << " channel " << c << " ref " << ref;
}

// --- scalar rules ------------------------------------------------------------------------------

TEST(LearnableZeroPoint, HandComputedRoundings) {
  EXPECT_EQ(fq::learnable_zero_point_forward(2.5f, -128, 127), 2.0f);
  EXPECT_EQ(fq::learnable_zero_point_forward(3.5f, -128, 127), 4.0f);
  EXPECT_EQ(fq::learnable_zero_point_forward(-2.5f, -128, 127), -2.0f);
  EXPECT_EQ(fq::learnable_zero_point_forward(300.2f, -128, 127), 127.0f);
  EXPECT_EQ(fq::learnable_zero_point_backward_per_tensor(2.5f, -128, 127), 3.0f);
  EXPECT_EQ(fq::learnable_zero_point_backward_per_tensor(-1.2f, -128, 127), 0.0f);
  EXPECT_EQ(fq::learnable_zero_point_backward_per_tensor(-2.7f, -128, 127), -2.0f);
  EXPECT_EQ(fq::learnable_zero_point_backward_per_tensor(-300.0f, -128, 127), -128.0f);
  EXPECT_EQ(fq::learnable_zero_point_backward_per_tensor(126.7f, -128, 127), 127.0f);
  EXPECT_EQ(fq::learnable_zero_point_backward_per_channel(-2.5f, -128, 127), -2.0f);
  EXPECT_FALSE(fq::learnable_qparams_valid(0.1f, std::nanf("")));
  EXPECT_FALSE(fq::learnable_qparams_valid(0.1f, std::numeric_limits<float>::infinity()));
  EXPECT_FALSE(fq::learnable_qparams_valid(0.0f, 0.0f));
  EXPECT_FALSE(fq::learnable_qparams_valid(-0.1f, 0.0f));
  EXPECT_TRUE(fq::learnable_qparams_valid(0.1f, -1e6f));
}

TEST(LearnableZeroPoint, MatchesFormulaOnRandomValues) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> zd(-200.0f, 200.0f);
  for (int i = 0; i < 100000; ++i) {
    const float z = (i % 3 == 0) ? std::nearbyint(zd(rng)) + 0.5f : zd(rng);  // every third a tie
    ASSERT_EQ(fq::learnable_zero_point_forward(z, -128, 127), zp_forward(z, -128, 127)) << z;
    ASSERT_EQ(fq::learnable_zero_point_backward_per_tensor(z, -128, 127), zp_backward(z, -128, 127, false)) << z;
    ASSERT_EQ(fq::learnable_zero_point_backward_per_channel(z, 0, 255), zp_backward(z, 0, 255, true)) << z;
  }
}

TEST(LearnableGrad, HandComputedElement) {
  // scale 0.5 (inverse 2), zero point 1, grad_factor 0.5, dy 3:
  // x = 1.2: q = nearbyint(2.4 + 1) = 3 (in range), x_fq - x = (3 - 1) * 0.5 - 1.2 = -0.2.
  const fq::LearnableGrad g = fq::learnable_grad(1.2f, 3.0f, 0.5f, 2.0f, 1.0f, -8.0f, 7.0f, 0.5f);
  EXPECT_EQ(g.grad_input, 3.0f);
  EXPECT_EQ(g.grad_scale, ((3.0f * std::fma(2.0f, 0.5f, -1.2f)) * 2.0f) * 0.5f);
  EXPECT_EQ(g.grad_zero_point, 0.0f);
  // x = 10: q = 21 > 7: grad_scale = 3 * (7 - 1) * 0.5, grad_zp = -3 * 0.5 * 0.5, grad_input -0 for dy < 0.
  const fq::LearnableGrad h = fq::learnable_grad(10.0f, 3.0f, 0.5f, 2.0f, 1.0f, -8.0f, 7.0f, 0.5f);
  EXPECT_EQ(h.grad_input, 0.0f);
  EXPECT_EQ(h.grad_scale, 9.0f);
  EXPECT_EQ(h.grad_zero_point, -0.75f);
  EXPECT_TRUE(std::signbit(fq::learnable_grad(10.0f, -3.0f, 0.5f, 2.0f, 1.0f, -8.0f, 7.0f, 0.5f).grad_input));
  const fq::LearnableGrad n = fq::learnable_grad(std::nanf(""), 1.0f, 0.5f, 2.0f, 1.0f, -8.0f, 7.0f, 1.0f);
  EXPECT_EQ(n.grad_input, 0.0f);
  EXPECT_TRUE(std::isnan(n.grad_scale) && std::isnan(n.grad_zero_point));
}

// --- forward -----------------------------------------------------------------------------------

TEST(LearnableForwardCpu, PerTensorAndPerChannelMatchFormula) {
  for (const auto& [outer, channels, inner] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1001}, {3, 5, 7},
                                               {6, 16, 1}, {2, 17, 33}, {1, 1, 9}}) {
    const int64_t n = outer * channels * inner;
    const std::vector<float> x = random_inputs(n, 2.0f, static_cast<uint32_t>(n + channels));
    std::mt19937 rng(static_cast<uint32_t>(channels));
    std::uniform_real_distribution<float> sd(0.005f, 0.05f), zd(-140.0f, 140.0f);
    std::vector<float> scales(channels), zps(channels);
    for (int64_t c = 0; c < channels; ++c) scales[c] = sd(rng), zps[c] = zd(rng);
    if (channels > 2) zps[1] = 4.5f, zps[2] = -3.5f;  // ties
    std::vector<float> y(n, -5.0f);
    fq::fake_quant_learnable_cpu({fq::DType::kFloat32, x.data(), y.data(), n}, learnable_qparams(scales, zps, inner));
    for (int64_t i = 0; i < n; ++i) {
      const int64_t c = (i / inner) % channels;
      ASSERT_EQ(y[i], forward_formula(x[i], scales[c], zps[c], -128, 127)) << "i=" << i << " c=" << c;
    }
  }
}

TEST(LearnableForwardCpu, OutOfContractQParamsPoisonTheirChannel) {
  const int64_t channels = 3, inner = 4, n = channels * inner;
  const std::vector<float> x = random_inputs(n, 1.0f, 77);
  const std::vector<float> scales = {0.1f, 0.1f, -1.0f};
  const std::vector<float> zps = {0.0f, std::nanf(""), 0.0f};
  std::vector<float> y(n);
  fq::fake_quant_learnable_cpu({fq::DType::kFloat32, x.data(), y.data(), n}, learnable_qparams(scales, zps, inner));
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(std::isnan(y[i]), i / inner != 0) << i;
}

// --- backward ----------------------------------------------------------------------------------

struct Case {
  int64_t outer, channels, inner;
  int qmin, qmax;
};

template <typename T>
void check_backward(const Case& k, uint32_t seed) {
  const int64_t n = k.outer * k.channels * k.inner;
  const bool per_channel = k.channels > 1;
  const std::vector<float> xf = random_inputs(n, 2.0f, seed);
  const std::vector<float> dyf = random_inputs(n, 1.0f, seed + 1);
  std::vector<T> x(n), dy(n), dx(n);
  for (int64_t i = 0; i < n; ++i) x[i] = fq::from_float<T>(xf[i]), dy[i] = fq::from_float<T>(dyf[i]);
  std::mt19937 rng(seed + 2);
  std::uniform_real_distribution<float> sd(0.005f, 0.05f), zd(k.qmin - 2.0f, k.qmax + 2.0f);
  std::vector<float> scales(k.channels), zps(k.channels);
  for (int64_t c = 0; c < k.channels; ++c) scales[c] = sd(rng), zps[c] = zd(rng);
  const float gf = 0.37f;
  std::vector<float> gs(k.channels, -1.0f), gz(k.channels, -1.0f);
  fq::LearnableQParams qp = learnable_qparams(scales, zps, k.inner);
  qp.quant_min = k.qmin;
  qp.quant_max = k.qmax;
  qp.grad_factor = gf;
  const fq::DType dtype = std::is_same_v<T, float>
                              ? fq::DType::kFloat32
                              : (std::is_same_v<T, fq::Half> ? fq::DType::kFloat16 : fq::DType::kBFloat16);
  fq::fake_quant_learnable_backward_cpu({dtype, dy.data(), x.data(), dx.data(), gs.data(), gz.data(), n}, qp);
  std::vector<double> ref_s(k.channels), ref_z(k.channels), abs_s(k.channels), abs_z(k.channels);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t c = (i / k.inner) % k.channels;
    const float zb = zp_backward(zps[c], k.qmin, k.qmax, per_channel);
    const Terms t = backward_formula(fq::to_float(x[i]), fq::to_float(dy[i]), scales[c], zb, k.qmin, k.qmax, gf);
    ASSERT_TRUE(same_bits(fq::to_float(dx[i]), fq::to_float(fq::from_float<T>(t.dx)))) << "i=" << i;
    ref_s[c] += t.ds, ref_z[c] += t.dz, abs_s[c] += std::fabs(t.ds), abs_z[c] += std::fabs(t.dz);
  }
  for (int64_t c = 0; c < k.channels; ++c) {
    expect_sum_close(gs[c], ref_s[c], abs_s[c], "grad_scale", c);
    expect_sum_close(gz[c], ref_z[c], abs_z[c], "grad_zero_point", c);
  }
}

const Case kCases[] = {{1, 1, 1},     {1, 1, 7},    {1, 1, 1000},  {1, 1, 65537}, {1, 1, 300001}, {3, 5, 7},
                       {64, 16, 1},   {1, 64, 513}, {2, 17, 4099}, {4000, 3, 1},  {1, 300, 1},    {257, 2, 70}};

TEST(LearnableBackwardCpu, Float32MatchesFormula) {
  uint32_t seed = 1;
  for (const Case& k : kCases) check_backward<float>(k, seed++);
  check_backward<float>({5, 3, 11, 0, 15}, seed++);
  check_backward<float>({5, 1, 11, -32768, 32767}, seed++);
  check_backward<float>({1, 1, 5000, 1, 15}, seed++);  // a range without 0 (ATen's backward rejects it)
}

TEST(LearnableBackwardCpu, HalfAndBFloat16MatchFormula) {
  uint32_t seed = 100;
  for (const Case& k : kCases) {
    check_backward<fq::Half>(k, seed++);
    check_backward<fq::BFloat16>(k, seed++);
  }
}

// Chunks in any order, on any thread, give the same bits as the serial run; leaving outputs
// out changes nothing in the others.
TEST(LearnableBackwardCpu, ChunksAndOutputMaskGiveTheSameBits) {
  for (const auto& [channels, inner] : {std::pair<int64_t, int64_t>{1, 400003}, {64, 4099}, {96, 1}}) {
    const int64_t n = channels == 96 ? 96 * 3000 : channels * inner;
    const std::vector<float> x = random_inputs(n, 2.0f, 5), dy = random_inputs(n, 1.0f, 6);
    std::vector<float> scales(channels, 0.013f), zps(channels, -3.3f);
    const fq::LearnableQParams qp = learnable_qparams(scales, zps, inner);
    std::vector<float> dx(n), gs(channels), gz(channels);
    fq::LearnableBackwardArgs a{fq::DType::kFloat32, dy.data(), x.data(), dx.data(), gs.data(), gz.data(), n};
    fq::fake_quant_learnable_backward_cpu(a, qp);

    const fq::LearnableBackwardPlan plan = fq::plan_learnable_backward_cpu(a, qp);
    ASSERT_GT(plan.chunks, 1);
    ASSERT_LE(plan.chunks * plan.channels, std::max<int64_t>(plan.channels, n / 128));
    std::vector<double> ps(plan.chunks * plan.channels), pz(ps.size());
    std::vector<float> dx2(n, 5.0f), gs2(channels), gz2(channels);
    fq::LearnableBackwardArgs b{fq::DType::kFloat32, dy.data(), x.data(), dx2.data(), gs2.data(), gz2.data(), n};
    for (int64_t k = plan.chunks - 1; k >= 0; --k) {
      fq::learnable_backward_cpu_chunk(b, qp, plan, k, ps.data() + k * plan.channels, pz.data() + k * plan.channels);
    }
    fq::learnable_backward_cpu_finish(b, plan, ps.data(), pz.data());
    EXPECT_EQ(0, std::memcmp(dx.data(), dx2.data(), n * sizeof(float)));
    EXPECT_EQ(0, std::memcmp(gs.data(), gs2.data(), channels * sizeof(float)));
    EXPECT_EQ(0, std::memcmp(gz.data(), gz2.data(), channels * sizeof(float)));

    std::vector<float> gs3(channels, 9.0f);
    fq::fake_quant_learnable_backward_cpu({fq::DType::kFloat32, dy.data(), x.data(), nullptr, gs3.data(), nullptr, n},
                                          qp);
    EXPECT_EQ(0, std::memcmp(gs.data(), gs3.data(), channels * sizeof(float)));
    std::vector<float> dx4(n);
    fq::fake_quant_learnable_backward_cpu({fq::DType::kFloat32, dy.data(), x.data(), dx4.data(), nullptr, nullptr, n},
                                          qp);
    EXPECT_EQ(0, std::memcmp(dx.data(), dx4.data(), n * sizeof(float)));
  }
}

TEST(LearnableBackwardCpu, OutOfContractQParamsPoisonTheirChannel) {
  const int64_t channels = 3, inner = 5, n = channels * inner;
  const std::vector<float> x = random_inputs(n, 1.0f, 8), dy = random_inputs(n, 1.0f, 9);
  const std::vector<float> scales = {0.1f, std::numeric_limits<float>::infinity(), 0.1f};
  const std::vector<float> zps = {0.0f, 0.0f, -std::numeric_limits<float>::infinity()};
  const fq::LearnableQParams qp = learnable_qparams(scales, zps, inner);
  std::vector<float> dx(n), gs(channels), gz(channels);
  fq::fake_quant_learnable_backward_cpu({fq::DType::kFloat32, dy.data(), x.data(), dx.data(), gs.data(), gz.data(), n},
                                        qp);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(std::isnan(dx[i]), i / inner != 0) << i;
  EXPECT_FALSE(std::isnan(gs[0]) || std::isnan(gz[0]));
  EXPECT_TRUE(std::isnan(gs[1]) && std::isnan(gz[1]) && std::isnan(gs[2]) && std::isnan(gz[2]));
}

TEST(LearnableBackwardCpu, EmptyInputGivesZeroGradients) {
  const float scale = 0.1f, zp = 2.0f;
  fq::LearnableQParams qp;
  qp.scale = &scale;
  qp.zero_point = &zp;
  float gs = 7.0f, gz = 7.0f;
  fq::fake_quant_learnable_backward_cpu({fq::DType::kFloat32, nullptr, nullptr, nullptr, &gs, &gz, 0}, qp);
  EXPECT_EQ(gs, 0.0f);
  EXPECT_EQ(gz, 0.0f);
}

}  // namespace
