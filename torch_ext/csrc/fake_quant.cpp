#include "fake_quant.h"

#include <string>

namespace fakequant {
namespace ext {
namespace {

void check_qparam_tensor(const at::Tensor& t, const at::Tensor& input, const char* op, const char* arg,
                         at::ScalarType want) {
  TORCH_CHECK(t.scalar_type() == want, op, ": ", arg, " must be a ", want, " tensor, got ",
              t.scalar_type());
  TORCH_CHECK(t.numel() == 1, op, ": ", arg, " must have exactly 1 element (per-tensor qparams), got ",
              t.numel(), " elements of shape ", t.sizes());
  TORCH_CHECK(t.device() == input.device(), op, ": ", arg, " must be on the same device as input (",
              input.device(), "), got ", t.device());
}

// What prepare_fake_quant_per_tensor / _per_channel fill alike once the arguments are checked:
// the outputs, the seed, the aligned qparam tensors and the qparams but their zero point and
// channels.
template <typename Call>
void prepare_common(Call& call, const at::Tensor& input, DType dtype, const at::Tensor& scale,
                    const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max, Rounding mode) {
  static_cast<FakeQuantBuffers&>(call) = allocate_fake_quant_buffers(input, dtype);
  call.qparams.seed = call.seed.defined() ? call.seed.template const_data_ptr<int64_t>() : nullptr;
  call.scale = contiguous_aligned(scale);
  call.zero_point = contiguous_aligned(zero_point);
  call.qparams.scale = call.scale.template const_data_ptr<float>();
  call.qparams.quant_min = static_cast<int32_t>(quant_min);
  call.qparams.quant_max = static_cast<int32_t>(quant_max);
  call.qparams.rounding = mode;
}

}  // namespace

PerTensorCall prepare_fake_quant_per_tensor(const at::Tensor& input, const at::Tensor& scale,
                                            const at::Tensor& zero_point, int64_t quant_min,
                                            int64_t quant_max, c10::string_view rounding,
                                            const std::optional<at::Tensor>& seed) {
  constexpr const char* op = "fakequant.fake_quant_per_tensor";
  PerTensorCall call;
  const DType dtype = to_dtype(input, op, "input");
  check_qparam_tensor(scale, input, op, "scale", at::kFloat);
  check_qparam_tensor(zero_point, input, op, "zero_point", at::kInt);
  const Rounding mode = check_range_and_rounding(op, quant_min, quant_max, rounding);
  call.seed = check_seed(op, input, mode, seed);

  prepare_common(call, input, dtype, scale, zero_point, quant_min, quant_max, mode);
  call.qparams.zero_point = call.zero_point.const_data_ptr<int32_t>();
  return call;
}

void check_per_tensor_qparam_values(const at::Tensor& scale, const at::Tensor& zero_point,
                                    int64_t quant_min, int64_t quant_max) {
  constexpr const char* op = "fakequant.fake_quant_per_tensor";
  const std::string scale_error = check_scale_value(*scale.const_data_ptr<float>());
  TORCH_CHECK(scale_error.empty(), op, ": ", scale_error);
  const std::string zp_error =
      check_zero_point_value(*zero_point.const_data_ptr<int32_t>(), quant_min, quant_max);
  TORCH_CHECK(zp_error.empty(), op, ": ", zp_error);
}


PerChannelCall prepare_fake_quant_per_channel(const at::Tensor& input, const at::Tensor& scale,
                                              const at::Tensor& zero_point, int64_t axis, int64_t quant_min,
                                              int64_t quant_max, c10::string_view rounding,
                                              const std::optional<at::Tensor>& seed) {
  constexpr const char* op = "fakequant.fake_quant_per_channel";
  PerChannelCall call;
  const DType dtype = to_dtype(input, op, "input");
  const int64_t ax = normalize_axis(op, input, axis);
  const int64_t channels = input.size(ax);
  TORCH_CHECK(scale.scalar_type() == at::kFloat, op, ": scale must be a Float tensor, got ", scale.scalar_type());
  TORCH_CHECK(zero_point.scalar_type() == at::kInt || zero_point.scalar_type() == at::kFloat, op,
              ": zero_point must be an Int (integer zero point) or Float (float zero point) tensor, got ",
              zero_point.scalar_type());
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{scale, "scale"}, {zero_point, "zero_point"}}) {
    TORCH_CHECK(t.dim() == 1 && t.size(0) == channels, op, ": ", name, " must be a 1-D tensor of input.size(", ax,
                ") = ", channels, " elements, got shape ", t.sizes());
    TORCH_CHECK(t.device() == input.device(), op, ": ", name, " must be on the same device as input (",
                input.device(), "), got ", t.device());
  }
  const Rounding mode = check_range_and_rounding(op, quant_min, quant_max, rounding);
  call.seed = check_seed(op, input, mode, seed);

