"""Multi-process QAT (fakequant.distributed, docs/distributed.md): DDP and FSDP2 (fully_shard) of a
small QAT MLP over gloo with 2 processes on this machine (whole models, ConvBN and 3-4
processes: test_distributed_models.py). With the activation quantizers synchronised, every rank
holds the same quantizer state and parameters after every step, and the state equals that of one
process training on the concatenated batch (exactly after the first step; afterwards within the
float noise of DDP's gradient averaging, which moves the weights by ~1e-8). Without
synchronisation the states differ from one process's (and the ranks' from each other's), which
is what the first assertions would catch."""

import copy
from functools import partial

import pytest
import torch
import torch.distributed as dist
from torch import nn

import fakequant
from fakequant.nn import qat
from dist_helpers import run_ranks, shard, train, wrap
from qat_helpers import aq, needs_ao, single_thread

WORLD = 2
STEPS = 4
BATCH = 16  # global; each rank takes BATCH / WORLD


def net():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 8), nn.ReLU(),
                         nn.Linear(8, 3))


def build(flow):
    """The same QAT model on every rank (fixed seed): a PaddleSlim-style facade or torch.ao's
    prepare_qat with fakequant's qconfig (moving-average min/max activations)."""
    torch.manual_seed(0)
    if flow == "paddle":
        return fakequant.quant_aware(net(), {"weight_quantize_type": "channel_wise_abs_max",
                                             "activation_quantize_type": "moving_average_abs_max"})
    if flow == "paddle_range":
        return fakequant.quant_aware(net(), {"activation_quantize_type": "range_abs_max"})
    if flow == "lsq":  # learnable activations (LSQ with its gradient scaling), abs-max weights
        m = net().train()
        weight = fakequant.qconfig.get_qat_qconfig("pytorch").weight
        m.qconfig = aq.QConfig(activation=partial(fakequant.nn.LearnableFakeQuantize, use_grad_scaling=True),
                               weight=weight)
        return aq.prepare_qat(m, mapping=qat.get_qat_module_mappings())
    m = net().train()
    m.qconfig = fakequant.qconfig.get_qat_qconfig("pytorch")
    return aq.prepare_qat(m, mapping=qat.get_qat_module_mappings())


def batches():
    gen = torch.Generator().manual_seed(1)
    # Different scales per step, so that every step moves the statistics.
    return [(torch.randn(BATCH, 1, 8, 8, generator=gen) * (1 + step), torch.randint(3, (BATCH,), generator=gen))
            for step in range(STEPS)]


def initialise_first(flow, parallel):
    """FSDP2 shards a learnable quantizer's scale / zero point, and a first-batch initialisation
    written into the unsharded copy is lost at the reshard (docs/distributed.md): such a model
    observes its first batch once before wrapping (no gradient step), in one process as well."""
    return flow == "lsq" and parallel == "fsdp2"


def worker(rank, world, flow, parallel, bucketed=False):
    results = {}
    for sync in (True, False):
        model = build(flow)
        fakequant.distributed.sync_observers(model, enabled=sync, bucketed=bucketed)
        data = shard(batches(), rank, world)
        if initialise_first(flow, parallel):
            with torch.no_grad():
                model(data[0][0])
        results[sync] = train(wrap(model, parallel), data, record=model)
    return results


def quantizer_keys(history):
    """The quantizers' state: their buffers, and the learnable quantizers' scale / zero point."""
    return [k for k in history[0] if k.startswith("buffer:") or "fake_quant" in k or "activation_post_process" in k]


@pytest.mark.parametrize("flow,parallel", [("paddle", "ddp"), ("paddle_range", "ddp"),
                                           pytest.param("torch_ao", "ddp", marks=needs_ao),
                                           pytest.param("lsq", "ddp", marks=needs_ao), ("paddle", "fsdp2"),
                                           pytest.param("lsq", "fsdp2", marks=needs_ao)])
