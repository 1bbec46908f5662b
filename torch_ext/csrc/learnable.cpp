#include "learnable.h"

#include <cmath>
#include <string>
#include <utility>

#include "common.h"

namespace fakequant {
namespace ext {
namespace {

void check_qparam(const char* op, const at::Tensor& t, const char* name, const at::Tensor& input,
                  std::optional<int64_t> channels, int64_t ax) {
  TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", name, " must be a float32 tensor (learnable qparams), got ",
              t.scalar_type());
  if (channels.has_value()) {
    TORCH_CHECK(t.dim() == 1 && t.size(0) == *channels, op, ": ", name, " must be a 1-D tensor of input.size(", ax,
                ") = ", *channels, " elements, got shape ", t.sizes());
  } else {
    TORCH_CHECK(t.numel() == 1, op, ": ", name, " must have exactly 1 element (per-tensor qparams), got ", t.numel(),
                " elements of shape ", t.sizes());
  }
  TORCH_CHECK(t.device() == input.device(), op, ": ", name, " must be on the same device as input (", input.device(),
              "), got ", t.device());
}

// Fills everything but the data pointers of the qparams; returns the axis' index (or -1).
int64_t check_common(const char* op, const at::Tensor& input, const at::Tensor& scale, const at::Tensor& zero_point,
                     std::optional<int64_t> axis, int64_t quant_min, int64_t quant_max, double grad_factor,
                     LearnableQParams* qp, DType* dtype) {
  *dtype = to_dtype(input, op, "input");
  int64_t ax = -1;
  std::optional<int64_t> channels;
  if (axis.has_value()) {
    const int64_t dim = input.dim();
    TORCH_CHECK(dim >= 1, op,
                ": input must have at least 1 dimension for per-channel quantization, got a 0-d tensor");
    TORCH_CHECK(*axis >= -dim && *axis < dim, op, ": axis must lie in [", -dim, ", ", dim - 1, "] for a ", dim,
                "-d input, got ", *axis);
    ax = *axis < 0 ? *axis + dim : *axis;
    channels = input.size(ax);
  }
  check_qparam(op, scale, "scale", input, channels, ax);
  check_qparam(op, zero_point, "zero_point", input, channels, ax);
  const std::string range_error = check_quant_range(quant_min, quant_max);
  TORCH_CHECK(range_error.empty(), op, ": ", range_error);
  const float gf = static_cast<float>(grad_factor);
  TORCH_CHECK(std::isfinite(gf), op, ": grad_factor must be finite (as float32), got ", grad_factor);
  qp->kind = axis.has_value() ? LearnableKind::kPerChannel : LearnableKind::kPerTensor;
  qp->channels = channels.has_value() ? *channels : 1;  // 0 only for an empty input
  qp->quant_min = static_cast<int32_t>(quant_min);
  qp->quant_max = static_cast<int32_t>(quant_max);
  qp->grad_factor = gf;
  return ax;
}

// In a dense tensor the channel of memory offset i is (i / stride(axis)) % C; with one
// channel any positive stride will do.
int64_t channel_stride_of(const at::Tensor& dense, int64_t ax, int64_t channels) {
  return (ax >= 0 && channels > 1) ? dense.stride(ax) : 1;
}

// The call's float32 qparams, contiguous and aligned, and the kernel's view of them; needs
// call.input (the dense input) already set.
template <typename Call>
void bind_qparams(Call& call, const at::Tensor& scale, const at::Tensor& zero_point, int64_t ax) {
  call.scale = contiguous_aligned(scale);
  call.zero_point = contiguous_aligned(zero_point);
  call.qparams.scale = call.scale.template const_data_ptr<float>();
  call.qparams.zero_point = call.zero_point.template const_data_ptr<float>();
  call.qparams.channel_stride = channel_stride_of(call.input, ax, call.qparams.channels);
}

}  // namespace

LearnableForwardCall prepare_learnable_forward(const char* op, const at::Tensor& input, const at::Tensor& scale,
                                               const at::Tensor& zero_point, std::optional<int64_t> axis,
                                               int64_t quant_min, int64_t quant_max, double grad_factor) {
  LearnableForwardCall call;
  DType dtype{};
  const int64_t ax =
      check_common(op, input, scale, zero_point, axis, quant_min, quant_max, grad_factor, &call.qparams, &dtype);
  call.input = dense_or_contiguous(input);
  call.output = at::empty_like(call.input);
  bind_qparams(call, scale, zero_point, ax);
  call.args.dtype = dtype;
  call.args.input = call.input.const_data_ptr();
  call.args.output = call.output.mutable_data_ptr();
  call.args.numel = call.input.numel();
  return call;
}

LearnableBackwardCall prepare_learnable_backward(const char* op, const at::Tensor& grad_output,
                                                 const at::Tensor& input, const at::Tensor& scale,
                                                 const at::Tensor& zero_point, std::optional<int64_t> axis,
                                                 int64_t quant_min, int64_t quant_max, double grad_factor,
                                                 std::array<bool, 3> output_mask) {
  LearnableBackwardCall call;
  DType dtype{};
  const int64_t ax =
      check_common(op, input, scale, zero_point, axis, quant_min, quant_max, grad_factor, &call.qparams, &dtype);
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type(), op, ": grad_output must have input's dtype (",
              input.scalar_type(), "), got ", grad_output.scalar_type());
  TORCH_CHECK(grad_output.sizes() == input.sizes(), op, ": grad_output must have input's shape ", input.sizes(),
              ", got ", grad_output.sizes());
  TORCH_CHECK(grad_output.device() == input.device(), op, ": grad_output must be on the same device as input (",
              input.device(), "), got ", grad_output.device());
  call.input = dense_or_contiguous(input);
  // The kernels pair grad_output and input element by element in memory order.
  call.grad_output = grad_output.strides() == call.input.strides() && is_aligned(grad_output)
                         ? grad_output
                         : at::empty_like(call.input).copy_(grad_output);
  bind_qparams(call, scale, zero_point, ax);
  const auto f32 = call.input.options().dtype(at::kFloat);
  call.grad_input = output_mask[0] ? at::empty_like(call.input) : at::empty({0}, call.input.options());
  call.grad_scale = output_mask[1] ? at::empty(scale.sizes(), f32) : at::empty({0}, f32);
  call.grad_zero_point = output_mask[2] ? at::empty(zero_point.sizes(), f32) : at::empty({0}, f32);
  call.args.dtype = dtype;
  call.args.grad_output = call.grad_output.const_data_ptr();
  call.args.input = call.input.const_data_ptr();
  call.args.grad_input = output_mask[0] ? call.grad_input.mutable_data_ptr() : nullptr;
  call.args.grad_scale = output_mask[1] ? call.grad_scale.mutable_data_ptr<float>() : nullptr;
  call.args.grad_zero_point = output_mask[2] ? call.grad_zero_point.mutable_data_ptr<float>() : nullptr;
  call.args.numel = call.input.numel();
  return call;
}

