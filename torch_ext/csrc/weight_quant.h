// The device-neutral bodies of fake_quant_weight_abs_max and fake_quant_per_group (scales
// from the tensor's own abs-max, per channel or per group): argument checks, output
// allocation and the op functions, over a backend table (WeightQuantBackend) that
// cpu/weight_quant.cpp and cuda/weight_quant.cpp fill and register with
// WeightQuantOps<backend>::register_all (same messages, same layouts on every backend).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "fakequant/weight_quant.h"

namespace fakequant {
namespace ext {

struct WeightAbsMaxCall {
  at::Tensor weight;  // dense
  at::Tensor output;  // empty_like(weight)
  at::Tensor mask;    // uint8 [mask_bytes(numel)]
  at::Tensor scale;   // float32 [C], or [..., groups per row] per group
  WeightAbsMaxArgs args;
};

// Checks everything (no tensor values are read: the op computes its own qparams) and
// allocates the outputs. axis in [-dim, dim); symmetric range (check_symmetric_quant_range);
// eps finite and >= the smallest normal float32.
WeightAbsMaxCall prepare_fake_quant_weight_abs_max(const at::Tensor& weight, int64_t axis, int64_t quant_min,
                                                   int64_t quant_max, c10::string_view rounding, double eps);

// The same checks for groups of group_size along the last dim (a positive divisor of
// size(-1)); eps defaults to the smallest normal of the input's dtype; the input is made
// contiguous (each group one run of memory).
WeightAbsMaxCall prepare_fake_quant_per_group(const at::Tensor& input, int64_t group_size, int64_t quant_min,
                                              int64_t quant_max, c10::string_view rounding,
                                              std::optional<double> eps);

// What a backend does once the call is checked and its outputs allocated (a tensor with
// channels or groups): compute the scales and the quant-dequant.
struct WeightQuantBackend {
  void (*weight_abs_max)(WeightAbsMaxCall& call);
};

template <const WeightQuantBackend& B>
struct WeightQuantOps {
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> weight_abs_max(const at::Tensor& weight, int64_t axis,
                                                                       int64_t quant_min, int64_t quant_max,
                                                                       c10::string_view rounding, double eps) {
    WeightAbsMaxCall call = prepare_fake_quant_weight_abs_max(weight, axis, quant_min, quant_max, rounding, eps);
    if (call.args.channels > 0) B.weight_abs_max(call);
    return {call.output, call.mask, call.scale};
  }
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> per_group(const at::Tensor& input, int64_t group_size,
                                                                  int64_t quant_min, int64_t quant_max,
                                                                  c10::string_view rounding,
                                                                  std::optional<double> eps) {
    WeightAbsMaxCall call = prepare_fake_quant_per_group(input, group_size, quant_min, quant_max, rounding, eps);
    if (call.args.channels > 0) B.weight_abs_max(call);
    return {call.output, call.mask, call.scale};
  }
  static void register_all(torch::Library& m) {
    m.impl("fake_quant_weight_abs_max", &weight_abs_max);
    m.impl("fake_quant_per_group", &per_group);
  }
};

}  // namespace ext
}  // namespace fakequant
