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
    """The base-config flow: prepare, train, convert. 8da4w's activation quantizers (int8 per
    token, asymmetric; torchao applies 8da4w to Linear layers only) are swapped too; the
    converted models are the same modules with the same outputs."""
    dynamic_activations = isinstance(base_config, Int8DynamicActivationIntxWeightConfig)
    layers = linear if dynamic_activations else linear_or_embedding
    reference, ours, swapped = prepared_pair(torch.float32, qat.QATConfig(base_config, step="prepare"), layers)
    assert swapped == (4 if dynamic_activations else 3)  # weights (and activations)
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
    """Range learning (trainable qparams) is torchao's alone."""
    config = qat.QATConfig(weight_config=qat.IntxFakeQuantizeConfig(torch.int4, group_size=32, is_dynamic=False,
                                                                    range_learning=True), step="prepare")
    reference, ours, swapped = prepared_pair(torch.float32, config)
    assert swapped == 0
    assert all(type(m) is qat.fake_quantizer.IntxFakeQuantizer for m in ours.modules()
               if isinstance(m, qat.fake_quantizer.IntxFakeQuantizer))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bits,group_size", [(4, 32), (8, 64)])
def test_asymmetric_per_group_and_per_token_flow_equals_torchao(dtype, bits, group_size):
    """Asymmetric per-group weights (torchao's float-domain zero point, truncated) and int8
    asymmetric per-token activations, through QATConfig(activation_config, weight_config)."""
    config = qat.QATConfig(
        activation_config=qat.IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False),
        weight_config=qat.IntxFakeQuantizeConfig(getattr(torch, f"int{bits}"), group_size=group_size,
                                                 is_symmetric=False), step="prepare")
    reference, ours, swapped = prepared_pair(dtype, config, linear)
    assert swapped == 4
    train_in_lockstep(reference, ours, dtype)
    for m_ref, m in zip(reference.modules(), ours.modules()):
        if isinstance(m, qat.fake_quantizer.IntxFakeQuantizer) and m.config.is_dynamic:
            assert torch.equal(m.scale, m_ref.scale) and torch.equal(m.zero_point, m_ref.zero_point)


@pytest.mark.parametrize("fp8", [torch.float8_e4m3fn, torch.float8_e5m2])
@pytest.mark.parametrize("granularity", ["row", "tensor"])
def test_float8_fake_quantizers_equal_torchao(fp8, granularity):
    from torchao.quantization.granularity import PerRow, PerTensor

    g = PerRow() if granularity == "row" else PerTensor()
    config = qat.QATConfig(activation_config=qat.Float8FakeQuantizeConfig(fp8, g),
                           weight_config=qat.Float8FakeQuantizeConfig(fp8, g), step="prepare")
    reference, ours, swapped = prepared_pair(torch.bfloat16, config, linear)
    assert swapped == 4
    ids = torch.randint(0, 100, (4, 16))
    assert torch.equal(ours(ids), reference(ids))


def _mx_config(dtype, scaling_mode):
    """torchao's MX base config with its emulated gemm (the CUTLASS one needs a Blackwell GPU)."""
    from torchao.prototype.mx_formats import MXDynamicActivationMXWeightConfig
    from torchao.prototype.mx_formats.config import ScaleCalculationMode
    from torchao.quantization.quantize_.common.kernel_preference import KernelPreference

    return MXDynamicActivationMXWeightConfig(activation_dtype=dtype, weight_dtype=dtype,
                                             kernel_preference=KernelPreference.EMULATED,
                                             scaling_mode=getattr(ScaleCalculationMode, scaling_mode))


@pytest.mark.parametrize("scaling_mode", ["RCEIL", "FLOOR"])
@pytest.mark.parametrize("scheme", ["mxfp4", "mxfp8"])
def test_mx_linear_flow_equals_torchao(scheme, scaling_mode):
    """MX QAT (torchao.prototype.qat): the fused linear's forward equals torchao's emulated one
    bit for bit through training steps, the weight gradients to rounding where nothing
    saturates, and torchao's convert step gives the same model."""
    base = _mx_config(torch.float4_e2m1fn_x2 if scheme == "mxfp4" else torch.float8_e4m3fn, scaling_mode)
    reference, ours, swapped = prepared_pair(torch.bfloat16, qat.QATConfig(base, step="prepare"), linear)
    assert swapped == 2
    opt = torch.optim.SGD(reference.parameters(), lr=0.01)
    for _ in range(2):
        ours.load_state_dict(reference.state_dict())
        ids = torch.randint(0, 100, (4, 16))
        out_ref, out = reference(ids), ours(ids)
        assert torch.equal(out, out_ref)
        out_ref.float().square().mean().backward()
        out.float().square().mean().backward()
        for (name, p_ref), p in zip(reference.named_parameters(), ours.parameters()):
            if name.endswith("bias") and name != "embed.bias":
                # torchao's MX linear returns no bias gradient (its backward's None): a bias
                # never trains there. Ours: the sum of the output gradient over the tokens.
                assert p_ref.grad is None and p.grad is not None and p.grad.abs().sum() > 0
            elif scaling_mode == "RCEIL":
                # RCEIL saturates no element, so the clipped STE is torchao's straight-through;
                # FLOOR saturates some, whose gradient torchao passes and ours clips.
                torch.testing.assert_close(p.grad, p_ref.grad, rtol=2e-2, atol=2e-2 * float(p_ref.grad.abs().max()))
            p.grad = None
        opt.step()
        opt.zero_grad()
    ours.load_state_dict(reference.state_dict())
    quantize_(reference, qat.QATConfig(base, step="convert"), filter_fn=linear)
    quantize_(ours, qat.QATConfig(base, step="convert"), filter_fn=linear)
    assert [type(m) for m in ours.modules()] == [type(m) for m in reference.modules()]
    ids = torch.randint(0, 100, (2, 16))
    assert torch.equal(ours(ids), reference(ids))


def test_nvfp4_linear_runs_on_cpu_with_torchaos_numerics():
    """torchao's NVFP4 QAT linear needs an FP4 GEMM (a Blackwell GPU); the fused one runs here,
    its operands bit for bit torchao's quantize-dequantize (NVFP4Tensor.to_nvfp4 with the
    per-tensor scale, then dequantize). torchao's convert of the NVFP4 config also needs sm100,
    so the float layer its convert step starts from (to_linear) is checked instead."""
    from torchao.prototype.mx_formats import NVFP4DynamicActivationNVFP4WeightConfig
    from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale

    base = NVFP4DynamicActivationNVFP4WeightConfig()
    _, ours, swapped = prepared_pair(torch.bfloat16, qat.QATConfig(base, step="prepare"), linear)
    assert swapped == 2

    def reference_fq(t):
        scale = per_tensor_amax_to_scale(torch.max(torch.abs(t)))
        return NVFP4Tensor.to_nvfp4(t.contiguous(), per_tensor_scale=scale).dequantize(t.dtype)

    x = torch.randn(64, 64, dtype=torch.bfloat16)
    up = ours.up
    expected = torch.addmm(up.bias, reference_fq(x), reference_fq(up.weight.detach()).t())
    assert torch.equal(up(x), expected)
    ids = torch.randint(0, 100, (4, 16))
    ours(ids).float().square().mean().backward()
    assert up.weight.grad is not None and up.weight.grad.isfinite().all() and up.weight.grad.abs().sum() > 0
    floated = up.to_linear()
    assert type(floated) is nn.Linear and floated.weight is up.weight
