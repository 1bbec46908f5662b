// The CUDA quant-dequant kernels (per-tensor, per-channel) and the masked backward against
// the CPU reference, bit for bit: every dtype, both deterministic roundings, empty, one-element
// and odd-tailed inputs, input and output pointers off 16-byte alignment separately, dense
// layouts with the channel at any position, the `enabled` switch, non-finite inputs and
// out-of-contract qparams. Outputs are poisoned before each launch and the memory around
// them is checked untouched. Stochastic rounding: test_stochastic_rounding_cuda.cu.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

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

// ----------------------------------------------------------------------------------------
// Per-tensor.

// 8-bit signed and unsigned, 16-bit with a large zero point, 4-bit and 2-level ranges; the
// power-of-two scales make the ties of test_values exact.
const TensorQParams kTensorQParams[] = {
    {0.0173f, 0, -128, 127}, {0.125f, 17, 0, 255}, {0.002f, -300, -32768, 32767}, {0.25f, 3, -8, 7}, {0.5f, 0, 0, 1}};

template <typename T>
void check_per_tensor(int64_t n, Placement at, fq::Rounding mode, const TensorQParams& q,
                      std::optional<int64_t> enabled = std::nullopt, bool with_mask = true) {
  check_per_tensor_against_cpu<T>(n, at, q, mode, nullptr, enabled, with_mask);
}

class FakeQuantCuda : public ::testing::TestWithParam<int64_t> {};

TEST_P(FakeQuantCuda, PerTensorMatchesCpuReference) {
  SKIP_WITHOUT_GPU();
  for (const Placement at : kPlacements)
    for (const fq::Rounding mode : {fq::Rounding::kHalfEven, fq::Rounding::kHalfAway})
      for (const TensorQParams& q : kTensorQParams) {
        check_per_tensor<float>(GetParam(), at, mode, q);
        check_per_tensor<fq::Half>(GetParam(), at, mode, q);
        check_per_tensor<fq::BFloat16>(GetParam(), at, mode, q);
        if (::testing::Test::HasFatalFailure()) return;
      }
}

// One element, a partial group, one group, a group and a bit, 31 groups and a tail, more than
// one block of 256 threads.
INSTANTIATE_TEST_SUITE_P(Sizes, FakeQuantCuda, ::testing::Values(1, 7, 8, 9, 255, 4097));

// Beyond one grid of a device with a few multiprocessors, so that the grid strides.
TEST(FakeQuantCudaLarge, PerTensorMatchesCpuReference) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 200003;
  check_per_tensor<float>(n, {0, 0}, fq::Rounding::kHalfEven, kTensorQParams[0]);
  check_per_tensor<float>(n, {1, 0}, fq::Rounding::kHalfAway, kTensorQParams[1]);
  check_per_tensor<fq::Half>(n, {0, 1}, fq::Rounding::kHalfEven, kTensorQParams[2]);
  check_per_tensor<fq::BFloat16>(n, {0, 0}, fq::Rounding::kHalfAway, kTensorQParams[3]);
}

TEST(FakeQuantCudaEdges, PerTensorWithoutMaskWritesTheOutputOnly) {
  SKIP_WITHOUT_GPU();
  for (const int64_t n : {1, 13, 4099}) {
    check_per_tensor<float>(n, {0, 0}, fq::Rounding::kHalfEven, kTensorQParams[0], std::nullopt, false);
    check_per_tensor<fq::Half>(n, {1, 0}, fq::Rounding::kHalfAway, kTensorQParams[1], 1, false);
  }
}

