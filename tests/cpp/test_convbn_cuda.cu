// The CUDA ConvBN kernels against the CPU reference (fakequant/convbn.h): per-channel sums
// to double rounding (different summation order), elementwise passes bit for bit on the
// float32 path (the same fp32 operations; nvcc may contract the epilogue's multiply-add, so
// that one is compared to 1 ulp), for NCHW and channels_last layouts. Skips without a GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <ostream>
#include <string>
#include <vector>

#include "cuda_test_util.cuh"
#include "fakequant/convbn.h"
#include "fakequant/cuda/convbn.h"

namespace fq = fakequant;
using namespace fakequant_test;

namespace {

template <typename T>
T* upload(DeviceBuffer<T>& d, const std::vector<T>& h) {
  EXPECT_EQ(cudaMemcpy(d.ptr, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  return d.ptr;
}

template <typename T>
std::vector<T> download(const T* d, size_t n) {
  std::vector<T> h(n);
  EXPECT_EQ(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return h;
}

struct Shape {
  int64_t n, c, hw;
  bool channels_last;
};

void PrintTo(const Shape& k, std::ostream* os) {
  *os << "[" << k.n << ", " << k.c << ", " << k.hw << "]" << (k.channels_last ? " channels_last" : " nchw");
}

fq::ActivationLayout layout_of(const Shape& s) {
  fq::ActivationLayout l;
  l.channels = s.c;
  l.outer = s.channels_last ? s.n * s.hw : s.n;
  l.inner = s.channels_last ? 1 : s.hw;
  return l;
}

class ConvBnCuda : public ::testing::TestWithParam<Shape> {};

TEST_P(ConvBnCuda, MomentsAndGradSumsMatchCpu) {
  SKIP_WITHOUT_GPU();
  const fq::ActivationLayout l = layout_of(GetParam());
  const int64_t n = l.numel(), C = l.channels;
  std::mt19937 rng(static_cast<uint32_t>(n + C));
  std::normal_distribution<float> dist(3.0f, 2.0f);
  std::vector<float> x(n), dy(n);
  for (auto& v : x) v = dist(rng);
  for (auto& v : dy) v = dist(rng) - 3.0f;
  std::vector<uint8_t> mask(fq::mask_bytes(n));
  for (auto& b : mask) b = static_cast<uint8_t>(rng());

  std::vector<double> mean(C), var(C);
  fq::ChannelMomentsArgs m;
  m.input = x.data(), m.layout = l, m.mean = mean.data(), m.var = var.data();
  fq::channel_moments_cpu(m);

  DeviceBuffer<float> dx(n), ddy(n);
  DeviceBuffer<uint8_t> dmask(mask.size());
  DeviceBuffer<double> dstats(4 * C);
  DeviceBuffer<uint8_t> ws(fq::cuda::channel_sums_workspace_bytes(l));
  fq::ChannelMomentsArgs md = m;
  md.input = upload(dx, x), md.mean = dstats.ptr, md.var = dstats.ptr + C;
  ASSERT_CUDA(fq::cuda::launch_channel_moments(md, ws.ptr, nullptr));
  const std::vector<double> gpu = download(dstats.ptr, 2 * C);
  for (int64_t c = 0; c < C; ++c) {
    EXPECT_NEAR(gpu[c], mean[c], 1e-12 * (1 + std::fabs(mean[c])));
    EXPECT_NEAR(gpu[C + c], var[c], 1e-10 * var[c]);
  }

  std::vector<double> sums(2 * C);
  fq::ChannelGradSumsArgs s;
  s.grad_output = dy.data(), s.pre_bn = x.data(), s.relu_mask = mask.data(), s.mean = mean.data(), s.layout = l;
  s.sums = sums.data();
  fq::channel_grad_sums_cpu(s);
  DeviceBuffer<double> dmean(C);
  EXPECT_EQ(cudaMemcpy(dmean.ptr, mean.data(), C * sizeof(double), cudaMemcpyHostToDevice), cudaSuccess);
  fq::ChannelGradSumsArgs sd = s;
  sd.grad_output = upload(ddy, dy), sd.pre_bn = dx.ptr, sd.relu_mask = upload(dmask, mask), sd.mean = dmean.ptr;
  sd.sums = dstats.ptr + 2 * C;
  ASSERT_CUDA(fq::cuda::launch_channel_grad_sums(sd, ws.ptr, nullptr));
  const std::vector<double> gsums = download(dstats.ptr + 2 * C, 2 * C);
  for (int64_t i = 0; i < 2 * C; ++i) EXPECT_NEAR(gsums[i], sums[i], 1e-9 * (1 + std::fabs(sums[i])));
}

TEST_P(ConvBnCuda, ElementwisePassesMatchCpu) {
  SKIP_WITHOUT_GPU();
  const fq::ActivationLayout l = layout_of(GetParam());
  const int64_t n = l.numel(), C = l.channels;
  std::mt19937 rng(static_cast<uint32_t>(7 * n + C));
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(n), dy(n), coef2(2 * C), coef4(4 * C);
  for (auto& v : x) v = dist(rng);
  for (auto& v : dy) v = dist(rng);
  for (auto& v : coef2) v = dist(rng);
  for (auto& v : coef4) v = dist(rng);

  std::vector<float> y(n);
  std::vector<uint8_t> mask(fq::mask_bytes(n));
  fq::ConvBnEpilogueArgs e;
  e.input = x.data(), e.output = y.data(), e.relu_mask = mask.data(), e.coef = coef2.data(), e.layout = l;
  fq::convbn_epilogue_cpu(e);
  DeviceBuffer<float> dx(n), dy_d(n), dout(n), dc2(2 * C), dc4(4 * C);
  DeviceBuffer<uint8_t> dmask(mask.size());
  fq::ConvBnEpilogueArgs ed = e;
  ed.input = upload(dx, x), ed.output = dout.ptr, ed.relu_mask = dmask.ptr, ed.coef = upload(dc2, coef2);
  ASSERT_CUDA(fq::cuda::launch_convbn_epilogue(ed, nullptr));
  const std::vector<float> gy = download(dout.ptr, n);
  const std::vector<uint8_t> gmask = download(dmask.ptr, mask.size());
  for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(gy[i], y[i], 1.2e-7f * (1 + std::fabs(y[i]))) << i;
  for (size_t i = 0; i < mask.size(); ++i) {
    // A value within an ulp of 0 may differ in sign under contraction; none are that close here.
    EXPECT_EQ(gmask[i], mask[i]) << i;
  }

  std::vector<float> dz(n);
  fq::ConvBnBackwardArgs b;
  b.grad_output = dy.data(), b.pre_bn = x.data(), b.relu_mask = mask.data(), b.coef = coef4.data();
  b.grad_pre_bn = dz.data(), b.layout = l;
  fq::convbn_backward_cpu(b);
  fq::ConvBnBackwardArgs bd = b;
  bd.grad_output = upload(dy_d, dy), bd.pre_bn = dx.ptr, bd.relu_mask = upload(dmask, mask);
  bd.coef = upload(dc4, coef4), bd.grad_pre_bn = dout.ptr;
  ASSERT_CUDA(fq::cuda::launch_convbn_backward(bd, nullptr));
  const std::vector<float> gdz = download(dout.ptr, n);
  for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(gdz[i], dz[i], 1e-6f * (1 + std::fabs(dz[i]))) << i;
}

INSTANTIATE_TEST_SUITE_P(Layouts, ConvBnCuda,
                         ::testing::Values(Shape{4, 16, 3136, false}, Shape{4, 16, 3136, true}, Shape{3, 5, 49, false},
                                           Shape{3, 70, 49, true}, Shape{2, 3, 1, false}),
                         [](const ::testing::TestParamInfo<Shape>& info) {
                           const Shape& k = info.param;
                           return "n" + std::to_string(k.n) + "c" + std::to_string(k.c) + "hw" + std::to_string(k.hw) +
                                  (k.channels_last ? "_channels_last" : "_nchw");
                         });

TEST(ConvBnCudaWeight, FoldWeightGradAndChannelsMatchCpu) {
  SKIP_WITHOUT_GPU();
  const int64_t C = 37, L = 75;
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> w(C * L), gc(C * L);
  for (auto& v : w) v = dist(rng);
  for (auto& v : gc) v = dist(rng);
  std::vector<double> s(C);
  for (auto& v : s) v = 0.1 + std::fabs(dist(rng));
  std::vector<uint8_t> mask(fq::mask_bytes(C * L));
  for (auto& b : mask) b = static_cast<uint8_t>(rng());

  std::vector<float> folded(C * L), gw(C * L);
  std::vector<double> sums(C);
  fq::FoldWeightArgs f;
  f.weight = w.data(), f.folded = folded.data(), f.scale = s.data(), f.channels = C, f.channel_length = L;
  fq::fold_weight_cpu(f);
  fq::WeightGradArgs g;
  g.grad_conv = gc.data(), g.weight = w.data(), g.mask = mask.data(), g.scale = s.data(), g.grad_weight = gw.data();
  g.weight_sums = sums.data(), g.channels = C, g.channel_length = L;
  fq::weight_grad_cpu(g);

  DeviceBuffer<float> dw(C * L), dgc(C * L), dout(C * L), dgw(C * L);
  DeviceBuffer<double> ds(C), dsums(C);
  DeviceBuffer<uint8_t> dmask(mask.size());
  EXPECT_EQ(cudaMemcpy(ds.ptr, s.data(), C * sizeof(double), cudaMemcpyHostToDevice), cudaSuccess);
  fq::FoldWeightArgs fd = f;
  fd.weight = upload(dw, w), fd.folded = dout.ptr, fd.scale = ds.ptr;
  ASSERT_CUDA(fq::cuda::launch_fold_weight(fd, nullptr));
  EXPECT_EQ(download(dout.ptr, C * L), folded);
  fq::WeightGradArgs gd = g;
  gd.grad_conv = upload(dgc, gc), gd.weight = dw.ptr, gd.mask = upload(dmask, mask), gd.scale = ds.ptr;
  gd.grad_weight = dgw.ptr, gd.weight_sums = dsums.ptr;
  ASSERT_CUDA(fq::cuda::launch_weight_grad(gd, nullptr));
  EXPECT_EQ(download(dgw.ptr, C * L), gw);
  const std::vector<double> gsums = download(dsums.ptr, C);
  for (int64_t c = 0; c < C; ++c) EXPECT_NEAR(gsums[c], sums[c], 1e-12 * (1 + std::fabs(sums[c])));
}

}  // namespace
