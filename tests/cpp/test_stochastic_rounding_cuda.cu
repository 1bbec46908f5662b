// Stochastic rounding on CUDA against the CPU reference, bit for bit (same seed, same
// Philox words by memory offset). Skips without a GPU, except the argument check, which
// needs no device.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <random>
#include <tuple>
#include <vector>

#include "fakequant/cuda/launch.h"
#include "fakequant/fake_quant.h"

#include "cuda_test_util.cuh"

namespace fq = fakequant;
using namespace fakequant_test;

namespace {

template <typename T>
std::vector<T> random_values(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 3.0f);
  std::vector<T> v(n);
  for (auto& e : v) e = fq::from_float<T>(dist(rng));
  if (n > 4) v[1] = fq::from_float<T>(1e4f), v[2] = fq::from_float<T>(-1e4f);
  return v;
}

std::array<int64_t, 2> random_seed(uint64_t s) {
  std::mt19937_64 rng(s);
  return {static_cast<int64_t>(rng()), static_cast<int64_t>(rng())};
}

// `offset` elements shift the device pointers off 16-byte alignment (the scalar path).
template <typename T>
void compare_per_tensor(int64_t n, int64_t offset, float scale, int32_t zp, int32_t qmin, int32_t qmax) {
  const std::vector<T> x = random_values<T>(n, static_cast<uint32_t>(n * 7 + offset));
  const auto seed = random_seed(static_cast<uint64_t>(n * 3 + offset));
  std::vector<T> y_cpu(n);
  std::vector<uint8_t> m_cpu(fq::mask_bytes(n));
  fq::fake_quant_per_tensor_cpu({dtype_of<T>(), x.data(), y_cpu.data(), m_cpu.data(), n},
                                {&scale, &zp, qmin, qmax, fq::Rounding::kStochastic, seed.data()});

  DeviceBuffer<T> dx(n + offset), dy(n + offset);
  DeviceBuffer<uint8_t> dm(fq::mask_bytes(n));
  DeviceBuffer<float> ds(1);
  DeviceBuffer<int32_t> dz(1);
  DeviceBuffer<int64_t> dseed(2);
  ASSERT_CUDA(cudaMemcpy(dx.ptr + offset, x.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  ASSERT_CUDA(cudaMemset(dy.ptr, 0x7F, (n + offset) * sizeof(T)));  // poison
  ASSERT_CUDA(cudaMemset(dm.ptr, 0xCD, fq::mask_bytes(n)));
  ASSERT_CUDA(cudaMemcpy(ds.ptr, &scale, sizeof(float), cudaMemcpyHostToDevice));
  ASSERT_CUDA(cudaMemcpy(dz.ptr, &zp, sizeof(int32_t), cudaMemcpyHostToDevice));
  ASSERT_CUDA(cudaMemcpy(dseed.ptr, seed.data(), sizeof(seed), cudaMemcpyHostToDevice));
  ASSERT_CUDA(fq::cuda::launch_fake_quant_per_tensor(
      {dtype_of<T>(), dx.ptr + offset, dy.ptr + offset, dm.ptr, n},
      {ds.ptr, dz.ptr, qmin, qmax, fq::Rounding::kStochastic, dseed.ptr}, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  std::vector<T> y_gpu(n);
  std::vector<uint8_t> m_gpu(fq::mask_bytes(n));
  ASSERT_CUDA(cudaMemcpy(y_gpu.data(), dy.ptr + offset, n * sizeof(T), cudaMemcpyDeviceToHost));
  ASSERT_CUDA(cudaMemcpy(m_gpu.data(), dm.ptr, m_gpu.size(), cudaMemcpyDeviceToHost));
  ASSERT_EQ(0, std::memcmp(y_cpu.data(), y_gpu.data(), n * sizeof(T))) << "n=" << n << " offset=" << offset;
  ASSERT_EQ(m_cpu, m_gpu) << "n=" << n << " offset=" << offset;
}

class StochasticCuda : public ::testing::TestWithParam<int64_t> {};

TEST_P(StochasticCuda, PerTensorMatchesCpuReference) {
  SKIP_WITHOUT_GPU();
  for (const int64_t offset : {0, 1, 3}) {
    compare_per_tensor<float>(GetParam(), offset, 0.0173f, 0, -128, 127);
    compare_per_tensor<float>(GetParam(), offset, 0.002f, -300, -32768, 32767);
    compare_per_tensor<fq::Half>(GetParam(), offset, 0.05f, 3, -128, 127);
    compare_per_tensor<fq::BFloat16>(GetParam(), offset, 0.05f, 3, -8, 7);
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, StochasticCuda, ::testing::Values(1, 7, 8, 9, 255, 4097, 1 << 20, (1 << 22) + 5));

TEST(StochasticCudaPerChannel, MatchesCpuReference) {
  SKIP_WITHOUT_GPU();
  for (const auto& [outer, channels, inner] : {std::tuple<int64_t, int64_t, int64_t>{3, 5, 7}, {1, 64, 1},
                                               {257, 3, 1}, {2, 17, 4097}, {1, 1, 100003}, {8, 96, 49}}) {
    for (const bool float_zp : {false, true}) {
      for (const int64_t offset : {0, 1}) {
        const int64_t n = outer * channels * inner;
        const std::vector<float> x = random_values<float>(n, static_cast<uint32_t>(n + channels));
        std::mt19937 rng(static_cast<uint32_t>(channels + offset));
        std::uniform_real_distribution<float> sd(0.005f, 0.05f), zf(-20.0f, 20.0f);
        std::vector<float> scales(channels), zps_f(channels);
        std::vector<int32_t> zps_i(channels);
        for (int64_t c = 0; c < channels; ++c) {
          scales[c] = sd(rng), zps_f[c] = zf(rng), zps_i[c] = static_cast<int32_t>(zps_f[c]);
        }
        const auto seed = random_seed(static_cast<uint64_t>(n + offset));
        fq::PerChannelQParams qp;
        qp.scale = scales.data();
        qp.zero_point = float_zp ? static_cast<const void*>(zps_f.data()) : static_cast<const void*>(zps_i.data());
        qp.zero_point_type = float_zp ? fq::ZeroPointType::kFloat32 : fq::ZeroPointType::kInt32;
        qp.channels = channels;
        qp.channel_stride = inner;
        qp.rounding = fq::Rounding::kStochastic;
        qp.seed = seed.data();
        std::vector<float> y_cpu(n);
        std::vector<uint8_t> m_cpu(fq::mask_bytes(n));
        fq::fake_quant_per_channel_cpu({fq::DType::kFloat32, x.data(), y_cpu.data(), m_cpu.data(), n}, qp);

        DeviceBuffer<float> dx(n + offset), dy(n + offset), ds(channels);
        DeviceBuffer<int32_t> dz(channels);  // 4-byte zero points of either type
        DeviceBuffer<uint8_t> dm(fq::mask_bytes(n));
        DeviceBuffer<int64_t> dseed(2);
        ASSERT_CUDA(cudaMemcpy(dx.ptr + offset, x.data(), n * sizeof(float), cudaMemcpyHostToDevice));
        ASSERT_CUDA(cudaMemcpy(ds.ptr, scales.data(), channels * sizeof(float), cudaMemcpyHostToDevice));
        ASSERT_CUDA(cudaMemcpy(dz.ptr, qp.zero_point, channels * 4, cudaMemcpyHostToDevice));
        ASSERT_CUDA(cudaMemcpy(dseed.ptr, seed.data(), sizeof(seed), cudaMemcpyHostToDevice));
        ASSERT_CUDA(cudaMemset(dm.ptr, 0xCD, fq::mask_bytes(n)));
        fq::PerChannelQParams dqp = qp;
        dqp.scale = ds.ptr;
        dqp.zero_point = dz.ptr;
        dqp.seed = dseed.ptr;
        ASSERT_CUDA(fq::cuda::launch_fake_quant_per_channel(
            {fq::DType::kFloat32, dx.ptr + offset, dy.ptr + offset, dm.ptr, n}, dqp, nullptr));
        std::vector<float> y_gpu(n);
        std::vector<uint8_t> m_gpu(fq::mask_bytes(n));
        ASSERT_CUDA(cudaMemcpy(y_gpu.data(), dy.ptr + offset, n * sizeof(float), cudaMemcpyDeviceToHost));
        ASSERT_CUDA(cudaMemcpy(m_gpu.data(), dm.ptr, m_gpu.size(), cudaMemcpyDeviceToHost));
        ASSERT_EQ(0, std::memcmp(y_cpu.data(), y_gpu.data(), n * sizeof(float)))
            << outer << "x" << channels << "x" << inner << " float_zp=" << float_zp << " offset=" << offset;
        ASSERT_EQ(m_cpu, m_gpu);
      }
    }
  }
}

// Checked before anything touches the device, so this runs without a GPU as well.
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
}

}  // namespace
