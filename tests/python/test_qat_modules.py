"""fakequant.nn.qat drop-ins against torch.ao's QAT modules and formulas; fuse_conv_bn."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fakequant
from fakequant.nn import qat
from qat_helpers import HAS_AO, ConvBnStart, ao_qconfig, aq, needs_ao, nni, nniqat, nnqat, randomize_bn

CONV_CASES = [
    dict(in_channels=6, out_channels=8, kernel_size=3, padding=1, bias=True),
    dict(in_channels=6, out_channels=8, kernel_size=3, stride=2, padding=1, dilation=1, bias=False),
    dict(in_channels=8, out_channels=8, kernel_size=3, padding=2, dilation=2, groups=8, bias=True),
    dict(in_channels=6, out_channels=12, kernel_size=1, groups=3, bias=False),
]


@needs_ao
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("case", CONV_CASES)
def test_convbn_running_mode_equals_torch_ao(case, relu):
    gen = torch.Generator().manual_seed(1)
    ours_cls, ao_cls = (qat.ConvBnReLU2d, nniqat.ConvBnReLU2d) if relu else (qat.ConvBn2d, nniqat.ConvBn2d)
    ao = ao_cls(**case, qconfig=ao_qconfig())
    randomize_bn(ao.bn, gen)
    ours = ours_cls(**case, qconfig=ao_qconfig())
    ours.load_state_dict(ao.state_dict())  # same parameter and buffer names
    for _ in range(3):
        x = torch.randn(4, case["in_channels"], 9, 9, generator=gen)
        xa, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yo = ao(xa), ours(xo)
        torch.testing.assert_close(yo, ya, rtol=0, atol=0)
        g = torch.randn(ya.shape, generator=gen)
        ya.backward(g)
        yo.backward(g)
        torch.testing.assert_close(xo.grad, xa.grad)
        for name, p in ours.named_parameters():
            torch.testing.assert_close(p.grad, ao.get_parameter(name).grad, msg=name)
        torch.testing.assert_close(ours.bn.running_mean, ao.bn.running_mean, rtol=0, atol=0)
        torch.testing.assert_close(ours.bn.running_var, ao.bn.running_var, rtol=0, atol=0)
    ao.eval()
    ours.eval()
    x = torch.randn(2, case["in_channels"], 9, 9, generator=gen)
    y = ours(x)
    # eval folds with the op's arithmetic (s in float64, docs/convbn.md): exactly conv with the
    # folded quantized weight; torch.ao folds in float32, so a weight at a rounding boundary
    # may land one quantization level apart there
    w, b = ours.eval_folded_weight_and_bias()
    expected = F.conv2d(x, ours.weight_fake_quant(w), b, ours.stride, ours.padding, ours.dilation, ours.groups)
    torch.testing.assert_close(y, F.relu(expected) if relu else expected, rtol=1e-6, atol=1e-6)
    y_ao = ao(x)
    assert (y - y_ao).abs().max() <= 0.05 * y_ao.abs().max()


def symmetric_scale(w, qmin, qmax):
    return torch.clamp(w.abs().amax(dim=(1, 2, 3)) / ((qmax - qmin) / 2), min=torch.finfo(torch.float32).eps)


class FormulaWeightFakeQuant(nn.Module):
    """Per-output-channel symmetric fake quantization written out (any float dtype), clipped STE."""

    quant_min, quant_max, ch_axis = -128, 127, 0

    def forward(self, w):
        self.scale = symmetric_scale(w.detach(), self.quant_min, self.quant_max).reshape(-1, 1, 1, 1)
        q = torch.round(w.detach() * (1.0 / self.scale))
        mask = ((q >= self.quant_min) & (q <= self.quant_max)).to(w.dtype)
        wq = torch.clamp(q, self.quant_min, self.quant_max) * self.scale
        return w * mask + (wq - w * mask).detach()

    def calculate_qparams(self):
        return self.scale.reshape(-1), torch.zeros(self.scale.numel(), dtype=torch.int32)


def unfused_batch_reference(x, w, b, gamma, beta, eps, qmin, qmax):
    """float64: value of the BN-folded conv with batch statistics; gradient of conv -> BN_train
    with the weight-quant STE mask (the formula of docs/convbn.md, written out)."""
    z0 = F.conv2d(x, w).detach()
    mean = z0.mean(dim=(0, 2, 3))
    var = z0.var(dim=(0, 2, 3), unbiased=False)
    sigma = torch.sqrt(var + eps)
    folded = w.detach() * (gamma.detach() / sigma).reshape(-1, 1, 1, 1)
    scale = symmetric_scale(folded, qmin, qmax).reshape(-1, 1, 1, 1)
    q = torch.round(folded * (1.0 / scale))
    mask = ((q >= qmin) & (q <= qmax)).to(w.dtype)
    wq = torch.clamp(q, qmin, qmax) * scale
    fused = F.conv2d(x.detach(), wq) + (beta.detach() - gamma.detach() * mean / sigma).reshape(1, -1, 1, 1)
    w_ste = w * mask + (w * (1 - mask)).detach()  # value w, gradient masked
    z = F.conv2d(x, w_ste) + (b.reshape(1, -1, 1, 1) if b is not None else 0)
    zm = z.mean(dim=(0, 2, 3), keepdim=True)
    zv = ((z - zm) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    unfused = gamma.reshape(1, -1, 1, 1) * (z - zm) / torch.sqrt(zv + eps) + beta.reshape(1, -1, 1, 1)
    return unfused + (fused - unfused).detach()


@pytest.mark.parametrize("bias", [False, True])
def test_convbn_batch_mode_composite_matches_formula(bias):
    """The composed path (any weight fake-quantizer) against the formula, in float64."""
    gen = torch.Generator().manual_seed(2)
    qconfig = qat.QConfig(activation=None, weight=FormulaWeightFakeQuant)
    m = qat.ConvBn2d(5, 7, 3, bias=bias, qconfig=qconfig, fold_mode="batch").double()
    randomize_bn(m.bn, gen)
    x = torch.randn(3, 5, 8, 8, generator=gen, dtype=torch.float64)
    ref_params = [p.detach().clone().requires_grad_() for p in (m.weight, m.bn.weight, m.bn.bias)]
    ref_b = m.bias.detach().clone().requires_grad_() if bias else None
    xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = m(xo)
    ref = unfused_batch_reference(xr, ref_params[0], ref_b, ref_params[1], ref_params[2], m.bn.eps, -128, 127)
    torch.testing.assert_close(y, ref)
    g = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    y.backward(g)
    ref.backward(g)
    torch.testing.assert_close(xo.grad, xr.grad)
    torch.testing.assert_close(m.weight.grad, ref_params[0].grad)
    torch.testing.assert_close(m.bn.weight.grad, ref_params[1].grad)
    torch.testing.assert_close(m.bn.bias.grad, ref_params[2].grad)
    if bias:
        torch.testing.assert_close(m.bias.grad, ref_b.grad, atol=1e-9, rtol=0)


@needs_ao
def test_convbn_batch_mode_running_stats_follow_batchnorm():
    """`batch` mode: BN statistics of conv(x, W) + b, as nn.BatchNorm2d after nn.Conv2d. (`running`
    mode takes them from its approximation, as torch.ao does: tested against torch.ao above.)"""
    gen = torch.Generator().manual_seed(3)
    m = qat.ConvBn2d(4, 6, 3, bias=True, qconfig=ao_qconfig(), fold_mode="batch", momentum=None)
    conv = nn.Conv2d(4, 6, 3, bias=True)
    bn = nn.BatchNorm2d(6, momentum=None)
    conv.load_state_dict({"weight": m.weight, "bias": m.bias})
    for _ in range(4):
        x = torch.randn(5, 4, 7, 7, generator=gen)
        m(x)
        with torch.no_grad():
            bn(conv(x))
    torch.testing.assert_close(m.bn.running_mean, bn.running_mean)
    torch.testing.assert_close(m.bn.running_var, bn.running_var)
    assert int(m.bn.num_batches_tracked) == 4


@needs_ao
@pytest.mark.parametrize("fold_mode", qat.FOLD_MODES)
def test_convbn_zero_gamma_gives_no_nan(fold_mode):
    gen = torch.Generator().manual_seed(4)
    ao = nniqat.ConvBn2d(4, 6, 3, qconfig=ao_qconfig())
    ours = qat.ConvBn2d(4, 6, 3, qconfig=ao_qconfig(), fold_mode=fold_mode)
    randomize_bn(ao.bn, gen)
    with torch.no_grad():
        ao.bn.weight[::2] = 0.0
    ours.load_state_dict(ao.state_dict())
    x = torch.randn(3, 4, 8, 8, generator=gen)
    assert torch.isnan(ao(x)).any()  # pytorch#77434
    xo = x.clone().requires_grad_()
    y = ours(xo)
    y.backward(torch.randn(y.shape, generator=gen))
    assert torch.isfinite(y).all() and torch.isfinite(xo.grad).all()
    for p in ours.parameters():
        assert torch.isfinite(p.grad).all()
    # gamma = 0: BN's output is beta in those channels
    beta = ours.bn.bias.detach()[::2].reshape(1, -1, 1, 1).expand_as(y[:, ::2])
    torch.testing.assert_close(y[:, ::2].detach(), beta)


@needs_ao
def test_convbn_freeze_bn_stats_folds_running_stats_and_trains():
    gen = torch.Generator().manual_seed(5)
    m = qat.ConvBnReLU2d(4, 6, 3, bias=True, qconfig=ao_qconfig(), fold_mode="batch")
    randomize_bn(m.bn, gen)
    m.apply(qat.freeze_bn_stats)
    assert m.freeze_bn and not m.bn.training
    m.train()
    assert not m.bn.training  # a frozen BN stays frozen under model.train()
    before = m.bn.running_mean.clone()
    x = torch.randn(3, 4, 8, 8, generator=gen)
    y = m(x)
    torch.testing.assert_close(m.bn.running_mean, before, rtol=0, atol=0)
    s = (m.bn.weight.double() / torch.sqrt(m.bn.running_var.double() + m.bn.eps)).detach()  # fold scale, float64
    wq = m.weight_fake_quant(m.weight.detach() * s.float().reshape(-1, 1, 1, 1))
    b = (m.bn.bias.double() + s * (m.bias.double() - m.bn.running_mean.double())).float()
    torch.testing.assert_close(y, F.relu(F.conv2d(x, wq) + b.detach().reshape(1, -1, 1, 1)))
    y.sum().backward()
    assert m.weight.grad.abs().sum() > 0 and m.bn.weight.grad.abs().sum() > 0
    m.apply(qat.update_bn_stats)
    assert m.bn.training


@needs_ao
def test_conv_and_linear_equal_torch_ao():
    gen = torch.Generator().manual_seed(6)
    for ours_cls, ao_cls, args, shape in [
        (qat.Conv2d, nnqat.Conv2d, (4, 6, 3), (2, 4, 8, 8)),
        (qat.Linear, nnqat.Linear, (10, 7), (5, 10)),
    ]:
        ao = ao_cls(*args, qconfig=ao_qconfig())
        ours = ours_cls(*args, qconfig=ao_qconfig())
        ours.load_state_dict(ao.state_dict())
        x = torch.randn(shape, generator=gen)
        torch.testing.assert_close(ours(x), ao(x), rtol=0, atol=0)
        assert isinstance(ours.to_float(), type(ao.to_float()))


@needs_ao
def test_prepare_qat_and_convert_with_mapping_arguments():
    """An existing torch.ao eager flow switches to our modules with mapping arguments only."""
    gen = torch.Generator().manual_seed(7)
    model = nn.Sequential(aq.QuantStub(), nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                          nn.Flatten(), nn.Linear(8 * 6 * 6, 5), aq.DeQuantStub())
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            randomize_bn(m, gen)
    model.train()
    fused = aq.fuse_modules_qat(model, [["1", "2", "3"], ["4", "5"]])
    fused.qconfig = aq.get_default_qat_qconfig("x86")
    ours = aq.prepare_qat(copy.deepcopy(fused), mapping=qat.get_qat_module_mappings())
    assert isinstance(ours[1], qat.ConvBnReLU2d) and isinstance(ours[4], qat.ConvBn2d)
    assert isinstance(ours[7], qat.Linear)
    reference = aq.prepare_qat(copy.deepcopy(fused))
    assert type(reference[1]) is nniqat.ConvBnReLU2d
    for _ in range(3):
        x = torch.randn(4, 3, 6, 6, generator=gen)
        torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=0)  # same math, same qconfig
    ours.eval()
    reference.eval()
    x = torch.randn(4, 3, 6, 6, generator=gen)
    y_qat = ours(x)
    torch.testing.assert_close(y_qat, reference(x), rtol=1e-5, atol=1e-5)
    assert isinstance(ours[1].to_float(), nni.ConvReLU2d)
    quantized = aq.convert(copy.deepcopy(ours), mapping=qat.get_quantized_module_mappings())
    assert "quantized" in type(quantized[1]).__module__ and type(quantized[1]).__name__ == "ConvReLU2d"
    assert "quantized" in type(quantized[4]).__module__
    y_q = quantized(x)
    y_ref = aq.convert(copy.deepcopy(reference))(x)
    # BN folded exactly as torch.ao folds its own module. How far the integer model lies from the
    # fake-quantized one is then torch.ao's own gap (its integer kernels against its fake quant,
    # rounding differences amplified layer by layer: from under one to tens of output steps,
    # depending on the random weights), so it is not bounded here.
    torch.testing.assert_close(y_q, y_ref)


def test_fold_mode_and_from_float_reject_bad_input():
    with pytest.raises(ValueError, match="fold_mode must be one of"):
        qat.ConvBn2d(3, 4, 3, qconfig=ao_qconfig() if HAS_AO else None, fold_mode="fused")
    with pytest.raises(TypeError, match="from_float takes a \\(Conv2d, BatchNorm2d"):
        qat.ConvBn2d.from_float(nn.Linear(3, 4))
    with pytest.raises(TypeError, match="from_float takes an nn.Conv2d"):
        qat.Conv2d.from_float(nn.Linear(3, 4))


# ---- offline conv + bn fusion ----

class Branchy(ConvBnStart):
    """Traces with torch.fx: conv->bn->relu, a residual add, a conv->bn without bias."""

    def __init__(self):
        super().__init__()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = x + self.bn2(self.conv2(x))
        return self.head(x.mean(dim=(2, 3)))


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return self.body(x)
        return self.body(-x)


def trained_like(model, gen):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            randomize_bn(m, gen)
    return model.eval()


@pytest.mark.parametrize("make", [Branchy, Untraceable])
def test_fuse_conv_bn_keeps_eval_outputs(make):
    gen = torch.Generator().manual_seed(8)
    model = trained_like(make(), gen)
    x = torch.randn(2, 3, 10, 10, generator=gen)
    fused = fakequant.fuse_conv_bn(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # not in place
    torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-5)
    for m in fused.modules():
        if isinstance(m, nn.Conv2d):
            assert m.bias is not None  # a bias-free conv gains the folded bias


def test_fuse_conv_bn_leaves_shared_outputs_alone():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # the conv output has a second user: folding would change it

    gen = torch.Generator().manual_seed(9)
    model = trained_like(Shared(), gen)
    fused = fakequant.fuse_conv_bn(model)
    assert isinstance(fused.bn, nn.BatchNorm2d)
    x = torch.randn(2, 3, 5, 5, generator=gen)
    torch.testing.assert_close(fused(x), model(x))
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        fakequant.fuse_conv_bn("model")


@pytest.mark.parametrize("fold_mode", qat.FOLD_MODES)
@pytest.mark.parametrize("relu", [False, True])
def test_convbn_runs_the_fused_op_with_our_weight_quantizer(fold_mode, relu, monkeypatch):
    """With AbsMaxWeightFakeQuantize(ch_axis=0) the module is a thin call of conv_bn_fake_quant."""
    gen = torch.Generator().manual_seed(10)
    qconfig = qat.QConfig(activation=None, weight=lambda: fakequant.nn.AbsMaxWeightFakeQuantize(
        quant_min=-127, quant_max=127, ch_axis=0, rounding="half_away"))
    cls = qat.ConvBnReLU2d if relu else qat.ConvBn2d
    m = cls(6, 8, 3, stride=2, padding=1, bias=True, qconfig=qconfig, fold_mode=fold_mode)
    randomize_bn(m.bn, gen)
    ref = copy.deepcopy(m)

    def composite_not_expected(*args):
        raise AssertionError("the composed path ran")

    monkeypatch.setattr(qat.ConvBn2d, "_forward_composite", composite_not_expected)
    for training in (True, False):
        m.train(training)
        x = torch.randn(3, 6, 9, 9, generator=gen)
        xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        y = m(xo)
        p = {n: t.detach().clone().requires_grad_() for n, t in ref.named_parameters()}
        y_ref = fakequant.conv_bn_fake_quant(
            xr, p["weight"], p["bias"], p["bn.weight"], p["bn.bias"], ref.bn.running_mean, ref.bn.running_var,
            stride=2, padding=1, eps=m.bn.eps, momentum=0.1, fold_mode=fold_mode, training=training, relu=relu,
            quant_min=-127, quant_max=127, rounding="half_away")
        torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
        torch.testing.assert_close(m.bn.running_var, ref.bn.running_var, rtol=0, atol=0)
        g = torch.randn(y.shape, generator=gen)
        y.backward(g)
        y_ref.backward(g)
        torch.testing.assert_close(xo.grad, xr.grad, rtol=0, atol=0)
        for name, t in m.named_parameters():
            torch.testing.assert_close(t.grad, p[name].grad, rtol=0, atol=0, msg=name)
            t.grad = None
    m.weight_fake_quant.disable_fake_quant()  # quantize_weight=False: the float fold
    m.train()
    assert torch.isfinite(m(torch.randn(2, 6, 9, 9, generator=gen))).all()
