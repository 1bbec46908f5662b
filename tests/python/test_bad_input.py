"""Bad input to the ops themselves: a clear error naming the argument, nothing corrupted.

Fake (meta) kernels check devices like the real ones; conv_bn_fake_quant_backward checks every
saved tensor it is handed; ops that update state in place reject arguments that share memory;
misaligned tensors are read correctly; output_mask has a message of its own; range_abs_max's
step counter does not overflow; and a float zero point of +0 gives +0 where ATen does.
Non-finite statistics through the observers: test_bad_input_nonfinite.py.
"""

from __future__ import annotations

import pytest
import torch

import fakequant
from conftest import DEVICES
from reference import fake_quant_per_channel_formula

ops = torch.ops.fakequant


def misaligned(t: torch.Tensor) -> torch.Tensor:
    """A copy of t whose data starts one byte past an element boundary (as torch.frombuffer
    with an odd offset, or a NumPy view, can give); same values, contiguous."""
    buf = bytearray(t.numel() * t.element_size() + 1)
    out = torch.frombuffer(buf, dtype=t.dtype, offset=1, count=t.numel()).view(t.shape)
    out.copy_(t)
    assert out.data_ptr() % t.element_size() != 0
    return out


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit (so +0 differs from -0, and NaNs must match in payload)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    view = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
            torch.bfloat16: torch.int16}.get(a.dtype)
    if view is None:
        return torch.equal(a, b)
    return torch.equal(a.contiguous().view(view), b.contiguous().view(view))


# ---------------------------------------------------------------------------------------
# Fake (meta) kernels: a meta tensor among real ones dispatches to the fake kernel, which
# used to return uninitialised memory of the real device.


@pytest.mark.parametrize("meta_arg", ["mask", "grad_output"])
def test_mask_backward_fake_kernel_checks_devices(meta_arg):
    grad = torch.randn(37)
    _, mask = fakequant.fake_quantize_per_tensor_with_mask(torch.randn(37), torch.tensor([0.02]),
                                                           torch.zeros(1, dtype=torch.int32), -128, 127)
    if meta_arg == "mask":
        mask = mask.to("meta")
        message = r"fake_quant_mask_backward: mask must be on the same device as grad_output \(cpu\), got meta"
    else:
        grad = grad.to("meta")
        message = r"fake_quant_mask_backward: mask must be on the same device as grad_output \(meta\), got cpu"
    with pytest.raises(RuntimeError, match=message):
        ops.fake_quant_mask_backward(grad, mask)


def test_mask_backward_fake_kernel_checks_the_mask_like_the_real_kernel():
    grad = torch.randn(37, device="meta")
    with pytest.raises(RuntimeError, match=r"mask must have ceil\(numel / 8\) = 5 bytes for grad_output of 37"):
        ops.fake_quant_mask_backward(grad, torch.empty(4, dtype=torch.uint8, device="meta"))
    with pytest.raises(RuntimeError, match=r"mask must be a uint8 tensor, got torch.int32"):
        ops.fake_quant_mask_backward(grad, torch.empty(5, dtype=torch.int32, device="meta"))
    out = ops.fake_quant_mask_backward(grad, torch.empty(5, dtype=torch.uint8, device="meta"))
    assert out.device.type == "meta" and out.shape == grad.shape


# ---------------------------------------------------------------------------------------
# conv_bn_fake_quant_backward called directly: every saved tensor is checked before anything
# is read (a pre_bn of another dtype, an expanded mask or a weight_q of another shape used to
# read past their buffers: AddressSanitizer, heap-buffer-overflow in kernels/cpu/convbn.cpp).

CONV = dict(stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1)


def _convbn_saved(mode="running", training=True, relu=True):
    x = torch.randn(2, 3, 6, 5)
    w = torch.randn(4, 3, 3, 3) * 0.3
    gamma, beta = torch.rand(4) + 0.5, torch.randn(4)
    rm, rv = torch.randn(4) * 0.1, torch.rand(4) + 0.5
    out, pre_bn, weight_q, weight_mask, relu_mask, state = ops.conv_bn_fake_quant(
        x, w, None, gamma, beta, rm, rv, CONV["stride"], CONV["padding"], CONV["dilation"], CONV["groups"], 1e-5,
        0.1, mode, training, relu, True, -128, 127, "half_even", 1.1920928955078125e-07)
    grad = torch.randn_like(out)
    conv_weight = w if (training and mode == "batch") else weight_q
    return dict(grad_output=grad, input=x, weight=w, pre_bn=pre_bn, weight_q=conv_weight, weight_mask=weight_mask,
                relu_mask=relu_mask, channel_state=state, stride=CONV["stride"], padding=CONV["padding"],
                dilation=CONV["dilation"], groups=CONV["groups"], fold_mode=mode, training=training,
                output_mask=[True, True, True])


