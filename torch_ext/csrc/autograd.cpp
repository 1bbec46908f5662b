// Autograd kernels of the functional ops, in C++. A Python autograd formula
// (torch.library.register_autograd) runs a Python function on every call, grad or not: at
// small sizes more than the op itself and more than ATen's whole call (docs/perf-notes.md,
// "Per-call host cost"). These ops sit on every activation and weight of a
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

template <typename Sig>
c10::TypedOperatorHandle<Sig> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

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

at::Tensor mask_backward(const at::Tensor& grad, const at::Tensor& mask) {
  static const auto op =
      op_handle<at::Tensor(const at::Tensor&, const at::Tensor&)>("fakequant::fake_quant_mask_backward");
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
    static const auto op = op_handle<PerTensorOp>("fakequant::fake_quant_per_tensor");
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
    static const auto op = op_handle<PerChannelOp>("fakequant::fake_quant_per_channel");
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
    static const auto op = op_handle<WeightAbsMaxOp>("fakequant::fake_quant_weight_abs_max");
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

// LSQ / LSQ+, per tensor and per channel: one Function over the op's schema names and the
// arguments that follow (input, scale, zero_point), which the backward op takes again before
// its output mask. The backward op recomputes from the saved input, scale and zero point (the
// scale gradient needs x itself).
using LearnableBackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

struct LearnablePerTensorOp {
  static constexpr const char* kForward = "fakequant::fake_quant_learnable_per_tensor";
  static constexpr const char* kBackward = "fakequant::fake_quant_learnable_per_tensor_backward";
  using Params = std::tuple<int64_t, int64_t, double>;  // quant_min, quant_max, grad_factor
};

struct LearnablePerChannelOp {
  static constexpr const char* kForward = "fakequant::fake_quant_learnable_per_channel";
  static constexpr const char* kBackward = "fakequant::fake_quant_learnable_per_channel_backward";
  using Params = std::tuple<int64_t, int64_t, int64_t, double>;  // axis, quant_min, quant_max, grad_factor
};

template <typename Op, typename Params = typename Op::Params>
struct Learnable;

template <typename Op, typename... Ps>
struct Learnable<Op, std::tuple<Ps...>> : torch::autograd::Function<Learnable<Op>> {
  using ForwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, Ps...);
  using BackwardSig = LearnableBackwardResult(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                              const at::Tensor&, Ps..., const c10::List<bool>&);

  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& scale,
                            const at::Tensor& zero_point, Ps... params) {
    static const auto op = op_handle<ForwardSig>(Op::kForward);
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor output = op.call(input, scale, zero_point, params...);
    ctx->save_for_backward({input, scale, zero_point});
    ctx->saved_data["params"] = std::make_tuple(params...);
    return output;
  }
  // Gradients are computed only for the tensors that need them.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = op_handle<BackwardSig>(Op::kBackward);
    variable_list out(3 + sizeof...(Ps));
    const at::Tensor& grad = grads[0];
    const bool need[3] = {ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2)};
    if (!grad.defined() || !(need[0] || need[1] || need[2])) return out;
    const variable_list saved = ctx->get_saved_variables();
    const c10::List<bool> output_mask({need[0], need[1], need[2]});
    auto [grad_input, grad_scale, grad_zero_point] = std::apply(
        [&](Ps... params) { return op.call(grad, saved[0], saved[1], saved[2], params..., output_mask); },
        ctx->saved_data["params"].to<std::tuple<Ps...>>());
    if (need[0]) out[0] = grad_input;
    if (need[1]) out[1] = grad_scale;
    if (need[2]) out[2] = grad_zero_point;
    return out;
  }

  // The op's Autograd kernel.
  static at::Tensor autograd_kernel(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
                                    Ps... params) {
    if (!needs_graph({&input, &scale, &zero_point})) {
      static const auto op = op_handle<ForwardSig>(Op::kForward);
      at::AutoDispatchBelowADInplaceOrView guard;
      return op.call(input, scale, zero_point, params...);
    }
    return Learnable::apply(input, scale, zero_point, params...);
  }
};

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
  m.impl("fake_quant_learnable_per_tensor", &Learnable<LearnablePerTensorOp>::autograd_kernel);
  m.impl("fake_quant_learnable_per_channel", &Learnable<LearnablePerChannelOp>::autograd_kernel);
}

}  // namespace ext
}  // namespace fakequant
