"""Compiled runs (``torch.compile``) against eager: compile time, steady-state speed, equality.

Run: ``pytest benchmarks/test_bench_compile.py --benchmark-only -s``.

Both benchmarks use a model of the ``small`` preset's shape (the default of ``bare-lm train``),
vocabulary 512, compiled with the default backend (inductor), in ONE run (interleaved, so both see
the same machine load):

- training: ``train.train_step`` + ``optim.AdamW`` on a fixed batch of the preset's size; the
  first compiled step's time minus an eager step's is the compile time; then the steady-state
  tokens/s of each, and the losses of the first steps compiled vs eager (float tolerance);
- decoding: ``generate.generate(..., compile=True)`` with the KV cache: the first compiled call
  (one graph per new shape until dynamo marks the lengths dynamic) minus an eager call is the
  compile time; then the steady-state new tokens/s of each, and the compiled logits vs eager.

The figures go to the benchmark's extra info (``compile_s``, ``eager_tokens_per_s``,
``compiled_tokens_per_s``, ``speedup``, ``graph_breaks``). With ``--benchmark-disable`` (smoke)
they run the ``tiny`` shape with the ``eager`` backend (dynamo's tracing without inductor's code
generation, which alone takes tens of seconds on 2 CPU cores), one round.
"""

from __future__ import annotations

import time

import torch

from reference.generate import generate
from reference.model import ModelConfig, TransformerLM
from reference.optim import AdamW, param_groups
from reference.train import PRESETS, TrainConfig, train_step

VOCAB = 512


def _models(preset: str, n: int):
    model_cfg = PRESETS[preset]["model"]
    models = []
    for _ in range(n):
        torch.manual_seed(0)
        models.append(TransformerLM(ModelConfig(vocab_size=VOCAB, **model_cfg)))
    return models


def _breaks() -> int:
    return sum(torch._dynamo.utils.counters["graph_break"].values())


def _break_reasons() -> list[str]:
    """The first line of each distinct graph-break reason dynamo recorded in this process."""
    return sorted({reason.strip().splitlines()[0][:160] for reason in torch._dynamo.utils.counters["graph_break"]})


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def test_compile_train_step(benchmark):
    """train_step compiled vs eager: compile time, steady-state tokens/s, equal losses (float tolerance)."""
    preset, backend = ("small", "inductor") if benchmark.enabled else ("tiny", "eager")
    cfg = TrainConfig(**PRESETS[preset]["train"])
    eager, base = _models(preset, 2)
    t = eager.config.context_length
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, VOCAB, (cfg.batch_size, t), generator=g), torch.randint(0, VOCAB, (cfg.batch_size, t), generator=g)
    compiled = torch.compile(base, backend=backend)
    opts = {m: AdamW(param_groups(m, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas) for m in (eager, base)}
    losses = {"eager": [], "compiled": []}

    def eager_step():
        losses["eager"].append(train_step(eager, opts[eager], [(x, y)], cfg.grad_clip)[0])

    def compiled_step():
        losses["compiled"].append(train_step(compiled, opts[base], [(x, y)], cfg.grad_clip)[0])

    breaks = _breaks()
    eager_s = _timed(eager_step)
    first_s = _timed(compiled_step)
    compile_s = max(first_s - eager_s, 0.0)
    for _ in range(2):
        eager_step(), compiled_step()
    assert torch.allclose(torch.tensor(losses["compiled"]), torch.tensor(losses["eager"]), rtol=1e-4, atol=1e-5), \
        f"compiled losses {losses['compiled']} differ from eager {losses['eager']} beyond float tolerance"
    rounds = 10 if benchmark.enabled else 1
    eager_times, compiled_times = [], []
    for _ in range(3 if benchmark.enabled else 1):
        eager_times.append(_timed(lambda: [eager_step() for _ in range(rounds)]) / rounds)
        compiled_times.append(_timed(lambda: [compiled_step() for _ in range(rounds)]) / rounds)
    tokens = x.numel()
    e, c = tokens / min(eager_times), tokens / min(compiled_times)
    benchmark.group = f"compiled train step ({preset} preset, {backend})"
    benchmark.extra_info.update(preset=preset, backend=backend, compile_s=round(compile_s, 2),
                                eager_tokens_per_s=round(e), compiled_tokens_per_s=round(c), speedup=round(c / e, 3),
                                graph_breaks=_breaks() - breaks, graph_break_reasons=_break_reasons())
    benchmark.pedantic(compiled_step, rounds=rounds, warmup_rounds=0)
    print(f"\ntrain step, {preset} preset, {backend}: compile {compile_s:.1f} s; eager {e:,.0f} tokens/s, "
          f"compiled {c:,.0f} tokens/s (x{c / e:.2f}); graph breaks {_breaks() - breaks}")


def test_compile_decode(benchmark):
    """generate(compile=...) vs eager with the KV cache: compile time, steady-state new tokens/s, equal logits."""
    preset, backend = ("small", True) if benchmark.enabled else ("tiny", "eager")
    (model,) = _models(preset, 1)
    model.eval()
    n = 64 if benchmark.enabled else 8
    prompt = list(range(1, 9))
    run = dict(temperature=0.8, top_k=40, seed=0)
    breaks = _breaks()
    eager_s = _timed(lambda: generate(model, prompt, n, **run))
    first_s = _timed(lambda: generate(model, prompt, n, compile=backend, **run))
    compile_s = max(first_s - eager_s, 0.0)
    ids = torch.tensor([prompt])
    with torch.no_grad():
        want = model(ids)[0]
        got = torch.compile(model, backend="inductor" if backend is True else backend)(ids)[0]
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5), \
        f"compiled logits differ from eager by {float((got - want).abs().max()):.3g} (beyond float tolerance)"
    rounds = 3 if benchmark.enabled else 1
    eager_times, compiled_times = [], []
    for _ in range(rounds):
        eager_times.append(_timed(lambda: generate(model, prompt, n, **run)))
        compiled_times.append(_timed(lambda: generate(model, prompt, n, compile=backend, **run)))
    e, c = n / min(eager_times), n / min(compiled_times)
    name = "inductor" if backend is True else backend
    benchmark.group = f"compiled decoding ({preset} preset, {name})"
    benchmark.extra_info.update(preset=preset, backend=name, new_tokens=n, compile_s=round(compile_s, 2),
                                eager_tokens_per_s=round(e, 1), compiled_tokens_per_s=round(c, 1),
                                speedup=round(c / e, 3), graph_breaks=_breaks() - breaks,
                                graph_break_reasons=_break_reasons())
    benchmark.pedantic(lambda: generate(model, prompt, n, compile=backend, **run), rounds=1, warmup_rounds=0)
    print(f"\ndecoding, {preset} preset, {name}: compile {compile_s:.1f} s; eager {e:,.1f} new tokens/s, "
          f"compiled {c:,.1f} new tokens/s (x{c / e:.2f}); graph breaks {_breaks() - breaks} {_break_reasons()}")
