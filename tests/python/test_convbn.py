"""fakequant.conv_bn_fake_quant against the float64 reference composed from ATen ops
(reference.conv_bn_reference), torch.ao's ConvBn2d / ConvBnReLU2d, nn.BatchNorm2d's running
statistics and the folded-weight convolution; opcheck, torch.compile, bad input.

Gradients are compared in float64 (the op accepts float64: convolutions in float64, fold and
statistics in double, only Q rounds the fold to float32), where the op and the reference differ
by rounding alone (~1e-15 relative). float32 / 16-bit runs are compared with the float64
reference evaluated with the op's own fold scale (channel_state row 3), so that both quantise
the same float32 fold; the tolerance is that of the dtype's convolution.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fakequant
from conftest import DEVICES, HAS_CUDA
from reference import conv_bn_reference, unpack_mask

OP = torch.ops.fakequant.conv_bn_fake_quant
BACKWARD_OP = torch.ops.fakequant.conv_bn_fake_quant_backward
EPS32 = torch.finfo(torch.float32).eps

try:
    import torch.ao.nn.intrinsic.qat as nniqat
    from torch.ao.quantization import FakeQuantize, PerChannelMinMaxObserver, QConfig
except ImportError:  # torch.ao's legacy quantization stack is being retired
    nniqat = None

# (in, out, kernel, stride, padding, dilation, groups, spatial): plain 3x3, strided + dilated,
# grouped, depthwise, 1x1, non-square padding/stride.
CONVS = [
    (4, 6, 3, 1, 1, 1, 1, 7),
    (4, 6, 3, 2, 2, 2, 1, 9),
    (6, 4, 3, 1, 1, 1, 2, 6),
    (5, 5, 3, 1, 1, 1, 5, 8),
    (8, 12, 1, 1, 0, 1, 1, 5),
    (3, 4, (3, 1), (2, 1), (1, 0), 1, 1, 7),
]
# (mode, training): the three expressions.
MODES = [("batch", True), ("running", True), ("batch", False), ("running", False)]


def make_case(conv, dtype=torch.float64, device="cpu", bias=True, batch=3, channels_last=False, gamma_zero=False):
    cin, cout, k, stride, padding, dilation, groups, hw = conv
    kh, kw = (k, k) if isinstance(k, int) else k
    x = torch.randn(batch, cin, hw, hw + 1, dtype=torch.float64, device=device) * 1.5 + 0.3
    w = torch.randn(cout, cin // groups, kh, kw, dtype=torch.float64, device=device)
    w = w * torch.rand(cout, 1, 1, 1, dtype=torch.float64, device=device).add(0.2)
    b = torch.randn(cout, dtype=torch.float64, device=device) if bias else None
    gamma = torch.rand(cout, dtype=torch.float64, device=device) + 0.5
    gamma[::3] *= -1
    if gamma_zero:
        gamma[1] = 0.0
    beta = torch.randn(cout, dtype=torch.float64, device=device)
    rm = torch.randn(cout, device=device) * 0.2
    rv = torch.rand(cout, device=device) * 2 + 0.5
    x = x.to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return x, w.to(dtype), b if b is None else b.to(dtype), gamma.to(dtype), beta.to(dtype), rm, rv, kwargs


def leaves(*ts):
    return [t.detach().clone().requires_grad_() if t is not None else None for t in ts]


def grads_of(y, inputs, gy):
    present = [t for t in inputs if t is not None]
    got = torch.autograd.grad(y, present, gy)
    it = iter(got)
    return [next(it) if t is not None else None for t in inputs]


# ---------------------------------------------------------------------------------------
# float64: values, running statistics and every gradient vs the reference


@pytest.mark.parametrize("conv", CONVS, ids=lambda c: f"c{c[0]}-{c[1]}k{c[2]}s{c[3]}p{c[4]}d{c[5]}g{c[6]}")
@pytest.mark.parametrize("mode,training", MODES)
@pytest.mark.parametrize("relu", [False, True])
def test_float64_values_stats_and_gradients(conv, mode, training, relu):
    x, w, b, gamma, beta, rm, rv, kw = make_case(conv)
    for bias in (b, None):
        args = leaves(x, w, bias, gamma, beta)
        ref_args = leaves(x, w, bias, gamma, beta)
        rm_op, rv_op = rm.clone(), rv.clone()
        y = fakequant.conv_bn_fake_quant(*args, rm_op, rv_op, fold_mode=mode, training=training, relu=relu, **kw)
        yr, rm_ref, rv_ref = conv_bn_reference(*ref_args, rm, rv, mode=mode, training=training, relu=relu, **kw)
        assert y.dtype == torch.float64 and y.shape == yr.shape
        torch.testing.assert_close(y, yr, rtol=1e-12, atol=1e-12)
        # float32 buffers updated in double and rounded once (the reference keeps float64).
        torch.testing.assert_close(rm_op, rm_ref.float(), rtol=2e-7, atol=1e-7)
        torch.testing.assert_close(rv_op, rv_ref.float(), rtol=2e-7, atol=1e-7)
        if not training:
            assert torch.equal(rm_op, rm) and torch.equal(rv_op, rv)
        gy = torch.randn_like(y)
        got = grads_of(y, args, gy)
        want = grads_of(yr, ref_args, gy)
        for name, g, r in zip(("input", "weight", "bias", "bn_weight", "bn_bias"), got, want):
            if r is None:
                continue
            scale = max(r.abs().max().item(), 1.0)
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10 * scale, msg=lambda m, n=name: f"grad {n}: {m}")


@pytest.mark.parametrize("mode,training", MODES)
def test_float64_channels_last_and_unquantized(mode, training):
    x, w, b, gamma, beta, rm, rv, kw = make_case(CONVS[0], channels_last=True)
    for quantize_weight in (True, False):
        args = leaves(x, w, b, gamma, beta)
        ref_args = leaves(x, w, b, gamma, beta)
        y = fakequant.conv_bn_fake_quant(*args, rm.clone(), rv.clone(), fold_mode=mode, training=training, relu=True,
                                         quantize_weight=quantize_weight, quant_min=-127, quant_max=127,
                                         rounding="half_away", **kw)
        yr, _, _ = conv_bn_reference(*ref_args, rm, rv, mode=mode, training=training, relu=True,
                                     quantize_weight=quantize_weight, quant_min=-127, quant_max=127,
                                     rounding="half_away", **kw)
        assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
        torch.testing.assert_close(y, yr, rtol=1e-12, atol=1e-12)
        gy = torch.randn_like(y)
        got = grads_of(y, args, gy)
        for g, r in zip(got, grads_of(yr, ref_args, gy)):
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10 * max(r.abs().max().item(), 1.0))
        assert got[0].is_contiguous(memory_format=torch.channels_last)


def test_gradcheck_eval_and_running():
    # Finite differences through a piecewise-constant Q only work where no weight crosses a
    # quantisation level: without Q here (the STE makes Q the identity in the gradient).
    x, w, b, gamma, beta, rm, rv, kw = make_case((2, 3, 3, 1, 1, 1, 1, 4), batch=2)
    for mode, training in MODES:
        def f(*t):
            return fakequant.conv_bn_fake_quant(*t, rm.clone(), rv.clone(), fold_mode=mode, training=training,
                                                relu=False, quantize_weight=False, **kw)
        if mode == "batch" and training:
            continue  # the fused value is not the function the gradient differentiates (by design)
        assert torch.autograd.gradcheck(f, tuple(leaves(x, w, b, gamma, beta)))


# ---------------------------------------------------------------------------------------
# float32 / float16 / bfloat16 against the float64 reference with the op's fold scale


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 4e-2), (torch.float16, 5e-3)])
@pytest.mark.parametrize("mode,training", MODES)
@pytest.mark.parametrize("conv", [CONVS[0], CONVS[3], CONVS[1]], ids=["plain", "depthwise", "strided"])
def test_low_precision_values(device, dtype, tol, mode, training, conv):
    if device == "cpu" and dtype == torch.float16:
        tol = 1e-2
    x, w, b, gamma, beta, rm, rv, kw = make_case(conv, dtype=torch.float64, device=device, channels_last=False)
    xl = x.to(dtype)
    # 16-bit inputs with float32 parameters (autocast-style) and with 16-bit weights.
    for wdtype in ({torch.float32, dtype} if dtype != torch.float32 else {torch.float32}):
        rm_op, rv_op = rm.clone(), rv.clone()
        out, pre_bn, weight_q, weight_mask, relu_mask, state = OP(
            xl, w.to(wdtype), b.float(), gamma.float(), beta.float(), rm_op, rv_op, [kw["stride"]] * 2,
            [kw["padding"]] * 2, [kw["dilation"]] * 2, kw["groups"], 1e-5, 0.1, mode, training, True, True, -128, 127,
            "half_even", EPS32)
        assert out.dtype == dtype and weight_q.dtype == dtype
        s = state[3]
        # The quantised fold is exactly fake_quantize_weight_abs_max of the float32 fold.
        fold = w.to(wdtype).float() * s.float().reshape(-1, 1, 1, 1)
        wq, _ = fakequant.fake_quantize_weight_abs_max(fold, 0, -128, 127)
        assert torch.equal(weight_q, wq.to(dtype))
        yr, rm_ref, rv_ref = conv_bn_reference(
            xl.double(), w.to(wdtype).double(), b.float().double(), gamma.float().double(), beta.float().double(),
            rm, rv, mode=mode, training=training, relu=True, fold_scale=s, weight_dtype=wdtype, **kw)
        scale = yr.abs().max().item()
        torch.testing.assert_close(out.double(), yr, rtol=tol, atol=tol * scale)
        if training:
            torch.testing.assert_close(rm_op.double(), rm_ref, rtol=tol, atol=tol)
            torch.testing.assert_close(rv_op.double(), rv_ref, rtol=tol, atol=tol)
        # The 1-bit ReLU mask is the sign of the output.
        assert torch.equal(unpack_mask(relu_mask, out), out > 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode,training", MODES)
def test_float32_gradients_close_to_float64(device, mode, training):
    x, w, b, gamma, beta, rm, rv, kw = make_case(CONVS[2], device=device)
    a64 = leaves(x, w, b, gamma, beta)
    a32 = leaves(*(t.float() for t in (x, w, b, gamma, beta)))
    y64 = fakequant.conv_bn_fake_quant(*a64, rm.clone(), rv.clone(), fold_mode=mode, training=training, relu=True,
                                       quantize_weight=False, **kw)
    y32 = fakequant.conv_bn_fake_quant(*a32, rm.clone(), rv.clone(), fold_mode=mode, training=training, relu=True,
                                       quantize_weight=False, **kw)
    gy = torch.randn_like(y64)
    for g32, g64 in zip(grads_of(y32, a32, gy.float()), grads_of(y64, a64, gy)):
        assert g32.dtype == torch.float32
        torch.testing.assert_close(g32.double(), g64, rtol=1e-4, atol=1e-4 * max(g64.abs().max().item(), 1.0))


def test_autocast_bfloat16_cpu():
    x, w, b, gamma, beta, rm, rv, kw = make_case(CONVS[0], dtype=torch.float32)
    args = leaves(x, w, b, gamma, beta)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fakequant.conv_bn_fake_quant(*args, rm.clone(), rv.clone(), fold_mode="running", relu=True, **kw)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.float32 and torch.isfinite(t.grad).all() for t in args)


# ---------------------------------------------------------------------------------------
# torch.ao, nn.BatchNorm2d, eval = conv with the folded quantised weight


def _ao_qconfig():
    weight_fq = FakeQuantize.with_args(observer=PerChannelMinMaxObserver, quant_min=-128, quant_max=127,
                                       dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    return QConfig(activation=torch.nn.Identity, weight=weight_fq)


@pytest.mark.skipif(nniqat is None, reason="torch.ao.nn.intrinsic.qat is not available")
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_running_mode_matches_torch_ao(relu, bias):
    # torch.ao folds with s = gamma / sqrt(running_var + eps) in float32, the op in double
    # rounded to float32: where the two differ in the last bit, a folded weight can land one
    # quantisation level apart, and the gradient of a BN-normalised convolution (nearly
    # orthogonal to the weight) is sensitive to that. So the first step uses a running variance
    # with sqrt(running_var + eps) a power of two (eps = 2^-16): both folds are then exact and
    # equal, and values and gradients must agree to float32 rounding. Later steps (running
    # statistics moved) compare values and running statistics to the tolerance of a few
    # weights one level apart.
    eps = 2.0 ** -16
    cls = nniqat.ConvBnReLU2d if relu else nniqat.ConvBn2d
    ao = cls(6, 8, 3, stride=1, padding=1, bias=bias, eps=eps, momentum=0.1, qconfig=_ao_qconfig())
    with torch.no_grad():
        ao.bn.weight.uniform_(0.5, 1.5)
        ao.bn.bias.normal_()
        ao.bn.running_mean.normal_().mul_(0.2)
        ao.bn.running_var.copy_(torch.tensor([0.25, 1.0, 4.0, 16.0] * 2) - eps)
    params = [p.detach().clone().requires_grad_() for p in (ao.weight, ao.bn.weight, ao.bn.bias)]
    conv_bias = ao.bias.detach().clone().requires_grad_() if bias else None
    rm, rv = ao.bn.running_mean.clone(), ao.bn.running_var.clone()
    for step in range(3):
        # PerChannelMinMaxObserver keeps the extremes of every call; the op quantises the current
        # fold: reset the observer so that both see this step's fold alone (docs/convbn.md).
        ao.weight_fake_quant.activation_post_process.reset_min_max_vals()
        x = torch.randn(4, 6, 9, 9)
        y_ao = ao(x)
        y = fakequant.conv_bn_fake_quant(x, params[0], conv_bias, params[1], params[2], rm, rv, padding=1, eps=eps,
                                         fold_mode="running", relu=relu)
        scale = y_ao.abs().max().item()
        if step == 0:
            torch.testing.assert_close(y, y_ao, rtol=1e-4, atol=1e-5 * scale)
            gy = torch.randn_like(y)
            got = torch.autograd.grad(y, params, gy)
            want = torch.autograd.grad(y_ao, (ao.weight, ao.bn.weight, ao.bn.bias), gy)
            for g, r in zip(got, want):
                torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-4 * r.abs().max().item())
            torch.testing.assert_close(rm, ao.bn.running_mean, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(rv, ao.bn.running_var, rtol=1e-5, atol=1e-6)
        else:
            torch.testing.assert_close(y, y_ao, rtol=1e-2, atol=2e-2 * scale)
            assert (y - y_ao).abs().mean() < 1e-3 * scale
            torch.testing.assert_close(rm, ao.bn.running_mean, rtol=1e-3, atol=1e-4)
            torch.testing.assert_close(rv, ao.bn.running_var, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("bias", [False, True])
def test_batch_mode_running_stats_match_batchnorm(bias):
    x, w, b, gamma, beta, rm, rv, kw = make_case(CONVS[1], dtype=torch.float32, bias=bias)
    bn = torch.nn.BatchNorm2d(w.shape[0], momentum=0.1)
    with torch.no_grad():
        bn.running_mean.copy_(rm)
        bn.running_var.copy_(rv)
    for _ in range(4):
        x = torch.randn_like(x) * 2 + 1
        fakequant.conv_bn_fake_quant(x, w, b, gamma, beta, rm, rv, **kw)
        bn(F.conv2d(x, w, b, **kw))  # BatchNorm2d sees conv(x, W) + bias
        torch.testing.assert_close(rm, bn.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(rv, bn.running_var, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["batch", "running"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_eval_equals_conv_with_folded_quantized_weight(mode, channels_last):
    x, w, b, gamma, beta, rm, rv, kw = make_case(CONVS[2], dtype=torch.float32, channels_last=channels_last)
    rm0, rv0 = rm.clone(), rv.clone()
    y = fakequant.conv_bn_fake_quant(x, w, b, gamma, beta, rm, rv, fold_mode=mode, training=False, **kw)
    assert torch.equal(rm, rm0) and torch.equal(rv, rv0)
    s = gamma.double() / torch.sqrt(rv.double() + 1e-5)
    wq, _ = fakequant.fake_quantize_weight_abs_max(w * s.float().reshape(-1, 1, 1, 1), 0, -128, 127)
    shift = (beta.double() + s * (b.double() - rm.double())).float()
    expected = F.conv2d(x, wq, None, **kw) + shift.reshape(1, -1, 1, 1)
    # One convolution of the quantised fold (the same ATen call) plus a per-channel shift.
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------
# gamma = 0 and tiny variance: no NaN


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode,training", MODES)
def test_zero_gamma_and_tiny_variance_no_nan(device, mode, training):
    x, w, b, gamma, beta, rm, rv, kw = make_case(CONVS[0], dtype=torch.float32, device=device, gamma_zero=True)
    x = x.clone()
    x[:, :, :, :] = x[:, :, :1, :1]  # constant maps: conv output nearly constant per channel
    rv[2] = 0.0  # zero running variance
    gamma[3] = 1e-30
    args = leaves(x, w, b, gamma, beta)
    y = fakequant.conv_bn_fake_quant(*args, rm, rv, fold_mode=mode, training=training, relu=True, **kw)
    assert torch.isfinite(y).all()
    y.sum().backward()
    for t in args:
        assert torch.isfinite(t.grad).all()
    assert torch.isfinite(rm).all() and torch.isfinite(rv).all()
    if mode == "running" and training:
        # The gamma = 0 channel outputs relu(beta).
        torch.testing.assert_close(y[:, 1], torch.relu(beta[1]).expand_as(y[:, 1]).detach())


@pytest.mark.skipif(nniqat is None, reason="torch.ao.nn.intrinsic.qat is not available")
def test_torch_ao_gives_nan_for_zero_gamma():
    ao = nniqat.ConvBn2d(4, 6, 3, padding=1, qconfig=_ao_qconfig())
    with torch.no_grad():
        ao.bn.weight[1] = 0.0
    y = ao(torch.randn(2, 4, 7, 7))
    assert torch.isnan(y[:, 1]).all()  # pytorch#77434; ours: beta (test above)


# ---------------------------------------------------------------------------------------
# opcheck, Meta, torch.compile, bad input


def _op_args(device="cpu", mode="batch", training=True, relu=True, quantize_weight=True, channels_last=False):
    x, w, b, gamma, beta, rm, rv, kw = make_case(CONVS[1], dtype=torch.float32, device=device,
                                                 channels_last=channels_last)
    return (x, w, b, gamma, beta, rm, rv, [kw["stride"]] * 2, [kw["padding"]] * 2, [kw["dilation"]] * 2,
            kw["groups"], 1e-5, 0.1, mode, training, relu, quantize_weight, -128, 127, "half_even", EPS32)


def _bad(**changes):
    return changes


BAD_CASES = [
    (dict(fold_mode="folded"), "fold_mode must be 'batch' or 'running', got 'folded'"),
    (dict(rounding="stochastic"), "rounding must be one of 'half_even', 'half_away', got 'stochastic'"),
    (dict(quant_min=-100, quant_max=127), "symmetric signed range"),
    (dict(eps=0.0), "eps must be finite and > 0"),
    (dict(weight_eps=0.0), "weight_eps must be finite"),
    (dict(input=lambda a: a[0].int()), "input must be float32, float16, bfloat16 or float64"),
    (dict(input=lambda a: a[0][0]), "input must be a 4-d NCHW tensor"),
    (dict(weight=lambda a: a[1].double()), "weight must have input's dtype"),
    (dict(weight=lambda a: a[1][:, :2]), "but weight expects in_channels"),
    (dict(bn_weight=lambda a: a[3][:3]), "bn_weight must have shape"),
    (dict(bias=lambda a: a[2][None]), "bias must have shape"),
    (dict(running_var=lambda a: a[6].double()), "running_var must be a float32 tensor"),
    (dict(running_mean=lambda a: torch.zeros(2 * a[5].numel())[::2]), "running_mean must be contiguous"),
    (dict(stride=[0, 1]), "stride must be >= 1"),
    (dict(padding=[-1, 0]), "padding must be >= 0"),
    (dict(groups=4), "must be divisible by groups"),
    (dict(input=lambda a: a[0][:1, :, :1, :1], padding=[0, 0], dilation=[1, 1], stride=[1, 1],
          weight=lambda a: a[1][:, :, :1, :1]), "expected more than 1 value per channel when training"),
]
NAMES = ["input", "weight", "bias", "bn_weight", "bn_bias", "running_mean", "running_var", "stride", "padding",
         "dilation", "groups", "eps", "momentum", "fold_mode", "training", "relu", "quantize_weight", "quant_min",
         "quant_max", "rounding", "weight_eps"]


@pytest.mark.parametrize("changes,message", BAD_CASES, ids=[m[:30] for _, m in BAD_CASES])
def test_bad_input(changes, message):
    args = list(_op_args())
    original = list(args)
    for name, value in changes.items():
        args[NAMES.index(name)] = value(original) if callable(value) else value
    rm0, rv0 = args[5].clone(), args[6].clone()
    with pytest.raises(RuntimeError, match=message.replace("(", r"\(").replace("[", r"\[")):
        OP(*args)
    # Rejected calls leave the running statistics alone.
    assert torch.equal(args[5], rm0) and torch.equal(args[6], rv0)
    with pytest.raises(RuntimeError, match="fakequant.conv_bn_fake_quant"):
        OP(*args)


def test_python_api_defaults_and_export():
    assert "conv_bn_fake_quant" in fakequant.__all__
    x, w, b, gamma, beta, rm, rv, kw = make_case(CONVS[0], dtype=torch.float32)
    y = fakequant.conv_bn_fake_quant(x, w, b, gamma, beta, rm.clone(), rv.clone(), padding=1)
    out = OP(x, w, b, gamma, beta, rm.clone(), rv.clone(), [1, 1], [1, 1], [1, 1], 1, 1e-5, 0.1, "batch", True,
             False, True, -128, 127, "half_even", EPS32)
    assert torch.equal(y, out[0])


# ---------------------------------------------------------------------------------------
# CUDA: CPU reference vs GPU, no host synchronisation, CUDA graphs (skip without a GPU)


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("mode,training", MODES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_matches_cpu(mode, training, channels_last):
    args = _op_args("cpu", mode, training, channels_last=channels_last)
    cuda_args = [a.cuda() if isinstance(a, torch.Tensor) else a for a in args]
    cpu = OP(*args)
    gpu = OP(*cuda_args)
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=1e-4, atol=1e-4 * cpu[0].abs().max().item())
    torch.testing.assert_close(gpu[5].cpu(), cpu[5], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cuda_args[5].cpu(), args[5], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cuda_args[6].cpu(), args[6], rtol=1e-5, atol=1e-6)


def test_mode_is_the_former_name_of_fold_mode():
    """fold_mode is the name everywhere (schema, QAT modules, Python API); mode= still works,
    with a FutureWarning, and gives the same result; two different values are refused."""
    torch.manual_seed(4)
    x, w, b = torch.randn(2, 3, 6, 6), torch.randn(4, 3, 3, 3), torch.randn(4)
    gamma, beta = torch.rand(4) + 0.5, torch.randn(4)
    rm1, rv1, rm2, rv2 = torch.zeros(4), torch.ones(4), torch.zeros(4), torch.ones(4)
    y1 = fakequant.conv_bn_fake_quant(x, w, b, gamma, beta, rm1, rv1, fold_mode="running")
    with pytest.warns(FutureWarning, match="mode= is now fold_mode="):
        y2 = fakequant.conv_bn_fake_quant(x, w, b, gamma, beta, rm2, rv2, mode="running")
    assert torch.equal(y1, y2) and torch.equal(rm1, rm2) and torch.equal(rv1, rv2)
    with pytest.raises(TypeError, match="got fold_mode='running' and mode='batch'"), pytest.warns(FutureWarning):
        fakequant.conv_bn_fake_quant(x, w, b, gamma, beta, rm2, rv2, fold_mode="running", mode="batch")
