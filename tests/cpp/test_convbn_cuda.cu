// The CUDA ConvBN kernels (fakequant/cuda/convbn.h) against the CPU reference
// (fakequant/convbn.h), every launcher, in every dtype it takes, on NCHW and channels_last
// layouts, empty and one-element inputs, odd tails, misaligned pointers and grids that stride.
//
// - Elementwise passes (epilogue, backward, weight fold, weight gradient): bit for bit. The
//   kernels compute the CPU's float32 / float64 operations in the CPU's order, without FMA
//   contraction. A NaN that fp32 / fp64 arithmetic computes may carry another payload on a GPU
//   (docs/numerics.md), so there any NaN matches a NaN; 16-bit NaNs are canonical everywhere.
// - Double sums (batch moments, backward sums, weight sums): the GPU adds in another order, so
//   they are compared within the error bound of summation (sum_tolerance below).
// - The per-channel pass: the shared double formulas of quant_math.h, which nvcc may contract
//   into FMAs (tolerance at check_channels).
// Every output is poisoned before the launch, so that an element the GPU leaves unwritten
// shows. Skips without a GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "convbn_test_util.h"
#include "cuda_test_util.cuh"
#include "fakequant/convbn.h"
#include "fakequant/cuda/convbn.h"
#include "test_util.h"

namespace fq = fakequant;
using namespace fakequant_test;

namespace {

// --- element types ------------------------------------------------------------------------

// The accumulator type: double for double tensors, float for the others.
template <typename T>
using AccOf = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename T>
constexpr fq::ConvBnDType convbn_dtype() {
  if constexpr (std::is_same_v<T, float>) return fq::ConvBnDType::kFloat32;
  if constexpr (std::is_same_v<T, fq::Half>) return fq::ConvBnDType::kFloat16;
  if constexpr (std::is_same_v<T, fq::BFloat16>) return fq::ConvBnDType::kBFloat16;
  return fq::ConvBnDType::kFloat64;
}

template <typename T>
const char* dtype_name() {
  if constexpr (std::is_same_v<T, float>) return "float32";
  if constexpr (std::is_same_v<T, fq::Half>) return "float16";
  if constexpr (std::is_same_v<T, fq::BFloat16>) return "bfloat16";
  return "float64";
}

// Every pass on activations and weights, in each dtype the launchers take: one typed test a
// pass, named after the dtype.
template <typename T>
class ConvBnCudaDTypes : public ::testing::Test {};
struct DTypeTestNames {
  template <typename T>
  static std::string GetName(int) {
    return dtype_name<T>();
  }
};
using ConvBnDTypes = ::testing::Types<float, fq::Half, fq::BFloat16, double>;
TYPED_TEST_SUITE(ConvBnCudaDTypes, ConvBnDTypes, DTypeTestNames);

template <typename T>
T from_double(double v) {
  if constexpr (std::is_same_v<T, double>) {
    return v;
  } else if constexpr (std::is_same_v<T, float>) {
    return static_cast<float>(v);
  } else {
    return fq::from_float<T>(static_cast<float>(v));
  }
}

template <typename T>
double to_double(T v) {
  if constexpr (std::is_same_v<T, double>) {
    return v;
  } else {
    return static_cast<double>(fq::to_float(v));
  }
}

// Bit for bit, except that a NaN matches any NaN in fp32 / fp64 (see the file comment).
template <typename T>
bool same_result(T gpu, T cpu) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    if (std::isnan(cpu)) return std::isnan(gpu);
  }
  return std::memcmp(&gpu, &cpu, sizeof(T)) == 0;
}

template <typename T>
void expect_same_results(const std::vector<T>& gpu, const std::vector<T>& cpu, const char* what) {
  ASSERT_EQ(gpu.size(), cpu.size());
  size_t mismatches = 0;
  for (size_t i = 0; i < cpu.size(); ++i) {
    if (same_result(gpu[i], cpu[i])) continue;
    if (++mismatches <= 5) {
      ADD_FAILURE() << what << "[" << i << "]: gpu " << to_double(gpu[i]) << ", cpu " << to_double(cpu[i]);
    }
  }
  EXPECT_EQ(mismatches, 0u) << what << ": elements that differ";
}

// --- device memory --------------------------------------------------------------------------

// n elements starting `offset` elements into their allocation (offset 1 puts a 16-byte
// aligned allocation off alignment, which the elementwise kernels must notice).
template <typename T>
struct DeviceArray {
  DeviceBuffer<T> buffer;
  T* ptr;
  size_t n;
  explicit DeviceArray(size_t count, size_t offset = 0) : buffer(count + offset), ptr(buffer.ptr + offset), n(count) {}
};

