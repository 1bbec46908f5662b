// The CUDA learnable-qparam (LSQ / LSQ+) kernels against the CPU reference: forward and
// grad_input bit for bit, grad_scale / grad_zero_point within the difference of two double
// summation orders, and bit-identical from run to run. Skips without a GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <tuple>
#include <vector>

#include "fakequant/cuda/learnable.h"
#include "fakequant/learnable.h"

#include "cuda_test_util.cuh"

namespace fq = fakequant;
using namespace fakequant_test;

namespace {

template <typename T>
std::vector<T> random_values(int64_t n, float spread, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, spread);
  std::vector<T> v(n);
  for (auto& e : v) e = fq::from_float<T>(dist(rng));
  if (n > 4) v[1] = fq::from_float<T>(1e4f), v[2] = fq::from_float<T>(-1e4f);
  return v;
}

struct Shape {
  int64_t outer, channels, inner;
};

// GPU vs CPU on one (outer, channels, inner) layout; `offset` elements shift the device
// pointers off 16-byte alignment.
template <typename T>
void compare_with_cpu(const Shape& s, int64_t offset, bool grad_input, bool reduce) {
  const int64_t n = s.outer * s.channels * s.inner;
  const uint32_t seed = static_cast<uint32_t>(n * 3 + s.channels + offset);
  const std::vector<T> x = random_values<T>(n, 3.0f, seed), dy = random_values<T>(n, 1.0f, seed + 1);
  std::mt19937 rng(seed + 2);
  std::uniform_real_distribution<float> sd(0.01f, 0.06f), zd(-130.0f, 130.0f);
  std::vector<float> scales(s.channels), zps(s.channels);
  for (int64_t c = 0; c < s.channels; ++c) scales[c] = sd(rng), zps[c] = zd(rng);
  if (s.channels > 1) zps[1] = 2.5f;  // a tie
  fq::LearnableQParams qp;
  qp.scale = scales.data();
  qp.zero_point = zps.data();
  qp.kind = s.channels > 1 ? fq::LearnableKind::kPerChannel : fq::LearnableKind::kPerTensor;
  qp.channels = s.channels;
  qp.channel_stride = s.inner;
  qp.grad_factor = 0.3f;

  std::vector<T> y_cpu(n), dx_cpu(n);
  std::vector<float> gs_cpu(s.channels), gz_cpu(s.channels);
  fq::fake_quant_learnable_cpu({dtype_of<T>(), x.data(), y_cpu.data(), n}, qp);
  fq::fake_quant_learnable_backward_cpu(
      {dtype_of<T>(), dy.data(), x.data(), dx_cpu.data(), gs_cpu.data(), gz_cpu.data(), n}, qp);

  DeviceBuffer<T> dx_in(n + offset), ddy(n + offset), dy_out(n + offset), ddx(n + offset);
  DeviceBuffer<float> ds(s.channels), dz(s.channels), dgs(s.channels), dgz(s.channels);
  ASSERT_CUDA(cudaMemcpy(dx_in.ptr + offset, x.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  ASSERT_CUDA(cudaMemcpy(ddy.ptr + offset, dy.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  ASSERT_CUDA(cudaMemcpy(ds.ptr, scales.data(), s.channels * sizeof(float), cudaMemcpyHostToDevice));
  ASSERT_CUDA(cudaMemcpy(dz.ptr, zps.data(), s.channels * sizeof(float), cudaMemcpyHostToDevice));
  ASSERT_CUDA(cudaMemset(dy_out.ptr, 0x7F, (n + offset) * sizeof(T)));  // poison
  ASSERT_CUDA(cudaMemset(ddx.ptr, 0x7F, (n + offset) * sizeof(T)));
  fq::LearnableQParams dqp = qp;
  dqp.scale = ds.ptr;
  dqp.zero_point = dz.ptr;
  ASSERT_CUDA(fq::cuda::launch_fake_quant_learnable({dtype_of<T>(), dx_in.ptr + offset, dy_out.ptr + offset, n}, dqp,
                                                    nullptr));
  const fq::LearnableBackwardArgs a{dtype_of<T>(),          ddy.ptr + offset,
                                    dx_in.ptr + offset,     grad_input ? ddx.ptr + offset : nullptr,
                                    reduce ? dgs.ptr : nullptr, reduce ? dgz.ptr : nullptr,
                                    n};
  const size_t bytes = fq::cuda::learnable_backward_workspace_bytes(a, dqp);
  if (!reduce) ASSERT_EQ(bytes, 0u);
  ASSERT_LE(bytes, sizeof(double) * (2 * std::max<int64_t>(s.channels, n / 256) + 2 * 64 * 1024));
  DeviceBuffer<unsigned char> workspace(bytes);
  ASSERT_CUDA(fq::cuda::launch_fake_quant_learnable_backward(a, dqp, workspace.ptr, bytes, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());

  std::vector<T> y_gpu(n), dx_gpu(n);
  std::vector<float> gs_gpu(s.channels), gz_gpu(s.channels);
  ASSERT_CUDA(cudaMemcpy(y_gpu.data(), dy_out.ptr + offset, n * sizeof(T), cudaMemcpyDeviceToHost));
  ASSERT_EQ(0, std::memcmp(y_cpu.data(), y_gpu.data(), n * sizeof(T)))
      << s.outer << "x" << s.channels << "x" << s.inner << " offset " << offset;
  if (grad_input) {
    ASSERT_CUDA(cudaMemcpy(dx_gpu.data(), ddx.ptr + offset, n * sizeof(T), cudaMemcpyDeviceToHost));
    ASSERT_EQ(0, std::memcmp(dx_cpu.data(), dx_gpu.data(), n * sizeof(T)))
        << s.outer << "x" << s.channels << "x" << s.inner << " offset " << offset;
  }
  if (!reduce) return;
  ASSERT_CUDA(cudaMemcpy(gs_gpu.data(), dgs.ptr, s.channels * sizeof(float), cudaMemcpyDeviceToHost));
  ASSERT_CUDA(cudaMemcpy(gz_gpu.data(), dgz.ptr, s.channels * sizeof(float), cudaMemcpyDeviceToHost));
  // Both sum the same float terms in double, in different orders; each result is the double
  // sum rounded once to float, so they agree to an ulp or so (plus the double error).
  std::vector<double> abs_s(s.channels), abs_z(s.channels);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t c = (i / s.inner) % s.channels;
    const fq::LearnableGrad g =
        fq::learnable_grad(fq::to_float(x[i]), fq::to_float(dy[i]), scales[c], 1.0f / scales[c],
                           qp.kind == fq::LearnableKind::kPerTensor
                               ? fq::learnable_zero_point_backward_per_tensor(zps[c], -128, 127)
                               : fq::learnable_zero_point_backward_per_channel(zps[c], -128, 127),
                           -128.0f, 127.0f, qp.grad_factor);
    abs_s[c] += std::fabs(g.grad_scale), abs_z[c] += std::fabs(g.grad_zero_point);
  }
  for (int64_t c = 0; c < s.channels; ++c) {
    EXPECT_LE(std::fabs(gs_gpu[c] - gs_cpu[c]), 1.2e-7 * std::fabs(gs_cpu[c]) + 1e-10 * abs_s[c] + 1e-30) << c;
    EXPECT_LE(std::fabs(gz_gpu[c] - gz_cpu[c]), 1.2e-7 * std::fabs(gz_cpu[c]) + 1e-10 * abs_z[c] + 1e-30) << c;
  }
  // Run to run: the same bits.
  DeviceBuffer<float> dgs2(s.channels), dgz2(s.channels);
  fq::LearnableBackwardArgs again = a;
  again.grad_scale = dgs2.ptr;
  again.grad_zero_point = dgz2.ptr;
  ASSERT_CUDA(fq::cuda::launch_fake_quant_learnable_backward(again, dqp, workspace.ptr, bytes, nullptr));
  std::vector<float> gs2(s.channels), gz2(s.channels);
  ASSERT_CUDA(cudaMemcpy(gs2.data(), dgs2.ptr, s.channels * sizeof(float), cudaMemcpyDeviceToHost));
  ASSERT_CUDA(cudaMemcpy(gz2.data(), dgz2.ptr, s.channels * sizeof(float), cudaMemcpyDeviceToHost));
  ASSERT_EQ(0, std::memcmp(gs2.data(), gs_gpu.data(), s.channels * sizeof(float)));
  ASSERT_EQ(0, std::memcmp(gz2.data(), gz_gpu.data(), s.channels * sizeof(float)));
}

// Per-tensor (flat split), long runs (runs split) and short runs (rows split: channel varies
// fastest, or runs shorter than 64), with more channels than a block has threads too.
const Shape kShapes[] = {{1, 1, 1},    {1, 1, 7},     {1, 1, 4097},   {1, 1, (1 << 20) + 5}, {1, 64, 4608},
                         {3, 5, 4099}, {2, 17, 64},   {4096, 96, 1},  {512, 40, 7},         {100, 300, 1},
                         {7, 3, 33},   {1, 1000, 1},  {2000, 2, 1},   {33, 257, 2}};

TEST(LearnableCuda, Float32MatchesCpuReference) {
  SKIP_WITHOUT_GPU();
  for (const Shape& s : kShapes)
    for (const int64_t offset : {0, 1}) compare_with_cpu<float>(s, offset, true, true);
}

TEST(LearnableCuda, HalfAndBFloat16MatchCpuReference) {
  SKIP_WITHOUT_GPU();
  for (const Shape& s : kShapes) {
    compare_with_cpu<fq::Half>(s, 0, true, true);
    compare_with_cpu<fq::BFloat16>(s, 1, true, true);
  }
}

TEST(LearnableCuda, OutputsLeftOutAreNotWritten) {
  SKIP_WITHOUT_GPU();
  for (const Shape& s : {Shape{1, 1, 100003}, Shape{4, 64, 513}, Shape{1000, 48, 1}}) {
    compare_with_cpu<float>(s, 0, false, true);
    compare_with_cpu<float>(s, 0, true, false);
  }
}

TEST(LearnableCuda, OutOfContractQParamsPoisonOnDevice) {
  SKIP_WITHOUT_GPU();
  const int64_t channels = 3, inner = 100, n = channels * inner;
  const std::vector<float> x = random_values<float>(n, 1.0f, 3);
  const std::vector<float> scales = {0.1f, -1.0f, 0.1f};
  const std::vector<float> zps = {0.0f, 0.0f, std::nanf("")};
  DeviceBuffer<float> dx_in(n), dy(n), out(n), ddx(n), ds(channels), dz(channels), gs(channels), gz(channels);
  ASSERT_CUDA(cudaMemcpy(dx_in.ptr, x.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  ASSERT_CUDA(cudaMemcpy(dy.ptr, x.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  ASSERT_CUDA(cudaMemcpy(ds.ptr, scales.data(), channels * sizeof(float), cudaMemcpyHostToDevice));
  ASSERT_CUDA(cudaMemcpy(dz.ptr, zps.data(), channels * sizeof(float), cudaMemcpyHostToDevice));
  fq::LearnableQParams qp;
  qp.scale = ds.ptr;
  qp.zero_point = dz.ptr;
  qp.kind = fq::LearnableKind::kPerChannel;
  qp.channels = channels;
  qp.channel_stride = inner;
  ASSERT_CUDA(fq::cuda::launch_fake_quant_learnable({fq::DType::kFloat32, dx_in.ptr, out.ptr, n}, qp, nullptr));
  const fq::LearnableBackwardArgs a{fq::DType::kFloat32, dy.ptr, dx_in.ptr, ddx.ptr, gs.ptr, gz.ptr, n};
  const size_t bytes = fq::cuda::learnable_backward_workspace_bytes(a, qp);
  DeviceBuffer<unsigned char> workspace(bytes);
  ASSERT_CUDA(fq::cuda::launch_fake_quant_learnable_backward(a, qp, workspace.ptr, bytes, nullptr));
  std::vector<float> y(n), dxv(n), gsv(channels), gzv(channels);
  ASSERT_CUDA(cudaMemcpy(y.data(), out.ptr, n * sizeof(float), cudaMemcpyDeviceToHost));
  ASSERT_CUDA(cudaMemcpy(dxv.data(), ddx.ptr, n * sizeof(float), cudaMemcpyDeviceToHost));
  ASSERT_CUDA(cudaMemcpy(gsv.data(), gs.ptr, channels * sizeof(float), cudaMemcpyDeviceToHost));
  ASSERT_CUDA(cudaMemcpy(gzv.data(), gz.ptr, channels * sizeof(float), cudaMemcpyDeviceToHost));
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(std::isnan(y[i]), i / inner != 0) << i;
    ASSERT_EQ(std::isnan(dxv[i]), i / inner != 0) << i;
  }
  EXPECT_FALSE(std::isnan(gsv[0]));
  EXPECT_TRUE(std::isnan(gsv[1]) && std::isnan(gzv[1]) && std::isnan(gsv[2]) && std::isnan(gzv[2]));
}

TEST(LearnableCuda, EmptyInputZeroesTheQParamGradients) {
  SKIP_WITHOUT_GPU();
  DeviceBuffer<float> ds(1), dz(1), gs(1), gz(1);
  ASSERT_CUDA(cudaMemset(gs.ptr, 0x7F, sizeof(float)));
  ASSERT_CUDA(cudaMemset(gz.ptr, 0x7F, sizeof(float)));
  fq::LearnableQParams qp;
  qp.scale = ds.ptr;
  qp.zero_point = dz.ptr;
  const fq::LearnableBackwardArgs a{fq::DType::kFloat32, nullptr, nullptr, nullptr, gs.ptr, gz.ptr, 0};
  ASSERT_EQ(fq::cuda::learnable_backward_workspace_bytes(a, qp), 0u);
  ASSERT_CUDA(fq::cuda::launch_fake_quant_learnable_backward(a, qp, nullptr, 0, nullptr));
  ASSERT_CUDA(fq::cuda::launch_fake_quant_learnable({fq::DType::kFloat32, nullptr, nullptr, 0}, qp, nullptr));
  float v[2];
  ASSERT_CUDA(cudaMemcpy(&v[0], gs.ptr, sizeof(float), cudaMemcpyDeviceToHost));
  ASSERT_CUDA(cudaMemcpy(&v[1], gz.ptr, sizeof(float), cudaMemcpyDeviceToHost));
  EXPECT_EQ(v[0], 0.0f);
  EXPECT_EQ(v[1], 0.0f);
}

}  // namespace
