"""quant_aware quantizes every layer type fakequant.nn.qat has a QAT module for (looked up in
get_qat_module_mappings()) and names, in one warning, the layers that stay float."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fakequant
from fakequant.nn import qat


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.conv1d = nn.Conv1d(8, 8, 3, padding=1)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.norm = nn.LayerNorm(8)  # a norm layer: not a layer to quantize
        self.lstm = nn.LSTM(8, 8, batch_first=True)
        self.skip_quant_rnn = nn.GRU(8, 8, batch_first=True)  # left float on purpose (not_quant_pattern)
        self.convt = nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.fc = nn.Linear(8, 3)

    def forward(self, tokens):
        x = self.emb(tokens)  # N, L, 8
        x = self.conv1d(x.transpose(1, 2)).transpose(1, 2)
        x = self.attn(x, x, x)[0]
        x = self.lstm(self.norm(x))[0]
        x = self.skip_quant_rnn(x)[0]
        img = self.convt(x.transpose(1, 2).unsqueeze(-1))  # N, 6, 2L, 2
        return self.fc(x.mean(1)) + img.mean(dim=(1, 2, 3)).unsqueeze(1)


def tokens(gen, n=4, length=5):
    return torch.randint(0, 20, (n, length), generator=gen)


def float_layer_warnings(record):
    return [str(w.message) for w in record if "they stay float" in str(w.message)]


def listed(message):
    """The layer names of 'they stay float: name (Type); name (Type: reason)'."""
    return {item.split(" (")[0] for item in message.split("they stay float: ")[1].split("; ")}


def test_layers_left_float_are_named_once():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        q = fakequant.quant_aware(Mixed())
    messages = float_layer_warnings(record)
    assert len(messages) == 1, messages
    names = listed(messages[0])
    assert isinstance(q.fc, qat.Linear)
    expected = {"attn", "lstm"}  # nothing quantizes these
    for name in ("emb", "conv1d", "convt"):  # quantized where fakequant.nn.qat has a QAT module for them
        if type(q.get_submodule(name)) in (nn.Embedding, nn.Conv1d, nn.ConvTranspose2d):
            expected.add(name)
    assert names == expected, messages[0]
    assert "MultiheadAttention" in messages[0] and "LSTM" in messages[0]
    q(tokens(torch.Generator().manual_seed(50))).sum().backward()


# A QAT layer protocol as fakequant.nn.qat's: qconfig, weight_fake_quant, input/output_fake_quant
# slots, from_float. The classes below stand for layer types fakequant.nn.qat may provide.


class _QATLayer:
    def _init_qat(self, qconfig):
        self.qconfig = qconfig
        self.weight_fake_quant = qconfig.weight()
        self.input_fake_quant = None
        self.output_fake_quant = None

    def _io(self, x, compute):
        x = x if self.input_fake_quant is None else self.input_fake_quant(x)
        y = compute(x, self.weight_fake_quant(self.weight))
        return y if self.output_fake_quant is None else self.output_fake_quant(y)


class QATConv1d(_QATLayer, nn.Conv1d):
    def forward(self, x):
        return self._io(x, lambda x, w: self._conv_forward(x, w, self.bias))

    @classmethod
    def from_float(cls, mod):
        q = cls(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding, mod.dilation,
                mod.groups, mod.bias is not None)
        q._init_qat(mod.qconfig)
        q.weight, q.bias = mod.weight, mod.bias
        return q


class QATConvTranspose2d(_QATLayer, nn.ConvTranspose2d):
    def forward(self, x):
        return self._io(x, lambda x, w: F.conv_transpose2d(x, w, self.bias, self.stride, self.padding,
                                                           self.output_padding, self.groups, self.dilation))

    @classmethod
    def from_float(cls, mod):
        q = cls(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding, mod.output_padding,
                mod.groups, mod.bias is not None, mod.dilation)
        q._init_qat(mod.qconfig)
        q.weight, q.bias = mod.weight, mod.bias
        return q


class RefusingEmbedding(nn.Embedding):
    """As torch.ao's qat.Embedding: only per_channel_affine_float_qparams weight quantizers."""

    @classmethod
    def from_float(cls, mod):
        raise AssertionError("Embedding weights requires a qscheme of torch.per_channel_affine_float_qparams")


def per_channel_reference(w, axis, bin_cnt=127):
    """Paddle's channel_wise_abs_max, written out: scale = absmax / bin_cnt along ``axis``, rounding
    half away from zero."""
    dims = [d for d in range(w.dim()) if d != axis]
    scale = torch.clamp(w.abs().amax(dim=dims, keepdim=True) / bin_cnt, min=torch.finfo(torch.float32).eps)
    v = (w * (1.0 / scale)).double()
    q = (torch.floor(v.abs() + 0.5) * torch.sign(v)).clamp(-bin_cnt, bin_cnt)
    return q.float() * scale


