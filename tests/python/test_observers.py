"""Fused observers: PyTorch's moving-average min/max (against torch's fused op and the formula),
Paddle's moving_average_abs_max and range_abs_max (against their update rules written out)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fakequant
from conftest import DEVICES, HAS_CUDA
from reference import (
    choose_qparams_reference,
    fake_quant_formula,
    fake_quant_per_channel_formula,
    moving_average_reference,
    range_abs_max_update,
    unpack_mask,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ATEN_FUSED = getattr(torch, "_fused_moving_avg_obs_fq_helper", None)
f32 = np.float32


def make_input(shape, dtype, device, layout="contiguous", scale=3.0, shift=0.0):
    x = (torch.randn(shape, device=device) * scale + shift).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        x = x.transpose(0, -1)
    return x


# ---------------------------------------------------------------------------------------
# PyTorch moving-average min/max observer


class MinMaxState:
    def __init__(self, channels, device):
        self.observer_on = torch.ones(1, dtype=torch.long, device=device)
        self.fake_quant_on = torch.ones(1, dtype=torch.long, device=device)
        self.running_min = torch.full([channels], float("inf"), device=device)
        self.running_max = torch.full([channels], float("-inf"), device=device)
        self.scale = torch.ones(channels, device=device)
        self.zero_point = torch.zeros(channels, dtype=torch.int32, device=device)

    def tensors(self):
        return (self.observer_on, self.fake_quant_on, self.running_min, self.running_max, self.scale, self.zero_point)

    def clone(self):
        other = MinMaxState.__new__(MinMaxState)
        for name in ("observer_on", "fake_quant_on", "running_min", "running_max", "scale", "zero_point"):
            setattr(other, name, getattr(self, name).clone())
        return other

    def assert_equal(self, other):
        for a, b in zip(self.tensors(), other.tensors()):
            assert torch.equal(a.cpu(), b.cpu()), (a, b)


def ours(x, st, c, qmin, qmax, axis=None, symmetric=False, reduce_range=False):
    return torch.ops.fakequant.fused_moving_avg_obs_fake_quant(
        x, *st.tensors(), c, qmin, qmax, axis, symmetric, reduce_range)


def formula_step(x, st, c, qmin, qmax, axis, symmetric):
    """The observer written out: per-channel min/max, moving average, choose_qparams,
    quant-dequant with the formula of the numerics contract; updates `st` (CPU tensors)."""
    xf = x.float().cpu()
    if axis is None:
        mins, maxs = [xf.min().item()], [xf.max().item()]
    else:
        dims = [d for d in range(x.dim()) if d != axis % x.dim()]
        mins, maxs = xf.amin(dims).tolist(), xf.amax(dims).tolist()
    if st.observer_on.item() and x.numel():
        for k in range(len(mins)):
            st.running_min[k] = moving_average_reference(st.running_min[k].item(), mins[k], c)
            st.running_max[k] = moving_average_reference(st.running_max[k].item(), maxs[k], c)
    if not st.fake_quant_on.item():
        return x.clone(), torch.ones(x.shape, dtype=torch.bool)
    for k in range(st.scale.numel()):
        s, z = choose_qparams_reference(st.running_min[k].item(), st.running_max[k].item(), qmin, qmax, symmetric)
        st.scale[k], st.zero_point[k] = s, z
    if axis is None:
        return fake_quant_formula(x.cpu(), st.scale, st.zero_point, qmin, qmax)
    return fake_quant_per_channel_formula(x.cpu(), st.scale, st.zero_point, axis % x.dim(), qmin, qmax)


RANGES = [(-128, 127), (0, 255), (0, 15), (-8, 7), (-127, 127)]


@pytest.mark.skipif(ATEN_FUSED is None, reason="torch has no _fused_moving_avg_obs_fq_helper")
@pytest.mark.parametrize("qrange", RANGES)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("per_channel", [False, True])
def test_bit_exact_with_aten_over_steps(qrange, symmetric, per_channel):
    qmin, qmax = qrange
    channels = 6 if per_channel else 1
    mine, theirs = MinMaxState(channels, "cpu"), MinMaxState(channels, "cpu")
    flags = [(1, 1), (1, 1), (0, 1), (1, 0), (1, 1), (0, 0), (1, 1)]
    for step, (obs, fq) in enumerate(flags):
        for st in (mine, theirs):
            st.observer_on.fill_(obs)
            st.fake_quant_on.fill_(fq)
        x = make_input((6, 5, 7), torch.float32, "cpu", scale=float(np.exp(np.random.uniform(-6, 2))),
                       shift=float(np.random.uniform(-1, 1)))
        y, packed = ours(x, mine, 0.05, qmin, qmax, 0 if per_channel else None, symmetric)
        ref_y, ref_mask = ATEN_FUSED(x, *theirs.tensors(), 0.05, qmin, qmax, 0, per_channel, symmetric)
        mine.assert_equal(theirs)
        assert torch.equal(y, ref_y), step
        assert torch.equal(unpack_mask(packed, y), ref_mask), step


@pytest.mark.skipif(ATEN_FUSED is None, reason="torch has no _fused_moving_avg_obs_fq_helper")
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("kind", ["zeros", "tiny", "positive", "negative", "constant"])
def test_edge_ranges_match_aten(symmetric, kind):
    # The 0.1 fallback (zero range), the small-scale cut-off, one-sided ranges.
    x = {"zeros": torch.zeros(50), "tiny": torch.randn(50) * 1e-7, "positive": torch.rand(50) * 1e-6 + 1e-7,
         "negative": -torch.rand(50) * 30, "constant": torch.full((50,), 0.3)}[kind]
    for qmin, qmax in RANGES:
        mine, theirs = MinMaxState(1, "cpu"), MinMaxState(1, "cpu")
        y, packed = ours(x, mine, 0.01, qmin, qmax, None, symmetric)
        ref_y, ref_mask = ATEN_FUSED(x, *theirs.tensors(), 0.01, qmin, qmax, 0, False, symmetric)
        mine.assert_equal(theirs)
        assert torch.equal(y, ref_y) and torch.equal(unpack_mask(packed, y), ref_mask)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis,layout", [(None, "contiguous"), (1, "contiguous"), (1, "channels_last"),
                                         (-1, "contiguous"), (2, "transposed"), (0, "channels_last")])
@pytest.mark.parametrize("symmetric", [False, True])
def test_matches_formula_any_axis_and_dtype(device, dtype, axis, layout, symmetric):
    shape = (3, 6, 5, 7)
    channels = 1 if axis is None else make_input(shape, dtype, "meta", layout).shape[axis]
    mine, ref = MinMaxState(channels, device), MinMaxState(channels, "cpu")
    for step in range(3):
        x = make_input(shape, dtype, device, layout, shift=0.3 * step)
        y, packed = ours(x, mine, 0.1, -128, 127, axis, symmetric)
        ref_y, ref_mask = formula_step(x, ref, 0.1, -128, 127, axis, symmetric)
        mine.assert_equal(ref)
        assert torch.equal(y.cpu(), ref_y) and torch.equal(unpack_mask(packed, y).cpu(), ref_mask)
        if layout == "channels_last":
            assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("axis", [None, 0])
def test_reduce_range_is_the_halved_range(device, axis):
    x = make_input((4, 33), torch.float32, device)
    a, b = MinMaxState(4 if axis is not None else 1, device), MinMaxState(4 if axis is not None else 1, device)
    y1, m1 = ours(x, a, 0.01, 0, 255, axis, False, True)
    y2, m2 = ours(x, b, 0.01, 0, 127, axis, False, False)
    a.assert_equal(b)
    assert torch.equal(y1, y2) and torch.equal(m1, m2)


@pytest.mark.parametrize("device", DEVICES)
def test_fake_quant_off_passes_through_and_empty_input_observes_nothing(device):
    st = MinMaxState(1, device)
    x = make_input((10, 3), torch.bfloat16, device)
    st.fake_quant_on.zero_()
    y, packed = ours(x, st, 0.01, -128, 127)
    assert torch.equal(y, x) and torch.equal(unpack_mask(packed, y), torch.ones_like(x, dtype=torch.bool))
    assert st.running_min.item() == x.float().min().item() and st.scale.item() == 1.0
    before = st.clone()
    ours(torch.empty(0, 3, device=device), st, 0.01, -128, 127)
    st.assert_equal(before)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gradient_is_clipped_ste(device, dtype):
    st = MinMaxState(5, device)
    st.running_min.fill_(-1.0)
    st.running_max.fill_(1.0)
    st.observer_on.zero_()  # keep the narrow range, so that many elements clip
    x = make_input((5, 40), dtype, device).requires_grad_()
    y = fakequant.fused_moving_avg_obs_fake_quant(x, *st.tensors(), 0.01, -128, 127, axis=0)
    g = torch.randn_like(y)
    y.backward(g)
    _, ref_mask = fake_quant_per_channel_formula(x.detach().cpu(), st.scale.cpu(), st.zero_point.cpu(), 0, -128, 127)
    assert 0 < ref_mask.sum() < ref_mask.numel()
    assert torch.equal(x.grad.cpu(), torch.where(ref_mask, g.cpu(), torch.zeros_like(g.cpu())))


def _bad(**over):
    st = MinMaxState(4, "cpu")
    args = dict(input=torch.randn(4, 3), observer_on=st.observer_on, fake_quant_on=st.fake_quant_on,
                running_min=st.running_min, running_max=st.running_max, scale=st.scale,
                zero_point=st.zero_point, averaging_const=0.01, quant_min=-128, quant_max=127, axis=0)
    args.update(over)
    return args


@pytest.mark.parametrize(
    "over,message",
    [
        ({"input": torch.ones(4, 3, dtype=torch.float64)}, r"input must be float32, float16 or bfloat16"),
        ({"observer_on": torch.ones(1, dtype=torch.int32)}, r"observer_on must be a Long tensor"),
        ({"fake_quant_on": torch.ones(2, dtype=torch.long)}, r"fake_quant_on must have exactly one element"),
        ({"running_min": torch.zeros(3)}, r"running_min must have input.size\(axis\) elements \(4 elements\)"),
        ({"running_max": torch.zeros(4, dtype=torch.float64)}, r"running_max must be a Float tensor"),
        ({"scale": torch.ones(8)[::2]}, r"scale must be contiguous"),
        ({"zero_point": torch.zeros(4)}, r"zero_point must be a Int tensor"),
        ({"axis": None}, r"running_min must have exactly one element \(per-tensor\)"),
        ({"axis": 2}, r"axis must lie in \[-2, 1\]"),
        ({"averaging_const": 1.5}, r"averaging_const must lie in \[0, 1\], got 1.5"),
        ({"averaging_const": float("nan")}, r"averaging_const must lie in \[0, 1\]"),
        ({"quant_min": 5, "quant_max": 5}, r"must hold at least 2 levels"),
        ({"quant_min": 0, "quant_max": 1, "reduce_range": True}, r"after reduce_range halves it"),
        ({"quant_min": 0, "quant_max": 1 << 20}, r"quant_min and quant_max must lie in"),
        ({"rounding": "up"}, r"rounding must be one of"),
        ({"rounding": "stochastic"}, r"rounding must be 'half_even' or 'half_away'"),
        ({"running_min": torch.tensor([0.0, float("nan"), 0.0, 0.0])}, r"of channel 1 must not be NaN"),
        ({"scale": torch.ones(4, device="meta")}, r"scale must be on the same device as input"),
    ],
)
def test_bad_input_leaves_state_unchanged(over, message):
    args = _bad(**over)
    state = {k: v.clone() for k, v in args.items() if isinstance(v, torch.Tensor) and v.device.type != "meta"}
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fakequant.fused_moving_avg_obs_fake_quant(**args)
    for k, v in state.items():
        assert torch.equal(args[k], v, ) or (torch.isnan(v).any() and torch.equal(args[k].isnan(), v.isnan()))


# ---------------------------------------------------------------------------------------
# Paddle moving_average_abs_max


def paddle_step_reference(x, scale, state, accum, rate, bits, training, rounding):
    """Paddle's update rule in float32, then the quant-dequant of the numerics contract with
    step scale / bin_cnt (raised to the smallest normal float when 0)."""
    bin_cnt = 2 ** (bits - 1) - 1
    if training:
        cur = f32(x.float().abs().max().item())
        state = f32(f32(f32(rate) * state) + f32(1))
        accum = f32(f32(f32(rate) * accum) + cur)
        scale = f32(accum / state)
    step = f32(scale / f32(bin_cnt))
    if 0 <= step < np.finfo(np.float32).tiny:
        step = np.finfo(np.float32).tiny
    y, mask = fake_quant_formula(x.cpu(), torch.tensor([float(step)]), torch.tensor([0]), -bin_cnt, bin_cnt, rounding)
    return y, mask, scale, state, accum


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [8, 4, 2, 16])
@pytest.mark.parametrize("rounding", ["half_away", "half_even"])
def test_moving_average_abs_max_follows_paddle_rule(device, dtype, bits, rounding):
    scale, state, accum = (torch.zeros(1, device=device) for _ in range(3))
    ref = (f32(0), f32(0), f32(0))
    for step in range(6):
        training = step != 4
        x = make_input((7, 9, 3), dtype, device, scale=float(np.exp(np.random.uniform(-3, 3))))
        y, packed = torch.ops.fakequant.fake_quant_moving_average_abs_max(x, scale, state, accum, 0.9, bits,
                                                                          training, rounding)
        ref_y, ref_mask, *ref = paddle_step_reference(x, *ref, 0.9, bits, training, rounding)
        assert (scale.item(), state.item(), accum.item()) == tuple(float(v) for v in ref)
        assert torch.equal(y.cpu(), ref_y) and torch.equal(unpack_mask(packed, y).cpu(), ref_mask)


@pytest.mark.parametrize("device", DEVICES)
def test_moving_average_abs_max_close_to_paddles_own_formula(device):
    # Paddle computes round(clip(x, -s, s) * bin_cnt / s) * s / bin_cnt; our contract multiplies
    # by fp32(1 / (s / bin_cnt)). The two may differ where x * bin_cnt / s lands within float
    # rounding of a .5 tie: by one step at most, on a handful of elements.
    scale, state, accum = torch.zeros(1, device=device), torch.zeros(1, device=device), torch.zeros(1, device=device)
    x = torch.randn(100_000, device=device) * 2
    y = fakequant.fake_quantize_moving_average_abs_max(x, scale, state, accum)
    s = scale.item()
    paddle = torch.round(x.clamp(-s, s) * 127 / s) * s / 127  # ties are measure-zero on random data
    step = s / 127
    assert ((y - paddle).abs() <= step * 1.0001).all()
    assert ((y - paddle).abs() > step * 1e-3).sum() <= 5


@pytest.mark.parametrize("device", DEVICES)
def test_moving_average_abs_max_all_zero_input_stays_finite(device):
    scale, state, accum = torch.zeros(1, device=device), torch.zeros(1, device=device), torch.zeros(1, device=device)
    y = fakequant.fake_quantize_moving_average_abs_max(torch.zeros(9, device=device), scale, state, accum)
    assert torch.equal(y, torch.zeros(9, device=device)) and scale.item() == 0.0
    y = fakequant.fake_quantize_moving_average_abs_max(torch.ones(9, device=device), scale, state, accum, training=False)
    assert torch.isfinite(y).all()


def _paddle_bad(**over):
    args = dict(input=torch.randn(5), scale=torch.ones(1), state=torch.ones(1), accum=torch.ones(1),
                moving_rate=0.9, bits=8, training=True)
    args.update(over)
    return args


@pytest.mark.parametrize(
    "over,message",
    [
        ({"moving_rate": 1.0}, r"moving_rate must lie in \[0, 1\), got 1"),
        ({"moving_rate": -0.1}, r"moving_rate must lie in \[0, 1\)"),
        ({"bits": 1}, r"bits must lie in \[2, 16\], got 1"),
        ({"bits": 17}, r"bits must lie in \[2, 16\], got 17"),
        ({"scale": torch.ones(2)}, r"scale must have exactly one element"),
        ({"state": torch.ones(1, dtype=torch.float64)}, r"state must be a Float tensor"),
        ({"accum": torch.tensor([float("inf")])}, r"accum must be finite and >= 0, got inf"),
        ({"scale": torch.tensor([-1.0])}, r"scale must be finite and >= 0, got -1"),
        ({"input": torch.ones(3, dtype=torch.int64)}, r"input must be float32"),
        ({"rounding": "nearest"}, r"rounding must be one of"),
        ({"rounding": "stochastic"}, r"rounding must be 'half_even' or 'half_away'"),
    ],
)
def test_moving_average_abs_max_bad_input(over, message):
    args = _paddle_bad(**over)
    before = [args[k].clone() for k in ("scale", "state", "accum")]
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fakequant.fake_quant_moving_average_abs_max(**args)
    for k, b in zip(("scale", "state", "accum"), before):
        assert torch.equal(args[k], b)


# ---------------------------------------------------------------------------------------
# Paddle range_abs_max


def range_reference(x, scale, window, it, bits, training, rounding):
    """Paddle's FindRangeAbsMaxFunctor, then quant-dequant with step scale / bin_cnt."""
    window = list(window)
    if training:
        window, it, scale = range_abs_max_update(window, it, scale, f32(x.float().abs().max().item()))
    bin_cnt = 2 ** (bits - 1) - 1
    step = max(f32(scale / f32(bin_cnt)), np.finfo(np.float32).tiny)
    y, mask = fake_quant_formula(x.cpu(), torch.tensor([float(step)]), torch.tensor([0]), -bin_cnt, bin_cnt, rounding)
    return y, mask, scale, window, it


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window_size", [1, 3, 5])
def test_range_abs_max_follows_paddle_rule(device, dtype, window_size):
    scale = torch.zeros(1, device=device)
    window = torch.zeros(window_size, device=device)
    it = torch.zeros(1, dtype=torch.long, device=device)
    ref = (f32(0), [f32(0)] * window_size, 0)
    # Shrinking magnitudes make the maximum leave the window (the rescan path), then a jump up.
    magnitudes = [8.0, 6.0, 4.0, 3.0, 2.0, 1.5, 1.0, 9.0, 0.5, 0.25]
    for step, m in enumerate(magnitudes):
        training = step != 5
        x = make_input((5, 11), dtype, device, scale=m)
        y, packed = torch.ops.fakequant.fake_quant_range_abs_max(x, scale, window, it, 8, training, "half_away")
        ref_y, ref_mask, *ref = range_reference(x, *ref, 8, training, "half_away")
        assert scale.item() == float(ref[0]), step
        assert window.tolist() == [float(v) for v in ref[1]] and it.item() == ref[2]
        assert torch.equal(y.cpu(), ref_y) and torch.equal(unpack_mask(packed, y).cpu(), ref_mask)


