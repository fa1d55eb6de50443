"""Data-parallel training throughput: 1 process vs 2 processes (DDP, gloo) on this machine's CPU.

Run: ``pytest benchmarks/test_bench_distributed.py --benchmark-only -s``.

Both train the ``small`` preset's model shape (context 128, 2 layers, d_model 64, vocab 512) on
the same GLOBAL batch of 16 sequences per optimizer step:

- ``1 process``: ``train.train_step`` with every core for torch's threads (what ``bare-lm train``
  does);
- ``2 processes``: two ranks (``spec_tests.ddp_worker.RankPool``: spawned, gloo, one torch thread
  each, as torchrun sets ``OMP_NUM_THREADS=1``), each ``distributed.train_step`` on its 8 rows;
  DDP all-reduces the gradients (one bucket, ~0.4 MB in float32) once per step.

The extra info holds ``tokens_per_s_1_process``, ``tokens_per_s_2_processes`` and their ratio
``speedup``. On a 2-core machine two processes cannot beat one process that already uses both
cores with intra-op threads: the ranks compete for the same cores (and with anything else running),
and each step adds an all-reduce through gloo (memory copies on one host); expect a speedup around
1 or below. The scaling model for N GPUs is in the README ("Training on several processes or GPUs").
With ``--benchmark-disable`` it runs one step of each at the ``tiny`` preset's shape.
"""

from __future__ import annotations

import time

import torch

from reference.model import ModelConfig, TransformerLM
from reference.optim import AdamW, param_groups
from reference.train import PRESETS, TrainConfig, train_step
from spec_tests.ddp_worker import RankPool
from spec_tests.impl import Implementation

VOCAB = 512
GLOBAL_BATCH = 16


def _setup(preset: str, seed: int = 0):
    model_cfg, train_cfg = PRESETS[preset]["model"], TrainConfig(**PRESETS[preset]["train"])
    torch.manual_seed(seed)
    model = TransformerLM(ModelConfig(vocab_size=VOCAB, **model_cfg)).train()
    opt = AdamW(param_groups(model, train_cfg.weight_decay), lr=train_cfg.lr, betas=train_cfg.betas)
    g = torch.Generator().manual_seed(1)
    t = model_cfg["context_length"]
    x, y = torch.randint(0, VOCAB, (GLOBAL_BATCH, t), generator=g), torch.randint(0, VOCAB, (GLOBAL_BATCH, t), generator=g)
    return model, opt, x, y, train_cfg.grad_clip


def rank_throughput(impl, rank, world_size, p):
    """A RankPool task: ``p["rounds"]`` DDP steps on this rank's shard; the seconds per step."""
    distributed = impl.component("distributed")
    model, opt, x, y, clip = _setup(p["preset"])
    ddp = distributed.wrap(model)
    xs, ys = distributed.shard((x, y), rank, world_size)
    distributed.train_step(ddp, opt, [(xs, ys)], clip)            # warm up (and DDP's first-step setup)
    times = []
    for _ in range(p["repeats"]):
        torch.distributed.barrier()
        start = time.perf_counter()
        for _ in range(p["rounds"]):
            distributed.train_step(ddp, opt, [(xs, ys)], clip)
        times.append((time.perf_counter() - start) / p["rounds"])
    return min(times)


def test_distributed_tokens_per_s(benchmark, tmp_path):
    """Tokens/s of one process and of two DDP processes on the same global batch."""
    preset = "tiny" if not benchmark.enabled else "small"
    rounds, repeats = (1, 1) if not benchmark.enabled else (10, 3)
    model, opt, x, y, clip = _setup(preset)
    tokens = x.numel()

    def one_process_step():
        return train_step(model, opt, [(x, y)], clip)[0]

    one_process_step()
    one = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(rounds):
            one_process_step()
        one.append((time.perf_counter() - start) / rounds)
    pool = RankPool(Implementation("reference"), 2, tmp_path)
    try:
        per_rank = pool.run(f"{__name__}:rank_throughput", dict(preset=preset, rounds=rounds, repeats=repeats))
    finally:
        pool.close()
    one_s, two_s = min(one), max(per_rank)                            # a step ends when the slower rank is done
    benchmark.group = f"data-parallel train step ({preset} preset, global batch {GLOBAL_BATCH})"
    benchmark.extra_info.update(
        preset=preset, tokens_per_step=tokens, threads_1_process=torch.get_num_threads(),
        tokens_per_s_1_process=round(tokens / one_s), tokens_per_s_2_processes=round(tokens / two_s),
        speedup=round(one_s / two_s, 3))
    loss = benchmark.pedantic(one_process_step, rounds=rounds, warmup_rounds=0)
    assert loss == loss and loss > 0, f"non-finite or non-positive loss {loss}"
    print(f"\n{preset}: 1 process ({torch.get_num_threads()} threads) {tokens / one_s:,.0f} tokens/s, "
          f"2 processes (1 thread each, gloo) {tokens / two_s:,.0f} tokens/s, speedup {one_s / two_s:.2f}")
