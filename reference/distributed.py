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
    needed = RANK_VARIABLES + (RENDEZVOUS_VARIABLES if init_method is None else ())
    missing = [name for name in needed if not os.environ.get(name)]
    if missing:
        raise ValueError(f"distributed setup: the environment variable(s) {', '.join(missing)} are not set; "
                         f"launch with `torchrun --nproc_per_node N -m bare_lm.cli train ...` (or "
                         f"`bare-lm train --nproc N`), which sets {', '.join(needed)}")
    rank, world_size, local_rank = (_int_variable(name) for name in RANK_VARIABLES)
    if world_size < 1:
        raise ValueError(f"WORLD_SIZE must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK must be in [0, WORLD_SIZE - 1] = [0, {world_size - 1}], got {rank}")
    if local_rank < 0:
        raise ValueError(f"LOCAL_RANK must be >= 0, got {local_rank}")
    if device == "cpu":
        backend = "gloo"
    elif isinstance(device, str) and device.split(":")[0] == "cuda":
        if not torch.cuda.is_available() or local_rank >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} under torchrun needs one GPU per rank: LOCAL_RANK {local_rank}, "
                             f"{torch.cuda.device_count()} GPU(s) visible")
        torch.cuda.set_device(local_rank)       # NCCL: one GPU per rank, cuda:LOCAL_RANK
        backend = "nccl"
    else:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    dist.init_process_group(backend, init_method=init_method or "env://", rank=rank, world_size=world_size)
    return rank, world_size


def teardown() -> None:
    """Leave the process group (``destroy_process_group``); nothing when none is initialized."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process: ``(0, 1)`` when no process group is initialized."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def check_world_size(batch_size: int, accum: int, world_size: int) -> None:
    """``ValueError`` unless ``world_size * accum`` divides ``batch_size`` (each rank's micro-batches
    hold ``batch_size / (world_size * accum)`` sequences); the message lists the world sizes allowed."""
    checks.positive_int("batch_size", batch_size)
    checks.positive_int("accum", accum)
    checks.positive_int("world_size", world_size)
    if batch_size % (world_size * accum):
        allowed = [w for w in range(1, batch_size + 1) if batch_size % (w * accum) == 0]
        raise ValueError(f"world_size ({world_size}) x accum ({accum}) must divide batch_size ({batch_size}); "
                         f"world sizes allowed with this batch_size and accum: {allowed}")


def shard(batch, rank: int, world_size: int):
    """Rank ``rank``'s rows of ``batch``: an ``(x, y)`` pair of (n, T) tensors or a ``data.Batch``.

    Rows ``[rank * n / W, (rank + 1) * n / W)``; ``W = world_size`` must divide ``n``.
    """
    checks.positive_int("world_size", world_size)
    checks.non_negative_int("rank", rank)
    if rank >= world_size:
        raise ValueError(f"rank must be in [0, world_size - 1] = [0, {world_size - 1}], got {rank}")
    n = len(batch.x) if isinstance(batch, Batch) else len(batch[0])
    if n % world_size:
        allowed = [w for w in range(1, n + 1) if n % w == 0]
        raise ValueError(f"world_size ({world_size}) must divide the batch's {n} rows; allowed: {allowed}")
    rows = slice(rank * n // world_size, (rank + 1) * n // world_size)
    if isinstance(batch, Batch):
        return Batch(batch.x[rows], batch.y[rows], batch.padding_mask[rows], batch.pieces[rows])
    return tuple(t[rows] for t in batch)


def wrap(model: torch.nn.Module, device: str | torch.device = "cpu") -> DistributedDataParallel:
    """``model`` (already on ``device``) wrapped in ``DistributedDataParallel``: rank 0's weights are
    broadcast now, and every backward outside ``no_sync`` averages the gradients over the ranks."""
    device = torch.device(device)
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


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
    from .train import DivergenceError, _objective, _with
    from .optim import clip_grad_norm

    if not micro_batches:
        raise ValueError("micro_batches must hold at least one (x, y) pair")
    model.train()
    optimizer.zero_grad(set_to_none=True)
    k = len(micro_batches)
    total = torch.zeros((), dtype=torch.float64)
    for i, (x, y) in enumerate(micro_batches):
        last = i == k - 1
        with contextlib.nullcontext() if last else model.no_sync():   # all-reduce on the last only
            loss = model(x, y)[1] if loss_fn is None else _objective(loss_fn, model(x)[0], y)   # ()
            (loss / k).backward()
        total += loss.detach().double().cpu() / k
    total = _all_reduce(total) / dist.get_world_size()                # the mean over ranks, for the log
    loss_value = float(total)
    params = [p for p in model.parameters() if p.grad is not None]
    if grad_clip is not None:
        norm = clip_grad_norm(params, grad_clip)
    else:
        norm = math.sqrt(sum(float(p.grad.detach().double().pow(2).sum()) for p in params))
    if not (math.isfinite(loss_value) and math.isfinite(norm)):
        optimizer.zero_grad(set_to_none=True)
        raise _with(DivergenceError(f"non-finite loss ({loss_value}) or gradient norm ({norm}); the update was "
                                    f"not applied"), loss=loss_value, grad_norm=norm)
    optimizer.step()
    return loss_value, norm


@torch.no_grad()
def evaluate(model: torch.nn.Module, stream: torch.Tensor, batch_size: int, max_batches: int | None = None,
             device: str | torch.device = "cpu") -> tuple[float, int]:
    """``train.evaluate`` split over the ranks: this rank runs batches ``rank, rank + W, ...`` of the
    first ``max_batches`` evaluation batches; the ``(nats, count)`` sums are all-reduced, so every
    rank returns the whole stream's figures. ``model``: the bare module (``ddp.module``)."""
    rank, world_size = world()
    was_training = model.training
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64)                       # [nats, count]
    batches = evaluation_batches(stream, batch_size, model.config.context_length)[:max_batches]
    for x, y in batches[rank::world_size]:
        x, y = x.to(device), y.to(device)
        _, loss = model(x, y)                                          # mean over the non-ignored targets
        n = int((y != IGNORE_INDEX).sum())
        sums += torch.tensor([float(loss) * n, n], dtype=torch.float64)
    sums = _all_reduce(sums)
    model.train(was_training)
    return float(sums[0]), int(sums[1])


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is True on at least one rank (a MAX all-reduce): every rank gets the answer,
    so they all stop at the same step (a signal reaches the ranks at different moments)."""
    t = torch.tensor([int(bool(flag))], dtype=torch.int64)
    return bool(_all_reduce(t, dist.ReduceOp.MAX))


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (``dist.broadcast_object_list``, pickled)."""
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@contextlib.contextmanager
def rank_zero_first():
    """Rank 0 runs the block first (it writes a cache), the others after it (they read it)."""
    rank, world_size = world()
    if world_size > 1 and rank != 0:
        dist.barrier()
    yield
    if world_size > 1 and rank == 0:
        dist.barrier()


def _all_reduce(t: torch.Tensor, op=None) -> torch.Tensor:
    """``t`` reduced over the ranks (SUM by default), on the device the backend needs (NCCL: GPU)."""
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else t.device
    out = t.to(device)
    dist.all_reduce(out, op=dist.ReduceOp.SUM if op is None else op)
    return out.to(t.device)


def _int_variable(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"the environment variable {name} must be an integer, got {value!r}") from None
