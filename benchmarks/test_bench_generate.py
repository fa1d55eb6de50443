"""Generation speed: tokens/s with and without the KV cache, and the sampler against torch.multinomial.

Run: ``pytest benchmarks/test_bench_generate.py --benchmark-only --benchmark-group-by=group``.

The decoding benchmarks use a default-sized model (4 layers, d_model 128, 4 heads, V 512, context
1040) and generate 64, 256 and 1024 new tokens after a 16-token prompt; ``extra_info`` records the
tokens/s. With the KV cache each step runs the model on one token; without it, each step recomputes
the whole sequence, so the gap grows with the length (target: >= 3x at 256 tokens). With
``--benchmark-disable`` (CI) every length shrinks to 4 tokens, so the file runs in seconds.
"""

import time

import pytest
import torch

from reference.generate import generate, sample
from reference.model import ModelConfig, TransformerLM

LENGTHS = [64, 256, 1024]
DEFAULT = dict(vocab_size=512, context_length=1040, n_layers=4, d_model=128, n_heads=4)


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return TransformerLM(ModelConfig(**DEFAULT)).eval()


def _rounds(n: int) -> int:
    return 3 if n <= 256 else 1


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
def test_generate(benchmark, lm, use_cache, n):
    if benchmark.disabled:
        n = 4
    prompt = list(range(16))
    times = []

    def run():
        start = time.perf_counter()
        out = generate(lm, prompt, n, temperature=1.0, seed=0, use_cache=use_cache)
        times.append(time.perf_counter() - start)
        return out

    benchmark.group = f"generate-{n}-tokens"
    out = benchmark.pedantic(run, rounds=_rounds(n), iterations=1, warmup_rounds=0)
    assert len(out) == n
    benchmark.extra_info.update(use_cache=use_cache, new_tokens=n,
                                tokens_per_s=round(n / min(times), 1))


@pytest.mark.parametrize("impl", ["reference", "torch.multinomial"])
@pytest.mark.parametrize("filters", [{}, {"top_k": 50, "top_p": 0.9}], ids=["plain", "top-k-50-top-p-0.9"])
def test_sampler(benchmark, impl, filters):
    """256 draws, one at a time, from (1, 512) logits: the reference's sample against multinomial(softmax)."""
    if impl == "torch.multinomial" and filters:
        pytest.skip("torch has no top-k / top-p sampler to compare with")
    logits = torch.randn(256, 1, 512, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)

    def reference_loop():
        return [sample(row, temperature=1.0, generator=generator, **filters) for row in logits]

    def torch_loop():
        return [torch.multinomial(torch.softmax(row, dim=-1), 1, generator=generator) for row in logits]

    benchmark.group = "sampler-256-draws-V512"
    benchmark.extra_info.update(impl=impl, **filters)
    benchmark(reference_loop if impl == "reference" else torch_loop)
