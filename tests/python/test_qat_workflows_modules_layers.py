"""The QAT layers beyond Conv2d / Linear / ConvBn2d: Conv1d, Conv3d, ConvTranspose1d/2d,
ConvBn(ReLU)1d/3d, Embedding, EmbeddingBag, against their torch.ao counterparts with the same
weight quantizer (values, gradients, running statistics, state dicts in both directions), the
formulas written out where torch.ao has none, and torch.ao's eager prepare_qat / convert with
fakequant's mappings."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fakequant
from fakequant.nn import AbsMaxWeightFakeQuantize, qat
from qat_helpers import ao_qconfig, aq, needs_ao, nni, nniqat, nnqat, randomize_bn

warnings.filterwarnings("ignore", category=DeprecationWarning)


def same_state_dicts(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def check_against(ours, theirs, make_input, steps=2, float_input=True):
    """Load torch.ao's state into ours (and back), then train both on the same batches:
    outputs, input and parameter gradients and every buffer agree exactly."""
    ours.load_state_dict(theirs.state_dict())
    back = copy.deepcopy(theirs)
    back.load_state_dict(ours.state_dict())
    same_state_dicts(back, theirs)
    for _ in range(steps):
        x = make_input()
        xo, xt = x.clone(), x.clone()
        if float_input:
            xo.requires_grad_()
            xt.requires_grad_()
        yo, yt = ours(xo), theirs(xt)
        torch.testing.assert_close(yo, yt, rtol=0, atol=0)
        g = torch.randn_like(yt)
        yo.backward(g)
        yt.backward(g)
        if float_input:
            torch.testing.assert_close(xo.grad, xt.grad)
        for name, p in ours.named_parameters():
            torch.testing.assert_close(p.grad, theirs.get_parameter(name).grad, msg=name)
        same_state_dicts(ours, theirs)


# ---------------------------------------------------------------------------------------
# Against torch.ao


@needs_ao
@pytest.mark.parametrize("ours_cls,theirs_cls,args,shape", [
    (qat.Conv1d, "Conv1d", (4, 6, 3), (2, 4, 9)),
    (qat.Conv3d, "Conv3d", (3, 4, 3), (2, 3, 5, 5, 5)),
])
def test_conv1d_conv3d_equal_torch_ao(ours_cls, theirs_cls, args, shape):
    theirs = getattr(nnqat, theirs_cls)(*args, padding=1, qconfig=ao_qconfig())
    ours = ours_cls(*args, padding=1, qconfig=ao_qconfig())
    check_against(ours, theirs, lambda: torch.randn(shape))
    assert type(ours.to_float()) is type(theirs.to_float())
    float_layer = getattr(nn, theirs_cls)(*args)
    float_layer.qconfig = ao_qconfig()
    qat_layer = ours_cls.from_float(float_layer)
    assert qat_layer.weight is float_layer.weight  # shared, as torch.ao's from_float


@needs_ao
@pytest.mark.parametrize("name,dim", [("ConvBn1d", 1), ("ConvBnReLU1d", 1), ("ConvBn3d", 3), ("ConvBnReLU3d", 3)])
def test_convbn_1d_3d_equal_torch_ao(name, dim):
    """Running fold mode is torch.ao's _forward_approximate: the same values, gradients and BN
    statistics (the composed path, as ConvBn2d's with this quantizer)."""
    theirs = getattr(nniqat, name)(3, 5, 3, padding=1, bias=True, qconfig=ao_qconfig())
    randomize_bn(theirs.bn)
    ours = getattr(qat, name)(3, 5, 3, padding=1, bias=True, qconfig=ao_qconfig())
    spatial = (9,) if dim == 1 else (5, 5, 5)
    check_against(ours, theirs, lambda: torch.randn(4, 3, *spatial), steps=3)
    ours.eval()
    x = torch.randn(2, 3, *spatial)
    w, b = ours.eval_folded_weight_and_bias()
    conv = F.conv1d if dim == 1 else F.conv3d
    expected = conv(x, ours.weight_fake_quant(w), b, 1, 1)
    torch.testing.assert_close(ours(x), F.relu(expected) if "ReLU" in name else expected, rtol=1e-6, atol=1e-6)
    float_type = type(theirs.to_float())
    assert type(ours.to_float()) is float_type
    conv_float = getattr(nn, f"Conv{dim}d")(3, 5, 3)
    bn_float = getattr(nn, f"BatchNorm{dim}d")(5)
    seq = getattr(nni, f"ConvBn{'ReLU' if 'ReLU' in name else ''}{dim}d")(
        conv_float, bn_float, *([nn.ReLU()] if "ReLU" in name else []))
    seq.qconfig = ao_qconfig()
    from_float = getattr(qat, name).from_float(seq, fold_mode="batch")
    assert from_float.weight is conv_float.weight and from_float.bn.running_var is bn_float.running_var
    assert from_float.fold_mode == "batch"
    with pytest.raises(TypeError, match=rf"from_float takes a \(Conv{dim}d, BatchNorm{dim}d"):
        getattr(qat, name).from_float(nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5)))


