// The CUDA learnable-qparam (LSQ / LSQ+) kernels against the CPU reference: the forward and
// grad_input bit for bit, grad_scale / grad_zero_point within the documented bound of the
// exact sum of the terms (docs/numerics.md, "Sums"), and bit-identical from run to run.
// Every split of the backward (flat, runs, rows) in every dtype, with each output left out,
// on odd tails, misaligned pointers, non-finite inputs and out-of-contract qparams.
// Skips without a GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "fakequant/cuda/learnable.h"
#include "fakequant/learnable.h"

#include "cuda_test_util.cuh"

namespace fq = fakequant;
using namespace fakequant_test;
using Split = fq::cuda::LearnableBackwardSplit;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
const float kNaN = fq::bits_float(0x7FC00000u);

// One launch configuration: the tensor viewed as [outer][channels][inner] (inner = the
// channel axis' stride), and everything else the launchers take.
struct Case {
  int64_t outer = 1, channels = 1, inner = 1;
  int64_t offset = 0;  // elements the device pointers sit past a 256-byte-aligned allocation
  bool per_channel_kind = false;  // per-channel op (kind and zero-point rule) with one channel
  bool grad_input = true, grad_scale = true, grad_zero_point = true;
  float grad_factor = 0.3f;
  int32_t quant_min = -128, quant_max = 127;
  bool non_finite = false;       // NaN, +-inf, huge and subnormal values among the inputs
  bool bad_qparams = false;      // out-of-contract scale / zero point on some channels
  int bad_first = 0;             // the first of kBadQParams they take (then the next ones)
  bool tie_zero_point = true;    // one channel's zero point is 2.5 (the two backward rules differ)

  int64_t numel() const { return outer * channels * inner; }
  std::string name() const {
    return std::to_string(outer) + "x" + std::to_string(channels) + "x" + std::to_string(inner) + " offset " +
           std::to_string(offset) + (per_channel_kind || channels > 1 ? " per-channel" : " per-tensor") +
           " outputs " + std::to_string(grad_input) + std::to_string(grad_scale) + std::to_string(grad_zero_point) +
           " gf " + std::to_string(grad_factor) + " q [" + std::to_string(quant_min) + "," +
           std::to_string(quant_max) + "]" + (non_finite ? " non-finite" : "") + (bad_qparams ? " bad-qparams" : "");
  }
};

// Out-of-contract (scale, zero point) pairs: each poisons its channel with NaN on the device.
const float kBadQParams[][2] = {{-1.0f, 0.0f}, {0.0f, 0.0f}, {1e-39f, 0.0f},  {kInf, 0.0f},
                                {kNaN, 0.0f},  {0.05f, kNaN}, {0.05f, kInf}, {0.05f, -kInf}};
constexpr int kBadQParamCount = sizeof(kBadQParams) / sizeof(kBadQParams[0]);

template <typename T>
std::vector<T> random_values(int64_t n, float spread, uint32_t seed, bool non_finite) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, spread);
  std::vector<T> v(n);
  for (auto& e : v) e = fq::from_float<T>(dist(rng));
  if (n > 4) v[1] = fq::from_float<T>(1e4f), v[2] = fq::from_float<T>(-1e4f);
  if (non_finite) {
    const float specials[] = {kNaN, kInf, -kInf, 3e38f, -3e38f, -0.0f, 1e-40f};
    int k = 0;
    for (int64_t i = 0; i < n; i += 1 + static_cast<int64_t>(rng() % 29)) v[i] = fq::from_float<T>(specials[k++ % 7]);
  }
  return v;
}

// The first index where two arrays differ in their bits, or -1.
template <typename T>
int64_t first_difference(const std::vector<T>& a, const std::vector<T>& b) {
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::memcmp(&a[i], &b[i], sizeof(T)) != 0) return static_cast<int64_t>(i);
  }
  return -1;
}

// Neumaier-compensated sum: the exact sum of the terms to about 2^-53 of its magnitude.
struct ExactSum {
  double sum = 0.0, compensation = 0.0, abs_sum = 0.0;
  int64_t count = 0;
  bool nan = false;
  void add(float term) {
    if (std::isnan(term)) nan = true;
    if (std::isnan(term)) return;
    const double v = term;
    const double t = sum + v;
    compensation += std::fabs(sum) >= std::fabs(v) ? (sum - t) + v : (v - t) + sum;
    sum = t;
    abs_sum += std::fabs(v);
    ++count;
  }
  double value() const { return sum + compensation; }
};