def test_synchronised_quantizers_equal_across_ranks_and_single_process(flow, parallel):
    ranks = run_ranks(worker, WORLD, flow, parallel)
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        model = build(flow)
        if initialise_first(flow, parallel):
            with torch.no_grad():
                model(batches()[0][0])
        single = train(model, batches())
    synced = [r[True] for r in ranks]
    keys = quantizer_keys(synced[0])
    assert any("scale" in k for k in keys), keys
    for step in range(STEPS):
        for k in synced[0][step]:
            assert torch.equal(synced[0][step][k], synced[1][step][k]), (flow, step, k)
    # The first step: the same arithmetic on the same statistics as one process.
    for k in keys:
        assert torch.equal(synced[0][0][k], single[0][k]), (flow, k, synced[0][0][k], single[0][k])
    for step in range(1, STEPS):
        for k in synced[0][step]:
            torch.testing.assert_close(synced[0][step][k], single[step][k], rtol=1e-5, atol=1e-6,
                                       msg=lambda m, k=k, step=step: f"{flow} step {step} {k}: {m}")
    # Without synchronisation each rank observes its own shard: the states part from one process's
    # after step 0, and from each other's, except where FSDP2 made the one-element scale rank 0's
    # (the rank holding its shard) when it wrapped the initialised model.
    unsynced = [r[False] for r in ranks]
    assert any(not torch.equal(unsynced[0][0][k], single[0][k]) for k in keys), flow
    if not initialise_first(flow, parallel):
        assert any(not torch.equal(unsynced[0][0][k], unsynced[1][0][k]) for k in keys), flow


@pytest.mark.parametrize("flow", ["paddle", "paddle_range", pytest.param("torch_ao", marks=needs_ao)])
def test_bucketed_quantizer_states_equal_across_ranks(flow):
    """bucketed=True: each rank updates from its own shard, then one all_reduce(MAX) after the
    forward. The states are equal on every rank after every step; after the first step the first
    quantizer's equals one process's on the whole batch (every update is monotone in the batch
    statistic), the later ones' do not (their inputs passed quantizers with each rank's own
    qparams)."""
    ranks = run_ranks(worker, WORLD, flow, "ddp", True)
    with single_thread():
        single = train(build(flow), batches())
    synced = [r[True] for r in ranks]
    keys = [k for k in quantizer_keys(synced[0]) if "weight_fake_quant" not in k]
    assert any("scale" in k for k in keys), keys
    for step in range(STEPS):
        for k in synced[0][step]:
            assert torch.equal(synced[0][step][k], synced[1][step][k]), (flow, step, k)
    first = next(name for name, m in build(flow).named_modules()
                 if getattr(m, "_synchronisable", False) and not name.endswith("weight_fake_quant"))
    first_keys = [k for k in keys if k.startswith(f"buffer:{first}.")]
    assert any("scale" in k or "max_val" in k for k in first_keys), (first, first_keys)
    for k in first_keys:
        assert torch.equal(synced[0][0][k], single[0][k]), (flow, k, synced[0][0][k], single[0][k])
    assert any(not torch.equal(synced[0][0][k], single[0][k]) for k in keys), "the documented difference"
    unsynced = [r[False] for r in ranks]
    assert any(not torch.equal(unsynced[0][0][k], unsynced[1][0][k]) for k in keys), flow