@needs_ao
@pytest.mark.parametrize("name,args,shape", [
    ("ConvReLU1d", (4, 6, 3), (2, 4, 9)),
    ("ConvReLU2d", (4, 6, 3), (2, 4, 7, 7)),
    ("ConvReLU3d", (3, 4, 3), (2, 3, 5, 5, 5)),
    ("LinearReLU", (10, 7), (5, 10)),
])
def test_conv_relu_and_linear_relu_equal_torch_ao(name, args, shape):
    """torch.ao's fused ConvReLU / LinearReLU (what fuse_modules_qat makes of conv+relu and
    linear+relu); with fakequant's mapping they used to stay float."""
    theirs = getattr(nniqat, name)(*args, qconfig=ao_qconfig())
    ours = getattr(qat, name)(*args, qconfig=ao_qconfig())
    check_against(ours, theirs, lambda: torch.randn(shape))
    assert type(ours.to_float()) is type(theirs.to_float())
    float_layer = nn.Linear(*args) if name == "LinearReLU" else getattr(nn, f"Conv{name[-2:]}")(*args)
    fused = getattr(nni, name)(float_layer, nn.ReLU())
    fused.qconfig = ao_qconfig()
    from_float = getattr(qat, name).from_float(fused)
    assert from_float.weight is float_layer.weight and not hasattr(float_layer, "qconfig")
    assert type(from_float.weight_fake_quant) is aq.FakeQuantize
    with pytest.raises(TypeError, match=r"from_float takes a \((Conv\dd|Linear), ReLU\) sequence"):
        getattr(qat, name).from_float(float_layer)


@needs_ao
@pytest.mark.parametrize("bag", [False, True])
def test_embeddings_equal_torch_ao(bag):
    """torch.ao's embedding QAT qconfig (per-row float-qparams weights) in both modules."""
    qconfig = aq.default_embedding_qat_qconfig
    if bag:
        theirs = nnqat.EmbeddingBag(12, 5, mode="sum", qconfig=qconfig)
        ours = qat.EmbeddingBag(12, 5, mode="sum", qconfig=qconfig)
    else:
        theirs = nnqat.Embedding(12, 5, padding_idx=0, qconfig=qconfig)
        ours = qat.Embedding(12, 5, padding_idx=0, qconfig=qconfig)
    check_against(ours, theirs, lambda: torch.randint(0, 12, (4, 6)), float_input=False)
    assert type(ours.to_float()) is type(theirs.to_float())
    float_layer = (nn.EmbeddingBag(12, 5, mode="sum") if bag else nn.Embedding(12, 5))
    float_layer.qconfig = qconfig
    qat_layer = type(ours).from_float(float_layer)
    torch.testing.assert_close(qat_layer.weight, float_layer.weight, rtol=0, atol=0)


