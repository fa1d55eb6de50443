"""Data-parallel training: W processes (ranks), one model replica each, gradients averaged by DDP.

References: S. Li et al., "PyTorch Distributed: Experiences on Accelerating Data Parallel Training"
(VLDB 2020, arXiv:2006.15704); https://pytorch.org/docs/stable/distributed.html and
https://pytorch.org/docs/stable/notes/ddp.html.

**What one step does** (W ranks, global batch of B sequences, ``k`` accumulation micro-batches)::

    every rank:  (x, y) = the global batch s          (B, T): the same FixedLengthBatches.batch(s)
                 (x_r, y_r) = its shard                (B / W, T): rows [r B/W, (r + 1) B/W)
                 split it in k micro-batches            (B / (W k), T) each
    micro-batches 1 .. k-1, inside ddp.no_sync():  forward, backward(loss_i / k)
                 gradients accumulate in each rank's own .grad; nothing is communicated
    micro-batch k:  forward, backward(loss_k / k); during this backward DDP's autograd hooks
                 all-reduce each bucket of gradients (about 25 MB each, in reverse order of the
                 parameters) as soon as all of its gradients are ready, overlapping communication
                 with the rest of the backward; each gradient becomes the MEAN over ranks
                 (DDP divides by W and sums)
    every rank:  clip (the same norm everywhere: the gradients are now equal), optimizer.step()
                 -> the replicas stay equal without ever sending weights

At construction ``DistributedDataParallel`` broadcasts rank 0's parameters and buffers, so every
replica starts equal. With equal token counts per rank (fixed-length windows), the mean over ranks
of each rank's mean loss is the mean over the whole batch: W ranks on shards of B / W equal one
process on B, up to the rounding of a different summation order.

**Sharding rule** (``shard``): rank ``r`` of ``W`` takes the contiguous rows
``[r * n / W, (r + 1) * n / W)`` of a batch of ``n`` rows (``FixedLengthBatches``' ``(x, y)`` or a
``DynamicBatches`` ``Batch``); the shards are disjoint and their union, in rank order, is the
single-process batch. ``W`` must divide ``n`` (``ValueError`` naming ``world_size`` and the sizes
allowed); in training ``W * accum`` must divide ``batch_size`` (``check_world_size``). The sampler and
its state stay global (``{"seed", "step"}``), so a checkpoint is the same for any world size.

**Evaluation** (``evaluate``): rank ``r`` evaluates the evaluation batches ``r, r + W, r + 2W, ...``
and the ``(nats, count)`` sums are all-reduced (``dist.all_reduce``, SUM, float64): every rank gets
the figures of the whole validation stream.

**Processes.** ``setup`` joins the process group from the variables ``torchrun`` sets (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``; ``MASTER_ADDR`` and ``MASTER_PORT`` for the default ``env://``
rendezvous): backend gloo on CPU, NCCL with one GPU per rank (``cuda:LOCAL_RANK``) on CUDA. In
``train.train`` rank 0 alone holds the run lock and writes the log, the checkpoints and the token
cache (the others read it after ``rank_zero_first``); every rank loads the same checkpoint to resume.

**Dropout and RNG.** Every rank seeds the same generator, so the ranks' RNG states stay equal and
the checkpoint's one RNG state is every rank's. Rank ``r``'s dropout masks are therefore drawn as a
single process of B / W rows would draw them: with dropout > 0 a W-rank run equals a one-process
run in distribution, not in value (the spec compares them with dropout 0).

Spec: ``pytest --impl kata spec_tests/test_distributed.py`` (2 ranks on CPU, gloo; the rank processes
are started for you: run ``setup`` in each, then the functions below).
"""

from __future__ import annotations

import contextlib
import math
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from . import checks
from .data import IGNORE_INDEX, Batch, evaluation_batches

#: Variables that ``torchrun`` sets for every process it starts.
RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
#: Variables the default ``env://`` rendezvous needs (also set by ``torchrun``).
RENDEZVOUS_VARIABLES = ("MASTER_ADDR", "MASTER_PORT")


