"""Deploying whole models (docs/deploy.md): QAT models in eval (the facade's and torch.ao's
prepare_qat) and ``fakequant.convert`` outputs through both ONNX exporters (ONNX Runtime against
PyTorch on fresh random data; the digits accuracy is test_export_digits.py), ``torch.jit.trace`` +
save / load, and ``torch.export`` + save / load."""

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fakequant
from fakequant import export as fq_export
from fakequant.nn import qat
from qat_helpers import aq, needs_ao, single_thread

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

EXPORTERS = [pytest.param(False, id="torchscript"), pytest.param(True, id="dynamo")]
PADDLE_CONFIGS = {
    "channel_wise/moving_average": {"weight_quantize_type": "channel_wise_abs_max",
                                    "activation_quantize_type": "moving_average_abs_max"},
    "abs_max/abs_max": {},  # dynamic activations: each input quantized with its own abs-max
    "abs_max/range_abs_max": {"weight_quantize_type": "abs_max", "activation_quantize_type": "range_abs_max"},
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    with single_thread():
        yield


class Net(nn.Module):
    """conv-bn-relu, a residual addition, conv-relu, pooling, linear: every layer kind the facade
    quantizes in a CNN."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.conv2(x)) + x
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def train_steps(model, steps=4):
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(8, 3, 8, 8)).square().mean().backward()
        opt.step()
    return model.eval()


def quant_aware_model(config):
    return train_steps(fakequant.quant_aware(Net(), PADDLE_CONFIGS[config]))


def torch_ao_model(reduce_range):
    m = aq.fuse_modules_qat(Net().train(), [["conv1", "bn1"]])
    m.qconfig = fakequant.qconfig.get_qat_qconfig("pytorch", reduce_range=reduce_range)
    m = train_steps(aq.prepare_qat(m, mapping=qat.get_qat_module_mappings()))
    return m.apply(aq.disable_observer)


def run_onnx(model, x, dynamo, optimize=True):
    """The model exported with fakequant's lowerings and run by ONNX Runtime: ``optimize=False``
    runs the graph as written (float Q/DQ arithmetic), the default lets ONNX Runtime fuse Q/DQ
    patterns into integer kernels (``QLinearAdd`` ...), as a deployment would."""
    import onnx

    buf = io.BytesIO()
    fq_export.to_onnx(model, (x,), buf, dynamo=dynamo)
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])
    nodes = [n.op_type for n in onnx.load_from_string(buf.getvalue()).graph.node]
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]), nodes


def assert_model_close(y_onnx, y_torch, optimized):
    """As written, the graph does PyTorch's arithmetic but for float32 accumulation order and the
    rare element on a rounding tie (one step, test_export.py), so nearly every output agrees to
    float32 accumulation error. ONNX Runtime's integer kernels (QLinearAdd, ...) requantize
    in between: there each output lies within a few quantization steps, judged relative to the
    output range."""
    scale = y_torch.abs().max().item()
    torch.testing.assert_close(y_onnx, y_torch, rtol=0, atol=0.05 * scale)
    if not optimized:  # a tie flips at most an odd sample's outputs (about 2e-5 per quantized element)
        differing_samples = ((y_onnx - y_torch).abs() > 1e-5 * scale).any(1)
        assert differing_samples.sum().item() <= 2, differing_samples


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("config", list(PADDLE_CONFIGS))
@pytest.mark.parametrize("converted", [False, True], ids=["qat-eval", "convert"])
@pytest.mark.parametrize("optimize", [False, True], ids=["as-written", "ort-optimized"])
def test_quant_aware_model_onnx(dynamo, config, converted, optimize):
    model = quant_aware_model(config)
    if converted:
        model = fakequant.convert(model)
    x = torch.randn(16, 3, 8, 8)
    with torch.no_grad():
        y_torch = model(x)
    y, nodes = run_onnx(model, x, dynamo, optimize)
    assert_model_close(y, y_torch, optimize)
    # Activations before conv1, conv2, fc and both inputs of the addition (pooling inputs too in
    # Paddle's op list); the QAT model adds the weights' Q/DQ (convert folds them into the weights).
    n_q = nodes.count("QuantizeLinear")
    assert n_q >= (5 if converted else 8), nodes
    assert not any(n.startswith("fakequant") for n in nodes)


@needs_ao
@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("reduce_range", [False, True])
def test_torch_ao_prepare_qat_onnx(dynamo, reduce_range):
    """torch.ao's eager prepare_qat with fakequant's qconfig, observers off: the stored qparams.
    reduce_range=True stores [0, 127] ranges, exported as uint8 Q/DQ plus a Clip, with the same
    values (ONNX Runtime's own x86 integer kernels are not involved at Q/DQ level)."""
    model = torch_ao_model(reduce_range)
    x = torch.randn(16, 3, 8, 8)
    with torch.no_grad():
        y_torch = model(x)
    y, nodes = run_onnx(model, x, dynamo, optimize=False)
    assert_model_close(y, y_torch, False)
    assert nodes.count("QuantizeLinear") >= 6
    assert ("Clip" in nodes) == reduce_range


def traced_kinds(traced):
    return {n.kind() for n in traced.inlined_graph.nodes()}


MODELS = {
    "quant_aware": lambda: quant_aware_model("channel_wise/moving_average"),
    "quant_aware-abs_max": lambda: quant_aware_model("abs_max/range_abs_max"),
    "convert": lambda: fakequant.convert(quant_aware_model("channel_wise/moving_average")),
}
if aq is not None:
    MODELS["torch_ao"] = lambda: torch_ao_model(False)


@pytest.mark.parametrize("kind", list(MODELS))
def test_torchscript_trace_save_load(kind):
    model = MODELS[kind]()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        traced = torch.jit.trace(model, (torch.randn(4, 3, 8, 8),))
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    kinds = traced_kinds(loaded)
    assert "prim::PythonOp" not in kinds  # no Python autograd Function in the eval path
    assert any(k.startswith("fakequant::") for k in kinds), kinds
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("kind", list(MODELS))
def test_torch_export_save_load(kind):
    model = MODELS[kind]()
    x = torch.randn(4, 3, 8, 8)
    ep = torch.export.export(model, (torch.randn(4, 3, 8, 8),))
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    buf.seek(0)
    loaded = torch.export.load(buf)
    targets = {str(n.target) for n in loaded.graph.nodes if n.op == "call_function"}
    assert any(t.startswith("fakequant.") for t in targets), targets
    with torch.no_grad():
        torch.testing.assert_close(loaded.module()(x), model(x), rtol=0, atol=0)
    # The round trip keeps the program: its graph has the same calls.
    assert [str(n.target) for n in loaded.graph.nodes] == [str(n.target) for n in ep.graph.nodes]


def test_torch_export_training_model_keeps_the_observer():
    """torch.export of a model still observing is a stateful program (the ONNX path refuses it)."""
    model = quant_aware_model("channel_wise/moving_average").train()
    ep = torch.export.export(model, (torch.randn(4, 3, 8, 8),)).run_decompositions()
    mutated = set(ep.graph_signature.buffers_to_mutate.values())
    assert {"conv1.input_fake_quant.scale", "conv1.bn.running_mean"} <= mutated, mutated
