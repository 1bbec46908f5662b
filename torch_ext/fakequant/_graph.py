"""Finding layer patterns in a float model: conv -> bn (-> relu) and "X feeds a ReLU".

A pattern is used only where a graph proves it. With ``torch.fx`` when the model traces (any
forward). When it does not, the parts that can be proven are searched: a submodule that traces
on its own, called as a whole by every untraceable module above it (checked in their source:
``self.block(...)`` and nothing else reaches ``self.block``), proves the patterns of its own
graph; a plain ``nn.Sequential`` (its forward is ``nn.Sequential.forward``) proves that each
child feeds the next. BatchNorm layers outside every proven part are reported as unproven.
"""

from __future__ import annotations

import ast
import inspect
import operator
import textwrap
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_)
POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
POOL_FUNCTIONS = (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch.max_pool2d,
                  torch.avg_pool2d if hasattr(torch, "avg_pool2d") else F.avg_pool2d)
ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)

#: The BatchNorm a conv of each dimension folds with.
CONV_BN = ((nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d), (nn.Conv3d, nn.BatchNorm3d))
BATCH_NORMS = tuple(bn for _, bn in CONV_BN)


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
    #: qualified names of the BatchNorm layers no graph covers (the model does not trace)
    unproven: list = field(default_factory=list)


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


def _bn_for(conv, bn):
    """True when ``bn`` is the BatchNorm of ``conv``'s dimension over its output channels."""
    return any(isinstance(conv, c) and isinstance(bn, b) for c, b in CONV_BN) and bn.num_features == conv.out_channels


def _patterns_fx(gm, prefix=""):
    modules = dict(gm.named_modules())
    calls = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1

    def single_user(node):
        users = list(node.users)
        return users[0] if len(users) == 1 else None

    def full(name):
        return f"{prefix}.{name}" if prefix else name

    chains, relu_fed = [], set()
    for node in gm.graph.nodes:
        if node.op != "call_module" or calls[node.target] != 1:
            continue
        user = single_user(node)
        if user is not None and _is_relu(user, modules):
            relu_fed.add(full(node.target))
        if user is None or user.op != "call_module" or calls[user.target] != 1:
            continue
        if not _bn_for(modules[node.target], modules[user.target]):
            continue
        after = single_user(user)
        follows = after is not None and _is_relu(after, modules)
        relu = full(after.target) if follows and after.op == "call_module" and calls[after.target] == 1 else None
        chains.append(ConvBnChain(full(node.target), full(user.target), relu, follows))
    return chains, relu_fed


# ---- what an untraceable forward does with its children, read from its source ----

#: Attributes through which a forward can reach children without naming them.
_DYNAMIC_ATTRIBUTES = {"_modules", "children", "named_children", "modules", "named_modules", "get_submodule",
                       "__dict__", "__getattr__"}


def _is_torch_class(cls):
    return cls.__module__ == "torch" or cls.__module__.startswith("torch.")


def _methods(cls):
    """``{name: [FunctionDef, ...]}`` over the classes of ``cls``'s MRO that are not torch's, and
    whether every source could be read."""
    methods = {}
    for klass in cls.__mro__:
        if _is_torch_class(klass) or klass is object:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError, IndentationError):
            return methods, False
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for item in body:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                methods.setdefault(item.name, []).append(item)
    return methods, True


