// The CUDA weight abs-max quant-dequant against the CPU reference, bit for bit (scales,
// output and mask), on both paths: one pass (channels contiguous; 1 to 8 channels per block,
// 64 / 128 / 256 threads, blocks striding) and two passes (long runs, channel innermost,
// folded rows, middle axis, more than 65,535 channels); every dtype, both deterministic
// roundings, input and output pointers off 16-byte alignment separately, non-finite and
// all-zero channels, out-of-contract eps. Outputs are poisoned before each launch and the
// memory around them is checked untouched. Stochastic rounding is rejected (no seed).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "fakequant/cuda/weight_quant.h"
#include "fakequant/weight_quant.h"

#include "cuda_test_util.cuh"

namespace fq = fakequant;
using namespace fakequant_test;

namespace {

// The weight in memory: [outer][channels][inner], channel_stride = inner. outer 1: channels
// contiguous (the one-pass candidates); inner 1: channel innermost; both > 1: a middle axis.
struct Layout {
  int64_t outer, channels, inner;
};

// Channels given special contents by `specials` (where they exist): 1 holds a NaN, 2 a -inf,
// 3 the largest finite value, 4 only zeros and the smallest subnormal, 5 only zeros; 0 has a
// -0.0. Channels 1 and 2 get NaN / inf scales (out of contract: poisoned), 4 and 5 tiny or zero
// abs-maxima (scale eps; poisoned when eps is itself out of contract).
template <typename T>
std::vector<T> weight_values(Layout l, uint32_t seed, bool specials) {
  const int64_t n = l.outer * l.channels * l.inner;
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::uniform_real_distribution<float> spread(0.05f, 4.0f);
  std::vector<float> per_channel(l.channels);
  for (auto& s : per_channel) s = spread(rng);
  std::vector<T> x(n);
  for (int64_t i = 0; i < n; ++i) x[i] = fq::from_float<T>(dist(rng) * per_channel[(i / l.inner) % l.channels]);
  if (!specials) return x;
  // Element k of channel c's run in the first row, and every element of channel c.
  const auto at = [&](int64_t c, int64_t k) -> T& { return x[c * l.inner + k % l.inner]; };
  const auto fill = [&](int64_t c, T v) {
    for (int64_t o = 0; o < l.outer; ++o)
      for (int64_t k = 0; k < l.inner; ++k) x[(o * l.channels + c) * l.inner + k] = v;
  };
  const T zero = fq::from_float<T>(0.0f);
  if constexpr (std::is_same_v<T, float>) {
    at(0, 1) = from_bits<T>(0x80000000u);
    if (l.channels > 1) at(1, l.inner / 2) = from_bits<T>(0xFFC01234u);
    if (l.channels > 2) at(2, l.inner - 1) = from_bits<T>(0xFF800000u);
    if (l.channels > 3) at(3, 0) = from_bits<T>(0x7F7FFFFFu);
    if (l.channels > 4) fill(4, zero), at(4, l.inner / 3) = from_bits<T>(0x00000001u);
  } else {
    const bool half = std::is_same_v<T, fq::Half>;
    at(0, 1) = from_bits<T>(0x8000u);
    if (l.channels > 1) at(1, l.inner / 2) = from_bits<T>(half ? 0xFE01u : 0xFFC1u);
    if (l.channels > 2) at(2, l.inner - 1) = from_bits<T>(half ? 0xFC00u : 0xFF80u);
    if (l.channels > 3) at(3, 0) = from_bits<T>(half ? 0x7BFFu : 0x7F7Fu);
    if (l.channels > 4) fill(4, zero), at(4, l.inner / 3) = from_bits<T>(0x0001u);
  }
  if (l.channels > 5) fill(5, zero);
  return x;
}

struct Options {
  bool specials = true;
  bool with_mask = true;
  float eps = fq::kFloat32Eps;
  bool scale_in_input_dtype = false;
};

// GPU and CPU on the same weight. Returns whether the one-pass path was taken.
template <typename T>
bool compare_with_cpu(Layout l, Placement at, int32_t qmin, int32_t qmax, fq::Rounding mode, Options opt = {}) {
  const int64_t n = l.outer * l.channels * l.inner;
  const std::vector<T> x =
      weight_values<T>(l, static_cast<uint32_t>(n * 13 + l.channels + at.in * 3 + at.out), opt.specials);
  fq::WeightAbsMaxArgs a;
  a.dtype = dtype_of<T>();
  a.numel = n;
  a.channels = l.channels;
  a.channel_stride = l.channels > 1 ? l.inner : 1;
  a.quant_min = qmin;
  a.quant_max = qmax;
  a.eps = opt.eps;
  a.rounding = mode;
  a.scale_dtype = opt.scale_in_input_dtype ? a.dtype : fq::DType::kFloat32;

  std::vector<T> y_cpu(n);
  std::vector<uint8_t> m_cpu(fq::mask_bytes(n));
  std::vector<float> s_cpu(l.channels);
  fq::WeightAbsMaxArgs ca = a;
  ca.weight = x.data(), ca.output = y_cpu.data(), ca.mask = m_cpu.data(), ca.scale = s_cpu.data();
  fq::fake_quant_weight_abs_max_cpu(ca);

  DeviceSpan<T> dx(x, at.in), dy(n, at.out);
  DeviceSpan<uint8_t> dm(fq::mask_bytes(n), 0, kMaskPoison);
  DeviceSpan<float> ds(l.channels, 0);
  DeviceSpan<int32_t> dz(std::vector<int32_t>(l.channels, 0));
  fq::WeightAbsMaxArgs ga = a;
  ga.weight = dx.ptr(), ga.output = dy.ptr(), ga.mask = opt.with_mask ? dm.ptr() : nullptr, ga.scale = ds.ptr();
  const bool one_pass = fq::cuda::weight_abs_max_one_pass(ga);
  const auto where = [&] {
    return ::testing::Message() << fq::dtype_name(a.dtype) << " " << l.outer << "x" << l.channels << "x" << l.inner
                                << " offsets=" << at.in << "/" << at.out << " range=[" << qmin << "," << qmax << "] "
                                << fq::rounding_name(mode) << " eps=" << opt.eps << " specials=" << opt.specials
                                << " scale_dtype=" << fq::dtype_name(a.scale_dtype)
                                << (one_pass ? " one pass" : " two passes");
  };
  // The one-pass path needs no zero points; give it none.
  EXPECT_EQ(fq::cuda::launch_fake_quant_weight_abs_max(ga, one_pass ? nullptr : dz.ptr(), nullptr), cudaSuccess)
      << where();
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_TRUE(same_scales(s_cpu, ds.download("scale"))) << where();
  EXPECT_TRUE(same_bits(y_cpu, dy.download("output"))) << where();
  const std::vector<uint8_t> m_gpu = dm.download("mask");
  if (opt.with_mask) {
    EXPECT_TRUE(same_bits(m_cpu, m_gpu)) << where();
  } else {
    EXPECT_TRUE(all_bytes(m_gpu, kMaskPoison)) << where() << ": mask written although null";
  }
  EXPECT_TRUE(same_bits(x, dx.download("weight"))) << where();
  return one_pass;
}

// Every shape with every placement, dtype, rounding and two ranges (narrow 8-bit, full 4-bit).
template <typename T>
void run_full(std::initializer_list<Layout> layouts, bool want_one_pass) {
  for (const Layout& l : layouts)
    for (const Placement at : kPlacements)
      for (const auto& [qmin, qmax] : {std::pair{-127, 127}, {-8, 7}})
        for (const fq::Rounding mode : {fq::Rounding::kHalfEven, fq::Rounding::kHalfAway}) {
          ASSERT_EQ(compare_with_cpu<T>(l, at, qmin, qmax, mode), want_one_pass)
              << l.outer << "x" << l.channels << "x" << l.inner;
          if (::testing::Test::HasFailure()) return;
        }
}

// Larger shapes: each dtype and rounding once, the placements and ranges rotating.
template <typename T>
void run_rotating(std::initializer_list<Layout> layouts, bool want_one_pass) {
  int k = static_cast<int>(sizeof(T));
  for (const Layout& l : layouts)
    for (const fq::Rounding mode : {fq::Rounding::kHalfEven, fq::Rounding::kHalfAway}) {
      const Placement at = kPlacements[k % 4];
      const bool narrow = (k++ / 4) % 2 == 0;
      ASSERT_EQ(compare_with_cpu<T>(l, at, narrow ? -127 : -8, narrow ? 127 : 7, mode), want_one_pass)
          << l.outer << "x" << l.channels << "x" << l.inner;
      if (::testing::Test::HasFailure()) return;
    }
}

void for_each_dtype_full(std::initializer_list<Layout> layouts, bool want_one_pass) {
  run_full<float>(layouts, want_one_pass);
  run_full<fq::Half>(layouts, want_one_pass);
  run_full<fq::BFloat16>(layouts, want_one_pass);
}

// One pass, small channels: 1 to 8 channels in a block (8 per block for odd lengths, 4, 2, 1
// for lengths of 2, 4, 0 mod 8; the last block partial), a tile with a partial mask group.
TEST(WeightAbsMaxCuda, OnePassChannelsPerBlock) {
  SKIP_WITHOUT_GPU();
  for_each_dtype_full({{1, 1, 1}, {1, 2, 3}, {1, 3, 5}, {1, 4, 7}, {1, 5, 9}, {1, 6, 11}, {1, 7, 13},
                              {1, 8, 15}, {1, 9, 1}, {1, 17, 3}, {1, 6, 6}, {1, 5, 12}, {1, 3, 16}, {1, 7, 6}},
                             true);
}

// One pass, longer channels: 64 / 128 / 256 threads, vector staging over several unrolled
// rounds, the tile at the shared-memory limit (fp32: 12,160 elements, and 2 x 6,076), and
// more blocks of channels than a grid of a device with a few multiprocessors has (blocks
// stride; the grid is one-dimensional, so more channels add nothing).
TEST(WeightAbsMaxCuda, OnePassLongChannelsAndManyBlocks) {
  SKIP_WITHOUT_GPU();
  run_full<float>({{1, 64, 147}, {1, 1, 1001}}, true);
  run_full<fq::BFloat16>({{1, 16, 72}}, true);
  run_rotating<float>({{1, 2, 6000}, {1, 1, 12160}, {1, 2, 6076}, {1, 1500, 24}}, true);
  run_rotating<fq::Half>({{1, 2, 6000}, {1, 1, 20000}, {1, 1500, 24}}, true);
  run_rotating<fq::BFloat16>({{1, 3, 9000}, {1, 3001, 1}}, true);
}

// Two passes, short runs (the column kernel): channel innermost (one row, folded rows, rows of
// 256 channels and more, 70,001 channels: a wide grid), middle axis (folded and not).
TEST(WeightAbsMaxCuda, TwoPassColumns) {
  SKIP_WITHOUT_GPU();
  for_each_dtype_full({{3, 40, 1}, {2, 7, 1}, {9, 300, 1}, {30, 4, 5}, {4, 33, 9}, {2, 5, 300}, {3, 2, 1}},
                             false);
  run_rotating<float>({{5000, 3, 1}, {64, 3, 49}, {2, 70001, 1}}, false);
  run_rotating<fq::BFloat16>({{700, 9, 1}, {2, 70001, 1}}, false);
  run_rotating<fq::Half>({{5000, 3, 1}, {64, 3, 49}}, false);
}

// Two passes, long runs (the run kernel): one channel too long for shared memory, contiguous
// channels too long for it, middle axis with runs of one and two chunks, and more runs than
// a grid of a device with a few multiprocessors has blocks (a block then meets several runs,
// of one channel or of several).
TEST(WeightAbsMaxCuda, TwoPassLongRuns) {
  SKIP_WITHOUT_GPU();
  run_full<float>({{2, 3, 1100}}, false);
  run_rotating<float>({{1, 1, 12289}, {1, 2, 12168}, {2, 2, 8200}, {22, 3, 1024}, {10, 5, 1024}}, false);
  run_rotating<fq::Half>({{1, 1, 24577}, {2, 3, 1100}, {2, 2, 8200}}, false);
  run_rotating<fq::BFloat16>({{1, 2, 24400}, {3, 2, 1030}, {22, 3, 1024}}, false);
}

// Without a mask (null): output and scales only. Both paths.
// Scales rounded to the input's dtype before the eps floor (torchao's per-group scales, eps
// the dtype's smallest normal): both paths, both roundings, with the special values.
TEST(WeightAbsMaxCuda, ScalesInTheInputDtype) {
  SKIP_WITHOUT_GPU();
  Options half, bf16;
  half.scale_in_input_dtype = bf16.scale_in_input_dtype = true;
  half.eps = 0x1p-14f;
  bf16.eps = 0x1p-126f;
  for (const fq::Rounding mode : {fq::Rounding::kHalfEven, fq::Rounding::kHalfAway}) {
    for (const Layout& l : {Layout{1, 64, 32}, Layout{1, 7, 128}}) {
      ASSERT_TRUE(compare_with_cpu<fq::Half>(l, kPlacements[1], -8, 7, mode, half));
      ASSERT_TRUE(compare_with_cpu<fq::BFloat16>(l, kPlacements[2], -2, 1, mode, bf16));
    }
    ASSERT_FALSE(compare_with_cpu<fq::Half>({30, 4, 5}, kPlacements[0], -128, 127, mode, half));
    ASSERT_FALSE(compare_with_cpu<fq::BFloat16>({4, 1, 40000}, kPlacements[3], -8, 7, mode, bf16));
  }
}

TEST(WeightAbsMaxCuda, WithoutMaskWritesOutputAndScalesOnly) {
  SKIP_WITHOUT_GPU();
  Options opt;
  opt.with_mask = false;
  for (const Layout l : {Layout{1, 7, 13}, Layout{1, 2, 6000}, Layout{4, 33, 9}, Layout{2, 3, 1100}}) {
    compare_with_cpu<float>(l, {0, 0}, -127, 127, fq::Rounding::kHalfEven, opt);
    compare_with_cpu<fq::BFloat16>(l, {1, 0}, -128, 127, fq::Rounding::kHalfAway, opt);
  }
}

// eps out of contract (0, a subnormal): all-zero or subnormal-only channels get a scale that is
// not a positive normal float, and their outputs are poisoned, on both paths. Also a weight
// without special values, and eps above some channels' abs-max.
TEST(WeightAbsMaxCuda, EpsOutOfContractAndLargeEps) {
  SKIP_WITHOUT_GPU();
  for (const float eps : {0.0f, 1e-39f, 0.5f}) {
    Options opt;
    opt.eps = eps;
    for (const Layout l : {Layout{1, 7, 13}, Layout{1, 9, 8}, Layout{3, 8, 1}, Layout{2, 6, 1100}}) {
      compare_with_cpu<float>(l, {0, 0}, -127, 127, fq::Rounding::kHalfEven, opt);
      compare_with_cpu<fq::Half>(l, {0, 1}, -8, 7, fq::Rounding::kHalfAway, opt);
      opt.specials = false;
      compare_with_cpu<fq::BFloat16>(l, {1, 0}, -128, 127, fq::Rounding::kHalfEven, opt);
      opt.specials = true;
    }
  }
}

// What the poison is, written out: a channel with a NaN gets a NaN scale, one with -inf an
// infinite scale; all their outputs are NaN (fp32 0x7FC00000) with mask 0; an all-zero channel
// has scale eps and zeros out, mask 1.
TEST(WeightAbsMaxCuda, NonFiniteChannelsArePoisoned) {
  SKIP_WITHOUT_GPU();
  const Layout l{1, 6, 9};
  const int64_t n = 54;
  const std::vector<float> x = weight_values<float>(l, 3, true);
  for (const bool two_pass : {false, true}) {
    fq::WeightAbsMaxArgs a;
    a.numel = n, a.channels = 6, a.channel_stride = 9;
    // The same memory read as 9 rows of 6 channels (channel innermost) takes two passes.
    if (two_pass) a.channel_stride = 1;
    DeviceSpan<float> dx(x), dy(n, 0), ds(6, 0);
    DeviceSpan<uint8_t> dm(fq::mask_bytes(n), 0, kMaskPoison);
    DeviceSpan<int32_t> dz(std::vector<int32_t>(6, 0));
    a.weight = dx.ptr(), a.output = dy.ptr(), a.mask = dm.ptr(), a.scale = ds.ptr();
    ASSERT_EQ(fq::cuda::weight_abs_max_one_pass(a), !two_pass);
    ASSERT_CUDA(fq::cuda::launch_fake_quant_weight_abs_max(a, dz.ptr(), nullptr));
    const std::vector<float> s = ds.download("scale"), y = dy.download("output");
    const std::vector<uint8_t> m = dm.download("mask");
    const auto channel_of = [&](int64_t i) { return two_pass ? i % 6 : i / 9; };
    for (int64_t c = 0; c < 6; ++c) {
      float absmax = 0.0f;
      for (int64_t i = 0; i < n; ++i) {
        if (channel_of(i) == c) absmax = std::isnan(x[i]) || std::fabs(x[i]) > absmax ? std::fabs(x[i]) : absmax;
      }
      const float want = std::max(absmax / 127.0f, fq::kFloat32Eps);
      if (std::isnan(absmax)) {
        EXPECT_TRUE(std::isnan(s[c])) << c;
      } else {
        EXPECT_EQ(s[c], want) << c;
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      const int64_t c = channel_of(i);
      const bool in_mask = (m[i / 8] >> (i % 8)) & 1;
      if (!std::isfinite(s[c])) {
        EXPECT_EQ(bits_of(y[i]), 0x7FC00000u) << i;
        EXPECT_FALSE(in_mask) << i;
      } else {
        const float q = std::nearbyint(x[i] * (1.0f / s[c]));
        EXPECT_EQ(y[i], q * s[c]) << i;
        EXPECT_TRUE(in_mask) << i;  // |x| <= abs-max: always inside [-127, 127]
      }
    }
    if (two_pass) continue;
    EXPECT_TRUE(std::isnan(s[1]));
    EXPECT_TRUE(std::isinf(s[2]));
    EXPECT_EQ(s[5], fq::kFloat32Eps);
  }
}

// WeightAbsMaxArgs has no seed: stochastic rounding is an invalid value on both paths, and
// nothing is written (scales, output, mask keep their poison). Same for unknown roundings.
TEST(WeightAbsMaxCuda, StochasticRoundingIsRejected) {
  SKIP_WITHOUT_GPU();
  for (const Layout l : {Layout{1, 8, 9}, Layout{1, 2, 6000}, Layout{4, 33, 9}, Layout{2, 3, 1100}, Layout{1, 1, 12289}}) {
    for (const fq::Rounding mode : {fq::Rounding::kStochastic, static_cast<fq::Rounding>(3)}) {
      const int64_t n = l.outer * l.channels * l.inner;
      const std::vector<float> x = weight_values<float>(l, 5, false);
      DeviceSpan<float> dx(x), dy(n, 0), ds(l.channels, 0);
      DeviceSpan<uint8_t> dm(fq::mask_bytes(n), 0, kMaskPoison);
      DeviceSpan<int32_t> dz(std::vector<int32_t>(l.channels, 0));
      fq::WeightAbsMaxArgs a;
      a.weight = dx.ptr(), a.output = dy.ptr(), a.mask = dm.ptr(), a.scale = ds.ptr();
      a.numel = n, a.channels = l.channels, a.channel_stride = l.inner, a.rounding = mode;
      EXPECT_EQ(fq::cuda::launch_fake_quant_weight_abs_max(a, dz.ptr(), nullptr), cudaErrorInvalidValue)
          << l.outer << "x" << l.channels << "x" << l.inner
          << (fq::cuda::weight_abs_max_one_pass(a) ? " one pass" : " two passes");
      ASSERT_CUDA(cudaDeviceSynchronize());
      EXPECT_TRUE(all_bytes(ds.download("scale"), kPoison)) << "scales written";
      EXPECT_TRUE(all_bytes(dy.download("output"), kPoison)) << "output written";
      EXPECT_TRUE(all_bytes(dm.download("mask"), kMaskPoison)) << "mask written";
    }
  }
  // Empty weights too (they would otherwise write eps scales).
  DeviceSpan<float> ds(3, 0);
  fq::WeightAbsMaxArgs a;
  a.numel = 0, a.channels = 3, a.scale = ds.ptr(), a.rounding = fq::Rounding::kStochastic;
  EXPECT_EQ(fq::cuda::launch_fake_quant_weight_abs_max(a, nullptr, nullptr), cudaErrorInvalidValue);
  EXPECT_TRUE(all_bytes(ds.download("scale"), kPoison));
}

// Bad arguments are errors that write nothing: zero points missing on the two-pass path, an
// unknown dtype, numel < 0, channel_stride <= 0 with several channels.
TEST(WeightAbsMaxCuda, InvalidArgumentsWriteNothing) {
  SKIP_WITHOUT_GPU();
  const Layout l{4, 33, 9};
  const int64_t n = l.outer * l.channels * l.inner;
  const std::vector<float> x = weight_values<float>(l, 6, false);
  DeviceSpan<float> dx(x), dy(n, 0), ds(l.channels, 0);
  DeviceSpan<uint8_t> dm(fq::mask_bytes(n), 0, kMaskPoison);
  fq::WeightAbsMaxArgs a;
  a.weight = dx.ptr(), a.output = dy.ptr(), a.mask = dm.ptr(), a.scale = ds.ptr();
  a.numel = n, a.channels = l.channels, a.channel_stride = l.inner;
  ASSERT_FALSE(fq::cuda::weight_abs_max_one_pass(a));
  EXPECT_EQ(fq::cuda::launch_fake_quant_weight_abs_max(a, nullptr, nullptr), cudaErrorInvalidValue);
  DeviceSpan<int32_t> dz(std::vector<int32_t>(l.channels, 0));
  fq::WeightAbsMaxArgs b = a;
  b.dtype = static_cast<fq::DType>(5);
  EXPECT_EQ(fq::cuda::launch_fake_quant_weight_abs_max(b, dz.ptr(), nullptr), cudaErrorInvalidValue);
  b = a;
  b.numel = -1;
  EXPECT_EQ(fq::cuda::launch_fake_quant_weight_abs_max(b, dz.ptr(), nullptr), cudaErrorInvalidValue);
  b = a;
  b.channel_stride = 0;
  EXPECT_EQ(fq::cuda::launch_fake_quant_weight_abs_max(b, dz.ptr(), nullptr), cudaErrorInvalidValue);
  ASSERT_CUDA(cudaDeviceSynchronize());
  EXPECT_TRUE(all_bytes(ds.download("scale"), kPoison));
  EXPECT_TRUE(all_bytes(dy.download("output"), kPoison));
  EXPECT_TRUE(all_bytes(dm.download("mask"), kMaskPoison));
  // No channels: nothing to do.
  b = a;
  b.channels = 0;
  EXPECT_EQ(fq::cuda::launch_fake_quant_weight_abs_max(b, nullptr, nullptr), cudaSuccess);
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
  // The tile limit, kWeightTileBytes = 48,640 bytes: 12,160 fp32 elements in one channel.
  a.dtype = fq::DType::kFloat32;
  a.numel = 3 * 12160, a.channels = 3, a.channel_stride = 12160;
  EXPECT_TRUE(fq::cuda::weight_abs_max_one_pass(a));
  a.numel = 3 * 12168, a.channel_stride = 12168;
  EXPECT_FALSE(fq::cuda::weight_abs_max_one_pass(a));
  // Channels of 4 mod 8 elements go two to a block: 2 x 6,076 fits, 2 x 6,084 does not ...
  a.numel = 3 * 6076, a.channel_stride = 6076;
  EXPECT_TRUE(fq::cuda::weight_abs_max_one_pass(a));
  a.numel = 3 * 6084, a.channel_stride = 6084;
  EXPECT_FALSE(fq::cuda::weight_abs_max_one_pass(a));
  // ... unless there is one channel only.
  a.numel = 6084, a.channels = 1, a.channel_stride = 1;
  EXPECT_TRUE(fq::cuda::weight_abs_max_one_pass(a));
  a.channels = 0;
  EXPECT_FALSE(fq::cuda::weight_abs_max_one_pass(a));
}

TEST(WeightAbsMaxCuda, EmptyWeightWritesEpsScales) {
  SKIP_WITHOUT_GPU();
  DeviceSpan<float> ds(5, 0);
  DeviceSpan<int32_t> dz(std::vector<int32_t>(5, 0));
  fq::WeightAbsMaxArgs a;
  a.numel = 0, a.channels = 5, a.channel_stride = 0, a.scale = ds.ptr(), a.eps = 0.25f;
  ASSERT_CUDA(fq::cuda::launch_fake_quant_weight_abs_max(a, dz.ptr(), nullptr));
  for (float v : ds.download("scale")) EXPECT_EQ(v, 0.25f);
}

}  // namespace
