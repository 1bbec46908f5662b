"""The custom-op contract, for every op in the op database (op_db.py): torch.library.opcheck
(schema, autograd registration, fake kernel, AOT dispatch), fake/meta kernels giving the real
kernels' shapes, dtypes and strides, values against the op's reference, torch.compile with
fullgraph=True equal to eager (outputs, state updated in place, gradients; two sizes, dynamic
and static), and on a GPU: no host synchronisation (forward and backward) and CUDA-graph
capture (replayed on new data, equal to eager)."""

from __future__ import annotations

import pytest
import torch

from conftest import DEVICES, HAS_CUDA
from op_db import OP_DB, OpInfo, Sample
from reference import unpack_mask

ids = [info.name for info in OP_DB]
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")


def clone(t):
    """A copy with the same strides and storage offset (clone() would make a non-dense view dense)."""
    if not isinstance(t, torch.Tensor):
        return list(t) if isinstance(t, list) else t
    base = torch.empty(t.untyped_storage().nbytes() // t.element_size(), dtype=t.dtype, device=t.device)
    out = base.as_strided(t.shape, t.stride(), t.storage_offset())
    out.copy_(t.detach())
    return out


def prepared(info: OpInfo, sample: Sample, grad: bool):
    """Fresh copies of the sample's arguments; the differentiable ones require grad if asked."""
    args = [clone(a) for a in sample.args]
    kwargs = {k: clone(v) for k, v in sample.kwargs.items()}
    if grad:
        for i in sample.grad:
            args[i].requires_grad_()
    return args, kwargs


def outputs(result):
    return (result,) if isinstance(result, torch.Tensor) else tuple(result)


def tensors_in(args, kwargs):
    return [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]


def assert_same(got, expected, rtol=0.0):
    assert got.shape == expected.shape and got.dtype == expected.dtype, (got.shape, expected.shape)
    atol = 0.0 if rtol == 0.0 else rtol * float(expected.detach().abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(got.detach(), expected.detach(), rtol=rtol, atol=atol, equal_nan=True)


def samples_of(info, device, batch=2):
    return [pytest.param(s, id=s.name) for s in info.samples(device, batch)]


def grads(outs, leaves, seed_grads):
    diff = [(o, g) for o, g in zip(outs, seed_grads) if o.requires_grad]
    return torch.autograd.grad([o for o, _ in diff], leaves, [g for _, g in diff], allow_unused=True)


# --- opcheck, fake kernels, reference ------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("info", OP_DB, ids=ids)
def test_opcheck(info, device):
    for sample in info.samples(device, 2):
        args, kwargs = prepared(info, sample, grad=True)
        torch.library.opcheck(info.op, tuple(args), kwargs)


@pytest.mark.parametrize("info", OP_DB, ids=ids)
def test_fake_kernel_matches_the_real_kernel(info):
    for sample in info.samples("cpu", 2):
        args, kwargs = prepared(info, sample, grad=False)
        meta = [torch.empty_strided(a.shape, a.stride(), dtype=a.dtype, device="meta") if isinstance(a, torch.Tensor)
                else a for a in args]
        meta_kwargs = {k: (torch.empty_like(v, device="meta") if isinstance(v, torch.Tensor) else v)
                       for k, v in kwargs.items()}
        fake = outputs(info.op(*meta, **meta_kwargs))
        real = outputs(info.op(*args, **kwargs))
        assert len(fake) == len(real)
        for f, r in zip(fake, real):
            assert f.device.type == "meta", sample.name
            assert (f.shape, f.dtype) == (r.shape, r.dtype), sample.name
            if r.numel() > 1:
                assert f.stride() == r.stride(), (sample.name, f.stride(), r.stride())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("info", [i for i in OP_DB if i.reference is not None], ids=lambda i: i.name)
def test_matches_reference(info, device):
    checked = 0
    for sample in info.samples(device, 2):
        args, kwargs = prepared(info, sample, grad=False)
        expected = info.reference(*args, **kwargs)
        if expected is None:
            continue
        got = outputs(info.op(*args, **kwargs))
        assert len(got) == len(expected), sample.name
        for g, e in zip(got, expected):
            if e.dtype == torch.bool and g.dtype == torch.uint8:
                g = unpack_mask(g, got[0])
            assert_same(g, e)
        checked += 1
    assert checked > 0


# --- torch.compile --------------------------------------------------------------------------


MUTATING = [i for i in OP_DB if i.op._schema.is_mutable]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("grad_mode", [True, False])
@pytest.mark.parametrize("info", MUTATING, ids=[i.name for i in MUTATING])
def test_in_place_ops_bump_what_they_write(info, device, grad_mode):
    """Each argument the schema marks written (Tensor(a!)) moves to a new version, as the state
    of PyTorch's in-place ops does, with or without a graph recorded; it never requires grad."""
    written = [i for i, a in enumerate(info.op._schema.arguments) if a.alias_info and a.alias_info.is_write]
    assert written
    for sample in info.samples(device, 2):
        args, kwargs = prepared(info, sample, grad=True)
        before = [args[i]._version for i in written]
        with torch.set_grad_enabled(grad_mode):
            out = outputs(info.op(*args, **kwargs))
        assert out[0].requires_grad == grad_mode
        for i, version in zip(written, before):
            assert args[i]._version > version, info.op._schema.arguments[i].name
            assert not args[i].requires_grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("info", OP_DB, ids=ids)
def test_compile_fullgraph_equals_eager(info, device, dynamic):
    """Each compile sample at two sizes (with dynamic=True the second reuses the graph), called
    twice in a row (ops with state update it from their own previous result)."""
    torch._dynamo.reset()
    def call(*args, **kwargs):
        return info.op(*args, **kwargs)

    compiled = torch.compile(call, fullgraph=True, dynamic=dynamic)
    ran = 0
    for batch in (3, 5):
        for sample in (s for s in info.samples(device, batch) if s.compile):
            eager_args, kwargs = prepared(info, sample, grad=True)
            compiled_args, _ = prepared(info, sample, grad=True)
            for _ in range(2):
                eager = outputs(call(*eager_args, **kwargs))
                got = outputs(compiled(*compiled_args, **kwargs))
                for g, e in zip(got, eager):
                    assert_same(g, e, info.compile_rtol)
                for c, e in zip(tensors_in(compiled_args, {}), tensors_in(eager_args, {})):
                    assert_same(c, e, info.compile_rtol)  # the state updated in place
            if sample.grad:
                seed_grads = [torch.randn_like(e) if e.is_floating_point() else None for e in eager]
                leaves_e = [eager_args[i] for i in sample.grad]
                leaves_c = [compiled_args[i] for i in sample.grad]
                for g, e in zip(grads(got, leaves_c, seed_grads), grads(eager, leaves_e, seed_grads)):
                    assert (g is None) == (e is None)
                    if e is not None:
                        assert_same(g, e, info.compile_rtol)
            ran += 1
    assert ran > 0, f"{info.name} has no sample marked compile=True"


# --- CUDA: no host synchronisation, CUDA graphs --------------------------------------------


@needs_cuda
@pytest.mark.parametrize("info", OP_DB, ids=ids)
def test_cuda_never_syncs(info):
    for sample in info.samples("cuda", 2):
        args, kwargs = prepared(info, sample, grad=True)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            outs = outputs(info.op(*args, **kwargs))
            if sample.grad:
                grads(outs, [args[i] for i in sample.grad], [torch.ones_like(o) for o in outs])
        finally:
            torch.cuda.set_sync_debug_mode("default")


@needs_cuda
@pytest.mark.parametrize("info", OP_DB, ids=ids)
def test_cuda_graph_capture(info):
    """Captured once; the first tensor argument (the input, or grad_output of a backward op) is
    refilled with new data; a replay equals eager on the same data and state."""
    for sample in info.samples("cuda", 2):
        static, kwargs = prepared(info, sample, grad=False)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the capture
            info.op(*prepared(info, sample, grad=False)[0], **kwargs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = outputs(info.op(*static, **kwargs))
        static[0].copy_(torch.randn_like(static[0], dtype=torch.float32).to(static[0].dtype) * 3)
        before = [clone(a) for a in static]
        graph.replay()
        torch.cuda.synchronize()
        eager = outputs(info.op(*before, **kwargs))
        for c, e in zip(captured, eager):
            assert_same(c, e)
        for a, b in zip(tensors_in(static, {}), tensors_in(before, {})):
            assert_same(a, b)  # the state the replay updated
