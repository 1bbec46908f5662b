"""The per-step cost of synchronising the activation quantizers across ranks
(fakequant.distributed.sync_observers) against unsynchronised DDP, gloo on this machine.

A QAT MLP (Linear layers of `width`, ReLU; PaddleSlim-style moving_average_abs_max activation
quantizers, channel-wise abs-max weights) trained with DDP on `world` processes, one thread each.
Per configuration: the median training-step time (forward, backward with DDP's gradient
all-reduce, SGD step) over the timed steps, with and without synchronisation, and what the
synchronisation adds per step: one all_reduce of 2 floats per activation quantizer.

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

# (layers, width, per-rank batch)
CONFIGS = [(4, 256, 32), (8, 256, 32), (8, 1024, 64)]
QUICK_CONFIGS = [(2, 32, 8)]


def model(layers, width):
    torch.manual_seed(0)
    mods = []
    for _ in range(layers):
        mods += [nn.Linear(width, width), nn.ReLU()]
    return fakequant.quant_aware(nn.Sequential(*mods, nn.Linear(width, 10)),
                                 {"weight_quantize_type": "channel_wise_abs_max",
                                  "activation_quantize_type": "moving_average_abs_max"})


def worker(rank, world, init_file, configs, warmup, steps):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    rows = []
    for layers, width, batch in configs:
        for sync in (False, True):
            m = model(layers, width)
            fakequant.distributed.sync_observers(m, enabled=sync)
            quantizers = len(fakequant.distributed._activation_quantizers(m))
            ddp = DDP(m, broadcast_buffers=False)
            opt = torch.optim.SGD(ddp.parameters(), lr=1e-3)
            x, y = torch.randn(batch, width), torch.randint(10, (batch,))
            times = []
            for i in range(warmup + steps):
                dist.barrier()
                t0 = time.perf_counter()
                opt.zero_grad()
                F.cross_entropy(ddp(x), y).backward()
                opt.step()
                if i >= warmup:
                    times.append((time.perf_counter() - t0) * 1e3)
            rows.append({"layers": layers, "width": width, "batch_per_rank": batch, "world": world,
                         "synchronised": sync, "activation_quantizers": quantizers,
                         "collectives_added_per_step": quantizers if sync else 0,
                         "bytes_added_per_step": 8 * quantizers if sync else 0,
                         "step_ms_median": statistics.median(times), "step_ms_min": min(times), "rank": rank})
    dist.destroy_process_group()
    if rank == 0:  # the ranks time the same steps (a barrier before each): rank 0's numbers
        torch.save(rows, init_file + ".rows")


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
            base = next(b for b in rows if not b["synchronised"] and b["layers"] == r["layers"]
                        and b["width"] == r["width"])
            r["added_ms"] = r["step_ms_median"] - base["step_ms_median"]
            r["added_ms_per_collective"] = r["added_ms"] / max(r["activation_quantizers"], 1)
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
