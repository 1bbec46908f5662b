#include "convbn.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include <array>
#include <cmath>
#include <string>

#include "common.h"
#include "fakequant/weight_quant.h"

namespace fakequant {
namespace ext {
namespace {

constexpr const char* kOp = "fakequant.conv_bn_fake_quant";
constexpr const char* kBackwardOp = "fakequant.conv_bn_fake_quant_backward";

ConvBnDType activation_dtype(const at::Tensor& t, const char* op, const char* arg) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return ConvBnDType::kFloat32;
    case at::kHalf:
      return ConvBnDType::kFloat16;
    case at::kBFloat16:
      return ConvBnDType::kBFloat16;
    case at::kDouble:
      return ConvBnDType::kFloat64;
    default:
      TORCH_CHECK(false, op, ": ", arg, " must be float32, float16, bfloat16 or float64, got ", t.scalar_type());
  }
}

at::ScalarType acc_type(ConvBnDType d) { return d == ConvBnDType::kFloat64 ? at::kDouble : at::kFloat; }

// Activations are processed channels_last when the input is (and NCHW otherwise); the
// convolution outputs, the saved activation, the ReLU mask and the gradients follow.
at::MemoryFormat activation_format(const at::Tensor& x) {
  return (!x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast)) ? at::MemoryFormat::ChannelsLast
                                                                                 : at::MemoryFormat::Contiguous;
}

ActivationLayout layout_of(const at::Tensor& t, at::MemoryFormat fmt) {
  ActivationLayout l;
  const int64_t hw = t.size(2) * t.size(3);
  l.channels = t.size(1);
  if (fmt == at::MemoryFormat::ChannelsLast) {
    l.outer = t.size(0) * hw;
    l.inner = 1;
  } else {
    l.outer = t.size(0);
    l.inner = hw;
  }
  return l;
}

void check_pair(const char* op, const char* name, at::IntArrayRef v, int64_t min) {
  TORCH_CHECK(v.size() == 1 || v.size() == 2, op, ": ", name, " must be an int or a pair of ints, got ", v.size(),
              " values");
  for (const int64_t e : v) {
    TORCH_CHECK(e >= min, op, ": ", name, " must be >= ", min, ", got ", v);
  }
}

void check_channel_vector(const char* op, const char* name, const at::Tensor& t, const at::Tensor& input,
                          int64_t channels) {
  TORCH_CHECK(t.device() == input.device(), op, ": ", name, " must be on the same device as input (", input.device(),
              "), got ", t.device());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == channels, op, ": ", name, " must have shape [", channels,
              "] (out_channels), got ", t.sizes());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be a floating-point tensor, got ",
              t.scalar_type());
}

void check_running_stat(const char* op, const char* name, const at::Tensor& t, const at::Tensor& input,
                        int64_t channels) {
  TORCH_CHECK(t.device() == input.device(), op, ": ", name, " must be on the same device as input (", input.device(),
              "), got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", name, " must be a float32 tensor (updated in place), got ",
              t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == channels, op, ": ", name, " must have shape [", channels,
              "] (out_channels), got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous (it is updated in place)");
  TORCH_CHECK(is_aligned(t), op, ": ", name, " must be aligned to its element size (4 bytes; it is updated in place)");
}

void check_same_device(const char* op, const char* name, const at::Tensor& t, const at::Tensor& input) {
  TORCH_CHECK(t.device() == input.device(), op, ": ", name, " must be on the same device as input (", input.device(),
              "), got ", t.device());
}

// The weight's dtype: input's, or float32 with a float16 / bfloat16 input.
void check_weight_dtype(const char* op, const char* name, const at::Tensor& weight, const at::Tensor& input,
                        ConvBnDType dtype) {
  const bool ok =
      weight.scalar_type() == input.scalar_type() ||
      (weight.scalar_type() == at::kFloat && (dtype == ConvBnDType::kFloat16 || dtype == ConvBnDType::kBFloat16));
  TORCH_CHECK(ok, op, ": ", name, " must have input's dtype (", input.scalar_type(),
              "), or float32 with a float16/bfloat16 input, got ", weight.scalar_type());
}

