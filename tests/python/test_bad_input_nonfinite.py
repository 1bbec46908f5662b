"""Non-finite statistics through the observers (docs/numerics.md, "Non-finite statistics").

A NaN or inf in a training batch used to enter the observer state for good (every later call on
the CPU raised `scale must be finite`; on the GPU every later output was NaN). The rule now, for
every observer, CPU and CUDA alike: an update whose batch statistic or result is not finite is
not applied (the state keeps its last values), and that call's output is NaN with mask 0, so the
bad batch is seen (a NaN loss, which AMP's GradScaler skips) rather than hidden. The next finite
batch continues as if the bad one had never come.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import DEVICES
from reference import fake_quant_formula, moving_average_reference, range_abs_max_update, unpack_mask

ops = torch.ops.fakequant
f32 = np.float32
BAD = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def batch(device, bad=None, n=300):
    x = torch.randn(n, device=device) * float(torch.empty(()).uniform_(0.5, 3.0))
    if bad is not None:
        x[torch.randint(0, n, ()).item()] = BAD[bad]
    return x


def assert_poisoned(y, mask):
    assert torch.isnan(y).all(), y
    assert not unpack_mask(mask, y).any()


def paddle_moving_average(x, scale, state, accum, rate, bits):
    """Paddle's rule in float32 (the numerics contract) for a finite batch."""
    cur = f32(x.float().abs().max().item())
    state = f32(f32(f32(rate) * state) + f32(1))
    accum = f32(f32(f32(rate) * accum) + cur)
    scale = f32(accum / state)
    bin_cnt = 2 ** (bits - 1) - 1
    step = max(f32(scale / f32(bin_cnt)), np.finfo(np.float32).tiny)
    y, mask = fake_quant_formula(x.cpu(), torch.tensor([float(step)]), torch.tensor([0]), -bin_cnt, bin_cnt,
                                 "half_away")
    return y, mask, scale, state, accum


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_moving_average_abs_max_skips_a_non_finite_batch(device, bad):
    scale, state, accum = (torch.zeros(1, device=device) for _ in range(3))
    ref = (f32(0), f32(0), f32(0))
    for step in range(6):
        x = batch(device, bad if step in (2, 3) else None)
        before = (scale.clone(), state.clone(), accum.clone())
        y, mask = ops.fake_quant_moving_average_abs_max(x, scale, state, accum, 0.9, 8, True, "half_away")
        if step in (2, 3):
            assert_poisoned(y, mask)
            assert all(torch.equal(a, b) for a, b in zip((scale, state, accum), before))
            continue
        ref_y, ref_mask, *ref = paddle_moving_average(x, *ref, 0.9, 8)
        assert (scale.item(), state.item(), accum.item()) == tuple(float(v) for v in ref)
        assert torch.equal(y.cpu(), ref_y) and torch.equal(unpack_mask(mask, y).cpu(), ref_mask)
    # Eval with the (finite) state: no statistic, the stored scale; a NaN element stays NaN alone.
    x = batch(device, "nan")
    y, _ = ops.fake_quant_moving_average_abs_max(x, scale, state, accum, 0.9, 8, False, "half_away")
    assert torch.isnan(y).sum().item() == 1


@pytest.mark.parametrize("device", DEVICES)
def test_moving_average_abs_max_overflowing_accum_is_not_applied(device):
    # Finite inputs whose moving average overflows float32: the state stays finite and usable.
    scale, state, accum = (torch.tensor([v], device=device) for v in (3.0e38, 1.0, 3.0e38))
    x = torch.full((16,), 3.3e38, device=device)
    y, mask = ops.fake_quant_moving_average_abs_max(x, scale, state, accum, 0.9, 8, True, "half_away")
    assert_poisoned(y, mask)
    assert (scale.item(), state.item(), accum.item()) == (float(f32(3.0e38)), 1.0, float(f32(3.0e38)))
    y, mask = ops.fake_quant_moving_average_abs_max(batch(device), scale, state, accum, 0.9, 8, True, "half_away")
    assert torch.isfinite(y).all() and torch.isfinite(scale).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_range_abs_max_skips_a_non_finite_batch(device, bad):
    W = 3
    scale, window, it = torch.zeros(1, device=device), torch.zeros(W, device=device), torch.zeros(1, dtype=torch.long,
                                                                                                    device=device)
    ref_window, ref_it, ref_scale = [f32(0)] * W, 0, f32(0)
    for step in range(8):
        x = batch(device, bad if step in (1, 4) else None)
        before = (scale.clone(), window.clone(), it.clone())
        y, mask = ops.fake_quant_range_abs_max(x, scale, window, it, 8, True, "half_away")
        if step in (1, 4):
            assert_poisoned(y, mask)
            assert all(torch.equal(a, b) for a, b in zip((scale, window, it), before))
            continue
        ref_window, ref_it, ref_scale = range_abs_max_update(ref_window, ref_it, ref_scale, f32(x.abs().max().item()))
        assert it.item() == ref_it and scale.item() == float(ref_scale)
        assert window.cpu().tolist() == [float(v) for v in ref_window]
        step_size = max(f32(ref_scale / f32(127)), np.finfo(np.float32).tiny)
        ref_y, ref_mask = fake_quant_formula(x.cpu(), torch.tensor([float(step_size)]), torch.tensor([0]), -127, 127,
                                             "half_away")
        assert torch.equal(y.cpu(), ref_y) and torch.equal(unpack_mask(mask, y).cpu(), ref_mask)


