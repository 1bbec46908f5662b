"""Fake (meta) kernels of the fakequant ops and the clipped-STE autograd helpers.

The fake kernels mirror the C++ allocation rules in torch_ext/csrc/common.cpp exactly
(dense inputs keep their strides, anything else is made contiguous; the mask is
ceil(numel / 8) bytes), so that torch.compile and opcheck see the same layouts as the real
kernels. register_fake also serves the Meta dispatch key.
"""

from __future__ import annotations

import torch
from torch._prims_common import is_non_overlapping_and_dense_or_false

_lib = "fakequant"


def _dense_or_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if is_non_overlapping_and_dense_or_false(t) else t.contiguous()


def _mask_like(t: torch.Tensor) -> torch.Tensor:
    return t.new_empty(((t.numel() + 7) // 8,), dtype=torch.uint8)


def _check_same_device(op: str, input: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
    # A mix of devices dispatches here (Meta outranks the others): check it as the real
    # kernels do.
    for name, t in (("scale", scale), ("zero_point", zero_point)):
        torch._check(
            t.device == input.device,
            lambda name=name, t=t: f"fakequant.{op}: {name} must be on the same device "
            f"as input ({input.device}), got {t.device}",
        )


def _check_rounding_and_seed(op: str, input: torch.Tensor, rounding: str, seed: torch.Tensor | None) -> None:
    # The rounding and seed rules of torch_ext/csrc/common.cpp (check_seed), same messages.
    torch._check(rounding in ("half_even", "half_away", "stochastic"), lambda: f"fakequant.{op}: rounding must be "
                 f"one of 'half_even', 'half_away', 'stochastic', got '{rounding}'")
    if rounding != "stochastic":
        torch._check(seed is None, lambda: f"fakequant.{op}: seed is only used by rounding='stochastic'; "
                     f"pass seed=None with rounding='{rounding}'")
        return
    torch._check(seed is not None, lambda: f"fakequant.{op}: rounding='stochastic' needs a seed: an int64 tensor "
                 "of 2 elements (Philox key, counter offset) on input's device (the Python API draws it from the "
                 "torch generator)")
    torch._check(seed.dtype == torch.int64, lambda: f"fakequant.{op}: seed must be an int64 tensor of 2 elements "
                 f"(Philox key, counter offset), got {seed.dtype}")
    torch._check(seed.dim() == 1 and seed.shape[0] == 2, lambda: f"fakequant.{op}: seed must be a 1-D tensor of 2 "
                 f"elements (Philox key, counter offset), got shape {list(seed.shape)}")
    torch._check(seed.device == input.device, lambda: f"fakequant.{op}: seed must be on the same device as input "
                 f"({input.device}), got {seed.device}")


@torch.library.register_fake(f"{_lib}::fake_quant_per_tensor")
def _fake_quant_per_tensor_fake(input, scale, zero_point, quant_min, quant_max, rounding="half_even", seed=None):
    _check_same_device("fake_quant_per_tensor", input, scale, zero_point)
    _check_rounding_and_seed("fake_quant_per_tensor", input, rounding, seed)
    x = _dense_or_contiguous(input)
    return torch.empty_like(x), _mask_like(x)


@torch.library.register_fake(f"{_lib}::fake_quant_per_channel")
def _fake_quant_per_channel_fake(input, scale, zero_point, axis, quant_min, quant_max, rounding="half_even",
                                 seed=None):
    _check_same_device("fake_quant_per_channel", input, scale, zero_point)
    _check_rounding_and_seed("fake_quant_per_channel", input, rounding, seed)
    x = _dense_or_contiguous(input)
    return torch.empty_like(x), _mask_like(x)


def _check_devices_as(op: str, ref_name: str, ref: torch.Tensor, **tensors: torch.Tensor) -> None:
    """Each tensor on ``ref``'s device, as the real kernels check: a mix of devices that
    includes a meta tensor dispatches to the fake kernel, which must not return memory of the
    other device as if it had computed it."""
    for name, t in tensors.items():
        torch._check(
            t.device == ref.device,
            lambda name=name, t=t: f"fakequant.{op}: {name} must be on the same device as {ref_name} "
            f"({ref.device}), got {t.device}",
        )


def _check_output_mask(op: str, output_mask, outputs: str) -> None:
    # The check of output_mask_flags (torch_ext/csrc/common.cpp), same message.
    torch._check(len(output_mask) == 3, lambda: f"fakequant.{op}: output_mask must hold 3 flags, one per output "
                 f"({outputs}), got {len(output_mask)}")


@torch.library.register_fake(f"{_lib}::fake_quant_mask_backward")
def _fake_quant_mask_backward_fake(grad_output, mask):
    # The checks of prepare_masked_grad (torch_ext/csrc/common.cpp), same messages.
    op = "fakequant.fake_quant_mask_backward"
    torch._check(mask.dtype == torch.uint8, lambda: f"{op}: mask must be a uint8 tensor, got {mask.dtype}")
    torch._check(mask.dim() == 1, lambda: f"{op}: mask must be a contiguous 1-D tensor, got shape {list(mask.shape)}")
    n = grad_output.numel()
    torch._check(mask.numel() == (n + 7) // 8, lambda: f"{op}: mask must have ceil(numel / 8) = {(n + 7) // 8} bytes "
                 f"for grad_output of {n} elements, got {mask.numel()}")
    _check_devices_as("fake_quant_mask_backward", "grad_output", grad_output, mask=mask)
    return torch.empty_like(grad_output)


def _restride_like(grad: torch.Tensor, stride: tuple[int, ...]) -> torch.Tensor:
    """The mask is in the forward output's memory order: lay grad out the same way."""
    if grad.stride() == stride:
        return grad
    out = torch.empty_strided(grad.shape, stride, dtype=grad.dtype, device=grad.device)
    return out.copy_(grad)


def _masked_setup_context(ctx, inputs, output):
    _, mask = output
    ctx.save_for_backward(mask)
    ctx.output_stride = output[0].stride()
    ctx.num_inputs = len(inputs)


def _masked_backward(ctx, grad_output, grad_mask):
    """Clipped STE: the gradient flows to `input` where the saved 1-bit mask is set; the
    qparams (and the seed of stochastic rounding) get none (these ops do not learn them)."""
    (mask,) = ctx.saved_tensors
    grad_input = None
    if ctx.needs_input_grad[0]:
        grad = _restride_like(grad_output, ctx.output_stride)
        grad_input = torch.ops.fakequant.fake_quant_mask_backward(grad, mask)
    return (grad_input,) + (None,) * (ctx.num_inputs - 1)


# The autograd of fake_quant_per_tensor / fake_quant_per_channel is this same clipped STE as a
# C++ Autograd kernel (torch_ext/csrc/autograd.cpp): a Python formula costs a Python call on
# every call of these per-activation ops. The ops below with Python formulas use the helpers
# above.
