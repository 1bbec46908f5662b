// Stochastic rounding on CUDA against the CPU reference, bit for bit (same seed, same Philox
// words by memory offset): per-tensor and per-channel (int and float zero points), every
// dtype, empty, one-element and odd-tailed inputs, input and output pointers off 16-byte
// alignment separately, dense layouts with the channel at any position, the `enabled` switch,
// non-finite inputs and out-of-contract qparams; plus the properties written out (levels stay,
// the expectation is the input, the seed is read on the device). The argument checks need no
// device.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "fakequant/cuda/launch.h"
#include "fakequant/fake_quant.h"

#include "cuda_test_util.cuh"

namespace fq = fakequant;
using namespace fakequant_test;

namespace {

using Seed = std::array<int64_t, 2>;

// Both words with their high bits set (the key's and the counter offset's upper halves are
// used by Philox).
Seed random_seed(uint64_t s) {
  std::mt19937_64 rng(s);
  return {static_cast<int64_t>(rng() | (1ull << 63)), static_cast<int64_t>(rng() | (1ull << 40))};
}

// ----------------------------------------------------------------------------------------
// Per-tensor.

const TensorQParams kTensorQParams[] = {
    {0.0173f, 0, -128, 127}, {0.002f, -300, -32768, 32767}, {0.25f, 3, -8, 7}, {0.125f, 17, 0, 255}};

template <typename T>
void check_per_tensor(int64_t n, Placement at, const TensorQParams& q, const Seed& seed,
                      std::optional<int64_t> enabled = std::nullopt, bool with_mask = true) {
  check_per_tensor_against_cpu<T>(n, at, q, fq::Rounding::kStochastic, seed.data(), enabled, with_mask);
}

class StochasticCuda : public ::testing::TestWithParam<int64_t> {};

TEST_P(StochasticCuda, PerTensorMatchesCpuReference) {
  SKIP_WITHOUT_GPU();
  const int64_t n = GetParam();
  for (const Placement at : kPlacements)
    for (const TensorQParams& q : kTensorQParams) {
      const Seed seed = random_seed(static_cast<uint64_t>(n * 3 + at.in + 16 * at.out));
      check_per_tensor<float>(n, at, q, seed);
      check_per_tensor<fq::Half>(n, at, q, seed);
      check_per_tensor<fq::BFloat16>(n, at, q, seed);
      if (::testing::Test::HasFatalFailure()) return;
    }
}

INSTANTIATE_TEST_SUITE_P(Sizes, StochasticCuda, ::testing::Values(1, 7, 8, 9, 255, 4097));

// Beyond one grid of a device with a few multiprocessors, so that the grid strides.
TEST(StochasticCudaLarge, PerTensorMatchesCpuReference) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 200003;
  check_per_tensor<float>(n, {0, 0}, kTensorQParams[0], random_seed(1));
  check_per_tensor<fq::Half>(n, {1, 0}, kTensorQParams[2], random_seed(2));
  check_per_tensor<fq::BFloat16>(n, {0, 1}, kTensorQParams[3], random_seed(3));
}

TEST(StochasticCudaEdges, PerTensorWithoutMaskAndEnabledSwitch) {
  SKIP_WITHOUT_GPU();
  const TensorQParams bad{NAN, 0, -128, 127};
  for (const int64_t n : {1, 13, 4099})
    for (const Placement at : {Placement{0, 0}, Placement{1, 0}, Placement{0, 1}}) {
      check_per_tensor<float>(n, at, kTensorQParams[0], random_seed(n), std::nullopt, false);
      for (const int64_t enabled : {0, 1}) {
        check_per_tensor<float>(n, at, kTensorQParams[0], random_seed(n + 1), enabled);
        check_per_tensor<fq::Half>(n, at, kTensorQParams[2], random_seed(n + 2), enabled);
        check_per_tensor<fq::BFloat16>(n, at, bad, random_seed(n + 3), enabled);
        if (::testing::Test::HasFatalFailure()) return;
      }
    }
}

