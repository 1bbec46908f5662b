// CUDA reductions and fused observers against the CPU reference, bit for bit. Skips without a GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "fakequant/cuda/observers.h"
#include "fakequant/observers.h"

#include "cuda_test_util.cuh"

namespace fq = fakequant;
using namespace fakequant_test;

namespace {

template <typename T>
T* to_device(const std::vector<T>& v) {
  T* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, std::max<size_t>(v.size(), 1) * sizeof(T)), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  return p;
}

template <typename T>
std::vector<T> to_host(const T* p, size_t n) {
  std::vector<T> v(n);
  EXPECT_EQ(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return v;
}

std::vector<float> random_floats(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.25f, 2.0f);
  std::vector<float> v(n);
  for (auto& e : v) e = dist(rng);
  return v;
}

struct Layout {
  int64_t outer, channels, inner;
};

class CudaReduce : public ::testing::TestWithParam<Layout> {};

TEST_P(CudaReduce, MatchesCpuReference) {
  SKIP_WITHOUT_GPU();
  const Layout l = GetParam();
  const int64_t n = l.outer * l.channels * l.inner;
  const std::vector<float> x = random_floats(n, static_cast<uint32_t>(n + l.channels));
  const fq::ReduceArgs host{fq::DType::kFloat32, x.data(), n, l.channels, l.inner};
  std::vector<float> want_a(l.channels), want_b(l.channels);
  fq::reduce_cpu(host, fq::ReduceKind::kMinMax, want_a.data(), want_b.data());
  float* dx = to_device(x);
  fq::ReduceArgs dev = host;
  dev.input = dx;
  float *da = nullptr, *db = nullptr;
  void* ws = nullptr;
  ASSERT_EQ(cudaMalloc(&da, l.channels * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&db, l.channels * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&ws, fq::cuda::reduce_workspace_bytes(dev)), cudaSuccess);
  ASSERT_EQ(fq::cuda::launch_reduce(dev, fq::ReduceKind::kMinMax, da, db, ws, nullptr), cudaSuccess);
  EXPECT_EQ(to_host(da, l.channels), want_a);
  EXPECT_EQ(to_host(db, l.channels), want_b);
  cudaFree(dx);
  cudaFree(da);
  cudaFree(db);
  cudaFree(ws);
}

INSTANTIATE_TEST_SUITE_P(Layouts, CudaReduce,
                         ::testing::Values(Layout{1, 1, 5'000'001}, Layout{1, 64, 4096}, Layout{1000, 64, 1},
                                           Layout{8, 33, 17}, Layout{1, 3, 7}, Layout{2, 70000, 1}));

