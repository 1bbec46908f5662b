"""The op database: every torch.ops.fakequant op with sample inputs and, where one exists, an
independent reference. test_op_contract.py runs the custom-op contract over every entry
(opcheck, fake/meta kernels, torch.compile fullgraph, values against the reference, and on a
GPU: no host synchronisation, CUDA-graph capture). A new op gets all of it from one OpInfo here;
its numerics in depth (every range, rounding mode, edge value) are its family's test file's job.

Samples are made fresh (new random data) on every call, sized by `batch` (the leading
dimension) so that the compile test can run one graph at two sizes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

import fakequant
from reference import (
    block_formula,
    make_input,
    fake_quant_formula,
    per_group_formula,
    fake_quant_per_channel_formula,
    random_channel_qparams,
    random_qparams,
    unpack_mask,
    weight_abs_max_formula,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LAYOUTS = ["contiguous", "transposed", "strided", "channels_last"]
EPS32 = torch.finfo(torch.float32).eps


@dataclass
class Sample:
    """One call: op(*args, **kwargs). `grad` lists the positions of the differentiable tensor
    arguments (made to require grad where the op is called through autograd); `compile` marks
    the few samples that also run under torch.compile (compiling is slow)."""

    args: tuple
    kwargs: dict = field(default_factory=dict)
    name: str = ""
    grad: tuple = ()
    compile: bool = False


@dataclass
class OpInfo:
    """`samples(device, batch)` makes the samples. `reference(*args, **kwargs)` gives the
    expected outputs bit for bit (a bool tensor stands for a packed mask: the op's mask is
    unpacked against its first output); `compile_rtol` loosens compiled-vs-eager for ops that
    call convolutions (the compiled graph may order sums differently). Every op's autograd is
    registered on the op, so the tests call the op itself."""

    name: str
    samples: Callable[[str, int], list]
    reference: Callable | None = None
    compile_rtol: float = 0.0

    @property
    def op(self):
        return getattr(torch.ops.fakequant, self.name).default


# --- inputs ---------------------------------------------------------------------------------


def random_seed(device):
    return torch.randint(-(2**63), 2**63 - 1, (2,), dtype=torch.int64, device=device)


def float_qparams(x, axis, quant_min, quant_max):
    """Learnable (float32) qparams: per tensor (axis None) or per channel."""
    if axis is None:
        scale, zp = random_qparams(x, quant_min, quant_max)
        zp = zp.float() + float(torch.empty(()).uniform_(-0.5, 0.5))
    else:
        scale, zp = random_channel_qparams(x, axis, quant_min, quant_max, float_zero_point=True)
    return scale, zp


# --- quant-dequant --------------------------------------------------------------------------


def per_tensor_samples(device, batch):
    out = []
    for dtype in DTYPES:
        for layout in LAYOUTS:
            x = make_input((batch, 3, 5, 7), dtype, device, layout)
            out.append(Sample((x, *random_qparams(x, -128, 127), -128, 127), name=f"{dtype}-{layout}", grad=(0,),
                              compile=dtype == torch.float32 and layout == "contiguous"))
    x = make_input((batch, 3, 5, 7), torch.float32, device, "transposed")
    out.append(Sample((x, *random_qparams(x, 0, 15), 0, 15), {"rounding": "half_away"}, "4bit-half_away", (0,)))
    for layout in LAYOUTS:
        x = make_input((batch, 3, 5, 7), torch.float32, device, layout)
        out.append(Sample((x, *random_qparams(x, -128, 127), -128, 127),
                          {"rounding": "stochastic", "seed": random_seed(device)}, f"stochastic-{layout}", (0,),
                          compile=layout == "contiguous"))
    for shape in [(0,), (1,), (1, 1, 1)]:
        x = torch.randn(shape, device=device)
        out.append(Sample((x, *random_qparams(x, -128, 127), -128, 127), name=f"shape{shape}", grad=(0,)))
    return out


def per_tensor_reference(x, scale, zero_point, quant_min, quant_max, rounding="half_even", seed=None):
    if rounding == "stochastic":
        return None  # Philox written out: test_stochastic_rounding.py
    return fake_quant_formula(x, scale, zero_point, quant_min, quant_max, rounding)


def per_channel_samples(device, batch):
    out = []
    for float_zp in (False, True):
        for layout in ("contiguous", "channels_last", "strided"):
            x = make_input((batch, 4, 3, 5), torch.float32, device, layout)
            out.append(Sample((x, *random_channel_qparams(x, 1, -128, 127, float_zp), 1, -128, 127),
                              name=f"zp{'float' if float_zp else 'int'}-{layout}", grad=(0,),
                              compile=not float_zp and layout == "contiguous"))
            out.append(Sample((x, *random_channel_qparams(x, -1, 0, 15, float_zp), -1, 0, 15),
                              {"rounding": "half_away"}, f"4bit-axis-1-{layout}", (0,)))
            out.append(Sample((x, *random_channel_qparams(x, 1, -8, 7, float_zp), 1, -8, 7, "stochastic",
                               random_seed(device)), name=f"stochastic-{layout}", grad=(0,),
                              compile=float_zp and layout == "contiguous"))
    for dtype in (torch.float16, torch.bfloat16):
        x = make_input((batch, 4, 3, 5), dtype, device, "transposed")
        out.append(Sample((x, *random_channel_qparams(x, 2, -128, 127), 2, -128, 127), name=str(dtype), grad=(0,)))
    for shape, axis in [((0, 3), 1), ((1,), 0), ((3, 0), 0)]:
        x = torch.randn(shape, device=device)
        out.append(Sample((x, *random_channel_qparams(x, axis, -128, 127), axis, -128, 127), name=f"shape{shape}",
                          grad=(0,)))
    return out


def per_channel_reference(x, scale, zero_point, axis, quant_min, quant_max, rounding="half_even", seed=None):
    if rounding == "stochastic":
        return None
    return fake_quant_per_channel_formula(x, scale, zero_point, axis % x.dim(), quant_min, quant_max, rounding)


def mask_backward_samples(device, batch):
    out = []
    for layout in LAYOUTS:
        x = make_input((batch, 3, 5, 7), torch.float32, device, layout)
        y, mask = torch.ops.fakequant.fake_quant_per_tensor(x, *random_qparams(x, -128, 127), -128, 127)
        out.append(Sample((torch.randn_like(y), mask), name=layout, compile=layout == "contiguous"))
    return out


def mask_backward_reference(grad_output, mask):
    return (torch.where(unpack_mask(mask, grad_output), grad_output, torch.zeros_like(grad_output)),)


# --- reductions -----------------------------------------------------------------------------


def reduction_samples(device, batch):
    out = []
    for dtype, layout in [(torch.float32, "channels_last"), (torch.float16, "transposed"),
                          (torch.bfloat16, "strided"), (torch.float32, "contiguous")]:
        x = make_input((batch, 6, 5, 7), dtype, device, layout)
        for axis in (None, 1, -2):
            out.append(Sample((x,), {"axis": axis}, f"{dtype}-{layout}-axis{axis}",
                              compile=layout == "contiguous" and axis != -2))
    out.append(Sample((torch.randn(0, 3, device=device),), {"axis": 1}, "empty"))
    return out


def _other_dims(x, axis):
    return [d for d in range(x.dim()) if axis is None or d != axis % x.dim()]


def abs_max_reference(x, axis=None):
    shape = () if axis is None else (x.shape[axis],)
    if x.numel() == 0:
        return (torch.zeros(shape, device=x.device),)  # over no elements: 0
    return (x.float().abs().amax(_other_dims(x, axis)).reshape(shape),)


def min_max_reference(x, axis=None):
    shape = () if axis is None else (x.shape[axis],)
    if x.numel() == 0:  # over no elements: the identities
        return torch.full(shape, float("inf"), device=x.device), torch.full(shape, float("-inf"), device=x.device)
    xf, dims = x.float(), _other_dims(x, axis)
    return xf.amin(dims).reshape(shape), xf.amax(dims).reshape(shape)


# --- observers ------------------------------------------------------------------------------


def moving_average_abs_max_samples(device, batch):
    out = []
    for dtype in DTYPES:
        x = make_input((7, batch + 4), dtype, device, "transposed")
        state = [torch.rand(1, device=device) * 2 + 0.5 for _ in range(3)]
        out.append(Sample((x, *state), {"moving_rate": 0.5, "bits": 4}, f"train-{dtype}", (0,),
                          compile=dtype == torch.float32))
        out.append(Sample((x, *[s.clone() for s in state]), {"training": False}, f"eval-{dtype}", (0,)))
    return out


def range_abs_max_samples(device, batch):
    out = []
    for dtype in DTYPES:
        x = make_input((7, batch + 4), dtype, device, "transposed")
        state = (torch.rand(1, device=device) + 0.5, torch.rand(3, device=device) + 0.5,
                 torch.tensor([4], dtype=torch.int64, device=device))
        out.append(Sample((x, *state), {"bits": 4}, f"train-{dtype}", (0,), compile=dtype == torch.float32))
        out.append(Sample((x, *[s.clone() for s in state]), {"training": False}, f"eval-{dtype}", (0,)))
    return out


def min_max_state(channels, device):
    return (torch.ones(1, dtype=torch.long, device=device), torch.ones(1, dtype=torch.long, device=device),
            torch.full([channels], float("inf"), device=device), torch.full([channels], float("-inf"), device=device),
            torch.ones(channels, device=device), torch.zeros(channels, dtype=torch.int32, device=device))


def fused_observer_samples(device, batch):
    out = []
    for axis, symmetric, dtype in [(None, True, torch.float32), (1, True, torch.float32),
                                   (1, False, torch.float32), (-1, False, torch.bfloat16),
                                   (None, False, torch.float16)]:
        x = make_input((batch, 6, 5), dtype, device)
        channels = 1 if axis is None else x.shape[axis]
        qmin, qmax = (-128, 127) if symmetric else (0, 255)
        out.append(Sample((x, *min_max_state(channels, device), 0.01, qmin, qmax),
                          {"axis": axis, "symmetric": symmetric}, f"axis{axis}-sym{symmetric}-{dtype}", (0,),
                          compile=dtype == torch.float32 and not (axis is None and symmetric)))
    return out


# --- weights --------------------------------------------------------------------------------


def weight_samples(device, batch):
    out = []
    for dtype in DTYPES:
        for layout in LAYOUTS:
            w = make_input((2 * batch + 2, 4, 3, 3), dtype, device, layout)
            out.append(Sample((w, 0, -127, 127), name=f"{dtype}-{layout}", grad=(0,),
                              compile=dtype == torch.float32 and layout == "contiguous"))
            out.append(Sample((w, -1, -8, 7), {"rounding": "half_away", "eps": 1e-4}, f"4bit-{dtype}-{layout}", (0,)))
            out.append(Sample((w, 1, -128, 127), name=f"axis1-{dtype}-{layout}", grad=(0,)))
    for shape, axis in [((0, 3), 0), ((3, 0), 0), ((1,), 0), ((1, 1, 1), 2)]:
        out.append(Sample((torch.randn(shape, device=device), axis, -127, 127), name=f"shape{shape}", grad=(0,)))
    if device == "cuda":
        # Each CUDA kernel path: one pass (a conv weight, depthwise) and both two-pass
        # reductions (strided columns, long channel runs).
        for shape, axis in [((256, 64, 3, 3), 0), ((32, 1, 3, 3), 0), ((64, 96), 1), ((4, 30000), 0)]:
            out.append(Sample((make_input(shape, torch.float32, device), axis, -127, 127), name=f"path{shape}",
                              grad=(0,)))
    return out


def weight_reference(weight, axis, quant_min, quant_max, rounding="half_even", eps=EPS32):
    return weight_abs_max_formula(weight, axis, quant_min, quant_max, rounding, eps)


def per_group_samples(device, batch):
    out = []
    for dtype in DTYPES:
        for layout in LAYOUTS:
            x = make_input((64, batch + 1, 4, 64), dtype, device, layout)  # transposed: the same shape
            out.append(Sample((x, 32), name=f"{dtype}-{layout}", grad=(0,),
                              compile=dtype == torch.float32 and layout == "contiguous"))
            out.append(Sample((x, 16, -128, 127), {"rounding": "half_away", "eps": 1e-4}, f"8bit-{dtype}-{layout}",
                              (0,)))
    for shape, group_size in [((0, 8), 8), ((3, 0), 4), ((1,), 1), ((2, 3, 6), 3)]:
        out.append(Sample((torch.randn(shape, device=device), group_size), name=f"shape{shape}", grad=(0,)))
    return out


def per_group_reference(input, group_size, quant_min=-8, quant_max=7, rounding="half_even", eps=None):
    return per_group_formula(input, group_size, quant_min, quant_max, rounding, eps)


# --- block-scaled formats -------------------------------------------------------------------


def block_samples(device, batch):
    """Every rule with its formats: 1-row and 2-D tiles, partial edge tiles, 2-D and 3-D inputs,
    16-bit dtypes, stochastic rounding with a seed, tiles covering the tensor, empty inputs.
    Three compile samples (each set of string arguments is one more graph, and two sizes of a
    static graph are two: dynamo's recompile limit is 8)."""
    out = []

    def add(shape, dtype, args, kwargs=None, name="", compile=False):
        x = make_input(shape, dtype, device)
        out.append(Sample((x, *args), kwargs or {}, name, grad=(0,), compile=compile))

    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    add((batch + 1, 5, 40), f32, ("int", "int_affine", 1, 40), name="per-token-3d", compile=True)
    add((batch + 2, 40), bf16, ("int", "int_affine", 1, 40), name="per-token-bf16")
    add((batch + 2, 48), f32, ("int", "int_affine_float_zp", 1, 16, -8, 7), name="per-group-affine")
    add((batch + 2, 48), f16, ("int", "int_affine_float_zp", 1, 20, -8, 7), {"eps": 1e-4}, "per-group-partial-f16")
    add((batch + 1, 70), f32, ("int", "int_modelopt", 1, 32, -7, 7), name="int-modelopt-partial")
    add((batch + 1, 9), bf16, ("int", "int_modelopt", batch + 1, 9, -128, 127), name="int-modelopt-tensor")
    add((batch + 1, 3, 24), f32, ("e4m3", "fp8_torchao", 1, 24), name="fp8-row-3d")
    add((batch + 1, 24), f16, ("e5m2", "fp8_torchao", 1, 24), {"amax_lower": 1.0, "amax_upper": 50.0},
        "fp8-e5m2-bounds-f16")
    add((batch + 1, 24), f32, ("e4m3", "fp8_torchao", 64, 64), name="fp8-tensor")
    add((batch + 5, 21), bf16, ("e4m3", "fp8_torchao", 4, 8), name="fp8-block-partial-bf16")
    add((batch + 1, 24), f32, ("e4m3", "fp8_modelopt", 1, 24), name="fp8-modelopt")
    add((batch + 1, 64), f32, ("e2m1", "mx_floor", 1, 32), name="mx-fp4-floor")
    add((batch + 1, 70), f32, ("e4m3", "mx_ceil", 1, 32), name="mx-fp8-ceil-partial")
    add((batch + 1, 2, 32), bf16, ("e3m2", "mx_even", 1, 32), name="mx-fp6-even-3d-bf16")
    add((batch + 1, 64), f16, ("e2m3", "mx_rceil", 1, 32), name="mx-e2m3-rceil-f16")
    add((batch + 3, 40), f32, ("e5m2", "mx_floor", 2, 16), name="mx-fp8-2d-tiles")
    add((batch + 1, 64), f32, ("e2m1", "mx_floor", 1, 32), {"rounding": "stochastic", "seed": random_seed(device)},
        "mx-stochastic", compile=True)
    add((batch + 1, 24), f32, ("e4m3", "fp8_torchao", 1, 24), {"rounding": "half_away"}, "fp8-half-away")
    add((batch + 1, 48), f32, ("e2m1", "nvfp4_torchao", 1, 16), {"tensor_scale": True}, "nvfp4-two-level",
        compile=True)
    add((batch + 1, 40), bf16, ("e2m1", "nvfp4_torchao", 1, 16), name="nvfp4-one-level-partial-bf16")
    add((batch + 17, 40), f32, ("e2m1", "nvfp4_torchao", 16, 16), {"tensor_scale": True}, "nvfp4-16x16")
    add((batch + 1, 48), f32, ("e2m1", "nvfp4_modelopt", 1, 16), {"tensor_scale": True}, "nvfp4-modelopt")
    add((batch + 1, 48), f16, ("e2m1", "nvfp4_modelopt", 1, 16), name="nvfp4-modelopt-one-level-f16")
    for shape, args in [((0, 32), ("e2m1", "mx_floor", 1, 32)), ((3, 0), ("int", "int_affine", 1, 1)),
                        ((0, 8), ("e4m3", "fp8_torchao", 1, 8)), ((0, 16), ("e2m1", "nvfp4_torchao", 1, 16))]:
        kwargs = {"tensor_scale": True} if args[1] == "nvfp4_torchao" else {}
        out.append(Sample((torch.randn(shape, device=device), *args), kwargs, f"empty{shape}-{args[1]}", (0,)))
    return out


# --- learnable (LSQ) ------------------------------------------------------------------------


def learnable_per_tensor_samples(device, batch):
    out = []
    for dtype in DTYPES:
        for layout in ("contiguous", "channels_last", "strided"):
            x = make_input((batch, 3, 5, 7), dtype, device, layout)
            out.append(Sample((x, *float_qparams(x, None, -128, 127), -128, 127, 0.5), name=f"{dtype}-{layout}",
                              grad=(0, 1, 2), compile=dtype == torch.float32 and layout == "contiguous"))
    for shape in [(0,), (1,), (1, 1, 1)]:
        x = torch.randn(shape, device=device)
        out.append(Sample((x, *float_qparams(x, None, -128, 127), -128, 127), name=f"shape{shape}", grad=(0, 1, 2)))
    return out


def learnable_per_channel_samples(device, batch):
    out = []
    for dtype in DTYPES:
        for layout in ("contiguous", "channels_last", "strided"):
            x = make_input((batch, 3, 5, 7), dtype, device, layout)
            out.append(Sample((x, *float_qparams(x, 1, 0, 15), 1, 0, 15, 0.5), name=f"{dtype}-{layout}",
                              grad=(0, 1, 2), compile=dtype == torch.float32 and layout == "contiguous"))
            out.append(Sample((x, *float_qparams(x, -1, 0, 15), -1, 0, 15), name=f"axis-1-{dtype}-{layout}",
                              grad=(0,)))
    for shape in [(0,), (1,), (1, 1, 1)]:
        x = torch.randn(shape, device=device)
        out.append(Sample((x, *float_qparams(x, 0, -128, 127), 0, -128, 127), name=f"shape{shape}", grad=(0, 1, 2)))
    return out


def _learnable_backward_samples(per_channel):
    def samples(device, batch):
        out = []
        for dtype, layout in [(torch.float32, "contiguous"), (torch.bfloat16, "channels_last"),
                              (torch.float16, "strided")]:
            x = make_input((batch, 3, 5, 7), dtype, device, layout)
            dy = torch.randn(x.shape, device=device).to(dtype)
            axis, qparams = ((1, float_qparams(x, 1, 0, 15)) if per_channel else
                             (None, float_qparams(x, None, -128, 127)))
            ranges = (axis, 0, 15) if per_channel else (-128, 127)
            for mask in ([True, True, True], [False, True, True], [True, False, False]):
                out.append(Sample((dy, x, *qparams, *ranges, 0.5, mask), name=f"{dtype}-{layout}-{mask}",
                                  compile=dtype == torch.float32 and all(mask)))
        return out
    return samples


# --- ConvBN ---------------------------------------------------------------------------------

CONV_BN_MODES = [("batch", True), ("running", True), ("batch", False), ("running", False)]


def conv_bn_args(device, batch, fold_mode="batch", training=True, channels_last=False, relu=True):
    """Conv 4 -> 6, 3x3, stride 2, padding 2, dilation 2, with bias; gamma of both signs."""
    x = torch.randn(batch + 1, 4, 9, 10, device=device) * 1.5 + 0.3
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(6, 4, 3, 3, device=device) * (torch.rand(6, 1, 1, 1, device=device) + 0.2)
    gamma = torch.rand(6, device=device) + 0.5
    gamma[::3] *= -1
    return (x, w, torch.randn(6, device=device), gamma, torch.randn(6, device=device),
            torch.randn(6, device=device) * 0.2, torch.rand(6, device=device) * 2 + 0.5,
            [2, 2], [2, 2], [2, 2], 1, 1e-5, 0.1, fold_mode, training, relu, True, -128, 127, "half_even", EPS32)


def conv_bn_samples(device, batch):
    out = []
    for fold_mode, training in CONV_BN_MODES:
        for channels_last in (False, True):
            compile_it = not channels_last and (fold_mode, training) != ("batch", False)
            out.append(Sample(conv_bn_args(device, batch, fold_mode, training, channels_last),
                              name=f"{fold_mode}-{'train' if training else 'eval'}-cl{int(channels_last)}",
                              grad=(0, 1, 2, 3, 4), compile=compile_it))
    no_bias = list(conv_bn_args(device, batch))
    no_bias[2] = None
    out.append(Sample(tuple(no_bias), name="batch-train-no-bias", grad=(0, 1, 3, 4), compile=True))
    return out


def conv_bn_backward_samples(device, batch):
    out = []
    for fold_mode, training in CONV_BN_MODES:
        args = conv_bn_args(device, batch, fold_mode, training)
        y, pre_bn, weight_q, weight_mask, relu_mask, channel_state = torch.ops.fakequant.conv_bn_fake_quant(*args)
        x, w = args[0], args[1]
        if training and fold_mode == "batch":
            weight_q = w  # the batch-mode backward takes the float weight (convbn.py)
        for mask in ([True, True, True], [False, True, False]):
            out.append(Sample((torch.randn_like(y), x, w, pre_bn, weight_q, weight_mask, relu_mask, channel_state,
                               *args[7:11], fold_mode, training, mask), name=f"{fold_mode}-{training}-{mask}",
                              compile=all(mask) and training))
    return out


# --- the database ---------------------------------------------------------------------------

OP_DB = [
    OpInfo("fake_quant_per_tensor", per_tensor_samples, reference=per_tensor_reference),
    OpInfo("fake_quant_per_channel", per_channel_samples, reference=per_channel_reference),
    OpInfo("fake_quant_mask_backward", mask_backward_samples, reference=mask_backward_reference),
    OpInfo("abs_max", reduction_samples, reference=abs_max_reference),
    OpInfo("min_max", reduction_samples, reference=min_max_reference),
    OpInfo("fake_quant_moving_average_abs_max", moving_average_abs_max_samples),
    OpInfo("fake_quant_range_abs_max", range_abs_max_samples),
    OpInfo("fused_moving_avg_obs_fake_quant", fused_observer_samples),
    OpInfo("fake_quant_weight_abs_max", weight_samples, reference=weight_reference),
    OpInfo("fake_quant_per_group", per_group_samples, reference=per_group_reference),
    OpInfo("fake_quant_block", block_samples, reference=block_formula),
    OpInfo("fake_quant_learnable_per_tensor", learnable_per_tensor_samples),
    OpInfo("fake_quant_learnable_per_channel", learnable_per_channel_samples),
    OpInfo("fake_quant_learnable_per_tensor_backward", _learnable_backward_samples(per_channel=False)),
    OpInfo("fake_quant_learnable_per_channel_backward", _learnable_backward_samples(per_channel=True)),
    OpInfo("conv_bn_fake_quant", conv_bn_samples, compile_rtol=1e-5),
    OpInfo("conv_bn_fake_quant_backward", conv_bn_backward_samples, compile_rtol=1e-5),
]
