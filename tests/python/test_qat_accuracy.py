"""A small CNN with BN trained with quant_aware reaches the accuracy of torch.ao QAT.

The data set is made here: 12x12 images of a bar (horizontal, vertical, diagonal or
anti-diagonal, the class) at a random place, with Gaussian noise.
"""

import copy

import pytest
import torch
import torch.nn.functional as F

import fakequant
from qat_helpers import HAS_AO, DigitsCNN, aq, single_thread


@pytest.fixture(autouse=True)
def one_thread():
    """Batches of 64 12x12 images: thread start-up costs more than it saves (and far more on a
    shared machine), so this test trains on one thread."""
    with single_thread():
        yield


def make_bars(n, gen, size=12, noise=0.35):
    labels = torch.randint(0, 4, (n,), generator=gen)
    images = noise * torch.randn(n, 1, size, size, generator=gen)
    idx = torch.arange(5)
    for i in range(n):
        r, c = torch.randint(2, size - 7, (2,), generator=gen).tolist()
        k = int(labels[i])
        rows, cols = {0: (r + 2 + 0 * idx, c + idx), 1: (r + idx, c + 2 + 0 * idx),
                      2: (r + idx, c + idx), 3: (r + idx, c + 4 - idx)}[k]
        images[i, 0, rows, cols] += 1.0
    return images, labels


def small_cnn():
    return DigitsCNN(channels=(8, 16), classes=4)


def train(model, images, labels, epochs, gen, lr):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(labels), generator=gen)
        for i in range(0, len(labels), 64):
            b = perm[i:i + 64]
            opt.zero_grad()
            F.cross_entropy(model(images[b]), labels[b]).backward()
            opt.step()
    return model


@torch.no_grad()
def accuracy(model, images, labels):
    model.eval()
    return (model(images).argmax(1) == labels).float().mean().item()


@pytest.mark.skipif(not HAS_AO, reason="this torch has no torch.ao.quantization to compare with")
def test_quant_aware_reaches_torch_ao_qat_accuracy():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x_train, y_train = make_bars(1536, gen)
    x_test, y_test = make_bars(512, gen)
    float_model = train(small_cnn(), x_train, y_train, 4, gen, 1e-2)
    float_acc = accuracy(float_model, x_test, y_test)
    assert float_acc > 0.9, float_acc

    ours = fakequant.quant_aware(float_model, {"weight_quantize_type": "channel_wise_abs_max",
                                               "activation_quantize_type": "moving_average_abs_max"})
    train(ours, x_train, y_train, 2, gen, 2e-3)
    ours_acc = accuracy(ours, x_test, y_test)

    ao_model = copy.deepcopy(float_model).train()
    ao_model = aq.fuse_modules_qat(ao_model, [["features.0", "features.1", "features.2"],
                                              ["features.3", "features.4", "features.5"]])
    ao_model.qconfig = aq.get_default_qat_qconfig("x86")
    aq.prepare_qat(ao_model, inplace=True)
    train(ao_model, x_train, y_train, 2, gen, 2e-3)
    ao_acc = accuracy(ao_model, x_test, y_test)

    assert ours_acc > 0.9 and ao_acc > 0.9, (ours_acc, ao_acc)
    assert abs(ours_acc - ao_acc) <= 0.03, (ours_acc, ao_acc)
    print(f"float {float_acc:.3f}, quant_aware {ours_acc:.3f}, torch.ao QAT {ao_acc:.3f}")

    frozen = fakequant.convert(ours)
    assert accuracy(frozen, x_test, y_test) == pytest.approx(ours_acc, abs=1 / 512)