def _expanded(mask: torch.Tensor) -> torch.Tensor:
    return torch.full((1,), 0xFF, dtype=torch.uint8).expand(mask.numel())  # the right numel, one byte of storage


@pytest.mark.parametrize(
    "corrupt,message",
    [
        (lambda a: {"pre_bn": a["pre_bn"].double()}, r"pre_bn must have input's dtype \(Float\), as "),
        (lambda a: {"pre_bn": a["pre_bn"].half()}, r"pre_bn must have input's dtype"),
        (lambda a: {"pre_bn": a["pre_bn"][:, :, :-1]}, r"pre_bn must have grad_output's shape"),
        (lambda a: {"relu_mask": _expanded(a["relu_mask"])}, r"relu_mask must be a contiguous 1-D tensor"),
        (lambda a: {"weight_mask": _expanded(a["weight_mask"])}, r"weight_mask must be a contiguous 1-D tensor"),
        (lambda a: {"relu_mask": a["relu_mask"].bool()}, r"relu_mask must be a uint8 tensor"),
        (lambda a: {"weight_mask": a["weight_mask"][:-1]}, r"weight_mask must be empty or hold ceil\(numel / 8\) = "),
        (lambda a: {"weight_q": a["weight_q"][:, :, :2, :2].contiguous()}, r"weight_q must have weight's shape"),
        (lambda a: {"weight_q": torch.randn(4, 3, 5, 5)}, r"weight_q must have weight's shape"),
        (lambda a: {"weight_q": a["weight_q"].double()}, r"weight_q must have input's dtype"),
        (lambda a: {"grad_output": a["grad_output"][:, :, 1:]}, r"grad_output must have the convolution output's"),
        (lambda a: {"grad_output": a["grad_output"].double()}, r"grad_output must have input's dtype"),
        (lambda a: {"weight": a["weight"].double()}, r"weight must have input's dtype"),
        (lambda a: {"groups": 0}, r"groups must be >= 1"),
        (lambda a: {"stride": [0, 1]}, r"stride must be >= 1"),
        (lambda a: {"output_mask": [True, True]}, r"output_mask must hold 3 flags, one per output \(grad_input, "
                                                  r"grad_weight, grad_params\), got 2"),
    ],
)
def test_conv_bn_backward_checks_saved_tensors(corrupt, message):
    args = _convbn_saved()
    args.update(corrupt(args))
    before = {k: v.clone() for k, v in args.items() if isinstance(v, torch.Tensor) and v.device.type == "cpu"}
    with pytest.raises(RuntimeError, match=message):
        ops.conv_bn_fake_quant_backward(**args)
    for k, v in before.items():
        assert torch.equal(args[k], v), k


def test_conv_bn_backward_eval_takes_an_empty_pre_bn():
    args = _convbn_saved(training=False)
    assert args["pre_bn"].numel() == 0
    ops.conv_bn_fake_quant_backward(**args)
    args["pre_bn"] = torch.randn_like(args["grad_output"])
    with pytest.raises(RuntimeError, match=r"pre_bn must be empty with training=False"):
        ops.conv_bn_fake_quant_backward(**args)


@pytest.mark.parametrize("mode", ["batch", "running"])
def test_conv_bn_backward_well_formed_saved_tensors_still_pass(mode):
    # The checks accept what the forward returns, in every mode, with and without ReLU, and the
    # result does not depend on the saved tensors' storage (a misaligned copy gives the same bits).
    for training in (True, False):
        for relu in (True, False):
            args = _convbn_saved(mode, training, relu)
            ref = ops.conv_bn_fake_quant_backward(**args)
            for name in ("grad_output", "pre_bn", "channel_state", "weight"):
                if args[name].numel():
                    args[name] = misaligned(args[name])
            got = ops.conv_bn_fake_quant_backward(**args)
            for r, g in zip(ref, got):
                assert bits_equal(r, g)