def _children_called_whole(module):
    """Names of ``module``'s children that its forward (and the methods it calls on ``self``)
    only ever calls as a whole: ``self.child(...)``. Anything else (an index, an attribute of
    the child, the child passed on, ``self`` itself passed on or iterated, or a source that
    cannot be read) leaves the child out, as does any access to ``self``'s children by a
    dynamic route (``self.children()``, ``getattr(self, ...)``)."""
    children = set(module._modules)
    methods, readable = _methods(type(module))
    if not readable or "forward" not in methods:
        return set()
    seen, todo, functions = set(), ["forward"], []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for fn in methods.get(name, []):
            functions.append(fn)
            self_name = fn.args.args[0].arg if fn.args.args else "self"
            for node in ast.walk(fn):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                    value = node.func.value
                    if (isinstance(value, ast.Name) and value.id == self_name) or (
                            isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
                            and value.func.id == "super"):
                        todo.append(node.func.attr)
    whole = set(children)
    for fn in functions:
        self_name = fn.args.args[0].arg if fn.args.args else "self"
        call_targets, attribute_values, super_args = set(), set(), set()
        for node in ast.walk(fn):
            if isinstance(node, ast.Call):
                call_targets.add(id(node.func))
                if isinstance(node.func, ast.Name) and node.func.id == "super":
                    super_args.update(id(a) for a in node.args)
            elif isinstance(node, ast.Attribute):
                attribute_values.add(id(node.value))
        for node in ast.walk(fn):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == self_name:
                if node.attr in _DYNAMIC_ATTRIBUTES:
                    return set()
                if node.attr in children and isinstance(node.ctx, ast.Load) and id(node) not in call_targets:
                    whole.discard(node.attr)
            elif (isinstance(node, ast.Name) and node.id == self_name and id(node) not in attribute_values
                  and id(node) not in super_args):
                return set()  # self passed on, indexed or iterated: any child may be reached
    return whole


def _is_plain_sequential(module):
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _is_leaf(module):
    return not module._modules


def _batch_norms(module, prefix):
    return [_join(prefix, n) if n else prefix for n, m in module.named_modules() if isinstance(m, BATCH_NORMS)]


def _join(prefix, name):
    return f"{prefix}.{name}" if prefix else name


def _patterns_untraced(module, prefix, chains, relu_fed, unproven):
    """Patterns of a module that does not trace, from the parts of it that can be proven."""
    if _is_plain_sequential(module):
        whole = set(module._modules)
        names = list(module._modules)
        mods = [module._modules[n] for n in names]
        for i, m in enumerate(mods):
            nxt = mods[i + 1] if i + 1 < len(mods) else None
            if isinstance(nxt, nn.ReLU) and mods.count(m) == 1:
                relu_fed.add(_join(prefix, names[i]))
            if nxt is not None and _bn_for(m, nxt) and mods.count(m) == 1 and mods.count(nxt) == 1:
                third = mods[i + 2] if i + 2 < len(mods) else None
                relu = _join(prefix, names[i + 2]) if isinstance(third, nn.ReLU) and mods.count(third) == 1 else None
                chains.append(ConvBnChain(_join(prefix, names[i]), _join(prefix, names[i + 1]), relu, relu is not None))
        leaf_bn_proven = True  # the order of the children is the data flow
    else:
        whole = _children_called_whole(module)
        leaf_bn_proven = False  # an opaque forward: nothing shows what feeds a BN child
    for name, child in module._modules.items():
        if child is None:
            continue
        full = _join(prefix, name)
        if _is_leaf(child):
            if isinstance(child, BATCH_NORMS) and not leaf_bn_proven:
                unproven.append(full)
            continue
        if name not in whole:
            unproven.extend(_batch_norms(child, full))
            continue
        gm, _ = trace(child)
        if gm is not None:
            c, r = _patterns_fx(gm, full)
            chains.extend(c)
            relu_fed.update(r)
        else:
            _patterns_untraced(child, full, chains, relu_fed, unproven)


def find_patterns(model: nn.Module) -> Patterns:
    gm, error = trace(model)
    if gm is not None:
        chains, relu_fed = _patterns_fx(gm)
        return Patterns(chains, relu_fed, gm, error)
    chains, relu_fed, unproven = [], set(), []
    if _is_leaf(model):
        unproven = _batch_norms(model, "")
    else:
        _patterns_untraced(model, "", chains, relu_fed, unproven)
    return Patterns(chains, relu_fed, None, error, unproven)


def set_submodule(model: nn.Module, name: str, module: nn.Module):
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)
