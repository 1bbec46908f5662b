"""Offline conv + BN fusion of a trained float model (before quantization-aware training)."""

from __future__ import annotations

import copy
import warnings

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ._graph import find_patterns, set_submodule

__all__ = ["fuse_conv_bn"]


def fuse_conv_bn(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every ``BatchNorm2d`` that directly follows a ``Conv2d`` into that conv.

    The conv gets ``W * gamma / sigma`` and the bias ``beta + (b - mean) * gamma / sigma``
    with the running statistics (``torch.nn.utils.fusion.fuse_conv_bn_eval``; a conv without
    bias gets one: the seeds' ``elementwise_add`` after a bias-free conv), and the BN becomes
    ``nn.Identity``, so eval outputs are unchanged and the fused weights can start QAT.
    Pairs are found with ``torch.fx`` when the model traces, else inside ``nn.Sequential``
    containers; a conv whose output has other users than the BN is left alone. Returns the
    fused model (a copy unless ``inplace``), in the training mode the input had.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse_conv_bn: model must be an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    was_training = model.training
    model.eval()
    for chain in find_patterns(model).chains:
        conv, bn = model.get_submodule(chain.conv), model.get_submodule(chain.bn)
        if bn.running_mean is None or bn.running_var is None:
            warnings.warn(f"fuse_conv_bn: {chain.bn} keeps no running statistics; left unfused", stacklevel=2)
            continue
        set_submodule(model, chain.conv, fuse_conv_bn_eval(conv, bn))
        set_submodule(model, chain.bn, nn.Identity())
    model.train(was_training)
    return model
