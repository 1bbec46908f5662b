// The CUDA block-scaled fake quantization against the CPU reference, bit for bit: outputs
// (any NaN for a NaN computed in float32: docs/numerics.md makes no promise about its payload),
// masks, scales (likewise), zero points and the tensor abs-max. Every rule with every element
// format it takes, the three dtypes, and the three kernels of the launcher: aligned tiles of at
// most 2,048 elements (1 x 16 ... 1 x 256, full rows, 16 x 16), one tile over the tensor, and the
// generic kernel (unaligned rows or tiles, wide rows, 128 x 128 with partial edge tiles, windows
// of tile columns whose mask bytes straddle tiles and rows). Special tiles: a NaN, an inf, all
// zeros, tiny values, the largest finite value, exact ties. Stochastic rounding, pointers off
// 16-byte alignment, grids that stride, arguments rejected before anything is written.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "fakequant/block_quant.h"
#include "fakequant/cuda/block_quant.h"

#include "cuda_test_util.cuh"

namespace fq = fakequant;
using namespace fakequant_test;

namespace {

using Rule = fq::BlockScaleRule;
using Format = fq::BlockFormat;

struct Shape {
  int64_t rows, cols, block_rows, block_cols;
};

struct Case {
  Shape shape;
  Rule rule;
  Format format;
  bool tensor_scale = false;
  fq::Rounding rounding = fq::Rounding::kHalfEven;
  int64_t seed0 = 0, seed1 = 0;  // stochastic rounding
  Placement at = {0, 0};
  bool with_mask = true;
  bool with_zero_point = true;  // where the rule is an int rule; float rules get one too when set
  bool specials = true;
  int32_t quant_min = -8, quant_max = 7;
};

// Values of tile t: tile 0 holds a NaN, 1 a -inf, 2 only zeros (some -0), 3 tiny values (below
// 2^-24), 4 the dtype's largest finite value, 5 multiples of 1/4 in [-6, 6] (ties of the E2M1
// grids at power-of-two scales); the others normal values of a spread drawn per tile from
// 1e-3 to 1e2 (so that scales differ), with some exact zeros.
template <typename T>
std::vector<T> block_values(const Shape& s, uint32_t seed, bool specials) {
  const int64_t n = s.rows * s.cols;
  const int64_t gcols = (s.cols + s.block_cols - 1) / s.block_cols;
  const int64_t tiles = ((s.rows + s.block_rows - 1) / s.block_rows) * gcols;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> log_spread(-3.0f, 2.0f);
  std::vector<float> spread(static_cast<size_t>(tiles));
  for (float& v : spread) v = std::pow(10.0f, log_spread(rng));
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::uniform_int_distribution<int> quarter(-24, 24);
  const float largest =
      std::is_same_v<T, float> ? 3.4028235e38f : std::is_same_v<T, fq::Half> ? 65504.0f : 3.3895314e38f;
  std::vector<float> f(static_cast<size_t>(n));
  std::vector<int64_t> first_of(static_cast<size_t>(tiles), -1);
  for (int64_t r = 0; r < s.rows; ++r) {
    for (int64_t c = 0; c < s.cols; ++c) {
      const int64_t i = r * s.cols + c;
      const int64_t t = (r / s.block_rows) * gcols + c / s.block_cols;
      if (first_of[t] < 0) first_of[t] = i;
      float v = dist(rng) * spread[t];
      if (rng() % 16 == 0) v = 0.0f;
      if (specials && t == 2) v = rng() % 2 ? 0.0f : -0.0f;
      if (specials && t == 3) v = dist(rng) * 1e-8f;
      if (specials && t == 5) v = 0.25f * static_cast<float>(quarter(rng));
      f[i] = v;
    }
  }
  if (specials) {
    const auto put = [&](int64_t t, float v) {
      if (t < tiles) f[first_of[t]] = v;
    };
    put(0, NAN);
    put(1, -INFINITY);
    put(4, largest);
  }
  std::vector<T> x(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) x[i] = fq::from_float<T>(f[i]);
  return x;
}

// Outputs equal bit for bit, except that float32 NaNs only have to be NaN (computed NaNs have
// no promised payload; fp16 / bf16 store the canonical NaN on every backend).
template <typename T>
::testing::AssertionResult same_outputs(const std::vector<T>& want, const std::vector<T>& got) {
  if constexpr (std::is_same_v<T, float>) {
    return same_scales(want, got);
  } else {
    return same_bits(want, got);
  }
}

const char* rule_label(Rule r) {
  static const char* names[] = {"int_affine", "int_affine_float_zp", "int_modelopt", "fp8_torchao", "fp8_modelopt",
                                "mx_floor",   "mx_ceil",             "mx_even",      "mx_rceil",    "nvfp4_torchao",
                                "nvfp4_modelopt"};
  return names[static_cast<int>(r)];
}

template <typename T>
void check_case(const Case& c) {
  const Shape& s = c.shape;
  const int64_t n = s.rows * s.cols;
  const std::vector<T> x = block_values<T>(
      s, static_cast<uint32_t>(n * 31 + s.block_rows * 7 + s.block_cols + static_cast<int>(c.rule) * 3), c.specials);
  fq::BlockQuantArgs a;
  a.dtype = dtype_of<T>();
  a.rows = s.rows;
  a.cols = s.cols;
  a.block_rows = s.block_rows;
  a.block_cols = s.block_cols;
  a.format = c.format;
  a.rule = c.rule;
  a.quant_min = c.quant_min;
  a.quant_max = c.quant_max;
  a.tensor_scale = c.tensor_scale;
  a.rounding = c.rounding;
  const int64_t seed_words[2] = {c.seed0, c.seed1};
  const bool stochastic = c.rounding == fq::Rounding::kStochastic;
  const bool needs_amax = fq::block_quant_needs_tensor_amax(a);
  const int64_t tiles = fq::block_grid_rows(a) * fq::block_grid_cols(a);
  const bool with_zp = c.with_zero_point;

  std::vector<T> y_cpu(static_cast<size_t>(n));
  std::vector<uint8_t> m_cpu(static_cast<size_t>(fq::mask_bytes(n)), 0);
  std::vector<float> s_cpu(static_cast<size_t>(tiles)), amax_cpu(1);
  std::vector<int32_t> z_cpu(static_cast<size_t>(tiles));
  fq::BlockQuantArgs ca = a;
  ca.input = x.data(), ca.output = y_cpu.data(), ca.mask = m_cpu.data(), ca.scale = s_cpu.data();
  ca.zero_point = with_zp ? z_cpu.data() : nullptr;
  ca.tensor_amax = needs_amax ? amax_cpu.data() : nullptr;
  ca.seed = stochastic ? seed_words : nullptr;
  fq::block_quant_cpu(ca);

  DeviceSpan<T> dx(x, c.at.in), dy(n, c.at.out);
  DeviceSpan<uint8_t> dm(fq::mask_bytes(n), 0, kMaskPoison);
  DeviceSpan<float> ds(tiles, 0), damax(1, 0);
  DeviceSpan<int32_t> dz(tiles, 0);
  DeviceSpan<int64_t> dseed(std::vector<int64_t>(seed_words, seed_words + 2));
  fq::BlockQuantArgs ga = a;
  ga.input = dx.ptr(), ga.output = dy.ptr(), ga.mask = c.with_mask ? dm.ptr() : nullptr, ga.scale = ds.ptr();
  ga.zero_point = with_zp ? dz.ptr() : nullptr;
  ga.tensor_amax = needs_amax ? damax.ptr() : nullptr;
  ga.seed = stochastic ? dseed.ptr() : nullptr;
  const auto where = [&] {
    ::testing::Message m;
    m << fq::dtype_name(a.dtype) << " " << s.rows << "x" << s.cols << " tiles " << s.block_rows << "x" << s.block_cols
      << " " << rule_label(c.rule) << " format " << static_cast<int>(c.format) << " " << fq::rounding_name(c.rounding)
      << " tensor_scale=" << c.tensor_scale << " offsets=" << c.at.in << "/" << c.at.out << " mask=" << c.with_mask
      << " zp=" << with_zp << " range=[" << c.quant_min << "," << c.quant_max << "]";
    if (stochastic) m << " seed=" << c.seed0 << "," << c.seed1;
    return m;
  };
  ASSERT_CUDA(fq::cuda::launch_block_quant(ga, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  ASSERT_TRUE(same_outputs(y_cpu, dy.download("output"))) << where();
  ASSERT_TRUE(mask_as_launched(m_cpu, dm.download("mask"), c.with_mask)) << where();
  ASSERT_TRUE(same_scales(s_cpu, ds.download("scale"))) << where();
  const std::vector<int32_t> z_gpu = dz.download("zero_point");
  if (with_zp) {
    ASSERT_TRUE(same_bits(z_cpu, z_gpu)) << where();
  } else {
    ASSERT_TRUE(all_bytes(z_gpu, kPoison)) << where() << ": zero points written although null";
  }
  const std::vector<float> amax_gpu = damax.download("tensor_amax");
  if (needs_amax) {
    ASSERT_TRUE(same_bits(amax_cpu, amax_gpu)) << where();
  } else {
    ASSERT_TRUE(all_bytes(amax_gpu, kPoison)) << where() << ": tensor_amax written although not needed";
  }
  ASSERT_TRUE(same_bits(x, dx.download("input"))) << where();
}

template <typename F>
void for_each_dtype(F&& f) {
  f(float{});
  if (::testing::Test::HasFatalFailure()) return;
  f(fq::Half{});
  if (::testing::Test::HasFatalFailure()) return;
  f(fq::BFloat16{});
}

// A rule with each element format it takes (NVFP4 with and without the tensor scale).
struct RuleFormat {
  Rule rule;
  Format format;
  bool tensor_scale;
};

std::vector<RuleFormat> every_rule_and_format() {
  std::vector<RuleFormat> v = {
      {Rule::kIntAffine, Format::kInt, false},   {Rule::kIntAffineFloatZp, Format::kInt, false},
      {Rule::kIntModelOpt, Format::kInt, false}, {Rule::kFp8Torchao, Format::kE4M3, false},
      {Rule::kFp8Torchao, Format::kE5M2, false}, {Rule::kFp8ModelOpt, Format::kE4M3, false},
      {Rule::kFp8ModelOpt, Format::kE5M2, false}};
  for (Rule r : {Rule::kMxFloor, Rule::kMxCeil, Rule::kMxEven, Rule::kMxRceil}) {
    for (Format f : {Format::kE4M3, Format::kE5M2, Format::kE3M2, Format::kE2M3, Format::kE2M1}) {
      v.push_back({r, f, false});
    }
  }
  for (Rule r : {Rule::kNvfp4Torchao, Rule::kNvfp4ModelOpt}) {
    v.push_back({r, Format::kE2M1, false});
    v.push_back({r, Format::kE2M1, true});
  }
  return v;
}

// Integer ranges that the rule accepts: ModelOpt's is symmetric.
void set_range(Case& c, int k) {
  if (c.rule == Rule::kIntModelOpt) {
    c.quant_min = k % 2 ? -127 : -8, c.quant_max = k % 2 ? 127 : 7;
  } else if (fq::block_rule_is_int(c.rule)) {
    c.quant_min = k % 2 ? -128 : 0, c.quant_max = k % 2 ? 127 : 15;
  }
}

// Checks the cases in order on dtype T, up to the first fatal failure.
template <typename T>
void check_cases(const std::vector<Case>& cases) {
  for (const Case& c : cases) {
    check_case<T>(c);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

void check_cases_every_dtype(const std::vector<Case>& cases) {
  for_each_dtype([&](auto t) { check_cases<decltype(t)>(cases); });
}

// Every rule and format on every shape; with away_too the float rules again with kHalfAway.
std::vector<Case> rule_cases(const std::vector<Shape>& shapes, bool away_too) {
  std::vector<Case> cases;
  int k = 0;
  for (const RuleFormat& rf : every_rule_and_format()) {
    for (const Shape& s : shapes) {
      Case c{s, rf.rule, rf.format, rf.tensor_scale};
      set_range(c, k++);
      cases.push_back(c);
      if (away_too && !fq::block_rule_is_int(rf.rule)) {
        c.rounding = fq::Rounding::kHalfAway;
        cases.push_back(c);
      }
    }
  }
  return cases;
}

// Every rule and format on each kernel: aligned 1 x 32 tiles and 16 x 16 tiles with partial
// edge tiles, full 40-column rows (the tiles kernel), unaligned 1 x 16 tiles (generic), and a
// tile over the whole tensor (its own kernel for the abs-max rules, generic for min/max).
TEST(BlockQuantCuda, EveryRuleAndFormat) {
  SKIP_WITHOUT_GPU();
  const std::vector<Shape> shapes = {{6, 64, 1, 32}, {20, 24, 16, 16}, {9, 40, 1, 40}, {5, 37, 1, 16}, {3, 5, 4, 8}};
  check_cases_every_dtype(rule_cases(shapes, false));
}

TEST(BlockQuantCuda, HalfAwayRounding) {
  SKIP_WITHOUT_GPU();
  const std::vector<Shape> shapes = {{4, 64, 1, 16}, {7, 13, 2, 4}, {5, 9, 8, 16}};
  check_cases<float>(rule_cases(shapes, true));
  check_cases<fq::BFloat16>(rule_cases({{3, 32, 1, 32}}, true));
}

// Tile shapes for four rules (abs-max MX, min/max int, NVFP4 with the tensor abs-max pass, FP8
// per row): 1 x 16 ... 1 x 256 and full rows (aligned: the tiles kernel, one thread a mask byte;
// 1 x 2048 + 8 and 1 x 4096: the generic kernel), block_cols beyond cols, 2-D tiles aligned or
// not, 128 x 128 with partial edge tiles, odd sizes (cols not a multiple of 8, rows * cols
// neither), single elements, and tiles over the whole tensor.
TEST(BlockQuantCuda, TileShapes) {
  SKIP_WITHOUT_GPU();
  const std::vector<Shape> shapes = {
      {4, 256, 1, 16},   {4, 256, 1, 32},  {4, 256, 1, 64},   {4, 256, 1, 128}, {4, 256, 1, 256}, {4, 256, 1, 300},
      {3, 1000, 1, 1000}, {3, 1000, 1, 128}, {2, 2056, 1, 2056}, {2, 4096, 1, 4096}, {40, 48, 16, 16}, {40, 48, 8, 8},
      {40, 48, 3, 8},    {33, 264, 1, 24}, {200, 136, 128, 128}, {7, 37, 1, 16},  {7, 37, 2, 3},    {7, 37, 1, 1},
      {7, 37, 3, 37},    {5, 13, 1, 32},   {9, 7, 2, 2},      {9, 7, 1, 8},     {1, 1, 1, 32},    {13, 8, 1, 8},
      {17, 19, 32, 32},  {16, 64, 16, 64}, {1, 3, 1, 3},      {3, 1, 2, 1},     {6, 20, 1, 20}};
  const RuleFormat rules[] = {{Rule::kMxFloor, Format::kE2M1, false},
                              {Rule::kIntAffine, Format::kInt, false},
                              {Rule::kNvfp4Torchao, Format::kE2M1, true},
                              {Rule::kFp8Torchao, Format::kE4M3, false}};
  std::vector<Case> cases;
  int k = 0;
  for (const Shape& s : shapes) {
    for (const RuleFormat& rf : rules) {
      cases.push_back({s, rf.rule, rf.format, rf.tensor_scale});
      set_range(cases.back(), k++);
    }
  }
  check_cases_every_dtype(cases);
}

// The generic kernel with more tiles in a chunk than its transform cache holds: windows of tile
// columns. Unaligned tiles and rows: mask bytes whose elements fall in the next window's tiles
// (widths 1, 3, 8) and wrap into the next row, of the same band or the next (2 x 1 tiles, four
// bands a chunk); aligned tall tiles (257 x 8: no straddling, 769 tile columns).
TEST(BlockQuantCuda, GenericWindows) {
  SKIP_WITHOUT_GPU();
  const std::vector<Shape> shapes = {
      {3, 8001, 1, 8}, {2, 2001, 1, 1}, {2, 2999, 1, 3}, {5, 1001, 2, 1}, {9, 1003, 4, 1}};
  std::vector<Case> cases;
  for (const Shape& s : shapes) {
    for (Rule r : {Rule::kMxEven, Rule::kIntAffineFloatZp}) {
      cases.push_back({s, r, r == Rule::kMxEven ? Format::kE3M2 : Format::kInt});
      set_range(cases.back(), 0);
    }
  }
  check_cases_every_dtype(cases);
  check_case<float>({{257, 8 * 769, 257, 8}, Rule::kMxFloor, Format::kE4M3});
}

// 16-byte alignment: input and output off it, separately and together, on each kernel.
TEST(BlockQuantCuda, MisalignedPointers) {
  SKIP_WITHOUT_GPU();
  const std::vector<Shape> shapes = {{4, 64, 1, 32}, {5, 37, 1, 16}, {6, 10, 8, 16}, {3, 100, 2, 4}};
  std::vector<Case> cases;
  for (const Shape& s : shapes) {
    for (const Placement at : kPlacements) {
      for (Rule r : {Rule::kMxRceil, Rule::kIntAffine}) {
        cases.push_back({s, r, r == Rule::kMxRceil ? Format::kE2M3 : Format::kInt});
        set_range(cases.back(), 1);
        cases.back().at = at;
      }
    }
  }
  check_cases_every_dtype(cases);
}

// Stochastic rounding, on each kernel, two seeds (the second with high words set): the same
// Philox words as the CPU reference, element i taking word i % 4 of quad i / 4.
TEST(BlockQuantCuda, StochasticRounding) {
  SKIP_WITHOUT_GPU();
  const std::vector<Shape> shapes = {
      {8, 128, 1, 32}, {7, 37, 1, 16}, {5, 40, 5, 40}, {3, 2999, 1, 3}, {20, 24, 16, 16}};
  const RuleFormat rules[] = {{Rule::kMxFloor, Format::kE2M1, false},
                              {Rule::kNvfp4ModelOpt, Format::kE2M1, true},
                              {Rule::kFp8ModelOpt, Format::kE5M2, false}};
  std::vector<Case> cases;
  for (const Shape& s : shapes) {
    for (const RuleFormat& rf : rules) {
      for (const auto& [s0, s1] : {std::pair<int64_t, int64_t>{42, 7}, {-3, int64_t{1} << 40}}) {
        cases.push_back({s, rf.rule, rf.format, rf.tensor_scale, fq::Rounding::kStochastic, s0, s1});
      }
    }
  }
  check_cases_every_dtype(cases);
}

// More work than the grid holds on the emulated devices with few multiprocessors: 6,400 tiles of
// 1 x 32 (the tiles kernel), 100 chunks of 8 rows (generic), 300,003 elements in one tile.
TEST(BlockQuantCuda, GridsStride) {
  SKIP_WITHOUT_GPU();
  check_case<fq::BFloat16>({{200, 1024, 1, 32}, Rule::kMxCeil, Format::kE4M3});
  check_case<float>({{800, 37, 1, 16}, Rule::kNvfp4Torchao, Format::kE2M1, true});
  check_case<fq::Half>({{3, 100001, 3, 100001}, Rule::kFp8Torchao, Format::kE4M3});
  check_case<float>({{100001, 3, 100001, 3}, Rule::kFp8ModelOpt, Format::kE5M2});
}

// No mask (nothing written there), no zero point for an int rule, a zero point for float rules
// (zeros, as the CPU writes), no special values.
TEST(BlockQuantCuda, OptionalBuffers) {
  SKIP_WITHOUT_GPU();
  for (const Shape& s : {Shape{4, 64, 1, 32}, Shape{5, 37, 1, 16}, Shape{3, 5, 4, 8}}) {
    Case c{s, Rule::kIntAffine, Format::kInt};
    set_range(c, 0);
    c.with_mask = false;
    c.with_zero_point = false;
    check_case<float>(c);
    c.specials = false;
    c.with_mask = true;
    check_case<fq::Half>(c);
    check_case<fq::BFloat16>({s, Rule::kMxFloor, Format::kE2M1});
    Case f{s, Rule::kFp8ModelOpt, Format::kE4M3};
    f.with_zero_point = true;
    f.with_mask = false;
    check_case<float>(f);
  }
}

// A tensor_amax given where the rule does not read it is left alone; rejected arguments and
// empty tensors write nothing (every buffer poisoned and checked).
TEST(BlockQuantCuda, RejectedArgumentsAndEmptyTensorsWriteNothing) {
  SKIP_WITHOUT_GPU();
  const int64_t rows = 4, cols = 64, n = rows * cols;
  const std::vector<float> x = block_values<float>({rows, cols, 1, 32}, 5u, false);
  DeviceSpan<float> dx(x), dy(n, 0), ds(16, 0), damax(1, 0);
  DeviceSpan<uint8_t> dm(fq::mask_bytes(n), 0, kMaskPoison);
  DeviceSpan<int32_t> dz(16, 0);
  DeviceSpan<int64_t> dseed(std::vector<int64_t>{1, 2});
  fq::BlockQuantArgs good;
  good.rows = rows, good.cols = cols, good.block_rows = 1, good.block_cols = 32;
  good.format = Format::kE2M1, good.rule = Rule::kMxFloor;
  good.input = dx.ptr(), good.output = dy.ptr(), good.mask = dm.ptr(), good.scale = ds.ptr();
  good.zero_point = dz.ptr(), good.tensor_amax = damax.ptr();
  struct Bad {
    const char* what;
    void (*apply)(fq::BlockQuantArgs&);
  };
  const Bad bad[] = {
      {"dtype", [](fq::BlockQuantArgs& a) { a.dtype = static_cast<fq::DType>(7); }},
      {"rounding", [](fq::BlockQuantArgs& a) { a.rounding = static_cast<fq::Rounding>(9); }},
      {"negative rows", [](fq::BlockQuantArgs& a) { a.rows = -4; }},
      {"zero block", [](fq::BlockQuantArgs& a) { a.block_rows = 0; }},
      {"rule", [](fq::BlockQuantArgs& a) { a.rule = static_cast<Rule>(12); }},
      {"format", [](fq::BlockQuantArgs& a) { a.format = Format::kInt; }},
      {"stochastic without seed",
       [](fq::BlockQuantArgs& a) { a.rounding = fq::Rounding::kStochastic, a.seed = nullptr; }},
      {"int stochastic",
       [](fq::BlockQuantArgs& a) {
         a.rule = Rule::kIntModelOpt, a.format = Format::kInt, a.rounding = fq::Rounding::kStochastic;
       }},
      {"int range",
       [](fq::BlockQuantArgs& a) { a.rule = Rule::kIntAffine, a.format = Format::kInt, a.quant_max = -200; }},
      {"amax bounds", [](fq::BlockQuantArgs& a) { a.amax_lower = 1.0f, a.amax_upper = 0.0f; }},
      {"no scale", [](fq::BlockQuantArgs& a) { a.scale = nullptr; }},
      {"no output", [](fq::BlockQuantArgs& a) { a.output = nullptr; }},
      {"no tensor_amax",
       [](fq::BlockQuantArgs& a) { a.rule = Rule::kNvfp4Torchao, a.tensor_scale = true, a.tensor_amax = nullptr; }},
  };
  const auto untouched = [&](const char* what) {
    EXPECT_TRUE(all_bytes(dy.download("output"), kPoison)) << what;
    EXPECT_TRUE(all_bytes(dm.download("mask"), kMaskPoison)) << what;
    EXPECT_TRUE(all_bytes(ds.download("scale"), kPoison)) << what;
    EXPECT_TRUE(all_bytes(dz.download("zero_point"), kPoison)) << what;
    EXPECT_TRUE(all_bytes(damax.download("tensor_amax"), kPoison)) << what;
  };
  for (const Bad& b : bad) {
    fq::BlockQuantArgs a = good;
    a.seed = dseed.ptr();  // read for stochastic rounding only
    b.apply(a);
    EXPECT_EQ(fq::cuda::launch_block_quant(a, nullptr), cudaErrorInvalidValue) << b.what;
    ASSERT_CUDA(cudaDeviceSynchronize());
    untouched(b.what);
  }
  for (const auto& [r, c] : {std::pair<int64_t, int64_t>{0, 64}, {4, 0}, {0, 0}}) {
    fq::BlockQuantArgs a = good;
    a.rows = r, a.cols = c;
    a.rule = Rule::kNvfp4ModelOpt, a.tensor_scale = true;  // a rule that reads tensor_amax
    EXPECT_EQ(fq::cuda::launch_block_quant(a, nullptr), cudaSuccess) << r << "x" << c;
    ASSERT_CUDA(cudaDeviceSynchronize());
    untouched("empty tensor");
  }
  // Accepted, with a tensor_amax the rule does not read: everything but tensor_amax written.
  ASSERT_CUDA(fq::cuda::launch_block_quant(good, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  EXPECT_TRUE(all_bytes(damax.download("tensor_amax"), kPoison));
  EXPECT_FALSE(all_bytes(dy.download("output"), kPoison));
}

}  // namespace