@pytest.mark.parametrize(
    "over,message",
    [
        ({"window": torch.zeros(0)}, r"window must be a 1-D tensor of window_size >= 1 elements"),
        ({"window": torch.zeros(2, 2)}, r"window must be a 1-D tensor"),
        ({"iter": torch.zeros(1, dtype=torch.int32)}, r"iter must be a Long tensor"),
        ({"iter": torch.tensor([-3])}, r"iter must be >= 0, got -3"),
        ({"window": torch.tensor([1.0, float("nan")])}, r"window\[1\] must be finite"),
        ({"bits": 0}, r"bits must lie in \[2, 16\]"),
        ({"scale": torch.ones(1, dtype=torch.float16)}, r"scale must be a Float tensor"),
    ],
)
def test_range_abs_max_bad_input(over, message):
    args = dict(input=torch.randn(5), scale=torch.ones(1), window=torch.zeros(4), iter=torch.zeros(1, dtype=torch.long),
                bits=8, training=True)
    args.update(over)
    before = {k: args[k].clone() for k in ("scale", "window", "iter")}
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fakequant.fake_quant_range_abs_max(**args)
    for k, b in before.items():
        assert torch.equal(args[k], b, ) or torch.isnan(b).any()


# ---------------------------------------------------------------------------------------
# Gradient of the Paddle ops


