"""Multi-process QAT on torch.distributed: the activation quantizers' batch statistics combined
across the ranks of a process group before each update (docs/distributed.md).

``sync_observers(model, group)`` marks every activation quantizer of ``model`` (the moving-average
min/max quantizers, per tensor and per channel, the Paddle abs-max quantizers and the learnable
LSQ quantizers) and makes their states start equal (broadcast from the group's first rank). From
then on, whenever such a quantizer observes, it reduces its input locally (``min_max`` /
``abs_max``), combines the result across the group with one ``all_reduce(MAX)`` of a few floats,
updates its state with the combined statistic, and quantizes with the updated qparams: the
arithmetic of the fused op on the concatenated batch, so every rank holds the same state after
every step, the state one process training on the whole batch would hold. With
``bucketed=True`` the quantizers update from their own rank's batch and one collective after the
model's forward combines all their states (equal states, one collective per step; that forward
quantized with each rank's own qparams).

A learnable (LSQ) quantizer initialises its scale and zero point from the combined min / max of
its first batch, and scales its gradients by the whole batch's element count (the group's size
times its own, as the ranks' gradients are averaged over equal shards).

Weight quantizers need nothing: under DDP and FSDP2 every rank quantizes the same weights.

Non-finite statistics: a NaN anywhere is sent as +inf (gloo's MAX does not propagate NaN), so a
rank's NaN or inf makes the combined statistic non-finite on every rank and every rank skips the
update together (the ops' non-finite rule, docs/numerics.md). A rank with an empty batch
contributes (+inf, -inf) for (min, max), i.e. nothing.

The update runs the quantizer's own op on a tensor holding just the combined statistic (whose
min / max / abs-max it is), so the state follows the same arithmetic as the one-process op; the
input is then quantized with the observer off, which reads the updated state.

``sync_batch_norm(model, group)`` does for the ConvBn modules' batch statistics what
``torch.nn.SyncBatchNorm`` does for a BatchNorm: the per-channel mean and variance of the batch
are those of the whole group's batch (one ``all_reduce`` of the channel sums in the forward, one
of the two channel gradient sums in the backward), in both fold modes, so the running statistics
are the same on every rank. A ConvBn module whose ``bn`` was made a ``torch.nn.SyncBatchNorm``
(``SyncBatchNorm.convert_sync_batchnorm``) combines over that BN's ``process_group``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["sync_batch_norm", "sync_observers", "synchronised_group"]

_ATTR = "_fakequant_sync"


def _unsynchronised():
    return None


class _Sync:
    """The mark of a synchronised quantizer: its group (``None``: the default group). A deep copy
    (``copy.deepcopy``, ``fakequant.convert``) keeps it, since the copy lives in the same processes;
    a pickled model (``torch.save``) loads unsynchronised, as a process group cannot be pickled."""

    def __init__(self, group, bucketed: bool = False) -> None:
        self.group = group
        self.bucketed = bucketed

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        return (_unsynchronised, ())


def _activation_quantizers(model: nn.Module):
    """The quantizers to synchronise: the classes that observe their input (they set
    ``_synchronisable``: the moving-average min/max, Paddle abs-max and learnable quantizers),
    except weight quantizers (a layer's ``weight_fake_quant``, torch.ao's name and ours), which
    see the same weight on every rank: nothing to combine, and a learnable one's gradient scale
    counts the weight once."""
    return [m for name, m in model.named_modules()
            if getattr(m, "_synchronisable", False) and name.rsplit(".", 1)[-1] != "weight_fake_quant"]


def sync_observers(model: nn.Module, group=None, enabled: bool = True, bucketed: bool = False) -> nn.Module:
    """Synchronise (``enabled=True``) or stop synchronising the activation quantizers of ``model``
    over ``group`` (default: the whole world). Needs an initialised process group; call it on
    every rank, after the model is built (and prepared for QAT) and before training. Returns
    ``model``.

    ``bucketed=False`` (exact): each quantizer combines its batch statistic across the group
    before it updates and quantizes (one small collective per quantizer and step), which gives
    the model one process would train on the whole batch. ``bucketed=True``: the quantizers
    update from their own rank's batch during the forward, and after ``model``'s forward one
    collective (``all_reduce(MAX)`` of one flat tensor holding every min/max/abs-max quantizer's
    state) makes the states equal on every rank; that forward quantized with each rank's own
    qparams (docs/distributed.md)."""
    quantizers = _activation_quantizers(model)
    _mark("sync_observers", model, quantizers, group, enabled, lambda q: q.buffers(),
          "has no activation quantizer to synchronise (the moving-average min/max and Paddle abs-max quantizers)",
          bucketed=bucketed)
    for key, hook in list(model._forward_hooks.items()):
        if hook is _bucket_hook:
            del model._forward_hooks[key]
    if enabled:
        for q in quantizers:  # the host flags follow the broadcast state (rank 0 may have observed)
            if hasattr(q, "_state_is_initial"):
                q._observed = not q._state_is_initial()
        if bucketed:
            model.register_forward_hook(_bucket_hook)
    return model


def _bucket_hook(module, args, output):
    """After the forward of a model synchronised with ``bucketed=True``: the states of its bucketed
    quantizers (``_bucket_states()``: each tensor with +1 to take the group's maximum, -1 its
    minimum) combined in one ``all_reduce(MAX)`` per group, then ``_after_bucket()`` (qparams
    from the combined statistics). Each state's update is monotone in the batch statistic, so
    the combined state is the one the largest (smallest) statistic gives."""
    if not dist.is_initialized():
        return
    groups = {}
    for q in _activation_quantizers(module):
        mark = getattr(q, _ATTR, None)
        if mark is not None and mark.bucketed and hasattr(q, "_bucket_states") and q._observer_on:
            groups.setdefault(id(mark.group), (mark.group, []))[1].append(q)
    with torch.no_grad():
        for group, quantizers in groups.values():
            parts = [(t, sign) for q in quantizers for t, sign in q._bucket_states()]
            flat = torch.cat([(t.reshape(-1).double() * sign) for t, sign in parts])
            flat = _all_reduce_max(flat, group)
            offset = 0
            for t, sign in parts:
                n = t.numel()
                t.copy_((flat[offset:offset + n] * sign).reshape(t.shape))
                offset += n
            for q in quantizers:
                q._after_bucket()


def per_batch_group(module: nn.Module):
    """The group a quantizer combines each batch statistic over before its update (the exact
    mode), or ``None``: not synchronised, or synchronised in buckets after the forward."""
    mark = getattr(module, _ATTR, None)
    return None if mark is not None and mark.bucketed else synchronised_group(module)


def _mark(caller, model, modules, group, enabled, buffers_of, none_message, bucketed=False):
    """Mark ``modules`` as combining over ``group`` and broadcast their ``buffers_of(module)`` from
    the group's first rank (``enabled``), or unmark them; ``caller``'s errors for no process group
    and no module."""
    if not enabled:
        for m in modules:
            setattr(m, _ATTR, None)
        return
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"fakequant.distributed.{caller}: no process group is initialised; call "
                           "torch.distributed.init_process_group first (or pass enabled=False)")
    if not modules:
        raise ValueError(f"fakequant.distributed.{caller}: {type(model).__name__} {none_message}")
    src = dist.get_global_rank(group, 0) if group is not None else 0
    with torch.no_grad():
        for m in modules:
            for buf in buffers_of(m):
                dist.broadcast(buf, src=src, group=group)
            setattr(m, _ATTR, _Sync(group, bucketed))


def synchronised_group(module: nn.Module):
    """The group ``module`` combines its statistics over, or ``None`` when it does not (never
    marked, switched off, or no process group initialised any more)."""
    mark = getattr(module, _ATTR, None)
    if mark is None or not dist.is_initialized():
        return None
    return dist.group.WORLD if mark.group is None else mark.group


def _all_reduce_max(t: torch.Tensor, group) -> torch.Tensor:
    # NaN as +inf: gloo's MAX keeps the first operand's NaN only on some ranks.
    t = torch.where(torch.isnan(t), torch.full_like(t, float("inf")), t)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return t


def global_min_max(lo: torch.Tensor, hi: torch.Tensor, group) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element minimum of ``lo`` and maximum of ``hi`` over the group, in one collective."""
    n = lo.numel()
    both = _all_reduce_max(torch.cat([-lo.reshape(-1), hi.reshape(-1)]).float(), group)
    return (-both[:n]).reshape(lo.shape), both[n:].reshape(hi.shape)


