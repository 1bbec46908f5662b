"""Conv + BN fusion uses only pairs a graph proves (fuse_conv_bn and quant_aware's fuse_bn).

Every model here has a data-dependent branch in its top-level forward, so torch.fx cannot
trace it; the pairs then come from the submodules that trace and are called whole, and from
plain nn.Sequential containers. The reference is the float model itself: eval outputs must
not change.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fakequant
from fakequant.nn import qat


def randomize_bn(bn, gen):
    with torch.no_grad():
        c = bn.num_features
        bn.running_mean.copy_(torch.randn(c, generator=gen))
        bn.running_var.copy_(torch.rand(c, generator=gen) * 2 + 0.2)
        bn.weight.copy_(torch.randn(c, generator=gen))
        bn.bias.copy_(torch.randn(c, generator=gen))


def trained_like(model, gen):
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            randomize_bn(m, gen)
    return model.eval()


def batch_norms(model):
    return {n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


class OrderIsNotFlow(nn.Module):
    """``seq`` holds a conv then a BN, but the forward feeds the BN from another conv."""

    def __init__(self):
        super().__init__()
        self.seq = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.other = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        if x.sum() > 1e9:  # data-dependent: torch.fx cannot trace it
            x = x * 0
        return self.seq[1](self.other(x)) + self.seq[0](x)


class Parallel(nn.Sequential):
    """A Sequential subclass whose forward is not the chain: BN (child 1) is fed by child 2."""

    def forward(self, x):
        return self[0](x) + self[1](self[2](x))


class CalledWhole(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Parallel(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.Conv2d(3, 8, 3, padding=1, bias=False))

    def forward(self, x):
        if x.sum() > 1e9:
            x = x * 0
        return self.block(x)


class Attributes(nn.Module):
    """Conv and BN are attributes of the untraceable module itself: no graph shows the flow."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        if x.sum() > 1e9:
            x = x * 0
        return self.bn(self.conv(x))


class ConvBnReLU(nn.Module):
    """Traces on its own."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class Untraceable(nn.Module):
    """Does not trace; raises in the forward only for huge inputs."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        if x.sum() > 1e9:
            x = x * 0
        return self.bn(self.conv(x))


class Nested(nn.Module):
    """Traceable blocks called whole, a plain Sequential holding an untraceable block, and a
    1-D conv + BN pair inside a Sequential."""

    def __init__(self):
        super().__init__()
        self.stem = ConvBnReLU(3, 8)
        self.body = nn.Sequential(Untraceable(8, 8), nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Sequential(nn.Conv1d(8, 4, 3, padding=1), nn.BatchNorm1d(4))

    def forward(self, x):
        if x.sum() > 1e9:
            x = x * 0
        x = self.body(self.stem(x))
        return self.head(x.flatten(2))


@pytest.mark.parametrize("make, seed, match, unfused", [
    # the forward does not feed the BN from the conv before it in the Sequential: no fusion by order
    pytest.param(OrderIsNotFlow, 20, r"does not trace with torch.fx.*stay unfused: \['seq.1'\]", {"seq.1"},
                 id="order_is_not_flow"),
    # conv and BN are attributes of the untraceable module: named in the warning
    pytest.param(Attributes, 22, r"Attributes does not trace.*stay unfused: \['bn'\]", {"bn"}, id="attributes"),
])
def test_fuse_conv_bn_warns_and_leaves_a_pair_no_graph_proves(make, seed, match, unfused):
    gen = torch.Generator().manual_seed(seed)
    model = trained_like(make(), gen)
    x = torch.randn(2, 3, 6, 6, generator=gen)
    with pytest.warns(UserWarning, match=match):
        fused = fakequant.fuse_conv_bn(model)
    assert batch_norms(fused) == unfused
    torch.testing.assert_close(fused(x), model(x), rtol=0, atol=0)  # nothing was fused


def test_fuse_conv_bn_fuses_the_pair_the_graph_of_a_sequential_subclass_proves():
    gen = torch.Generator().manual_seed(21)
    model = trained_like(CalledWhole(), gen)
    x = torch.randn(2, 3, 6, 6, generator=gen)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every BN is covered by a graph: no warning
        fused = fakequant.fuse_conv_bn(model)
    assert not batch_norms(fused)
    assert fused.block[2].bias is not None  # the BN went into the conv that feeds it (child 2, not child 0)
    torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-5)


def test_fuse_conv_bn_fuses_what_traceable_parts_and_plain_sequentials_prove():
    gen = torch.Generator().manual_seed(23)
    model = trained_like(Nested(), gen)
    x = torch.randn(2, 3, 5, 5, generator=gen)
    with pytest.warns(UserWarning, match=r"stay unfused: \['body.0.bn'\]") as record:
        fused = fakequant.fuse_conv_bn(model)
    assert len(record) == 1
    # stem: its own graph; body.1/body.2: the Sequential's order; head: Conv1d + BatchNorm1d.
    # body.0 does not trace and holds its conv and BN as attributes: unproven, left alone.
    assert batch_norms(fused) == {"body.0.bn"}
    torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-5)


def test_quant_aware_fuse_bn_uses_only_proven_pairs():
    gen = torch.Generator().manual_seed(24)
    model = trained_like(OrderIsNotFlow(), gen)
    with pytest.warns(UserWarning, match=r"quant_aware: OrderIsNotFlow does not trace.*\['seq.1'\]"):
        q = fakequant.quant_aware(model, {"quantize_op_types": ["conv2d"]})
    assert type(q.seq[0]) is qat.Conv2d and isinstance(q.seq[1], nn.BatchNorm2d)  # not fused into seq.0
    q = fakequant.quant_aware(trained_like(CalledWhole(), gen), {"quantize_op_types": ["conv2d"]})
    assert isinstance(q.block[2], qat.ConvBn2d) and isinstance(q.block[1], nn.Identity)
    assert type(q.block[0]) is qat.Conv2d