std::array<bool, 3> learnable_output_mask(const char* op, const c10::List<bool>& output_mask) {
  return output_mask_flags(op, output_mask, "grad_input, grad_scale, grad_zero_point");
}

void check_learnable_qparam_values(const char* op, const at::Tensor& scale, const at::Tensor& zero_point,
                                   bool per_channel) {
  const at::Tensor s = contiguous_aligned(scale);
  const at::Tensor z = contiguous_aligned(zero_point);
  const float* sp = s.const_data_ptr<float>();
  const float* zp = z.const_data_ptr<float>();
  for (int64_t c = 0; c < s.numel(); ++c) {
    const std::string e = check_scale_value(sp[c]);
    if (per_channel) {
      TORCH_CHECK(e.empty(), op, ": channel ", c, ": ", e);
    } else {
      TORCH_CHECK(e.empty(), op, ": ", e);
    }
  }
  for (int64_t c = 0; c < z.numel(); ++c) {
    if (std::isfinite(zp[c])) continue;
    if (per_channel) {
      TORCH_CHECK(false, op, ": channel ", c, ": zero_point must be finite (it is rounded and clamped into ",
                  "[quant_min, quant_max]), got ", zp[c]);
    } else {
      TORCH_CHECK(false, op, ": zero_point must be finite (it is rounded and clamped into [quant_min, quant_max]), got ",
                  zp[c]);
    }
  }
}

at::Tensor learnable_forward(const LearnableBackend& backend, const char* op, const at::Tensor& input,
                             const at::Tensor& scale, const at::Tensor& zero_point, std::optional<int64_t> axis,
                             int64_t quant_min, int64_t quant_max, double grad_factor) {
  LearnableForwardCall call =
      prepare_learnable_forward(op, input, scale, zero_point, axis, quant_min, quant_max, grad_factor);
  backend.forward(op, call, axis.has_value());
  return call.output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> learnable_backward(
    const LearnableBackend& backend, const char* op, const at::Tensor& grad_output, const at::Tensor& input,
    const at::Tensor& scale, const at::Tensor& zero_point, std::optional<int64_t> axis, int64_t quant_min,
    int64_t quant_max, double grad_factor, const c10::List<bool>& output_mask) {
  LearnableBackwardCall call = prepare_learnable_backward(op, grad_output, input, scale, zero_point, axis, quant_min,
                                                          quant_max, grad_factor, learnable_output_mask(op, output_mask));
  backend.backward(op, call, axis.has_value());
  return {call.grad_input, call.grad_scale, call.grad_zero_point};
}

}  // namespace ext
}  // namespace fakequant