// `enabled` pointing to 0: the input passes through and every mask bit is set (padding bits
// 0), whatever the qparams; any other value: fake quant as without the switch.
TEST(FakeQuantCudaEdges, PerTensorEnabledSwitch) {
  SKIP_WITHOUT_GPU();
  const TensorQParams bad{-1.0f, 0, -128, 127};
  for (const int64_t n : {1, 13, 4099})
    for (const Placement at : {Placement{0, 0}, Placement{1, 0}, Placement{0, 1}})
      for (const int64_t enabled : {0, 1, 7}) {
        check_per_tensor<float>(n, at, fq::Rounding::kHalfEven, kTensorQParams[0], enabled);
        check_per_tensor<fq::Half>(n, at, fq::Rounding::kHalfAway, kTensorQParams[3], enabled);
        check_per_tensor<fq::BFloat16>(n, at, fq::Rounding::kHalfEven, bad, enabled);
        if (::testing::Test::HasFatalFailure()) return;
      }
  // The pass-through written out: output == input bit for bit, mask all ones.
  const int64_t n = 21;
  const std::vector<float> x = test_values<float>(n, 5, 3.0f, 0.25f);
  DeviceSpan<float> dx(x), dy(n, 0), ds(std::vector<float>{bad.scale});
  DeviceSpan<uint8_t> dm(fq::mask_bytes(n), 0, kMaskPoison);
  DeviceSpan<int32_t> dz(std::vector<int32_t>{0});
  DeviceSpan<int64_t> de(std::vector<int64_t>{0});
  ASSERT_CUDA(fq::cuda::launch_fake_quant_per_tensor({fq::DType::kFloat32, dx.ptr(), dy.ptr(), dm.ptr(), n},
                                                     {ds.ptr(), dz.ptr(), -128, 127, fq::Rounding::kHalfEven, nullptr,
                                                      de.ptr()},
                                                     nullptr));
  EXPECT_TRUE(same_bits(x, dy.download("output")));
  EXPECT_EQ(dm.download("mask"), (std::vector<uint8_t>{0xFF, 0xFF, 0x1F}));
}

// Out-of-contract qparams (scale not a positive normal finite float, zero point outside the
// range) poison the output with NaN and clear the mask, on every dtype and path.
TEST(FakeQuantCudaEdges, PerTensorOutOfContractQParamsPoison) {
  SKIP_WITHOUT_GPU();
  const TensorQParams bad[] = {{-1.0f, 0, -128, 127},    {0.0f, 0, -128, 127},      {-0.0f, 0, -128, 127},
                               {NAN, 0, -128, 127},      {INFINITY, 0, -128, 127},  {1e-39f, 0, -128, 127},
                               {0.1f, 128, -128, 127},   {0.1f, -129, -128, 127},   {0.1f, 16, 0, 15}};
  for (const TensorQParams& q : bad)
    for (const Placement at : {Placement{0, 0}, Placement{1, 3}}) {
      check_per_tensor<float>(1001, at, fq::Rounding::kHalfEven, q);
      check_per_tensor<fq::Half>(1001, at, fq::Rounding::kHalfAway, q);
      check_per_tensor<fq::BFloat16>(1001, at, fq::Rounding::kHalfEven, q);
      if (::testing::Test::HasFatalFailure()) return;
    }
  // What the poison is, written out: NaN everywhere (the canonical 16-bit NaN), mask 0.
  const int64_t n = 37;
  const std::vector<fq::Half> x = test_values<fq::Half>(n, 9, 3.0f, 0.25f);
  DeviceSpan<fq::Half> dx(x), dy(n, 0);
  DeviceSpan<float> ds(std::vector<float>{-0.5f});
  DeviceSpan<int32_t> dz(std::vector<int32_t>{0});
  DeviceSpan<uint8_t> dm(fq::mask_bytes(n), 0, kMaskPoison);
  ASSERT_CUDA(fq::cuda::launch_fake_quant_per_tensor({fq::DType::kFloat16, dx.ptr(), dy.ptr(), dm.ptr(), n},
                                                     {ds.ptr(), dz.ptr(), -128, 127, fq::Rounding::kHalfEven}, nullptr));
  for (const fq::Half v : dy.download("output")) ASSERT_EQ(v.bits, 0x7FFFu);
  for (const uint8_t b : dm.download("mask")) ASSERT_EQ(b, 0u);
}

// docs/numerics.md, "Non-finite inputs", written out: NaN -> NaN (fp32 keeps its bits), +inf ->
// (quant_max - zp) * s, -inf -> (quant_min - zp) * s, mask 0 for all three.
TEST(FakeQuantCudaEdges, NonFiniteInputsFollowTheContract) {
  SKIP_WITHOUT_GPU();
  const std::vector<float> x = {1.0f, NAN, INFINITY, -INFINITY, from_bits<float>(0xFFC01234u), 0.5f, -0.25f, 1e30f, -1e30f};
  const int64_t n = static_cast<int64_t>(x.size());
  const float scale = 0.25f;
  const int32_t zp = 3;
  for (const Placement at : {Placement{0, 0}, Placement{1, 1}}) {
    DeviceSpan<float> dx(x, at.in), dy(n, at.out), ds(std::vector<float>{scale});
    DeviceSpan<int32_t> dz(std::vector<int32_t>{zp});
    DeviceSpan<uint8_t> dm(fq::mask_bytes(n), 0, kMaskPoison);
    ASSERT_CUDA(fq::cuda::launch_fake_quant_per_tensor({fq::DType::kFloat32, dx.ptr(), dy.ptr(), dm.ptr(), n},
                                                       {ds.ptr(), dz.ptr(), -8, 7, fq::Rounding::kHalfEven}, nullptr));
    const std::vector<float> y = dy.download("output");
    const std::vector<uint8_t> m = dm.download("mask");
    EXPECT_EQ(y[0], 1.0f);
    EXPECT_EQ(bits_of(y[1]), bits_of(x[1]));
    EXPECT_EQ(y[2], (7 - zp) * scale);
    EXPECT_EQ(y[3], (-8 - zp) * scale);
    EXPECT_EQ(bits_of(y[4]), 0xFFC01234u);
    EXPECT_EQ(y[5], 0.5f);
    EXPECT_EQ(y[6], -0.25f);
    EXPECT_EQ(y[7], (7 - zp) * scale);
    EXPECT_EQ(y[8], (-8 - zp) * scale);
    // In range: elements 0, 5, 6 (q = 7, 5, 2).
    EXPECT_EQ(m, (std::vector<uint8_t>{0x61, 0x00}));
  }
}

