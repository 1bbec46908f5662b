// The one place where fakequant's operator schemas are defined. Backends register their
// kernels in cpu/, cuda/; fake (meta) kernels and most autograd formulas are registered from
// Python, each family's in torch_ext/fakequant/ops/<family>.py (the two quant-dequant ops'
// autograd is C++: autograd.cpp).
#include <torch/library.h>

TORCH_LIBRARY(fakequant, m) {
  // Per-tensor affine quant-dequant with tensor qparams (scale: float32, 1 element;
  // zero_point: int32, 1 element). Returns the output (same dtype and layout as input)
  // and the clipped-STE mask packed 1 bit per element (uint8, ceil(numel / 8) bytes, bit
  // i % 8 of byte i / 8, in the output's memory order). rounding: "half_even", "half_away"
  // or "stochastic"; seed (int64 [2] on input's device: Philox key, counter offset) is
  // required by "stochastic" and rejected by the others (docs/numerics.md).
  m.def(
      "fake_quant_per_tensor(Tensor input, Tensor scale, Tensor zero_point, int quant_min, "
      "int quant_max, str rounding=\"half_even\", Tensor? seed=None) -> (Tensor output, Tensor mask)",
      {at::Tag::pt2_compliant_tag});
  // Per-channel affine quant-dequant along `axis` (negative wraps): scale float32 [C],
  // zero_point int32 [C] (added after rounding) or float32 [C] (added before rounding, as
  // ATen does for float zero points), C = input.size(axis). Outputs, rounding and seed as above.
  m.def(
      "fake_quant_per_channel(Tensor input, Tensor scale, Tensor zero_point, int axis, int quant_min, "
      "int quant_max, str rounding=\"half_even\", Tensor? seed=None) -> (Tensor output, Tensor mask)",
      {at::Tag::pt2_compliant_tag});
  // grad_input = grad_output where the packed mask bit is set, else 0. grad_output must be
  // laid out like the forward output (the Python autograd formula ensures it).
  m.def("fake_quant_mask_backward(Tensor grad_output, Tensor mask) -> Tensor",
        {at::Tag::pt2_compliant_tag});

  // Reductions that feed qparams, computed in float32: over the whole tensor (axis=None,
  // 0-d result) or per channel along `axis` ([C] result). NaN propagates; over no elements
  // abs_max is 0, min +inf and max -inf.
  m.def("abs_max(Tensor input, int? axis=None) -> Tensor", {at::Tag::pt2_compliant_tag});
  m.def("min_max(Tensor input, int? axis=None) -> (Tensor min, Tensor max)", {at::Tag::pt2_compliant_tag});
  // Paddle moving_average_abs_max fused with quant-dequant. In training, the float32
  // one-element state is updated in place (state = r*state + 1; accum = r*accum + max|x|;
  // scale = accum/state) before x is quantized; in eval only the stored scale is used. x is
  // quantized symmetrically with step scale / (2^(bits-1) - 1), range +-(2^(bits-1) - 1).
  m.def(
      "fake_quant_moving_average_abs_max(Tensor input, Tensor(a!) scale, Tensor(b!) state, Tensor(c!) accum, "
      "float moving_rate=0.9, int bits=8, bool training=True, str rounding=\"half_away\") -> (Tensor output, Tensor mask)",
      {at::Tag::pt2_compliant_tag});
  // Paddle range_abs_max fused with quant-dequant: `window` (float32 [window_size]) keeps the
  // abs-max of the last window_size training steps, `iter` (int64 [1]) counts them (incremented
  // by the op), `scale` (float32 [1]) is the window's maximum by Paddle's update rule.
  m.def(
      "fake_quant_range_abs_max(Tensor input, Tensor(a!) scale, Tensor(b!) window, Tensor(c!) iter, int bits=8, "
      "bool training=True, str rounding=\"half_away\") -> (Tensor output, Tensor mask)",
      {at::Tag::pt2_compliant_tag});
  // PyTorch's moving-average min/max observer + qparam choice + quant-dequant
  // (torch.fused_moving_avg_obs_fake_quant), per tensor (axis=None) or per channel along any
  // axis. observer_on / fake_quant_on: int64 [1] on input's device, read there. running_min,
  // running_max, scale (float32) and zero_point (int32), [1] or [C], are updated in place.
  m.def(
      "fused_moving_avg_obs_fake_quant(Tensor input, Tensor observer_on, Tensor fake_quant_on, "
      "Tensor(a!) running_min, Tensor(b!) running_max, Tensor(c!) scale, Tensor(d!) zero_point, "
      "float averaging_const, int quant_min, int quant_max, int? axis=None, bool symmetric=False, "
      "bool reduce_range=False, str rounding=\"half_even\") -> (Tensor output, Tensor mask)",
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
  // Per-group symmetric fake quantization with torchao's qparams (get_group_qparams_symmetric,
  // IntxFakeQuantizer PerGroup): groups of group_size consecutive elements along the last dim;
  // scale = max(T(absmax / ((quant_max - quant_min) / 2)), eps), the quotient rounded to the
  // input's dtype T, then float32; eps defaults to T's smallest normal. The quant-dequant and
  // mask are fake_quant_weight_abs_max's. Returns the output (input's dtype, contiguous), the
  // mask and scale (float32 [..., size(-1) / group_size], not differentiable).
  m.def(
      "fake_quant_per_group(Tensor input, int group_size, int quant_min=-8, int quant_max=7, "
      "str rounding=\"half_even\", float? eps=None) -> (Tensor output, Tensor mask, Tensor scale)",
      {at::Tag::pt2_compliant_tag});
  // Block-scaled fake quantization (docs/block-formats.md): input (float32 / float16 /
  // bfloat16) seen as [rows = prod(shape[:-1]), cols = shape[-1]], cut into tiles of
  // block_rows x block_cols (edge tiles may be partial); each tile's scale comes from its own
  // statistics by scale_rule, the reference's formula ('int_affine', 'int_affine_float_zp',
  // 'int_modelopt' with format 'int' and [quant_min, quant_max]; 'fp8_torchao', 'fp8_modelopt'
  // with 'e4m3' / 'e5m2'; 'mx_floor', 'mx_ceil', 'mx_even', 'mx_rceil' with any minifloat
  // format 'e4m3', 'e5m2', 'e3m2', 'e2m3', 'e2m1'; 'nvfp4_torchao', 'nvfp4_modelopt' with
  // 'e2m1'), and its elements are quant-dequantised in the same pass. eps (int rules),
  // amax_lower / amax_upper (fp8_torchao) and tensor_scale (nvfp4) are errors with other rules;
  // rounding and seed as fake_quant_per_tensor (the int rules round half to even only).
  // Returns the output (input's shape and dtype, contiguous), the 1-bit clipped-STE mask,
  // scale (float32 [grid_rows, grid_cols]), zero_point (int32, same shape, for int_affine and
  // int_affine_float_zp; else [0]) and tensor_amax (float32 [] where the rule reads the whole
  // tensor's abs-max: nvfp4 with tensor_scale, or one tile covering the tensor; else [0]).
  // Differentiable in input only (the clipped STE).
  m.def(
      "fake_quant_block(Tensor input, str format, str scale_rule, int block_rows=1, int block_cols=32, "
      "int quant_min=-128, int quant_max=127, float? eps=None, float? amax_lower=None, float? amax_upper=None, "
      "bool tensor_scale=False, str rounding=\"half_even\", Tensor? seed=None) -> (Tensor output, Tensor mask, "
      "Tensor scale, Tensor zero_point, Tensor tensor_amax)",
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
  // ConvBN fake quantization, forward fused / backward unfused (docs/convbn.md): conv2d
  // (weight [C_out, C_in/groups, kh, kw], optional conv bias) + BatchNorm2d (bn_weight,
  // bn_bias) + optional ReLU, the weight folded with the BN scale and fake-quantized per output
  // channel (fake_quant_weight_abs_max on the float32 fold). mode "batch" (fold with batch
  // statistics) or "running" (torch.ao ConvBn2d's approximation); training=False folds with the
  // running statistics. In training running_mean / running_var (float32 [C_out]) are updated
  // in place like nn.BatchNorm2d's. Returns the output (input's dtype, NCHW or channels_last
  // like input) and what the backward needs: pre_bn (the activation BN normalises; [0] in
  // eval), weight_q (the quantised fold, input's dtype), weight_mask (1 bit per weight element,
  // [0] without quantize_weight), relu_mask (1 bit per output element, [0] without relu),
  // channel_state (float64 [6, C_out]).
  m.def(
      "conv_bn_fake_quant(Tensor input, Tensor weight, Tensor? bias, Tensor bn_weight, Tensor bn_bias, "
      "Tensor(a!) running_mean, Tensor(b!) running_var, int[2] stride=1, int[2] padding=0, int[2] dilation=1, "
      "int groups=1, float eps=1e-05, float momentum=0.1, str fold_mode=\"batch\", bool training=True, bool relu=False, "
      "bool quantize_weight=True, int quant_min=-128, int quant_max=127, str rounding=\"half_even\", "
      "float weight_eps=1.1920928955078125e-07) -> (Tensor output, Tensor pre_bn, Tensor weight_q, "
      "Tensor weight_mask, Tensor relu_mask, Tensor channel_state)",
      {at::Tag::pt2_compliant_tag});
  // Its backward from the saved tensors: grad_input (input's dtype), grad_weight (weight's
  // dtype) and grad_params (float64 [3, C_out]: bn_weight, bn_bias, conv bias); outputs whose
  // output_mask entry is false come back as empty ([0]) tensors.
  m.def(
      "conv_bn_fake_quant_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor pre_bn, Tensor weight_q, "
      "Tensor weight_mask, Tensor relu_mask, Tensor channel_state, int[2] stride, int[2] padding, int[2] dilation, "
      "int groups, str fold_mode, bool training, bool[3] output_mask) -> (Tensor grad_input, Tensor grad_weight, "
      "Tensor grad_params)",
      {at::Tag::pt2_compliant_tag});
}