// docs/numerics.md: a result is within half an ulp of the exact sum plus n * 2^-53 * sum|terms|
// (n the number of terms); NaN exactly when a term is NaN.
void expect_sum_within_bound(float result, const ExactSum& exact, const char* what, int64_t channel,
                             const std::string& name) {
  if (exact.nan) {
    EXPECT_TRUE(std::isnan(result)) << what << " channel " << channel << " " << name;
    return;
  }
  const double e = exact.value();
  const double half_ulp = std::ldexp(std::max(std::fabs(e), static_cast<double>(std::fabs(result))), -24);
  const double bound = half_ulp + static_cast<double>(exact.count) * std::ldexp(exact.abs_sum, -53) + 1e-45;
  EXPECT_LE(std::fabs(static_cast<double>(result) - e), bound)
      << what << " channel " << channel << ": " << result << " vs exact " << e << " " << name;
}

// The GPU against the CPU reference on one case; `repeat` reruns the backward and requires
// the same bits.
template <typename T>
void check_case(const Case& k, bool repeat = true) {
  const std::string name = k.name();
  SCOPED_TRACE(name);
  const int64_t n = k.numel(), channels = k.channels, off = k.offset;
  const uint32_t seed = static_cast<uint32_t>(n * 3 + channels * 7 + k.inner + off);
  const std::vector<T> x = random_values<T>(n, 3.0f, seed, k.non_finite);
  const std::vector<T> dy = random_values<T>(n, 1.0f, seed + 1, false);
  std::mt19937 rng(seed + 2);
  std::uniform_real_distribution<float> scale_dist(0.01f, 0.06f);
  std::uniform_real_distribution<float> zp_dist(static_cast<float>(k.quant_min) - 2.0f,
                                                static_cast<float>(k.quant_max) + 2.0f);
  std::vector<float> scales(channels), zps(channels);
  for (int64_t c = 0; c < channels; ++c) scales[c] = scale_dist(rng), zps[c] = zp_dist(rng);
  if (k.tie_zero_point) zps[channels > 1 ? 1 : 0] = 2.5f;
  if (k.bad_qparams) {
    // Every third channel from the second on (the only one when there is one channel).
    for (int64_t c = channels > 1 ? 1 : 0, b = k.bad_first; c < channels; c += 3, ++b) {
      scales[c] = kBadQParams[b % kBadQParamCount][0];
      zps[c] = kBadQParams[b % kBadQParamCount][1];
    }
  }
  fq::LearnableQParams qp;
  qp.scale = scales.data();
  qp.zero_point = zps.data();
  const bool per_channel = channels > 1 || k.per_channel_kind;
  qp.kind = per_channel ? fq::LearnableKind::kPerChannel : fq::LearnableKind::kPerTensor;
  qp.channels = channels;
  qp.channel_stride = k.inner;
  qp.quant_min = k.quant_min;
  qp.quant_max = k.quant_max;
  qp.grad_factor = k.grad_factor;

  // CPU reference, with the same outputs left out.
  std::vector<T> y_cpu(n), dx_cpu(n);
  std::vector<float> gs_cpu(channels), gz_cpu(channels);
  fq::fake_quant_learnable_cpu({dtype_of<T>(), x.data(), y_cpu.data(), n}, qp);
  fq::fake_quant_learnable_backward_cpu({dtype_of<T>(), dy.data(), x.data(),
                                         k.grad_input ? dx_cpu.data() : nullptr,
                                         k.grad_scale ? gs_cpu.data() : nullptr,
                                         k.grad_zero_point ? gz_cpu.data() : nullptr, n},
                                        qp);

  // Device buffers: exactly n + offset elements; outputs poisoned (0x7F bytes: a finite
  // fp32, a NaN fp16 / bf16 with a payload no kernel writes).
  DeviceBuffer<T> d_x(n + off), d_dy(n + off), d_y(n + off), d_dx(n + off);
  DeviceBuffer<float> d_scale(channels), d_zp(channels), d_gs(channels), d_gz(channels);
  ASSERT_CUDA(cudaMemcpy(d_x.ptr + off, x.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  ASSERT_CUDA(cudaMemcpy(d_dy.ptr + off, dy.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  ASSERT_CUDA(cudaMemcpy(d_scale.ptr, scales.data(), channels * sizeof(float), cudaMemcpyHostToDevice));
  ASSERT_CUDA(cudaMemcpy(d_zp.ptr, zps.data(), channels * sizeof(float), cudaMemcpyHostToDevice));
  ASSERT_CUDA(cudaMemset(d_y.ptr, 0x7F, (n + off) * sizeof(T)));
  ASSERT_CUDA(cudaMemset(d_dx.ptr, 0x7F, (n + off) * sizeof(T)));
  ASSERT_CUDA(cudaMemset(d_gs.ptr, 0x7F, channels * sizeof(float)));
  ASSERT_CUDA(cudaMemset(d_gz.ptr, 0x7F, channels * sizeof(float)));
  fq::LearnableQParams dqp = qp;
  dqp.scale = d_scale.ptr;
  dqp.zero_point = d_zp.ptr;

  ASSERT_CUDA(fq::cuda::launch_fake_quant_learnable({dtype_of<T>(), d_x.ptr + off, d_y.ptr + off, n},
                                                    dqp, nullptr));
  const fq::LearnableBackwardArgs a{dtype_of<T>(),
                                    d_dy.ptr + off,
                                    d_x.ptr + off,
                                    k.grad_input ? d_dx.ptr + off : nullptr,
                                    k.grad_scale ? d_gs.ptr : nullptr,
                                    k.grad_zero_point ? d_gz.ptr : nullptr,
                                    n};
  const bool reduce = k.grad_scale || k.grad_zero_point;
  const fq::cuda::LearnableBackwardShape shape = fq::cuda::learnable_backward_shape(a, dqp);
  const size_t bytes = fq::cuda::learnable_backward_workspace_bytes(a, dqp);
  EXPECT_EQ(bytes, 2 * sizeof(double) * static_cast<size_t>(shape.partials));
  if (!reduce) EXPECT_EQ(bytes, 0u);
  // A few hundred KB at most: numel / 256 entries (plus one row of channels) per array.
  EXPECT_LE(shape.partials, std::max<int64_t>(channels, n / 256) + channels);
  EXPECT_EQ(shape.split, n == 0 ? Split::kNone
                                : channels == 1 ? Split::kFlat : (k.inner >= 64 ? Split::kRuns : Split::kRows));
  DeviceBuffer<unsigned char> workspace(bytes);  // exactly the size asked for
  ASSERT_CUDA(fq::cuda::launch_fake_quant_learnable_backward(a, dqp, bytes > 0 ? workspace.ptr : nullptr, bytes,
                                                             nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());

  std::vector<T> y_gpu(n + off), dx_gpu(n + off);
  ASSERT_CUDA(cudaMemcpy(y_gpu.data(), d_y.ptr, (n + off) * sizeof(T), cudaMemcpyDeviceToHost));
  ASSERT_CUDA(cudaMemcpy(dx_gpu.data(), d_dx.ptr, (n + off) * sizeof(T), cudaMemcpyDeviceToHost));
  for (int64_t i = 0; i < off; ++i) {  // the elements before the tensor keep the poison
    unsigned char poison[sizeof(T)];
    std::memset(poison, 0x7F, sizeof(T));
    ASSERT_EQ(0, std::memcmp(&y_gpu[i], poison, sizeof(T)));
    ASSERT_EQ(0, std::memcmp(&dx_gpu[i], poison, sizeof(T)));
  }
  y_gpu.erase(y_gpu.begin(), y_gpu.begin() + off);
  dx_gpu.erase(dx_gpu.begin(), dx_gpu.begin() + off);
  const int64_t y_diff = first_difference(y_cpu, y_gpu);
  ASSERT_EQ(y_diff, -1) << "forward differs at " << y_diff << ": x " << fq::to_float(x[y_diff]) << " cpu "
                        << fq::to_float(y_cpu[y_diff]) << " gpu " << fq::to_float(y_gpu[y_diff]);
  if (k.grad_input) {
    const int64_t d = first_difference(dx_cpu, dx_gpu);
    ASSERT_EQ(d, -1) << "grad_input differs at " << d << ": cpu " << fq::to_float(dx_cpu[d]) << " gpu "
                     << fq::to_float(dx_gpu[d]);
  } else {
    std::vector<T> poisoned(n);
    std::memset(poisoned.data(), 0x7F, n * sizeof(T));
    ASSERT_EQ(first_difference(poisoned, dx_gpu), -1) << "grad_input written although not requested";
  }

  std::vector<float> gs_gpu(channels), gz_gpu(channels);
  ASSERT_CUDA(cudaMemcpy(gs_gpu.data(), d_gs.ptr, channels * sizeof(float), cudaMemcpyDeviceToHost));
  ASSERT_CUDA(cudaMemcpy(gz_gpu.data(), d_gz.ptr, channels * sizeof(float), cudaMemcpyDeviceToHost));
  const std::vector<float> poisoned_channels(channels, fq::bits_float(0x7F7F7F7Fu));
  if (!k.grad_scale) EXPECT_EQ(first_difference(poisoned_channels, gs_gpu), -1) << "grad_scale written";
  if (!k.grad_zero_point) EXPECT_EQ(first_difference(poisoned_channels, gz_gpu), -1) << "grad_zero_point written";
  if (!reduce) return;

  // The exact sums of the formula's terms, channel by channel (NaN for poisoned channels).
  std::vector<ExactSum> exact_s(channels), exact_z(channels);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t c = (i / k.inner) % channels;
    if (!fq::learnable_qparams_valid(scales[c], zps[c])) {
      exact_s[c].add(kNaN), exact_z[c].add(kNaN);
      continue;
    }
    const float qmin = static_cast<float>(k.quant_min), qmax = static_cast<float>(k.quant_max);
    const float zb = per_channel ? fq::learnable_zero_point_backward_per_channel(zps[c], qmin, qmax)
                                 : fq::learnable_zero_point_backward_per_tensor(zps[c], qmin, qmax);
    const fq::LearnableGrad g = fq::learnable_grad(fq::to_float(x[i]), fq::to_float(dy[i]), scales[c],
                                                   fq::inverse_scale(scales[c]), zb, qmin, qmax, k.grad_factor);
    exact_s[c].add(g.grad_scale), exact_z[c].add(g.grad_zero_point);
  }
  for (int64_t c = 0; c < channels; ++c) {
    if (k.grad_scale) {
      expect_sum_within_bound(gs_gpu[c], exact_s[c], "gpu grad_scale", c, name);
      expect_sum_within_bound(gs_cpu[c], exact_s[c], "cpu grad_scale", c, name);
    }
    if (k.grad_zero_point) {
      expect_sum_within_bound(gz_gpu[c], exact_z[c], "gpu grad_zero_point", c, name);
      expect_sum_within_bound(gz_cpu[c], exact_z[c], "cpu grad_zero_point", c, name);
    }
  }
  if (!repeat) return;
  // Run to run: the same bits (the workspace holds the previous run's partials).
  DeviceBuffer<float> d_gs2(channels), d_gz2(channels);
  fq::LearnableBackwardArgs again = a;
  again.grad_scale = k.grad_scale ? d_gs2.ptr : nullptr;
  again.grad_zero_point = k.grad_zero_point ? d_gz2.ptr : nullptr;
  ASSERT_CUDA(fq::cuda::launch_fake_quant_learnable_backward(again, dqp, workspace.ptr, bytes, nullptr));
  std::vector<float> gs2(channels), gz2(channels);
  if (k.grad_scale) {
    ASSERT_CUDA(cudaMemcpy(gs2.data(), d_gs2.ptr, channels * sizeof(float), cudaMemcpyDeviceToHost));
    EXPECT_EQ(first_difference(gs2, gs_gpu), -1) << "grad_scale differs between two runs";
  }
  if (k.grad_zero_point) {
    ASSERT_CUDA(cudaMemcpy(gz2.data(), d_gz2.ptr, channels * sizeof(float), cudaMemcpyDeviceToHost));
    EXPECT_EQ(first_difference(gz2, gz_gpu), -1) << "grad_zero_point differs between two runs";
  }
}

// Each case in all three dtypes: fp32 aligned and misaligned, fp16 and bf16 on the other
// alignment of each (so both alignments are seen in every dtype across a list).
void check_all_dtypes(Case k, int index) {
  for (const int64_t offset : {0, 1}) {
    k.offset = offset;
    check_case<float>(k);
    if (::testing::Test::HasFatalFailure()) return;
  }
  k.offset = index % 2;
  check_case<fq::Half>(k);
  if (::testing::Test::HasFatalFailure()) return;
  k.offset = 1 - index % 2;
  check_case<fq::BFloat16>(k);
}

Case shape(int64_t outer, int64_t channels, int64_t inner) {
  Case k;
  k.outer = outer, k.channels = channels, k.inner = inner;
  return k;
}

// --- the splits on many shapes -------------------------------------------------------------

TEST(LearnableCuda, PerTensorFlatSplitMatchesCpuReference) {
  SKIP_WITHOUT_GPU();
  // One element, a tail alone, one full group, odd tails around a block's 2048 elements.
  const Case cases[] = {shape(1, 1, 1), shape(1, 1, 7), shape(1, 1, 8), shape(1, 1, 2047), shape(1, 1, 4099),
                        shape(3, 1, 333)};
  int index = 0;
  for (const Case& k : cases) {
    check_all_dtypes(k, index++);
    if (HasFatalFailure()) return;
  }
  // The per-channel op on a size-1 axis takes the flat split with the per-channel zero-point
  // rule (the tie 2.5 rounds to 2, not 3).
  Case per_channel_one = shape(5, 1, 33);
  per_channel_one.per_channel_kind = true;
  check_all_dtypes(per_channel_one, 0);
  // A random zero point (no tie).
  Case no_tie = shape(1, 1, 1001);
  no_tie.tie_zero_point = false;
  check_all_dtypes(no_tie, 1);
}

TEST(LearnableCuda, PerTensorGridStrideMatchesCpuReference) {
  SKIP_WITHOUT_GPU();
  // More 8-element groups than the capped grid has threads at up to 8 multiprocessors: the
  // forward and the flat backward grid-stride, and the finish kernel adds many partials.
  Case big = shape(1, 1, (1 << 19) + 5);
  check_case<float>(big);
  big.offset = 1;
  check_case<fq::BFloat16>(big, false);
}

TEST(LearnableCuda, PerChannelRunsSplitMatchesCpuReference) {
  SKIP_WITHOUT_GPU();
  // inner >= 64: channels-first weights ([C, K]), mid-axis activations ([N, C, H*W]), runs of
  // exactly 64, odd runs, and channels with several slices each.
  const Case cases[] = {shape(1, 6, 4608), shape(2, 17, 64),  shape(3, 5, 4099), shape(7, 3, 65),
                        shape(4, 3, 100),  shape(2, 3, 8192), shape(1, 2, 64),   shape(9, 2, 127)};
  int index = 0;
  for (const Case& k : cases) {
    check_all_dtypes(k, index++);
    if (HasFatalFailure()) return;
  }
}

TEST(LearnableCuda, PerChannelRowsSplitMatchesCpuReference) {
  SKIP_WITHOUT_GPU();
  // inner < 64. channels_last (inner 1): one tile, several tiles (300 = 256 + 44), 128 lanes
  // of 2 channels, one row of 1000 channels. inner 2..63: NCHW 7x7 (49: 5 channels a tile,
  // a partial last tile), 63, 2 with a last tile of one channel, rows shorter than the block
  // (lanes 2, 17 and 42: the lane tree with odd counts), a mid axis ([4, 6, 5, 3] along 1),
  // and enough rows for several slices per tile (2000x2x1, 700x4x9, 1024x3x5, 530x30x9).
  const Case cases[] = {shape(300, 96, 1), shape(100, 300, 1), shape(2000, 2, 1), shape(1, 1000, 1),
                        shape(8, 12, 49),  shape(5, 9, 63),    shape(33, 257, 2), shape(7, 3, 33),
                        shape(30, 3, 5),   shape(50, 2, 3),    shape(4, 6, 15),   shape(64, 40, 7),
                        shape(3, 11, 62),  shape(1, 7, 49),    shape(700, 4, 9),  shape(1024, 3, 5)};
  int index = 0;
  for (const Case& k : cases) {
    check_all_dtypes(k, index++);
    if (HasFatalFailure()) return;
  }
  // Two tiles (28 + 2 channels) of several slices each.
  Case tiles_and_slices = shape(530, 30, 9);
  tiles_and_slices.offset = 1;
  check_case<float>(tiles_and_slices);
}

TEST(LearnableCuda, ManyChannelsMatchCpuReference) {
  SKIP_WITHOUT_GPU();
  // 30000 channels: more than the finish kernel's capped grid has threads at 3 multiprocessors
  // (it grid-strides over the channels), 118 row tiles of 256 channels channels_last, 7500 tiles
  // of 4 channels at inner 63, and a runs split with one slice per channel.
  check_case<float>(shape(2, 30000, 1));
  check_case<fq::Half>(shape(1, 30000, 2), false);
  Case rows63 = shape(1, 1000, 63);
  rows63.offset = 1;
  check_case<fq::BFloat16>(rows63, false);
  check_case<float>(shape(1, 500, 64), false);
}

// --- outputs, values and qparams -----------------------------------------------------------

TEST(LearnableCuda, EachOutputCanBeLeftOut) {
  SKIP_WITHOUT_GPU();
  // Every subset of (grad_input, grad_scale, grad_zero_point) on each split; outputs left out
  // keep their poison.
  const Case splits[] = {shape(1, 1, 3001), shape(3, 4, 513), shape(40, 48, 1), shape(6, 10, 49)};
  for (const Case& base : splits) {
    for (int mask = 0; mask < 8; ++mask) {
      Case k = base;
      k.grad_input = (mask & 1) != 0;
      k.grad_scale = (mask & 2) != 0;
      k.grad_zero_point = (mask & 4) != 0;
      k.offset = mask % 2;
      check_case<float>(k, false);
      if (HasFatalFailure()) return;
    }
    Case half = base;
    half.grad_input = false;
    check_case<fq::Half>(half, false);
    Case bf16 = base;
    bf16.grad_scale = bf16.grad_zero_point = false;
    check_case<fq::BFloat16>(bf16, false);
  }
}

TEST(LearnableCuda, NonFiniteInputsMatchCpuReference) {
  SKIP_WITHOUT_GPU();
  // NaN x: grad_input dy * 0, NaN qparam sums; +-inf and huge x saturate; -0 and subnormals.
  const Case splits[] = {shape(1, 1, 1000), shape(2, 3, 300), shape(50, 20, 1), shape(9, 7, 49), shape(1, 1, 1)};
  int index = 0;
  for (Case k : splits) {
    k.non_finite = true;
    check_all_dtypes(k, index++);
    if (HasFatalFailure()) return;
  }
}

TEST(LearnableCuda, QuantRangesAndGradFactorsMatchCpuReference) {
  SKIP_WITHOUT_GPU();
  struct Range {
    int32_t quant_min, quant_max;
    float grad_factor;
  };
  const Range ranges[] = {{0, 255, 1.0f}, {-8, 7, 2.5f}, {0, 1, 1.0f / 3.0f}, {-128, 127, 1.0f}, {-1, 0, -0.75f}};
  const Case splits[] = {shape(1, 1, 777), shape(2, 3, 200), shape(20, 13, 1), shape(4, 5, 49)};
  int index = 0;
  for (const Range& r : ranges) {
    for (Case k : splits) {
      k.quant_min = r.quant_min, k.quant_max = r.quant_max, k.grad_factor = r.grad_factor;
      k.offset = index % 2;
      check_case<float>(k, false);
      if (HasFatalFailure()) return;
      k.offset = 1 - index % 2;
      if (index++ % 2 == 0) {
        check_case<fq::Half>(k, false);
      } else {
        check_case<fq::BFloat16>(k, false);
      }
      if (HasFatalFailure()) return;
    }
  }
}

TEST(LearnableCuda, OutOfContractQParamsPoisonAsTheCpuReference) {
  SKIP_WITHOUT_GPU();
  // On the device a channel with an out-of-contract scale or zero point gets NaN outputs,
  // grad_input and qparam gradients; the CPU reference poisons the same way, so the outputs
  // compare bit for bit and the other channels are unaffected.
  int index = 0;
  for (int b = 0; b < kBadQParamCount; ++b) {
    Case per_tensor = shape(1, 1, 100 + b);
    per_tensor.bad_qparams = true;
    per_tensor.bad_first = b;
    check_case<float>(per_tensor, false);
    if (HasFatalFailure()) return;
  }
  const Case splits[] = {shape(3, 10, 100), shape(30, 10, 1), shape(5, 12, 49)};
  for (Case k : splits) {
    k.bad_qparams = true;
    k.bad_first = index;
    check_all_dtypes(k, index++);
    if (HasFatalFailure()) return;
  }
}

// --- the plan, empty input and bad arguments -----------------------------------------------

TEST(LearnableCuda, BackwardSplitSelection) {
  SKIP_WITHOUT_GPU();
  float dummy = 0.0f;
  fq::LearnableQParams qp;
  qp.kind = fq::LearnableKind::kPerChannel;
  fq::LearnableBackwardArgs a;
  a.grad_scale = &dummy;  // host-side queries only: pointers are not read
  // [N, C, H, W] = [32, 256, ., .] along C (inner = H * W) and channels_last (inner 1).
  for (const int64_t inner : {1, 2, 49, 63, 64}) {
    SCOPED_TRACE(inner);
    qp.channels = 256;
    qp.channel_stride = inner;
    a.numel = 32 * 256 * inner;
    const fq::cuda::LearnableBackwardShape s = fq::cuda::learnable_backward_shape(a, qp);
    EXPECT_EQ(s.channels, 256);
    EXPECT_EQ(s.inner, inner);
    EXPECT_EQ(s.outer, 32);
    EXPECT_GE(s.slices, 1);
    EXPECT_LE(s.slices, 32);
    EXPECT_EQ(s.partials, s.slices * 256);
    EXPECT_LE(s.partials, a.numel / 256 + 256);
    if (inner >= 64) {
      EXPECT_EQ(s.split, Split::kRuns);
      EXPECT_EQ(s.blocks, 256 * s.slices);
      continue;
    }
    EXPECT_EQ(s.split, Split::kRows);
    // Whole channels, as many as fit 256 threads: consecutive threads take consecutive
    // elements of a row, and a block is at least 256 - inner + 1 elements wide.
    const int64_t expected_tile_channels = std::min<int64_t>(256, 256 / inner);
    EXPECT_EQ(s.tile_channels, expected_tile_channels);
    EXPECT_EQ(s.tile_elements, expected_tile_channels * inner);
    EXPECT_LE(s.tile_elements, 256);
    EXPECT_GT(s.tile_elements, 256 - inner);
    EXPECT_EQ(s.lanes, 1);
    EXPECT_EQ(s.blocks, (256 + expected_tile_channels - 1) / expected_tile_channels * s.slices);
  }
  // NCHW 7x7 with 5 channels per tile: 245 of 256 threads busy (old mapping: one channel per
  // thread, 49 elements apart).
  qp.channels = 2048;
  qp.channel_stride = 49;
  a.numel = 8 * 2048 * 49;
  fq::cuda::LearnableBackwardShape s = fq::cuda::learnable_backward_shape(a, qp);
  EXPECT_EQ(s.split, Split::kRows);
  EXPECT_EQ(s.tile_channels, 5);
  EXPECT_EQ(s.tile_elements, 245);
  EXPECT_EQ(s.blocks % 410, 0);  // ceil(2048 / 5) tiles
  // Two tiles of 28 and 2 channels, several slices each.
  qp.channels = 30;
  qp.channel_stride = 9;
  a.numel = 530 * 30 * 9;
  s = fq::cuda::learnable_backward_shape(a, qp);
  EXPECT_EQ(s.split, Split::kRows);
  EXPECT_EQ(s.tile_channels, 28);
  EXPECT_EQ(s.lanes, 1);
  EXPECT_GT(s.slices, 1);
  EXPECT_EQ(s.blocks, 2 * s.slices);
  // Rows shorter than a block: whole rows side by side.
  qp.channels = 3;
  qp.channel_stride = 5;
  a.numel = 100 * 15;
  s = fq::cuda::learnable_backward_shape(a, qp);
  EXPECT_EQ(s.split, Split::kRows);
  EXPECT_EQ(s.tile_channels, 3);
  EXPECT_EQ(s.tile_elements, 15);
  EXPECT_EQ(s.lanes, 17);
  // One channel: flat, per-tensor or not; no reduction, no partials.
  qp.channels = 1;
  a.numel = 12345;
  s = fq::cuda::learnable_backward_shape(a, qp);
  EXPECT_EQ(s.split, Split::kFlat);
  EXPECT_EQ(s.partials, s.blocks);
  a.grad_scale = nullptr;
  EXPECT_EQ(fq::cuda::learnable_backward_shape(a, qp).partials, 0);
  EXPECT_EQ(fq::cuda::learnable_backward_workspace_bytes(a, qp), 0u);
  // Empty.
  a.numel = 0;
  EXPECT_EQ(fq::cuda::learnable_backward_shape(a, qp).split, Split::kNone);
}

TEST(LearnableCuda, EmptyInputZeroesTheQParamGradients) {
  SKIP_WITHOUT_GPU();
  for (const int64_t channels : {1, 5}) {
    DeviceBuffer<float> ds(channels), dz(channels), gs(channels), gz(channels);
    ASSERT_CUDA(cudaMemset(gs.ptr, 0x7F, channels * sizeof(float)));
    ASSERT_CUDA(cudaMemset(gz.ptr, 0x7F, channels * sizeof(float)));
    fq::LearnableQParams qp;
    qp.scale = ds.ptr;
    qp.zero_point = dz.ptr;
    qp.channels = channels;
    qp.kind = channels > 1 ? fq::LearnableKind::kPerChannel : fq::LearnableKind::kPerTensor;
    for (const fq::DType dtype : {fq::DType::kFloat32, fq::DType::kFloat16, fq::DType::kBFloat16}) {
      const fq::LearnableBackwardArgs a{dtype, nullptr, nullptr, nullptr, gs.ptr, gz.ptr, 0};
      ASSERT_EQ(fq::cuda::learnable_backward_workspace_bytes(a, qp), 0u);
      ASSERT_CUDA(fq::cuda::launch_fake_quant_learnable_backward(a, qp, nullptr, 0, nullptr));
      ASSERT_CUDA(fq::cuda::launch_fake_quant_learnable({dtype, nullptr, nullptr, 0}, qp, nullptr));
    }
    ASSERT_CUDA(cudaDeviceSynchronize());
    std::vector<float> v(2 * channels);
    ASSERT_CUDA(cudaMemcpy(v.data(), gs.ptr, channels * sizeof(float), cudaMemcpyDeviceToHost));
    ASSERT_CUDA(cudaMemcpy(v.data() + channels, gz.ptr, channels * sizeof(float), cudaMemcpyDeviceToHost));
    for (const float e : v) EXPECT_EQ(fq::float_bits(e), 0u);
  }
}

TEST(LearnableCuda, BadArgumentsAreRejectedWithoutLaunching) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 60;
  DeviceBuffer<float> x(n), dy(n), dx(n), y(n), ds(4), dz(4), gs(4), gz(4);
  ASSERT_CUDA(cudaMemset(x.ptr, 0, n * sizeof(float)));
  ASSERT_CUDA(cudaMemset(dy.ptr, 0, n * sizeof(float)));
  ASSERT_CUDA(cudaMemset(dx.ptr, 0x7F, n * sizeof(float)));
  ASSERT_CUDA(cudaMemset(y.ptr, 0x7F, n * sizeof(float)));
  ASSERT_CUDA(cudaMemset(gs.ptr, 0x7F, 4 * sizeof(float)));
  const std::vector<float> scales(4, 0.1f), zps(4, 0.0f);
  ASSERT_CUDA(cudaMemcpy(ds.ptr, scales.data(), 4 * sizeof(float), cudaMemcpyHostToDevice));
  ASSERT_CUDA(cudaMemcpy(dz.ptr, zps.data(), 4 * sizeof(float), cudaMemcpyHostToDevice));
  DeviceBuffer<unsigned char> workspace(1 << 16);
  struct Bad {
    int64_t channels, channel_stride, numel;
  };
  // A zero stride (which the workspace query once divided by), no channels, a negative
  // stride, a numel that is not whole rows of [channels][stride], a negative numel.
  const Bad bad[] = {{4, 0, n}, {0, 1, n}, {4, -3, n}, {4, 7, n}, {4, 16, n}, {4, 1, -4}};
  for (const Bad& b : bad) {
    SCOPED_TRACE(std::to_string(b.channels) + " " + std::to_string(b.channel_stride) + " " + std::to_string(b.numel));
    fq::LearnableQParams qp;
    qp.scale = ds.ptr;
    qp.zero_point = dz.ptr;
    qp.kind = fq::LearnableKind::kPerChannel;
    qp.channels = b.channels;
    qp.channel_stride = b.channel_stride;
    const fq::LearnableBackwardArgs a{fq::DType::kFloat32, dy.ptr, x.ptr, dx.ptr, gs.ptr, gz.ptr, b.numel};
    EXPECT_EQ(fq::cuda::learnable_backward_shape(a, qp).split, Split::kNone);
    EXPECT_EQ(fq::cuda::learnable_backward_workspace_bytes(a, qp), 0u);
    EXPECT_EQ(fq::cuda::launch_fake_quant_learnable_backward(a, qp, workspace.ptr, 1 << 16, nullptr),
              cudaErrorInvalidValue);
  }
  // The forward takes any numel (the channel of offset i is (i / stride) % channels), but no
  // zero stride, channel count or negative numel.
  for (const Bad& b : {Bad{4, 0, n}, Bad{0, 1, n}, Bad{4, 1, -4}}) {
    fq::LearnableQParams qp;
    qp.scale = ds.ptr;
    qp.zero_point = dz.ptr;
    qp.channels = b.channels;
    qp.channel_stride = b.channel_stride;
    EXPECT_EQ(fq::cuda::launch_fake_quant_learnable({fq::DType::kFloat32, x.ptr, y.ptr, b.numel}, qp, nullptr),
              cudaErrorInvalidValue);
  }
  // Too small a workspace.
  fq::LearnableQParams qp;
  qp.scale = ds.ptr;
  qp.zero_point = dz.ptr;
  qp.kind = fq::LearnableKind::kPerChannel;
  qp.channels = 4;
  qp.channel_stride = 15;
  const fq::LearnableBackwardArgs a{fq::DType::kFloat32, dy.ptr, x.ptr, dx.ptr, gs.ptr, gz.ptr, n};
  const size_t bytes = fq::cuda::learnable_backward_workspace_bytes(a, qp);
  ASSERT_GT(bytes, 0u);
  EXPECT_EQ(fq::cuda::launch_fake_quant_learnable_backward(a, qp, workspace.ptr, bytes - 8, nullptr),
            cudaErrorInvalidValue);
  ASSERT_CUDA(cudaDeviceSynchronize());
  // Nothing was written.
  std::vector<float> out(n), gsv(4);
  ASSERT_CUDA(cudaMemcpy(out.data(), dx.ptr, n * sizeof(float), cudaMemcpyDeviceToHost));
  for (const float e : out) ASSERT_EQ(fq::float_bits(e), 0x7F7F7F7Fu);
  ASSERT_CUDA(cudaMemcpy(out.data(), y.ptr, n * sizeof(float), cudaMemcpyDeviceToHost));
  for (const float e : out) ASSERT_EQ(fq::float_bits(e), 0x7F7F7F7Fu);
  ASSERT_CUDA(cudaMemcpy(gsv.data(), gs.ptr, 4 * sizeof(float), cudaMemcpyDeviceToHost));
  for (const float e : gsv) ASSERT_EQ(fq::float_bits(e), 0x7F7F7F7Fu);
}

}  // namespace