// ----------------------------------------------------------------------------------------
// Per-channel.

template <typename T>
void check_per_channel(ChannelLayout l, Placement at, fq::Rounding mode, bool float_zp, int32_t qmin, int32_t qmax,
                       std::optional<int64_t> enabled = std::nullopt, bool bad_channels = false,
                       bool with_mask = true) {
  // Bad channels take an int zero point above the range (the stochastic tests take below).
  const std::optional<int32_t> bad_int_zp = bad_channels ? std::optional<int32_t>(qmax + 1) : std::nullopt;
  check_per_channel_against_cpu<T>({l, at, mode, nullptr, float_zp, qmin, qmax, enabled, bad_int_zp, with_mask});
}

const ChannelLayout kChannelLayouts[] = {
    {1, 1, 1},    {1, 1, 1001},  // one element; one channel
    {1, 7, 1},    {1, 64, 1},    // channel innermost, one row
    {257, 3, 1},  {9, 70, 1},    // channel innermost, many rows (channels_last)
    {1, 5, 13},   {1, 16, 9},    // channel outermost
    {3, 5, 7},    {2, 17, 41},   {4, 3, 2}, {2, 96, 9},  // middle axis
};

TEST(FakeQuantPerChannelCuda, MatchesCpuReference) {
  SKIP_WITHOUT_GPU();
  for (const ChannelLayout& l : kChannelLayouts)
    for (const Placement at : kPlacements)
      for (const bool float_zp : {false, true})
        for (const fq::Rounding mode : {fq::Rounding::kHalfEven, fq::Rounding::kHalfAway}) {
          check_per_channel<float>(l, at, mode, float_zp, -128, 127);
          check_per_channel<fq::Half>(l, at, mode, float_zp, 0, 15);
          check_per_channel<fq::BFloat16>(l, at, mode, float_zp, -8, 7);
          if (::testing::Test::HasFatalFailure()) return;
        }
}

// More channels than a grid dimension other than x may hold, innermost and outermost, and a
// tensor beyond one grid of a device with a few multiprocessors.
TEST(FakeQuantPerChannelCuda, ManyChannelsAndLargeTensors) {
  SKIP_WITHOUT_GPU();
  check_per_channel<float>({2, 70001, 1}, {0, 0}, fq::Rounding::kHalfEven, false, -128, 127);
  check_per_channel<fq::Half>({1, 70001, 3}, {1, 0}, fq::Rounding::kHalfAway, true, -128, 127);
  check_per_channel<fq::BFloat16>({3, 5, 13335}, {0, 1}, fq::Rounding::kHalfEven, false, -128, 127);
  check_per_channel<float>({3, 5, 13335}, {0, 0}, fq::Rounding::kHalfAway, true, 0, 255);
}

TEST(FakeQuantPerChannelCuda, WithoutMaskWritesTheOutputOnly) {
  SKIP_WITHOUT_GPU();
  check_per_channel<float>({3, 5, 7}, {0, 0}, fq::Rounding::kHalfEven, false, -128, 127, std::nullopt, false, false);
  check_per_channel<fq::BFloat16>({9, 70, 1}, {1, 1}, fq::Rounding::kHalfAway, true, -8, 7, 1, false, false);
}

