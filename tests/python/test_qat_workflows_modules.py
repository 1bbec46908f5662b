"""The QAT workflows a PyTorch user runs, at the level of fakequant.nn's modules: the
observer / fake-quant switches of torch.ao applied with ``model.apply``, BN freezing,
torch.compile training (aot_eager and inductor) against eager, a fresh model compiled with
``fullgraph=True``, bfloat16 / float16 models, SyncBatchNorm, evaluating before any training
step, and constructor validation. References are torch.ao's modules, ATen ops, or the formulas
written out here."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fakequant
from fakequant.nn import (AbsMaxWeightFakeQuantize, LearnableFakeQuantize, MovingAverageAbsMaxFakeQuantize,
                          MovingAverageMinMaxFakeQuantize, MovingAveragePerChannelMinMaxFakeQuantize,
                          RangeAbsMaxFakeQuantize, qat)
from fakequant.qconfig import get_qat_qconfig
from qat_helpers import aq, needs_ao, nniqat, randomize_bn

warnings.filterwarnings("ignore", category=DeprecationWarning)

EPS32 = torch.finfo(torch.float32).eps


def qconfig_of(kind):
    """The qconfigs users pick: torch.ao's x86 defaults fused ("pytorch": moving-average min/max
    weights, the composed ConvBN path), abs-max weights ("pytorch_abs_max": the fused ConvBN op,
    as the README), Paddle's ("paddle": moving_average_abs_max activations, channel_wise_abs_max
    weights with half_away rounding, fused ConvBN op)."""
    if kind == "pytorch":
        return get_qat_qconfig("pytorch")
    if kind == "pytorch_abs_max":
        return get_qat_qconfig("pytorch", weight_quantize_type="abs_max")
    return get_qat_qconfig("paddle")


def symmetric_scale(w, qmin, qmax, dims):
    """The abs-max scale per output channel, written out: max(absmax / ((qmax - qmin) / 2), eps)."""
    return torch.clamp(w.abs().amax(dim=dims) / ((qmax - qmin) / 2), min=EPS32)


class Net2d(nn.Module):
    """Conv+BN+ReLU, Conv+BN, Conv, Linear: every 2-d QAT module kind in one model, each with an
    input activation quantizer (the facade's slot) so that activation quantizers train too."""

    def __init__(self, qconfig, fold_modes=("running", "batch")):
        super().__init__()
        self.block1 = qat.ConvBnReLU2d(3, 8, 3, padding=1, qconfig=qconfig, fold_mode=fold_modes[0])
        self.block2 = qat.ConvBn2d(8, 8, 3, stride=2, padding=1, bias=True, qconfig=qconfig, fold_mode=fold_modes[1])
        self.conv = qat.Conv2d(8, 6, 1, qconfig=qconfig)
        self.fc = qat.Linear(6 * 4 * 4, 5, qconfig=qconfig)
        for m in (self.block1, self.block2, self.conv, self.fc):
            m.input_fake_quant = qconfig.activation()
            if isinstance(m, qat.ConvBn2d):
                randomize_bn(m.bn)

    def forward(self, x):
        x = self.conv(F.relu(self.block2(self.block1(x))))
        return self.fc(x.flatten(1))


def net2d_input(batch=4):
    return torch.randn(batch, 3, 8, 8)


class NetNd(nn.Module):
    """The 1-d, 3-d, transposed and embedding QAT modules in one model."""

    def __init__(self, qconfig):
        super().__init__()
        self.emb = qat.Embedding(10, 4, qconfig=qconfig)
        self.bag = qat.EmbeddingBag(10, 4, mode="sum", qconfig=qconfig)
        self.c1 = qat.ConvBnReLU1d(4, 6, 3, padding=1, qconfig=qconfig, fold_mode="running")
        self.c1b = qat.ConvBn1d(6, 6, 3, qconfig=qconfig, fold_mode="batch")
        self.c1p = qat.Conv1d(6, 4, 1, qconfig=qconfig)
        self.t1 = qat.ConvTranspose1d(4, 4, 3, stride=2, qconfig=qconfig)
        self.c3 = qat.ConvBnReLU3d(1, 4, 3, padding=1, qconfig=qconfig, fold_mode="running")
        self.c3p = qat.Conv3d(4, 2, 1, qconfig=qconfig)
        self.t2 = qat.ConvTranspose2d(2, 3, 2, stride=2, qconfig=qconfig)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                randomize_bn(m)

    def forward(self, idx, vol):
        e = self.emb(idx).transpose(1, 2) + self.bag(idx).unsqueeze(-1)  # [N, 4, L]
        a = self.t1(self.c1p(self.c1b(self.c1(e)))).mean(dim=(1, 2))  # [N]
        v = self.c3p(self.c3(vol))  # [N, 2, D, H, W]
        b = self.t2(v.mean(dim=2)).mean(dim=(1, 2, 3))
        return a + b


def netnd_input(batch=3):
    return torch.randint(0, 10, (batch, 7)), torch.randn(batch, 1, 3, 4, 4)


# ---------------------------------------------------------------------------------------
# 1. torch.ao's observer / fake-quant switches with model.apply; BN freezing


@needs_ao
@pytest.mark.parametrize("kind", ["pytorch", "pytorch_abs_max", "paddle"])
def test_torch_ao_switches_reach_every_module(kind):
    """disable_observer / enable_observer / disable_fake_quant / enable_fake_quant of torch.ao,
    applied with model.apply, on Conv2d, Linear, ConvBn2d, ConvBnReLU2d and every fake quantizer
    they hold: with observers off the model trains (the fused ConvBN path crashed), every scale
    stays what the last observing step left, and with fake quant off the model is the float one."""
    torch.manual_seed(0)
    model = Net2d(qconfig_of(kind)).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def step():
        model(net2d_input()).square().mean().backward()
        opt.step()
        opt.zero_grad()

    step()
    fake_quants = [m for m in model.modules() if isinstance(m, fakequant.nn.FakeQuantizeBase)]
    assert len(fake_quants) == 8  # 4 weight + 4 input quantizers
    model.apply(aq.disable_observer)
    assert all(m.observer_enabled.item() == 0 and not m._observer_on for m in fake_quants)
    frozen = [m.calculate_qparams()[0].clone() for m in fake_quants]
    for _ in range(2):
        step()  # weights and BN statistics move; the scales do not
    for m, scale in zip(fake_quants, frozen):
        assert torch.equal(m.calculate_qparams()[0], scale), type(m).__name__

    # With frozen scales the eval output is the conv of the weights quantized with them.
    model.eval()
    x = net2d_input()
    conv = model.conv
    qmin, qmax = conv.weight_fake_quant.quant_min, conv.weight_fake_quant.quant_max
    scale, zero_point = conv.weight_fake_quant.calculate_qparams()
    x_conv = torch.randn(2, 8, 4, 4)
    expected = F.conv2d(conv.input_fake_quant(x_conv), torch.fake_quantize_per_channel_affine(
        conv.weight, scale, zero_point, 0, qmin, qmax) if kind != "paddle" else fake_quant_half_away(
        conv.weight, scale, qmin, qmax), conv.bias)
    torch.testing.assert_close(conv(x_conv), expected, rtol=0, atol=0)

    model.apply(aq.disable_fake_quant)
    assert all(m.fake_quant_enabled.item() == 0 and not m._fake_quant_on for m in fake_quants)
    y = model(x)
    torch.testing.assert_close(y, float_net2d(model, x), rtol=1e-5, atol=1e-5)

    model.apply(aq.enable_fake_quant)
    model.apply(aq.enable_observer)
    model.train()
    step()
    changed = [not torch.equal(m.calculate_qparams()[0], s) for m, s in zip(fake_quants, frozen)]
    assert all(changed), changed


QUANTIZERS = {
    "MovingAverageAbsMax": lambda: MovingAverageAbsMaxFakeQuantize(),
    "RangeAbsMax": lambda: RangeAbsMaxFakeQuantize(window_size=4),
    "MovingAverageMinMax": lambda: MovingAverageMinMaxFakeQuantize(),
    "MovingAveragePerChannelMinMax": lambda: MovingAveragePerChannelMinMaxFakeQuantize(ch_axis=1),
    "Learnable": lambda: LearnableFakeQuantize(qscheme=torch.per_channel_affine, ch_axis=1, quant_min=-128,
                                               quant_max=127, dtype=torch.qint8),
    "AbsMaxWeight": lambda: AbsMaxWeightFakeQuantize(ch_axis=1),
    "AbsMaxWeightPerTensor": lambda: AbsMaxWeightFakeQuantize(ch_axis=None),
}


@needs_ao
@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_torch_ao_switches_on_every_fake_quantizer(name):
    """Each fake quantizer under model.apply of torch.ao's four switches: observer off keeps the
    qparams whatever the data, fake quant off is the identity, both back on observe and quantize
    again (a larger batch moves the qparams)."""
    m = QUANTIZERS[name]().train()
    holder = nn.Sequential(m)
    x = torch.randn(4, 6, 5)
    m(x)
    holder.apply(aq.disable_observer)
    scale, zero_point = (t.clone() for t in m.calculate_qparams())
    for _ in range(2):
        m(torch.randn(4, 6, 5) * 7)
        s2, z2 = m.calculate_qparams()
        assert torch.equal(s2, scale) and torch.equal(z2, zero_point)
    holder.apply(aq.disable_fake_quant)
    x = torch.randn(4, 6, 5)
    assert torch.equal(m(x), x)
    holder.apply(aq.enable_fake_quant)
    holder.apply(aq.enable_observer)
    big = torch.randn(4, 6, 5) * 50
    y = m(big)
    assert not torch.equal(y, big)
    if name != "Learnable":  # LSQ's qparams are parameters: observing initialises them once only
        assert not torch.equal(m.calculate_qparams()[0], scale)


def fake_quant_half_away(w, scale, qmin, qmax):
    """Per-output-channel symmetric quant-dequant with Paddle's round-half-away, written out."""
    s = scale.reshape([-1] + [1] * (w.dim() - 1))
    q = torch.clamp(torch.sign(w) * torch.floor(w.abs() * (1.0 / s) + 0.5), qmin, qmax)
    return q * s


def float_net2d(model, x):
    """The float network of an eval Net2d: BN folded with the running statistics, no quantization."""
    def conv_bn(m, x):
        w, b = m.folded_weight_and_bias()
        return F.conv2d(x, w, b, m.stride, m.padding)

    x = F.relu(conv_bn(model.block1, x))
    x = F.relu(conv_bn(model.block2, x))
    x = F.conv2d(x, model.conv.weight, model.conv.bias)
    return F.linear(x.flatten(1), model.fc.weight, model.fc.bias)


@pytest.mark.parametrize("fold_mode", qat.FOLD_MODES)
@pytest.mark.parametrize("relu", [False, True])
def test_fused_convbn_stores_the_weight_scales(fold_mode, relu):
    """The fused ConvBN op quantizes the fold W * s; the module stores that quantizer's scales
    (the formula of the fold, written out) in its weight quantizer, so observer-off steps and
    convert use them."""
    torch.manual_seed(1)
    cls = qat.ConvBnReLU2d if relu else qat.ConvBn2d
    m = cls(4, 6, 3, bias=True, qconfig=qconfig_of("paddle"), fold_mode=fold_mode)
    randomize_bn(m.bn)
    x = torch.randn(5, 4, 7, 7)
    running_var = m.bn.running_var.clone()
    m(x)
    fq = m.weight_fake_quant
    gamma = m.bn.weight.detach().double()
    if fold_mode == "batch":
        z = F.conv2d(x.double(), m.weight.detach().double())
        s = gamma / torch.sqrt(z.var(dim=(0, 2, 3), unbiased=False) + m.bn.eps)
    else:
        s = gamma / torch.sqrt(running_var.double() + m.bn.eps)
    fold = m.weight.detach() * s.float().reshape(-1, 1, 1, 1)
    expected = symmetric_scale(fold, fq.quant_min, fq.quant_max, (1, 2, 3))
    # batch statistics: the op's shifted double sums and this float64 variance agree to ~1e-15
    torch.testing.assert_close(fq.scale, expected, rtol=1e-6 if fold_mode == "batch" else 0, atol=0)
    m.eval()
    w_eval, b_eval = m.eval_folded_weight_and_bias()
    y_eval = m(x)
    fq.disable_observer()  # now the composed path, with the stored scale of the eval fold
    stored = fq.scale.clone()
    torch.testing.assert_close(m(x), y_eval, rtol=0, atol=0)
    assert torch.equal(fq.scale, stored)
    torch.testing.assert_close(stored, symmetric_scale(w_eval, fq.quant_min, fq.quant_max, (1, 2, 3)), rtol=0, atol=0)


@needs_ao
@pytest.mark.parametrize("kind", ["pytorch_abs_max", "paddle"])
def test_convert_after_disable_observer(kind):
    """The recipe's last epochs with observers disabled, then torch.ao's convert with our
    mapping and fakequant.convert: both run, and fakequant.convert equals the QAT eval output."""
    torch.manual_seed(2)
    model = Net2d(qconfig_of(kind)).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for epoch in range(3):
        if epoch == 1:
            model.apply(aq.disable_observer)
        if epoch == 2:
            model.apply(qat.freeze_bn_stats)
        model(net2d_input()).square().mean().backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    x = net2d_input()
    y_qat = model(x)
    frozen = fakequant.convert(model)
    torch.testing.assert_close(frozen(x), y_qat, rtol=0, atol=0)


@needs_ao
def test_freeze_bn_stats_on_every_convbn_module():
    """torch.ao's freeze_bn_stats / update_bn_stats (the tutorial's
    ``model.apply(torch.ao.nn.intrinsic.qat.freeze_bn_stats)``, under every name torch exports
    it) and fakequant.nn.qat's freeze and release the BN statistics of our ConvBn modules (every
    dimension) and torch.ao's. torch.ao's own function matches its six classes by exact type;
    importing fakequant extends it to ours."""
    import torch.nn.intrinsic.qat as nniqat_alias
    from torch.ao.nn.intrinsic.qat.modules import conv_fused

    torch.manual_seed(3)
    ours = nn.ModuleList([qat.ConvBn1d(3, 4, 3), qat.ConvBnReLU1d(3, 4, 3), qat.ConvBn2d(3, 4, 3),
                          qat.ConvBnReLU2d(3, 4, 3), qat.ConvBn3d(3, 4, 3), qat.ConvBnReLU3d(3, 4, 3)])
    theirs = nniqat.ConvBn2d(3, 4, 3, qconfig=aq.get_default_qat_qconfig("x86"))
    model = nn.ModuleList([ours, theirs]).train()
    for freeze, update in ((nniqat.freeze_bn_stats, nniqat.update_bn_stats),
                           (conv_fused.freeze_bn_stats, conv_fused.update_bn_stats),
                           (nniqat_alias.freeze_bn_stats, nniqat_alias.update_bn_stats),
                           (qat.freeze_bn_stats, qat.update_bn_stats)):
        model.apply(freeze)
        assert all(m.freeze_bn and not m.bn.training for m in ours) and theirs.freeze_bn
        model.apply(update)
        assert not any(m.freeze_bn for m in ours) and not theirs.freeze_bn
    model.apply(nniqat.freeze_bn_stats)
    inputs = [torch.randn(2, 3, 6), torch.randn(2, 3, 6), torch.randn(2, 3, 6, 6), torch.randn(2, 3, 6, 6),
              torch.randn(2, 3, 5, 5, 5), torch.randn(2, 3, 5, 5, 5)]
    for m, x in zip(ours, inputs):
        assert m.freeze_bn and not m.bn.training
        before = {k: v.clone() for k, v in m.bn.state_dict().items()}
        m.train()
        m(x).sum().backward()
        for k, v in m.bn.state_dict().items():
            assert torch.equal(v, before[k]), k
    assert theirs.freeze_bn
    model.apply(qat.update_bn_stats)
    for m, x in zip(ours, inputs):
        before = m.bn.running_mean.clone()
        m(x)
        assert not torch.equal(m.bn.running_mean, before)


# ---------------------------------------------------------------------------------------
# 2. torch.compile trains as eager; 3. a fresh model compiles with fullgraph=True


def assert_same(a, b, what, tol):
    if tol is None:
        assert torch.equal(a, b), f"{what}: max diff {(a.double() - b.double()).abs().max().item()}"
    else:
        torch.testing.assert_close(a, b, msg=what, **tol)


def train_compiled_against_eager(make_model, make_input, backend, steps, tol=None):
    """Train a fresh model and a copy compiled with ``backend`` and ``fullgraph=True`` from its
    first step for ``steps`` SGD steps on the same batches; compare outputs, the gradients of
    the input and of every parameter, and every parameter and buffer after each step (the eval
    output follows from the state). ``tol=None``: bit-exact."""
    torch._dynamo.reset()  # each test's fresh modules would count towards the recompile limit
    torch.manual_seed(4)
    eager = make_model().train()
    compiled_mod = copy.deepcopy(eager)
    compiled = torch.compile(compiled_mod, backend=backend, fullgraph=True)
    opt_e = torch.optim.SGD(eager.parameters(), lr=0.05, momentum=0.9)
    opt_c = torch.optim.SGD(compiled_mod.parameters(), lr=0.05, momentum=0.9)
    for step in range(steps):
        inputs = make_input()
        float_inputs = [t.requires_grad_() for t in inputs if t.is_floating_point()]
        ye = eager(*inputs)
        inputs_c = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
        yc = compiled(*inputs_c)
        assert_same(yc, ye, f"step {step} output", tol)
        g = torch.randn_like(ye)
        ye.backward(g)
        yc.backward(g)
        for t, tc in zip(float_inputs, [t for t in inputs_c if t.is_floating_point()]):
            assert_same(tc.grad, t.grad, f"step {step} input grad", tol)
        for (name, p), pc in zip(eager.named_parameters(), compiled_mod.parameters()):
            assert_same(pc.grad, p.grad, f"step {step} grad {name}", tol)
        opt_e.step()
        opt_c.step()
        opt_e.zero_grad()
        opt_c.zero_grad()
        for (name, t), tc in zip(eager.state_dict().items(), compiled_mod.state_dict().values()):
            assert_same(tc, t, f"step {step} {name}", tol)


@pytest.mark.parametrize("kind", ["pytorch", "paddle"])
def test_compiled_training_equals_eager_aot_eager(kind):
    """aot_eager runs the graph eager runs: bit-exact, from a fresh model with fullgraph=True
    (the first forward used to resize per-channel buffers: graph breaks). "pytorch": the
    composed ConvBN path in both fold modes (running mode gave gradients 3% off: its backward
    read running_var after the in-place update); "paddle": the fused op in both fold modes."""
    train_compiled_against_eager(lambda: Net2d(qconfig_of(kind)), lambda: (net2d_input(),), "aot_eager", steps=3)


def test_compiled_training_equals_eager_aot_eager_other_layers():
    """Embedding, EmbeddingBag, Conv1d/3d, ConvBn(ReLU)1d/3d, ConvTranspose1d/2d."""
    train_compiled_against_eager(lambda: NetNd(qconfig_of("pytorch")), netnd_input, "aot_eager", steps=2)


class ConvBnOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = qat.ConvBnReLU2d(3, 4, 3, qconfig=qconfig_of("pytorch"), fold_mode="running")
        randomize_bn(self.block.bn)

    def forward(self, x):
        return self.block(x)


def test_compiled_training_equals_eager_inductor():
    """Inductor generates its own kernels (fused pointwise ops, its own BN reductions): values
    agree to float32 rounding, not bit for bit. Tolerance 1e-4 relative / 1e-5 absolute: a
    1-ulp difference in a fold can move one weight by one quantization level (1/127 of its
    channel's range), which shifts outputs by about that much; the bug this guards against (the
    backward of the composed running-mode ConvBN reading the updated running_var) was 3% to
    several times off. One small layer: inductor compiles take long on CI's two cores."""
    train_compiled_against_eager(ConvBnOnly, lambda: (torch.randn(4, 3, 6, 6),), "inductor", steps=2,
                                 tol=dict(rtol=1e-4, atol=1e-5))


def test_per_channel_state_is_sized_at_construction():
    """What lets the compiled tests above start from a fresh model: every per-channel weight
    quantizer holds [C] state before any forward (the first forward used to resize it)."""
    model = nn.ModuleList([Net2d(qconfig_of("pytorch")), Net2d(qconfig_of("paddle")), NetNd(qconfig_of("pytorch"))])
    sizes = {}
    for name, m in model.named_modules():
        if isinstance(m, (MovingAverageMinMaxFakeQuantize, AbsMaxWeightFakeQuantize)) and m.is_per_channel:
            sizes[name] = m.scale.numel()
    owner = {name.rsplit(".weight_fake_quant", 1)[0]: n for name, n in sizes.items()}
    assert len(owner) == 4 + 4 + 9
    for name, n in owner.items():
        layer = model.get_submodule(name)
        axis = 1 if isinstance(layer, (nn.ConvTranspose1d, nn.ConvTranspose2d)) else 0
        assert n == layer.weight.shape[axis], name


# ---------------------------------------------------------------------------------------
# 5. bfloat16 / float16 models


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["pytorch", "paddle"])
def test_half_precision_model_trains_like_float32(kind, dtype):
    """model.to(bfloat16 / float16) then training: quantizer state and the folded BN stay
    float32 (the ops and the BN statistics need it), and three SGD steps track a float32 copy of
    the model trained on the same batches. Tolerances (relative L2): outputs 0.15 (measured
    0.03-0.09: rounding inputs and weights to 16 bits moves values across 8-bit quantization
    boundaries, one step each, compounded over four quantized layers), parameters 1e-2
    (measured at most 5e-3 for bfloat16, 1.3e-3 for float16)."""
    torch.manual_seed(5)
    reference = Net2d(qconfig_of(kind)).train()
    model = copy.deepcopy(reference).to(dtype)
    for m in model.modules():
        if isinstance(m, fakequant.nn.FakeQuantizeBase) or isinstance(m, nn.modules.batchnorm._BatchNorm):
            for name, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
                if t.is_floating_point():
                    assert t.dtype == torch.float32, (type(m).__name__, name, t.dtype)
    assert model.conv.weight.dtype == dtype
    opt_ref = torch.optim.SGD(reference.parameters(), lr=0.05)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def rel(a, b):
        return ((a.float() - b.float()).norm() / b.float().norm()).item()

    for _ in range(3):
        x = net2d_input(16)
        y_ref, y = reference(x), model(x.to(dtype))
        assert y.dtype == dtype and torch.isfinite(y).all()
        assert rel(y, y_ref) < 0.15
        y_ref.square().mean().backward()
        y.float().square().mean().backward()
        opt_ref.step()
        opt.step()
        opt_ref.zero_grad()
        opt.zero_grad()
    for (name, p_ref), p in zip(reference.named_parameters(), model.parameters()):
        assert rel(p, p_ref) < 1e-2, name
    for (name, b_ref), b in zip(reference.named_buffers(), model.buffers()):
        assert b.dtype == b_ref.dtype, name  # every buffer is quantizer or folded-BN state: float32, ints
        if b.is_floating_point():
            assert torch.isfinite(b).all(), name
    reference.eval()
    model.eval()
    x = net2d_input(16)
    assert rel(model(x.to(dtype)), reference(x)) < 0.15