def setup(device: str = "cpu", init_method: str | None = None) -> tuple[int, int]:
    """Join the process group of this ``torchrun`` launch; returns ``(rank, world_size)``.

    ``device``: "cpu" (backend gloo) or "cuda"/"cuda:N" (backend nccl, this rank's GPU
    ``cuda:LOCAL_RANK`` becomes the current device). ``init_method``: None reads ``env://``
    (``MASTER_ADDR``, ``MASTER_PORT``), or e.g. ``"file:///tmp/rendezvous"``. A missing or
    inconsistent variable is a ``ValueError`` naming it and saying how to launch.
    """
    raise NotImplementedError("setup: check RANK/WORLD_SIZE/LOCAL_RANK (and MASTER_ADDR/PORT for env://) first, "
                              "then dist.init_process_group('gloo' or 'nccl', init_method, rank, world_size)")


def teardown() -> None:
    """Leave the process group (``destroy_process_group``); nothing when none is initialized."""
    raise NotImplementedError("teardown: dist.destroy_process_group() when dist.is_initialized()")


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process: ``(0, 1)`` when no process group is initialized."""
    raise NotImplementedError("world: dist.get_rank(), dist.get_world_size() when initialized, else (0, 1)")


def check_world_size(batch_size: int, accum: int, world_size: int) -> None:
    """``ValueError`` unless ``world_size * accum`` divides ``batch_size`` (each rank's micro-batches
    hold ``batch_size / (world_size * accum)`` sequences); the message lists the world sizes allowed."""
    raise NotImplementedError("check_world_size: batch_size % (world_size * accum) == 0, else name the allowed sizes")


def shard(batch, rank: int, world_size: int):
    """Rank ``rank``'s rows of ``batch``: an ``(x, y)`` pair of (n, T) tensors or a ``data.Batch``.

    Rows ``[rank * n / W, (rank + 1) * n / W)``; ``W = world_size`` must divide ``n``.
    """
    raise NotImplementedError("shard: the contiguous rows [r n/W, (r+1) n/W) of every tensor of the batch")


def wrap(model: torch.nn.Module, device: str | torch.device = "cpu") -> DistributedDataParallel:
    """``model`` (already on ``device``) wrapped in ``DistributedDataParallel``: rank 0's weights are
    broadcast now, and every backward outside ``no_sync`` averages the gradients over the ranks."""
    raise NotImplementedError("wrap: DistributedDataParallel(model, device_ids=[index] on cuda:index, "
                              "[torch.cuda.current_device()] on a bare cuda, None on any other device)")


def train_step(model: DistributedDataParallel, optimizer: torch.optim.Optimizer, micro_batches: list,
               grad_clip: float | None = None, loss_fn=None) -> tuple[float, float]:
    """``train.train_step`` on a DDP model: this rank's ``micro_batches`` (its shard, split in k);
    ``loss_fn(logits, targets) -> scalar`` the objective (None: the model's own loss).

    The first k - 1 backwards run inside ``model.no_sync()`` (local accumulation, no communication);
    the k-th backward all-reduces the accumulated gradients, once. Returns ``(loss, grad_norm)``:
    the loss averaged over the ranks (one scalar all-reduce, so every rank logs the global figure)
    and the global gradient norm before clipping (equal on every rank). A non-finite loss or norm
    raises ``train.DivergenceError`` on every rank before ``optimizer.step()``.
    """
    raise NotImplementedError("train_step: backward(loss / k) inside model.no_sync() except the last micro-batch; "
                              "all_reduce the loss / W; clip; check finite; step")


@torch.no_grad()
def evaluate(model: torch.nn.Module, stream: torch.Tensor, batch_size: int, max_batches: int | None = None,
             device: str | torch.device = "cpu") -> tuple[float, int]:
    """``train.evaluate`` split over the ranks: this rank runs batches ``rank, rank + W, ...`` of the
    first ``max_batches`` evaluation batches; the ``(nats, count)`` sums are all-reduced, so every
    rank returns the whole stream's figures. ``model``: the bare module (``ddp.module``)."""
    raise NotImplementedError("evaluate: this rank's batches[rank::W], then dist.all_reduce([nats, count]) in float64")


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is True on at least one rank (a MAX all-reduce): every rank gets the answer,
    so they all stop at the same step (a signal reaches the ranks at different moments)."""
    raise NotImplementedError("any_rank: dist.all_reduce(tensor([int(flag)]), op=MAX)")


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (``dist.broadcast_object_list``, pickled)."""
    raise NotImplementedError("broadcast_object: dist.broadcast_object_list([obj], src)")


@contextlib.contextmanager
def rank_zero_first():
    """Rank 0 runs the block first (it writes a cache), the others after it (they read it)."""
    raise NotImplementedError("rank_zero_first: barrier before the block on ranks > 0, after it on rank 0")
    yield
