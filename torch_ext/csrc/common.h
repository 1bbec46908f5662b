// Argument checks and output allocation shared by the CPU and CUDA bindings, so that every
// backend rejects the same inputs with the same messages and allocates the same layouts.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/string_view.h>

#include <ATen/core/List.h>

#include <array>
#include <initializer_list>
#include <optional>
#include <utility>

#include "fakequant/fake_quant.h"

namespace fakequant {
namespace ext {

// float32 / float16 / bfloat16 -> DType; anything else is an error naming `arg`.
DType to_dtype(const at::Tensor& t, const char* op, const char* arg);

// Whether the data pointer is a multiple of the element size. A tensor can sit at any byte
// (torch.frombuffer with an odd offset, a NumPy view); the kernels load whole elements, and
// vectorised loops assume at least element alignment.
bool is_aligned(const at::Tensor& t);

// Dense tensors are processed in memory order; anything else is made contiguous first. A
// misaligned tensor is copied (keeping a dense tensor's strides), so the kernels never read
// a misaligned element.
at::Tensor dense_or_contiguous(const at::Tensor& t);

// t.contiguous(format), copied if misaligned: the read-only inputs the kernels take contiguous.
at::Tensor contiguous_aligned(const at::Tensor& t, at::MemoryFormat format = at::MemoryFormat::Contiguous);

// A named tensor argument, for the checks below.
using NamedTensor = std::pair<const at::Tensor*, const char*>;

// Whether two tensors share bytes of one storage (conservatively: the byte ranges their
// elements span intersect; exact for contiguous tensors).
bool tensors_overlap(const at::Tensor& a, const at::Tensor& b);

// Ops that update state in place: no updated tensor may share memory with another argument
// (another updated one, or one the op reads), or the op would read values it has already
// overwritten. Raises naming both arguments.
void check_no_overlap(const char* op, std::initializer_list<NamedTensor> updated,
                      std::initializer_list<NamedTensor> read);

// output_mask of the backward ops: exactly three flags (the schema's bool[3] is not checked by
// the dispatcher with a message that names the op). `outputs` names them.
std::array<bool, 3> output_mask_flags(const char* op, const c10::List<bool>& output_mask, const char* outputs);

// The tensors of one quant-dequant call and the kernel arguments pointing at them.
struct FakeQuantBuffers {
  at::Tensor input;   // dense
  at::Tensor output;  // empty_like(input)
  at::Tensor mask;    // uint8 [mask_bytes(numel)]
  FakeQuantArgs args;
};

FakeQuantBuffers allocate_fake_quant_buffers(const at::Tensor& input, DType dtype);

// The checks every quant-dequant op shares: the quant range and the rounding name.
Rounding check_range_and_rounding(const char* op, int64_t quant_min, int64_t quant_max, c10::string_view rounding);

// axis in [-dim, dim) of a tensor with at least one dimension -> [0, dim).
int64_t normalize_axis(const char* op, const at::Tensor& input, int64_t axis);
// The seed rules of stochastic rounding: with rounding 'stochastic', `seed` must be given,
// int64, 1-D of kSeedWords elements, on input's device; with any other rounding it must be
// absent (nothing is silently ignored). Returns the seed made contiguous, or an undefined
// tensor when there is none.
at::Tensor check_seed(const char* op, const at::Tensor& input, Rounding mode, const std::optional<at::Tensor>& seed);

}  // namespace ext
}  // namespace fakequant