TEST(FakeQuantPerChannelCuda, EnabledSwitch) {
  SKIP_WITHOUT_GPU();
  for (const ChannelLayout& l : {ChannelLayout{1, 1, 1}, ChannelLayout{3, 5, 7}, ChannelLayout{257, 3, 1}})
    for (const Placement at : {Placement{0, 0}, Placement{1, 0}, Placement{0, 1}})
      for (const int64_t enabled : {0, 1, -3})
        for (const bool bad : {false, true}) {
          check_per_channel<float>(l, at, fq::Rounding::kHalfEven, false, -128, 127, enabled, bad);
          check_per_channel<fq::Half>(l, at, fq::Rounding::kHalfAway, true, -128, 127, enabled, bad);
          check_per_channel<fq::BFloat16>(l, at, fq::Rounding::kHalfEven, false, -8, 7, enabled, bad);
          if (::testing::Test::HasFatalFailure()) return;
        }
}

// Out-of-contract qparams poison their own channel only (check_per_channel's bad channels).
TEST(FakeQuantPerChannelCuda, OutOfContractChannelsPoisonOnlyThemselves) {
  SKIP_WITHOUT_GPU();
  for (const ChannelLayout& l : {ChannelLayout{1, 7, 9}, ChannelLayout{5, 6, 1}, ChannelLayout{2, 6, 5}})
    for (const bool float_zp : {false, true})
      for (const Placement at : {Placement{0, 0}, Placement{1, 0}}) {
        check_per_channel<float>(l, at, fq::Rounding::kHalfEven, float_zp, -128, 127, std::nullopt, true);
        check_per_channel<fq::Half>(l, at, fq::Rounding::kHalfAway, float_zp, -128, 127, std::nullopt, true);
        check_per_channel<fq::BFloat16>(l, at, fq::Rounding::kHalfEven, float_zp, 0, 255, std::nullopt, true);
        if (::testing::Test::HasFatalFailure()) return;
      }
  // Written out for channel 0 (negative scale) of a [1, 7, 9] float tensor: NaN and mask 0
  // for its 9 elements, channel 5 (valid) in contract.
  const int64_t n = 63;
  const std::vector<float> x = test_values<float>(n, 3, 0.5f, 0.125f);
  std::vector<float> scales(7, 0.125f);
  scales[0] = -0.125f;
  const std::vector<int32_t> zps(7, 0);
  DeviceSpan<float> dx(x), dy(n, 0), ds(scales);
  DeviceSpan<int32_t> dz(zps);
  DeviceSpan<uint8_t> dm(fq::mask_bytes(n), 0, kMaskPoison);
  fq::PerChannelQParams qp;
  qp.scale = ds.ptr(), qp.zero_point = dz.ptr(), qp.channels = 7, qp.channel_stride = 9;
  ASSERT_CUDA(fq::cuda::launch_fake_quant_per_channel({fq::DType::kFloat32, dx.ptr(), dy.ptr(), dm.ptr(), n}, qp,
                                                      nullptr));
  const std::vector<float> y = dy.download("output");
  const std::vector<uint8_t> m = dm.download("mask");
  for (int i = 0; i < 9; ++i) {
    EXPECT_EQ(bits_of(y[i]), 0x7FC00000u) << i;
    EXPECT_EQ((m[i / 8] >> (i % 8)) & 1, 0) << i;
  }
  for (int i = 45; i < 54; ++i) {
    if (std::isnan(x[i])) continue;
    const float q = std::nearbyint(x[i] * 8.0f);
    EXPECT_EQ(y[i], std::min(std::max(q, -128.0f), 127.0f) * 0.125f) << i;
  }
}

// ----------------------------------------------------------------------------------------
// Masked backward.

