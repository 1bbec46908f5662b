// Autograd kernels of the two quant-dequant ops, in C++. A Python autograd formula
// (torch.library.register_autograd) runs a Python function on every call, grad or not: about
// 3 us per call on a CPU, more than the op itself at small sizes and more than ATen's whole
// call (docs/perf-notes.md, "CPU findings"). These ops sit on every activation and weight of a
// QAT model, so their Autograd kernel is C++: below it the call redispatches to the backend
// kernel; with grad it records a node whose backward is the clipped STE, the op
// fake_quant_mask_backward on the saved 1-bit mask (traced like any op by torch.compile).
// The other ops keep their Python formulas (torch_ext/fakequant/_*.py).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

namespace fakequant {
namespace ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using PerTensorOp = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                       int64_t, int64_t, c10::string_view,
                                                       const std::optional<at::Tensor>&);
using PerChannelOp = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                        int64_t, int64_t, int64_t, c10::string_view,
                                                        const std::optional<at::Tensor>&);

at::Tensor mask_backward(const at::Tensor& grad, const at::Tensor& mask) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fakequant::fake_quant_mask_backward", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  return op.call(grad, mask);
}

// Saves the mask and the output's strides (the mask is in the output's memory order) and
// marks the mask non-differentiable.
void save_mask(AutogradContext* ctx, const at::Tensor& output, const at::Tensor& mask) {
  ctx->save_for_backward({mask});
  ctx->saved_data["output_stride"] = output.strides().vec();
  ctx->mark_non_differentiable({mask});
}

// The clipped STE: grad_output laid out like the forward output, times the mask bits.
// `num_inputs` entries, only the first (input) ever defined.
variable_list masked_grad(AutogradContext* ctx, const variable_list& grads, size_t num_inputs) {
  variable_list out(num_inputs);
  const at::Tensor& grad = grads[0];
  if (!ctx->needs_input_grad(0) || !grad.defined()) return out;
  const at::Tensor mask = ctx->get_saved_variables()[0];
  const std::vector<int64_t> stride = ctx->saved_data["output_stride"].toIntVector();
  at::Tensor g = grad;
  if (g.strides() != at::IntArrayRef(stride)) g = at::empty_strided(g.sizes(), stride, g.options()).copy_(g);
  out[0] = mask_backward(g, mask);
  return out;
}

struct PerTensor : torch::autograd::Function<PerTensor> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& scale,
                               const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
                               c10::string_view rounding, const std::optional<at::Tensor>& seed) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("fakequant::fake_quant_per_tensor", "")
                               .typed<PerTensorOp>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [output, mask] = op.call(input, scale, zero_point, quant_min, quant_max, rounding, seed);
    save_mask(ctx, output, mask);
    return {output, mask};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) { return masked_grad(ctx, grads, 7); }
};

struct PerChannel : torch::autograd::Function<PerChannel> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& scale,
                               const at::Tensor& zero_point, int64_t axis, int64_t quant_min, int64_t quant_max,
                               c10::string_view rounding, const std::optional<at::Tensor>& seed) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("fakequant::fake_quant_per_channel", "")
                               .typed<PerChannelOp>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [output, mask] = op.call(input, scale, zero_point, axis, quant_min, quant_max, rounding, seed);
    save_mask(ctx, output, mask);
    return {output, mask};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) { return masked_grad(ctx, grads, 8); }
};

std::tuple<at::Tensor, at::Tensor> per_tensor_autograd(const at::Tensor& input, const at::Tensor& scale,
                                                       const at::Tensor& zero_point, int64_t quant_min,
                                                       int64_t quant_max, c10::string_view rounding,
                                                       const std::optional<at::Tensor>& seed) {
  const variable_list out = PerTensor::apply(input, scale, zero_point, quant_min, quant_max, rounding, seed);
  return {out[0], out[1]};
}

std::tuple<at::Tensor, at::Tensor> per_channel_autograd(const at::Tensor& input, const at::Tensor& scale,
                                                        const at::Tensor& zero_point, int64_t axis,
                                                        int64_t quant_min, int64_t quant_max,
                                                        c10::string_view rounding,
                                                        const std::optional<at::Tensor>& seed) {
  const variable_list out =
      PerChannel::apply(input, scale, zero_point, axis, quant_min, quant_max, rounding, seed);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fakequant, Autograd, m) {
  m.impl("fake_quant_per_tensor", &per_tensor_autograd);
  m.impl("fake_quant_per_channel", &per_channel_autograd);
}

}  // namespace ext
}  // namespace fakequant
