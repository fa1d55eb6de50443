"""Training throughput of the reference loop (``train.train_step`` + ``optim.AdamW``) against torch.

Run: ``pytest benchmarks/test_bench_train.py --benchmark-only``.

Both sides train a model of the ``small`` preset's shape (the default of ``bare-lm train``) with
batch size, vocabulary 512 and gradient clipping as that preset:

- ``reference``: ``TransformerLM`` + ``optim.AdamW(param_groups(...))`` through ``train.train_step``
  (forward, loss, backward, ``clip_grad_norm``, AdamW written out);
- ``torch``: ``TorchGPT`` (torch.nn modules only, from ``test_bench_model.py``) +
  ``torch.optim.AdamW`` + ``torch.nn.utils.clip_grad_norm_``.

The ratio torch/reference of the step times (= reference tokens/s over torch tokens/s, inverted)
is measured in ONE run, interleaving the two, and stored in the benchmark's extra info
(``reference_tokens_per_s``, ``torch_tokens_per_s``, ``reference_over_torch``). With
``--benchmark-disable`` it runs one step of each at the ``tiny`` preset's shape (seconds).
"""

from __future__ import annotations

import time

import torch

from reference.model import ModelConfig, TransformerLM
from reference.optim import AdamW, param_groups
from reference.train import PRESETS, TrainConfig, train_step

from .test_bench_model import TorchGPT

VOCAB = 512


def _setup(preset: str):
    model_cfg, train_cfg = PRESETS[preset]["model"], TrainConfig(**PRESETS[preset]["train"])
    t, b = model_cfg["context_length"], train_cfg.batch_size
    torch.manual_seed(0)
    ours = TransformerLM(ModelConfig(vocab_size=VOCAB, **model_cfg)).train()
    opt = AdamW(param_groups(ours, train_cfg.weight_decay), lr=train_cfg.lr, betas=train_cfg.betas)
    torch.manual_seed(0)
    theirs = TorchGPT(model_cfg["n_layers"], model_cfg["d_model"], model_cfg["n_heads"], t, VOCAB).train()
    torch_opt = torch.optim.AdamW(theirs.parameters(), lr=train_cfg.lr, betas=train_cfg.betas,
                                  weight_decay=train_cfg.weight_decay)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, VOCAB, (b, t), generator=g), torch.randint(0, VOCAB, (b, t), generator=g)

    def reference_step():
        return train_step(ours, opt, [(x, y)], train_cfg.grad_clip)[0]

    def torch_step():
        torch_opt.zero_grad(set_to_none=True)
        _, loss = theirs(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), train_cfg.grad_clip)
        torch_opt.step()
        return loss.item()

    return reference_step, torch_step, x.numel()


def _time(step, rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        step()
    return (time.perf_counter() - start) / rounds


def test_train_tokens_per_s(benchmark):
    """Reference train step vs torch's, same shape: tokens/s of each and their ratio."""
    preset = "tiny" if not benchmark.enabled else "small"
    reference_step, torch_step, tokens = _setup(preset)
    rounds = 1 if not benchmark.enabled else 10
    for step in (reference_step, torch_step):  # warm up
        step()
    ref_times, torch_times = [], []
    for _ in range(3 if benchmark.enabled else 1):  # interleaved: both see the same machine load
        ref_times.append(_time(reference_step, rounds))
        torch_times.append(_time(torch_step, rounds))
    ref_s, torch_s = min(ref_times), min(torch_times)
    benchmark.group = f"train step ({preset} preset)"
    benchmark.extra_info.update(
        preset=preset, tokens=tokens, reference_tokens_per_s=round(tokens / ref_s),
        torch_tokens_per_s=round(tokens / torch_s), reference_over_torch=round(torch_s / ref_s, 3))
    loss = benchmark.pedantic(reference_step, rounds=rounds, warmup_rounds=0)
    assert loss == loss and loss > 0, f"non-finite or non-positive loss {loss}"
    print(f"\n{preset}: reference {tokens / ref_s:,.0f} tokens/s, torch {tokens / torch_s:,.0f} tokens/s, "
          f"reference/torch throughput = {torch_s / ref_s:.3f}")