@pytest.mark.parametrize("name", ["pre_bn", "weight_q", "weight_mask", "relu_mask", "channel_state", "grad_output"])
def test_conv_bn_backward_fake_kernel_checks_devices(name):
    # One saved tensor on the meta device among CPU ones dispatches to the fake kernel, which
    # returned uninitialised CPU tensors; it checks every device as the real kernels do.
    args = _convbn_saved()
    args[name] = args[name].to("meta")
    with pytest.raises(RuntimeError, match=rf"conv_bn_fake_quant_backward: {name} must be on the same device as "
                                           r"input \(cpu\), got meta"):
        ops.conv_bn_fake_quant_backward(**args)
    args = _convbn_saved()
    with pytest.raises(RuntimeError, match=r"conv_bn_fake_quant_backward: output_mask must hold 3 flags"):
        ops.conv_bn_fake_quant_backward(**{k: (v.to("meta") if isinstance(v, torch.Tensor) else v)
                                           for k, v in args.items()} | {"output_mask": [True]})


# ---------------------------------------------------------------------------------------
# In-place state and aliasing: an updated tensor sharing memory with another argument made the
# op read values it had already overwritten. Rejected, naming both; nothing is written.


def _paddle_ma(input=None, scale=None, state=None, accum=None):
    x = torch.randn(64) * 2 if input is None else input
    return dict(input=x, scale=torch.rand(1) + 0.5 if scale is None else scale,
                state=torch.rand(1) + 1 if state is None else state,
                accum=torch.rand(1) + 1 if accum is None else accum, moving_rate=0.9, bits=8, training=True,
                rounding="half_away")


def _paddle_range(input=None, scale=None, window=None, iter=None):
    return dict(input=torch.randn(64) * 2 if input is None else input,
                scale=torch.rand(1) + 1 if scale is None else scale,
                window=torch.rand(4) + 0.5 if window is None else window,
                iter=torch.tensor([5]) if iter is None else iter, bits=8, training=True, rounding="half_away")


def _min_max(channels=4, **over):
    return dict(input=torch.randn(3, channels) * 2, observer_on=torch.ones(1, dtype=torch.long),
                fake_quant_on=torch.ones(1, dtype=torch.long), running_min=-torch.rand(channels),
                running_max=torch.rand(channels), scale=torch.rand(channels) + 0.1,
                zero_point=torch.zeros(channels, dtype=torch.int32), averaging_const=0.1, quant_min=-128,
                quant_max=127, axis=1, symmetric=False, reduce_range=False, rounding="half_even") | over


def _aliased_paddle_ma_state():
    s = torch.rand(1) + 1
    return _paddle_ma(state=s, accum=s)


def _aliased_paddle_ma_input():
    x = torch.rand(1) + 1
    return _paddle_ma(input=x, scale=x)


def _aliased_range_window():
    w = torch.rand(4) + 1
    return _paddle_range(scale=w[2:3], window=w)


def _aliased_range_iter():
    buf = torch.zeros(4)
    return _paddle_range(window=buf[:4], iter=buf[:2].view(torch.int64))


def _aliased_min_max():
    r = torch.rand(4)
    return _min_max(running_min=r, running_max=r)


def _aliased_min_max_zero_point():
    s = torch.rand(4) + 0.1
    return _min_max(scale=s, zero_point=s.view(torch.int32))


def _aliased_min_max_input():
    x = torch.randn(1, 4)
    return _min_max(input=x, running_max=x.view(-1))


def _aliased_min_max_flag():
    on = torch.ones(2, dtype=torch.long)
    return _min_max(channels=1, input=torch.randn(8), axis=None, observer_on=on[:1], running_min=on[:1].view(torch.float32)[:1],
                    running_max=torch.zeros(1), scale=torch.ones(1), zero_point=torch.zeros(1, dtype=torch.int32))


