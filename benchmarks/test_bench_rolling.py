"""The rolling KV cache (``RollingKVCache``) of a sliding-window model against the full ``KVCache``.

Run: ``pytest benchmarks/test_bench_rolling.py --benchmark-only --benchmark-group-by=group``.

The model: 4 layers, d_model 128, 4 heads (2 kv heads), V 512, RoPE, window ``W = 64``. Every case
feeds a 16-token prompt, then decodes ``4 W = 256`` tokens one at a time (greedy), batch 1:

- ``rolling vs full``: context 512, so both caches fit: the rolling caches (``model.new_kv_cache``,
  ``W`` slots per layer) against full ``KVCache`` s of every position (``T = 272``), the same tokens;
- ``past the context``: context 128, so decoding goes 144 tokens past it: ``generate`` with the
  rolling caches (nothing recomputed) against the sliding recomputation of the last 128 tokens that
  a model without rolling caches does (``rolls_past_context = False``).

``extra_info`` records ``tokens_per_s`` and ``kv_bytes`` (the key and value buffers allocated).
With ``--benchmark-disable`` (CI) each case runs once with window 8 and 32 new tokens, so the file
runs in seconds; the KV bytes are checked against their formula and the rolling caches' tokens
against the full caches'.
"""

from __future__ import annotations

import time

import pytest
import torch

from reference.attention import KVCache
from reference.generate import generate
from reference.model import ModelConfig, TransformerLM

MODEL = dict(vocab_size=512, n_layers=4, d_model=128, n_heads=4, n_kv_heads=2, positional="rope")
PROMPT_LENGTH = 16


class SlidingRecomputation(TransformerLM):
    """The same model, decoding past the context as a model without rolling caches does: each step
    recomputes the last context_length tokens."""

    rolls_past_context = False


def _sizes(benchmark):
    """(window, new tokens): W = 64 and 4 W, or 8 and 32 in the smoke run."""
    window = 8 if benchmark.disabled else 64
    return window, 4 * window


def _model(context_length: int, window: int, cls=TransformerLM) -> TransformerLM:
    torch.manual_seed(0)
    return cls(ModelConfig(**MODEL, context_length=context_length, window=window)).eval()


def _kv_bytes(caches) -> int:
    return sum(c.k.numel() * c.k.element_size() + c.v.numel() * c.v.element_size() for c in caches)


def _greedy(model, caches, prompt, n):
    """Feed the prompt, then one token at a time with ``caches``; the greedy ids."""
    out, new = [], prompt
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(new, kv_cache=caches)
            new = logits[:, -1].argmax(dim=-1, keepdim=True)   # (1, 1)
            out.append(int(new))
    return out


def _timed(benchmark, fn, n):
    times = []

    def run():
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
        return out

    out = benchmark.pedantic(run, rounds=1 if benchmark.disabled else 3, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(new_tokens=n, tokens_per_s=round(n / min(times), 1))
    return out


@pytest.mark.parametrize("cache", ["rolling", "full"])
def test_rolling_vs_full_cache(benchmark, cache):
    """Decoding 4 W tokens inside the context: the rolling caches hold W positions per layer, the
    full ones every position; the tokens are the same."""
    window, n = _sizes(benchmark)
    model = _model(512, window)
    prompt = torch.arange(PROMPT_LENGTH)[None] % MODEL["vocab_size"]
    total = PROMPT_LENGTH + n
    c = model.config

    def new_caches():
        if cache == "rolling":
            return model.new_kv_cache(1, total)
        return [KVCache(1, c.resolved_n_kv_heads, total, c.resolved_head_dim) for _ in model.blocks]

    kv_bytes = _kv_bytes(new_caches())
    expected = c.n_layers * 2 * c.resolved_n_kv_heads * (window if cache == "rolling" else total) * c.resolved_head_dim * 4
    assert kv_bytes == expected, f"{cache} KV bytes: expected {expected}, got {kv_bytes}"
    benchmark.group = f"rolling vs full KV cache, window {window}, {n} tokens"
    benchmark.extra_info.update(cache=cache, window=window, kv_bytes=kv_bytes)
    out = _timed(benchmark, lambda: _greedy(model, new_caches(), prompt, n), n)
    assert out == _greedy(model, [KVCache(1, c.resolved_n_kv_heads, total, c.resolved_head_dim)
                                  for _ in model.blocks], prompt, n), "rolling and full caches: other tokens"


@pytest.mark.parametrize("decoder", ["rolling", "sliding-recomputation"])
def test_past_the_context(benchmark, decoder):
    """``generate`` 4 W tokens with context 2 W: the rolling caches go past the context without
    recomputing; the sliding recomputation runs a full pass over the last context_length tokens."""
    window, n = _sizes(benchmark)
    cls = TransformerLM if decoder == "rolling" else SlidingRecomputation
    model = _model(2 * window, window, cls)
    prompt = list(range(PROMPT_LENGTH))
    benchmark.group = f"past the context {2 * window}, window {window}, {n} tokens"
    kv_bytes = _kv_bytes(model.new_kv_cache(1, PROMPT_LENGTH + n if decoder == "rolling" else 2 * window))
    benchmark.extra_info.update(decoder=decoder, window=window, kv_bytes=kv_bytes)
    out = _timed(benchmark, lambda: generate(model, prompt, n, temperature=0.0), n)
    assert len(out) == n
