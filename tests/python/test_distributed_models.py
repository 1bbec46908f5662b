"""Multi-process QAT of whole models, and ConvBN batch statistics across ranks
(fakequant.distributed.sync_batch_norm, docs/distributed.md), over gloo with 2-4 processes.

- The digits CNN (Conv+BN+ReLU folded into ConvBnReLU2d by ``quant_aware``, in both fold modes;
  torch.ao's ``prepare_qat`` flow) and a small transformer train for a few steps under DDP and
  FSDP2 with the observers and the BN statistics synchronised: after every step every rank holds
  bit-identical parameters, quantizer states and BN running statistics, and they equal one
  process training on the concatenated batch within the rounding of the sums' order.
- ConvBN alone: the outputs, the input gradients (per rank) and the parameter gradients (summed
  over the ranks) of a synchronised ConvBn2d equal one process's on the concatenated batch, in
  both fold modes, with a rank whose batch is empty too (SyncBatchNorm's gradient).
"""

import copy

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import fakequant
from dist_helpers import backend_for, run_ranks, shard, train, wrap
from fakequant.nn import qat
from qat_helpers import DigitsCNN, aq, digits_split, needs_ao, randomize_bn, single_thread

STEPS = 3
DIGITS_BATCH = 48  # global: 24, 16 or 12 per rank for 2, 3 or 4 processes
TOKENS_BATCH = 12
VOCAB, CONTEXT = 32, 16

# Equal to one process within the rounding of the reduction order: the statistics are float64
# sums across ranks against one float32 pass, DDP's gradients an average of the ranks' sums. A
# rounding difference can put a value on the other side of a quantization boundary, which moves an
# activation by one step. Measured: at most 1e-6 everywhere but one such flip (3.3e-5 on a conv
# weight after the third step); with the backward's all_reduce left out, 1.2e-3 after the first.
RTOL, ATOL = 1e-4, 1e-4


class TinyTransformer(nn.Module):
    """One pre-norm attention + MLP block over token and position embeddings, its projections
    plain ``nn.Linear`` (quantized by quant_aware)."""

    def __init__(self, d=32, heads=2):
        super().__init__()
        self.heads = heads
        self.tok, self.pos = nn.Embedding(VOCAB, d), nn.Embedding(CONTEXT, d)
        self.ln1, self.ln2, self.ln = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.head = nn.Linear(d, VOCAB)

    def forward(self, idx):
        B, T = idx.shape
        x = self.tok(idx) + self.pos(torch.arange(T))
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, -1))
        x = x + self.fc2(F.relu(self.fc1(self.ln2(x))))
        return self.head(self.ln(x))


def token_loss(logits, target):
    return F.cross_entropy(logits.flatten(0, 1), target.flatten())


PADDLE = {"weight_quantize_type": "channel_wise_abs_max", "activation_quantize_type": "moving_average_abs_max"}


def build(name):
    """The same QAT model on every rank (fixed seed)."""
    torch.manual_seed(0)
    if name == "transformer":
        return fakequant.quant_aware(TinyTransformer(), PADDLE)
    if name == "digits_ao":
        m = DigitsCNN().train()
        aq.fuse_modules_qat(m, [["features.0", "features.1", "features.2"], ["features.3", "features.4", "features.5"]],
                            inplace=True)
        m.qconfig = fakequant.qconfig.get_qat_qconfig("pytorch")
        return aq.prepare_qat(m, mapping=qat.get_qat_module_mappings())
    _, fold, *bias = name.split("_")  # digits_<fold mode>[_bias]
    model = fakequant.quant_aware(DigitsCNN(conv_bias=bool(bias)), dict(PADDLE, fold_mode=fold))
    assert sum(isinstance(m, qat.ConvBnReLU2d) for m in model.modules()) == 2, model
    return model


def data(name):
    if name == "transformer":
        gen = torch.Generator().manual_seed(1)
        tokens = [torch.randint(VOCAB, (TOKENS_BATCH, CONTEXT + 1), generator=gen) for _ in range(STEPS)]
        return [(t[:, :-1], t[:, 1:]) for t in tokens]
    x, y, _, _ = digits_split()
    return [(x[i * DIGITS_BATCH:(i + 1) * DIGITS_BATCH], y[i * DIGITS_BATCH:(i + 1) * DIGITS_BATCH])
            for i in range(STEPS)]


def loss_of(name):
    return token_loss if name == "transformer" else F.cross_entropy