TEST(StochasticCudaEdges, PerTensorOutOfContractQParamsPoison) {
  SKIP_WITHOUT_GPU();
  const TensorQParams bad[] = {{-1.0f, 0, -128, 127}, {0.0f, 0, -128, 127},     {NAN, 0, -128, 127},
                               {INFINITY, 0, -128, 127}, {1e-39f, 0, -128, 127}, {0.1f, 128, -128, 127}};
  for (const TensorQParams& q : bad) {
    check_per_tensor<float>(1001, {0, 0}, q, random_seed(7));
    check_per_tensor<fq::Half>(1001, {1, 0}, q, random_seed(8));
    check_per_tensor<fq::BFloat16>(1001, {0, 3}, q, random_seed(9));
    if (::testing::Test::HasFatalFailure()) return;
  }
}

// The properties of docs/numerics.md, written out (independently of the CPU reference):
// values on a quantization level never move; a value a fraction f above a level rounds up
// with probability f (checked on 8192 draws at f = 0.3, within 5 standard deviations);
// both seed words are read on the device, and the same seed gives the same result.
TEST(StochasticCudaEdges, LevelsStayFractionsRoundUpInProportionAndTheSeedIsRead) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 8192;
  const float scale = 0.25f;
  auto run = [&](const std::vector<float>& x, const Seed& seed) {
    DeviceSpan<float> dx(x), dy(n, 0), ds(std::vector<float>{scale});
    DeviceSpan<int32_t> dz(std::vector<int32_t>{0});
    DeviceSpan<int64_t> dseed(std::vector<int64_t>(seed.begin(), seed.end()));
    EXPECT_EQ(fq::cuda::launch_fake_quant_per_tensor({fq::DType::kFloat32, dx.ptr(), dy.ptr(), nullptr, n},
                                                     {ds.ptr(), dz.ptr(), -128, 127, fq::Rounding::kStochastic,
                                                      dseed.ptr()},
                                                     nullptr),
              cudaSuccess);
    return dy.download("output");
  };
  std::vector<float> levels(n);
  for (int64_t i = 0; i < n; ++i) levels[i] = static_cast<float>(i % 255 - 128) * scale;
  EXPECT_TRUE(same_bits(levels, run(levels, random_seed(11))));

  // x / scale = 2.3 (exact in fp32 arithmetic: the scale is a power of two) rounds up to 3
  // with probability 0.3; -2.3 up to -2 with probability 0.7.
  for (const float v : {2.3f, -2.3f}) {
    const std::vector<float> x(n, v * scale);
    const Seed seed = random_seed(v > 0 ? 12 : 13);
    const std::vector<float> y = run(x, seed);
    const float below = std::floor(v);
    int64_t up = 0;
    for (const float out : y) {
      const float q = out / scale;
      ASSERT_TRUE(q == below || q == below + 1.0f) << q;
      up += q == below + 1.0f;
    }
    const double want = static_cast<double>(v) - below;  // frac(v)
    const double p = static_cast<double>(up) / n, sigma = std::sqrt(want * (1.0 - want) / n);
    EXPECT_NEAR(p, want, 5 * sigma) << "v " << v;
    EXPECT_TRUE(same_bits(y, run(x, seed)));  // deterministic for a seed
    EXPECT_FALSE(same_bits(y, run(x, {seed[0] ^ 1, seed[1]})));
    EXPECT_FALSE(same_bits(y, run(x, {seed[0], seed[1] ^ (int64_t{1} << 35)})));
  }
}

// ----------------------------------------------------------------------------------------
// Per-channel.

template <typename T>
void check_per_channel(ChannelLayout l, Placement at, bool float_zp, int32_t qmin, int32_t qmax, const Seed& seed,
                       std::optional<int64_t> enabled = std::nullopt, bool bad_channels = false) {
  // Bad channels take an int zero point below the range (the deterministic tests take above).
  const std::optional<int32_t> bad_int_zp = bad_channels ? std::optional<int32_t>(qmin - 1) : std::nullopt;
  check_per_channel_against_cpu<T>(
      {l, at, fq::Rounding::kStochastic, seed.data(), float_zp, qmin, qmax, enabled, bad_int_zp, true});
}

