"""Decoding speed of ``reference.generate`` beside a minimal torch.nn GPT decoding THE SAME WEIGHTS.

Run: ``pytest benchmarks/test_bench_generate.py --benchmark-only --benchmark-group-by=group``, then
``python -m benchmarks.summarize`` on its ``--benchmark-json`` for the ratio table.

The model is default-sized (4 layers, d_model 128, 4 heads, V 512, context 1040); every decoding
case feeds a 16-token prompt and makes ``n`` = 64, 256 or 1024 new tokens, batch 1 or 8, sampling
plainly (temperature 1) or with top-k 50 + top-p 0.9. Each group holds three contenders:

- ``reference``: ``generate`` / ``stream`` / ``stream_text`` on ``TransformerLM`` (written out);
- ``reference-fast``: the same weights with ``fast=True``;
- ``torch``: THE BASELINE, ``TorchDecoder`` below: the same weights copied into ``torch.nn``
  modules (``nn.Embedding``, ``nn.LayerNorm``, one fused ``nn.Linear`` for q, k, v,
  ``F.scaled_dot_product_attention``, ``F.gelu``), a KV cache that concatenates each new key and
  value, and ``torch.multinomial`` (after ``torch.topk`` and a sorted cumulative top-p cut).

Every contender uses its KV cache; the ratio reference / torch of the mean times is the figure of
merit (``benchmarks.summarize``), and ``extra_info`` records the tokens/s. ``test_cache_speedup``
compares the reference with and without its cache. With ``--benchmark-disable`` (CI) the 64-token
cases run once, decoding 8 tokens, and the longer ones are skipped, so the file runs in seconds;
``test_baseline_decodes_the_same_model`` checks that the baseline greedy-decodes the reference's
tokens (the same model).
"""

from __future__ import annotations

import codecs
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reference.generate import generate, sample, stream, stream_text
from reference.model import ModelConfig, TransformerLM
from reference.tokenizer import Tokenizer

LENGTHS = [64, 256, 1024]
BATCHES = [1, 8]
DEFAULT = dict(vocab_size=512, context_length=1040, n_layers=4, d_model=128, n_heads=4)
PROMPT_LENGTH = 16
FILTERS = {"plain": {}, "top-k-50-top-p-0.9": {"top_k": 50, "top_p": 0.9}}
IMPLS = ["reference", "reference-fast", "torch"]


# ---------------------------------------------------------------------------------------------
# THE BASELINE: a minimal GPT decoder from torch.nn, with a concatenating KV cache
# ---------------------------------------------------------------------------------------------


class TorchDecoderBlock(nn.Module):
    """Pre-LN block: fused LayerNorm, one Linear for q, k, v, SDPA, exact GELU."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        self.n_heads = n_heads
        self.ln_1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.ln_2 = nn.LayerNorm(d_model)
        self.w1 = nn.Linear(d_model, d_ff)
        self.w2 = nn.Linear(d_ff, d_model)

    def forward(self, x, cache):
        """``x (B, T, C)``, ``cache`` = (k, v) of the tokens before, or None -> ``(y, (k, v))``."""
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln_1(x)).view(b, t, 3, self.n_heads, c // self.n_heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        # the prompt goes in with an empty cache (causal); each later token attends to everything
        y = F.scaled_dot_product_attention(q, k, v, is_causal=cache is None and t > 1)
        x = x + self.out_proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.w2(F.gelu(self.w1(self.ln_2(x)))), (k, v)


class TorchDecoder(nn.Module):
    """The baseline: a GPT of the reference's shape from torch.nn, loaded with a reference model's weights."""

    def __init__(self, lm: TransformerLM):
        super().__init__()
        cfg = lm.config
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.position_embedding = nn.Embedding(cfg.context_length, cfg.d_model)
        self.blocks = nn.ModuleList(TorchDecoderBlock(cfg.d_model, cfg.n_heads, cfg.resolved_d_ff)
                                    for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        with torch.no_grad():
            self.token_embedding.weight.copy_(lm.token_embedding.weight)
            self.position_embedding.weight.copy_(lm.position_embedding.weight)
            for mine, theirs in zip(self.blocks, lm.blocks):
                a = theirs.attn
                mine.qkv.weight.copy_(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]))
                mine.qkv.bias.copy_(torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]))
                for name in ("ln_1", "ln_2"):
                    getattr(mine, name).load_state_dict(getattr(theirs, name).state_dict())
                mine.out_proj.load_state_dict(a.out_proj.state_dict())
                mine.w1.load_state_dict(theirs.ffn.w1.state_dict())
                mine.w2.load_state_dict(theirs.ffn.w2.state_dict())
            self.ln_f.load_state_dict(lm.ln_f.state_dict())
        self.eval()

    def forward(self, idx, caches, start):
        """``idx (B, T)`` at positions ``start..start+T-1`` -> last-position logits ``(B, V)``, new caches."""
        x = self.token_embedding(idx) + self.position_embedding.weight[start:start + idx.shape[1]]
        new_caches = []
        for block, cache in zip(self.blocks, caches):
            x, cache = block(x, cache)
            new_caches.append(cache)
        return F.linear(self.ln_f(x[:, -1]), self.token_embedding.weight), new_caches   # tied head


def torch_sample(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """``(B, V) -> (B,)``: temperature, ``torch.topk``, a sorted cumulative top-p cut, ``torch.multinomial``."""
    logits = logits / temperature
    if top_k is not None:
        values, indices = torch.topk(logits, top_k, dim=-1)                      # (B, k), sorted
        probs = torch.softmax(values, dim=-1)
        if top_p is not None:
            before = probs.cumsum(dim=-1) - probs                                # mass above each
            probs = probs.masked_fill(before >= top_p, 0.0)
        return indices.gather(-1, torch.multinomial(probs, 1, generator=generator))[:, 0]
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]


def torch_stream(decoder, prompt, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=0):
    """The baseline's decoding loop: yields an ``int`` per step (one prompt) or a ``(B,)`` tensor."""
    single = not isinstance(prompt, torch.Tensor)
    idx = torch.tensor([prompt]) if single else prompt
    generator = torch.Generator().manual_seed(seed)
    caches, start = [None] * len(decoder.blocks), 0
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits, caches = decoder(idx, caches, start)
            start += idx.shape[1]
            next_ids = torch_sample(logits, temperature, top_k, top_p, generator)   # (B,)
            idx = next_ids[:, None]
            yield int(next_ids[0]) if single else next_ids


