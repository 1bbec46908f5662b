"""The block-format fake quantizers (fakequant.nn.block) and the LLM QAT swap without torchao:
each quantizer is its op, the switches work, the swapped model trains, compiles, saves and
loads, converts back to float layers, and 8da4w equals torchao's QAT flow where torchao is
installed."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import fakequant
from fakequant.nn import (
    Float8FakeQuantize,
    MXFakeQuantize,
    NVFP4FakeQuantize,
    PerGroupFakeQuantize,
    PerTokenFakeQuantize,
    convert_llm_qat,
    prepare_llm_qat,
)
from fakequant.nn.block import LLM_QAT_SCHEMES


class Block(nn.Module):
    """A transformer-shaped MLP block: embedding, two Linears (a skipped head)."""

    def __init__(self, vocab=64, dim=128, hidden=256):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim, bias=False)
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids):
        h = self.embed(ids)
        return self.head(h + self.down(torch.nn.functional.gelu(self.up(h))))


QUANTIZERS = [
    (PerTokenFakeQuantize(), lambda x: fakequant.fake_quantize_per_token(x)[0]),
    (PerGroupFakeQuantize(32, 4), lambda x: fakequant.fake_quantize_per_group(x, 32, -8, 7)[0]),
    (PerGroupFakeQuantize(32, 4, symmetric=False), lambda x: fakequant.fake_quantize_per_group_affine(x, 32, -8, 7)[0]),
    (Float8FakeQuantize(), lambda x: fakequant.fake_quantize_fp8(x, "e4m3", granularity="row")[0]),
    (MXFakeQuantize(), lambda x: fakequant.fake_quantize_mx(x, "e2m1", 32, "rceil")[0]),
    (NVFP4FakeQuantize(), lambda x: fakequant.fake_quantize_nvfp4(x, True)[0]),
]


@pytest.mark.parametrize("fq,op", QUANTIZERS, ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else "")
def test_quantizer_is_its_op_and_switches(fq, op):
    x = torch.randn(8, 128) * 3
    with pytest.raises(RuntimeError, match="no qparams yet"):
        fq.calculate_qparams()
    y = fq(x)
    assert torch.equal(y, op(x)) and not torch.equal(y, x)
    scale, zero_point = fq.calculate_qparams()
    assert scale.dtype == torch.float32 and scale.numel() >= 1 and zero_point.dtype == torch.int32
    fq.disable_observer()  # dynamic: nothing to freeze, still quantizes
    assert torch.equal(fq(x), y)
    fq.disable_fake_quant()
    assert fq(x) is x
    fq.enable_fake_quant()
    x.requires_grad_(True)
    fq(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="rounding"):
        MXFakeQuantize(rounding="up")
    with pytest.raises(ValueError, match="bits"):
        PerGroupFakeQuantize(bits=9)
    with pytest.raises(ValueError, match="scheme must be one of"):
        prepare_llm_qat(Block(), "int3")


@pytest.mark.parametrize("scheme", sorted(LLM_QAT_SCHEMES))
def test_prepare_train_save_load_convert(scheme):
    torch.manual_seed(0)
    model = Block()
    float_model = copy.deepcopy(model)
    prepare_llm_qat(model, scheme, skip=("head",))
    assert type(model.up) is fakequant.nn.qat.Linear and type(model.head) is nn.Linear
    activation, _ = LLM_QAT_SCHEMES[scheme]
    assert (model.up.input_fake_quant is None) == (activation is None)
    ids = torch.randint(0, 64, (4, 32))
    out = model(ids)
    # The swapped layer computes linear(act_fq(x), weight_fq(W), b).
    h = model.embed(ids)
    act = model.up.input_fake_quant
    expected = nn.functional.linear(act(h) if act is not None else h, model.up.weight_fake_quant(model.up.weight),
                                    model.up.bias)
    assert torch.equal(model.up(h), expected)
    assert not torch.equal(out, float_model(ids))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        loss = nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    again = prepare_llm_qat(Block(), scheme, skip=("head",))
    again.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
    assert torch.equal(again(ids), model(ids))
    convert_llm_qat(model)
    assert type(model.up) is nn.Linear and torch.equal(model.up.weight, again.up.weight)


@pytest.mark.parametrize("scheme", ["8da4w", "mxfp4", "nvfp4"])
def test_compiled_equals_eager(scheme):
    """A swapped layer compiled with fullgraph=True gives eager's values (the layer alone: a
    whole model's float ops, gelu for one, may round differently once inductor fuses them, and
    a quantizer downstream turns one ulp into a level)."""
    layer = prepare_llm_qat(Block(), scheme).up
    x = torch.randn(2, 32, 128, requires_grad=True)
    compiled = torch.compile(layer, fullgraph=True)
    out = layer(x)
    out_c = compiled(x)
    assert torch.equal(out_c, out)
    g = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, x, g)
    (grad_c,) = torch.autograd.grad(out_c, x, g)
    torch.testing.assert_close(grad_c, grad)


def test_8da4w_equals_torchaos_qat_flow():
    qat = pytest.importorskip("torchao.quantization.qat")
    from torchao.quantization import quantize_

    reference = Block()
    ours = prepare_llm_qat(copy.deepcopy(reference), "8da4w")
    config = qat.QATConfig(
        activation_config=qat.IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False),
        weight_config=qat.IntxFakeQuantizeConfig(torch.int4, group_size=32), step="prepare")
    quantize_(reference, config, filter_fn=lambda m, fqn: isinstance(m, nn.Linear))
    ids = torch.randint(0, 64, (4, 32))
    assert torch.equal(ours(ids), reference(ids))