@pytest.mark.parametrize(
    "op,make,message",
    [
        ("fake_quant_moving_average_abs_max", _aliased_paddle_ma_state, r"state and accum share memory, but both"),
        ("fake_quant_moving_average_abs_max", _aliased_paddle_ma_input,
         r"scale and input share memory, but scale is updated in place while input is read"),
        ("fake_quant_range_abs_max", _aliased_range_window, r"scale and window share memory"),
        ("fake_quant_range_abs_max", _aliased_range_iter, r"window and iter share memory"),
        ("fused_moving_avg_obs_fake_quant", _aliased_min_max, r"running_min and running_max share memory"),
        ("fused_moving_avg_obs_fake_quant", _aliased_min_max_zero_point, r"scale and zero_point share memory"),
        ("fused_moving_avg_obs_fake_quant", _aliased_min_max_input, r"running_max and input share memory"),
        ("fused_moving_avg_obs_fake_quant", _aliased_min_max_flag, r"running_min and observer_on share memory"),
    ],
)
def test_observer_state_aliasing_is_rejected(op, make, message):
    args = make()
    before = {k: v.clone() for k, v in args.items() if isinstance(v, torch.Tensor)}
    with pytest.raises(RuntimeError, match=message):
        getattr(ops, op)(**args)
    for k, v in before.items():
        assert torch.equal(args[k], v), k


def test_disjoint_views_of_one_buffer_are_accepted():
    # Slices of one buffer that do not overlap are not aliasing: the same results as separate
    # tensors (no false positive), and flags shared by observer_on / fake_quant_on (both only read).
    x = torch.randn(300) * 3
    buf = torch.tensor([0.5, 1.5, 0.75])
    separate = [buf[i:i + 1].clone() for i in range(3)]
    y1, m1 = ops.fake_quant_moving_average_abs_max(x, buf[0:1], buf[1:2], buf[2:3], 0.9, 8, True, "half_away")
    y2, m2 = ops.fake_quant_moving_average_abs_max(x, *separate, 0.9, 8, True, "half_away")
    assert torch.equal(y1, y2) and torch.equal(m1, m2) and torch.equal(buf, torch.cat(separate))
    on = torch.ones(1, dtype=torch.long)
    a = _min_max(observer_on=on, fake_quant_on=on)
    b = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in a.items()}
    b["fake_quant_on"] = b["observer_on"].clone()
    assert all(torch.equal(p, q) for p, q in zip(ops.fused_moving_avg_obs_fake_quant(**a),
                                                  ops.fused_moving_avg_obs_fake_quant(**b)))
    assert torch.equal(a["running_min"], b["running_min"]) and torch.equal(a["scale"], b["scale"])


def _convbn_forward_args(**over):
    return dict(input=torch.randn(2, 4, 5, 5), weight=torch.randn(4, 4, 3, 3) * 0.3, bias=None,
                bn_weight=torch.rand(4) + 0.5, bn_bias=torch.randn(4), running_mean=torch.randn(4) * 0.1,
                running_var=torch.rand(4) + 0.5, stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1, eps=1e-5,
                momentum=0.1, fold_mode="batch", training=True, relu=False, quantize_weight=True, quant_min=-128,
                quant_max=127, rounding="half_even", weight_eps=1.1920928955078125e-07) | over


def _aliased_running_stats():
    r = torch.rand(4) + 0.5
    return _convbn_forward_args(running_mean=r, running_var=r)


def _running_var_in_input():
    x = torch.randn(2, 4, 5, 5)
    return _convbn_forward_args(input=x, running_var=x.view(-1)[10:14])


def _running_mean_is_bn_weight():
    g = torch.rand(4) + 0.5
    return _convbn_forward_args(bn_weight=g, running_mean=g)


def _running_var_in_bias():
    b = torch.randn(8)
    return _convbn_forward_args(bias=b[2:6], running_var=b[4:8].abs())


def _running_var_in_weight():
    w = torch.randn(4, 4, 3, 3) * 0.3
    return _convbn_forward_args(weight=w, running_var=w.view(-1)[:4])