def torch_generate(decoder, prompt, max_new_tokens, **kwargs):
    steps = list(torch_stream(decoder, prompt, max_new_tokens, **kwargs))
    return steps if not isinstance(prompt, torch.Tensor) else torch.stack(steps, dim=1)


def torch_stream_text(decoder, tokenizer, prompt, max_new_tokens, **kwargs):
    """The baseline's text streaming: the same incremental UTF-8 decoding as ``stream_text``."""
    decoder_utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token_id in torch_stream(decoder, tokenizer.encode(prompt), max_new_tokens, **kwargs):
        piece = decoder_utf8.decode(tokenizer.decode_bytes([token_id]))
        if piece:
            yield piece
    rest = decoder_utf8.decode(b"", final=True)
    if rest:
        yield rest


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models():
    """``{impl: model}``: the reference (written out and fast=True) and the baseline, the same weights."""
    torch.manual_seed(0)
    lm = TransformerLM(ModelConfig(**DEFAULT)).eval()
    fast = TransformerLM(ModelConfig(**DEFAULT, fast=True)).eval()
    fast.load_state_dict(lm.state_dict())
    return {"reference": lm, "reference-fast": fast, "torch": TorchDecoder(lm)}


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE tokenizer of the model's vocabulary size (512): 256 fixed merges of printable bytes."""
    letters = list(range(97, 123)) + [32]
    merges, pairs = [], ((a, b) for a in letters for b in letters)
    for n in range(DEFAULT["vocab_size"] - 256):
        merges.append(next(pairs))
    return Tokenizer(merges)


def _prompt(batch: int):
    if batch == 1:
        return list(range(PROMPT_LENGTH))
    return torch.randint(0, DEFAULT["vocab_size"], (batch, PROMPT_LENGTH), generator=torch.Generator().manual_seed(0))


def _rounds(n: int) -> int:
    return 3 if n <= 256 else 2


#: New tokens per case in the smoke run (``--benchmark-disable``): each case once, and short.
SMOKE_TOKENS = 8


def _skip_long_in_smoke_run(benchmark, n) -> int:
    """The number of tokens to decode: ``n``, or ``SMOKE_TOKENS`` in the smoke run (longer cases skipped)."""
    if benchmark.disabled and n > LENGTHS[0]:
        pytest.skip("--benchmark-disable: the smoke run decodes the shortest length only")
    return SMOKE_TOKENS if benchmark.disabled else n


