"""The PaddleSlim-style facade: quant_aware(model, config) and convert(model, save_int8)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fakequant
from fakequant import nn as fqnn
from fakequant.nn import qat
from fakequant.quant_aware import QUANT_CONFIG_DEFAULT, AheadReLU
from qat_helpers import ConvBnStart, train_steps


class Net(ConvBnStart):
    """conv-bn-relu, a depthwise conv-bn, a residual add, pooling and a linear head; traces with fx."""

    def __init__(self):
        super().__init__()
        self.relu1 = nn.ReLU()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.skip_quant_conv = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8 * 4 * 4, 16)
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = x + F.relu(self.bn2(self.dw(x)))
        x = self.pool(x)
        x = self.skip_quant_conv(x)
        x = F.relu(self.fc(torch.flatten(x, 1)))
        return self.out(x)


class Untraceable(Net):
    def forward(self, x):
        if x.mean() > 100:  # data-dependent: torch.fx cannot trace it
            x = x * 0
        return super().forward(x)


def data(gen, n=8):
    return torch.randn(n, 3, 8, 8, generator=gen)


def run_steps(model, gen, steps=3):
    train_steps(model, (data(gen) for _ in range(steps)), lr=0.01)


def modules_of(model, cls):
    return {n: m for n, m in model.named_modules() if isinstance(m, cls)}


def test_default_config_swaps_modules_fuses_bn_and_quantizes_add_and_pool_inputs():
    gen = torch.Generator().manual_seed(0)
    model = Net()
    q = fakequant.quant_aware(model)
    assert not modules_of(model, qat.Conv2d) and not modules_of(model, qat.ConvBn2d)  # not in place
    assert isinstance(q, torch.fx.GraphModule)  # add/pool inputs inserted with torch.fx
    assert isinstance(q.conv1, qat.ConvBnReLU2d) and q.conv1.fold_mode == "batch"
    assert isinstance(q.relu1, nn.Identity) and isinstance(q.bn1, nn.Identity)
    assert isinstance(q.dw, qat.ConvBn2d) and not isinstance(q.dw, qat.ConvBnReLU2d)  # F.relu stays
    assert type(q.skip_quant_conv) is nn.Conv2d  # not_quant_pattern 'skip_quant'
    assert isinstance(q.fc, qat.Linear) and isinstance(q.out, qat.Linear)
    # abs_max weights (per tensor, Paddle's narrow range, half-away rounding), abs_max inputs
    for m in (q.conv1, q.dw, q.fc):
        assert isinstance(m.weight_fake_quant, fqnn.AbsMaxWeightFakeQuantize)
        assert m.weight_fake_quant.ch_axis is None and m.weight_fake_quant.quant_min == -127
        assert m.weight_fake_quant.rounding == "half_away"
        assert isinstance(m.input_fake_quant, fqnn.AbsMaxWeightFakeQuantize) and m.output_fake_quant is None
    inserted = [n for n, _ in q.named_children() if n.startswith("quant_dequant_")]
    assert len(inserted) == 3  # both inputs of the add, the pool input
    x = data(gen)
    assert q(x).shape == (8, 4)
    run_steps(q, gen)


def test_config_keys_map_to_fake_quantizers():
    config = {"weight_quantize_type": "channel_wise_abs_max", "activation_quantize_type": "moving_average_abs_max",
              "weight_bits": 4, "activation_bits": 6, "moving_rate": 0.5, "quantize_op_types": ["conv2d", "mul"],
              "not_quant_pattern": ["out"]}
    q = fakequant.quant_aware(Net(), config)
    assert not isinstance(q, torch.fx.GraphModule)  # no add/pool: module swaps only
    assert type(q.dw) is nn.Conv2d and isinstance(q.bn2, nn.BatchNorm2d)  # depthwise_conv2d not listed
    assert type(q.out) is nn.Linear
    wfq, afq = q.conv1.weight_fake_quant, q.conv1.input_fake_quant
    assert wfq.ch_axis == 0 and (wfq.quant_min, wfq.quant_max) == (-7, 7)
    assert isinstance(afq, fqnn.MovingAverageAbsMaxFakeQuantize)
    assert (afq.quant_min, afq.quant_max) == (-31, 31)
    q2 = fakequant.quant_aware(Net(), {"weight_quantize_type": "range_abs_max", "activation_quantize_type":
                                       "range_abs_max", "window_size": 7, "quant_weight_only": True})
    assert isinstance(q2.fc.weight_fake_quant, fqnn.RangeAbsMaxFakeQuantize)
    assert q2.fc.input_fake_quant is None and not isinstance(q2, torch.fx.GraphModule)
    q3 = fakequant.quant_aware(Net(), {"fuse_bn": False, "fold_mode": "running"})
    assert type(q3.conv1) is qat.Conv2d and isinstance(q3.bn1, nn.BatchNorm2d)


@pytest.mark.parametrize("key,value,accepted", [
    ("weight_quantize_type", "minmax", "channel_wise_abs_max"),
    ("activation_quantize_type", "channel_wise_abs_max", "moving_average_abs_max"),
    ("weight_bits", 1, "an int from 2 to 16"),
    ("activation_bits", 8.0, "an int from 2 to 16"),
    ("quantize_op_types", ["conv2d", "matmul"], "elementwise_add"),
    ("dtype", "uint8", "int8"),
    ("window_size", 0, "an int >= 1"),
    ("moving_rate", 1.5, "a float in \\[0, 1\\)"),
    ("moving_rate", 1.0, "a float in \\[0, 1\\)"),  # the op's range: 1 would freeze the scale
    ("moving_rate", float("nan"), "a float in \\[0, 1\\)"),
    ("moving_rate", True, "a float in \\[0, 1\\)"),
    ("quant_weight_only", "yes", "True or False"),
    ("not_quant_pattern", [3], "a str or a list of str"),
    ("fold_mode", "fused", "batch"),
    ("rounding", "stochastic", "half_away"),
])
def test_bad_config_values_name_the_key_and_what_is_accepted(key, value, accepted):
    with pytest.raises(ValueError, match=f"{key}=.*accepted: .*{accepted}"):
        fakequant.quant_aware(Net(), {key: value})


def test_unknown_config_key_lists_the_accepted_keys():
    with pytest.raises(ValueError, match="unknown key\\(s\\) \\['weight_quantize'\\]; accepted keys: .*weight_quantize_type"):
        fakequant.quant_aware(Net(), {"weight_quantize": "abs_max"})
    with pytest.raises(TypeError, match="config must be a dict"):
        fakequant.quant_aware(Net(), [("weight_bits", 8)])
    assert set(QUANT_CONFIG_DEFAULT) >= {"weight_quantize_type", "activation_quantize_type", "weight_bits",
                                         "activation_bits", "not_quant_pattern", "quantize_op_types", "dtype",
                                         "window_size", "moving_rate", "quant_weight_only"}


def test_untraceable_model_warns_and_still_quantizes_conv_and_mul():
    with pytest.warns(UserWarning) as record:
        q = fakequant.quant_aware(Untraceable())
    messages = [str(w.message) for w in record]
    assert any("does not trace with torch.fx" in m and "not quantized" in m for m in messages), messages
    # conv1/bn1 and dw/bn2 are attributes of a forward no graph covers: the BNs are named, not fused
    assert any("stay unfused: ['bn1', 'bn2']" in m for m in messages), messages
    # no fx and no nn.Sequential: no conv->bn pair is found, the convs are quantized alone
    assert type(q.conv1) is qat.Conv2d and type(q.dw) is qat.Conv2d and isinstance(q.bn1, nn.BatchNorm2d)
    assert isinstance(q.fc, qat.Linear) and not isinstance(q, torch.fx.GraphModule)
    assert q(data(torch.Generator().manual_seed(1))).shape == (8, 4)


def test_ahead_relu_options_add_positive_range_output_quantizers():
    config = {"activation_quantize_type": "moving_average_abs_max", "ahead_bn_relu": True,
              "ahead_linear_relu": True, "ahead_conv_relu": True, "fuse_bn": False}
    q = fakequant.quant_aware(Net(), config)
    assert q.conv1.output_fake_quant is None  # conv1 feeds bn1, not a ReLU (fuse_bn=False)
    q = fakequant.quant_aware(Net(), dict(config, fuse_bn=True))
    for name in ("conv1", "dw", "fc"):  # conv+bn->relu (module and F.relu), linear->F.relu
        ofq = getattr(q, name).output_fake_quant
        assert ofq is not None and ofq.ahead_relu, name
    assert q.out.output_fake_quant is None  # its output feeds no ReLU
    # abs_max activations: the positive-range quantizer wraps the fake quant (relu first)
    q = fakequant.quant_aware(Net(), {"ahead_linear_relu": True})
    assert isinstance(q.fc.output_fake_quant, AheadReLU)


def test_ahead_relu_keeps_resolution_for_the_positive_side():
    """A layer output with a large negative tail: after the ReLU, AHEAD_RELU's output is closer to
    the float one (the range is not spent on values the ReLU drops)."""
    gen = torch.Generator().manual_seed(2)
    x = torch.cat([torch.rand(4096, generator=gen), -20 * torch.rand(512, generator=gen)])
    fq = fqnn.AbsMaxWeightFakeQuantize(quant_min=-127, quant_max=127, ch_axis=None, rounding="half_away")
    err_plain = (F.relu(fq(x)) - F.relu(x)).abs().mean()
    err_ahead = (F.relu(AheadReLU(fq)(x)) - F.relu(x)).abs().mean()
    assert err_ahead < 0.2 * err_plain


def test_convert_matches_the_qat_model_in_eval_and_saves_int8():
    gen = torch.Generator().manual_seed(3)
    for config in ({}, {"weight_quantize_type": "channel_wise_abs_max",
                        "activation_quantize_type": "moving_average_abs_max"},
                   {"weight_quantize_type": "moving_average_abs_max", "activation_quantize_type": "range_abs_max",
                    "fold_mode": "running", "ahead_bn_relu": True}):
        q = fakequant.quant_aware(Net(), config)
        run_steps(q, gen)
        q.eval()
        x = data(gen)
        y_qat = q(x)
        frozen, int8 = fakequant.convert(q, save_int8=True)
        assert not modules_of(frozen, (qat.Conv2d, qat.Linear, qat.ConvBn2d))
        assert not modules_of(frozen, nn.BatchNorm2d)  # folded
        torch.testing.assert_close(frozen(x), y_qat, rtol=1e-5, atol=1e-5)
        assert {n for n, e in int8.items() if "weight" in e} == {"conv1", "dw", "fc", "out"}
        assert {n for n, e in int8.items() if "weight" not in e} == {"quant_dequant_0_0", "quant_dequant_0_1",
                                                                     "quant_dequant_1_0"}  # add and pool inputs
        for name, entry in ((n, e) for n, e in int8.items() if "weight" in e):
            assert entry["weight"].dtype == torch.int8
            weight = frozen.get_submodule(name)
            weight = weight.weight if hasattr(weight, "weight") else [m for m in weight if hasattr(m, "weight")][0].weight
            shape = [-1] + [1] * (weight.dim() - 1) if entry["axis"] == 0 else []
            torch.testing.assert_close(entry["weight"].float() * entry["scale"].reshape(shape), weight.detach(),
                                       rtol=1e-6, atol=0)
        # observers stopped: more data does not move the activation scales
        before = [m.scale.clone() for m in frozen.modules() if isinstance(m, fqnn.MovingAverageAbsMaxFakeQuantize)]
        frozen(10 * data(gen))
        after = [m.scale for m in frozen.modules() if isinstance(m, fqnn.MovingAverageAbsMaxFakeQuantize)]
        for a, b in zip(before, after):
            torch.testing.assert_close(a, b)
    with pytest.raises(TypeError, match="save_int8 must be True or False"):
        fakequant.convert(q, save_int8="yes")


def test_moving_rate_takes_the_ops_range():
    """moving_rate lies in [0, 1) in the facade as in the op: 0 keeps only the current batch's
    abs-max (state = 1, accum = max|x|); 1, which the op rejects, is rejected up front."""
    gen = torch.Generator().manual_seed(5)
    q = fakequant.quant_aware(nn.Sequential(nn.Linear(6, 4)), {"activation_quantize_type": "moving_average_abs_max",
                                                             "moving_rate": 0.0})
    q.train()
    for scale in (1.0, 3.0, 0.5):
        x = scale * torch.randn(5, 6, generator=gen)
        q(x)
        torch.testing.assert_close(q[0].input_fake_quant.scale, x.abs().amax().reshape(1), rtol=0, atol=0)
    x = torch.randn(5, 6, generator=gen)
    with pytest.raises(RuntimeError, match=r"moving_rate must lie in \[0, 1\)"):
        fakequant.fake_quantize_moving_average_abs_max(x, torch.ones(1), torch.ones(1), torch.ones(1), 1.0)
    with pytest.raises(ValueError, match=r"moving_rate=1.0 is not accepted; accepted: a float in \[0, 1\)"):
        fakequant.quant_aware(nn.Sequential(nn.Linear(6, 4)), {"moving_rate": 1.0})