def test_state_dtype_survives_double_and_device_moves():
    """.double() (gradient checks) keeps quantizer state float32; the folded BN follows it;
    ints stay ints; a device move moves everything."""
    m = qat.ConvBn2d(3, 4, 3, qconfig=qconfig_of("pytorch")).double()
    assert m.weight.dtype == torch.float64 and m.bn.running_var.dtype == torch.float64
    wfq = m.weight_fake_quant
    assert wfq.scale.dtype == torch.float32 and wfq.zero_point.dtype == torch.int32
    assert wfq.activation_post_process.min_val.dtype == torch.float32
    assert wfq.observer_enabled.dtype == torch.int64
    lsq = LearnableFakeQuantize(qscheme=torch.per_channel_affine, ch_axis=0)
    lsq.init_channels(3)
    lsq.to(torch.bfloat16)
    assert lsq.scale.dtype == torch.float32 and isinstance(lsq.scale, nn.Parameter) and lsq.scale.shape == (3,)
    m.to("meta")
    assert wfq.scale.device.type == "meta" and wfq.scale.dtype == torch.float32


# ---------------------------------------------------------------------------------------
# 6. SyncBatchNorm


@pytest.mark.parametrize("kind", ["pytorch", "paddle"])
def test_sync_batchnorm_without_a_process_group_trains_on_its_own_batch(kind):
    """convert_sync_batchnorm turns the ConvBn modules' bn into SyncBatchNorm. With no process
    group the module folds with its own batch statistics, as SyncBatchNorm does on one process:
    training, eval and frozen BN give the values and statistics of the unconverted model (across
    ranks: test_distributed_models.py)."""
    torch.manual_seed(6)
    model = Net2d(qconfig_of(kind))
    model(net2d_input())  # one training step of statistics
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
    assert isinstance(synced.block1.bn, nn.SyncBatchNorm)
    x = net2d_input()
    torch.testing.assert_close(synced(x), model(x), rtol=0, atol=0)
    for name, buf in model.named_buffers():
        assert torch.equal(synced.get_buffer(name), buf), name
    synced.eval()
    model.eval()
    torch.testing.assert_close(synced(x), model(x), rtol=0, atol=0)
    synced.apply(qat.freeze_bn_stats)
    synced.train()
    before = synced.block1.bn.running_mean.clone()
    synced(x).sum().backward()
    assert torch.equal(synced.block1.bn.running_mean, before)


