// The CUDA weight abs-max quant-dequant against the CPU reference, bit for bit, on both the
// one-pass and the two-pass paths. Skips without a GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <tuple>
#include <type_traits>
#include <vector>

#include "fakequant/cuda/weight_quant.h"
#include "fakequant/weight_quant.h"

#include "cuda_test_util.cuh"

namespace fq = fakequant;
using namespace fakequant_test;

namespace {

struct Layout {
  int64_t outer, channels, inner;
};

// GPU and CPU on the same weight ([outer, C, inner] in memory); `offset` elements shift the
// device pointers off 16-byte alignment. `poison` puts a NaN into channel 1 and an inf into
// channel 2 (both paths must agree on non-finite channels too).
template <typename T>
void compare_with_cpu(Layout l, int64_t offset, int32_t qmin, int32_t qmax, fq::Rounding mode, bool poison,
                      bool* one_pass_taken) {
  const int64_t n = l.outer * l.channels * l.inner;
  std::mt19937 rng(static_cast<uint32_t>(n * 13 + l.channels + offset));
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::uniform_real_distribution<float> spread(0.05f, 4.0f);
  std::vector<float> per_channel(l.channels);
  for (auto& s : per_channel) s = spread(rng);
  std::vector<T> x(n);
  for (int64_t i = 0; i < n; ++i) x[i] = fq::from_float<T>(dist(rng) * per_channel[(i / l.inner) % l.channels]);
  if (poison && l.channels > 2 && l.inner > 0) {
    x[1 * l.inner] = fq::from_float<T>(NAN);
    x[2 * l.inner] = fq::from_float<T>(-INFINITY);
  }
  fq::WeightAbsMaxArgs a;
  a.dtype = dtype_of<T>();
  a.numel = n;
  a.channels = l.channels;
  a.channel_stride = l.inner;
  a.quant_min = qmin;
  a.quant_max = qmax;
  a.rounding = mode;

  std::vector<T> y_cpu(n);
  std::vector<uint8_t> m_cpu(fq::mask_bytes(n));
  std::vector<float> s_cpu(l.channels);
  fq::WeightAbsMaxArgs ca = a;
  ca.weight = x.data(), ca.output = y_cpu.data(), ca.mask = m_cpu.data(), ca.scale = s_cpu.data();
  fq::fake_quant_weight_abs_max_cpu(ca);

  DeviceBuffer<T> dx(n + offset), dy(n + offset);
  DeviceBuffer<uint8_t> dm(fq::mask_bytes(n));
  DeviceBuffer<float> ds(l.channels);
  DeviceBuffer<int32_t> dz(l.channels);
  ASSERT_CUDA(cudaMemcpy(dx.ptr + offset, x.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  ASSERT_CUDA(cudaMemset(dy.ptr, 0x7F, (n + offset) * sizeof(T)));
  ASSERT_CUDA(cudaMemset(dm.ptr, 0xCD, fq::mask_bytes(n)));
  ASSERT_CUDA(cudaMemset(ds.ptr, 0x7F, l.channels * sizeof(float)));
  ASSERT_CUDA(cudaMemset(dz.ptr, 0, l.channels * sizeof(int32_t)));
  fq::WeightAbsMaxArgs ga = a;
  ga.weight = dx.ptr + offset, ga.output = dy.ptr + offset, ga.mask = dm.ptr, ga.scale = ds.ptr;
  *one_pass_taken = fq::cuda::weight_abs_max_one_pass(ga);
  ASSERT_CUDA(fq::cuda::launch_fake_quant_weight_abs_max(ga, dz.ptr, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  std::vector<T> y_gpu(n);
  std::vector<uint8_t> m_gpu(fq::mask_bytes(n));
  std::vector<float> s_gpu(l.channels);
  ASSERT_CUDA(cudaMemcpy(y_gpu.data(), dy.ptr + offset, n * sizeof(T), cudaMemcpyDeviceToHost));
  ASSERT_CUDA(cudaMemcpy(m_gpu.data(), dm.ptr, m_gpu.size(), cudaMemcpyDeviceToHost));
  ASSERT_CUDA(cudaMemcpy(s_gpu.data(), ds.ptr, l.channels * sizeof(float), cudaMemcpyDeviceToHost));
  const auto where = [&] {
    return ::testing::Message() << l.outer << "x" << l.channels << "x" << l.inner << " offset=" << offset
                                << " range=[" << qmin << "," << qmax << "]";
  };
  // Bitwise: NaN scales compare equal when their payloads do (both come from the same weight).
  for (int64_t c = 0; c < l.channels; ++c) {
    if (std::isnan(s_cpu[c])) {
      ASSERT_TRUE(std::isnan(s_gpu[c])) << where() << " c=" << c;
    } else {
      ASSERT_EQ(s_cpu[c], s_gpu[c]) << where() << " c=" << c;
    }
  }
  ASSERT_EQ(0, std::memcmp(y_cpu.data(), y_gpu.data(), n * sizeof(T))) << where();
  ASSERT_EQ(m_cpu, m_gpu) << where();
}

const std::vector<Layout> kLayouts = {
    // one pass: whole-byte channels, 8 / 4 / 2 channels per block, one odd channel, short last block
    {1, 64, 576}, {1, 256, 64}, {1, 32, 9}, {1, 64, 147}, {1, 7, 6}, {1, 9, 4}, {1, 1, 1001}, {1, 4096, 24},
    // two passes: too long for shared memory (long runs), channel fastest (columns), folded rows, middle axis
    {1, 6, 20000}, {1, 1, 300007}, {3, 40, 1}, {5000, 3, 1}, {64, 3, 49}, {4, 33, 9}, {2, 5, 3000}, {700, 128, 1},
};

template <typename T>
void run_all(std::initializer_list<int64_t> offsets) {
  bool saw_one_pass = false, saw_two_pass = false;
  for (const Layout& l : kLayouts)
    for (const int64_t offset : offsets)
      for (const auto& [qmin, qmax] : {std::pair{-127, 127}, {-8, 7}})
        for (const fq::Rounding mode : {fq::Rounding::kHalfEven, fq::Rounding::kHalfAway}) {
          bool one_pass = false;
          compare_with_cpu<T>(l, offset, qmin, qmax, mode, offset == 0, &one_pass);
          if (::testing::Test::HasFatalFailure()) return;
          (one_pass ? saw_one_pass : saw_two_pass) = true;
        }
  EXPECT_TRUE(saw_one_pass && saw_two_pass);
}

TEST(WeightAbsMaxCuda, Float32MatchesCpuReference) {
  SKIP_WITHOUT_GPU();
  run_all<float>({0, 1, 3});
}

TEST(WeightAbsMaxCuda, HalfAndBFloat16MatchCpuReference) {
  SKIP_WITHOUT_GPU();
  run_all<fq::Half>({0, 1});
  run_all<fq::BFloat16>({0, 5});
}

TEST(WeightAbsMaxCuda, PathSelection) {
  // Host-side: no GPU needed.
  fq::WeightAbsMaxArgs a;
  a.numel = 64 * 576, a.channels = 64, a.channel_stride = 576;
  EXPECT_TRUE(fq::cuda::weight_abs_max_one_pass(a));
  a.numel = 32 * 9, a.channels = 32, a.channel_stride = 9;  // 8 channels of 9 per block
  EXPECT_TRUE(fq::cuda::weight_abs_max_one_pass(a));
  a.numel = 64 * 12288, a.channels = 64, a.channel_stride = 12288;  // 48 KB of fp32: too long
  EXPECT_FALSE(fq::cuda::weight_abs_max_one_pass(a));
  a.dtype = fq::DType::kBFloat16;  // 24 KB of bf16
  EXPECT_TRUE(fq::cuda::weight_abs_max_one_pass(a));
  a.numel = 64 * 9 * 4, a.channels = 9, a.channel_stride = 4;  // channel axis not outermost
  EXPECT_FALSE(fq::cuda::weight_abs_max_one_pass(a));
  a.numel = 0, a.channels = 5, a.channel_stride = 1;
  EXPECT_FALSE(fq::cuda::weight_abs_max_one_pass(a));
}

TEST(WeightAbsMaxCuda, EmptyWeightWritesEpsScales) {
  SKIP_WITHOUT_GPU();
  DeviceBuffer<float> ds(5);
  DeviceBuffer<int32_t> dz(5);
  ASSERT_CUDA(cudaMemset(dz.ptr, 0, 5 * sizeof(int32_t)));
  fq::WeightAbsMaxArgs a;
  a.numel = 0, a.channels = 5, a.channel_stride = 0, a.scale = ds.ptr;
  ASSERT_CUDA(fq::cuda::launch_fake_quant_weight_abs_max(a, dz.ptr, nullptr));
  std::vector<float> s(5);
  ASSERT_CUDA(cudaMemcpy(s.data(), ds.ptr, 5 * sizeof(float), cudaMemcpyDeviceToHost));
  for (float v : s) EXPECT_EQ(v, fq::kFloat32Eps);
}

}  // namespace
