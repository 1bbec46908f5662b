"""fakequant.nn fake-quantize modules: against the torch.ao modules doing the same job
(bit-exact where the op is), against the formulas written out, state-dict round trips,
torch.ao eager / FX and torchao pt2e QAT flows, torch.compile."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import fakequant
from conftest import DEVICES, HAS_CUDA
from fakequant.nn import (AbsMaxWeightFakeQuantize, LearnableFakeQuantize, MovingAverageAbsMaxFakeQuantize,
                          MovingAverageMinMaxFakeQuantize, MovingAveragePerChannelMinMaxFakeQuantize,
                          RangeAbsMaxFakeQuantize)
from fakequant.qconfig import get_qat_qconfig, get_torchao_qat_quantizer
from reference import fake_quant_formula, fake_quant_per_channel_formula

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")

try:
    import torch.ao.quantization as tq
    from torch.ao.quantization._learnable_fake_quantize import _LearnableFakeQuantize
except ImportError:  # torch.ao retired
    tq = None
    _LearnableFakeQuantize = None
try:
    import torchao.quantization.pt2e as tao_pt2e
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e
except ImportError:
    tao_pt2e = None

needs_ao = pytest.mark.skipif(tq is None or not hasattr(tq, "FusedMovingAvgObsFakeQuantize"),
                              reason="torch.ao.quantization is not available")
needs_torchao = pytest.mark.skipif(tao_pt2e is None, reason="torchao pt2e is not installed")
f32 = np.float32
ACTIVATION_CLASSES = [MovingAverageAbsMaxFakeQuantize, RangeAbsMaxFakeQuantize, MovingAverageMinMaxFakeQuantize]
ALL_CLASSES = ACTIVATION_CLASSES + [MovingAveragePerChannelMinMaxFakeQuantize, LearnableFakeQuantize,
                                    AbsMaxWeightFakeQuantize]


def rand(*shape, device="cpu", scale=None, shift=0.0):
    scale = float(np.exp(np.random.uniform(-2, 2))) if scale is None else scale
    return torch.randn(*shape, device=device) * scale + shift


FLAGS = [(1, 1), (1, 1), (0, 1), (1, 0), (1, 1), (0, 0), (1, 1)]  # (observer, fake quant) per step


def set_flags(mods, obs, fq):
    for m in mods:
        m.enable_observer(bool(obs))
        m.enable_fake_quant(bool(fq))


# ---------------------------------------------------------------------------------------
# Base API


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_fake_quantize_base_api(cls):
    m = cls.with_args()()
    assert isinstance(m, cls) and isinstance(m, fakequant.nn.FakeQuantizeBase)
    if tq is not None:
        assert isinstance(m, tq.FakeQuantizeBase)
        m.apply(tq.disable_observer)
        m.apply(tq.disable_fake_quant)
        assert m.observer_enabled.item() == 0 and m.fake_quant_enabled.item() == 0
        assert not m._observer_on and not m._fake_quant_on
        m.apply(tq.enable_observer)
        m.apply(tq.enable_fake_quant)
    flag_dtype = torch.int64 if isinstance(m, MovingAverageMinMaxFakeQuantize) else torch.uint8
    assert m.fake_quant_enabled.dtype == flag_dtype and m.observer_enabled.dtype == flag_dtype
    assert m.observer_enabled.item() == 1 and m.fake_quant_enabled.item() == 1
    for attr in ("quant_min", "quant_max", "dtype", "qscheme", "ch_axis", "is_per_channel"):
        assert hasattr(m, attr), attr
    x = rand(4, 6, 5)
    y = m(x)
    assert y.shape == x.shape and not torch.equal(y, x)
    scale, zero_point = m.calculate_qparams()
    assert scale.dtype == torch.float32 and zero_point.dtype == torch.int32
    assert (scale > 0).all()
    assert "quant_min" in repr(m) and "fake_quant_enabled=1" in repr(m)
    m.disable_fake_quant()
    assert torch.equal(m(x), x)


@needs_torchao
@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_recognised_by_torchao(cls):
    from torchao.quantization.pt2e.observer import _is_activation_post_process

    m = cls()
    assert isinstance(m, tao_pt2e.FakeQuantizeBase) and _is_activation_post_process(m)


@needs_torchao
def test_registered_when_torchao_is_imported_after_fakequant():
    code = ("import fakequant, torch\n"
            "from fakequant.nn import MovingAverageAbsMaxFakeQuantize as M\n"
            "import torchao.quantization.pt2e as p\n"
            "from torchao.quantization.pt2e.observer import _is_activation_post_process as f\n"
            "assert 'torchao' in __import__('sys').modules\n"
            "print(isinstance(M(), p.FakeQuantizeBase), f(M()))\n")
    env = dict(os.environ)
    assert "torchao" not in code.split("import torchao")[0]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "True True"


def test_spec_keywords_checked():
    MovingAverageAbsMaxFakeQuantize(bits=8, quant_min=-127, quant_max=127, dtype=torch.int8,
                                    qscheme=torch.per_tensor_symmetric, is_dynamic=False)
    with pytest.raises(ValueError, match=r"quant_min=-128 disagrees with the module's quant_min=-127"):
        MovingAverageAbsMaxFakeQuantize(quant_min=-128, quant_max=127)
    with pytest.raises(ValueError, match=r"is_dynamic=True is not supported"):
        RangeAbsMaxFakeQuantize(is_dynamic=True)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['foo'\]"):
        AbsMaxWeightFakeQuantize(foo=1)
    with pytest.raises(ValueError, match=r"the range must be symmetric"):
        AbsMaxWeightFakeQuantize(quant_min=0, quant_max=255)
    with pytest.raises(ValueError, match=r"rounding must be 'half_even' or 'half_away'"):
        MovingAverageMinMaxFakeQuantize(rounding="stochastic")
    with pytest.raises(ValueError, match=r"bits must lie in \[2, 16\]"):
        MovingAverageAbsMaxFakeQuantize(bits=1)
    with pytest.raises(ValueError, match=r"need -128 <= quant_min < quant_max <= 127 for dtype torch.qint8"):
        LearnableFakeQuantize(quant_min=0, quant_max=255, dtype=torch.qint8)
    assert AbsMaxWeightFakeQuantize(quant_min=-32767, quant_max=32767).dtype == torch.qint32


# ---------------------------------------------------------------------------------------
# Paddle activation quantizers vs the update rules written out


def paddle_quant(x, scale, bits, rounding):
    bin_cnt = 2 ** (bits - 1) - 1
    step = max(f32(f32(scale) / f32(bin_cnt)), np.finfo(np.float32).tiny)
    return fake_quant_formula(x, torch.tensor([float(step)]), torch.tensor([0]), -bin_cnt, bin_cnt, rounding)[0]


@pytest.mark.parametrize("bits,rounding", [(8, "half_away"), (4, "half_even")])
def test_moving_average_abs_max_module_follows_paddle(bits, rounding):
    m = MovingAverageAbsMaxFakeQuantize(bits=bits, moving_rate=0.8, rounding=rounding)
    scale, state, accum = f32(0.001), f32(1), f32(1)  # Paddle's initial OutScale, state, accum
    for step, (obs, fq) in enumerate(FLAGS + [(1, 1)]):
        set_flags([m], obs, fq)
        m.train(step != 6)
        x = rand(5, 7)
        y = m(x)
        if obs and m.training:
            state = f32(f32(f32(0.8) * state) + f32(1))
            accum = f32(f32(f32(0.8) * accum) + f32(x.abs().max().item()))
            scale = f32(accum / state)
        assert (m.scale.item(), m.state.item(), m.accum.item()) == (float(scale), float(state), float(accum))
        assert torch.equal(y, paddle_quant(x, scale, bits, rounding) if fq else x), step
        s, z = m.calculate_qparams()
        assert s.item() == float(f32(scale / f32(2 ** (bits - 1) - 1))) and z.item() == 0


def test_range_abs_max_module_follows_paddle():
    m = RangeAbsMaxFakeQuantize(window_size=3)
    scale, window = f32(0.001), [f32(0)] * 3
    for step, mag in enumerate([8.0, 6.0, 4.0, 3.0, 2.0, 9.0, 1.0]):
        obs, fq = FLAGS[step]
        set_flags([m], obs, fq)
        x = rand(4, 9, scale=mag)
        y = m(x)
        if obs:
            it = int(m.iter.item()) - 1
            cur = f32(x.abs().max().item())
            removed = window[it % 3]
            window[it % 3] = cur
            if cur > scale:
                scale = cur
            elif abs(removed - scale) < 1e-6:
                scale = max(window[:min(it + 1, 3)])
        assert m.scale.item() == float(scale), step
        assert m.window.tolist() == [float(v) for v in window]
        assert torch.equal(y, paddle_quant(x, scale, 8, "half_away") if fq else x), step
    assert m.iter.item() == sum(o for o, _ in FLAGS)


def test_paddle_modules_gradient_is_clipped_ste():
    m = MovingAverageAbsMaxFakeQuantize()
    m(rand(50, scale=1.0))
    m.eval()
    x = rand(200, scale=3.0).requires_grad_()
    y = m(x)
    g = torch.randn_like(y)
    y.backward(g)
    limit = m.scale.item()
    inside = x.detach().abs() <= limit * (1 + 1 / 254)
    assert 0 < inside.sum() < inside.numel()
    assert torch.equal(x.grad[inside], g[inside])
    assert (x.grad[x.detach().abs() > limit * 1.01] == 0).all()


# ---------------------------------------------------------------------------------------
# Moving-average min/max vs torch.ao's FusedMovingAvgObsFakeQuantize


def ao_fused(**kwargs):
    per_channel = kwargs.get("qscheme") in (torch.per_channel_symmetric, torch.per_channel_affine)
    obs = tq.MovingAveragePerChannelMinMaxObserver if per_channel else tq.MovingAverageMinMaxObserver
    return tq.FusedMovingAvgObsFakeQuantize(observer=obs, **kwargs)


MINMAX_CONFIGS = [
    dict(),  # default_fused_act_fake_quant
    dict(quant_min=0, quant_max=255, dtype=torch.quint8, reduce_range=True),
    dict(quant_min=-128, quant_max=127, dtype=torch.qint8, qscheme=torch.per_tensor_symmetric),
    dict(quant_min=-128, quant_max=127, dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0),
    dict(quant_min=0, quant_max=15, dtype=torch.quint8, qscheme=torch.per_channel_affine, ch_axis=0,
         averaging_constant=0.2),
]


@needs_ao
@pytest.mark.parametrize("config", MINMAX_CONFIGS)
def test_moving_average_min_max_bit_exact_with_torch_ao(config):
    theirs = ao_fused(**config)
    mine = MovingAverageMinMaxFakeQuantize(**config)
    assert (mine.quant_min, mine.quant_max, mine.ch_axis, mine.is_per_channel) == (
        theirs.activation_post_process.quant_min, theirs.activation_post_process.quant_max, theirs.ch_axis,
        theirs.is_per_channel)
    for step, (obs, fq) in enumerate(FLAGS):
        set_flags([mine, theirs], obs, fq)
        x = rand(6, 5, 7, shift=float(np.random.uniform(-1, 1))).requires_grad_()
        y1, y2 = mine(x), theirs(x)
        assert torch.equal(y1, y2), step
        g = torch.randn_like(y1)
        assert torch.equal(torch.autograd.grad(y1, x, g)[0], torch.autograd.grad(y2, x, g)[0]), step
        sd1, sd2 = mine.state_dict(), theirs.state_dict()
        assert sd1.keys() == sd2.keys()
        for k in sd1:
            assert torch.equal(sd1[k], sd2[k].to(sd1[k].dtype)), (step, k)
    if config.get("qscheme") in (torch.per_channel_symmetric, None) and not config.get("reduce_range"):
        # After a fake-quant step the buffers hold what calculate_qparams recomputes.
        set_flags([mine], 1, 1)
        mine(rand(6, 5, 7))
        s, z = mine.calculate_qparams()
        assert torch.equal(s, mine.scale) and torch.equal(z, mine.zero_point)


@needs_ao
def test_per_channel_class_defaults_match_torch_ao():
    mine, theirs = MovingAveragePerChannelMinMaxFakeQuantize(), tq.default_fused_per_channel_wt_fake_quant()
    for obs, fq in FLAGS:
        set_flags([mine, theirs], obs, fq)
        w = rand(8, 3, 3, 3)
        assert torch.equal(mine(w), theirs(w))
    assert torch.equal(mine.scale, theirs.scale) and torch.equal(mine.zero_point, theirs.zero_point)


@needs_ao
@pytest.mark.parametrize("config", [MINMAX_CONFIGS[0], MINMAX_CONFIGS[3]])
def test_moving_average_min_max_state_dict_interchangeable_with_torch_ao(config):
    theirs = ao_fused(**config)
    for _ in range(3):
        theirs(rand(6, 5))
    mine = MovingAverageMinMaxFakeQuantize(**config)
    mine.load_state_dict(theirs.state_dict())
    back = ao_fused(**config)
    for obs, fq in FLAGS:
        set_flags([mine, theirs], obs, fq)
        x = rand(6, 5)
        assert torch.equal(mine(x), theirs(x))
    back.load_state_dict(mine.state_dict())
    x = rand(6, 5)
    assert torch.equal(back(x), mine(x))


def test_moving_average_min_max_matches_formula_any_axis():
    # torch.ao's module knows axis 0 only; the formula of the op's numerics contract for axis 2.
    from reference import choose_qparams_reference, moving_average_reference

    m = MovingAverageMinMaxFakeQuantize(quant_min=-128, quant_max=127, dtype=torch.qint8,
                                        qscheme=torch.per_channel_affine, ch_axis=2, averaging_constant=0.3)
    run_min, run_max = [float("inf")] * 4, [float("-inf")] * 4
    for _ in range(3):
        x = rand(3, 5, 4, shift=0.5)
        y = m(x)
        mins, maxs = x.amin((0, 1)).tolist(), x.amax((0, 1)).tolist()
        run_min = [moving_average_reference(r, c, 0.3) for r, c in zip(run_min, mins)]
        run_max = [moving_average_reference(r, c, 0.3) for r, c in zip(run_max, maxs)]
        qp = [choose_qparams_reference(a, b, -128, 127, False) for a, b in zip(run_min, run_max)]
        scale, zp = torch.tensor([s for s, _ in qp]), torch.tensor([z for _, z in qp], dtype=torch.int32)
        assert torch.equal(y, fake_quant_per_channel_formula(x, scale, zp, 2, -128, 127)[0])
        assert m.min_val.tolist() == run_min and m.max_val.tolist() == run_max


# ---------------------------------------------------------------------------------------
# Learnable (LSQ / LSQ+) vs torch.ao._LearnableFakeQuantize


def ao_learnable(per_channel, symmetric, channels, use_grad_scaling, qmin, qmax, dtype):
    qscheme = {(False, False): torch.per_tensor_affine, (False, True): torch.per_tensor_symmetric,
               (True, False): torch.per_channel_affine, (True, True): torch.per_channel_symmetric}[
        (per_channel, symmetric)]
    obs = tq.MovingAveragePerChannelMinMaxObserver if per_channel else tq.MovingAverageMinMaxObserver
    kw = dict(ch_axis=1) if per_channel else {}
    theirs = _LearnableFakeQuantize(obs, quant_min=qmin, quant_max=qmax, dtype=dtype, qscheme=qscheme,
                                    channel_len=channels if per_channel else -1,
                                    use_grad_scaling=use_grad_scaling, **kw)
    mine = LearnableFakeQuantize(quant_min=qmin, quant_max=qmax, dtype=dtype, qscheme=qscheme,
                                 ch_axis=1 if per_channel else 0, use_grad_scaling=use_grad_scaling)
    return mine, theirs


@pytest.mark.skipif(_LearnableFakeQuantize is None, reason="torch.ao's _LearnableFakeQuantize is not available")
@pytest.mark.parametrize("per_channel,symmetric,use_grad_scaling,qrange",
                         [(False, False, False, (0, 255, torch.quint8)), (False, True, True, (-128, 127, torch.qint8)),
                          (True, False, True, (0, 15, torch.quint8)), (True, True, False, (-8, 7, torch.qint8))])
def test_learnable_values_and_grads_equal_torch_ao(per_channel, symmetric, use_grad_scaling, qrange):
    qmin, qmax, dtype = qrange
    mine, theirs = ao_learnable(per_channel, symmetric, 6, use_grad_scaling, qmin, qmax, dtype)
    opt_mine = torch.optim.SGD(mine.parameters(), lr=0.05)
    for step in range(5):
        if step == 1:
            theirs.enable_param_learning()  # PyTorch's flow: one static estimate, then learning
        x = rand(4, 6, 5, shift=0.3).requires_grad_()
        y1, y2 = mine(x), theirs(x)
        assert torch.equal(y1, y2), step
        assert torch.equal(mine.scale, theirs.scale) and torch.equal(mine.zero_point, theirs.zero_point)
        g = torch.randn_like(y1)
        gx1, = torch.autograd.grad(y1, x, g, retain_graph=True)
        gx2, = torch.autograd.grad(y2, x, g, retain_graph=True)
        assert torch.equal(gx1, gx2), step
        (y1 * g).sum().backward()
        (y2 * g).sum().backward()
        # The qparam gradients are sums over the tensor: equal up to the summation order
        # (docs/numerics.md, "Sums"). The terms cancel, so the rounding error scales with the
        # sum of the terms' magnitudes, not with the result: each term is at most
        # |g| * max(|quant_min - zp|, |quant_max - zp|) * grad_factor.
        factor = 1.0 / (x.numel() * qmax) ** 0.5 if use_grad_scaling else 1.0
        reach = max(abs(qmin - theirs.zero_point.detach()).max().item(),
                    abs(qmax - theirs.zero_point.detach()).max().item(), 1.0)
        gsum = g.abs().sum(dim=(0, 2)) if per_channel else g.abs().sum().reshape(1)
        atol = 1e-6 * gsum * reach * factor
        grad_tol = []
        for a, b in ((mine.scale.grad, theirs.scale.grad), (mine.zero_point.grad, theirs.zero_point.grad)):
            grad_tol.append(atol + 1e-5 * b.abs())
            assert ((a - b).abs() <= grad_tol[-1]).all(), (step, a, b, atol)
        opt_mine.step()
        opt_mine.zero_grad()
        with torch.no_grad():  # the same SGD step on theirs, then the same parameters on both sides
            for (p, q), tol in zip(((theirs.scale, mine.scale), (theirs.zero_point, mine.zero_point)), grad_tol):
                p -= 0.05 * p.grad
                p.grad = None
                # The step moves the gradients' difference by lr; the subtraction rounds once.
                assert ((p - q).abs() <= 0.05 * tol + 1e-6 * p.abs()).all(), (step, p, q, tol)
                q.copy_(p)
    s1, z1 = mine.calculate_qparams()
    s2, z2 = theirs.calculate_qparams()
    assert torch.equal(s1, s2) and torch.equal(z1, z2.to(torch.int32))


def test_learnable_init_from_first_observed_batch_formula():
    m = LearnableFakeQuantize(quant_min=0, quant_max=255)
    m.disable_observer()
    m(rand(10))
    assert m.scale.item() == 1.0 and m.initialized.item() == 0  # the observer is off: no init
    m.enable_observer()
    x = rand(100, shift=0.7)
    m(x)
    mn, mx = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    scale = f32(f32(f32(mx) - f32(mn)) / f32(255))
    assert m.scale.item() == float(scale) and m.initialized.item() == 1
    assert m.zero_point.item() == float(np.clip(0 - np.round(f32(mn) / scale), 0, 255))
    before = m.scale.detach().clone()
    m(rand(100, scale=50.0))  # initialised: the next batch changes nothing without a gradient step
    assert torch.equal(m.scale.detach(), before)
    m.reset_qparams()
    m(rand(100, scale=50.0))
    assert m.scale.item() > before.item() * 5


def test_learnable_without_init_keeps_constructor_values():
    m = LearnableFakeQuantize(quant_min=-8, quant_max=7, dtype=torch.qint8, qscheme=torch.per_channel_affine,
                              ch_axis=0, scale=0.25, zero_point=1.0, init_from_observer=False)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)  # built before the per-channel parameters are sized
    x = rand(3, 20).requires_grad_()
    y = m(x)
    assert m.scale.tolist() == [0.25] * 3 and m.zero_point.tolist() == [1.0] * 3
    zp = torch.ones(3)
    assert torch.equal(y, fake_quant_per_channel_formula(x.detach(), m.scale.detach(), zp.int(), 0, -8, 7)[0])
    y.sum().backward()
    opt.step()
    assert not torch.equal(m.scale.detach(), torch.full((3,), 0.25))


# ---------------------------------------------------------------------------------------
# Weight abs-max vs torch.ao FakeQuantize(PerChannelMinMaxObserver)


@needs_ao
@pytest.mark.parametrize("ch_axis", [0, 1, None])
def test_abs_max_weight_equals_torch_ao_fake_quantize(ch_axis):
    if ch_axis is None:
        theirs = tq.FakeQuantize(observer=tq.MinMaxObserver, quant_min=-128, quant_max=127, dtype=torch.qint8,
                                 qscheme=torch.per_tensor_symmetric)
    else:
        theirs = tq.FakeQuantize(observer=tq.PerChannelMinMaxObserver, quant_min=-128, quant_max=127,
                                 dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=ch_axis)
    mine = AbsMaxWeightFakeQuantize(ch_axis=ch_axis)
    for step, (obs, fq) in enumerate(FLAGS):
        set_flags([mine, theirs], obs, fq)
        theirs.activation_post_process.reset_min_max_vals()  # memoryless, as the weight's own abs-max
        w = rand(8, 4, 3, 3).requires_grad_()
        y1, y2 = mine(w), theirs(w)
        assert torch.equal(y1, y2), step
        g = torch.randn_like(y1)
        assert torch.equal(torch.autograd.grad(y1, w, g)[0], torch.autograd.grad(y2, w, g)[0]), step
        assert torch.equal(mine.scale, theirs.scale), step
        s, z = mine.calculate_qparams()
        assert torch.equal(s, theirs.scale) and torch.equal(z, theirs.zero_point)


def test_abs_max_weight_paddle_range_formula_and_disabled_observer():
    m = AbsMaxWeightFakeQuantize(quant_min=-127, quant_max=127, ch_axis=0, rounding="half_away")
    w = rand(5, 12)
    y = m(w)
    scale = torch.clamp(w.abs().amax(1) / 127.0, min=fakequant.FLOAT32_EPS)
    assert torch.equal(m.scale, scale)
    assert torch.equal(y, fake_quant_per_channel_formula(w, scale, torch.zeros(5, dtype=torch.int32), 0, -127, 127,
                                                         "half_away")[0])
    m.disable_observer()
    w2 = w * 3
    y2 = m(w2)  # the last scale is reused: most of w2 clips
    assert torch.equal(m.scale, scale)
    assert torch.equal(y2, fake_quant_per_channel_formula(w2, scale, torch.zeros(5, dtype=torch.int32), 0, -127,
                                                          127, "half_away")[0])


# ---------------------------------------------------------------------------------------
# ahead_relu


@pytest.mark.parametrize("cls", ACTIVATION_CLASSES)
def test_ahead_relu_brings_the_relu_output_closer(cls):
    plain, ahead = cls(), cls(ahead_relu=True)
    err_plain = err_ahead = 0.0
    for _ in range(6):
        x = torch.randn(4000)
        x = torch.where(x < 0, x * 20.0, x)  # a large negative tail
        ref = torch.relu(x)
        err_plain += (torch.relu(plain(x)) - ref).abs().mean().item()
        err_ahead += (torch.relu(ahead(x)) - ref).abs().mean().item()
    assert err_ahead < 0.5 * err_plain
    y = ahead(x)
    assert (y >= 0).all()  # relu(x) was quantized


# ---------------------------------------------------------------------------------------
# State dict round trip


def _make(cls):
    if cls is LearnableFakeQuantize:
        return cls(quant_min=-128, quant_max=127, dtype=torch.qint8, qscheme=torch.per_channel_affine, ch_axis=1)
    if cls is MovingAverageMinMaxFakeQuantize:
        return cls(qscheme=torch.per_channel_affine, ch_axis=1)
    if cls is RangeAbsMaxFakeQuantize:
        return cls(window_size=4)
    return cls()


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_state_dict_round_trip(cls):
    m = _make(cls)
    opt = torch.optim.SGD(m.parameters(), lr=0.01) if list(m.parameters()) else None
    for _ in range(3):
        x = rand(3, 6, 5)
        y = m(x)
        if opt:
            y.sum().backward()
            opt.step()
            opt.zero_grad()
    m.disable_observer()  # the switches travel too
    fresh = _make(cls)
    fresh.load_state_dict(m.state_dict())
    assert not fresh._observer_on and fresh.observer_enabled.item() == 0
    for name, t in m.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], t), name
    for obs in (0, 1, 1):
        set_flags([m, fresh], obs, 1)
        x = rand(3, 6, 5)
        assert torch.equal(fresh(x), m(x))


# ---------------------------------------------------------------------------------------
# torch.compile


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_torch_compile_fullgraph_matches_eager(device, cls):
    eager = _make(cls).to(device)
    x = rand(3, 6, 5, device=device)
    eager(x)  # first step eager: sizes per-channel state, initialises learnable qparams
    compiled_mod = copy.deepcopy(eager)
    compiled = torch.compile(compiled_mod, fullgraph=True)
    for _ in range(3):
        x = rand(3, 6, 5, device=device).requires_grad_()
        y1, y2 = eager(x), compiled(x)
        assert torch.equal(y1, y2)
        g = torch.randn_like(y1)
        assert torch.equal(torch.autograd.grad(y1, x, g, retain_graph=True)[0],
                           torch.autograd.grad(y2, x, g, retain_graph=True)[0])
        for (name, a), b in zip(eager.state_dict().items(), compiled_mod.state_dict().values()):
            assert torch.equal(a, b), name


# ---------------------------------------------------------------------------------------
# torch.ao eager / FX and torchao pt2e flows


class QuantStubModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.fc1, self.relu, self.fc2 = nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)

    def forward(self, x):
        return self.dequant(self.fc2(self.relu(self.fc1(self.quant(x)))))


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.relu, self.fc2 = nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(x)))


def _train(model, steps=10):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(steps):
        model(torch.randn(64, 16)).square().mean().backward()
        opt.step()
        opt.zero_grad()


@needs_ao
@pytest.mark.parametrize("weight", ["moving_average_min_max", "abs_max"])
def test_eager_prepare_qat_and_convert(weight):
    m = QuantStubModel()
    m.qconfig = get_qat_qconfig("pytorch", reduce_range=False, weight_quantize_type=weight)
    tq.prepare_qat(m, inplace=True)
    assert isinstance(m.fc1.activation_post_process, MovingAverageMinMaxFakeQuantize)
    wcls = MovingAveragePerChannelMinMaxFakeQuantize if weight != "abs_max" else AbsMaxWeightFakeQuantize
    assert isinstance(m.fc1.weight_fake_quant, wcls)
    _train(m)
    m.eval()
    x = torch.randn(64, 16)
    ref = m(x)
    q = tq.convert(copy.deepcopy(m))
    assert type(q.fc1).__module__.startswith("torch.ao.nn.quantized")
    out_scale = m.fc2.activation_post_process.calculate_qparams()[0].item()
    assert (q(x) - ref).abs().max().item() <= 2 * out_scale


@needs_ao
@pytest.mark.parametrize("backend", ["pytorch", "paddle"])
def test_fx_prepare_qat_and_convert(backend):
    from torch.ao.quantization import QConfigMapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_qat_fx

    example = (torch.randn(64, 16),)
    kwargs = dict(reduce_range=False) if backend == "pytorch" else {}
    p = prepare_qat_fx(Plain().train(), QConfigMapping().set_global(get_qat_qconfig(backend, **kwargs)), example)
    kinds = {type(mod) for mod in p.modules()}
    if backend == "pytorch":
        assert {MovingAverageMinMaxFakeQuantize, MovingAveragePerChannelMinMaxFakeQuantize} <= kinds
    else:
        # The native backend config has no qint8 activations: FX quantizes the weights only.
        assert AbsMaxWeightFakeQuantize in kinds and MovingAverageAbsMaxFakeQuantize not in kinds
    _train(p)
    p.eval()
    x = torch.randn(64, 16)
    ref = p(x)
    q = convert_fx(copy.deepcopy(p))
    assert not any(isinstance(mod, fakequant.nn.FakeQuantizeBase) for mod in q.modules())
    assert (q(x) - ref).abs().max().item() <= 0.05 * ref.abs().max().item()


@needs_torchao
@pytest.mark.parametrize("backend,act_cls,wt_cls", [
    ("pytorch", MovingAverageMinMaxFakeQuantize, MovingAveragePerChannelMinMaxFakeQuantize),
    ("paddle", MovingAverageAbsMaxFakeQuantize, AbsMaxWeightFakeQuantize)])
def test_torchao_prepare_qat_pt2e_and_convert(backend, act_cls, wt_cls):
    example = (torch.randn(64, 16),)
    exported = torch.export.export(Plain(), example).module()
    p = prepare_qat_pt2e(exported, get_torchao_qat_quantizer(backend))
    inserted = [type(m) for m in p.modules() if isinstance(m, fakequant.nn.FakeQuantizeBase)]
    assert act_cls in inserted and wt_cls in inserted
    call_modules = [n for n in p.graph.nodes if n.op == "call_module"
                    and isinstance(p.get_submodule(n.target), fakequant.nn.FakeQuantizeBase)]
    assert len(call_modules) >= 5  # input, 2 weights, 2 outputs (shared where torchao shares)
    _train(p)
    tao_pt2e.move_exported_model_to_eval(p)
    x = example[0].clone().normal_()
    ref = p(x)
    q = convert_pt2e(p)
    assert not any(isinstance(m, fakequant.nn.FakeQuantizeBase) for m in q.modules())
    targets = {str(n.target) for n in q.graph.nodes if n.op == "call_function"}
    assert any("quantize_per_tensor" in t for t in targets) and any("dequantize_per_channel" in t for t in targets)
    y = q(x)
    assert (y - ref).abs().max().item() <= 0.05 * ref.abs().max().item()


# ---------------------------------------------------------------------------------------
# CUDA


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_cuda_forward_without_host_sync(cls):
    m = _make(cls).cuda()
    x = rand(3, 6, 5, device="cuda")
    m(x)  # sizes per-channel state / initialises learnable qparams (host work allowed once)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            x = rand(3, 6, 5, device="cuda", scale=2.0).requires_grad_()
            y = m(x)
            y.backward(torch.ones_like(y))
            m.calculate_qparams()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    cpu = _make(cls)
    cpu.load_state_dict({k: v.cpu() for k, v in m.state_dict().items()})
    x = rand(3, 6, 5, device="cuda")
    if cls is LearnableFakeQuantize:
        assert torch.equal(cpu(x.cpu()), m(x).cpu())