@pytest.mark.parametrize("device", DEVICES)
def test_paddle_eval_gradient_is_clipped_ste(device):
    # eval with a stored scale that clips: gradient = grad * mask
    x = make_input((6, 7), torch.float32, device, layout="transposed")
    xg = x.clone().requires_grad_()
    s = torch.full((1,), 1.0, device=device)
    y = fakequant.fake_quantize_moving_average_abs_max(xg, s, torch.ones(1, device=device), s.clone(), training=False)
    y.backward(torch.ones_like(y))
    assert torch.equal(xg.grad, (x.abs() <= 1.0 + 0.5 / 127).float())


# ---------------------------------------------------------------------------------------
# CUDA: against the CPU, no host synchronisation, CUDA graphs


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("axis", [None, 0, 1, -1])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_cpu(axis, dtype):
    x = make_input((8, 33, 17), dtype, "cpu")
    channels = 1 if axis is None else x.shape[axis]
    cpu, gpu = MinMaxState(channels, "cpu"), MinMaxState(channels, "cuda")
    for _ in range(3):
        y1, m1 = ours(x, cpu, 0.1, -128, 127, axis, True)
        y2, m2 = ours(x.cuda(), gpu, 0.1, -128, 127, axis, True)
        gpu.assert_equal(cpu)
        assert torch.equal(y1, y2.cpu()) and torch.equal(m1, m2.cpu())
        x = make_input((8, 33, 17), dtype, "cpu")

