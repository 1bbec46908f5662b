// The device-neutral body of fake_quant_weight_abs_max: argument checks, output allocation and
// the op function, over a backend table (WeightQuantBackend) that cpu/weight_quant.cpp and
// cuda/weight_quant.cpp fill and register with WeightQuantOps<backend>::register_all (same
// messages, same layouts on every backend).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <tuple>

#include "fakequant/weight_quant.h"

namespace fakequant {
namespace ext {

struct WeightAbsMaxCall {
  at::Tensor weight;  // dense
  at::Tensor output;  // empty_like(weight)
  at::Tensor mask;    // uint8 [mask_bytes(numel)]
  at::Tensor scale;   // float32 [C]
  WeightAbsMaxArgs args;
};

// Checks everything (no tensor values are read: the op computes its own qparams) and
// allocates the outputs. axis in [-dim, dim); symmetric range (check_symmetric_quant_range);
// eps finite and >= the smallest normal float32.
WeightAbsMaxCall prepare_fake_quant_weight_abs_max(const at::Tensor& weight, int64_t axis, int64_t quant_min,
                                                   int64_t quant_max, c10::string_view rounding, double eps);

// What a backend does once the call is checked and its outputs allocated (a weight with
// channels): compute the scales and the quant-dequant.
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
  static void register_all(torch::Library& m) { m.impl("fake_quant_weight_abs_max", &weight_abs_max); }
};

}  // namespace ext
}  // namespace fakequant
