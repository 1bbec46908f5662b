"""Shared by the multi-process tests: spawning gloo ranks on this machine, a training loop that
records the model's states after every step, and the DDP / FSDP2 wrappers."""

from __future__ import annotations

import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP


def _rank_main(rank, fn, world, init_file, out_dir, args, backend):
    torch.set_num_threads(1)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save(fn(rank, world, *args), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
    exit_without_finalizing()


def exit_without_finalizing():
    """End a rank that finished its work with exit status 0, skipping the interpreter's
    finalization: there, gloo's worker threads occasionally abort the process ("terminate called
    without an active exception", SIGABRT) after everything is done and saved."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def backend_for(device, world):
    """NCCL where every rank has a GPU of its own, else gloo (which also takes CUDA tensors)."""
    return "nccl" if device == "cuda" and torch.cuda.device_count() >= world else "gloo"


def run_ranks(fn, world, *args, backend="gloo"):
    """``fn(rank, world, *args)`` on ``world`` processes of one group; their results, by rank."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank_main, args=(fn, world, os.path.join(tmp, "init"), tmp, args, backend), nprocs=world,
                 join=True)
        return [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=False, map_location="cpu")
                for r in range(world)]


def full_states(model):
    """Every buffer (the quantizers' and BN's states) and parameter by name, FSDP2's sharded
    parameters gathered (DTensor.full_tensor)."""
    out = {f"buffer:{k}": v.detach().clone() for k, v in model.named_buffers()}
    for k, v in model.named_parameters():
        v = v.detach()
        out[f"param:{k}"] = (v.full_tensor() if hasattr(v, "full_tensor") else v).clone()
    return out


def train(model, data, record=None, lr=0.05, loss=F.cross_entropy):
    """SGD steps of ``model`` (a wrapper, or the plain model of the one-process reference) over
    ``data`` (input, target) pairs; the states of ``record`` (default: ``model``) after each step."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    history = []
    for x, y in data:
        opt.zero_grad()
        loss(model(x), y).backward()
        opt.step()
        history.append(full_states(model if record is None else record))
    return history


def wrap(model, parallel):
    """``model`` under DDP, or under FSDP2 with every conv and linear layer its own unit."""
    if parallel == "ddp":
        return DDP(model, broadcast_buffers=False)
    from torch.distributed.fsdp import fully_shard

    for layer in model.modules():
        if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            fully_shard(layer)
    return fully_shard(model)


def shard(data, rank, world):
    """This rank's part of every (input, target) batch: equal slices along the batch."""
    return [(x.chunk(world)[rank], y.chunk(world)[rank]) for x, y in data]