def prepare(name, bn_sync, synchronised=True):
    model = build(name)
    if bn_sync == "convert" and synchronised:  # torch's way: the ConvBn modules' bn become SyncBatchNorm
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    if synchronised:
        fakequant.distributed.sync_observers(model)
        if bn_sync == "api":
            fakequant.distributed.sync_batch_norm(model)
    return model


def model_worker(rank, world, name, parallel, bn_sync, compare_unsynchronised):
    results = {}
    for synchronised in (True, False) if compare_unsynchronised else (True,):
        model = prepare(name, bn_sync, synchronised)
        results[synchronised] = train(wrap(model, parallel), shard(data(name), rank, world), record=model,
                                      loss=loss_of(name))
    return results


CASES = [
    ("digits_batch", "ddp", 2, "api", True),
    # DDP refuses SyncBatchNorm layers on the CPU ("only work with GPU modules"); FSDP2 takes them.
    ("digits_running_bias", "fsdp2", 4, "convert", False),
    ("digits_batch_bias", "ddp", 2, "api", False),
    pytest.param("digits_ao", "ddp", 3, "api", False, marks=needs_ao),
    ("transformer", "ddp", 3, None, True),
    ("transformer", "fsdp2", 4, None, False),
]


@pytest.mark.parametrize("name,parallel,world,bn_sync,compare_unsynchronised", CASES)
def test_model_trains_equal_on_every_rank_and_to_one_process(name, parallel, world, bn_sync,
                                                             compare_unsynchronised):
    pytest.importorskip("sklearn.datasets")
    ranks = run_ranks(model_worker, world, name, parallel, bn_sync, compare_unsynchronised)
    with single_thread():
        single = train(build(name), data(name), loss=loss_of(name))
    synced = [r[True] for r in ranks]
    keys = list(synced[0][0])
    assert any("running_mean" in k for k in keys) == name.startswith("digits"), keys
    assert any("scale" in k for k in keys), keys
    for step in range(STEPS):
        for r in range(1, world):
            for k in keys:
                assert torch.equal(synced[0][step][k], synced[r][step][k]), (name, step, r, k)
        for k in keys:
            torch.testing.assert_close(synced[0][step][k], single[step][k], rtol=RTOL, atol=ATOL,
                                       msg=lambda m, k=k, step=step: f"{name} step {step} {k}: {m}")
    if compare_unsynchronised:  # each rank on its own shard: the states part after the first step
        unsynced = [r[False] for r in ranks]
        parted = [k for k in keys if k.startswith("buffer:") and not torch.equal(unsynced[0][0][k], unsynced[1][0][k])]
        assert parted, name
        if name.startswith("digits"):
            assert any("running_mean" in k for k in parted), parted


def conv_bn(fold_mode, bias, dim=2):
    torch.manual_seed(2)
    m = {1: qat.ConvBn1d, 2: qat.ConvBn2d, 3: qat.ConvBn3d}[dim](3, 4, 3, padding=1, bias=bias, fold_mode=fold_mode)
    randomize_bn(m.bn)
    return m


def conv_bn_inputs(n, dim=2):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(n, 3, *(5,) * dim, generator=gen) * 2 + 0.5
    return x, torch.randn(n, 4, *(5,) * dim, generator=gen)  # the loss's weights: sum(out * r)


def step_of(module, x, r):
    """A training forward and backward of sum(out * r): output, input gradient, parameter
    gradients, states after the step."""
    x = x.clone().requires_grad_()
    out = module(x)
    (out * r).sum().backward()
    grads = {k.removeprefix("_orig_mod."): p.grad.clone() for k, p in module.named_parameters()}
    states = {k.removeprefix("_orig_mod."): v.clone() for k, v in module.state_dict().items()}
    return out.detach(), x.grad, grads, states


def conv_bn_worker(rank, world, fold_mode, bias, empty_rank, dim, device):
    """Rank ``r`` steps on its slice of the batch (``empty_rank``'s slice empty); the parameter
    gradients summed over the ranks (the gradient of the sum of the ranks' losses)."""
    if device == "cuda":
        device = f"cuda:{rank % torch.cuda.device_count()}"
    module = fakequant.distributed.sync_batch_norm(conv_bn(fold_mode, bias, dim).train().to(device))
    x, r = conv_bn_inputs(8, dim)
    mine = [(a.to(device), b.to(device)) for a, b in zip(x.chunk(world), r.chunk(world))][rank]
    if rank == empty_rank:
        mine = (mine[0][:0], mine[1][:0])
    out, x_grad, grads, states = step_of(module, *mine)
    for g in grads.values():
        dist.all_reduce(g)
    return out, x_grad, grads, states


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.parametrize("fold_mode,bias,empty_rank,dim,device", [
    ("batch", True, None, 2, "cpu"), ("running", True, None, 2, "cpu"), ("batch", False, 1, 2, "cpu"),
    ("running", False, 1, 2, "cpu"), ("batch", True, None, 1, "cpu"), ("running", False, None, 3, "cpu"),
    pytest.param("batch", True, None, 2, "cuda", marks=needs_cuda),
    pytest.param("running", False, 1, 2, "cuda", marks=needs_cuda)])
