// Block-scaled fake quantization (fake_quant_block): fakequant's one-pass op against the ATen
// composite doing the same job as torchao's eager code does it (a reduction per tile, the scale
// as tensor ops, then the element arithmetic one op at a time), for the formats LLM QAT trains
// for: MXFP8 (E4M3, FLOOR) and MXFP4 (E2M1, FLOOR) in 1 x 32 tiles, NVFP4 (1 x 16 under the
// tensor scale), FP8 E4M3 scaled per row, and int8 asymmetric per token. The input is the
// sweep's numel as [numel / 4096, 4096] (rows of a Linear layer's width), fp32 and bf16.
// ATen has no FP4 type: the composites round to the E2M1 grid with frexp (the element's binade
// gives its grid step), as torchao's f32_to_f4_unpacked does with bit operations.

#include <functional>
#include <optional>
#include <tuple>
#include <vector>

#include "bench_common.h"

namespace fb = fakequant_bench;

namespace {

constexpr int64_t kCols = 4096;

struct BlockInputs {
  int64_t n;
  torch::ScalarType dtype;
  std::vector<torch::Tensor> x;  // [n / kCols, kCols]
};

BlockInputs make_inputs(benchmark::State& state) {
  const fb::SweepPoint p = fb::sweep_point(state);
  BlockInputs in{p.n, p.dtype, {}};
  for (const auto& t : fb::rotating_inputs(p.n, p.dtype, 2.0)) in.x.push_back(t.view({-1, kCols}));
  return in;
}

// Bytes each must move per tile of `tile` elements with `per_tile` bytes of qparams: fakequant
// reads the input once and writes the output, the 1-bit mask and the qparams; a composite reads
// the input at least twice (the tile reduction, then the elements) and computes no mask.
double fakequant_bytes(const BlockInputs& in, int64_t tile, int64_t per_tile) {
  const int64_t e = torch::elementSize(in.dtype);
  return static_cast<double>(2 * in.n * e + (in.n + 7) / 8 + per_tile * (in.n / tile));
}
double composite_bytes(const BlockInputs& in, int64_t tile, int64_t per_tile) {
  const int64_t e = torch::elementSize(in.dtype);
  return static_cast<double>(3 * in.n * e + per_tile * (in.n / tile));
}

using BlockOp = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, c10::string_view, c10::string_view, int64_t, int64_t, int64_t, int64_t, std::optional<double>,
    std::optional<double>, std::optional<double>, bool, c10::string_view, const std::optional<at::Tensor>&);

void run_block(benchmark::State& state, const char* format, const char* rule, int64_t block_cols, int64_t per_tile,
               bool tensor_scale = false) {
  const BlockInputs in = make_inputs(state);
  static const auto op = fb::op<BlockOp>("fakequant::fake_quant_block");
  // The tensor scale needs the whole tensor's abs-max first: one more read of the input.
  const double extra = tensor_scale ? static_cast<double>(in.n * torch::elementSize(in.dtype)) : 0.0;
  fb::time_op(state, fakequant_bytes(in, block_cols, per_tile) + extra, in.n, [&](int64_t i) {
    return op.call(fb::rotate(in.x, i), format, rule, 1, block_cols, -128, 127, std::nullopt, std::nullopt,
                   std::nullopt, tensor_scale, "half_even", std::nullopt);
  });
}

// 2^k for integer-valued float k (exponents within the float range).
torch::Tensor pow2(const torch::Tensor& k) { return at::exp2(k); }

// v rounded (half to even) to a minifloat grid with `mbits` mantissa bits whose smallest normal
// binade is 2^emin, saturated to +-max: the step of |v|'s binade is 2^(max(e, emin) - mbits).
torch::Tensor round_to_grid(const torch::Tensor& v, int64_t mbits, int64_t emin, double max) {
  const auto [mantissa, exponent] = at::frexp(v);  // |v| = |m| 2^exponent, |m| in [0.5, 1)
  (void)mantissa;
  const torch::Tensor binade = at::clamp_min(exponent.to(torch::kFloat) - 1, static_cast<double>(emin));
  const torch::Tensor step = pow2(binade - static_cast<double>(mbits));
  return at::clamp(at::round(v / step) * step, -max, max);
}

// MX with FLOOR scales (OCP): the tile's E8M0 exponent floor(log2(amax)) - emax of the element
// format, read off the float32 bits of amax as torchao does; elements divided by 2^exp, cast.
torch::Tensor mx_floor_composite(const torch::Tensor& x, int64_t emax,
                                 const std::function<torch::Tensor(const torch::Tensor&)>& cast) {
  const torch::Tensor g = x.reshape({-1, 32}).to(torch::kFloat);
  const torch::Tensor amax = at::amax(at::abs(g), {1}, true);
  const torch::Tensor unbiased = at::bitwise_and(at::bitwise_right_shift(amax.view(torch::kInt), 23), 0xFF) - 127;
  const torch::Tensor scale = pow2(at::clamp(unbiased - emax, -127, 127).to(torch::kFloat));
  return (cast(g / scale) * scale).to(x.scalar_type()).view_as(x);
}

