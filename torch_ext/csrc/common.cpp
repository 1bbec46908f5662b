#include "common.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>

namespace fakequant {
namespace ext {

DType to_dtype(const at::Tensor& t, const char* op, const char* arg) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return DType::kFloat32;
    case at::kHalf:
      return DType::kFloat16;
    case at::kBFloat16:
      return DType::kBFloat16;
    default:
      TORCH_CHECK(false, op, ": ", arg, " must be float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

bool is_aligned(const at::Tensor& t) {
  // Meta tensors have no data; an empty tensor is never read.
  if (t.numel() == 0 || t.is_meta()) return true;
  return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % static_cast<uintptr_t>(t.element_size()) == 0;
}

at::Tensor dense_or_contiguous(const at::Tensor& t) {
  if (!t.is_non_overlapping_and_dense()) return t.contiguous();
  // clone keeps a dense tensor's strides, so the output layout is the same either way.
  return is_aligned(t) ? t : t.clone(at::MemoryFormat::Preserve);
}

at::Tensor contiguous_aligned(const at::Tensor& t, at::MemoryFormat format) {
  at::Tensor c = t.contiguous(format);
  return is_aligned(c) ? c : c.clone(format);
}

namespace {

// [first, last) byte offsets of the storage that t's elements span.
std::pair<int64_t, int64_t> storage_byte_span(const at::Tensor& t) {
  int64_t extent = 1;
  for (int64_t d = 0; d < t.dim(); ++d) extent += (t.size(d) - 1) * t.stride(d);
  const int64_t item = static_cast<int64_t>(t.element_size());
  const int64_t first = t.storage_offset() * item;
  return {first, first + extent * item};
}

}  // namespace

bool tensors_overlap(const at::Tensor& a, const at::Tensor& b) {
  if (!a.defined() || !b.defined() || a.numel() == 0 || b.numel() == 0) return false;
  if (!a.has_storage() || !b.has_storage() || !a.storage().is_alias_of(b.storage())) return false;
  const auto [a_first, a_last] = storage_byte_span(a);
  const auto [b_first, b_last] = storage_byte_span(b);
  return a_first < b_last && b_first < a_last;
}

void check_no_overlap(const char* op, std::initializer_list<NamedTensor> updated,
                      std::initializer_list<NamedTensor> read) {
  for (auto u = updated.begin(); u != updated.end(); ++u) {
    for (auto v = u + 1; v != updated.end(); ++v) {
      TORCH_CHECK(!tensors_overlap(*u->first, *v->first), op, ": ", u->second, " and ", v->second,
                  " share memory, but both are updated in place; pass tensors that do not overlap");
    }
    for (const NamedTensor& r : read) {
      TORCH_CHECK(!tensors_overlap(*u->first, *r.first), op, ": ", u->second, " and ", r.second, " share memory, but ",
                  u->second, " is updated in place while ", r.second,
                  " is read; pass tensors that do not overlap (e.g. a clone)");
    }
  }
}

std::array<bool, 3> output_mask_flags(const char* op, const c10::List<bool>& output_mask, const char* outputs) {
  TORCH_CHECK(output_mask.size() == 3, op, ": output_mask must hold 3 flags, one per output (", outputs, "), got ",
              output_mask.size());
  return {output_mask.get(0), output_mask.get(1), output_mask.get(2)};
}

FakeQuantBuffers allocate_fake_quant_buffers(const at::Tensor& input, DType dtype) {
  FakeQuantBuffers b;
  b.input = dense_or_contiguous(input);
  b.output = at::empty_like(b.input);
  b.mask = at::empty({mask_bytes(b.input.numel())}, b.input.options().dtype(at::kByte));
  b.args.dtype = dtype;
  b.args.input = b.input.const_data_ptr();
  b.args.output = b.output.mutable_data_ptr();
  b.args.mask = b.mask.mutable_data_ptr<uint8_t>();
  b.args.numel = b.input.numel();
  return b;
}

static void check_qparam_tensor(const at::Tensor& t, const at::Tensor& input, const char* op,
                                const char* arg, at::ScalarType want) {
  TORCH_CHECK(t.scalar_type() == want, op, ": ", arg, " must be a ", want, " tensor, got ",
              t.scalar_type());
  TORCH_CHECK(t.numel() == 1, op, ": ", arg, " must have exactly 1 element (per-tensor qparams), got ",
              t.numel(), " elements of shape ", t.sizes());
  TORCH_CHECK(t.device() == input.device(), op, ": ", arg, " must be on the same device as input (",
              input.device(), "), got ", t.device());
}

Rounding check_range_and_rounding(const char* op, int64_t quant_min, int64_t quant_max,
                                         c10::string_view rounding) {
  const std::string range_error = check_quant_range(quant_min, quant_max);
  TORCH_CHECK(range_error.empty(), op, ": ", range_error);
  Rounding mode{};
  TORCH_CHECK(parse_rounding(std::string(rounding), &mode), op, ": rounding must be one of ",
              kAcceptedRoundings, ", got '", std::string(rounding), "'");
  return mode;
}

at::Tensor check_seed(const char* op, const at::Tensor& input, Rounding mode, const std::optional<at::Tensor>& seed) {
  if (mode != Rounding::kStochastic) {
    TORCH_CHECK(!seed.has_value(), op, ": seed is only used by rounding='stochastic'; pass seed=None with rounding='",
                rounding_name(mode), "'");
    return {};
  }
  TORCH_CHECK(seed.has_value(), op, ": rounding='stochastic' needs a seed: an int64 tensor of ", kSeedWords,
              " elements (Philox key, counter offset) on input's device (the Python API draws it from the torch "
              "generator)");
  const at::Tensor& s = *seed;
  TORCH_CHECK(s.scalar_type() == at::kLong, op, ": seed must be an int64 tensor of ", kSeedWords,
              " elements (Philox key, counter offset), got ", s.scalar_type());
  TORCH_CHECK(s.dim() == 1 && s.size(0) == kSeedWords, op, ": seed must be a 1-D tensor of ", kSeedWords,
              " elements (Philox key, counter offset), got shape ", s.sizes());
  TORCH_CHECK(s.device() == input.device(), op, ": seed must be on the same device as input (", input.device(),
              "), got ", s.device());
  return contiguous_aligned(s);
}

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

  static_cast<FakeQuantBuffers&>(call) = allocate_fake_quant_buffers(input, dtype);
  call.qparams.seed = call.seed.defined() ? call.seed.const_data_ptr<int64_t>() : nullptr;
  call.scale = contiguous_aligned(scale);
  call.zero_point = contiguous_aligned(zero_point);
  call.qparams.scale = call.scale.const_data_ptr<float>();
  call.qparams.zero_point = call.zero_point.const_data_ptr<int32_t>();
  call.qparams.quant_min = static_cast<int32_t>(quant_min);
  call.qparams.quant_max = static_cast<int32_t>(quant_max);
  call.qparams.rounding = mode;
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

int64_t normalize_axis(const char* op, const at::Tensor& input, int64_t axis) {
  const int64_t dim = input.dim();
  TORCH_CHECK(dim >= 1, op, ": input must have at least 1 dimension for per-channel quantization, got a 0-d tensor");
  TORCH_CHECK(axis >= -dim && axis < dim, op, ": axis must lie in [", -dim, ", ", dim - 1, "] for a ", dim,
              "-d input, got ", axis);
  return axis < 0 ? axis + dim : axis;
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

  static_cast<FakeQuantBuffers&>(call) = allocate_fake_quant_buffers(input, dtype);
  call.qparams.seed = call.seed.defined() ? call.seed.const_data_ptr<int64_t>() : nullptr;
  // In a dense tensor the channel of memory offset i is (i / stride(axis)) % C; with one
  // channel any positive stride will do (a size-1 dimension's stride is arbitrary).
  call.qparams.channel_stride = channels > 1 ? call.input.stride(ax) : 1;
  call.qparams.channels = std::max<int64_t>(channels, 1);
  call.scale = contiguous_aligned(scale);
  call.zero_point = contiguous_aligned(zero_point);
  call.qparams.scale = call.scale.const_data_ptr<float>();
  call.qparams.zero_point = call.zero_point.const_data_ptr();
  call.qparams.zero_point_type = zero_point.scalar_type() == at::kFloat ? ZeroPointType::kFloat32 : ZeroPointType::kInt32;
  call.qparams.quant_min = static_cast<int32_t>(quant_min);
  call.qparams.quant_max = static_cast<int32_t>(quant_max);
  call.qparams.rounding = mode;
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