def test_bucketed_mode_uses_one_hook_and_no_per_quantizer_collective(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        model = build("paddle")
        for _ in range(2):  # called again: still one hook
            fakequant.distributed.sync_observers(model, bucketed=True)
        hooks = [h for h in model._forward_hooks.values() if h is fakequant.distributed._bucket_hook]
        assert len(hooks) == 1
        quantizers = fakequant.distributed._activation_quantizers(model)
        assert all(fakequant.distributed.per_batch_group(q) is None for q in quantizers)
        assert all(fakequant.distributed.synchronised_group(q) is not None for q in quantizers)
        fakequant.distributed.sync_observers(model)  # exact mode again: the hook goes
        assert not model._forward_hooks
        assert all(fakequant.distributed.per_batch_group(q) is not None for q in quantizers)
    finally:
        dist.destroy_process_group()


def test_sync_observers_needs_a_process_group():
    model = build("paddle")
    with pytest.raises(RuntimeError, match="init_process_group"):
        fakequant.distributed.sync_observers(model)
    assert fakequant.distributed.sync_observers(model, enabled=False) is model


def edge_worker(rank, world):
    """Rank 1 sends a NaN batch, then an empty one; rank 0 ordinary batches."""
    gen = torch.Generator().manual_seed(3)
    batches_0 = [torch.randn(6, 5, generator=gen) * s for s in (1.0, 2.0, 3.0)]
    quantizers = [fakequant.nn.MovingAverageAbsMaxFakeQuantize(),
                  fakequant.nn.MovingAverageMinMaxFakeQuantize()]
    history = []
    for q in quantizers:
        q.train()
        fakequant.distributed.sync_observers(q)
        states = []
        for step, x in enumerate(batches_0):
            if rank == 1:
                x = x.clone()
                if step == 1:
                    x[2, 3] = float("nan")
                if step == 2:
                    x = x[:0]
            q(x)
            states.append({k: v.clone() for k, v in q.state_dict().items()})
        history.append(states)
    # A learnable quantizer whose first batch is empty on rank 1: it initialises from rank 0's.
    lsq = fakequant.nn.LearnableFakeQuantize().train()
    fakequant.distributed.sync_observers(lsq)
    lsq(batches_0[0] if rank == 0 else batches_0[0][:0])
    history.append([{k: v.detach().clone() for k, v in lsq.state_dict().items()}])
    return batches_0, history


def test_nan_on_one_rank_skips_the_update_everywhere_and_an_empty_batch_adds_nothing():
    (batches_0, h0), (_, h1) = run_ranks(edge_worker, WORLD)
    for q_index, make in enumerate((fakequant.nn.MovingAverageAbsMaxFakeQuantize,
                                    fakequant.nn.MovingAverageMinMaxFakeQuantize)):
        for step in range(3):
            for k in h0[q_index][step]:
                assert torch.equal(h0[q_index][step][k], h1[q_index][step][k]), (q_index, step, k)
        # One process: step 0 on both ranks' (equal) batches, step 1 skipped (a NaN somewhere),
        # step 2 on rank 0's batch alone (rank 1's is empty).
        ref = make().train()
        ref(torch.cat([batches_0[0], batches_0[0]]))
        for k, v in ref.state_dict().items():
            assert torch.equal(h0[q_index][0][k], v), (q_index, k)
            assert torch.equal(h0[q_index][1][k], v), ("NaN step applied", q_index, k)
        ref(batches_0[2])
        for k, v in ref.state_dict().items():
            assert torch.equal(h0[q_index][2][k], v), ("empty-rank step", q_index, k)
    ref = fakequant.nn.LearnableFakeQuantize().train()
    ref(batches_0[0])
    for k, v in ref.state_dict().items():
        assert torch.equal(h0[2][0][k], v.detach()) and torch.equal(h1[2][0][k], v.detach()), ("lsq init", k)


def test_synchronised_model_copies_converts_and_saves(tmp_path):
    """The mark holds a process group, which cannot be pickled: a deep copy (and so convert) keeps
    it, a saved model loads unsynchronised; compiled, the collective traces (one process here)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        group = dist.new_group([0])
        model = build("paddle")
        fakequant.distributed.sync_observers(model, group)
        quantizers = fakequant.distributed._activation_quantizers(model)
        assert quantizers and all(fakequant.distributed.synchronised_group(q) is group for q in quantizers)
        x = torch.randn(4, 1, 8, 8)
        eager = model(x)
        compiled = fakequant.distributed.sync_observers(build("paddle"), group)
        torch.testing.assert_close(torch.compile(compiled, fullgraph=True)(x), eager)
        twin = copy.deepcopy(model)
        assert all(fakequant.distributed.synchronised_group(q) is group
                   for q in fakequant.distributed._activation_quantizers(twin))
        fakequant.convert(model)
        torch.save(model, tmp_path / "model.pt")
        loaded = torch.load(tmp_path / "model.pt", weights_only=False)
        assert all(fakequant.distributed.synchronised_group(q) is None
                   for q in fakequant.distributed._activation_quantizers(loaded))
    finally:
        dist.destroy_process_group()
