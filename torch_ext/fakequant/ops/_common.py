"""What every op family's module shares: the loaded op library, the layout and argument rules
its fake (meta) kernels mirror, and the clipped straight-through backward.

The fake kernels mirror the C++ rules of torch_ext/csrc/common.cpp exactly (dense inputs keep
their strides, anything else is made contiguous; the mask is ceil(numel / 8) bytes; the
argument checks give the kernels' messages), so that torch.compile and opcheck see what the
real kernels do. ``register_fake`` also serves the Meta dispatch key.
"""

from __future__ import annotations

import types

import torch
from torch._prims_common import is_non_overlapping_and_dense_or_false

from .._library import load_library

load_library()  # the schemas must exist before a family registers its fake kernel

#: The op namespace: ``torch.ops.fakequant``.
LIB = "fakequant"


def _default_overloads() -> types.SimpleNamespace:
    """Every op of the library as its default overload, looked up once at import: the Python
    API calls the overload itself, without the attribute chain and the overload packet's
    resolution on every call (at small sizes the per-call cost is the op's cost). Filled here,
    not on first use, so that torch.compile only ever reads a plain attribute."""
    names = {n.split("::", 1)[1].split(".", 1)[0] for n in torch._C._dispatch_get_all_op_names()
             if n.startswith(f"{LIB}::")}
    return types.SimpleNamespace(**{n: getattr(torch.ops.fakequant, n).default for n in sorted(names)})


#: ``OPS.<name>`` is ``torch.ops.fakequant.<name>.default``.
OPS = _default_overloads()

#: Rounding modes accepted by the quant-dequant ops.
ROUNDINGS = ("half_even", "half_away", "stochastic")

#: torch.finfo(torch.float32).eps, the floor PyTorch's observers put under every scale.
FLOAT32_EPS = 1.1920928955078125e-07

#: Each seed word (Philox key, counter offset) is drawn uniformly from [0, SEED_HIGH): 62
#: random bits each, a range whose width every randint implementation (eager, and
#: torch.compile's CPU and Triton lowerings, which compute high - low in int64) represents.
SEED_HIGH = 2**62


def draw_seed(input: torch.Tensor, rounding: str, generator: torch.Generator | None) -> torch.Tensor | None:
    """The seed tensor of stochastic rounding, drawn on ``input``'s device from ``generator``
    (the default generator when None): no host synchronisation, captured by CUDA graphs and
    traced by torch.compile like any random op. None for the deterministic modes, which
    reject a generator rather than ignore it."""
    if rounding != "stochastic":
        if generator is not None:
            raise ValueError(f"generator is only used by rounding='stochastic', got rounding={rounding!r}")
        return None
    return torch.randint(0, SEED_HIGH, (2,), dtype=torch.int64, device=input.device, generator=generator)


# ---------------------------------------------------------------------------------------
# Layouts and argument checks of the fake kernels


def dense_or_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if is_non_overlapping_and_dense_or_false(t) else t.contiguous()


def mask_bytes(numel: int) -> int:
    """Bytes of a packed 1-bit-per-element mask."""
    return (numel + 7) // 8


def mask_like(t: torch.Tensor) -> torch.Tensor:
    return t.new_empty((mask_bytes(t.numel()),), dtype=torch.uint8)


def quant_dequant_outputs(input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(output, mask)`` of a quant-dequant op: the output laid out like the (dense or made
    contiguous) input."""
    x = dense_or_contiguous(input)
    return torch.empty_like(x), mask_like(x)


def check_devices(op: str, ref_name: str, ref: torch.Tensor, **tensors: torch.Tensor) -> None:
    """Each tensor on ``ref``'s device, as the real kernels check: a mix of devices that
    includes a meta tensor dispatches to the fake kernel (Meta outranks the others), which must
    not return memory of the other device as if it had computed it."""
    for name, t in tensors.items():
        torch._check(
            t.device == ref.device,
            lambda name=name, t=t: f"fakequant.{op}: {name} must be on the same device as {ref_name} "
            f"({ref.device}), got {t.device}",
        )


def check_rounding_and_seed(op: str, input: torch.Tensor, rounding: str, seed: torch.Tensor | None) -> None:
    # The rounding and seed rules of torch_ext/csrc/common.cpp (check_seed), same messages.
    torch._check(rounding in ROUNDINGS, lambda: f"fakequant.{op}: rounding must be "
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


def check_output_mask(op: str, output_mask, outputs: str) -> None:
    # The check of output_mask_flags (torch_ext/csrc/common.cpp), same message.
    torch._check(len(output_mask) == 3, lambda: f"fakequant.{op}: output_mask must hold 3 flags, one per output "
                 f"({outputs}), got {len(output_mask)}")


def channel_shape(op: str, input: torch.Tensor, axis: int | None, what: str = "input") -> list[int]:
    """``[]`` for a whole-tensor reduction, ``[input.size(axis)]`` per channel, with the axis
    checks of normalize_axis (torch_ext/csrc/common.cpp), same messages."""
    if axis is None:
        return []
    dim = input.dim()
    torch._check(dim >= 1, lambda: f"fakequant.{op}: {what} must have at least 1 dimension for per-channel "
                 "quantization, got a 0-d tensor")
    torch._check(-dim <= axis < dim, lambda: f"fakequant.{op}: axis must lie in [{-dim}, {dim - 1}] for a {dim}-d "
                 f"{what}, got {axis}")
    return [input.shape[axis]]
