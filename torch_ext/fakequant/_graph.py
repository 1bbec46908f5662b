"""Finding layer patterns in a float model: conv -> bn (-> relu) and "X feeds a ReLU".

With ``torch.fx`` when the model traces (any forward), else from the order of the children
of every ``nn.Sequential`` (the structure that needs no tracing).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_)
POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
POOL_FUNCTIONS = (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch.max_pool2d,
                  torch.avg_pool2d if hasattr(torch, "avg_pool2d") else F.avg_pool2d)
ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)


@dataclass
class ConvBnChain:
    conv: str  # qualified names in the model
    bn: str
    relu: str | None  # an nn.ReLU module called only here, fused away with the pair
    relu_follows: bool  # the bn output feeds a ReLU (module or function)


@dataclass
class Patterns:
    chains: list  # ConvBnChain
    relu_fed: set  # qualified names of single-use modules whose output feeds only a ReLU
    traced: fx.GraphModule | None
    trace_error: str | None


def trace(model: nn.Module, leaf_types=()):
    """``(GraphModule, None)`` or ``(None, reason)``; modules of ``leaf_types`` stay leaves."""

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, leaf_types) or super().is_leaf_module(m, qualname)

    try:
        tracer = _Tracer()
        graph = tracer.trace(model)
        return fx.GraphModule(tracer.root, graph, model.__class__.__name__), None
    except Exception as e:  # noqa: BLE001  (any tracing failure means: fall back)
        return None, f"{type(e).__name__}: {e}"


def _is_relu(node, modules):
    if node.op == "call_module":
        return isinstance(modules.get(node.target), nn.ReLU)
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _patterns_fx(gm):
    modules = dict(gm.named_modules())
    calls = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1

    def single_user(node):
        users = list(node.users)
        return users[0] if len(users) == 1 else None

    chains, relu_fed = [], set()
    for node in gm.graph.nodes:
        if node.op != "call_module" or calls[node.target] != 1:
            continue
        user = single_user(node)
        if user is not None and _is_relu(user, modules):
            relu_fed.add(node.target)
        if not isinstance(modules[node.target], nn.Conv2d) or user is None or user.op != "call_module":
            continue
        bn = modules[user.target]
        if not isinstance(bn, nn.BatchNorm2d) or calls[user.target] != 1 or bn.num_features != modules[node.target].out_channels:
            continue
        after = single_user(user)
        follows = after is not None and _is_relu(after, modules)
        relu = after.target if follows and after.op == "call_module" and calls[after.target] == 1 else None
        chains.append(ConvBnChain(node.target, user.target, relu, follows))
    return chains, relu_fed


def _patterns_sequential(model):
    chains, relu_fed = [], set()
    for prefix, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        names = list(seq._modules)
        mods = [seq._modules[n] for n in names]
        full = [f"{prefix}.{n}" if prefix else n for n in names]
        for i, m in enumerate(mods):
            nxt = mods[i + 1] if i + 1 < len(mods) else None
            if isinstance(nxt, nn.ReLU):
                relu_fed.add(full[i])
            if isinstance(m, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d) and nxt.num_features == m.out_channels:
                third = mods[i + 2] if i + 2 < len(mods) else None
                relu = full[i + 2] if isinstance(third, nn.ReLU) else None
                chains.append(ConvBnChain(full[i], full[i + 1], relu, relu is not None))
    return chains, relu_fed


def find_patterns(model: nn.Module) -> Patterns:
    gm, error = trace(model)
    if gm is not None:
        chains, relu_fed = _patterns_fx(gm)
    else:
        chains, relu_fed = _patterns_sequential(model)
    return Patterns(chains, relu_fed, gm, error)


def set_submodule(model: nn.Module, name: str, module: nn.Module):
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)