def global_abs_max(amax: torch.Tensor, group) -> torch.Tensor:
    """Maximum of ``amax`` over the group."""
    return _all_reduce_max(amax.reshape(-1).float().clone(), group).reshape(amax.shape)


def _conv_bn_modules(model: nn.Module):
    """fakequant's ConvBn / ConvBnReLU modules (1-, 2- and 3-d): they set ``_batch_norm_synchronisable``."""
    return [m for m in model.modules() if getattr(m, "_batch_norm_synchronisable", False)]


def sync_batch_norm(model: nn.Module, group=None, enabled: bool = True) -> nn.Module:
    """Make the ConvBn modules of ``model`` compute their training batch statistics over ``group``
    (default: the whole world), as ``torch.nn.SyncBatchNorm`` does (``enabled=False``: each rank
    its own again). Needs an initialised process group; call it on every rank before training.
    The BN running statistics start equal (broadcast from the group's first rank). Returns
    ``model``."""
    _mark("sync_batch_norm", model, _conv_bn_modules(model), group, enabled, lambda m: m.bn.buffers(),
          "has no ConvBn module (fakequant.nn.qat.ConvBn1d/2d/3d, ConvBnReLU1d/2d/3d) whose statistics to "
          "synchronise")
    return model


def batch_norm_group(module: nn.Module):
    """The group a ConvBn module combines its batch statistics over (marked by ``sync_batch_norm``,
    or its ``bn`` is a ``torch.nn.SyncBatchNorm``), or ``None`` for its own batch: not marked, no
    process group initialised, or a group of one process (as ``SyncBatchNorm``)."""
    mark = getattr(module, _ATTR, None)
    if mark is not None:
        group = mark.group
    elif isinstance(getattr(module, "bn", None), nn.SyncBatchNorm):
        group = module.bn.process_group
    else:
        return None
    if not (dist.is_available() and dist.is_initialized()):
        return None
    group = dist.group.WORLD if group is None else group
    return group if dist.get_world_size(group) > 1 else None