// input / weight / groups / stride / padding / dilation, shared by the forward and the backward.
int64_t check_conv_arguments(const char* op, const at::Tensor& input, const at::Tensor& weight, int64_t groups,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                             ConvBnDType dtype) {
  TORCH_CHECK(input.dim() == 4, op, ": input must be a 4-d NCHW tensor, got ", input.dim(), " dimensions");
  check_same_device(op, "weight", weight, input);
  TORCH_CHECK(weight.dim() == 4, op, ": weight must be a 4-d [out_channels, in_channels/groups, kh, kw] tensor, got ",
              weight.dim(), " dimensions");
  check_weight_dtype(op, "weight", weight, input, dtype);
  TORCH_CHECK(groups >= 1, op, ": groups must be >= 1, got ", groups);
  const int64_t channels = weight.size(0);
  TORCH_CHECK(channels >= 1, op, ": weight must have at least one output channel");
  TORCH_CHECK(channels % groups == 0, op, ": out_channels (", channels, ") must be divisible by groups (", groups, ")");
  TORCH_CHECK(input.size(1) == weight.size(1) * groups, op, ": input has ", input.size(1),
              " channels, but weight expects in_channels = weight.size(1) * groups = ", weight.size(1) * groups);
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  check_pair(op, "dilation", dilation, 1);
  return channels;
}

// A packed 1-bit mask saved by the forward: uint8, contiguous 1-D, empty or `bytes` long.
void check_saved_mask(const char* op, const char* name, const at::Tensor& mask, const at::Tensor& input, int64_t bytes,
                      const char* of) {
  check_same_device(op, name, mask, input);
  TORCH_CHECK(mask.scalar_type() == at::kByte, op, ": ", name, " must be a uint8 tensor (1 bit per element of ", of,
              "), got ", mask.scalar_type());
  TORCH_CHECK(mask.dim() == 1 && mask.is_contiguous(), op, ": ", name,
              " must be a contiguous 1-D tensor, as conv_bn_fake_quant returns it, got shape ", mask.sizes(),
              " with strides ", mask.strides());
  TORCH_CHECK(mask.numel() == 0 || mask.numel() == bytes, op, ": ", name, " must be empty or hold ceil(numel / 8) = ",
              bytes, " bytes of ", of, ", got ", mask.numel());
}