template <typename T>
void check_masked_grad(int64_t n, Placement at) {
  const std::vector<T> g = test_values<T>(n, static_cast<uint32_t>(n + at.in), 2.0f, 0.5f);
  std::mt19937 rng(static_cast<uint32_t>(n * 5 + at.out));
  std::vector<uint8_t> mask(fq::mask_bytes(n));
  for (auto& b : mask) b = static_cast<uint8_t>(rng());  // padding bits set too: ignored
  std::vector<T> ref(n);
  fq::masked_grad_cpu({dtype_of<T>(), g.data(), mask.data(), ref.data(), n});
  DeviceSpan<T> dg(g, at.in), dout(n, at.out);
  DeviceSpan<uint8_t> dm(mask);
  ASSERT_CUDA(fq::cuda::launch_masked_grad({dtype_of<T>(), dg.ptr(), dm.ptr(), dout.ptr(), n}, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  ASSERT_TRUE(same_bits(ref, dout.download("grad_input")))
      << fq::dtype_name(dtype_of<T>()) << " n=" << n << " offsets=" << at.in << "/" << at.out;
}

TEST(MaskedGradCuda, MatchesCpuReference) {
  SKIP_WITHOUT_GPU();
  for (const int64_t n : {1, 7, 8, 13, 4099})
    for (const Placement at : kPlacements) {
      check_masked_grad<float>(n, at);
      check_masked_grad<fq::Half>(n, at);
      check_masked_grad<fq::BFloat16>(n, at);
      if (::testing::Test::HasFatalFailure()) return;
    }
  check_masked_grad<float>(200003, {0, 0});
  check_masked_grad<fq::BFloat16>(200003, {0, 1});
}

// ----------------------------------------------------------------------------------------
// Arguments (checked before any device work: no GPU needed).

TEST(FakeQuantCudaArgs, EmptyLaunchesAreNoOps) {
  EXPECT_EQ(fq::cuda::launch_fake_quant_per_tensor({fq::DType::kFloat32, nullptr, nullptr, nullptr, 0},
                                                   {nullptr, nullptr, -128, 127, fq::Rounding::kHalfEven}, nullptr),
            cudaSuccess);
  fq::PerChannelQParams qp;
  EXPECT_EQ(fq::cuda::launch_fake_quant_per_channel({fq::DType::kBFloat16, nullptr, nullptr, nullptr, 0}, qp, nullptr),
            cudaSuccess);
  EXPECT_EQ(fq::cuda::launch_masked_grad({fq::DType::kFloat16, nullptr, nullptr, nullptr, 0}, nullptr), cudaSuccess);
}

// Unknown enum values and negative sizes are errors, not silent no-ops.
TEST(FakeQuantCudaArgs, InvalidArgumentsAreRejected) {
  float dummy = 0.0f;
  const int32_t zp = 0;
  const auto bad_dtype = static_cast<fq::DType>(7);
  const auto bad_rounding = static_cast<fq::Rounding>(9);
  const fq::PerTensorQParams tensor_qp{&dummy, &zp, -128, 127, fq::Rounding::kHalfEven};
  fq::PerTensorQParams tensor_bad_rounding = tensor_qp;
  tensor_bad_rounding.rounding = bad_rounding;
  EXPECT_EQ(fq::cuda::launch_fake_quant_per_tensor({bad_dtype, &dummy, &dummy, nullptr, 1}, tensor_qp, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(fq::cuda::launch_fake_quant_per_tensor({fq::DType::kFloat32, &dummy, &dummy, nullptr, 1},
                                                   tensor_bad_rounding, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(fq::cuda::launch_fake_quant_per_tensor({fq::DType::kFloat32, &dummy, &dummy, nullptr, -8}, tensor_qp,
                                                   nullptr),
            cudaErrorInvalidValue);

  fq::PerChannelQParams qp;
  qp.scale = &dummy;
  qp.zero_point = &zp;
  const fq::FakeQuantArgs one{fq::DType::kFloat32, &dummy, &dummy, nullptr, 1};
  EXPECT_EQ(fq::cuda::launch_fake_quant_per_channel({bad_dtype, &dummy, &dummy, nullptr, 1}, qp, nullptr),
            cudaErrorInvalidValue);
  fq::PerChannelQParams p = qp;
  p.rounding = bad_rounding;
  EXPECT_EQ(fq::cuda::launch_fake_quant_per_channel(one, p, nullptr), cudaErrorInvalidValue);
  p = qp;
  p.zero_point_type = static_cast<fq::ZeroPointType>(5);
  EXPECT_EQ(fq::cuda::launch_fake_quant_per_channel(one, p, nullptr), cudaErrorInvalidValue);
  p = qp;
  p.channels = 0;
  EXPECT_EQ(fq::cuda::launch_fake_quant_per_channel(one, p, nullptr), cudaErrorInvalidValue);
  p = qp;
  p.channel_stride = 0;
  EXPECT_EQ(fq::cuda::launch_fake_quant_per_channel(one, p, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(fq::cuda::launch_fake_quant_per_channel({fq::DType::kFloat32, &dummy, &dummy, nullptr, -1}, qp, nullptr),
            cudaErrorInvalidValue);

  const uint8_t mask = 0;
  EXPECT_EQ(fq::cuda::launch_masked_grad({bad_dtype, &dummy, &mask, &dummy, 1}, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(fq::cuda::launch_masked_grad({fq::DType::kFloat32, &dummy, &mask, &dummy, -1}, nullptr),
            cudaErrorInvalidValue);
}

}  // namespace