# ---------------------------------------------------------------------------------------
# 8. Evaluating before any training step


def f32(v):
    return torch.tensor(v, dtype=torch.float32)


def paddle_quant(x, scale, bits=8):
    """Paddle's symmetric quant-dequant with round-half-away, written out (scale: the abs-max)."""
    bin_cnt = 2 ** (bits - 1) - 1
    step = torch.clamp(f32(scale) / bin_cnt, min=torch.finfo(torch.float32).tiny)
    q = torch.clamp(torch.sign(x) * torch.floor(x.abs() * (1.0 / step) + 0.5), -bin_cnt, bin_cnt)
    return q * step


def test_unobserved_paddle_quantizers_observe_their_first_batch_in_eval():
    torch.manual_seed(7)
    ma = MovingAverageAbsMaxFakeQuantize(moving_rate=0.9).eval()
    x = torch.randn(6, 5) * 3
    y = ma(x)
    # Paddle's update from empty accumulators (a calibration): state 1, accum = scale = max|x|
    scale = f32(x.abs().max().item())
    assert (ma.scale.item(), ma.state.item(), ma.accum.item()) == (scale.item(), 1.0, scale.item())
    assert torch.equal(y, paddle_quant(x, scale))
    x2 = torch.randn(6, 5) * 10
    assert torch.equal(ma(x2), paddle_quant(x2, scale)) and ma.scale.item() == scale.item()  # later: stored scale

    ra = RangeAbsMaxFakeQuantize(window_size=4).eval()
    y = ra(x)
    assert ra.iter.item() == 1 and ra.scale.item() == x.abs().max().item()
    assert torch.equal(y, paddle_quant(x, x.abs().max()))
    ra(x2)
    assert ra.iter.item() == 1

    trained = MovingAverageAbsMaxFakeQuantize().train()
    trained(torch.randn(8) * 2)
    assert trained.state.item() == f32(1.9).item()  # in training: Paddle's update from state 1, accum 1
    loaded = MovingAverageAbsMaxFakeQuantize().eval()
    loaded.load_state_dict(trained.state_dict())
    before = loaded.scale.clone()
    loaded(x2)
    assert torch.equal(loaded.scale, before)  # a loaded, observed state is not touched in eval

    off = RangeAbsMaxFakeQuantize().eval()
    off.disable_observer()
    with pytest.warns(UserWarning, match="never observed a batch and its observer is disabled"):
        y = off(x)
    assert torch.equal(y, paddle_quant(x, 0.001))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        off(x)  # once


