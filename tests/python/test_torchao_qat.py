"""fakequant's fused fake quantizers in torchao's QAT flow (quantize_ with QATConfig: prepare,
train, convert): fuse_torchao_fake_quantizers swaps the covered quantizers, the forward equals
torchao's own quantizers bit for bit, the gradients equal them to rounding, and torchao's
convert step gives the same model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fakequant

qat = pytest.importorskip("torchao.quantization.qat")
from torchao.quantization import (  # noqa: E402
    Int8DynamicActivationIntxWeightConfig,
    IntxWeightOnlyConfig,
    quantize_,
)
from torchao.quantization.granularity import PerAxis, PerGroup  # noqa: E402


def linear_or_embedding(module, fqn):
    return isinstance(module, (nn.Linear, nn.Embedding))


def linear(module, fqn):
    return isinstance(module, nn.Linear)


class TinyLM(nn.Module):
    """Embedding -> Linear -> ReLU -> Linear: every weight a per-group quantizer's input."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(100, 64)
        self.up = nn.Linear(64, 128)
        self.down = nn.Linear(128, 96)

    def forward(self, ids):
        return self.down(torch.relu(self.up(self.embed(ids))))


def prepared_pair(dtype, qat_config, filter_fn=linear_or_embedding):
    """torchao's prepared model and a copy with fakequant's quantizers swapped in."""
    reference = TinyLM().to(dtype)
    quantize_(reference, qat_config, filter_fn=filter_fn)
    ours = copy.deepcopy(reference)
    return reference, ours, fakequant.nn.fuse_torchao_fake_quantizers(ours)


def train_in_lockstep(reference, ours, dtype, steps=3):
    """Each step: ours takes the reference's weights, both run forward and backward on the same
    tokens; the outputs must be equal bit for bit and the weight gradients equal to rounding."""
    opt = torch.optim.SGD(reference.parameters(), lr=0.01)
    for step in range(steps):
        ours.load_state_dict(reference.state_dict())
        ids = torch.randint(0, 100, (4, 16))
        out_ref, out = reference(ids), ours(ids)
        assert out.isfinite().all()
        assert torch.equal(out, out_ref), (step, (out.float() - out_ref.float()).abs().max())
        g = torch.randn_like(out_ref)
        out_ref.backward(g)
        out.backward(g)
        for (name, p_ref), p in zip(reference.named_parameters(), ours.parameters()):
            tol = 1e-5 if dtype == torch.float32 else 2e-2
            torch.testing.assert_close(p.grad, p_ref.grad, rtol=tol, atol=tol * float(p_ref.grad.abs().max()),
                                       msg=lambda m: f"step {step} {name}: {m}")
            p.grad = None
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bits,group_size", [(4, 32), (8, 64), (2, 16)])
def test_weight_config_flow_equals_torchao(dtype, bits, group_size):
    config = qat.QATConfig(weight_config=qat.IntxFakeQuantizeConfig(getattr(torch, f"int{bits}"),
                                                                    group_size=group_size), step="prepare")
    reference, ours, swapped = prepared_pair(dtype, config)
    assert swapped == 3
    assert all(type(m).__name__ == "FusedIntxFakeQuantizer" for m in ours.modules()
               if isinstance(m, qat.fake_quantizer.IntxFakeQuantizer))
    train_in_lockstep(reference, ours, dtype)
    for m_ref, m in zip(reference.modules(), ours.modules()):
        if isinstance(m, qat.fake_quantizer.IntxFakeQuantizer):  # the qparams torchao keeps, ours too
            assert torch.equal(m.scale, m_ref.scale) and torch.equal(m.zero_point, m_ref.zero_point)


@pytest.mark.parametrize("base_config", [
    IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32)),
    IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0)),
    Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(32)),
], ids=["int4-weight-only", "int8-per-channel", "8da4w"])
def test_base_config_prepare_train_convert_equals_torchao(base_config):
    """The base-config flow: prepare, train, convert. The activation quantizer of 8da4w (int8
    per token, asymmetric; torchao applies 8da4w to Linear layers only) stays torchao's; the
    converted models are the same modules with the same outputs."""
    dynamic_activations = isinstance(base_config, Int8DynamicActivationIntxWeightConfig)
    layers = linear if dynamic_activations else linear_or_embedding
    reference, ours, swapped = prepared_pair(torch.float32, qat.QATConfig(base_config, step="prepare"), layers)
    assert swapped == (2 if dynamic_activations else 3)  # the weight quantizers
    train_in_lockstep(reference, ours, torch.float32)
    ours.load_state_dict(reference.state_dict())
    quantize_(reference, qat.QATConfig(base_config, step="convert"), filter_fn=layers)
    quantize_(ours, qat.QATConfig(base_config, step="convert"), filter_fn=layers)
    assert [type(m) for m in ours.modules()] == [type(m) for m in reference.modules()]
    ids = torch.randint(0, 100, (2, 16))
    assert torch.equal(ours(ids), reference(ids))


def test_bf16_input_with_scale_in_input_dtype_keeps_torchaos_forward():
    """scale_precision=None (the base-config flows) on a 16-bit model: torchao quantizes with a
    16-bit scale and 16-bit products; the swapped quantizer runs torchao's forward there."""
    reference, ours, swapped = prepared_pair(
        torch.bfloat16, qat.QATConfig(IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32)),
                                      step="prepare"))
    assert swapped == 3
    ids = torch.randint(0, 100, (2, 8))
    assert torch.equal(ours(ids), reference(ids))


def test_uncovered_configs_stay_torchaos():
    config = qat.QATConfig(weight_config=qat.IntxFakeQuantizeConfig(torch.int4, group_size=32, is_symmetric=False),
                           step="prepare")
    reference, ours, swapped = prepared_pair(torch.float32, config)
    assert swapped == 0
    assert all(type(m) is qat.fake_quantizer.IntxFakeQuantizer for m in ours.modules()
               if isinstance(m, qat.fake_quantizer.IntxFakeQuantizer))
    ids = torch.randint(0, 100, (2, 8))
    assert torch.equal(ours(ids), reference(ids))
