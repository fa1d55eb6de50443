"""Training speed of the reference TransformerLM against the same model built from torch.nn only.

Run: ``pytest benchmarks/test_bench_model.py --benchmark-only --benchmark-group-by=group``.

Each group holds, at one size, three models of the same shape and initialisation scheme:

- ``reference``: ``TransformerLM(ModelConfig(...))``, attention written out from tensor primitives;
- ``reference-fast``: the same with ``fast=True`` (every layer's opt-in fused path: attention, norms,
  FFN activations, loss);
- ``torch``: ``TorchGPT`` below, built only from ``torch.nn`` / ``torch.nn.functional``
  (``nn.Embedding``, ``nn.Linear``, ``nn.LayerNorm``, ``F.scaled_dot_product_attention``,
  ``F.gelu``, ``F.cross_entropy``).

``test_forward_backward`` times loss + backward; ``test_train_step`` adds a ``torch.optim.AdamW``
step and records ``tokens_per_s`` in the benchmark's extra info. The ratio reference/torch of the
means is the figure of merit (see the README's benchmark notes). With ``--benchmark-disable`` every
case runs once, at the smallest size only (seconds).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reference.model import ModelConfig, TransformerLM

#: name -> (n_layers, d_model, n_heads, context/T, vocab, batch)
SIZES = {
    "tiny-2x64": (2, 64, 4, 64, 256, 8),
    "default-4x128": (4, 128, 4, 128, 512, 16),
    "wide-4x256": (4, 256, 8, 128, 1024, 8),
}
IMPLS = ["reference", "reference-fast", "torch"]


class TorchBlock(nn.Module):
    """Pre-LN block from torch.nn: fused LayerNorm, addmm Linear, SDPA with a causal mask, exact GELU."""

    def __init__(self, d_model, n_heads):
        super().__init__()
        self.n_heads = n_heads
        self.ln_1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.ln_2 = nn.LayerNorm(d_model)
        self.w1 = nn.Linear(d_model, 4 * d_model)
        self.w2 = nn.Linear(4 * d_model, d_model)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln_1(x)).view(b, t, 3, self.n_heads, c // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)   # (B, H, T, D)
        x = x + self.out_proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.w2(F.gelu(self.w1(self.ln_2(x))))


class TorchGPT(nn.Module):
    """A GPT of the reference's shape (learned positions, tied head, Pre-LN, final norm) from torch.nn."""

    def __init__(self, n_layers, d_model, n_heads, context_length, vocab_size):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(context_length, d_model)
        self.blocks = nn.ModuleList(TorchBlock(d_model, n_heads) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.lm_head.weight = self.token_embedding.weight
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * n_layers) if name.endswith(("out_proj.weight", "w2.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif "ln" not in name:
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.token_embedding(idx) + self.position_embedding(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def build(impl: str, size: str):
    n_layers, d, h, t, v, b = SIZES[size]
    torch.manual_seed(0)
    if impl == "torch":
        model = TorchGPT(n_layers, d, h, t, v)
    else:
        model = TransformerLM(ModelConfig(vocab_size=v, context_length=t, n_layers=n_layers, d_model=d,
                                          n_heads=h, fast=impl == "reference-fast"))
    idx = torch.randint(0, v, (b, t), generator=torch.Generator().manual_seed(1))
    targets = torch.randint(0, v, (b, t), generator=torch.Generator().manual_seed(2))
    return model.train(), idx, targets


@pytest.fixture(params=list(SIZES))
def size(request):
    if request.config.getoption("benchmark_disable", False) and request.param != "tiny-2x64":
        pytest.skip("--benchmark-disable: the smoke run uses the smallest size only")
    return request.param


@pytest.mark.parametrize("impl", IMPLS)
def test_forward_backward(benchmark, impl, size):
    model, idx, targets = build(impl, size)

    def step():
        model.zero_grad(set_to_none=True)
        _, loss = model(idx, targets)
        loss.backward()

    benchmark.group = f"forward+backward {size}"
    benchmark.extra_info.update(impl=impl, tokens=idx.numel())
    benchmark.pedantic(step, rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("impl", IMPLS)
def test_train_step(benchmark, impl, size):
    model, idx, targets = build(impl, size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)

    def step():
        optimizer.zero_grad(set_to_none=True)
        _, loss = model(idx, targets)
        loss.backward()
        optimizer.step()
        return loss

    benchmark.group = f"train step {size}"
    benchmark.extra_info.update(impl=impl, tokens=idx.numel())
    loss = benchmark.pedantic(step, rounds=5, warmup_rounds=1)
    assert torch.isfinite(loss), f"{impl}: non-finite loss {loss.item()}"
    if benchmark.enabled:
        benchmark.extra_info["tokens_per_s"] = round(idx.numel() / benchmark.stats.stats.mean)
