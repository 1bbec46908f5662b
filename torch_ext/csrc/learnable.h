// Argument checks and output allocation of the learnable-qparam (LSQ / LSQ+) ops, shared by
// the CPU and CUDA bindings so that every backend rejects the same inputs with the same
// messages and allocates the same layouts.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/List.h>

#include <array>
#include <optional>

#include "fakequant/learnable.h"

namespace fakequant {
namespace ext {

// One forward call: the dense input, its output, and the kernel arguments pointing at them.
struct LearnableForwardCall {
  at::Tensor input;                // dense
  at::Tensor output;               // empty_like(input)
  at::Tensor scale, zero_point;    // contiguous float32 (kept alive for the kernel)
  LearnableForwardArgs args;
  LearnableQParams qparams;
};

// axis: empty for the per-tensor op. Checks everything that needs no tensor values: dtypes,
// shapes, devices, axis, the quant range, grad_factor (finite as float32).
LearnableForwardCall prepare_learnable_forward(const char* op, const at::Tensor& input, const at::Tensor& scale,
                                               const at::Tensor& zero_point, std::optional<int64_t> axis,
                                               int64_t quant_min, int64_t quant_max, double grad_factor);

struct LearnableBackwardCall {
  at::Tensor input, grad_output;                  // dense, grad_output laid out like input
  at::Tensor scale, zero_point;                   // contiguous float32
  at::Tensor grad_input, grad_scale, grad_zero_point;  // [0]-sized where output_mask is false
  LearnableBackwardArgs args;
  LearnableQParams qparams;
};

LearnableBackwardCall prepare_learnable_backward(const char* op, const at::Tensor& grad_output,
                                                 const at::Tensor& input, const at::Tensor& scale,
                                                 const at::Tensor& zero_point, std::optional<int64_t> axis,
                                                 int64_t quant_min, int64_t quant_max, double grad_factor,
                                                 std::array<bool, 3> output_mask);

// The backward's output_mask (grad_input, grad_scale, grad_zero_point), checked to hold 3 flags.
std::array<bool, 3> learnable_output_mask(const char* op, const c10::List<bool>& output_mask);

// Value checks of scale (finite, >= the smallest normal float32) and zero_point (finite),
// naming the channel for per-channel qparams; only done where the values are on the host.
void check_learnable_qparam_values(const char* op, const at::Tensor& scale, const at::Tensor& zero_point,
                                   bool per_channel);

}  // namespace ext
}  // namespace fakequant
