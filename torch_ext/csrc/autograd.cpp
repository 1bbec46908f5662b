// Autograd kernels of the functional ops, in C++. A Python autograd formula
// (torch.library.register_autograd) runs a Python function on every call, grad or not: about
// 3 us per call on a CPU, more than the op itself at small sizes and more than ATen's whole
// call (docs/perf-notes.md, "CPU findings"). These ops sit on every activation and weight of a
// QAT model, so their Autograd kernel is C++: below it the call redispatches to the backend
// kernel; with grad it records a node whose backward is an op (traced like any op by
// torch.compile): the clipped STE (fake_quant_mask_backward on the saved 1-bit mask) for the
// quant-dequant and weight abs-max ops, the learnable backward ops for LSQ / LSQ+. The ops
// that update state in place (the fused observers, ConvBN) keep their Python
// autograd.Function (torch_ext/fakequant/ops/<family>.py): register_autograd and an Autograd
// kernel both need functional ops.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <functional>
#include <initializer_list>
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

using WeightAbsMaxOp = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, int64_t, int64_t, int64_t,
                                                                     c10::string_view, double);

struct WeightAbsMax : torch::autograd::Function<WeightAbsMax> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& weight, int64_t axis, int64_t quant_min,
                               int64_t quant_max, c10::string_view rounding, double eps) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("fakequant::fake_quant_weight_abs_max", "")
                               .typed<WeightAbsMaxOp>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [output, mask, scale] = op.call(weight, axis, quant_min, quant_max, rounding, eps);
    save_mask(ctx, output, mask);
    // The scale comes from an observer-like reduction (PyTorch runs its observers under
    // no_grad): no gradient flows through it.
    ctx->mark_non_differentiable({mask, scale});
    return {output, mask, scale};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) { return masked_grad(ctx, grads, 6); }
};

// LSQ / LSQ+: the backward op recomputes from the saved input, scale and zero point (the scale
// gradient needs x itself); gradients are computed only for the inputs that need them.
using LearnableBackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

variable_list learnable_grads(AutogradContext* ctx, size_t num_inputs,
                              const std::function<LearnableBackwardResult(const at::Tensor&, const at::Tensor&,
                                                                          const at::Tensor&, const at::Tensor&,
                                                                          const c10::List<bool>&)>& backward_op,
                              const at::Tensor& grad) {
  variable_list out(num_inputs);
  const bool need[3] = {ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2)};
  if (!grad.defined() || !(need[0] || need[1] || need[2])) return out;
  const variable_list saved = ctx->get_saved_variables();
  auto [grad_input, grad_scale, grad_zero_point] =
      backward_op(grad, saved[0], saved[1], saved[2], c10::List<bool>({need[0], need[1], need[2]}));
  if (need[0]) out[0] = grad_input;
  if (need[1]) out[1] = grad_scale;
  if (need[2]) out[2] = grad_zero_point;
  return out;
}

struct LearnablePerTensor : torch::autograd::Function<LearnablePerTensor> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& scale,
                            const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max, double grad_factor) {
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("fakequant::fake_quant_learnable_per_tensor", "")
            .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t, double)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor output = op.call(input, scale, zero_point, quant_min, quant_max, grad_factor);
    ctx->save_for_backward({input, scale, zero_point});
    ctx->saved_data["quant_min"] = quant_min;
    ctx->saved_data["quant_max"] = quant_max;
    ctx->saved_data["grad_factor"] = grad_factor;
    return output;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("fakequant::fake_quant_learnable_per_tensor_backward", "")
                               .typed<LearnableBackwardResult(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                              const at::Tensor&, int64_t, int64_t, double,
                                                              const c10::List<bool>&)>();
    const int64_t quant_min = ctx->saved_data["quant_min"].toInt();
    const int64_t quant_max = ctx->saved_data["quant_max"].toInt();
    const double grad_factor = ctx->saved_data["grad_factor"].toDouble();
    return learnable_grads(
        ctx, 6,
        [&](const at::Tensor& g, const at::Tensor& x, const at::Tensor& s, const at::Tensor& z,
            const c10::List<bool>& mask) { return op.call(g, x, s, z, quant_min, quant_max, grad_factor, mask); },
        grads[0]);
  }
};

struct LearnablePerChannel : torch::autograd::Function<LearnablePerChannel> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& scale,
                            const at::Tensor& zero_point, int64_t axis, int64_t quant_min, int64_t quant_max,
                            double grad_factor) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("fakequant::fake_quant_learnable_per_channel", "")
                               .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                                 int64_t, int64_t, double)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor output = op.call(input, scale, zero_point, axis, quant_min, quant_max, grad_factor);
    ctx->save_for_backward({input, scale, zero_point});
    ctx->saved_data["axis"] = axis;
    ctx->saved_data["quant_min"] = quant_min;
    ctx->saved_data["quant_max"] = quant_max;
    ctx->saved_data["grad_factor"] = grad_factor;
    return output;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("fakequant::fake_quant_learnable_per_channel_backward", "")
                               .typed<LearnableBackwardResult(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                              const at::Tensor&, int64_t, int64_t, int64_t, double,
                                                              const c10::List<bool>&)>();
    const int64_t axis = ctx->saved_data["axis"].toInt();
    const int64_t quant_min = ctx->saved_data["quant_min"].toInt();
    const int64_t quant_max = ctx->saved_data["quant_max"].toInt();
    const double grad_factor = ctx->saved_data["grad_factor"].toDouble();
    return learnable_grads(
        ctx, 7,
        [&](const at::Tensor& g, const at::Tensor& x, const at::Tensor& s, const at::Tensor& z,
            const c10::List<bool>& mask) {
          return op.call(g, x, s, z, axis, quant_min, quant_max, grad_factor, mask);
        },
        grads[0]);
  }
};

