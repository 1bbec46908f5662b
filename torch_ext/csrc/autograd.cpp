// Autograd kernels of every op, in C++. A Python autograd formula (torch.library.register_autograd
// or an autograd.Function) runs Python on every call, grad or not: at small sizes more than the
// op itself and more than ATen's whole call (docs/perf-notes.md, "Per-call host cost"). These
// ops sit on every activation and weight of a QAT model, so their Autograd kernel is C++: below
// it the call redispatches to the backend kernel; with grad it records a node whose backward is
// an op (traced like any op by torch.compile): the clipped STE (fake_quant_mask_backward on the
// saved 1-bit mask) for the quant-dequant, weight abs-max, per-group, block-scaled and fused
// observer ops, the learnable backward ops for LSQ / LSQ+, conv_bn_fake_quant_backward for ConvBN.
//
// The ops that update state in place (the fused observers, ConvBN: Tensor(a!) in the schema)
// have boxed kernels: the state is not differentiable, so only the leading tensors enter the
// graph, and the kernel bumps the version counter of every written argument, as
// ADInplaceOrView does for ATen's in-place ops (fake_quant_per_group, functional, shares the
// observers' kernel: it writes nothing). Under torch.compile functionalization runs
// below this key, so the traced graph holds the functional form of the op.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
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

// ---------------------------------------------------------------------------------------
// The ops that update state in place, as boxed kernels.

// The tensors the schema marks as written (Tensor(a!)), read off the stack before the call
// consumes its arguments.
c10::SmallVector<at::Tensor, 4> written_arguments(const c10::FunctionSchema& schema, const torch::jit::Stack& stack) {
  c10::SmallVector<at::Tensor, 4> written;
  const size_t num_args = schema.arguments().size();
  for (size_t i = 0; i < num_args; ++i) {
    const c10::AliasInfo* alias = schema.arguments()[i].alias_info();
    const c10::IValue& value = stack[stack.size() - num_args + i];
    if (alias != nullptr && alias->isWrite() && value.isTensor()) written.push_back(value.toTensor());
  }
  return written;
}

const c10::IValue& argument(const c10::OperatorHandle& op, const torch::jit::Stack& stack, size_t index) {
  return stack[stack.size() - op.schema().arguments().size() + index];
}

void call_below_autograd(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  at::AutoDispatchBelowADInplaceOrView guard;
  op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
}

// Calls `op` with autograd's bookkeeping: `Node::apply` records the graph when `graph` says so
// and returns the outputs, which replace the op's on the stack; then the written arguments'
// versions move on (none for a functional op).
template <typename Node, typename... Inputs>
void call_in_place(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack, bool graph,
                   const Inputs&... inputs) {
  const c10::SmallVector<at::Tensor, 4> written = written_arguments(op.schema(), *stack);
  if (graph) {
    const variable_list outputs = Node::apply(inputs..., &op, keys, stack);
    torch::jit::drop(*stack, outputs.size());
    for (const at::Tensor& t : outputs) torch::jit::push(*stack, t);
  } else {
    call_below_autograd(op, keys, stack);
  }
  for (const at::Tensor& t : written) torch::autograd::impl::bump_version(t);
}

// Ops returning (output, mask, ...) of their first argument, the input: the clipped STE for the
// input; every other output (the scales, from observer-like reductions, which PyTorch runs
// under no_grad) is not differentiable. The fused observers (state updated in place),
// fake_quant_per_group, fake_quant_weight_abs_max and fake_quant_block (five outputs). The
// per-tensor and per-channel quant-dequant keep typed kernels (PerTensor, PerChannel): the
// boxed path costs the per-tensor call measurably (docs/perf-notes.md, "Per-call host cost").
struct ClippedSte : torch::autograd::Function<ClippedSte> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& /*input*/, const c10::OperatorHandle* op,
                               c10::DispatchKeySet keys, torch::jit::Stack* stack) {
    call_below_autograd(*op, keys, stack);
    const size_t n = op->schema().returns().size();
    variable_list outputs;
    for (size_t i = 0; i < n; ++i) outputs.push_back(torch::jit::peek(*stack, i, n).toTensor());
    save_mask(ctx, outputs[0], outputs[1]);
    ctx->mark_non_differentiable(variable_list(outputs.begin() + 1, outputs.end()));
    return outputs;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) { return masked_grad(ctx, grads, 4); }
};

void clipped_ste_autograd(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  const at::Tensor input = argument(op, *stack, 0).toTensor();
  call_in_place<ClippedSte>(op, keys, stack, needs_graph({&input}), input);
}