@pytest.mark.parametrize(
    "make,message",
    [
        (_aliased_running_stats, r"running_mean and running_var share memory, but both are updated in place"),
        (_running_var_in_input, r"running_var and input share memory"),
        (_running_mean_is_bn_weight, r"running_mean and bn_weight share memory"),
        (_running_var_in_weight, r"running_var and weight share memory"),
    ],
)
def test_conv_bn_running_stat_aliasing_is_rejected(make, message):
    args = make()
    before = {k: v.clone() for k, v in args.items() if isinstance(v, torch.Tensor)}
    with pytest.raises(RuntimeError, match=message):
        ops.conv_bn_fake_quant(**args)
    for k, v in before.items():
        assert torch.equal(args[k], v), k


def test_conv_bn_bias_overlap_is_named():
    # running_var = b[4:8].abs() is a copy: no overlap, accepted; a view of the bias is not.
    ops.conv_bn_fake_quant(**_running_var_in_bias())
    b = torch.rand(8) + 0.5
    with pytest.raises(RuntimeError, match=r"running_var and bias share memory"):
        ops.conv_bn_fake_quant(**_convbn_forward_args(bias=b[2:6], running_var=b[4:8]))


# ---------------------------------------------------------------------------------------
# output_mask of the other backward ops: a list of another length used to get the dispatcher's
# "Tried to convert a List with 2 elements to a fixed-size array of size 3".


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("mask", [[True, True], [True, True, True, False]])
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_learnable_backward_output_mask_length(per_channel, mask, device):
    x = torch.randn(6, 3, device=device)
    if per_channel:
        op = ops.fake_quant_learnable_per_channel_backward
        args = (x, x, torch.ones(3, device=device), torch.zeros(3, device=device), 1, -128, 127, 1.0)
        name = "fake_quant_learnable_per_channel_backward"
    else:
        op = ops.fake_quant_learnable_per_tensor_backward
        args = (x, x, torch.ones(1, device=device), torch.zeros(1, device=device), -128, 127, 1.0)
        name = "fake_quant_learnable_per_tensor_backward"
    with pytest.raises(RuntimeError, match=rf"fakequant.{name}: output_mask must hold 3 flags, one per output "
                                           rf"\(grad_input, grad_scale, grad_zero_point\), got {len(mask)}"):
        op(*args, mask)


# ---------------------------------------------------------------------------------------
# Misaligned tensors (a data pointer one byte past an element boundary): read correctly by every
# op (UBSan: misaligned loads in the kernels; now copied to aligned memory first), and state
# updated in place is rejected.


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_misaligned_inputs_give_the_aligned_result(dtype):
    x = (torch.randn(1037) * 3).to(dtype)
    xm = misaligned(x)
    scale, zp = torch.tensor([0.04]), torch.tensor([3], dtype=torch.int32)
    for a, b in zip(ops.fake_quant_per_tensor(x, scale, zp, -128, 127),
                    ops.fake_quant_per_tensor(xm, misaligned(scale), misaligned(zp), -128, 127)):
        assert bits_equal(a, b)
    x2, x2m = x.view(61, 17), xm.view(61, 17)
    cs, cz = torch.rand(17) * 0.05 + 0.01, torch.randint(-5, 5, (17,), dtype=torch.int32)
    for zero_point in (cz, cz.float()):
        for a, b in zip(ops.fake_quant_per_channel(x2, cs, zero_point, 1, -128, 127),
                        ops.fake_quant_per_channel(x2m, misaligned(cs), misaligned(zero_point), 1, -128, 127)):
            assert bits_equal(a, b)
    seed = torch.tensor([12345, 678], dtype=torch.int64)
    for a, b in zip(ops.fake_quant_per_tensor(x, scale, zp, -128, 127, "stochastic", seed),
                    ops.fake_quant_per_tensor(xm, scale, zp, -128, 127, "stochastic", misaligned(seed))):
        assert bits_equal(a, b)
    _, mask = ops.fake_quant_per_tensor(x, scale, zp, -128, 127)
    g = torch.randn(1037).to(dtype)
    assert bits_equal(ops.fake_quant_mask_backward(g, mask), ops.fake_quant_mask_backward(misaligned(g), mask))
    assert bits_equal(ops.abs_max(x), ops.abs_max(xm))
    assert bits_equal(ops.abs_max(x2, 1), ops.abs_max(x2m, 1))
    for a, b in zip(ops.min_max(x2, 0), ops.min_max(x2m, 0)):
        assert bits_equal(a, b)
    for a, b in zip(ops.fake_quant_weight_abs_max(x2, 1, -127, 127), ops.fake_quant_weight_abs_max(x2m, 1, -127, 127)):
        assert bits_equal(a, b)
    ls, lz = torch.tensor([0.03]), torch.tensor([1.4])
    assert bits_equal(ops.fake_quant_learnable_per_tensor(x, ls, lz, -128, 127),
                      ops.fake_quant_learnable_per_tensor(xm, misaligned(ls), misaligned(lz), -128, 127))
    for mask3 in ([True, True, True], [True, False, False], [False, True, True]):
        for a, b in zip(ops.fake_quant_learnable_per_channel_backward(g.view(61, 17), x2, cs, cz.float(), 1, -128, 127,
                                                                      1.0, mask3),
                        ops.fake_quant_learnable_per_channel_backward(misaligned(g).view(61, 17), x2m, misaligned(cs),
                                                                      misaligned(cz.float()), 1, -128, 127, 1.0,
                                                                      mask3)):
            assert bits_equal(a, b)


