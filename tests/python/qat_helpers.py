"""Shared by the QAT, facade and workflow tests: torch.ao's QAT namespaces where this torch still
ships them, the torch.ao qconfig that fakequant's modules are compared under, BN state away
from its defaults, training on one thread, and the first conv-bn of the small test nets and
their training loop, the digits data and CNN."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

try:
    import torch.ao.nn.intrinsic as nni
    import torch.ao.nn.intrinsic.qat as nniqat
    import torch.ao.nn.qat as nnqat
    import torch.ao.quantization as aq

    HAS_AO = True
except ImportError:  # torch.ao.quantization removed
    nni = nniqat = nnqat = aq = None
    HAS_AO = False

needs_ao = pytest.mark.skipif(not HAS_AO, reason="this torch has no torch.ao.quantization")


def ao_qconfig():
    """torch.ao's per-channel symmetric min/max weight fake quant (qint8): a fakequant module and
    its torch.ao counterpart given it run the same quantizer class, so their values must agree
    exactly. The observer keeps the range of every call, which equals the current weight's while
    the weight does not change."""
    weight = aq.FakeQuantize.with_args(observer=aq.PerChannelMinMaxObserver, quant_min=-128, quant_max=127,
                                       dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    return aq.QConfig(activation=aq.FakeQuantize.with_args(observer=aq.MovingAverageMinMaxObserver), weight=weight)


def randomize_bn(bn, gen=None):
    """BN parameters and running statistics away from their defaults (drawn from ``gen``, or
    torch's default generator)."""
    with torch.no_grad():
        bn.weight.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
        bn.bias.copy_(torch.randn(bn.num_features, generator=gen))
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen) * 0.1)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)


@contextlib.contextmanager
def single_thread():
    """torch runs on one thread inside the block, and on as many as before after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_steps(model, batches, lr):
    """One SGD step (learning rate lr) on the mean square of the output per batch, the model in
    train mode; returns the model."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    for x in batches:
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    return model


class ConvBnStart(nn.Module):
    """conv1 (3 -> 8 channels, 3x3, padding 1) -> bn1: how the small nets of the facade and fusion
    tests start. Subclasses register their other layers after these two and write the forward."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)


def digits_split(n_train=1400):
    """scikit-learn's bundled 8x8 digits (no download) as float images in [0, 1] [N, 1, 8, 8] and
    labels, split once by a fixed permutation: (train images, train labels, test images, test
    labels). The caller skips when scikit-learn is missing (pytest.importorskip)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(data.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train, test = order[:n_train], order[n_train:]
    return images[train], labels[train], images[test], labels[test]


class DigitsCNN(nn.Module):
    """A small Conv+BN+ReLU CNN for 8x8 images: two conv-bn-relu blocks of ``channels``
    (convolutions without bias unless ``conv_bias``), pooling, a linear head to ``classes``."""

    def __init__(self, conv_bias=False, channels=(16, 32), classes=10):
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1, bias=conv_bias), nn.BatchNorm2d(c1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1, bias=conv_bias), nn.BatchNorm2d(c2), nn.ReLU(),
        )
        self.fc = nn.Linear(c2, classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))