  prepare_common(call, input, dtype, scale, zero_point, quant_min, quant_max, mode);
  // In a dense tensor the channel of memory offset i is (i / stride(axis)) % C; with one
  // channel any positive stride will do (a size-1 dimension's stride is arbitrary).
  call.qparams.channel_stride = channels > 1 ? call.input.stride(ax) : 1;
  call.qparams.channels = std::max<int64_t>(channels, 1);
  call.qparams.zero_point = call.zero_point.const_data_ptr();
  call.qparams.zero_point_type = zero_point.scalar_type() == at::kFloat ? ZeroPointType::kFloat32 : ZeroPointType::kInt32;
  return call;
}

void check_per_channel_qparam_values(const at::Tensor& scale, const at::Tensor& zero_point,
                                     int64_t quant_min, int64_t quant_max) {
  constexpr const char* op = "fakequant.fake_quant_per_channel";
  const at::Tensor s = contiguous_aligned(scale);
  const at::Tensor z = contiguous_aligned(zero_point);
  const float* sp = s.const_data_ptr<float>();
  for (int64_t c = 0; c < s.numel(); ++c) {
    const std::string e = check_scale_value(sp[c]);
    TORCH_CHECK(e.empty(), op, ": channel ", c, ": ", e);
  }
  for (int64_t c = 0; c < z.numel(); ++c) {
    const double zp = z.scalar_type() == at::kFloat ? z.const_data_ptr<float>()[c] : z.const_data_ptr<int32_t>()[c];
    TORCH_CHECK(zp >= quant_min && zp <= quant_max, op, ": channel ", c, ": zero_point (", zp,
                ") must lie in [quant_min, quant_max] = [", quant_min, ", ", quant_max, "]");
  }
}

MaskedGradCall prepare_masked_grad(const at::Tensor& grad_output, const at::Tensor& mask) {
  constexpr const char* op = "fakequant.fake_quant_mask_backward";
  MaskedGradCall call;
  const DType dtype = to_dtype(grad_output, op, "grad_output");
  TORCH_CHECK(grad_output.is_non_overlapping_and_dense(), op,
              ": grad_output must be non-overlapping and dense, laid out like the forward output");
  TORCH_CHECK(mask.scalar_type() == at::kByte, op, ": mask must be a uint8 tensor, got ", mask.scalar_type());
  TORCH_CHECK(mask.dim() == 1 && mask.is_contiguous(), op, ": mask must be a contiguous 1-D tensor, got shape ",
              mask.sizes());
  TORCH_CHECK(mask.numel() == mask_bytes(grad_output.numel()), op, ": mask must have ceil(numel / 8) = ",
              mask_bytes(grad_output.numel()), " bytes for grad_output of ", grad_output.numel(),
              " elements, got ", mask.numel());
  TORCH_CHECK(mask.device() == grad_output.device(), op, ": mask must be on the same device as grad_output (",
              grad_output.device(), "), got ", mask.device());
  call.grad_output = is_aligned(grad_output) ? grad_output : grad_output.clone(at::MemoryFormat::Preserve);
  call.grad_input = at::empty_like(grad_output);
  call.args.dtype = dtype;
  call.args.grad_output = call.grad_output.const_data_ptr();
  call.args.mask = mask.const_data_ptr<uint8_t>();
  call.args.grad_input = call.grad_input.mutable_data_ptr();
  call.args.numel = grad_output.numel();
  return call;
}


}  // namespace ext
}  // namespace fakequant
