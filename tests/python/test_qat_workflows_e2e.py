"""QAT workflows end to end on real data: scikit-learn's bundled digits (8x8 images, 10 classes).

A small CNN with Conv+BN+ReLU blocks is trained in float32, then quantization-aware from
those weights by (a) the PaddleSlim-style facade with Paddle configs and (b) torch.ao's eager
prepare_qat with fakequant's mappings and the PyTorch tutorial's recipe (observers disabled,
then BN frozen, for the last epochs); each is converted. Checked: accuracy within 1 point of
float32, the converted model against the QAT model's eval output, save / load, and training
under torch.compile (aot_eager) against eager (the facade's models).
"""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fakequant
from fakequant.nn import qat
from qat_helpers import aq, digits_split, needs_ao, single_thread

pytest.importorskip("sklearn.datasets")

BATCH = 64
PADDLE_CONFIGS = {
    "channel_wise_abs_max/moving_average_abs_max": {"weight_quantize_type": "channel_wise_abs_max",
                                                     "activation_quantize_type": "moving_average_abs_max"},
    "abs_max/range_abs_max": {"weight_quantize_type": "abs_max", "activation_quantize_type": "range_abs_max"},
    "abs_max/range_abs_max/running": {"weight_quantize_type": "abs_max", "activation_quantize_type": "range_abs_max",
                                      "fold_mode": "running"},
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Batches of 64 8x8 images: thread start-up costs more than it saves (and far more on a
    shared machine), so these tests train on one thread."""
    with single_thread():
        yield


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = nn.Identity()  # torch.ao's QuantStub / DeQuantStub in the eager flow
        self.dequant = nn.Identity()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.features(self.quant(x))
        return self.dequant(self.fc(torch.flatten(self.pool(x), 1)))


BLOCKS = [["features.0", "features.1", "features.2"], ["features.3", "features.4", "features.5"],
          ["features.6", "features.7", "features.8"]]


@pytest.fixture(scope="module")
def digits():
    return digits_split()


def train(model, data, epochs, lr, step_model=None, before_epoch=None):
    """Adam over shuffled full batches (a fixed order; one shape, so a compiled model does not
    recompile for a last partial batch); ``step_model`` (a compiled wrapper) runs the steps."""
    x_train, y_train = data[0], data[1]
    step_model = model if step_model is None else step_model
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(1)
    for epoch in range(epochs):
        if before_epoch is not None:
            before_epoch(model, epoch)
        model.train()
        order = torch.randperm(len(y_train), generator=gen)
        for i in range(0, len(order) - BATCH + 1, BATCH):
            b = order[i:i + BATCH]
            opt.zero_grad()
            F.cross_entropy(step_model(x_train[b]), y_train[b]).backward()
            opt.step()
    return model


@torch.no_grad()
def predict(model, x):
    model.eval()
    return model(x)


def accuracy(logits, labels):
    return (logits.argmax(1) == labels).float().mean().item()


@pytest.fixture(scope="module")
def float_model(digits):
    torch.manual_seed(0)
    model = train(DigitsCNN(), digits, 8, 1e-2)
    acc = accuracy(predict(model, digits[2]), digits[3])
    assert acc > 0.95, acc
    return model, acc


def save_load(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def first_step_grads(model, step_model, data):
    """Parameter gradients of one training step on the first batch."""
    model.train()
    model.zero_grad()
    F.cross_entropy(step_model(data[0][:BATCH]), data[1][:BATCH]).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def compile_checked(model, data):
    """``torch.compile(model)`` (aot_eager), after checking that one training step of it gives the
    gradients and the state (BN statistics, observers) of an eager step on a copy."""
    eager = copy.deepcopy(model)
    g_eager = first_step_grads(eager, eager, data)
    compiled = torch.compile(model, backend="aot_eager")
    g_compiled = first_step_grads(model, compiled, data)
    assert g_eager.keys() == g_compiled.keys()
    for name in g_eager:
        torch.testing.assert_close(g_compiled[name], g_eager[name], rtol=1e-5, atol=1e-6, msg=name)
    for (name, a), b in zip(eager.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=0, msg=name)
    return compiled


# Compiled: the fused ConvBN op (per-channel abs-max weights, "batch" folding) and the composed
# one (per-tensor weights) with "running" folding.
@pytest.mark.parametrize("config,compiled", [
    ("channel_wise_abs_max/moving_average_abs_max", False),
    ("channel_wise_abs_max/moving_average_abs_max", True),
    ("abs_max/range_abs_max", False),
    ("abs_max/range_abs_max/running", True),
], ids=["paddle-eager", "paddle-compiled", "abs_max-eager", "abs_max_running-compiled"])
def test_quant_aware_digits(digits, float_model, config, compiled):
    model, float_acc = float_model
    x_test, y_test = digits[2], digits[3]
    q = fakequant.quant_aware(model, PADDLE_CONFIGS[config])
    assert isinstance(q.get_submodule("features.0"), qat.ConvBnReLU2d) and isinstance(q.fc, qat.Linear)
    train(q, digits, 2, 1e-3, step_model=compile_checked(q, digits) if compiled else None)
    y_qat = predict(q, x_test)
    qat_acc = accuracy(y_qat, y_test)
    assert qat_acc >= float_acc - 0.01, (qat_acc, float_acc)

    frozen, payload = fakequant.convert(q, save_int8=True)
    y_frozen = predict(frozen, x_test)
    torch.testing.assert_close(y_frozen, y_qat, rtol=1e-5, atol=1e-5)
    assert accuracy(y_frozen, y_test) == qat_acc
    assert payload["features.0"]["weight"].dtype == torch.int8 and payload["features.3"]["input"] is not None

    loaded_qat, loaded_frozen = save_load(q), save_load(frozen)
    assert torch.equal(predict(loaded_qat, x_test), y_qat)
    assert torch.equal(predict(loaded_frozen, x_test), y_frozen)


def snapshot_qparams(model):
    return {n: [t.clone() for t in m.calculate_qparams()] for n, m in model.named_modules()
            if isinstance(m, fakequant.nn.FakeQuantizeBase)}


def snapshot_bn(model):
    return {n: (m.bn.running_mean.clone(), m.bn.running_var.clone()) for n, m in model.named_modules()
            if isinstance(m, qat.ConvBnReLU2d)}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        for x, y in zip(a[k], b[k]):
            assert torch.equal(x, y), k


TORCH_AO_QCONFIGS = {
    # per-channel moving-average min/max weights: the ConvBn modules compose the fold from PyTorch ops
    "pytorch": {"reduce_range": False},
    # per-channel abs-max weights: the ConvBn modules run the fused op
    "pytorch/abs_max": {"reduce_range": False, "weight_quantize_type": "abs_max"},
}


def prepare_qat(model, qconfig):
    m = copy.deepcopy(model)
    m.quant, m.dequant = aq.QuantStub(), aq.DeQuantStub()
    m = aq.fuse_modules_qat(m.train(), BLOCKS)
    m.qconfig = fakequant.qconfig.get_qat_qconfig("pytorch", **TORCH_AO_QCONFIGS[qconfig])
    return aq.prepare_qat(m, mapping=qat.get_qat_module_mappings())


@needs_ao
@pytest.mark.parametrize("qconfig", list(TORCH_AO_QCONFIGS))
def test_torch_ao_eager_recipe_digits(digits, float_model, qconfig):
    """Eager only: torch.ao's eager flow runs its activation observers from forward hooks, which
    torch.compile does not trace (a graph break and a recompilation at every module); the facade
    test above trains compiled."""
    model, float_acc = float_model
    x_test, y_test = digits[2], digits[3]
    prepared = prepare_qat(model, qconfig)
    assert isinstance(prepared.features[0], qat.ConvBnReLU2d) and isinstance(prepared.fc, qat.Linear)

    frozen_at = {}

    def recipe(model, epoch):  # the tutorial's: observers off, then BN frozen, for the last epochs
        if epoch == 2:
            model.apply(aq.disable_observer)
            frozen_at["qparams"] = snapshot_qparams(model)
        if epoch == 3:
            model.apply(torch.ao.nn.intrinsic.qat.freeze_bn_stats)  # the tutorial's call
            frozen_at["bn"] = snapshot_bn(model)

    train(prepared, digits, 4, 1e-3, before_epoch=recipe)
    assert_same(snapshot_qparams(prepared), frozen_at["qparams"])  # nothing observed after disable_observer
    assert_same(snapshot_bn(prepared), frozen_at["bn"])  # nor BN statistics after freeze_bn_stats
    y_qat = predict(prepared, x_test)
    qat_acc = accuracy(y_qat, y_test)
    assert qat_acc >= float_acc - 0.01, (qat_acc, float_acc)

    quantized = aq.convert(copy.deepcopy(prepared).eval(), mapping=qat.get_quantized_module_mappings())
    assert isinstance(quantized.fc, torch.ao.nn.quantized.Linear)
    y_int8 = predict(quantized, x_test)
    # Integer arithmetic: every layer requantizes its output, the QAT model does not round there.
    output_step = quantized.fc.scale
    assert (y_int8 - y_qat).abs().max().item() <= 2 * output_step
    assert (y_int8.argmax(1) == y_qat.argmax(1)).float().mean().item() >= 0.99
    assert accuracy(y_int8, y_test) >= float_acc - 0.01

    # Saved through state dicts: torch.ao's own models do not survive a whole-model save here
    # (prepare_qat leaves closures in the qconfigs; a loaded quantized ConvReLU2d has no _modules).
    restored = prepare_qat(model, qconfig)
    restored.load_state_dict(save_load(prepared.state_dict()))
    assert torch.equal(predict(restored, x_test), y_qat)
    restored = aq.convert(restored.eval(), mapping=qat.get_quantized_module_mappings())
    restored.load_state_dict(save_load(quantized.state_dict()))
    assert torch.equal(predict(restored, x_test), y_int8)
