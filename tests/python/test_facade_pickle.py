"""quant_aware and converted models pickle whole: torch.save / torch.load, and torch.multiprocessing
spawn (the model is pickled to a fresh interpreter). The loaded model must give the outputs of
the original, and keep training as it would have."""

import copy
import io

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import fakequant
from qat_helpers import ConvBnStart, train_steps

CONFIGS = {
    "default": {},  # abs_max weights and activations, add/pool inputs (an fx.GraphModule)
    "paddle": {"weight_quantize_type": "channel_wise_abs_max", "activation_quantize_type": "moving_average_abs_max",
               "ahead_linear_relu": True},
    "range": {"weight_quantize_type": "range_abs_max", "activation_quantize_type": "range_abs_max",
              "window_size": 5, "fold_mode": "running", "quantize_op_types": ["conv2d", "mul"]},
}


class Net(ConvBnStart):
    def __init__(self):
        super().__init__()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 3 * 3, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(x + self.bn2(self.conv2(x)), 2)
        return self.fc(F.relu(torch.flatten(x, 1)))


def batches(gen, n):
    return [torch.randn(4, 3, 6, 6, generator=gen) for _ in range(n)]


def train(model, xs):
    return train_steps(model, xs, lr=0.05)


def trained(config, gen):
    return train(fakequant.quant_aware(Net(), config), batches(gen, 2))


def save_load(model):
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("name", list(CONFIGS))
def test_torch_save_and_load_whole_qat_and_converted_models(name):
    gen = torch.Generator().manual_seed(30)
    model = trained(CONFIGS[name], gen)
    loaded = save_load(model)
    assert isinstance(loaded, torch.fx.GraphModule) == isinstance(model, torch.fx.GraphModule)  # add/pool inputs
    assert_same_state(loaded, model)
    x = torch.randn(4, 3, 6, 6, generator=gen)
    assert torch.equal(loaded.eval()(x), model.eval()(x))
    # training goes on identically (the quantizer factories in the qconfigs came along)
    xs = batches(gen, 2)
    train(loaded, xs)
    train(model, xs)
    assert_same_state(loaded, model)
    assert torch.equal(loaded.eval()(x), model.eval()(x))
    assert loaded.conv1.qconfig.weight().__class__ is model.conv1.qconfig.weight().__class__
    frozen = fakequant.convert(model)
    assert torch.equal(save_load(frozen)(x), frozen(x))


def run_in_child(rank, models, x, path):
    """Runs in a spawned interpreter: the models arrive pickled."""
    outputs = {}
    for name, model in models.items():
        outputs[name] = model.eval()(x)
        if name.endswith("/qat"):  # and a training step there
            train(copy.deepcopy(model), [x])
    torch.save(outputs, path)


def test_models_go_to_a_spawned_process(tmp_path):
    gen = torch.Generator().manual_seed(31)
    models = {}
    for name, config in CONFIGS.items():
        model = trained(config, gen).eval()
        models[f"{name}/qat"] = model
        models[f"{name}/converted"] = fakequant.convert(model)
    x = torch.randn(4, 3, 6, 6, generator=gen)
    path = tmp_path / "outputs.pt"
    mp.spawn(run_in_child, args=(models, x, str(path)), nprocs=1, join=True)
    outputs = torch.load(path)
    assert outputs.keys() == models.keys()
    for name, model in models.items():
        assert torch.equal(outputs[name], model(x)), name