// The convolution's output size along one spatial dimension.
int64_t conv_output_size(int64_t in, int64_t kernel, int64_t stride, int64_t padding, int64_t dilation) {
  return (in + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1;
}

int64_t pair_at(at::IntArrayRef v, size_t i) { return v.size() == 1 ? v[0] : v[i]; }

bool parse_fold_mode(const char* op, c10::string_view fold_mode) {
  const std::string m(fold_mode);
  TORCH_CHECK(m == "batch" || m == "running", op, ": fold_mode must be 'batch' or 'running', got '", m, "'");
  return m == "batch";
}

at::Tensor double_vector(const at::Tensor& t) { return contiguous_aligned(t.to(at::kDouble)); }

template <typename T>
T* ptr(const at::Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.mutable_data_ptr<T>() : nullptr;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> weight_abs_max(const at::Tensor& w, int64_t quant_min,
                                                              int64_t quant_max, c10::string_view rounding,
                                                              double eps) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fakequant::fake_quant_weight_abs_max", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, int64_t, int64_t, int64_t,
                                                                  c10::string_view, double)>();
  return op.call(w, 0, quant_min, quant_max, rounding, eps);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> conv_bn_fake_quant_forward(
    const ConvBnBackend& backend, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& bn_weight, const at::Tensor& bn_bias,
    at::Tensor& running_mean, at::Tensor& running_var, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, double eps, double momentum, c10::string_view fold_mode, bool training,
    bool relu, bool quantize_weight, int64_t quant_min, int64_t quant_max, c10::string_view rounding,
    double weight_eps) {
  const char* op = kOp;
  // --- checks (nothing is read from tensor values) ---
  const ConvBnDType dtype = activation_dtype(input, op, "input");
  const int64_t channels = check_conv_arguments(op, input, weight, groups, stride, padding, dilation, dtype);
  if (bias.has_value()) check_channel_vector(op, "bias", *bias, input, channels);
  check_channel_vector(op, "bn_weight", bn_weight, input, channels);
  check_channel_vector(op, "bn_bias", bn_bias, input, channels);
  check_running_stat(op, "running_mean", running_mean, input, channels);
  check_running_stat(op, "running_var", running_var, input, channels);
  const at::Tensor no_bias;
  check_no_overlap(op, {{&running_mean, "running_mean"}, {&running_var, "running_var"}},
                   {{&input, "input"}, {&weight, "weight"}, {bias.has_value() ? &*bias : &no_bias, "bias"},
                    {&bn_weight, "bn_weight"}, {&bn_bias, "bn_bias"}});
  TORCH_CHECK(std::isfinite(eps) && eps > 0, op, ": eps must be finite and > 0, got ", eps);
  TORCH_CHECK(std::isfinite(momentum), op, ": momentum must be finite, got ", momentum);
  const bool batch = parse_fold_mode(op, fold_mode);
  Rounding rounding_mode{};
  TORCH_CHECK(parse_rounding(std::string(rounding), &rounding_mode) && rounding_mode != Rounding::kStochastic, op,
              ": rounding must be one of 'half_even', 'half_away', got '", std::string(rounding), "'");
  const std::string range_error = check_quant_range(quant_min, quant_max);
  TORCH_CHECK(range_error.empty(), op, ": ", range_error);
  const std::string symmetric_error = check_symmetric_quant_range(quant_min, quant_max);
  TORCH_CHECK(symmetric_error.empty(), op, ": ", symmetric_error);
  const std::string eps_error = check_eps_value(weight_eps);
  TORCH_CHECK(eps_error.empty(), op, ": weight_", eps_error);

  const at::MemoryFormat fmt = activation_format(input);
  const at::Tensor x = contiguous_aligned(input, fmt);
  const at::Tensor w = contiguous_aligned(weight);  // read by the fold kernel
  const at::ScalarType act = input.scalar_type();
  const at::TensorOptions opts = x.options();
  const int64_t length = w.numel() / channels;

  auto conv = [&](const at::Tensor& kernel) {
    return at::convolution(x, kernel.to(act), std::nullopt, stride, padding, dilation, false, {0, 0}, groups)
        .contiguous(fmt);
  };
  const at::Tensor gamma = double_vector(bn_weight);
  const at::Tensor beta = double_vector(bn_bias);
  const at::Tensor bias_d = bias.has_value() ? double_vector(*bias) : at::Tensor();
  const at::Tensor rows = at::empty({kConvBnRows, channels}, opts.dtype(at::kDouble));
  const at::Tensor coef = at::empty({2, channels}, opts.dtype(acc_type(dtype)));
  const at::Tensor moments = at::empty({2, channels}, opts.dtype(at::kDouble));

  ConvBnChannelArgs ch;
  ch.training = training;
  ch.dtype = dtype;
  ch.channels = channels;
  ch.eps = eps;
  ch.momentum = momentum;
  ch.gamma = gamma.const_data_ptr<double>();
  ch.beta = beta.const_data_ptr<double>();
  ch.bias = bias_d.defined() ? bias_d.const_data_ptr<double>() : nullptr;
  ch.running_mean = running_mean.mutable_data_ptr<float>();
  ch.running_var = running_var.mutable_data_ptr<float>();
  ch.mean = moments.const_data_ptr<double>();
  ch.var = moments.const_data_ptr<double>() + channels;
  ch.rows = rows.mutable_data_ptr<double>();
  ch.coef = coef.mutable_data_ptr();

  auto run_moments = [&](const at::Tensor& z) {
    ChannelMomentsArgs m;
    m.dtype = dtype;
    m.input = z.const_data_ptr();
    m.layout = layout_of(z, fmt);
    m.mean = moments.mutable_data_ptr<double>();
    m.var = moments.mutable_data_ptr<double>() + channels;
    ch.count = static_cast<double>(m.layout.per_channel());
    TORCH_CHECK(m.layout.per_channel() > 1, op, ": expected more than 1 value per channel when training, got an ",
                "output of size ", z.sizes());
    backend.moments(m);
  };
  // Q(W * s): the fold (float32, or float64 for a float64 weight), then the weight abs-max
  // fake quantization of fake_quant_weight_abs_max on the float32 fold.
  auto fold_and_quantize = [&]() -> std::pair<at::Tensor, at::Tensor> {
    FoldWeightArgs f;
    f.dtype = activation_dtype(w, op, "weight");
    const at::Tensor folded =
        at::empty({channels, length}, opts.dtype(w.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
    f.weight = w.const_data_ptr();
    f.folded = folded.mutable_data_ptr();
    f.scale = rows.const_data_ptr<double>() + kRowScale * channels;
    f.channels = channels;
    f.channel_length = length;
    backend.fold(f);
    if (!quantize_weight) return {folded.to(act).view(w.sizes()), at::empty({0}, opts.dtype(at::kByte))};
    auto [q, mask, scale] = weight_abs_max(folded.to(at::kFloat), quant_min, quant_max, rounding, weight_eps);
    return {q.to(act).view(w.sizes()), mask};
  };
  auto epilogue = [&](const at::Tensor& in, const at::Tensor& out, const at::Tensor& relu_mask) {
    ConvBnEpilogueArgs e;
    e.dtype = dtype;
    e.input = in.const_data_ptr();
    e.output = out.mutable_data_ptr();
    e.relu_mask = relu ? relu_mask.mutable_data_ptr<uint8_t>() : nullptr;
    e.coef = coef.const_data_ptr();
    e.layout = layout_of(in, fmt);
    backend.epilogue(e);
  };
  auto relu_mask_for = [&](const at::Tensor& out) {
    return at::empty({relu ? mask_bytes(out.numel()) : 0}, opts.dtype(at::kByte));
  };

  // Fold with the per-channel values of `phase`, quantise the fold, convolve with it.
  auto folded_conv = [&](ConvBnPhase phase) {
    ch.phase = phase;
    backend.channels(ch);
    auto [wq, weight_mask] = fold_and_quantize();
    at::Tensor u = conv(wq);
    return std::make_tuple(u, wq, weight_mask);
  };

  if (training && batch) {
    // z = conv(x, W) for the batch statistics, then the fused convolution.
    const at::Tensor z = conv(w);
    run_moments(z);
    auto [u, wq, weight_mask] = folded_conv(ConvBnPhase::kBatchStats);
    const at::Tensor relu_mask = relu_mask_for(u);
    epilogue(u, u, relu_mask);
    return {u, z, wq, weight_mask, relu_mask, rows};
  }
  if (training) {
    // Running mode: fold with the running variance, one convolution, BN on its output.
    auto [u, wq, weight_mask] = folded_conv(ConvBnPhase::kRunningPreFold);
    run_moments(u);
    ch.phase = ConvBnPhase::kRunningStats;
    backend.channels(ch);
    const at::Tensor y = at::empty_like(u);
    const at::Tensor relu_mask = relu_mask_for(u);
    epilogue(u, y, relu_mask);
    return {y, u, wq, weight_mask, relu_mask, rows};
  }
  // Eval / frozen BN: fold with the running statistics, one convolution, no statistics.
  auto [u, wq, weight_mask] = folded_conv(ConvBnPhase::kEval);
  const at::Tensor relu_mask = relu_mask_for(u);
  epilogue(u, u, relu_mask);
  return {u, at::empty({0}, opts), wq, weight_mask, relu_mask, rows};
}

std::array<bool, 3> conv_bn_output_mask(const c10::List<bool>& output_mask) {
  return output_mask_flags(kBackwardOp, output_mask, "grad_input, grad_weight, grad_params");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_bn_fake_quant_backward(
    const ConvBnBackend& backend, const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& pre_bn, const at::Tensor& weight_q, const at::Tensor& weight_mask, const at::Tensor& relu_mask,
    const at::Tensor& channel_state, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    int64_t groups, c10::string_view fold_mode, bool training, std::array<bool, 3> output_mask) {
  const char* op = kBackwardOp;
  // Every saved tensor is checked (dtype, shape, layout, device) before anything is read: the
  // kernels index them by the shapes of input, weight and grad_output.
  const ConvBnDType dtype = activation_dtype(input, op, "input");
  const int64_t channels = check_conv_arguments(op, input, weight, groups, stride, padding, dilation, dtype);
  check_same_device(op, "grad_output", grad_output, input);
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type(), op, ": grad_output must have input's dtype (",
              input.scalar_type(), "), got ", grad_output.scalar_type());
  const std::array<int64_t, 4> out_shape = {
      input.size(0), channels,
      conv_output_size(input.size(2), weight.size(2), pair_at(stride, 0), pair_at(padding, 0), pair_at(dilation, 0)),
      conv_output_size(input.size(3), weight.size(3), pair_at(stride, 1), pair_at(padding, 1), pair_at(dilation, 1))};
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(out_shape), op,
              ": grad_output must have the convolution output's shape ", at::IntArrayRef(out_shape), ", got ",
              grad_output.sizes());
  check_same_device(op, "channel_state", channel_state, input);
  TORCH_CHECK(channel_state.scalar_type() == at::kDouble && channel_state.dim() == 2 &&
                  channel_state.size(0) == kConvBnRows && channel_state.size(1) == channels,
              op, ": channel_state must be the float64 [", static_cast<int>(kConvBnRows), ", ", channels,
              "] tensor returned by conv_bn_fake_quant, got ", channel_state.scalar_type(), " ",
              channel_state.sizes());
  const bool batch = parse_fold_mode(op, fold_mode);
  const bool batch_training = batch && training;
  check_same_device(op, "pre_bn", pre_bn, input);
  if (training) {
    TORCH_CHECK(pre_bn.scalar_type() == input.scalar_type(), op, ": pre_bn must have input's dtype (",
                input.scalar_type(), "), as conv_bn_fake_quant returns it, got ", pre_bn.scalar_type());
    TORCH_CHECK(pre_bn.sizes() == grad_output.sizes(), op, ": pre_bn must have grad_output's shape ",
                grad_output.sizes(), " in training, got ", pre_bn.sizes());
  } else {
    TORCH_CHECK(pre_bn.numel() == 0, op,
                ": pre_bn must be empty with training=False (conv_bn_fake_quant returns [0] there), got shape ",
                pre_bn.sizes());
  }
  check_same_device(op, "weight_q", weight_q, input);
  TORCH_CHECK(weight_q.sizes() == weight.sizes(), op, ": weight_q must have weight's shape ", weight.sizes(), ", got ",
              weight_q.sizes());
  TORCH_CHECK(weight_q.scalar_type() == input.scalar_type() || weight_q.scalar_type() == weight.scalar_type(), op,
              ": weight_q must have input's dtype (", input.scalar_type(), ") or weight's (", weight.scalar_type(),
              "), got ", weight_q.scalar_type());
  check_saved_mask(op, "weight_mask", weight_mask, input, mask_bytes(weight.numel()), "weight");
  check_saved_mask(op, "relu_mask", relu_mask, input, mask_bytes(grad_output.numel()), "the output");
  const bool relu = relu_mask.numel() > 0;

  const at::MemoryFormat fmt = activation_format(input);
  const at::Tensor x = contiguous_aligned(input, fmt);
  const at::Tensor g = contiguous_aligned(grad_output, fmt);
  const at::Tensor z = training ? contiguous_aligned(pre_bn, fmt) : at::Tensor();
  const at::Tensor rows = contiguous_aligned(channel_state);
  const at::TensorOptions opts = x.options();
  const ActivationLayout layout = layout_of(g, fmt);
  const bool need_input = output_mask[0], need_weight = output_mask[1], need_params = output_mask[2];
  const bool need_weight_sums = need_params && !batch_training;
  const bool need_conv_weight_grad = need_weight || need_weight_sums;

  ConvBnChannelArgs ch;
  ch.training = training;
  ch.dtype = dtype;
  ch.channels = channels;
  ch.count = static_cast<double>(layout.per_channel());
  ch.rows = const_cast<double*>(rows.const_data_ptr<double>());  // read only in the backward phases

  const at::Tensor sums = at::empty({2, channels}, opts.dtype(at::kDouble));
  if (training || need_params) {
    ChannelGradSumsArgs s;
    s.dtype = dtype;
    s.grad_output = g.const_data_ptr();
    s.pre_bn = training ? z.const_data_ptr() : nullptr;
    s.relu_mask = relu ? relu_mask.const_data_ptr<uint8_t>() : nullptr;
    s.mean = rows.const_data_ptr<double>() + kRowMean * channels;
    s.layout = layout;
    s.sums = sums.mutable_data_ptr<double>();
    backend.grad_sums(s);
  }
  ch.sums = sums.const_data_ptr<double>();

  at::Tensor grad_input, grad_weight, grad_params, weight_sums;
  if (need_input || need_conv_weight_grad) {
    at::Tensor dz = g;
    if (training || relu) {
      const at::Tensor coef = at::empty({4, channels}, opts.dtype(acc_type(dtype)));
      ch.phase = ConvBnPhase::kBackwardCoef;
      ch.coef = coef.mutable_data_ptr();
      backend.channels(ch);
      dz = at::empty_like(g);
      ConvBnBackwardArgs b;
      b.dtype = dtype;
      b.grad_output = g.const_data_ptr();
      b.pre_bn = training ? z.const_data_ptr() : nullptr;
      b.relu_mask = relu ? relu_mask.const_data_ptr<uint8_t>() : nullptr;
      b.coef = coef.const_data_ptr();
      b.grad_pre_bn = dz.mutable_data_ptr();
      b.layout = layout;
      backend.backward(b);
    }
    // The unfused graph differentiates conv(x, W) in batch mode, conv(x, Q(W s)) otherwise.
    const at::Tensor conv_weight = (batch_training ? weight : weight_q).to(input.scalar_type());
    auto [dx, dw, db] = at::convolution_backward(dz, x, conv_weight, std::nullopt, stride, padding, dilation, false,
                                                 {0, 0}, groups, {need_input, need_conv_weight_grad, false});
    grad_input = need_input ? dx.contiguous(fmt) : dx;
    if (need_conv_weight_grad) {
      const at::Tensor w = contiguous_aligned(weight);
      const at::Tensor dwc = dw.to(w.scalar_type()).contiguous();
      if (need_weight_sums) weight_sums = at::empty({channels}, opts.dtype(at::kDouble));
      grad_weight = at::empty_like(w);
      WeightGradArgs wg;
      wg.dtype = activation_dtype(w, op, "weight");
      wg.grad_conv = dwc.const_data_ptr();
      wg.weight = w.const_data_ptr();
      wg.mask = weight_mask.numel() > 0 ? weight_mask.const_data_ptr<uint8_t>() : nullptr;
      wg.scale = batch_training ? nullptr : rows.const_data_ptr<double>() + kRowScale * channels;
      wg.grad_weight = grad_weight.mutable_data_ptr();
      wg.weight_sums = ptr<double>(weight_sums);
      wg.channels = channels;
      wg.channel_length = w.numel() / channels;
      backend.weight_grad(wg);
      ch.weight_sums = ptr<double>(weight_sums);
      if (!need_weight) grad_weight = at::Tensor();
    }
  }
  if (need_params) {
    grad_params = at::empty({3, channels}, opts.dtype(at::kDouble));
    ch.phase = ConvBnPhase::kBackwardParams;
    ch.grads = grad_params.mutable_data_ptr<double>();
    backend.channels(ch);
  }
  auto or_empty = [&](const at::Tensor& t, const at::TensorOptions& o) { return t.defined() ? t : at::empty({0}, o); };
  return {or_empty(grad_input, opts), or_empty(grad_weight, weight.options()),
          or_empty(grad_params, opts.dtype(at::kDouble))};
}

}  // namespace ext
}  // namespace fakequant