class MinMax:
    def __init__(self, channels, device):
        self.on = torch.ones(1, dtype=torch.long, device=device)
        self.running_min = torch.full([channels], float("inf"), device=device)
        self.running_max = torch.full([channels], float("-inf"), device=device)
        self.scale = torch.ones(channels, device=device)
        self.zero_point = torch.zeros(channels, dtype=torch.int32, device=device)

    def call(self, x, axis):
        return ops.fused_moving_avg_obs_fake_quant(x, self.on, self.on, self.running_min, self.running_max, self.scale,
                                                   self.zero_point, 0.25, 0, 255, axis, False, False, "half_even")

    def tensors(self):
        return (self.running_min, self.running_max, self.scale, self.zero_point)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_min_max_observer_per_tensor_skips_a_non_finite_batch(device, bad):
    obs = MinMax(1, device)
    ref_min = ref_max = None
    for step in range(5):
        x = batch(device, bad if step == 2 else None)
        before = [t.clone() for t in obs.tensors()]
        y, mask = obs.call(x, None)
        if step == 2:
            assert_poisoned(y, mask)
            assert all(torch.equal(a, b) for a, b in zip(obs.tensors(), before))
            continue
        mn, mx = f32(x.min().item()), f32(x.max().item())
        ref_min = mn if ref_min is None else moving_average_reference(ref_min, mn, 0.25)
        ref_max = mx if ref_max is None else moving_average_reference(ref_max, mx, 0.25)
        assert obs.running_min.item() == float(ref_min) and obs.running_max.item() == float(ref_max)
        ref_y, ref_mask = fake_quant_formula(x.cpu(), obs.scale.cpu(), obs.zero_point.cpu(), 0, 255)
        assert torch.equal(y.cpu(), ref_y) and torch.equal(unpack_mask(mask, y).cpu(), ref_mask)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("axis", [0, 1])
def test_min_max_observer_per_channel_skips_only_the_bad_channel(device, axis):
    C = 6
    obs = MinMax(C, device)
    twin = MinMax(C, device)  # the same batches with the bad channel's rows left out of step 2
    shape = (C, 40) if axis == 0 else (40, C)
    for step in range(4):
        x = torch.randn(shape, device=device) * 2
        y, mask = obs.call(x.clone() if step != 2 else _with_bad_channel(x, axis, 3), axis)
        twin_y, twin_mask = twin.call(x, axis) if step != 2 else (None, None)
        if step == 2:
            bad = y.select(axis, 3)
            assert torch.isnan(bad).all() and not unpack_mask(mask, y).select(axis, 3).any()
            # The good channels were observed and quantised as usual: run the twin on them.
            keep = [c for c in range(C) if c != 3]
            twin_y, _ = twin.call(x, axis)
            twin.running_min[3], twin.running_max[3] = obs.running_min[3], obs.running_max[3]
            twin.scale[3], twin.zero_point[3] = obs.scale[3], obs.zero_point[3]
            assert torch.equal(y.index_select(axis, torch.tensor(keep, device=device)),
                               twin_y.index_select(axis, torch.tensor(keep, device=device)))
        else:
            assert torch.equal(y, twin_y) and torch.equal(mask, twin_mask)
        assert all(torch.equal(a, b) for a, b in zip(obs.tensors(), twin.tensors()))
        assert torch.isfinite(obs.running_min).all() and torch.isfinite(obs.running_max).all()


def _with_bad_channel(x, axis, channel):
    x = x.clone()
    x.select(axis, channel)[5] = float("nan")
    x.select(axis, channel)[9] = float("inf")
    return x


@pytest.mark.parametrize("device", DEVICES)
def test_min_max_observer_off_passes_a_non_finite_batch_through(device):
    # With the observer off there is no statistic: fake quant uses the stored qparams; with fake
    # quant off too, the input comes back as it is (NaN and inf included).
    obs = MinMax(1, device)
    obs.call(batch(device), None)
    before = [t.clone() for t in obs.tensors()]
    off = torch.zeros(1, dtype=torch.long, device=device)
    x = batch(device, "inf")
    y, _ = ops.fused_moving_avg_obs_fake_quant(x, off, obs.on, obs.running_min, obs.running_max, obs.scale,
                                               obs.zero_point, 0.25, 0, 255, None, False, False, "half_even")
    ref_y, _ = fake_quant_formula(x.cpu(), obs.scale.cpu(), obs.zero_point.cpu(), 0, 255)
    assert torch.equal(y.cpu(), ref_y)
    y, _ = ops.fused_moving_avg_obs_fake_quant(x, obs.on, off, obs.running_min, obs.running_max, obs.scale,
                                               obs.zero_point, 0.25, 0, 255, None, False, False, "half_even")
    assert torch.equal(y, x)
    assert all(torch.equal(a, b) for a, b in zip(obs.tensors(), before))
