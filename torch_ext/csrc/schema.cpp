// The one place where fakequant's operator schemas are defined. Backends register their
// kernels in cpu/, cuda/; fake (meta) kernels and autograd are registered from Python
// (torch_ext/fakequant/_registrations.py).
#include <torch/library.h>

TORCH_LIBRARY(fakequant, m) {
  // Per-tensor affine quant-dequant with tensor qparams (scale: float32, 1 element;
  // zero_point: int32, 1 element). Returns the output (same dtype and layout as input)
  // and the clipped-STE mask packed 1 bit per element (uint8, ceil(numel / 8) bytes, bit
  // i % 8 of byte i / 8, in the output's memory order).
  m.def(
      "fake_quant_per_tensor(Tensor input, Tensor scale, Tensor zero_point, int quant_min, "
      "int quant_max, str rounding=\"half_even\") -> (Tensor output, Tensor mask)",
      {at::Tag::pt2_compliant_tag});
  // Per-channel affine quant-dequant along `axis` (negative wraps): scale float32 [C],
  // zero_point int32 [C] (added after rounding) or float32 [C] (added before rounding, as
  // ATen does for float zero points), C = input.size(axis). Outputs as above.
  m.def(
      "fake_quant_per_channel(Tensor input, Tensor scale, Tensor zero_point, int axis, int quant_min, "
      "int quant_max, str rounding=\"half_even\") -> (Tensor output, Tensor mask)",
      {at::Tag::pt2_compliant_tag});
  // grad_input = grad_output where the packed mask bit is set, else 0. grad_output must be
  // laid out like the forward output (the Python autograd formula ensures it).
  m.def("fake_quant_mask_backward(Tensor grad_output, Tensor mask) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  // Learnable scale / zero point (LSQ, LSQ+), the semantics of ATen's
  // _fake_quantize_learnable_per_{tensor,channel}_affine: scale and zero_point are float32
  // tensors (1 element per-tensor, [C] per-channel) on input's device; the forward rounds the
  // zero point (nearbyint, clamp) and quantises as fake_quant_per_tensor / _per_channel do;
  // grad_factor scales the qparam gradients only. No mask: the backward recomputes from input
  // (the scale gradient needs x itself).
  m.def(
      "fake_quant_learnable_per_tensor(Tensor input, Tensor scale, Tensor zero_point, int quant_min, "
      "int quant_max, float grad_factor=1.0) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "fake_quant_learnable_per_channel(Tensor input, Tensor scale, Tensor zero_point, int axis, int quant_min, "
      "int quant_max, float grad_factor=1.0) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  // Gradients of the above for input (input's dtype and layout), scale and zero_point
  // (float32, shaped like them). Outputs whose output_mask entry is false are not computed
  // and come back as empty ([0]) tensors.
  m.def(
      "fake_quant_learnable_per_tensor_backward(Tensor grad_output, Tensor input, Tensor scale, Tensor zero_point, "
      "int quant_min, int quant_max, float grad_factor=1.0, bool[3] output_mask=[True, True, True]) -> "
      "(Tensor grad_input, Tensor grad_scale, Tensor grad_zero_point)",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "fake_quant_learnable_per_channel_backward(Tensor grad_output, Tensor input, Tensor scale, Tensor zero_point, "
      "int axis, int quant_min, int quant_max, float grad_factor=1.0, bool[3] output_mask=[True, True, True]) -> "
      "(Tensor grad_input, Tensor grad_scale, Tensor grad_zero_point)",
      {at::Tag::pt2_compliant_tag});
}