def small_float_model():
    torch.manual_seed(8)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    randomize_bn(model[1])
    return model


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("activation", ["moving_average_abs_max", "range_abs_max"])
def test_evaluating_right_after_quant_aware_is_close_to_float(activation):
    """quant_aware then eval, no training step: the activation quantizers calibrate on the first
    batch, so the model is the float model up to 8-bit rounding (it used to clip every
    activation to the initial scale 0.001: a relative error near 1)."""
    model = small_float_model().eval()
    qat_model = fakequant.quant_aware(model.train(), {"weight_quantize_type": "channel_wise_abs_max",
                                                      "activation_quantize_type": activation}).eval()
    x = torch.randn(16, 3, 6, 6)
    model.eval()
    assert rel_err(qat_model(x), model(x)) < 0.05
    x2 = torch.randn(16, 3, 6, 6)
    assert rel_err(qat_model(x2), model(x2)) < 0.05


@needs_ao
def test_evaluating_right_after_prepare_qat_is_close_to_float():
    """The same through torch.ao's eager prepare_qat with the Paddle qconfig and our mapping."""
    model = small_float_model().train()
    fused = aq.fuse_modules_qat(copy.deepcopy(model), [["0", "1", "2"], ["3", "4"]])
    fused.qconfig = get_qat_qconfig("paddle")
    prepared = aq.prepare_qat(fused, mapping=qat.get_qat_module_mappings()).eval()
    assert isinstance(prepared[0], qat.ConvBnReLU2d)
    x = torch.randn(16, 3, 6, 6)
    assert rel_err(prepared(x), model.eval()(x)) < 0.05