@pytest.mark.parametrize("bag", [False, True])
def test_embeddings_with_our_quantizer_quantize_each_row(bag):
    """With our abs-max weight quantizer: per-row symmetric qint8 (the row's abs-max / 127.5),
    written out."""
    qconfig = fakequant.qconfig.get_qat_qconfig("pytorch", weight_quantize_type="abs_max")
    m = qat.EmbeddingBag(12, 5, mode="mean", qconfig=qconfig) if bag else qat.Embedding(12, 5, qconfig=qconfig)
    idx = torch.randint(0, 12, (3, 4))
    w = m.weight.detach()
    scale = torch.clamp(w.abs().amax(dim=1) / 127.5, min=torch.finfo(torch.float32).eps)
    wq = torch.fake_quantize_per_channel_affine(w, scale, torch.zeros(12, dtype=torch.int32), 0, -128, 127)
    expected = F.embedding_bag(idx, wq, mode="mean") if bag else F.embedding(idx, wq)
    torch.testing.assert_close(m(idx), expected, rtol=0, atol=0)


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("groups", [1, 2])
def test_conv_transpose_quantizes_output_channels(dim, groups):
    """No torch.ao QAT counterpart: against the formula. The weight is [in, out / groups, *k];
    a per-channel quantizer of the qconfig (axis 0 by default) is built along axis 1."""
    qconfig = qat.QConfig(activation=None, weight=AbsMaxWeightFakeQuantize.with_args(quant_min=-128, quant_max=127))
    cls, conv_t = (qat.ConvTranspose1d, F.conv_transpose1d) if dim == 1 else (qat.ConvTranspose2d, F.conv_transpose2d)
    m = cls(4, 6, 3, stride=2, padding=1, output_padding=1, groups=groups, qconfig=qconfig)
    assert m.weight_fake_quant.ch_axis == 1 and m.weight_fake_quant.scale.shape == (6 // groups,)
    x = torch.randn(2, 4, *([5] * dim), requires_grad=True)
    y = m(x)
    w = m.weight.detach()
    other = [d for d in range(w.dim()) if d != 1]
    scale = torch.clamp(w.abs().amax(dim=other) / 127.5, min=torch.finfo(torch.float32).eps)
    wq = torch.fake_quantize_per_channel_affine(w, scale, torch.zeros_like(scale, dtype=torch.int32), 1, -128, 127)
    expected = conv_t(x, wq, m.bias, 2, 1, 1, groups)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    y2 = m(x, output_size=[s - 1 for s in expected.shape[2:]])  # nn.ConvTranspose's output_size
    assert y2.shape[2:] == torch.Size([s - 1 for s in expected.shape[2:]])
    float_layer = m.to_float()
    assert type(float_layer) is (nn.ConvTranspose1d if dim == 1 else nn.ConvTranspose2d)
    torch.testing.assert_close(float_layer(x), conv_t(x, w, m.bias, 2, 1, 1, groups))
    back = cls.from_float(float_layer)
    assert back.weight is float_layer.weight and back.output_padding == m.output_padding
    per_tensor = cls(4, 6, 3, qconfig=qat.QConfig(activation=None, weight=AbsMaxWeightFakeQuantize.with_args(
        ch_axis=None)))
    assert not per_tensor.weight_fake_quant.is_per_channel


# ---------------------------------------------------------------------------------------
# torch.ao's eager flow with fakequant's mappings


class EveryLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = aq.QuantStub(), aq.DeQuantStub()
        self.c1 = nn.Sequential(nn.Conv1d(3, 4, 3, padding=1), nn.BatchNorm1d(4), nn.ReLU())
        self.p1 = nn.Conv1d(4, 4, 1)
        self.c3 = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.BatchNorm3d(2))
        self.p3 = nn.Conv3d(2, 2, 1)
        self.up = nn.ConvTranspose2d(2, 2, 2, stride=2)
        self.fc = nn.Sequential(nn.Linear(4, 6), nn.ReLU())
        self.fc2 = nn.Linear(6, 3)
        self.cr = nn.Sequential(nn.Conv2d(2, 2, 1), nn.ReLU())

    def forward(self, seq, vol):
        a = self.p1(self.c1(self.quant(seq)))
        v = self.p3(self.c3(self.quant(vol)))
        u = self.cr(self.up(v.mean(dim=2)))
        return self.dequant(self.fc2(self.fc(a.mean(dim=2)))), self.dequant(u)