void BM_BlockMXFP8_fakequant(benchmark::State& state) { run_block(state, "e4m3", "mx_floor", 32, 4); }
void BM_BlockMXFP8_aten(benchmark::State& state) {
  const BlockInputs in = make_inputs(state);
  fb::time_op(state, composite_bytes(in, 32, 4), in.n, [&](int64_t i) {
    return mx_floor_composite(fb::rotate(in.x, i), 8, [](const torch::Tensor& v) {
      return at::clamp(v, -448.0, 448.0).to(torch::kFloat8_e4m3fn).to(torch::kFloat);
    });
  });
}

void BM_BlockMXFP4_fakequant(benchmark::State& state) { run_block(state, "e2m1", "mx_floor", 32, 4); }
void BM_BlockMXFP4_aten(benchmark::State& state) {
  const BlockInputs in = make_inputs(state);
  fb::time_op(state, composite_bytes(in, 32, 4), in.n, [&](int64_t i) {
    return mx_floor_composite(fb::rotate(in.x, i), 2,
                              [](const torch::Tensor& v) { return round_to_grid(v, 1, 0, 6.0); });
  });
}

// NVFP4 (torchao's rule): tensor scale amax / (448 * 6); block scale (block amax / 6) / tensor
// scale clamped to [2^-6, 448] and cast to E4M3; elements divided by block x tensor scale.
void BM_BlockNVFP4_fakequant(benchmark::State& state) { run_block(state, "e2m1", "nvfp4_torchao", 16, 4, true); }
void BM_BlockNVFP4_aten(benchmark::State& state) {
  const BlockInputs in = make_inputs(state);
  fb::time_op(state, composite_bytes(in, 16, 4) + static_cast<double>(in.n * torch::elementSize(in.dtype)), in.n,
              [&](int64_t i) {
                const torch::Tensor& x = fb::rotate(in.x, i);
                const torch::Tensor g = x.reshape({-1, 16}).to(torch::kFloat);
                const torch::Tensor tensor_scale = at::amax(at::abs(g)) / (448.0 * 6.0);
                const torch::Tensor block = at::amax(at::abs(g), {1}, true) / 6.0;
                const torch::Tensor block_scale =
                    at::clamp(block / tensor_scale, 0.015625, 448.0).to(torch::kFloat8_e4m3fn).to(torch::kFloat);
                const torch::Tensor total = block_scale * tensor_scale;
                return (round_to_grid(g / total, 1, 0, 6.0) * total).to(x.scalar_type()).view_as(x);
              });
}

// FP8 E4M3 per row (torchao's Float8FakeQuantizer PerRow): scale = amax / 448 in the input's
// dtype, x / scale saturated and cast, times scale.
void BM_BlockFP8Row_fakequant(benchmark::State& state) { run_block(state, "e4m3", "fp8_torchao", kCols, 4); }
void BM_BlockFP8Row_aten(benchmark::State& state) {
  const BlockInputs in = make_inputs(state);
  fb::time_op(state, composite_bytes(in, kCols, 4), in.n, [&](int64_t i) {
    const torch::Tensor& x = fb::rotate(in.x, i);
    const torch::Tensor scale = at::amax(at::abs(x), {1}, true) / 448.0;
    const torch::Tensor q = at::clamp(x / scale, -448.0, 448.0).to(torch::kFloat8_e4m3fn);
    return q.to(x.scalar_type()) * scale;
  });
}

// int8 asymmetric per token (torchao's PerToken dynamic activations): scale =
// (max(hi, 0) - min(lo, 0)) / 255 floored at eps, zero point -128 - round(min(lo, 0) / scale),
// q = clamp(round(x / scale) + zp, -128, 127), (q - zp) * scale.
void BM_BlockPerTokenInt8_fakequant(benchmark::State& state) { run_block(state, "int", "int_affine", kCols, 8); }
void BM_BlockPerTokenInt8_aten(benchmark::State& state) {
  const BlockInputs in = make_inputs(state);
  fb::time_op(state, composite_bytes(in, kCols, 8), in.n, [&](int64_t i) {
    const torch::Tensor& x = fb::rotate(in.x, i);
    const auto [lo, hi] = at::aminmax(x, 1, true);
    const torch::Tensor lo0 = at::clamp_max(lo, 0);
    const torch::Tensor scale = at::clamp_min((at::clamp_min(hi, 0) - lo0) / 255.0, 1.1754943508222875e-38);
    const torch::Tensor zp = -128.0 - at::round(lo0 / scale);
    const torch::Tensor q = at::clamp(at::round(x / scale) + zp, -128, 127);
    return (q - zp) * scale;
  });
}

void sizes(benchmark::internal::Benchmark* b) { fb::sweep_args(b, {0, 1}); }

[[maybe_unused]] const bool kRegistered = fb::register_pairs({
    {"BlockMXFP8", BM_BlockMXFP8_fakequant, BM_BlockMXFP8_aten, sizes},
    {"BlockMXFP4", BM_BlockMXFP4_fakequant, BM_BlockMXFP4_aten, sizes},
    {"BlockNVFP4", BM_BlockNVFP4_fakequant, BM_BlockNVFP4_aten, sizes},
    {"BlockFP8Row", BM_BlockFP8Row_fakequant, BM_BlockFP8Row_aten, sizes},
    {"BlockPerTokenInt8", BM_BlockPerTokenInt8_fakequant, BM_BlockPerTokenInt8_aten, sizes},
});

}  // namespace