template <typename T>
T* upload(DeviceArray<T>& d, const std::vector<T>& h) {
  EXPECT_EQ(h.size(), d.n);
  if (!h.empty()) EXPECT_EQ(cudaMemcpy(d.ptr, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  return d.ptr;
}

// Fills the whole allocation with `byte`: what a kernel leaves unwritten keeps it.
template <typename T>
T* poison(DeviceArray<T>& d, int byte) {
  const size_t allocated = std::max<size_t>(d.n + (d.ptr - d.buffer.ptr), 1);  // as DeviceBuffer
  EXPECT_EQ(cudaMemset(d.buffer.ptr, byte, allocated * sizeof(T)), cudaSuccess);
  return d.ptr;
}

template <typename T>
std::vector<T> download(const T* p, size_t n) {
  std::vector<T> h(n);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  if (n > 0) EXPECT_EQ(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return h;
}

template <typename T>
std::vector<T> poisoned(size_t n, int byte) {
  std::vector<T> h(n);
  if (n > 0) std::memset(h.data(), byte, n * sizeof(T));
  return h;
}

constexpr int kPoison = 0x5A;      // 0x5A5A... : about 1.3e127 as a double, 1.5e16 as a float
constexpr int kMaskPoison = 0xCD;  // padding bits set: never a valid tail byte

// --- layouts --------------------------------------------------------------------------------

using Shape = ConvBnShape;

// Shapes of every test on activations. Each kernel path they reach is named.
const std::vector<Shape> kShapes = {
    {0, 3, 5, false},  // empty batch: nothing written but the moments of empty channels
    {2, 3, 0, false},  // empty spatial size (inner = 0)
    {0, 4, 6, true},   // empty channels_last
    {2, 0, 3, false},  // no channels
    {1, 1, 1, false},  // one element
    {1, 1, 1, true},
    {1, 3, 5, false},  // 15 elements: one full group and a tail of 7
    {3, 5, 7, false},  // odd runs, groups spanning channels and batches
    {2, 3, 1, false},  // H*W = 1
    {3, 5, 7, true},   // channels_last, 5 channels (one partial tile)
    {2, 70, 3, true},  // channels_last, 3 tiles of 32 channels, the last partial
    {2, 2, 9000, false},  // long NCHW channels: several stage-1 splits per channel
    {1, 3, 40000, true},  // 40000 rows x 3 channels: row splits, over 256 with 132 SMs
    {4, 16, 3136, false},  // 200704 elements: the elementwise grids stride with 3 SMs
    {4, 16, 3136, true},
};

// The shapes of 200704 elements are there for the elementwise grids; the sums and the other
// variants take them once (emulated run time).
bool large(const Shape& s) { return layout_of(s).numel() > 150000; }

// Values of a channel spread around a channel mean far from 0 (the moments' shift matters).
template <typename T>
std::vector<T> random_activation(const fq::ActivationLayout& l, uint32_t seed, double center) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> mean_dist(center - 4.0, center + 4.0), std_dist(0.25, 2.0);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> mean(l.channels), stddev(l.channels);
  for (int64_t c = 0; c < l.channels; ++c) mean[c] = mean_dist(rng), stddev[c] = std_dist(rng);
  std::vector<T> x(l.numel());
  for (int64_t i = 0; i < l.numel(); ++i) {
    const int64_t c = channel_of(l, i);
    x[i] = from_double<T>(mean[c] + stddev[c] * normal(rng));
  }
  return x;
}

uint32_t seed_of(const Shape& s, int salt) {
  return static_cast<uint32_t>(s.n * 7919 + s.c * 104729 + s.hw * 13 + (s.channels_last ? 1 : 0) + salt * 31337);
}

// --- double sums ----------------------------------------------------------------------------

// Any order of adding n double terms lies within (n - 1) u sum|t| of the exact sum
// (u = 2^-53), and where the GPU fuses a product into its addition (FMA) its term differs
// from the CPU's rounded product by at most u |t|: the CPU's and GPU's sums of the same terms
// differ by at most 2 (n + 1) u sum|t|, doubled here for the final operations.
double sum_tolerance(int64_t n, double abs_sum) {
  return 4.0 * static_cast<double>(n + 1) * 0x1p-53 * abs_sum;
}

// gpu within tol of cpu; NaN where the CPU has NaN; exact where the bound itself is NaN (a NaN
// term that the formula removed, e.g. a variance clamped at 0).
::testing::AssertionResult near_sum(double gpu, double cpu, double tol) {
  if (std::isnan(cpu)) {
    if (std::isnan(gpu)) return ::testing::AssertionSuccess();
  } else if (std::isnan(tol) ? gpu == cpu : std::fabs(gpu - cpu) <= tol) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "gpu " << gpu << ", cpu " << cpu << ", tolerance " << tol;
}

// --- batch moments --------------------------------------------------------------------------

template <typename T>
void check_moments(const Shape& s, int64_t offset, bool with_nan) {
  SCOPED_TRACE(describe(s) + " " + dtype_name<T>() + " offset " + std::to_string(offset) + (with_nan ? " NaN" : ""));
  const fq::ActivationLayout l = layout_of(s);
  const int64_t numel = l.numel(), C = l.channels, n = l.per_channel();
  std::vector<T> x = random_activation<T>(l, seed_of(s, 1), 3.0);
  if (with_nan && C > 0 && n > 1) {
    // A NaN in channel C - 1 (not its first element, the shift): its moments are NaN.
    const int64_t last = numel - 1;
    x[last] = from_double<T>(NAN);
  }

  fq::ChannelMomentsArgs a;
  a.dtype = convbn_dtype<T>();
  a.layout = l;
  std::vector<double> mean(C), var(C);
  fq::ChannelMomentsArgs ca = a;
  ca.input = x.data(), ca.mean = mean.data(), ca.var = var.data();
  fq::channel_moments_cpu(ca);

  DeviceArray<T> dx(numel, offset);
  DeviceArray<double> dmean(C), dvar(C);
  DeviceArray<uint8_t> workspace(fq::cuda::channel_sums_workspace_bytes(l));  // exact size
  fq::ChannelMomentsArgs ga = a;
  ga.input = upload(dx, x), ga.mean = poison(dmean, kPoison), ga.var = poison(dvar, kPoison);
  poison(workspace, kPoison);
  ASSERT_EQ(fq::cuda::launch_channel_moments(ga, workspace.ptr, nullptr), cudaSuccess);
  const std::vector<double> gmean = download(dmean.ptr, C), gvar = download(dvar.ptr, C);

  // Bounds from the shifted terms d = x - shift: mean = shift + s1 / n and
  // var = s2 / n - (s1 / n)^2 inherit the sums' errors (plus a few roundings of their own).
  std::vector<double> abs1(C, 0.0), sq(C, 0.0);
  for (int64_t i = 0; i < numel; ++i) {
    const int64_t c = channel_of(l, i);
    const double d = to_double(x[i]) - to_double(x[c * l.inner]);
    abs1[c] += std::fabs(d);
    sq[c] += d * d;
  }
  for (int64_t c = 0; c < C; ++c) {
    const double nd = static_cast<double>(n);
    const double e1 = sum_tolerance(n, abs1[c]) / nd, e2 = sum_tolerance(n, sq[c]) / nd;
    const double dbar = n > 0 ? std::fabs(mean[c] - to_double(x[c * l.inner])) : 0.0;
    const double mean_tol = e1 + 0x1p-50 * (std::fabs(mean[c]) + dbar);
    const double var_tol = e2 + 2 * dbar * e1 + e1 * e1 + 0x1p-50 * (sq[c] / nd + dbar * dbar);
    EXPECT_TRUE(near_sum(gmean[c], mean[c], mean_tol)) << "mean of channel " << c;
    EXPECT_TRUE(near_sum(gvar[c], var[c], var_tol)) << "variance of channel " << c;
  }
  if (with_nan && C > 0 && n > 1) EXPECT_TRUE(std::isnan(gmean[C - 1]));
}

template <typename T>
void moments_all_shapes() {
  for (const Shape& s : kShapes)
    for (const int64_t offset : {0, 1}) {
      if (large(s) && offset == 1) continue;
      check_moments<T>(s, offset, offset == 1);
      if (::testing::Test::HasFatalFailure()) return;
    }
}

TYPED_TEST(ConvBnCudaDTypes, MomentsMatchCpu) {
  SKIP_WITHOUT_GPU();
  moments_all_shapes<TypeParam>();
}

// Mean 1e6, std 0.5: the shift keeps the variance, which unshifted sums of squares (about
// n 1e12, with double rounding errors of about 1e-4 per element) would lose.
TEST(ConvBnCudaMoments, LargeMeanKeepsVariance) {
  SKIP_WITHOUT_GPU();
  for (const bool channels_last : {false, true}) {
    const fq::ActivationLayout l = layout_of({8, 3, 500, channels_last});
    const int64_t C = l.channels;
    std::mt19937 rng(5);
    std::normal_distribution<float> normal(0.0f, 0.5f);
    std::vector<float> x(l.numel());
    for (auto& v : x) v = 1e6f + normal(rng);
    DeviceArray<float> dx(x.size());
    DeviceArray<double> dmean(C), dvar(C);
    DeviceArray<uint8_t> workspace(fq::cuda::channel_sums_workspace_bytes(l));
    fq::ChannelMomentsArgs a;
    a.layout = l, a.input = upload(dx, x), a.mean = poison(dmean, kPoison), a.var = poison(dvar, kPoison);
    ASSERT_EQ(fq::cuda::launch_channel_moments(a, workspace.ptr, nullptr), cudaSuccess);
    const std::vector<double> gvar = download(dvar.ptr, C);
    for (int64_t c = 0; c < C; ++c) {
      double sum = 0, sq = 0;  // two passes: the exact mean first
      for (int64_t i = 0; i < l.numel(); ++i) sum += channel_of(l, i) == c ? x[i] : 0.0;
      const double m = sum / static_cast<double>(l.per_channel());
      for (int64_t i = 0; i < l.numel(); ++i) sq += channel_of(l, i) == c ? (x[i] - m) * (x[i] - m) : 0.0;
      const double var = sq / static_cast<double>(l.per_channel());
      EXPECT_NEAR(gvar[c], var, 1e-9 * var) << "channel " << c << (channels_last ? " channels_last" : " nchw");
    }
  }
}

// --- backward sums --------------------------------------------------------------------------

// What the backward passes read, for a case of for_each_backward_case below: the gradient dy
// (centred at 0) and the pre-BN activation z (at z_center) of shape s, the ReLU mask, and a
// generator for the per-channel values, seeded with seed_of(s, salt), seed_of(s, salt + 1), ...
template <typename T>
struct BackwardInputs {
  std::vector<T> dy, z;
  std::vector<uint8_t> mask;
  std::mt19937 rng;
};

template <typename T>
BackwardInputs<T> backward_inputs(const Shape& s, int salt, double z_center) {
  const fq::ActivationLayout l = layout_of(s);
  return {random_activation<T>(l, seed_of(s, salt), 0.0), random_activation<T>(l, seed_of(s, salt + 1), z_center),
          random_mask(l.numel(), seed_of(s, salt + 2)), std::mt19937(seed_of(s, salt + 3))};
}

template <typename T>
std::string backward_case_name(const Shape& s, int64_t offset, bool with_z, bool with_mask, bool with_nan) {
  return describe(s) + " " + dtype_name<T>() + " offset " + std::to_string(offset) + (with_z ? " z" : "") +
         (with_mask ? " mask" : "") + (with_nan ? " NaN" : "");
}

template <typename T>
void check_grad_sums(const Shape& s, int64_t offset, bool with_z, bool with_mask, bool with_nan) {
  SCOPED_TRACE(backward_case_name<T>(s, offset, with_z, with_mask, with_nan));
  const fq::ActivationLayout l = layout_of(s);
  const int64_t numel = l.numel(), C = l.channels;
  auto [dy, z, mask, rng] = backward_inputs<T>(s, 2, 2.0);
  std::normal_distribution<double> normal(2.0, 3.0);
  std::vector<double> mean(C);
  for (auto& m : mean) m = normal(rng);
  if (with_nan) {
    // A NaN gradient where the ReLU bit is 0 is dropped (g = +0); where it is 1 (or without a
    // mask) it reaches its channel's sums.
    for (int64_t i = 0; i < numel; i += 97) dy[i] = from_double<T>(NAN);
  }

  fq::ChannelGradSumsArgs a;
  a.dtype = convbn_dtype<T>();
  a.layout = l;
  std::vector<double> sums(2 * C);
  fq::ChannelGradSumsArgs ca = a;
  ca.grad_output = dy.data(), ca.pre_bn = with_z ? z.data() : nullptr, ca.relu_mask = with_mask ? mask.data() : nullptr;
  ca.mean = mean.data(), ca.sums = sums.data();
  fq::channel_grad_sums_cpu(ca);

  DeviceArray<T> ddy(numel, offset), dz(numel, offset);
  DeviceArray<uint8_t> dmask(mask.size());
  DeviceArray<double> dmean(C), dsums(2 * C);
  DeviceArray<uint8_t> workspace(fq::cuda::channel_sums_workspace_bytes(l));
  poison(workspace, kPoison);
  fq::ChannelGradSumsArgs ga = a;
  ga.grad_output = upload(ddy, dy), ga.pre_bn = with_z ? upload(dz, z) : nullptr;
  ga.relu_mask = with_mask ? upload(dmask, mask) : nullptr;
  ga.mean = upload(dmean, mean), ga.sums = poison(dsums, kPoison);
  ASSERT_EQ(fq::cuda::launch_channel_grad_sums(ga, workspace.ptr, nullptr), cudaSuccess);
  const std::vector<double> gsums = download(dsums.ptr, 2 * C);

  std::vector<double> abs_g(C, 0.0), abs_gz(C, 0.0);
  for (int64_t i = 0; i < numel; ++i) {
    const int64_t c = channel_of(l, i);
    const double g = (!with_mask || mask_bit(mask, i)) ? to_double(dy[i]) : 0.0;
    abs_g[c] += std::fabs(g);
    if (with_z) abs_gz[c] += std::fabs(g * (to_double(z[i]) - mean[c]));
  }
  for (int64_t c = 0; c < C; ++c) {
    EXPECT_TRUE(near_sum(gsums[c], sums[c], sum_tolerance(l.per_channel(), abs_g[c]))) << "sum g, channel " << c;
    EXPECT_TRUE(near_sum(gsums[C + c], sums[C + c], sum_tolerance(l.per_channel(), abs_gz[c])))
        << "sum g (z - mean), channel " << c;
  }
}

// The cases of the backward passes, which read the gradient with or without the pre-BN
// activation z and the ReLU mask: every shape with each combination, misaligned where exactly
// one of z and the mask is given, with NaNs where z is; of the large shapes only the
// combinations large_too(with_z, with_mask) accepts.
template <typename Check, typename LargeToo>
void for_each_backward_case(Check check, LargeToo large_too) {
  for (const Shape& s : kShapes)
    for (const bool with_z : {false, true})
      for (const bool with_mask : {false, true}) {
        const int64_t offset = (with_z == with_mask) ? 0 : 1;
        if (large(s) && !large_too(with_z, with_mask)) continue;
        check(s, offset, with_z, with_mask, with_z);
        if (::testing::Test::HasFatalFailure()) return;
      }
}

TYPED_TEST(ConvBnCudaDTypes, GradSumsMatchCpu) {
  SKIP_WITHOUT_GPU();
  for_each_backward_case(check_grad_sums<TypeParam>, [](bool with_z, bool with_mask) { return with_z && with_mask; });
}

// More channels (NCHW) or channel tiles (channels_last) than the stage-1 grid has rows of
// blocks (32 per multiprocessor: 96 with 3, 256 with 8): the kernels stride over channels.
// (More than 65,535 channels would stride on any GPU, but cost about 10 s per kernel under
// emulation, where each channel is a reduction by a block of 256 threads.)
TEST(ConvBnCudaSums, ManyChannelsStrideTheGrid) {
  SKIP_WITHOUT_GPU();
  for (const Shape& s : {Shape{3, 300, 5, false}, Shape{3, 97 * 32 + 5, 2, true}}) {
    check_moments<fq::Half>(s, 1, true);
    check_grad_sums<float>(s, 0, true, true, true);
    if (HasFatalFailure()) return;
  }
}

// --- forward epilogue -----------------------------------------------------------------------

template <typename T>
void check_epilogue(const Shape& s, int64_t offset, bool relu, bool in_place, bool with_nan) {
  using Acc = AccOf<T>;
  SCOPED_TRACE(describe(s) + " " + dtype_name<T>() + " offset " + std::to_string(offset) + (relu ? " relu" : "") +
               (in_place ? " in place" : "") + (with_nan ? " NaN" : ""));
  const fq::ActivationLayout l = layout_of(s);
  const int64_t numel = l.numel(), C = l.channels;
  std::vector<T> x = random_activation<T>(l, seed_of(s, 6), 0.5);
  std::mt19937 rng(seed_of(s, 7));
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<Acc> coef(2 * C);
  for (auto& v : coef) v = static_cast<Acc>(normal(rng));
  if (with_nan) {
    for (int64_t i = 3; i < numel; i += 101) x[i] = from_double<T>(NAN);  // NaN passes ReLU, bit 0
  }

  fq::ConvBnEpilogueArgs a;
  a.dtype = convbn_dtype<T>();
  a.layout = l;
  std::vector<T> y(numel);
  std::vector<uint8_t> mask = poisoned<uint8_t>(fq::mask_bytes(numel), kMaskPoison);
  fq::ConvBnEpilogueArgs ca = a;
  ca.input = x.data(), ca.output = y.data(), ca.relu_mask = relu ? mask.data() : nullptr, ca.coef = coef.data();
  fq::convbn_epilogue_cpu(ca);

  DeviceArray<T> dx(numel, offset), dy(numel, offset);
  DeviceArray<uint8_t> dmask(mask.size());
  DeviceArray<Acc> dcoef(2 * C);
  fq::ConvBnEpilogueArgs ga = a;
  ga.input = upload(dx, x);
  ga.output = in_place ? dx.ptr : poison(dy, kPoison);
  ga.relu_mask = relu ? poison(dmask, kMaskPoison) : nullptr;
  ga.coef = upload(dcoef, coef);
  ASSERT_EQ(fq::cuda::launch_convbn_epilogue(ga, nullptr), cudaSuccess);
  expect_same_results(download(static_cast<const T*>(ga.output), numel), y, "output");
  if (relu) EXPECT_EQ(download(dmask.ptr, mask.size()), mask) << "ReLU mask";
  if (numel == 0 && !in_place) {
    // Nothing to do: the output's allocation keeps its poison.
    const std::vector<T> untouched = download(dy.buffer.ptr, 1), expected = poisoned<T>(1, kPoison);
    EXPECT_EQ(std::memcmp(untouched.data(), expected.data(), sizeof(T)), 0);
  }
}

template <typename T>
void epilogue_all_shapes() {
  for (const Shape& s : kShapes)
    for (const bool relu : {false, true})
      for (const int64_t offset : {0, 1}) {
        check_epilogue<T>(s, offset, relu, relu && offset == 0, relu && offset == 1);
        if (::testing::Test::HasFatalFailure()) return;
      }
}

TYPED_TEST(ConvBnCudaDTypes, EpilogueMatchesCpu) {
  SKIP_WITHOUT_GPU();
  epilogue_all_shapes<TypeParam>();
}

// The ReLU bit is that of the stored (rounded) output, as on the CPU and in PyTorch: a
// pre-activation 0 < v that rounds to 0 in the 16-bit dtype (v <= 2^-25 in fp16, v <= 2^-134
// in bf16) passes no gradient. Inputs x = k 2^-10 and coefficients A = m s, B = -j 2^-10 s
// make v = (k m - j) 2^-10 s exactly (s = 2^-20 for fp16, 2^-130 for bf16), so many elements
// land on the small integer multiples of the unit 2^-10 s around 0.
template <typename T>
void check_tiny_relu(const Shape& s, int64_t offset) {
  SCOPED_TRACE(describe(s) + " " + dtype_name<T>() + " offset " + std::to_string(offset));
  const bool half = std::is_same_v<T, fq::Half>;
  const float unit_scale = half ? 0x1p-20f : 0x1p-130f;
  const float unit = 0x1p-10f * unit_scale;             // 2^-30 (fp16), 2^-140 (bf16)
  const float largest_zero = half ? 0x1p-25f : 0x1p-134f;  // ties to even: rounds to 0
  const fq::ActivationLayout l = layout_of(s);
  const int64_t numel = l.numel(), C = l.channels;
  std::mt19937 rng(seed_of(s, 8) + static_cast<uint32_t>(offset));
  std::uniform_int_distribution<int> k_dist(-40, 40), m_dist(1, 3), j_dist(-20, 20);
  std::vector<T> x(numel);
  for (auto& v : x) v = from_double<T>(k_dist(rng) * 0x1p-10);
  x[numel / 2] = from_double<T>(NAN);
  std::vector<float> coef(2 * C);
  for (int64_t c = 0; c < C; ++c) {
    coef[c] = static_cast<float>(m_dist(rng)) * unit_scale;
    coef[C + c] = static_cast<float>(-j_dist(rng)) * unit;
  }
  int64_t rounded_to_zero = 0, kept = 0;
  for (int64_t i = 0; i < numel; ++i) {
    const int64_t c = channel_of(l, i);
    const float v = fq::to_float(x[i]) * coef[c] + coef[C + c];  // exact: no rounding to differ on
    rounded_to_zero += (v > 0 && v <= largest_zero) ? 1 : 0;
    kept += v > largest_zero ? 1 : 0;
  }
  ASSERT_GT(rounded_to_zero, 0) << "no tiny positive pre-activation";
  ASSERT_GT(kept, 0);

  fq::ConvBnEpilogueArgs a;
  a.dtype = convbn_dtype<T>();
  a.layout = l;
  std::vector<T> y(numel);
  std::vector<uint8_t> mask(fq::mask_bytes(numel));
  fq::ConvBnEpilogueArgs ca = a;
  ca.input = x.data(), ca.output = y.data(), ca.relu_mask = mask.data(), ca.coef = coef.data();
  fq::convbn_epilogue_cpu(ca);

  DeviceArray<T> dx(numel, offset), dy(numel, offset);
  DeviceArray<uint8_t> dmask(mask.size());
  DeviceArray<float> dcoef(2 * C);
  fq::ConvBnEpilogueArgs ga = a;
  ga.input = upload(dx, x), ga.output = poison(dy, kPoison), ga.relu_mask = poison(dmask, kMaskPoison);
  ga.coef = upload(dcoef, coef);
  ASSERT_EQ(fq::cuda::launch_convbn_epilogue(ga, nullptr), cudaSuccess);
  const std::vector<T> gy = download(dy.ptr, numel);
  const std::vector<uint8_t> gmask = download(dmask.ptr, mask.size());
  expect_same_results(gy, y, "output");
  EXPECT_EQ(gmask, mask) << "ReLU mask";
  // The rule itself, on the GPU's output: bit = stored output > 0.
  int64_t wrong = 0;
  for (int64_t i = 0; i < numel; ++i) wrong += mask_bit(gmask, i) != (fq::to_float(gy[i]) > 0.0f) ? 1 : 0;
  EXPECT_EQ(wrong, 0) << "mask bits that are not (stored output > 0)";
}

TEST(ConvBnCudaEpilogue, ReluMaskIsThatOfTheStoredHalfAndBFloat16Output) {
  SKIP_WITHOUT_GPU();
  for (const Shape& s : {Shape{3, 4, 37, false}, Shape{2, 5, 21, true}, Shape{1, 2, 4000, false}})
    for (const int64_t offset : {0, 1}) {
      check_tiny_relu<fq::Half>(s, offset);
      check_tiny_relu<fq::BFloat16>(s, offset);
    }
}

// --- backward elementwise pass --------------------------------------------------------------

template <typename T>
void check_backward(const Shape& s, int64_t offset, bool with_z, bool with_mask, bool with_nan) {
  using Acc = AccOf<T>;
  SCOPED_TRACE(backward_case_name<T>(s, offset, with_z, with_mask, with_nan));
  const fq::ActivationLayout l = layout_of(s);
  const int64_t numel = l.numel(), C = l.channels;
  auto [dy, z, mask, rng] = backward_inputs<T>(s, 9, 1.0);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<Acc> coef(4 * C);
  for (auto& v : coef) v = static_cast<Acc>(normal(rng));
  if (with_nan) {
    // dy NaN: dropped where the ReLU bit is 0, else NaN; z NaN: NaN whatever the bit.
    for (int64_t i = 1; i < numel; i += 53) dy[i] = from_double<T>(NAN);
    for (int64_t i = 2; i < numel; i += 211) z[i] = from_double<T>(NAN);
  }

  fq::ConvBnBackwardArgs a;
  a.dtype = convbn_dtype<T>();
  a.layout = l;
  std::vector<T> dz(numel);
  fq::ConvBnBackwardArgs ca = a;
  ca.grad_output = dy.data(), ca.pre_bn = with_z ? z.data() : nullptr, ca.relu_mask = with_mask ? mask.data() : nullptr;
  ca.coef = coef.data(), ca.grad_pre_bn = dz.data();
  fq::convbn_backward_cpu(ca);

  DeviceArray<T> ddy(numel, offset), dzin(numel, offset), dout(numel, offset);
  DeviceArray<uint8_t> dmask(mask.size());
  DeviceArray<Acc> dcoef(4 * C);
  fq::ConvBnBackwardArgs ga = a;
  ga.grad_output = upload(ddy, dy), ga.pre_bn = with_z ? upload(dzin, z) : nullptr;
  ga.relu_mask = with_mask ? upload(dmask, mask) : nullptr;
  ga.coef = upload(dcoef, coef), ga.grad_pre_bn = poison(dout, kPoison);
  ASSERT_EQ(fq::cuda::launch_convbn_backward(ga, nullptr), cudaSuccess);
  expect_same_results(download(dout.ptr, numel), dz, "grad_pre_bn");
}

TYPED_TEST(ConvBnCudaDTypes, BackwardMatchesCpu) {
  SKIP_WITHOUT_GPU();
  // Large shapes with z: aligned with the mask, misaligned without.
  for_each_backward_case(check_backward<TypeParam>, [](bool with_z, bool) { return with_z; });
}

// More than 65,535 channels (NCHW and channels_last): channel indices far beyond a block's.
TEST(ConvBnCudaBackward, ManyChannelsMatchCpu) {
  SKIP_WITHOUT_GPU();
  for (const Shape& s : {Shape{1, 70001, 3, false}, Shape{2, 70001, 1, true}}) {
    check_epilogue<fq::Half>(s, 0, true, false, true);
    check_backward<float>(s, 1, true, true, true);
    if (HasFatalFailure()) return;
  }
}

// --- weight fold and weight gradient --------------------------------------------------------

struct WeightShape {
  int64_t channels, length;
};

// Empty, one element, odd lengths, lengths beyond a block, and enough elements (fold) and
// channels (gradient: one block per channel, at most 8 per multiprocessor) for the grids to
// stride in every emulated order.
const std::vector<WeightShape> kWeightShapes = {{0, 9}, {3, 0}, {1, 1}, {5, 7}, {37, 75}, {3, 600}, {70, 3}, {96, 300}};

std::vector<double> random_scale(int64_t C, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.5);
  std::vector<double> s(C);
  for (auto& v : s) v = normal(rng);  // negative where gamma is
  if (C > 1) s[1] = 0.0;              // gamma == 0
  return s;
}

template <typename T>
void check_fold(const WeightShape& w, int64_t offset, bool with_nan) {
  using Acc = AccOf<T>;
  SCOPED_TRACE(std::to_string(w.channels) + " x " + std::to_string(w.length) + " " + dtype_name<T>() + " offset " +
               std::to_string(offset));
  const int64_t numel = w.channels * w.length;
  const fq::ActivationLayout flat{numel, 1, 1};
  std::vector<T> weight = random_activation<T>(flat, static_cast<uint32_t>(numel + 1), 0.0);
  if (with_nan && numel > 2) weight[numel / 2] = from_double<T>(NAN);
  const std::vector<double> scale = random_scale(w.channels, static_cast<uint32_t>(numel + 2));

  fq::FoldWeightArgs a;
  a.dtype = convbn_dtype<T>();
  a.channels = w.channels, a.channel_length = w.length;
  std::vector<Acc> folded = poisoned<Acc>(numel, kPoison);
  fq::FoldWeightArgs ca = a;
  ca.weight = weight.data(), ca.folded = folded.data(), ca.scale = scale.data();
  fq::fold_weight_cpu(ca);

  DeviceArray<T> dw(numel, offset);
  DeviceArray<Acc> dfolded(numel, offset);
  DeviceArray<double> dscale(w.channels);
  fq::FoldWeightArgs ga = a;
  ga.weight = upload(dw, weight), ga.folded = poison(dfolded, kPoison), ga.scale = upload(dscale, scale);
  ASSERT_EQ(fq::cuda::launch_fold_weight(ga, nullptr), cudaSuccess);
  expect_same_results(download(dfolded.ptr, numel), folded, "folded");
}

template <typename T>
void check_weight_grad(const WeightShape& w, int64_t offset, bool with_mask, bool with_scale, bool with_sums) {
  SCOPED_TRACE(std::to_string(w.channels) + " x " + std::to_string(w.length) + " " + dtype_name<T>() + " offset " +
               std::to_string(offset) + (with_mask ? " mask" : "") + (with_scale ? " scale" : "") +
               (with_sums ? " sums" : ""));
  const int64_t numel = w.channels * w.length, C = w.channels;
  const uint32_t seed = static_cast<uint32_t>(numel * 3 + C);
  std::vector<T> grad_conv = random_activation<T>(fq::ActivationLayout{numel, 1, 1}, seed, 0.0);
  std::vector<T> weight = random_activation<T>(fq::ActivationLayout{numel, 1, 1}, seed + 1, 0.0);
  const std::vector<uint8_t> mask = random_mask(numel, seed + 2);
  const std::vector<double> scale = random_scale(C, seed + 3);
  if (with_mask) {
    // A NaN gradient under a 0 bit gives 0 (times s); under a 1 bit, NaN.
    for (int64_t i = 0; i < numel; i += 41) grad_conv[i] = from_double<T>(NAN);
  }

  fq::WeightGradArgs a;
  a.dtype = convbn_dtype<T>();
  a.channels = C, a.channel_length = w.length;
  std::vector<T> gw(numel);
  std::vector<double> sums(C);
  fq::WeightGradArgs ca = a;
  ca.grad_conv = grad_conv.data(), ca.weight = weight.data(), ca.mask = with_mask ? mask.data() : nullptr;
  ca.scale = with_scale ? scale.data() : nullptr, ca.grad_weight = gw.data();
  ca.weight_sums = with_sums ? sums.data() : nullptr;
  fq::weight_grad_cpu(ca);

  DeviceArray<T> dgc(numel, offset), dw(numel, offset), dgw(numel, offset);
  DeviceArray<uint8_t> dmask(mask.size());
  DeviceArray<double> dscale(C), dsums(C);
  fq::WeightGradArgs ga = a;
  ga.grad_conv = upload(dgc, grad_conv), ga.weight = upload(dw, weight);
  ga.mask = with_mask ? upload(dmask, mask) : nullptr, ga.scale = with_scale ? upload(dscale, scale) : nullptr;
  ga.grad_weight = poison(dgw, kPoison), ga.weight_sums = with_sums ? poison(dsums, kPoison) : nullptr;
  ASSERT_EQ(fq::cuda::launch_weight_grad(ga, nullptr), cudaSuccess);
  expect_same_results(download(dgw.ptr, numel), gw, "grad_weight");
  if (!with_sums) return;
  const std::vector<double> gsums = download(dsums.ptr, C);
  for (int64_t c = 0; c < C; ++c) {
    double abs_sum = 0.0;
    for (int64_t j = c * w.length; j < (c + 1) * w.length; ++j) {
      const double d = (!with_mask || mask_bit(mask, j)) ? to_double(grad_conv[j]) : 0.0;
      abs_sum += std::fabs(d * to_double(weight[j]));
    }
    EXPECT_TRUE(near_sum(gsums[c], sums[c], sum_tolerance(w.length, abs_sum))) << "weight sum of channel " << c;
  }
}

template <typename T>
void weight_passes_all_shapes() {
  for (const WeightShape& w : kWeightShapes) {
    for (const int64_t offset : {0, 1}) {
      check_fold<T>(w, offset, offset == 1);
      if (::testing::Test::HasFatalFailure()) return;
    }
    for (int flags = 0; flags < 8; ++flags) {
      check_weight_grad<T>(w, flags & 1, (flags & 1) != 0, (flags & 2) != 0, (flags & 4) != 0);
      if (::testing::Test::HasFatalFailure()) return;
    }
  }
}

TYPED_TEST(ConvBnCudaDTypes, WeightPassesMatchCpu) {
  SKIP_WITHOUT_GPU();
  weight_passes_all_shapes<TypeParam>();
}

// --- per-channel pass -----------------------------------------------------------------------

struct ChannelCase {
  fq::ConvBnPhase phase;
  bool training, with_bias, with_weight_sums;
  fq::ConvBnDType dtype;
  int64_t channels;
};

std::string describe(const ChannelCase& k) {
  std::ostringstream os;
  os << "phase " << static_cast<int>(k.phase) << (k.training ? " training" : " frozen")
     << (k.with_bias ? " bias" : "") << (k.with_weight_sums ? " weight_sums" : "") << " dtype "
     << static_cast<int>(k.dtype) << " C " << k.channels;
  return os.str();
}

// The GPU evaluates the same double formulas (quant_math.h, convbn_*), but nvcc may contract
// their products and sums into FMAs (the CPU build does not): a few double roundings per
// result, far below 1e-12 relative for these O(1) inputs; a float32 result rounded from such a
// double may then land one float ulp away.
::testing::AssertionResult near_double(double gpu, double cpu) {
  if (same_result(gpu, cpu) || std::fabs(gpu - cpu) <= 1e-12 * (1.0 + std::fabs(cpu))) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "gpu " << gpu << ", cpu " << cpu;
}

::testing::AssertionResult near_float(float gpu, float cpu) {
  const float ulp = std::nextafter(std::fabs(cpu), INFINITY) - std::fabs(cpu);
  if (same_result(gpu, cpu) || std::fabs(gpu - cpu) <= ulp) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "gpu " << gpu << ", cpu " << cpu;
}

void check_channels(const ChannelCase& k) {
  SCOPED_TRACE(describe(k));
  const int64_t C = k.channels;
  const bool double_coef = k.dtype == fq::ConvBnDType::kFloat64;
  const size_t coef_bytes = 4 * C * (double_coef ? sizeof(double) : sizeof(float));
  std::mt19937 rng(static_cast<uint32_t>(C * 17 + static_cast<int>(k.phase)));
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> positive(0.1, 3.0);
  std::vector<double> gamma(C), beta(C), bias(C), mean(C), var(C), sums(2 * C), weight_sums(C);
  std::vector<float> running_mean(C), running_var(C);
  std::vector<double> rows(fq::kConvBnRows * C);
  for (int64_t c = 0; c < C; ++c) {
    gamma[c] = c == 0 ? 0.0 : normal(rng);  // gamma == 0: the running mode's special case
    beta[c] = normal(rng), bias[c] = normal(rng);
    mean[c] = normal(rng), var[c] = c == 1 ? 0.0 : positive(rng);  // one zero variance
    sums[c] = normal(rng), sums[C + c] = normal(rng), weight_sums[c] = normal(rng);
    running_mean[c] = static_cast<float>(normal(rng)), running_var[c] = static_cast<float>(positive(rng));
    rows[fq::kRowMean * C + c] = normal(rng);
    rows[fq::kRowAlpha * C + c] = positive(rng);
    rows[fq::kRowK * C + c] = normal(rng);
    rows[fq::kRowScale * C + c] = c == 0 ? 1.0 : gamma[c] / std::sqrt(running_var[c] + 1e-5);
    rows[fq::kRowR * C + c] = c == 0 ? 0.0 : positive(rng);
    rows[fq::kRowE * C + c] = normal(rng);
  }

  fq::ConvBnChannelArgs a;
  a.phase = k.phase, a.training = k.training, a.dtype = k.dtype, a.channels = C;
  a.count = 50, a.eps = 1e-5, a.momentum = 0.1;

  // CPU: outputs start as copies of the GPU's initial contents, so that what a phase does not
  // write compares equal and what it does write must match.
  std::vector<double> rows_cpu = rows, grads_cpu = poisoned<double>(3 * C, kPoison);
  std::vector<float> rmean_cpu = running_mean, rvar_cpu = running_var;
  std::vector<uint8_t> coef_cpu = poisoned<uint8_t>(coef_bytes, kPoison);
  fq::ConvBnChannelArgs ca = a;
  ca.gamma = gamma.data(), ca.beta = beta.data(), ca.bias = k.with_bias ? bias.data() : nullptr;
  ca.running_mean = rmean_cpu.data(), ca.running_var = rvar_cpu.data(), ca.mean = mean.data(), ca.var = var.data();
  ca.rows = rows_cpu.data(), ca.coef = coef_cpu.data(), ca.sums = sums.data();
  ca.weight_sums = k.with_weight_sums ? weight_sums.data() : nullptr, ca.grads = grads_cpu.data();
  fq::convbn_channels_cpu(ca);

  DeviceArray<double> dgamma(C), dbeta(C), dbias(C), dmean(C), dvar(C), dsums(2 * C), dwsums(C);
  DeviceArray<double> drows(rows.size()), dgrads(3 * C);
  DeviceArray<float> drmean(C), drvar(C);
  DeviceArray<uint8_t> dcoef(coef_bytes);
  fq::ConvBnChannelArgs ga = a;
  ga.gamma = upload(dgamma, gamma), ga.beta = upload(dbeta, beta);
  ga.bias = k.with_bias ? upload(dbias, bias) : nullptr;
  ga.running_mean = upload(drmean, running_mean), ga.running_var = upload(drvar, running_var);
  ga.mean = upload(dmean, mean), ga.var = upload(dvar, var), ga.rows = upload(drows, rows);
  ga.coef = poison(dcoef, kPoison), ga.sums = upload(dsums, sums);
  ga.weight_sums = k.with_weight_sums ? upload(dwsums, weight_sums) : nullptr, ga.grads = poison(dgrads, kPoison);
  ASSERT_EQ(fq::cuda::launch_convbn_channels(ga, nullptr), cudaSuccess);

  const std::vector<double> grows = download(drows.ptr, rows.size()), ggrads = download(dgrads.ptr, 3 * C);
  const std::vector<float> grmean = download(drmean.ptr, C), grvar = download(drvar.ptr, C);
  const std::vector<uint8_t> gcoef = download(dcoef.ptr, coef_bytes);
  int64_t failures = 0;
  auto count = [&](const ::testing::AssertionResult& r, const char* what, size_t i) {
    if (!r && ++failures <= 5) ADD_FAILURE() << what << "[" << i << "]: " << r.message();
  };
  for (size_t i = 0; i < rows.size(); ++i) count(near_double(grows[i], rows_cpu[i]), "rows", i);
  for (size_t i = 0; i < ggrads.size(); ++i) count(near_double(ggrads[i], grads_cpu[i]), "grads", i);
  for (int64_t c = 0; c < C; ++c) {
    count(near_float(grmean[c], rmean_cpu[c]), "running_mean", c);
    count(near_float(grvar[c], rvar_cpu[c]), "running_var", c);
  }
  for (size_t i = 0; i < 4 * static_cast<size_t>(C); ++i) {
    if (double_coef) {
      double g, c;
      std::memcpy(&g, gcoef.data() + i * sizeof(double), sizeof(double));
      std::memcpy(&c, coef_cpu.data() + i * sizeof(double), sizeof(double));
      count(near_double(g, c), "coef", i);
    } else {
      float g, c;
      std::memcpy(&g, gcoef.data() + i * sizeof(float), sizeof(float));
      std::memcpy(&c, coef_cpu.data() + i * sizeof(float), sizeof(float));
      count(near_float(g, c), "coef", i);
    }
  }
  EXPECT_EQ(failures, 0);
}

const fq::ConvBnPhase kPhases[] = {fq::ConvBnPhase::kEval,         fq::ConvBnPhase::kRunningPreFold,
                                   fq::ConvBnPhase::kRunningStats, fq::ConvBnPhase::kBatchStats,
                                   fq::ConvBnPhase::kBackwardCoef, fq::ConvBnPhase::kBackwardParams};

TEST(ConvBnCudaChannels, EveryPhaseMatchesCpu) {
  SKIP_WITHOUT_GPU();
  for (const fq::ConvBnPhase phase : kPhases)
    for (const bool training : {false, true})
      for (const bool with_bias : {false, true})
        for (const bool with_weight_sums : {false, true})
          for (const fq::ConvBnDType dtype : {fq::ConvBnDType::kFloat32, fq::ConvBnDType::kFloat16,
                                              fq::ConvBnDType::kBFloat16, fq::ConvBnDType::kFloat64})
            for (const int64_t channels : {0, 1, 37}) {
              check_channels({phase, training, with_bias, with_weight_sums, dtype, channels});
              if (HasFatalFailure()) return;
            }
}

// More channels than the grid's threads with 3 or 8 multiprocessors (at most 32 blocks of
// 128 per multiprocessor): the kernel strides.
TEST(ConvBnCudaChannels, ManyChannelsStrideTheGrid) {
  SKIP_WITHOUT_GPU();
  for (const fq::ConvBnPhase phase : kPhases) {
    check_channels({phase, true, true, true, fq::ConvBnDType::kFloat32, 40000});
    if (HasFatalFailure()) return;
  }
}

// --- workspace and launch status ------------------------------------------------------------

// The workspace of the sums holds one double pair per (channel, split): every test above runs
// with exactly channel_sums_workspace_bytes() bytes (an overrun is caught by the memory
// checkers); here its size is checked on its own.
TEST(ConvBnCudaSums, WorkspaceHoldsWholeSumPairs) {
  SKIP_WITHOUT_GPU();
  for (const Shape& s : kShapes) {
    const fq::ActivationLayout l = layout_of(s);
    const size_t bytes = fq::cuda::channel_sums_workspace_bytes(l);
    EXPECT_GT(bytes, 0u) << describe(s);
    EXPECT_EQ(bytes % (2 * sizeof(double)), 0u) << describe(s);
    EXPECT_GE(bytes, 2 * sizeof(double) * static_cast<size_t>(std::max<int64_t>(l.channels, 1))) << describe(s);
  }
}

// An unknown dtype is refused before anything is launched.
TEST(ConvBnCudaSums, UnknownDTypeIsRefused) {
  SKIP_WITHOUT_GPU();
  const auto bad = static_cast<fq::ConvBnDType>(7);
  const fq::ActivationLayout l = layout_of({2, 3, 4, false});
  DeviceArray<float> x(l.numel()), y(l.numel());
  DeviceArray<double> stats(4 * l.channels);
  DeviceArray<uint8_t> workspace(fq::cuda::channel_sums_workspace_bytes(l)), mask(fq::mask_bytes(l.numel()));
  fq::ChannelMomentsArgs m;
  m.dtype = bad, m.layout = l, m.input = x.ptr, m.mean = stats.ptr, m.var = stats.ptr + l.channels;
  EXPECT_EQ(fq::cuda::launch_channel_moments(m, workspace.ptr, nullptr), cudaErrorInvalidValue);
  fq::ChannelGradSumsArgs g;
  g.dtype = bad, g.layout = l, g.grad_output = x.ptr, g.mean = stats.ptr, g.sums = stats.ptr;
  EXPECT_EQ(fq::cuda::launch_channel_grad_sums(g, workspace.ptr, nullptr), cudaErrorInvalidValue);
  fq::ConvBnEpilogueArgs e;
  e.dtype = bad, e.layout = l, e.input = x.ptr, e.output = y.ptr, e.relu_mask = mask.ptr, e.coef = stats.ptr;
  EXPECT_EQ(fq::cuda::launch_convbn_epilogue(e, nullptr), cudaErrorInvalidValue);
  fq::ConvBnBackwardArgs b;
  b.dtype = bad, b.layout = l, b.grad_output = x.ptr, b.coef = stats.ptr, b.grad_pre_bn = y.ptr;
  EXPECT_EQ(fq::cuda::launch_convbn_backward(b, nullptr), cudaErrorInvalidValue);
  fq::FoldWeightArgs f;
  f.dtype = bad, f.weight = x.ptr, f.folded = y.ptr, f.scale = stats.ptr, f.channels = 2, f.channel_length = 3;
  EXPECT_EQ(fq::cuda::launch_fold_weight(f, nullptr), cudaErrorInvalidValue);
  fq::WeightGradArgs w;
  w.dtype = bad, w.grad_conv = x.ptr, w.weight = x.ptr, w.grad_weight = y.ptr, w.channels = 2, w.channel_length = 3;
  EXPECT_EQ(fq::cuda::launch_weight_grad(w, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

}  // namespace