# ---------------------------------------------------------------------------------------
# Bad input: validated once, at construction, with the ops' ranges


def paddle_qconfig(**kwargs):
    return get_qat_qconfig("paddle", **kwargs)


#: ``(constructor, keyword arguments, error, message)``: arguments refused with the ops' ranges.
BAD_ARGUMENTS = [
    (MovingAverageAbsMaxFakeQuantize, {"bits": 8.7}, TypeError,
     r"MovingAverageAbsMaxFakeQuantize: bits must be an integer, got 8.7"),
    (RangeAbsMaxFakeQuantize, {"bits": True}, TypeError, r"bits must be an integer, got True"),
    (RangeAbsMaxFakeQuantize, {"bits": 17}, ValueError, r"bits must lie in \[2, 16\], got 17"),
    (RangeAbsMaxFakeQuantize, {"window_size": 2.5}, TypeError,
     r"RangeAbsMaxFakeQuantize: window_size must be an integer, got 2.5"),
    (RangeAbsMaxFakeQuantize, {"window_size": 0}, ValueError, r"window_size must be >= 1, got 0"),
    *[(MovingAverageAbsMaxFakeQuantize, {"moving_rate": rate}, ValueError, r"moving_rate must lie in \[0.0, 1.0\)")
      for rate in (1.0, -0.1, float("nan"), float("inf"))],
    *[(MovingAverageMinMaxFakeQuantize, {"averaging_constant": const}, ValueError,
       r"averaging_constant must lie in \[0.0, 1.0\]") for const in (1.5, float("nan"))],
    (AbsMaxWeightFakeQuantize, {"quant_min": -127, "quant_max": 127.5}, TypeError,
     r"AbsMaxWeightFakeQuantize: quant_max must be an integer, got 127.5"),
    (AbsMaxWeightFakeQuantize, {"eps": 0.0}, ValueError, r"eps must be finite and >= 1.17"),
    (LearnableFakeQuantize, {"scale": 0.0}, ValueError, r"LearnableFakeQuantize: scale must lie in"),
    (MovingAveragePerChannelMinMaxFakeQuantize, {"ch_axis": 0.5}, TypeError, r"ch_axis must be an integer, got 0.5"),
    (paddle_qconfig, {"weight_bits": 1}, ValueError, r"get_qat_qconfig: weight_bits must lie in \[2, 16\], got 1"),
    (paddle_qconfig, {"moving_rate": 1.0}, ValueError,
     r"get_qat_qconfig: moving_rate must lie in \[0.0, 1.0\), got 1.0"),
]