def test_misaligned_observer_input_and_state():
    x = torch.randn(999) * 2
    state = [torch.tensor([0.5]), torch.tensor([1.5]), torch.tensor([0.75])]
    twin = [t.clone() for t in state]
    a = ops.fake_quant_moving_average_abs_max(x, *state, 0.9, 8, True, "half_away")
    b = ops.fake_quant_moving_average_abs_max(misaligned(x), *twin, 0.9, 8, True, "half_away")
    assert all(bits_equal(p, q) for p, q in zip(a, b)) and all(torch.equal(p, q) for p, q in zip(state, twin))
    bad = misaligned(torch.tensor([0.5]))
    with pytest.raises(RuntimeError, match=r"fake_quant_moving_average_abs_max: accum must be aligned to its element "
                                           r"size \(4 bytes; it is updated in place\)"):
        ops.fake_quant_moving_average_abs_max(x, state[0], state[1], bad, 0.9, 8, True, "half_away")
    with pytest.raises(RuntimeError, match=r"conv_bn_fake_quant: running_var must be aligned"):
        ops.conv_bn_fake_quant(**_convbn_forward_args(running_var=misaligned(torch.rand(4) + 0.5)))


@pytest.mark.parametrize("mode", ["batch", "running"])
def test_conv_bn_misaligned_weight_and_parameters(mode):
    base = _convbn_forward_args(fold_mode=mode, relu=True, bias=torch.randn(4))
    mis = dict(base)
    for name in ("input", "weight", "bias", "bn_weight", "bn_bias"):
        mis[name] = misaligned(base[name])
    mis["running_mean"], mis["running_var"] = base["running_mean"].clone(), base["running_var"].clone()
    for a, b in zip(ops.conv_bn_fake_quant(**base), ops.conv_bn_fake_quant(**mis)):
        assert bits_equal(a, b)
    assert torch.equal(base["running_mean"], mis["running_mean"]) and torch.equal(base["running_var"], mis["running_var"])
    # float64 parameters are read in place (no conversion copy) by the channel kernel.
    base64 = dict(base, bn_weight=base["bn_weight"].double(), bn_bias=base["bn_bias"].double())
    mis64 = dict(base64, bn_weight=misaligned(base64["bn_weight"]), bn_bias=misaligned(base64["bn_bias"]),
                 running_mean=base["running_mean"].clone(), running_var=base["running_var"].clone())
    base64["running_mean"], base64["running_var"] = base["running_mean"].clone(), base["running_var"].clone()
    for a, b in zip(ops.conv_bn_fake_quant(**base64), ops.conv_bn_fake_quant(**mis64)):
        assert bits_equal(a, b)


# ---------------------------------------------------------------------------------------
# Undefined behaviour found by UBSan, with defined results now.