def global_moments(t: torch.Tensor, dims, shift: torch.Tensor, group):
    """Per-channel (dimension 1) mean and biased variance of ``t`` over ``dims`` on all ranks of
    ``group``, and the element count per channel (a float64 tensor; no host sync): one
    ``all_reduce`` of the float64 sums of ``t - shift`` and ``(t - shift)^2`` and the local count.
    ``shift`` (a per-channel value equal on every rank, e.g. the running mean) keeps the
    subtraction in ``E[d^2] - E[d]^2`` from cancelling. Not differentiable: see ``SyncedMoments``."""
    acc = torch.promote_types(t.dtype, torch.float32)
    shape = [1, -1] + [1] * (t.dim() - 2)
    with torch.no_grad():
        shift = shift.detach().to(acc)
        d = t.to(acc) - shift.reshape(shape)
        channels = t.shape[1]
        count = torch.full((1,), t.numel() // max(channels, 1), dtype=torch.float64, device=t.device)
        sums = torch.cat([d.sum(dims, dtype=torch.float64), (d * d).sum(dims, dtype=torch.float64), count])
        dist.all_reduce(sums, group=group)
        n = sums[-1]
        m1 = sums[:channels] / n
        var = (sums[channels:2 * channels] / n - m1 * m1).clamp_min(0)
        return (m1 + shift.double()).to(acc), var.to(acc), n


class SyncedMoments(torch.autograd.Function):
    """``(mean, var)`` of the group's batch (from ``global_moments``) as functions of this rank's
    ``t``: the forward passes them through; the backward sums their gradients over the group (one
    ``all_reduce``) and returns ``(g_mean + 2 g_var (t - mean)) / n``, as SyncBatchNorm's."""

    @staticmethod
    def forward(ctx, t, mean, var, n, group):
        ctx.save_for_backward(t, mean, n)
        ctx.group = group
        return mean.view_as(mean), var.view_as(var)

    @staticmethod
    def backward(ctx, g_mean, g_var):
        t, mean, n = ctx.saved_tensors
        channels = mean.numel()
        g_mean = torch.zeros_like(mean) if g_mean is None else g_mean
        g_var = torch.zeros_like(mean) if g_var is None else g_var
        both = torch.cat([g_mean.reshape(-1), g_var.reshape(-1)]).double()
        dist.all_reduce(both, group=ctx.group)
        both = (both / n).to(mean.dtype)
        shape = [1, -1] + [1] * (t.dim() - 2)
        g_mean, g_var = both[:channels].reshape(shape), both[channels:].reshape(shape)
        grad = g_mean + 2 * g_var * (t.to(mean.dtype) - mean.reshape(shape))
        return grad.to(t.dtype), None, None, None, None
