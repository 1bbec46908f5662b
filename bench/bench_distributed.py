"""The per-step cost of synchronising the activation quantizers (fakequant.distributed.sync_observers)
and the ConvBN batch statistics (sync_batch_norm) across ranks against unsynchronised DDP, gloo on
this machine.

Two QAT models (PaddleSlim-style moving_average_abs_max activation quantizers, channel-wise
abs-max weights) trained with DDP on `world` processes, one thread each: an MLP (Linear layers of
`width`, ReLU), and a CNN of Conv+BN+ReLU blocks (ConvBnReLU2d, fold_mode "batch") of `channels`
on `size` x `size` images. Per configuration: the median training-step time (forward, backward
with DDP's gradient all-reduce, SGD step) over the timed steps, unsynchronised, with the
observers synchronised, and (MLP) bucketed, or (CNN) with the BN statistics too, and what that
adds per step: one all_reduce of 2 floats per activation quantizer (bucketed: one all_reduce of
every quantizer's state as float64 after the forward); per ConvBn module one all_reduce of 2C+1
float64 forward and one of 2C backward.

    python bench/bench_distributed.py --out distributed.json [--quick]
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from bench_env import arguments, require_fakequant, run_context  # bench/ is the script's folder

fakequant = require_fakequant("bench_distributed.py")

CONFIGS = [dict(model="mlp", layers=4, width=256, batch_per_rank=32),
           dict(model="mlp", layers=8, width=256, batch_per_rank=32),
           dict(model="mlp", layers=8, width=1024, batch_per_rank=64),
           dict(model="cnn", layers=4, channels=32, size=16, batch_per_rank=16)]
QUICK_CONFIGS = [dict(model="mlp", layers=2, width=32, batch_per_rank=8),
                 dict(model="cnn", layers=2, channels=8, size=8, batch_per_rank=4)]
PADDLE = {"weight_quantize_type": "channel_wise_abs_max", "activation_quantize_type": "moving_average_abs_max",
          "fold_mode": "batch"}


def model(cfg):
    torch.manual_seed(0)
    mods = []
    if cfg["model"] == "mlp":
        width = cfg["width"]
        for _ in range(cfg["layers"]):
            mods += [nn.Linear(width, width), nn.ReLU()]
        return fakequant.quant_aware(nn.Sequential(*mods, nn.Linear(width, 10)), PADDLE)
    channels = 3
    for _ in range(cfg["layers"]):
        mods += [nn.Conv2d(channels, cfg["channels"], 3, padding=1, bias=False), nn.BatchNorm2d(cfg["channels"]),
                 nn.ReLU()]
        channels = cfg["channels"]
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10)]
    return fakequant.quant_aware(nn.Sequential(*mods, *head), PADDLE)


def inputs(cfg):
    batch = cfg["batch_per_rank"]
    if cfg["model"] == "mlp":
        return torch.randn(batch, cfg["width"]), torch.randint(10, (batch,))
    return torch.randn(batch, 3, cfg["size"], cfg["size"]), torch.randint(10, (batch,))


def variants(cfg):
    """(observers synchronised, BN statistics synchronised, observers bucketed)."""
    if cfg["model"] == "cnn":
        return [(False, False, False), (True, False, False), (True, True, False)]
    return [(False, False, False), (True, False, False), (True, False, True)]


def worker(rank, world, init_file, configs, warmup, steps):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        rows = measure(rank, world, configs, warmup, steps)  # its models are gone before the group is
    finally:
        dist.destroy_process_group()
    if rank == 0:  # the ranks time the same steps (a barrier before each): rank 0's numbers
        torch.save(rows, init_file + ".rows")
    # Skip the interpreter's finalization, where gloo's worker threads occasionally abort a finished
    # rank ("terminate called without an active exception", SIGABRT).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def measure(rank, world, configs, warmup, steps):
    rows = []
    for index, cfg in enumerate(configs):
        for sync, sync_bn, bucketed in variants(cfg):
            m = model(cfg)
            fakequant.distributed.sync_observers(m, enabled=sync, bucketed=bucketed)
            conv_bn = fakequant.distributed._conv_bn_modules(m)
            if sync_bn:
                fakequant.distributed.sync_batch_norm(m)
            activation = fakequant.distributed._activation_quantizers(m)
            quantizers = len(activation)
            bucket_bytes = 8 * sum(t.numel() for q in activation for t, _ in q._bucket_states())
            bn_channels = sum(c.out_channels for c in conv_bn) if sync_bn else 0
            ddp = DDP(m, broadcast_buffers=False)
            opt = torch.optim.SGD(ddp.parameters(), lr=1e-3)
            x, y = inputs(cfg)
            times = []
            for i in range(warmup + steps):
                dist.barrier()
                t0 = time.perf_counter()
                opt.zero_grad()
                F.cross_entropy(ddp(x), y).backward()
                opt.step()
                if i >= warmup:
                    times.append((time.perf_counter() - t0) * 1e3)
            observer_collectives = (1 if bucketed else quantizers) if sync else 0
            observer_bytes = (bucket_bytes if bucketed else 8 * quantizers) if sync else 0
            rows.append({**cfg, "config": index, "world": world, "synchronised": sync, "bn_synchronised": sync_bn,
                         "bucketed": bucketed, "activation_quantizers": quantizers, "conv_bn_modules": len(conv_bn),
                         "collectives_added_per_step": observer_collectives + 2 * len(conv_bn) * sync_bn,
                         "bytes_added_per_step": observer_bytes + 8 * (4 * bn_channels + len(conv_bn) * sync_bn),
                         "step_ms_median": statistics.median(times), "step_ms_min": min(times), "rank": rank})
    return rows


def main() -> None:
    parser = arguments(__doc__, "one small model, a few steps (a check)")
    parser.add_argument("--world", type=int, default=2)
    a = parser.parse_args()
    configs = QUICK_CONFIGS if a.quick else CONFIGS
    warmup, steps = (2, 5) if a.quick else (10, 60)
    with tempfile.TemporaryDirectory() as tmp:
        init = os.path.join(tmp, "init")
        mp.spawn(worker, args=(a.world, init, configs, warmup, steps), nprocs=a.world, join=True)
        rows = torch.load(init + ".rows")
    for r in rows:
        if r["synchronised"]:
            base = next(b for b in rows if not b["synchronised"] and b["config"] == r["config"])
            r["added_ms"] = r["step_ms_median"] - base["step_ms_median"]
            r["added_ms_per_collective"] = r["added_ms"] / max(r["collectives_added_per_step"], 1)
    report = {"context": run_context(a, torch.device("cpu"), backend="gloo", world=a.world,
                                     threads_per_rank=1), "rows": rows}
    text = json.dumps(report, indent=1)
    if a.out:
        a.out.write_text(text + "\n")
    else:
        print(text)
    for r in rows:
        print(r, file=sys.stderr)


if __name__ == "__main__":
    main()