@pytest.mark.parametrize("make, kwargs, error, match", BAD_ARGUMENTS,
                         ids=[f"{make.__name__}{kwargs}" for make, kwargs, *_ in BAD_ARGUMENTS])
def test_constructor_arguments_are_validated_with_the_ops_ranges(make, kwargs, error, match):
    with pytest.raises(error, match=match):
        make(**kwargs)


def test_constructor_arguments_at_the_ends_of_the_ops_ranges_are_accepted_and_run():
    x = torch.randn(4, 5)
    for m in (MovingAverageAbsMaxFakeQuantize(moving_rate=0.0), MovingAverageAbsMaxFakeQuantize(moving_rate=0.999),
              RangeAbsMaxFakeQuantize(bits=2, window_size=1), MovingAverageAbsMaxFakeQuantize(bits=16),
              MovingAverageMinMaxFakeQuantize(averaging_constant=1.0)):
        assert torch.isfinite(m(x)).all()


def test_channel_axis_out_of_range_names_it():
    with pytest.raises(IndexError, match=r"MovingAveragePerChannelMinMaxFakeQuantize: ch_axis=3 is out of range "
                                         r"for a 2-d input"):
        MovingAveragePerChannelMinMaxFakeQuantize(ch_axis=3)(torch.randn(4, 5))
    with pytest.raises(IndexError, match=r"LearnableFakeQuantize: ch_axis=3 is out of range for a 2-d input"):
        LearnableFakeQuantize(qscheme=torch.per_channel_affine, ch_axis=3)(torch.randn(4, 5))
    with pytest.raises(IndexError, match=r"AbsMaxWeightFakeQuantize: ch_axis=3 is out of range for a 2-d input"):
        qat.Linear(5, 4, qconfig=qat.QConfig(activation=None, weight=lambda **_: AbsMaxWeightFakeQuantize(ch_axis=3)))


# ---------------------------------------------------------------------------------------
# A NaN / inf batch through an observer


@pytest.mark.parametrize("cls", [MovingAverageAbsMaxFakeQuantize, RangeAbsMaxFakeQuantize,
                                 MovingAverageMinMaxFakeQuantize])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_one_non_finite_batch_does_not_make_a_quantizer_unusable(cls, bad):
    """The policy (docs/numerics.md, "Non-finite statistics"): the bad batch's output is
    poisoned (NaN), its statistics are not applied, and the quantizer goes on exactly as one that
    never saw that batch."""
    m = cls().train()
    first = torch.randn(32)
    m(first)
    twin = copy.deepcopy(m)  # never sees the bad batch
    x = torch.randn(32)
    x[5] = bad
    assert torch.isnan(m(x)).all()
    for _ in range(3):
        x = torch.randn(32)
        y = m(x)
        assert torch.isfinite(y).all() and torch.equal(y, twin(x))
    for a, b in zip(m.calculate_qparams(), twin.calculate_qparams()):
        assert torch.equal(a, b)
    assert torch.isfinite(m.calculate_qparams()[0]).all()