// ConvBN: value of the fused forward, gradient of the unfused graph (docs/convbn.md). Saved for
// the backward op: input, weight, pre_bn (training), the weight the backward convolves with (W
// itself in batch-mode training, else the quantised fold), the two 1-bit masks and the float64
// [6, C] channel state. Gradients flow to input, weight, bias, bn_weight and bn_bias; the
// parameters' come back as float64 rows, cast to each parameter's dtype.
struct ConvBn : torch::autograd::Function<ConvBn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, const at::Tensor& bn_weight,
                               const at::Tensor& bn_bias, const c10::OperatorHandle* op, c10::DispatchKeySet keys,
                               torch::jit::Stack* stack) {
    // What the backward op takes again, by name, with its position in the schema (looked up once).
    static const std::vector<std::pair<const char*, size_t>> kSaved = [op] {
      std::vector<std::pair<const char*, size_t>> v;
      for (const char* name : {"stride", "padding", "dilation", "groups", "fold_mode", "training"}) {
        v.emplace_back(name, op->schema().argumentIndexWithName(name).value());
      }
      return v;
    }();
    for (const auto& [name, index] : kSaved) ctx->saved_data[name] = argument(*op, *stack, index);
    ctx->saved_data["has_bias"] = bias.has_value();
    ctx->saved_data["param_dtypes"] = std::vector<int64_t>{
        static_cast<int64_t>(bias.has_value() ? bias->scalar_type() : bn_weight.scalar_type()),
        static_cast<int64_t>(bn_weight.scalar_type()), static_cast<int64_t>(bn_bias.scalar_type())};
    call_below_autograd(*op, keys, stack);
    variable_list outputs;
    for (size_t i = 0; i < 6; ++i) outputs.push_back(torch::jit::peek(*stack, i, 6).toTensor());
    // outputs: output, pre_bn, weight_q, weight_mask, relu_mask, channel_state.
    const bool batch_fold =
        ctx->saved_data["training"].toBool() && ctx->saved_data["fold_mode"].toStringRef() == "batch";
    ctx->save_for_backward({input, weight, outputs[1], batch_fold ? weight : outputs[2], outputs[3], outputs[4],
                            outputs[5]});
    ctx->mark_non_differentiable({outputs[1], outputs[2], outputs[3], outputs[4], outputs[5]});
    return outputs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    using BackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
        const at::Tensor&, const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
        int64_t, c10::string_view, bool, const c10::List<bool>&);
    static const auto op = op_handle<BackwardSig>("fakequant::conv_bn_fake_quant_backward");
    variable_list out(8);
    // needs_input_grad counts tensor inputs only: without a bias, bn_weight is the third.
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const bool need[5] = {ctx->needs_input_grad(0), ctx->needs_input_grad(1), has_bias && ctx->needs_input_grad(2),
                          ctx->needs_input_grad(has_bias ? 3 : 2), ctx->needs_input_grad(has_bias ? 4 : 3)};
    const c10::List<bool> output_mask({need[0], need[1], need[2] || need[3] || need[4]});
    if (!grads[0].defined() || !(output_mask[0] || output_mask[1] || output_mask[2])) return out;
    const variable_list saved = ctx->get_saved_variables();
    auto& data = ctx->saved_data;
    auto [grad_input, grad_weight, grad_params] =
        op.call(grads[0], saved[0], saved[1], saved[2], saved[3], saved[4], saved[5], saved[6],
                data["stride"].toIntVector(), data["padding"].toIntVector(), data["dilation"].toIntVector(),
                data["groups"].toInt(), data["fold_mode"].toStringRef(), data["training"].toBool(), output_mask);
    if (need[0]) out[0] = grad_input;
    if (need[1]) out[1] = grad_weight;
    // grad_params rows: bn_weight, bn_bias, conv bias; the inputs: bias (2), bn_weight (3), bn_bias (4).
    const std::vector<int64_t> dtypes = data["param_dtypes"].toIntVector();
    constexpr int64_t kRow[3] = {2, 0, 1};
    for (size_t i = 0; i < 3; ++i) {
      if (need[2 + i]) out[2 + i] = grad_params[kRow[i]].to(static_cast<at::ScalarType>(dtypes[i]));
    }
    return out;
  }
};

void conv_bn_autograd(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  const at::Tensor input = argument(op, *stack, 0).toTensor();
  const at::Tensor weight = argument(op, *stack, 1).toTensor();
  const std::optional<at::Tensor> bias = argument(op, *stack, 2).toOptional<at::Tensor>();
  const at::Tensor bn_weight = argument(op, *stack, 3).toTensor();
  const at::Tensor bn_bias = argument(op, *stack, 4).toTensor();
  const at::Tensor bias_or_undefined = bias.value_or(at::Tensor());
  const bool graph = needs_graph({&input, &weight, &bias_or_undefined, &bn_weight, &bn_bias});
  call_in_place<ConvBn>(op, keys, stack, graph, input, weight, bias, bn_weight, bn_bias);
}

}  // namespace

TORCH_LIBRARY_IMPL(fakequant, Autograd, m) {
  m.impl("fake_quant_per_tensor", &per_tensor_autograd);
  m.impl("fake_quant_per_channel", &per_channel_autograd);
  m.impl("fake_quant_learnable_per_tensor", &Learnable<LearnablePerTensorOp>::autograd_kernel);
  m.impl("fake_quant_learnable_per_channel", &Learnable<LearnablePerChannelOp>::autograd_kernel);
  for (const char* name : {"fake_quant_moving_average_abs_max", "fake_quant_range_abs_max",
                           "fused_moving_avg_obs_fake_quant", "fake_quant_per_group",
                           "fake_quant_weight_abs_max", "fake_quant_block"}) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&clipped_ste_autograd>());
  }
  m.impl("conv_bn_fake_quant", torch::CppFunction::makeFromBoxedFunction<&conv_bn_autograd>());
}

}  // namespace ext
}  // namespace fakequant