def test_range_abs_max_iter_does_not_overflow():
    # iter + 1 overflowed at 2^63 - 1. From window_size steps on only iter % window_size (the
    # slot) and min(iter, window_size) are read, so the counter continues as
    # window_size + (iter + 1) % window_size: the same slots in the same order.
    big = 2**63 - 1
    window_size = 5
    for start in (big - 7, big):
        it, twin_it = torch.tensor([start]), torch.tensor([start % window_size + window_size])
        window = torch.rand(window_size) + 0.5
        scale = window.max().reshape(1).clone()
        twin = (scale.clone(), window.clone(), twin_it)
        for step in range(9):
            x = torch.randn(200) * float(torch.empty(()).uniform_(0.3, 3.0))
            got = ops.fake_quant_range_abs_max(x, scale, window, it, 8, True, "half_away")
            want = ops.fake_quant_range_abs_max(x, *twin, 8, True, "half_away")
            assert all(torch.equal(a, b) for a, b in zip(got, want))
            assert torch.equal(scale, twin[0]) and torch.equal(window, twin[1])
            assert it.item() >= 0 and it.item() % window_size == twin_it.item() % window_size
    assert it.item() == window_size + (big + 1) % window_size + 8  # wrapped at the first step, then counted on


@pytest.mark.parametrize("axis", [None, 0, 1])
@pytest.mark.parametrize("mask3", [[True, False, False], [False, True, False], [False, False, True]])
def test_learnable_backward_partial_output_mask_matches_full(axis, mask3):
    # With no qparam gradient requested the CPU backward offset a null partial-sum pointer by the
    # channel index (UBSan: applying non-zero offset to null pointer). Each requested output
    # equals the full backward's, the others are empty.
    x = torch.randn(7, 33) * 2
    g = torch.randn(7, 33)
    if axis is not None:
        C = x.shape[axis]
        s, z = torch.rand(C) * 0.05 + 0.01, torch.randn(C) * 3
        run = lambda m: ops.fake_quant_learnable_per_channel_backward(g, x, s, z, axis, -128, 127, 1.0, m)  # noqa: E731
    else:
        s, z = torch.tensor([0.03]), torch.tensor([1.3])
        run = lambda m: ops.fake_quant_learnable_per_tensor_backward(g, x, s, z, -128, 127, 1.0, m)  # noqa: E731
    full = run([True, True, True])
    part = run(mask3)
    for want, got, on in zip(full, part, mask3):
        assert bits_equal(want, got) if on else got.numel() == 0


# ---------------------------------------------------------------------------------------
# Signed zeros.


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("axis", [0, 1])
def test_per_channel_float_zero_point_gives_positive_zero_as_aten(device, axis):
    # ATen rounds to an integer type, which has no -0: x in (-scale/2, 0) with a zero point of
    # +0.0 gives +0 there (fakequant gave -0, where the docs promise bit-exact).
    x = (torch.randn(64, 16, device=device) * 0.05)
    x[::3] = -torch.rand_like(x[::3]) * 0.004  # rounds to the level 0 from below
    C = x.shape[axis]
    scale = torch.rand(C, device=device) * 0.02 + 0.01
    zero_point = torch.zeros(C, device=device)
    zero_point[1::2] = torch.randint(-3, 4, (C // 2,), device=device).float()
    got = fakequant.fake_quantize_per_channel(x, scale, zero_point, axis, -128, 127)
    want = torch.fake_quantize_per_channel_affine(x.cpu(), scale.cpu(), zero_point.cpu(), axis, -128, 127)
    assert bits_equal(got.cpu(), want)
    assert (got == 0).any() and not torch.signbit(got[got == 0]).any()
    ref, _ = fake_quant_per_channel_formula(x.cpu(), scale.cpu(), zero_point.cpu(), axis, -128, 127)
    assert torch.equal(got.cpu(), ref)


@pytest.mark.parametrize("device", DEVICES)
def test_zero_reductions_are_positive_zero(device):
    for sign in (1.0, -1.0):
        z = torch.zeros(4, 6, device=device) * sign
        for r in (ops.abs_max(z), ops.abs_max(z, 0), *ops.min_max(z), *ops.min_max(z, 1)):
            assert torch.equal(r, torch.zeros_like(r)) and not torch.signbit(r).any()


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_reduction_axis_out_of_range_names_the_op_and_axis(device):
    # The fake kernel used to say only "axis must lie in ..." (the real kernel names the op).
    x = torch.randn(4, 5, device=device)
    for op, name in ((ops.abs_max, "abs_max"), (ops.min_max, "min_max")):
        with pytest.raises(RuntimeError, match=rf"fakequant.{name}: axis must lie in \[-2, 1\] for a 2-d input, got 3"):
            op(x, 3)