// Whether a call must record a node: grad mode on and a tensor argument requiring grad. When
// not, the Autograd kernels below call the op under the autograd keys directly, as ATen's own
// kernels do: no node, no saved tensors (a forward in no_grad, eval, or of tensors that do not
// require grad pays only this check).
bool needs_graph(std::initializer_list<const at::Tensor*> tensors) {
  if (!at::GradMode::is_enabled()) return false;
  for (const at::Tensor* t : tensors) {
    if (t->defined() && t->requires_grad()) return true;
  }
  return false;
}

template <typename Sig>
c10::TypedOperatorHandle<Sig> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> weight_abs_max_autograd(const at::Tensor& weight, int64_t axis,
                                                                       int64_t quant_min, int64_t quant_max,
                                                                       c10::string_view rounding, double eps) {
  if (!needs_graph({&weight})) {
    static const auto op = op_handle<WeightAbsMaxOp>("fakequant::fake_quant_weight_abs_max");
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(weight, axis, quant_min, quant_max, rounding, eps);
  }
  const variable_list out = WeightAbsMax::apply(weight, axis, quant_min, quant_max, rounding, eps);
  return {out[0], out[1], out[2]};
}

at::Tensor learnable_per_tensor_autograd(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
                                         int64_t quant_min, int64_t quant_max, double grad_factor) {
  if (!needs_graph({&input, &scale, &zero_point})) {
    static const auto op =
        op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t, double)>(
            "fakequant::fake_quant_learnable_per_tensor");
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(input, scale, zero_point, quant_min, quant_max, grad_factor);
  }
  return LearnablePerTensor::apply(input, scale, zero_point, quant_min, quant_max, grad_factor);
}

at::Tensor learnable_per_channel_autograd(const at::Tensor& input, const at::Tensor& scale,
                                          const at::Tensor& zero_point, int64_t axis, int64_t quant_min,
                                          int64_t quant_max, double grad_factor) {
  if (!needs_graph({&input, &scale, &zero_point})) {
    static const auto op = op_handle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                                int64_t, int64_t, double)>("fakequant::fake_quant_learnable_per_channel");
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(input, scale, zero_point, axis, quant_min, quant_max, grad_factor);
  }
  return LearnablePerChannel::apply(input, scale, zero_point, axis, quant_min, quant_max, grad_factor);
}

std::tuple<at::Tensor, at::Tensor> per_tensor_autograd(const at::Tensor& input, const at::Tensor& scale,
                                                       const at::Tensor& zero_point, int64_t quant_min,
                                                       int64_t quant_max, c10::string_view rounding,
                                                       const std::optional<at::Tensor>& seed) {
  if (!needs_graph({&input, &scale, &zero_point})) {
    static const auto op = op_handle<PerTensorOp>("fakequant::fake_quant_per_tensor");
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(input, scale, zero_point, quant_min, quant_max, rounding, seed);
  }
  const variable_list out = PerTensor::apply(input, scale, zero_point, quant_min, quant_max, rounding, seed);
  return {out[0], out[1]};
}

std::tuple<at::Tensor, at::Tensor> per_channel_autograd(const at::Tensor& input, const at::Tensor& scale,
                                                        const at::Tensor& zero_point, int64_t axis,
                                                        int64_t quant_min, int64_t quant_max,
                                                        c10::string_view rounding,
                                                        const std::optional<at::Tensor>& seed) {
  if (!needs_graph({&input, &scale, &zero_point})) {
    static const auto op = op_handle<PerChannelOp>("fakequant::fake_quant_per_channel");
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(input, scale, zero_point, axis, quant_min, quant_max, rounding, seed);
  }
  const variable_list out =
      PerChannel::apply(input, scale, zero_point, axis, quant_min, quant_max, rounding, seed);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fakequant, Autograd, m) {
  m.impl("fake_quant_per_tensor", &per_tensor_autograd);
  m.impl("fake_quant_per_channel", &per_channel_autograd);
  m.impl("fake_quant_weight_abs_max", &weight_abs_max_autograd);
  m.impl("fake_quant_learnable_per_tensor", &learnable_per_tensor_autograd);
  m.impl("fake_quant_learnable_per_channel", &learnable_per_channel_autograd);
}

}  // namespace ext
}  // namespace fakequant