def test_conv_bn_statistics_and_gradients_across_ranks_equal_one_process(fold_mode, bias, empty_rank, dim,
                                                                         device):
    """On CUDA: NCCL where each rank has a GPU, else gloo over CUDA tensors."""
    world = 2
    ranks = run_ranks(conv_bn_worker, world, fold_mode, bias, empty_rank, dim, device,
                      backend=backend_for(device, world))
    x, r = conv_bn_inputs(8, dim)
    if empty_rank is not None:  # one process sees the other ranks' batches only
        keep = torch.cat([c for i, c in enumerate(torch.arange(8).chunk(world)) if i != empty_rank])
        x, r = x[keep], r[keep]
    with single_thread():
        out, x_grad, grads, states = step_of(conv_bn(fold_mode, bias, dim).train().to(device), x.to(device),
                                             r.to(device))
        out, x_grad = out.cpu(), x_grad.cpu()
        grads = {k: v.cpu() for k, v in grads.items()}
        states = {k: v.cpu() for k, v in states.items()}
    outs = torch.cat([rank[0] for rank in ranks])
    x_grads = torch.cat([rank[1] for rank in ranks])
    torch.testing.assert_close(outs, out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_grads, x_grad, rtol=1e-4, atol=1e-5)
    for k in grads:
        assert torch.equal(ranks[0][2][k], ranks[1][2][k]), k
        torch.testing.assert_close(ranks[0][2][k], grads[k], rtol=1e-4, atol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
    for k in states:
        assert torch.equal(ranks[0][3][k], ranks[1][3][k]), k
        torch.testing.assert_close(ranks[0][3][k], states[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")


def compile_worker(rank, world):
    """Per fold mode: a synchronised ConvBn2d stepped eagerly and a copy compiled with
    fullgraph=True (the collectives traced), on this rank's slice of the batch."""
    out = {}
    x, r = conv_bn_inputs(8)
    mine = x.chunk(world)[rank], r.chunk(world)[rank]
    for fold_mode in ("batch", "running"):
        module = fakequant.distributed.sync_batch_norm(conv_bn(fold_mode, True).train())
        twin = copy.deepcopy(module)
        out[fold_mode] = step_of(module, *mine), step_of(torch.compile(twin, fullgraph=True), *mine)
    return out


def test_synchronised_conv_bn_compiles_with_fullgraph():
    for rank in run_ranks(compile_worker, 2):
        for fold_mode, (eager, compiled) in rank.items():
            torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-5)  # output
            torch.testing.assert_close(compiled[1], eager[1], rtol=1e-4, atol=1e-5)  # input gradient
            for k in eager[2]:  # parameter gradients (compiled, the ops fuse and round differently)
                torch.testing.assert_close(compiled[2][k], eager[2][k], rtol=1e-4, atol=1e-4)
            for k in eager[3]:
                # states: the compiled fold may round a weight scale one ulp apart
                torch.testing.assert_close(compiled[3][k], eager[3][k], rtol=1e-6, atol=1e-7)


def test_sync_batch_norm_needs_a_process_group_and_conv_bn_modules(tmp_path):
    model = build("digits_batch")
    with pytest.raises(RuntimeError, match="init_process_group"):
        fakequant.distributed.sync_batch_norm(model)
    assert fakequant.distributed.sync_batch_norm(model, enabled=False) is model
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match="has no ConvBn module"):
            fakequant.distributed.sync_batch_norm(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)))
        # A group of one process: the module's own statistics, the unsynchronised values.
        synced = fakequant.distributed.sync_batch_norm(copy.deepcopy(model))
        x = torch.rand(6, 1, 8, 8)
        torch.testing.assert_close(synced(x), model(x), rtol=0, atol=0)
    finally:
        dist.destroy_process_group()