def _timed(benchmark, fn, n, batch):
    times = []

    def run():
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
        return out

    out = benchmark.pedantic(run, rounds=_rounds(n) if benchmark.enabled else 1, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(new_tokens=n, batch=batch, tokens_per_s=round(n * batch / min(times), 1))
    return out


# ---------------------------------------------------------------------------------------------
# Benchmarks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("filters", list(FILTERS))
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("batch", BATCHES)
def test_generate(benchmark, models, impl, filters, n, batch):
    """``generate`` against the baseline's loop, the same weights, prompt, seed and filters."""
    n = _skip_long_in_smoke_run(benchmark, n)
    model, prompt, kwargs = models[impl], _prompt(batch), dict(temperature=1.0, seed=0, **FILTERS[filters])
    if impl == "torch":
        fn = lambda: torch_generate(model, prompt, n, **kwargs)   # noqa: E731
    else:
        fn = lambda: generate(model, prompt, n, **kwargs)         # noqa: E731
    benchmark.group = f"generate b{batch} {n} tokens {filters}"
    benchmark.extra_info.update(impl=impl)
    out = _timed(benchmark, fn, n, batch)
    assert len(out) == n if batch == 1 else tuple(out.shape) == (batch, n)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("filters", list(FILTERS))
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("batch", BATCHES)
def test_stream(benchmark, models, impl, filters, n, batch):
    """``stream`` consumed token by token against the baseline's generator loop."""
    n = _skip_long_in_smoke_run(benchmark, n)
    model, prompt, kwargs = models[impl], _prompt(batch), dict(temperature=1.0, seed=0, **FILTERS[filters])
    source = torch_stream if impl == "torch" else stream
    benchmark.group = f"stream b{batch} {n} tokens {filters}"
    benchmark.extra_info.update(impl=impl)
    out = _timed(benchmark, lambda: [token for token in source(model, prompt, n, **kwargs)], n, batch)
    assert len(out) == n


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("filters", list(FILTERS))
@pytest.mark.parametrize("n", LENGTHS)
def test_stream_text(benchmark, models, tokenizer, impl, filters, n):
    """``stream_text`` (one prompt) against the baseline's loop with the same incremental UTF-8 decoding."""
    n = _skip_long_in_smoke_run(benchmark, n)
    model, kwargs = models[impl], dict(temperature=1.0, seed=0, **FILTERS[filters])
    prompt = "the quick brown fox"   # 15 tokens: with 1024 new ones it fits the baseline's context (1040)
    assert len(tokenizer.encode(prompt)) <= PROMPT_LENGTH
    source = torch_stream_text if impl == "torch" else stream_text
    benchmark.group = f"stream_text b1 {n} tokens {filters}"
    benchmark.extra_info.update(impl=impl)
    pieces = _timed(benchmark, lambda: list(source(model, tokenizer, prompt, n, **kwargs)), n, 1)
    assert pieces and all(isinstance(p, str) for p in pieces)


@pytest.mark.parametrize("batch", BATCHES)
def test_baseline_decodes_the_same_model(models, batch):
    """The baseline is the same model: greedy decoding gives the reference's tokens (not timed)."""
    prompt = _prompt(batch)
    ours = generate(models["reference"], prompt, 16, temperature=0.0)
    theirs = torch_generate(models["torch"], prompt, 16, temperature=1.0, top_k=1)
    assert (ours == theirs) if batch == 1 else torch.equal(ours, theirs)


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
def test_cache_speedup(benchmark, models, use_cache, n):
    """The reference with and without its KV cache (without it each step recomputes the whole sequence)."""
    n = _skip_long_in_smoke_run(benchmark, n)
    model = models["reference"]
    benchmark.group = f"generate-{n}-tokens cache vs no cache"
    benchmark.extra_info.update(use_cache=use_cache)
    out = _timed(benchmark, lambda: generate(model, _prompt(1), n, seed=0, use_cache=use_cache), n, 1)
    assert len(out) == n


@pytest.mark.parametrize("impl", ["reference", "torch.multinomial"])
@pytest.mark.parametrize("filters", list(FILTERS))
def test_sampler(benchmark, impl, filters):
    """256 draws, one at a time, from (1, 512) logits: ``sample`` against the torch peer,
    ``torch.multinomial(softmax)`` (plain) or ``torch.topk`` + softmax + cumulative top-p cut +
    ``torch.multinomial`` (filtered, ``torch_sample``)."""
    logits = torch.randn(256, 1, 512, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    kwargs = FILTERS[filters]

    def reference_loop():
        return [sample(row, temperature=1.0, generator=generator, **kwargs) for row in logits]

    def torch_loop():
        return [torch_sample(row, 1.0, generator=generator, **kwargs) for row in logits]

    benchmark.group = f"sampler 256 draws V512 {filters}"
    benchmark.extra_info.update(impl=impl, **kwargs)
    benchmark(reference_loop if impl == "reference" else torch_loop)
