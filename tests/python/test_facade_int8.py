"""convert() gives the QAT model's eval output on every input, and save_int8's payload alone runs
the model: the runtime below is written out here from the payload's documented fields
(docs/qat.md) and the model's structure, with no fakequant call."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fakequant
from qat_helpers import ConvBnStart, train_steps

CONFIGS = {
    "abs_max": {},  # abs_max weights per tensor, dynamic abs_max activations
    "paddle": {"weight_quantize_type": "channel_wise_abs_max", "activation_quantize_type": "moving_average_abs_max",
               "ahead_linear_relu": True},
    "range": {"weight_quantize_type": "channel_wise_abs_max", "activation_quantize_type": "range_abs_max",
              "weight_bits": 6, "activation_bits": 7, "fold_mode": "running", "ahead_bn_relu": True,
              "rounding": "half_even"},
    "abs_max_ahead": {"weight_quantize_type": "moving_average_abs_max", "ahead_bn_relu": True,
                      "ahead_linear_relu": True},
}


class Net(ConvBnStart):
    """conv-bn-relu, a residual conv-bn, an add, pooling, linear-relu, linear."""

    def __init__(self):
        super().__init__()
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False, groups=2)
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(8 * 3 * 3, 16)
        self.out = nn.Linear(16, 5)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = x + self.bn2(self.conv2(x))
        x = self.pool(x)
        return self.out(F.relu(self.fc(torch.flatten(x, 1))))


def data(gen, scale=1.0):
    return scale * torch.randn(6, 3, 6, 6, generator=gen)


def trained(config, gen, steps=4):
    model = fakequant.quant_aware(Net(), config)
    return train_steps(model, (data(gen) for _ in range(steps)), lr=0.05).eval()


def quantize(entry, x):
    """The activation quantizer of a payload entry: (integer values, dequantized float32)."""
    if entry is None:
        return None, x
    if entry["relu_first"]:
        x = torch.relu(x)
    assert entry["axis"] is None
    if entry["dynamic"]:  # each input's own abs-max
        scale = torch.clamp(x.abs().amax() / ((entry["quant_max"] - entry["quant_min"]) / 2), min=entry["eps"])
    else:
        scale = entry["scale"]
    v = (x * (1.0 / scale)).double()  # fp32 product, rounded in double (exact)
    q = torch.floor(v.abs() + 0.5) * torch.sign(v) if entry["rounding"] == "half_away" else torch.round(v)
    q = (q + entry["zero_point"]).clamp(entry["quant_min"], entry["quant_max"])
    info = torch.iinfo(entry["dtype"])
    assert info.min <= entry["quant_min"] and entry["quant_max"] <= info.max
    return q.to(entry["dtype"]), ((q - entry["zero_point"]).float() * scale)


def weight_of(entry, dims):
    scale, zp = entry["scale"], entry["zero_point"]
    if entry["axis"] is not None:
        shape = [1] * dims
        shape[entry["axis"]] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return (entry["weight"].float() - zp) * scale, scale


def layer(entry, x, int_checks):
    """conv / linear from its payload entry; also checks the integer path (int8 x int8 -> int32
    accumulator, rescaled) against the float one."""
    q_x, x = quantize(entry["input"], x)
    w, w_scale = weight_of(entry, entry["weight"].dim())
    op = getattr(F, entry["op"])
    y = op(x, w, entry["bias"], **entry["args"])
    if q_x is not None and not entry["input"]["dynamic"]:
        acc = op(q_x.double(), (entry["weight"].double() - entry["zero_point"].reshape(w_scale.shape)), None,
                 **entry["args"])
        assert torch.equal(acc, acc.round())  # integer accumulation, exact in double
        out_shape = [1, -1] + [1] * (y.dim() - 2)
        rescaled = acc * (entry["input"]["scale"].double() * w_scale.double().reshape(out_shape))
        if entry["bias"] is not None:
            rescaled = rescaled + entry["bias"].double().reshape(out_shape)
        int_checks.append((rescaled.float(), y))
    if entry["relu"]:
        y = torch.relu(y)
    return quantize(entry["output"], y)[1]


def run_from_payload(payload, x, int_checks):
    """Net's structure, every number from the payload."""
    x = layer(payload["conv1"], x, int_checks)  # conv1 + bn1 + relu1, folded
    residual = layer(payload["conv2"], x, int_checks)  # conv2 + bn2, folded
    add = [e for n, e in payload.items() if "weight" not in e and e["consumers"] == ["add"]]
    pool = [e for n, e in payload.items() if "weight" not in e and e["consumers"] == ["pool"]]
    assert len(add) == 2 and len(pool) == 1
    by_producer = {e["producer"]: e for e in add}
    x = quantize(by_producer["relu1"]["input"], x)[1] + quantize(by_producer["bn2"]["input"], residual)[1]
    x = F.avg_pool2d(quantize(pool[0]["input"], x)[1], 2)
    x = torch.relu(layer(payload["fc"], torch.flatten(x, 1), int_checks))
    return layer(payload["out"], x, int_checks)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_convert_gives_the_qat_eval_output_and_an_int8_payload_that_runs_alone(name):
    """abs_max activations are dynamic in QAT eval (Paddle's fake_quantize_abs_max): convert keeps
    them dynamic rather than freezing the scale of the last batch it saw. The payload holds the
    activations' qparams as well as the weights'."""
    gen = torch.Generator().manual_seed(40)
    model = trained(CONFIGS[name], gen)
    model(data(gen))  # the last batch seen before convert
    frozen, payload = fakequant.convert(model, save_int8=True)
    for scale in (1.0, 8.0, 0.1):  # inputs whose abs-max differ from that batch's
        x = data(gen, scale)
        torch.testing.assert_close(frozen(x), model(x), rtol=1e-5, atol=1e-5 * scale)
    check_int8_payload_alone_runs_the_model(name, model, frozen, payload, gen)


def check_int8_payload_alone_runs_the_model(name, model, frozen, payload, gen):
    """Net run from the payload by the runtime above gives the converted model's output."""
    assert {n for n, e in payload.items() if "weight" in e} == {"conv1", "conv2", "fc", "out"}
    act = payload["conv1"]["input"]
    assert act["dynamic"] == (name.startswith("abs_max"))
    if not act["dynamic"]:
        assert act["scale"].dtype == torch.float32 and act["scale"].shape == () and act["zero_point"] == 0
    assert payload["conv1"]["relu"] and not payload["conv2"]["relu"]
    for scale in (1.0, 5.0):
        x = data(gen, scale)
        int_checks = []
        y = run_from_payload(payload, x, int_checks)
        torch.testing.assert_close(y, frozen(x), rtol=0, atol=0)  # the same float ops on the same numbers
        torch.testing.assert_close(y, model(x), rtol=1e-5, atol=1e-5 * scale)
        for rescaled, y_float in int_checks:
            torch.testing.assert_close(rescaled, y_float, rtol=1e-4, atol=1e-5 * y_float.abs().max().item())
    static = CONFIGS[name].get("activation_quantize_type", "abs_max") != "abs_max"
    assert bool(int_checks) == static
