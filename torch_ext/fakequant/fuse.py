"""Offline conv + BN fusion of a trained float model (before quantization-aware training)."""

from __future__ import annotations

import copy
import warnings

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ._graph import find_patterns, set_submodule

__all__ = ["fuse_conv_bn"]


def unproven_warning(caller: str, model: nn.Module, patterns) -> str:
    """The message for BatchNorm layers that no graph shows being fed by a conv."""
    return (f"{caller}: {type(model).__name__} does not trace with torch.fx ({patterns.trace_error}); no graph "
            f"shows what feeds these BatchNorm layers, so they stay unfused: {patterns.unproven}. Make the "
            f"forward traceable, or call the block that holds the conv and its BN as a whole from a module "
            f"that only calls it (self.block(x)).")


def fuse_conv_bn(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every ``BatchNorm1d/2d/3d`` that directly follows a ``Conv1d/2d/3d`` into that conv.

    The conv gets ``W * gamma / sigma`` and the bias ``beta + (b - mean) * gamma / sigma``
    with the running statistics (``torch.nn.utils.fusion.fuse_conv_bn_eval``; a conv without
    bias gets one: Paddle's ``elementwise_add`` after a bias-free conv), and the BN becomes
    ``nn.Identity``, so eval outputs are unchanged and the fused weights can start QAT.
    Only pairs a graph proves are fused: the ``torch.fx`` graph of the model, or, when the
    model does not trace, of its submodules that trace and are only ever called whole, and
    the order of plain ``nn.Sequential`` containers (docs/qat.md). A conv whose output has
    other users than the BN is left alone; BatchNorm layers outside every proven part are left
    with a ``UserWarning`` naming them. Returns the fused model (a copy unless ``inplace``), in
    the training mode the input had.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse_conv_bn: model must be an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    was_training = model.training
    model.eval()
    patterns = find_patterns(model)
    if patterns.unproven:
        warnings.warn(unproven_warning("fuse_conv_bn", model, patterns), stacklevel=2)
    for chain in patterns.chains:
        conv, bn = model.get_submodule(chain.conv), model.get_submodule(chain.bn)
        if bn.running_mean is None or bn.running_var is None:
            warnings.warn(f"fuse_conv_bn: {chain.bn} keeps no running statistics; left unfused", stacklevel=2)
            continue
        set_submodule(model, chain.conv, fuse_conv_bn_eval(conv, bn))
        set_submodule(model, chain.bn, nn.Identity())
    model.train(was_training)
    return model
