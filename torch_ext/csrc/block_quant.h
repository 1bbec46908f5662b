// The device-neutral body of fake_quant_block (block-scaled formats: per-token / per-group
// int, FP8, MX, NVFP4; fakequant/block_quant.h): argument checks, output allocation and the op
// function, over a backend table (BlockQuantBackend) that cpu/block_quant.cpp and
// cuda/block_quant.cpp fill and register with BlockQuantOps<backend>::register_all (same
// messages, same layouts on every backend).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "fakequant/block_quant.h"

namespace fakequant {
namespace ext {

struct BlockQuantCall {
  at::Tensor input;        // contiguous, [rows, cols] in memory
  at::Tensor output;       // input's shape and dtype, contiguous
  at::Tensor mask;         // uint8 [mask_bytes(numel)]
  at::Tensor scale;        // float32 [grid_rows, grid_cols]
  at::Tensor zero_point;   // int32 [grid_rows, grid_cols] (int_affine, int_affine_float_zp), else [0]
  at::Tensor tensor_amax;  // float32 [] where block_quant_needs_tensor_amax, else [0]
  at::Tensor seed;         // int64 [2] with rounding 'stochastic', else undefined
  BlockQuantArgs args;
};

// Checks everything that reads no tensor values and allocates the outputs: input float32 /
// float16 / bfloat16 with at least one dimension (rows = prod(shape[:-1]), cols = shape[-1]),
// format and scale_rule names, the arguments only some rules take (eps: the int rules;
// amax_lower / amax_upper: fp8_torchao; tensor_scale: the nvfp4 rules), then
// check_block_quant_args; the seed rules of check_seed. An empty input's tensor_amax is 0.
BlockQuantCall prepare_fake_quant_block(const at::Tensor& input, c10::string_view format, c10::string_view scale_rule,
                                        int64_t block_rows, int64_t block_cols, int64_t quant_min, int64_t quant_max,
                                        std::optional<double> eps, std::optional<double> amax_lower,
                                        std::optional<double> amax_upper, bool tensor_scale,
                                        c10::string_view rounding, const std::optional<at::Tensor>& seed);

// What a backend does once the call is checked and its outputs allocated (a non-empty
// input): both passes of the kernel.
struct BlockQuantBackend {
  void (*block_quant)(BlockQuantCall& call);
};

using BlockQuantResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

template <const BlockQuantBackend& B>
struct BlockQuantOps {
  static BlockQuantResult block(const at::Tensor& input, c10::string_view format, c10::string_view scale_rule,
                                int64_t block_rows, int64_t block_cols, int64_t quant_min, int64_t quant_max,
                                std::optional<double> eps, std::optional<double> amax_lower,
                                std::optional<double> amax_upper, bool tensor_scale, c10::string_view rounding,
                                const std::optional<at::Tensor>& seed) {
    BlockQuantCall call = prepare_fake_quant_block(input, format, scale_rule, block_rows, block_cols, quant_min,
                                                   quant_max, eps, amax_lower, amax_upper, tensor_scale, rounding,
                                                   seed);
    if (call.input.numel() > 0) B.block_quant(call);
    return {call.output, call.mask, call.scale, call.zero_point, call.tensor_amax};
  }
  static void register_all(torch::Library& m) { m.impl("fake_quant_block", &block); }
};

}  // namespace ext
}  // namespace fakequant