TEST(CudaMovingAverageMinMax, MatchesCpuReferencePerChannel) {
  SKIP_WITHOUT_GPU();
  const int64_t outer = 16, channels = 24, inner = 49, n = outer * channels * inner;
  std::vector<float> running_min(channels, std::numeric_limits<float>::infinity());
  std::vector<float> running_max(channels, -std::numeric_limits<float>::infinity());
  std::vector<float> scale(channels, 1.0f);
  std::vector<int32_t> zp(channels, 0);
  const std::vector<int64_t> on{1};
  float *d_min = to_device(running_min), *d_max = to_device(running_max), *d_scale = to_device(scale);
  int32_t* d_zp = to_device(zp);
  int64_t* d_on = to_device(on);
  for (int step = 0; step < 3; ++step) {
    const std::vector<float> x = random_floats(n, 100 + step);
    // CPU: reduce, update, quantize.
    std::vector<float> cur_min(channels), cur_max(channels), y(n);
    std::vector<uint8_t> mask(fq::mask_bytes(n));
    fq::reduce_cpu({fq::DType::kFloat32, x.data(), n, channels, inner}, fq::ReduceKind::kMinMax, cur_min.data(),
                   cur_max.data());
    fq::MovingAverageMinMaxState s;
    s.observer_on = s.fake_quant_on = on.data();
    s.running_min = running_min.data();
    s.running_max = running_max.data();
    s.scale = scale.data();
    s.zero_point = zp.data();
    s.channels = channels;
    s.averaging_const = 0.1f;
    s.symmetric = step == 1;
    fq::moving_average_min_max_update_cpu(s, cur_min.data(), cur_max.data(), true);
    fq::PerChannelQParams qp;
    qp.scale = scale.data();
    qp.zero_point = zp.data();
    qp.channels = channels;
    qp.channel_stride = inner;
    fq::fake_quant_per_channel_cpu({fq::DType::kFloat32, x.data(), y.data(), mask.data(), n}, qp);
    // GPU.
    float* dx = to_device(x);
    float* dy = nullptr;
    uint8_t* dmask = nullptr;
    void* ws = nullptr;
    ASSERT_EQ(cudaMalloc(&dy, n * sizeof(float)), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&dmask, mask.size()), cudaSuccess);
    fq::MovingAverageMinMaxState ds = s;
    ds.observer_on = ds.fake_quant_on = d_on;
    ds.running_min = d_min;
    ds.running_max = d_max;
    ds.scale = d_scale;
    ds.zero_point = d_zp;
    const fq::ReduceArgs r{fq::DType::kFloat32, dx, n, channels, inner};
    ASSERT_EQ(cudaMalloc(&ws, fq::cuda::observer_workspace_bytes(r)), cudaSuccess);
    ASSERT_EQ(fq::cuda::launch_fused_moving_average_min_max({fq::DType::kFloat32, dx, dy, dmask, n}, ds, inner,
                                                            fq::Rounding::kHalfEven, ws, nullptr),
              cudaSuccess);
    EXPECT_EQ(to_host(d_min, channels), running_min);
    EXPECT_EQ(to_host(d_max, channels), running_max);
    EXPECT_EQ(to_host(d_scale, channels), scale);
    EXPECT_EQ(to_host(d_zp, channels), zp);
    EXPECT_EQ(to_host(dy, n), y);
    EXPECT_EQ(to_host(dmask, mask.size()), mask);
    cudaFree(dx);
    cudaFree(dy);
    cudaFree(dmask);
    cudaFree(ws);
  }
  cudaFree(d_min);
  cudaFree(d_max);
  cudaFree(d_scale);
  cudaFree(d_zp);
  cudaFree(d_on);
}

TEST(CudaRangeAbsMax, EvictionRescanMatchesCpuReference) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 3000, window_size = 3;
  float scale = 0.0f;
  std::vector<float> window(window_size, 0.0f);
  int64_t iter = 0;
  float* d_scale = to_device(std::vector<float>{0.0f});
  float* d_window = to_device(window);
  int64_t* d_iter = to_device(std::vector<int64_t>{0});
  const fq::RangeAbsMaxState host{&scale, window.data(), window_size, &iter};
  for (int step = 0; step < 7; ++step) {
    std::vector<float> x = random_floats(n, 7 + step);
    for (auto& v : x) v *= static_cast<float>(8 - step);  // shrinking: the maximum leaves the window
    float cur = 0.0f;
    fq::reduce_cpu({fq::DType::kFloat32, x.data(), n}, fq::ReduceKind::kAbsMax, &cur, nullptr);
    fq::range_abs_max_update_cpu(host, cur);
    float* dx = to_device(x);
    float* dy = nullptr;
    uint8_t* dmask = nullptr;
    void* ws = nullptr;
    ASSERT_EQ(cudaMalloc(&dy, n * sizeof(float)), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&dmask, fq::mask_bytes(n)), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&ws, fq::cuda::observer_workspace_bytes({fq::DType::kFloat32, dx, n})), cudaSuccess);
    const fq::RangeAbsMaxState dev{d_scale, d_window, window_size, d_iter};
    ASSERT_EQ(fq::cuda::launch_fake_quant_range_abs_max({fq::DType::kFloat32, dx, dy, dmask, n}, dev, 8,
                                                        fq::Rounding::kHalfAway, true, ws, nullptr),
              cudaSuccess);
    EXPECT_EQ(to_host(d_scale, 1)[0], scale) << "step " << step;
    EXPECT_EQ(to_host(d_window, window_size), window);
    EXPECT_EQ(to_host(d_iter, 1)[0], iter);
    cudaFree(dx);
    cudaFree(dy);
    cudaFree(dmask);
    cudaFree(ws);
  }
  cudaFree(d_scale);
  cudaFree(d_window);
  cudaFree(d_iter);
}

}  // namespace
