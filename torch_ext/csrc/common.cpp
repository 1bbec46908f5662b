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

int64_t normalize_axis(const char* op, const at::Tensor& input, int64_t axis) {
  const int64_t dim = input.dim();
  TORCH_CHECK(dim >= 1, op, ": input must have at least 1 dimension for per-channel quantization, got a 0-d tensor");
  TORCH_CHECK(axis >= -dim && axis < dim, op, ": axis must lie in [", -dim, ", ", dim - 1, "] for a ", dim,
              "-d input, got ", axis);
  return axis < 0 ? axis + dim : axis;
}

}  // namespace ext
}  // namespace fakequant