@needs_ao
def test_prepare_qat_and_convert_every_layer_with_our_mappings():
    torch.manual_seed(3)
    model = EveryLayer().train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            randomize_bn(m)
    fused = aq.fuse_modules_qat(model, [["c1.0", "c1.1", "c1.2"], ["c3.0", "c3.1"], ["fc.0", "fc.1"],
                                        ["cr.0", "cr.1"]])
    fused.qconfig = fakequant.qconfig.get_qat_qconfig("pytorch", reduce_range=False)
    fused.up.qconfig = fakequant.qconfig.get_qat_qconfig("pytorch", reduce_range=False, per_channel=False)
    prepared = aq.prepare_qat(fused, mapping=qat.get_qat_module_mappings())
    kinds = {name: type(m) for name, m in prepared.named_modules()}
    assert kinds["c1.0"] is qat.ConvBnReLU1d and kinds["p1"] is qat.Conv1d and kinds["c3.0"] is qat.ConvBn3d
    assert kinds["p3"] is qat.Conv3d and kinds["up"] is qat.ConvTranspose2d and kinds["fc.0"] is qat.LinearReLU
    assert kinds["fc2"] is qat.Linear and kinds["cr.0"] is qat.ConvReLU2d
    opt = torch.optim.SGD(prepared.parameters(), lr=0.01)
    for _ in range(3):
        seq, vol = torch.randn(4, 3, 8), torch.randn(4, 1, 3, 4, 4)
        a, u = prepared(seq, vol)
        (a.square().mean() + u.square().mean()).backward()
        opt.step()
        opt.zero_grad()
    prepared.eval()
    seq, vol = torch.randn(4, 3, 8), torch.randn(4, 1, 3, 4, 4)
    a_qat, u_qat = prepared(seq, vol)
    quantized = aq.convert(copy.deepcopy(prepared), mapping=qat.get_quantized_module_mappings())
    for name in ("c1.0", "p1", "c3.0", "p3", "up", "fc.0", "fc2", "cr.0"):
        assert "quantized" in type(quantized.get_submodule(name)).__module__, name
    a_q, u_q = quantized(seq, vol)
    # torch.ao's integer kernels against the fake-quantized float model: a few output steps apart
    for y_q, y_qat, name in ((a_q, a_qat, "fc2"), (u_q, u_qat, "cr.0")):
        step = quantized.get_submodule(name).scale
        assert (y_q - y_qat).abs().max().item() <= 3 * step, name


@needs_ao
def test_embedding_prepare_qat_and_convert_with_our_mappings():
    """Embeddings are in the one QAT mapping; converting to torch.ao's quantized embeddings
    needs torch.ao's float-qparams weight qconfig (as with torch.ao's own modules)."""
    model = nn.Sequential(nn.Embedding(20, 6)).train()
    model[0].qconfig = aq.default_embedding_qat_qconfig
    prepared = aq.prepare_qat(model, mapping=qat.get_qat_module_mappings())
    assert type(prepared[0]) is qat.Embedding
    idx = torch.randint(0, 20, (5, 3))
    y_qat = prepared(idx)
    quantized = aq.convert(copy.deepcopy(prepared).eval(), mapping=qat.get_quantized_module_mappings())
    assert type(quantized[0]).__name__ == "Embedding" and "quantized" in type(quantized[0]).__module__
    torch.testing.assert_close(quantized(idx), y_qat, rtol=0, atol=1e-6)


@needs_ao
def test_per_channel_conv_transpose_conversion_is_refused_by_name():
    m = qat.ConvTranspose2d(2, 2, 2, qconfig=fakequant.qconfig.get_qat_qconfig("pytorch"))
    model = nn.Sequential(aq.QuantStub(), m, aq.DeQuantStub())
    model.qconfig = m.qconfig
    prepared = aq.prepare_qat(model, mapping=qat.get_qat_module_mappings())
    prepared(torch.randn(1, 2, 3, 3))
    with pytest.raises(ValueError, match=r"ConvTranspose2d: torch.ao's quantized ConvTranspose2d takes per-tensor "
                                         r"weights only"):
        aq.convert(prepared.eval(), mapping=qat.get_quantized_module_mappings())
