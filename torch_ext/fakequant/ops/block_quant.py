"""Block-scaled fake quantization (docs/block-formats.md): per-token and per-group asymmetric
int (torchao), ModelOpt's int, FP8 (torchao, ModelOpt), MX and NVFP4 (torchao, ModelOpt), all one
op, ``fake_quant_block``: the typed Python API and its fake kernel (laid out as
torch_ext/csrc/block_quant.cpp allocates: the output contiguous like the input, a mask of
ceil(numel / 8) bytes, float32 scales on the tile grid). The autograd (the clipped STE for the
input; none for the scales) is C++, torch_ext/csrc/autograd.cpp.

Every function computes a tile's scale from the tile itself (dynamic quantization) and returns
values bit for bit those of its reference (tests/python/test_block_quant.py); the input is seen
as a ``[rows, cols]`` matrix, ``rows = prod(shape[:-1])``, ``cols = shape[-1]``, and tiles at the
right and bottom edges may be partial (the references require whole tiles)."""

from __future__ import annotations

import math

import torch

from ._common import LIB, OPS, check_rounding_and_seed, draw_seed, mask_like

__all__ = [
    "BLOCK_FORMATS",
    "BLOCK_SCALE_RULES",
    "MX_SCALE_MODES",
    "fake_quantize_block",
    "fake_quantize_fp8",
    "fake_quantize_int_modelopt",
    "fake_quantize_mx",
    "fake_quantize_nvfp4",
    "fake_quantize_per_group_affine",
    "fake_quantize_per_token",
]

_OP = "fake_quant_block"

#: Element formats: an integer grid, and the minifloats (OCP FP8 / FP6 / FP4 names).
BLOCK_FORMATS = ("int", "e4m3", "e5m2", "e3m2", "e2m3", "e2m1")

#: Scale rules, each a reference's formula (docs/block-formats.md).
BLOCK_SCALE_RULES = ("int_affine", "int_affine_float_zp", "int_modelopt", "fp8_torchao", "fp8_modelopt",
                     "mx_floor", "mx_ceil", "mx_even", "mx_rceil", "nvfp4_torchao", "nvfp4_modelopt")

#: torchao's ScaleCalculationMode values for MX, lower-case.
MX_SCALE_MODES = ("floor", "ceil", "even", "rceil")

_INT_RULES = ("int_affine", "int_affine_float_zp", "int_modelopt")
_MIN_MAX_RULES = ("int_affine", "int_affine_float_zp")
_NVFP4_RULES = ("nvfp4_torchao", "nvfp4_modelopt")
# NVFP4's tensor scale: amax / (E4M3 max * E2M1 max).
_NVFP4_TENSOR_DIVISOR = 448.0 * 6.0


