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
  // Weight fake quantization with per-channel abs-max scales (symmetric, zero point 0):
  // scale[c] = max(absmax_c / ((quant_max - quant_min) / 2), eps) in float32 (PyTorch's
  // per_channel_symmetric observer), then the per-channel quant-dequant of fake_quant_per_channel
  // along `axis` (negative wraps). quant_min == -quant_max or -quant_max - 1. Returns the
  // output and mask as fake_quant_per_channel does, and scale (float32 [C], not differentiable).
  m.def(
      "fake_quant_weight_abs_max(Tensor weight, int axis, int quant_min, int quant_max, "
      "str rounding=\"half_even\", float eps=1.1920928955078125e-07) -> (Tensor output, Tensor mask, Tensor scale)",
      {at::Tag::pt2_compliant_tag});
}