const ChannelLayout kChannelLayouts[] = {
    {1, 1, 1},   {1, 1, 1001},                       // one element; one channel
    {1, 7, 1},   {257, 3, 1},  {9, 70, 1},           // channel innermost (channels_last)
    {1, 5, 13},  {1, 16, 9},                         // channel outermost
    {3, 5, 7},   {2, 17, 41},  {4, 3, 2}, {2, 96, 9}  // middle axis
};

TEST(StochasticCudaPerChannel, MatchesCpuReference) {
  SKIP_WITHOUT_GPU();
  for (const ChannelLayout& l : kChannelLayouts)
    for (const Placement at : kPlacements)
      for (const bool float_zp : {false, true}) {
        const Seed seed = random_seed(static_cast<uint64_t>(l.channels * 1000 + l.inner + at.in + 8 * at.out));
        check_per_channel<float>(l, at, float_zp, -128, 127, seed);
        check_per_channel<fq::Half>(l, at, float_zp, 0, 15, seed);
        check_per_channel<fq::BFloat16>(l, at, float_zp, -8, 7, seed);
        if (::testing::Test::HasFatalFailure()) return;
      }
}

TEST(StochasticCudaPerChannel, ManyChannelsAndLargeTensors) {
  SKIP_WITHOUT_GPU();
  check_per_channel<float>({2, 70001, 1}, {0, 0}, false, -128, 127, random_seed(21));
  check_per_channel<fq::BFloat16>({1, 70001, 3}, {0, 1}, true, -128, 127, random_seed(22));
  check_per_channel<fq::Half>({3, 5, 13335}, {1, 0}, false, -128, 127, random_seed(23));
}

TEST(StochasticCudaPerChannel, EnabledSwitchAndOutOfContractChannels) {
  SKIP_WITHOUT_GPU();
  for (const ChannelLayout& l : {ChannelLayout{1, 7, 9}, ChannelLayout{5, 6, 1}, ChannelLayout{2, 6, 5}})
    for (const Placement at : {Placement{0, 0}, Placement{1, 0}, Placement{0, 1}})
      for (const bool float_zp : {false, true}) {
        for (const int64_t enabled : {0, 1}) {
          check_per_channel<float>(l, at, float_zp, -128, 127, random_seed(31), enabled, true);
          check_per_channel<fq::Half>(l, at, float_zp, -128, 127, random_seed(32), enabled, false);
        }
        check_per_channel<fq::BFloat16>(l, at, float_zp, 0, 255, random_seed(33), std::nullopt, true);
        if (::testing::Test::HasFatalFailure()) return;
      }
}

// ----------------------------------------------------------------------------------------
// Arguments: checked before anything touches the device, so these run without a GPU as well.

TEST(StochasticCudaArgs, MissingSeedIsAnInvalidValue) {
  float dummy = 0.0f;
  const int32_t zp = 0;
  EXPECT_EQ(fq::cuda::launch_fake_quant_per_tensor({fq::DType::kFloat32, &dummy, &dummy, nullptr, 1},
                                                   {&dummy, &zp, -128, 127, fq::Rounding::kStochastic, nullptr},
                                                   nullptr),
            cudaErrorInvalidValue);
  fq::PerChannelQParams qp;
  qp.scale = &dummy;
  qp.zero_point = &zp;
  qp.rounding = fq::Rounding::kStochastic;
  EXPECT_EQ(fq::cuda::launch_fake_quant_per_channel({fq::DType::kFloat32, &dummy, &dummy, nullptr, 1}, qp, nullptr),
            cudaErrorInvalidValue);
  // Empty: nothing to round, no seed needed.
  EXPECT_EQ(fq::cuda::launch_fake_quant_per_tensor({fq::DType::kFloat32, nullptr, nullptr, nullptr, 0},
                                                   {&dummy, &zp, -128, 127, fq::Rounding::kStochastic, nullptr},
                                                   nullptr),
            cudaSuccess);
}

}  // namespace