def fake_quantize_block(
    input: torch.Tensor,
    format: str,
    scale_rule: str,
    block_rows: int = 1,
    block_cols: int = 32,
    quant_min: int = -128,
    quant_max: int = 127,
    eps: float | None = None,
    amax_lower: float | None = None,
    amax_upper: float | None = None,
    tensor_scale: bool = False,
    rounding: str = "half_even",
    seed: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The op itself without its mask: ``(output, scale, zero_point, tensor_amax)``.

    ``input`` (float32, float16 or bfloat16, at least 1-d) is cut into tiles of
    ``block_rows x block_cols`` of its ``[rows, cols]`` view; ``format`` is one of
    :data:`BLOCK_FORMATS`, ``scale_rule`` one of :data:`BLOCK_SCALE_RULES` (int rules take
    ``"int"`` and ``[quant_min, quant_max]``; fp8 rules ``"e4m3"`` / ``"e5m2"``; mx rules any
    minifloat; nvfp4 rules ``"e2m1"``). ``eps`` floors the int_affine* scales (default: the
    rule's, ``finfo(input.dtype).smallest_normal`` or 1e-6); ``amax_lower`` / ``amax_upper``
    clamp fp8_torchao's abs-max (torchao's ``hp_value_lb`` / ``hp_value_ub``); ``tensor_scale``
    turns on NVFP4's second level. Arguments a rule does not read must keep their defaults.

    ``output`` has ``input``'s shape and dtype (contiguous); ``scale`` is float32
    ``[grid_rows, grid_cols]``; ``zero_point`` int32 of the same shape for int_affine and
    int_affine_float_zp, else empty; ``tensor_amax`` the float32 0-d abs-max of the whole tensor
    where the rule reads it (NVFP4 with a tensor scale, or one tile covering the tensor), else
    empty. ``rounding`` is ``"half_even"`` (the references'), ``"half_away"`` or
    ``"stochastic"`` (the float formats only), whose randomness is ``seed`` (int64 ``[2]``:
    Philox key and counter offset, on ``input``'s device) or, without one, a seed drawn from
    ``generator`` (torch's default generator when None), as
    :func:`fakequant.fake_quantize_per_tensor_with_mask` draws it. Differentiable in ``input``:
    the clipped STE (``grad`` where the scaled element was inside the format's range, else 0).
    """
    seed = _seed(input, rounding, seed, generator)
    output, _, scale, zero_point, tensor_amax = OPS.fake_quant_block(
        input, format, scale_rule, block_rows, block_cols, quant_min, quant_max, eps, amax_lower, amax_upper,
        tensor_scale, rounding, seed)
    return output, scale, zero_point, tensor_amax


def _seed(input, rounding, seed, generator):
    """The given seed, or one drawn from the generator for stochastic rounding."""
    if seed is None:
        return draw_seed(input, rounding, generator)
    if generator is not None:
        raise ValueError("pass either seed or generator, not both")
    return seed


def _rows_shape(x: torch.Tensor, per_row: torch.Tensor) -> torch.Tensor:
    """A [rows, n] tile-grid tensor reshaped to x's leading dims: (*x.shape[:-1], n)."""
    return per_row.view(*x.shape[:-1], per_row.shape[-1])


def fake_quantize_per_token(
    x: torch.Tensor, quant_min: int = -128, quant_max: int = 127, eps: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dynamic per-token asymmetric int fake quantization, bit for bit torchao's
    ``IntxFakeQuantizer(IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False))``
    (``choose_qparams_affine``, asymmetric, preserving zero); returns
    ``(output, scale, zero_point)``.

    Each row of the last dim: ``min_neg = min(min, 0)``, ``max_pos = max(max, 0)``,
    ``scale = max(T((max_pos - min_neg) / (quant_max - quant_min)), eps)`` in the input's dtype
    ``T`` (``eps`` defaults to ``finfo(T).smallest_normal``), ``zero_point = clamp(quant_min -
    round(min_neg / scale), quant_min, quant_max)``; then ``q = clamp(round(x * (1 / scale)) +
    zero_point, quant_min, quant_max)``, ``output = T((T(q) - T(zero_point)) * scale)``.
    ``scale`` (float32) and ``zero_point`` (int32) have shape ``x.shape[:-1]``, as torchao's.
    A row holding NaN gets a NaN scale and output and zero point ``INT32_MIN`` (torch's x86 CPU
    cast of NaN). Differentiable in ``x`` (the clipped STE).
    """
    cols = max(x.shape[-1], 1) if x.dim() >= 1 else 1
    output, scale, zero_point, _ = fake_quantize_block(x, "int", "int_affine", 1, cols, quant_min, quant_max, eps)
    return output, scale.view(x.shape[:-1]), zero_point.view(x.shape[:-1])


def fake_quantize_per_group_affine(
    x: torch.Tensor, group_size: int, quant_min: int = -8, quant_max: int = 7, eps: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-group asymmetric int fake quantization, bit for bit torchao's
    ``IntxFakeQuantizer(IntxFakeQuantizeConfig(torch.int<b>, group_size=group_size,
    is_symmetric=False))`` (``get_groupwise_affine_qparams``); returns
    ``(output, scale, zero_point)``.

    Groups of ``group_size`` along the last dim: ``scale = max(T((max - min) / (quant_max -
    quant_min)), eps)`` in the input's dtype ``T`` (``eps`` default 1e-6), a float-domain zero
    point ``T(min + scale * (quant_max - quant_min + 1) / 2)`` truncated to int32 (torchao's
    quirk: the grid does not span the group's [min, max]), then the integer-domain quant-dequant
    of :func:`fake_quantize_per_token`. ``scale`` (float32) and ``zero_point`` (int32) have
    shape ``(*x.shape[:-1], ceil(size(-1) / group_size))``. Differentiable in ``x``.
    """
    output, scale, zero_point, _ = fake_quantize_block(x, "int", "int_affine_float_zp", 1, group_size, quant_min,
                                                       quant_max, eps)
    return output, _rows_shape(x, scale), _rows_shape(x, zero_point)


def fake_quantize_int_modelopt(
    x: torch.Tensor, group_size: int | None = 128, bits: int = 4, narrow_range: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ModelOpt's symmetric int fake quantization (``_tensor_quant`` with a dynamic abs-max per
    group of ``group_size`` along the last dim, or of the whole tensor with ``group_size=None``);
    returns ``(output, scale)``.

    ``scale = quant_max / amax`` in float32 (ModelOpt's convention: the quantising multiplier,
    ``quant_max = 2^(bits-1) - 1``), ``output = T(clamp(round(x * scale), quant_min, quant_max)
    / scale)`` with ``quant_min = -quant_max`` (``narrow_range``) or ``-quant_max - 1``. A group
    with ``amax <= 2^-24`` outputs zeros of its elements' signs and reports scale 1. ``scale``
    has shape ``(*x.shape[:-1], groups)`` per group, ``[1, 1]`` per tensor. Differentiable in
    ``x`` (the clipped STE on the quantised range; ModelOpt clips at ``|x| <= amax``).
    """
    torch._check(2 <= bits <= 16, lambda: f"fakequant.fake_quantize_int_modelopt: bits must lie in [2, 16], "
                 f"got {bits}")
    quant_max = 2 ** (bits - 1) - 1
    quant_min = -quant_max if narrow_range else -quant_max - 1
    if group_size is None:
        rows = math.prod(x.shape[:-1]) if x.dim() >= 1 else 1
        output, scale, _, _ = fake_quantize_block(x, "int", "int_modelopt", max(rows, 1),
                                                  max(x.shape[-1], 1) if x.dim() >= 1 else 1, quant_min, quant_max)
        return output, scale
    output, scale, _, _ = fake_quantize_block(x, "int", "int_modelopt", 1, group_size, quant_min, quant_max)
    return output, _rows_shape(x, scale)


def fake_quantize_fp8(
    x: torch.Tensor,
    dtype: str = "e4m3",
    granularity: str = "row",
    block_size: int = 128,
    profile: str = "torchao",
    amax_bounds: tuple[float | None, float | None] | None = None,
    rounding: str = "half_even",
    seed: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 fake quantization with scales from the abs-max of each row of the last dim
    (``granularity="row"``), of the whole tensor (``"tensor"``) or of each
    ``block_size x block_size`` tile of the ``[rows, cols]`` view (``"block"``); returns
    ``(output, scale)``.

    ``profile="torchao"``: bit for bit ``Float8FakeQuantizer(Float8FakeQuantizeConfig(dtype,
    PerRow() | PerTensor(), hp_value_lb, hp_value_ub))`` with ``amax_bounds = (hp_value_lb,
    hp_value_ub)``: ``scale = T(clamp(amax, lb, ub) / max)`` in the input's dtype ``T``
    (``max`` = 448 for ``"e4m3"``, 57344 for ``"e5m2"``), ``output = T(fp8(clamp(x / scale))
    * scale)``; an all-zero row gives NaN (0 / 0) unless ``lb > 0``, as torchao's.
    ``profile="modelopt"``: ModelOpt's ``_fp8_eager``: ``scale = (1 / amax) * max`` (its
    convention: the quantising multiplier; ``amax <= 2^-24`` counts as 1), ``output = T(fp8(clamp(x *
    scale)) * (1 / scale))``; ``amax_bounds`` is an error there.

    ``scale`` (float32) has shape ``(*x.shape[:-1], 1)`` per row and ``(1,) * x.dim()`` per
    tensor (torchao's shapes), the tile grid ``[ceil(rows / block_size), ceil(cols /
    block_size)]`` per block. ``rounding``, ``seed`` and ``generator`` as
    :func:`fake_quantize_block` (torchao's cast rounds half to even).
    Differentiable in ``x``: the clipped STE (0 where ``|x / scale|`` exceeds the FP8 max;
    torchao's own gradient is the identity).
    """
    op = "fakequant.fake_quantize_fp8"
    torch._check(dtype in ("e4m3", "e5m2"), lambda: f"{op}: dtype must be one of 'e4m3', 'e5m2', got {dtype!r}")
    torch._check(profile in ("torchao", "modelopt"), lambda: f"{op}: profile must be one of 'torchao', 'modelopt', "
                 f"got {profile!r}")
    torch._check(granularity in ("row", "tensor", "block"), lambda: f"{op}: granularity must be one of 'row', "
                 f"'tensor', 'block', got {granularity!r}")
    lower, upper = amax_bounds if amax_bounds is not None else (None, None)
    cols = x.shape[-1] if x.dim() >= 1 else 1
    if granularity == "row":
        block = (1, max(cols, 1))
    elif granularity == "tensor":
        block = (max(math.prod(x.shape[:-1]) if x.dim() >= 1 else 1, 1), max(cols, 1))
    else:
        block = (block_size, block_size)
    output, scale, _, _ = fake_quantize_block(x, dtype, f"fp8_{profile}", *block, eps=None, amax_lower=lower,
                                              amax_upper=upper, rounding=rounding, seed=seed, generator=generator)
    if granularity == "row":
        scale = _rows_shape(x, scale)
    elif granularity == "tensor":
        scale = scale.view([1] * x.dim())
    return output, scale


def fake_quantize_mx(
    x: torch.Tensor,
    dtype: str = "e2m1",
    block_size: int = 32,
    scale_mode: str = "floor",
    rounding: str = "half_even",
    seed: torch.Tensor | None = None,
    axis: int = -1,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MX (OCP microscaling) fake quantization, bit for bit torchao's
    ``to_dtype(*to_mx(x, elem_dtype, block_size, ScaleCalculationMode.<scale_mode>), x.dtype)``
    (``torchao.prototype.mx_formats.mx_tensor``); returns ``(output, scale)``.

    Blocks of ``block_size`` along ``axis`` (moved last and made contiguous for the op, then
    moved back); ``dtype`` is the element format: ``"e4m3"``, ``"e5m2"`` (FP8), ``"e3m2"``,
    ``"e2m3"`` (FP6), ``"e2m1"`` (FP4); ``scale_mode`` one of :data:`MX_SCALE_MODES`. Each
    block's E8M0 scale is ``2^(e - 127)`` (``e`` the biased exponent, NaN where a block holds
    NaN), returned as float32 of shape ``(*moved.shape[:-1], ceil(size(axis) / block_size))``
    where ``moved = x.movedim(axis, -1)``; ``output`` (``x``'s dtype and shape) is the element
    rounded to its format times that scale. ``rounding``, ``seed`` and ``generator`` as
    :func:`fake_quantize_block`. Differentiable in ``x`` (the clipped STE: 0 where the scaled
    element saturated).
    """
    op = "fakequant.fake_quantize_mx"
    torch._check(scale_mode in MX_SCALE_MODES, lambda: f"{op}: scale_mode must be one of 'floor', 'ceil', 'even', "
                 f"'rceil', got {scale_mode!r}")
    torch._check(x.dim() >= 1, lambda: f"{op}: x must have at least 1 dimension, got a 0-d tensor")
    moved = x if axis in (-1, x.dim() - 1) else x.movedim(axis, -1).contiguous()
    output, scale, _, _ = fake_quantize_block(moved, dtype, f"mx_{scale_mode}", 1, block_size, rounding=rounding,
                                              seed=seed, generator=generator)
    if moved is not x:
        output = output.movedim(-1, axis)
    return output, _rows_shape(moved, scale)


def fake_quantize_nvfp4(
    x: torch.Tensor,
    per_tensor_scale: bool = True,
    tile: tuple[int, int] = (1, 16),
    profile: str = "torchao",
    rounding: str = "half_even",
    seed: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """NVFP4 fake quantization: E2M1 elements, an E4M3 scale per ``tile`` (``(1, 16)`` along the
    last dim, or ``(16, 16)`` tiles of the ``[rows, cols]`` view) and, with
    ``per_tensor_scale``, a float32 tensor scale ``amax / (448 * 6)``; returns
    ``(output, block_scale, tensor_scale)`` (``tensor_scale`` None without one).

    ``profile="torchao"``: bit for bit torchao's ``nvfp4_quantize(x, 16, per_tensor_scale)``
    dequantised (``torchao.prototype.mx_formats.nvfp4_tensor``; ``tensor_scale =
    per_tensor_amax_to_scale(x.abs().max())``): ``block_scale = e4m3(clamp(amax / 6 /
    tensor_scale, 2^-6, 448))``, ``output = T(e2m1(clamp(x * ((1 / tensor_scale) /
    block_scale))) * (tensor_scale * block_scale))``. An all-zero tensor with a tensor scale
    gives NaN (0 / 0), as torchao's. ``profile="modelopt"``: ModelOpt's ``fp4_fake_quant_block``:
    ``block_scale = e4m3(min(amax / (6 * tensor_scale), 448))`` with no lower clamp, elements
    divided by and multiplied back with ``block_scale * tensor_scale``, or by 1.0 where that
    product is below 1e-5.

    ``block_scale`` (float32 E4M3 values) has shape ``(*x.shape[:-1], ceil(size(-1) / 16))``
    for ``(1, 16)`` tiles and the tile grid for ``(16, 16)``; ``tensor_scale`` is 0-d.
    ``rounding``, ``seed`` and ``generator`` as :func:`fake_quantize_block`. Differentiable in
    ``x`` (the clipped STE).
    """
    op = "fakequant.fake_quantize_nvfp4"
    torch._check(profile in ("torchao", "modelopt"), lambda: f"{op}: profile must be one of 'torchao', 'modelopt', "
                 f"got {profile!r}")
    torch._check(tuple(tile) in ((1, 16), (16, 16)), lambda: f"{op}: tile must be (1, 16) or (16, 16), got {tile}")
    output, scale, _, amax = fake_quantize_block(x, "e2m1", f"nvfp4_{profile}", tile[0], tile[1],
                                                 tensor_scale=per_tensor_scale, rounding=rounding, seed=seed,
                                                 generator=generator)
    if tuple(tile) == (1, 16):
        scale = _rows_shape(x, scale)
    # The kernels' float32 quotient: a tensor divisor, since CUDA divides by a Python scalar as
    # a product with its reciprocal.
    tensor_scale = amax / torch.full_like(amax, _NVFP4_TENSOR_DIVISOR) if per_tensor_scale else None
    return output, scale, tensor_scale


# ---------------------------------------------------------------------------------------
# Fake kernel: the C++ checks that read no values (same messages), the C++ allocation.


def _grid(n, block):
    return (n + block - 1) // block


@torch.library.register_fake(f"{LIB}::{_OP}")
def _fake_quant_block_fake(input, format, scale_rule, block_rows=1, block_cols=32, quant_min=-128, quant_max=127,
                           eps=None, amax_lower=None, amax_upper=None, tensor_scale=False, rounding="half_even",
                           seed=None):
    op = f"fakequant.{_OP}"
    torch._check(input.dim() >= 1, lambda: f"{op}: input must have at least 1 dimension (blocks run along the last), "
                 "got a 0-d tensor")
    torch._check(format in BLOCK_FORMATS, lambda: f"{op}: format must be one of 'int', 'e4m3', 'e5m2', 'e3m2', "
                 f"'e2m3', 'e2m1', got '{format}'")
    torch._check(scale_rule in BLOCK_SCALE_RULES, lambda: f"{op}: scale_rule must be one of "
                 + ", ".join(f"'{r}'" for r in BLOCK_SCALE_RULES) + f", got '{scale_rule}'")
    is_int = scale_rule in _INT_RULES
    torch._check(is_int or (quant_min == -128 and quant_max == 127), lambda: f"{op}: quant_min and quant_max are "
                 f"only read by the int rules; leave them at -128 and 127 with scale_rule '{scale_rule}'")
    torch._check(is_int or eps is None, lambda: f"{op}: eps is only read by the int rules; pass eps=None with "
                 f"scale_rule '{scale_rule}'")
    torch._check(scale_rule == "fp8_torchao" or (amax_lower is None and amax_upper is None), lambda: f"{op}: "
                 f"amax_lower and amax_upper are only read by scale_rule 'fp8_torchao'; pass None with scale_rule "
                 f"'{scale_rule}'")
    torch._check(scale_rule in _NVFP4_RULES or not tensor_scale, lambda: f"{op}: tensor_scale is only read by the "
                 f"nvfp4 rules; pass False with scale_rule '{scale_rule}'")
    torch._check(block_rows >= 1 and block_cols >= 1, lambda: f"{op}: block_rows and block_cols must be >= 1, got "
                 f"{block_rows} x {block_cols}")
    if is_int:
        accepted = format == "int"
    elif scale_rule.startswith("fp8"):
        accepted = format in ("e4m3", "e5m2")
    elif scale_rule in _NVFP4_RULES:
        accepted = format == "e2m1"
    else:
        accepted = format != "int"
    torch._check(accepted, lambda: f"{op}: scale_rule '{scale_rule}' does not take format '{format}': int rules take "
                 "'int', fp8 rules 'e4m3' or 'e5m2', nvfp4 rules 'e2m1', mx rules any float format")
    check_rounding_and_seed(_OP, input, rounding, seed)
    torch._check(not is_int or rounding == "half_even", lambda: f"{op}: rounding must be 'half_even' for the int "
                 f"rules (their references round half to even), got '{rounding}'")
    rows = math.prod(input.shape[:-1])
    cols = input.shape[-1]
    x = input.contiguous()
    grid = (_grid(rows, block_rows), _grid(cols, block_cols))
    scale = input.new_empty(grid, dtype=torch.float32)
    zero_point = input.new_empty(grid if scale_rule in _MIN_MAX_RULES else (0,), dtype=torch.int32)
    whole = scale_rule not in _MIN_MAX_RULES and block_rows >= rows and block_cols >= cols
    needs_amax = (scale_rule in _NVFP4_RULES and tensor_scale) or whole
    tensor_amax = input.new_empty(() if needs_amax else (0,), dtype=torch.float32)
    return torch.empty_like(x), mask_like(x), scale, zero_point, tensor_amax