def test_layers_are_mapped_from_get_qat_module_mappings(monkeypatch):
    provided = dict(qat.get_qat_module_mappings())
    provided.update({nn.Conv1d: QATConv1d, nn.ConvTranspose2d: QATConvTranspose2d, nn.Embedding: RefusingEmbedding})
    monkeypatch.setattr(qat, "get_qat_module_mappings", lambda: provided)
    config = {"weight_quantize_type": "channel_wise_abs_max", "activation_quantize_type": "moving_average_abs_max"}
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        q = fakequant.quant_aware(Mixed(), config)
    messages = float_layer_warnings(record)
    assert len(messages) == 1
    assert listed(messages[0]) == {"emb", "attn", "lstm"}
    assert "RefusingEmbedding.from_float refused" in messages[0] and "per_channel_affine_float_qparams" in messages[0]
    assert type(q.conv1d) is QATConv1d and type(q.convt) is QATConvTranspose2d and type(q.emb) is nn.Embedding
    assert q.conv1d.weight_fake_quant.ch_axis == 0 and q.convt.weight_fake_quant.ch_axis == 1  # output channels
    assert (q.convt.weight_fake_quant.quant_min, q.convt.weight_fake_quant.quant_max) == (-127, 127)
    assert isinstance(q.conv1d.input_fake_quant, fakequant.nn.MovingAverageAbsMaxFakeQuantize)

    gen = torch.Generator().manual_seed(51)
    opt = torch.optim.SGD(q.parameters(), lr=0.05)
    for _ in range(2):
        opt.zero_grad()
        q(tokens(gen)).square().mean().backward()
        opt.step()
    q.eval()
    frozen, payload = fakequant.convert(q, save_int8=True)
    x = tokens(gen)
    torch.testing.assert_close(frozen(x), q(x), rtol=1e-5, atol=1e-5)
    assert type(frozen.conv1d[1]) is nn.Conv1d and type(frozen.convt[1]) is nn.ConvTranspose2d
    torch.testing.assert_close(frozen.conv1d[1].weight, per_channel_reference(q.conv1d.weight.detach(), 0))
    torch.testing.assert_close(frozen.convt[1].weight, per_channel_reference(q.convt.weight.detach(), 1))
    assert (payload["conv1d"]["op"], payload["conv1d"]["axis"]) == ("conv1d", 0)
    assert (payload["convt"]["op"], payload["convt"]["axis"]) == ("conv_transpose2d", 1)
    assert payload["convt"]["scale"].shape == (6,) and payload["convt"]["weight"].dtype == torch.int8
    w = payload["convt"]["weight"].float() * payload["convt"]["scale"].reshape(1, -1, 1, 1)
    assert torch.equal(w, frozen.convt[1].weight)


@pytest.mark.skipif(not hasattr(qat, "ConvBnReLU1d"), reason="fakequant.nn.qat has no ConvBnReLU1d")
def test_conv1d_bn_relu_fuses_when_qat_provides_convbn1d():
    gen = torch.Generator().manual_seed(52)
    model = nn.Sequential(nn.Conv1d(3, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 7, 4))
    q = fakequant.quant_aware(model, {"weight_quantize_type": "channel_wise_abs_max",
                                      "activation_quantize_type": "moving_average_abs_max"})
    assert isinstance(q[0], qat.ConvBnReLU1d) and isinstance(q[1], nn.Identity) and isinstance(q[2], nn.Identity)
    opt = torch.optim.SGD(q.parameters(), lr=0.05)
    for _ in range(2):
        opt.zero_grad()
        q(torch.randn(4, 3, 7, generator=gen)).square().mean().backward()
        opt.step()
    q.eval()
    x = torch.randn(4, 3, 7, generator=gen)
    torch.testing.assert_close(fakequant.convert(q)(x), q(x), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not hasattr(qat, "EmbeddingBag"), reason="fakequant.nn.qat has no EmbeddingBag")
def test_embeddings_quantize_per_row_and_convert():
    gen = torch.Generator().manual_seed(53)
    model = nn.ModuleDict({"emb": nn.Embedding(12, 6), "bag": nn.EmbeddingBag(12, 6, mode="sum")})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing stays float
        q = fakequant.quant_aware(model, {"weight_quantize_type": "channel_wise_abs_max",
                                          "quantize_op_types": ["lookup_table"]})
    assert isinstance(q["emb"], qat.Embedding) and isinstance(q["bag"], qat.EmbeddingBag)
    frozen, payload = fakequant.convert(q, save_int8=True)
    idx, offsets = torch.randint(0, 12, (7,), generator=gen), torch.tensor([0, 3])
    for name, op in (("emb", "embedding"), ("bag", "embedding_bag")):
        assert type(frozen[name]) is type(model[name])
        torch.testing.assert_close(frozen[name].weight, per_channel_reference(model[name].weight.detach(), 0))
        entry = payload[name]
        assert entry["axis"] == 0 and entry["input"] is None and entry["op"] == op
        assert torch.equal(entry["weight"].float() * entry["scale"].reshape(-1, 1), frozen[name].weight)
    assert payload["bag"]["args"]["mode"] == "sum"
    torch.testing.assert_close(frozen["emb"](idx), q["emb"](idx), rtol=0, atol=0)
    torch.testing.assert_close(frozen["bag"](idx, offsets), q["bag"](idx, offsets), rtol=0, atol=0)
    y = F.embedding_bag(idx, payload["bag"]["weight"].float() * payload["bag"]["scale"].reshape(-1, 1), offsets,
                        **payload["bag"]["args"])
    torch.testing.assert_close(y, frozen["bag"](idx, offsets), rtol=0, atol=0)
