"""The deployed model classifies like the PyTorch one: scikit-learn's digits (8x8 images), a small
Conv+BN+ReLU CNN trained in float32 then quantization-aware with the PaddleSlim-style facade, its
QAT model in eval and its ``fakequant.convert`` output exported through both ONNX exporters and run
by ONNX Runtime (with its integer Q/DQ fusions on), on the held-out images."""

import io

import pytest
import torch
import torch.nn.functional as F

import fakequant
from fakequant import export as fq_export
from qat_helpers import DigitsCNN, digits_split, single_thread

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("sklearn.datasets")


def train(model, x, y, epochs, lr):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(order) - 63, 64):
            b = order[i:i + 64]
            opt.zero_grad()
            F.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained():
    x_train, y_train, x_test, y_test = digits_split()
    with single_thread():
        torch.manual_seed(0)
        model = train(DigitsCNN(), x_train, y_train, 6, 1e-2)
        qat_model = fakequant.quant_aware(model, {"weight_quantize_type": "channel_wise_abs_max",
                                                  "activation_quantize_type": "moving_average_abs_max"})
        train(qat_model, x_train, y_train, 1, 1e-3)
    return qat_model, x_test, y_test


@pytest.mark.parametrize("dynamo", [pytest.param(False, id="torchscript"), pytest.param(True, id="dynamo")])
@pytest.mark.parametrize("converted", [False, True], ids=["qat-eval", "convert"])
def test_digits_accuracy_equal_in_onnx_runtime(trained, dynamo, converted):
    qat_model, x, y = trained
    model = fakequant.convert(qat_model) if converted else qat_model.eval()
    with torch.no_grad():
        logits = model(x)
    acc = (logits.argmax(1) == y).float().mean().item()
    assert acc > 0.9, acc
    buf = io.BytesIO()
    # Exported with two images (torch.export specialises a size of 1), run on the whole test set: a
    # dynamic batch dimension. (The TorchScript
    # exporter needs output_names with dynamic_axes here: quant_aware returns a torch.fx GraphModule,
    # whose .graph the exporter mistakes for a TorchScript graph when it guesses the names.)
    batch = {"dynamic_shapes": ({0: torch.export.Dim("batch")},)} if dynamo else \
        {"input_names": ["x"], "output_names": ["logits"], "dynamic_axes": {"x": {0: "batch"}}}
    fq_export.to_onnx(model, (x[:2],), buf, dynamo=dynamo, **batch)
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    onnx_logits = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    onnx_acc = (onnx_logits.argmax(1) == y).float().mean().item()
    assert onnx_acc == acc, (onnx_acc, acc)
    assert (onnx_logits.argmax(1) == logits.argmax(1)).float().mean().item() >= 0.99
