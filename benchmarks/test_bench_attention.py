"""Time of the reference attention (written-out vs the fused ``fast=True`` path) against
``torch.nn.MultiheadAttention``, and of the positional schemes.

Run: ``pytest benchmarks/test_bench_attention.py --benchmark-only --benchmark-group-by=group``.
Each group holds the contenders at one size and mode (forward, or forward + backward), so the
ratios show. All layers are causal, H = 4 heads, float32, eval mode (no dropout).
"""

import pytest
import torch

from reference.attention import KVCache, build_attention
from reference.positional import LearnedPositionalEmbedding, SinusoidalPositionalEncoding

SIZES = [(8, 128, 128), (8, 256, 256)]  # (B, T, d_model)
N_HEADS = 4


class TorchAttention(torch.nn.Module):
    """torch.nn.MultiheadAttention under the same causal mask (torch's bool mask: True = blocked)."""

    def __init__(self, d_model, n_heads):
        super().__init__()
        self.mha = torch.nn.MultiheadAttention(d_model, n_heads, batch_first=True)

    def forward(self, x):
        t = x.shape[1]
        blocked = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        return self.mha(x, x, x, attn_mask=blocked, need_weights=False)[0]


def _layer(impl, d, positional="none"):
    torch.manual_seed(0)
    if impl == "torch":
        return TorchAttention(d, N_HEADS).eval()
    return build_attention(d_model=d, n_heads=N_HEADS, positional=positional, max_len=1024,
                           fast=impl == "fast").eval()


def _step(layer, x, mode):
    if mode == "fwd":
        def forward():
            with torch.no_grad():
                layer(x)
        return forward

    def forward_backward():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).sum().backward()
    return forward_backward


@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", ["written-out", "fast", "torch"])
def test_attention(benchmark, impl, mode, size):
    b, t, d = size
    layer = _layer(impl, d)
    x = torch.randn(b, t, d, requires_grad=mode != "fwd")
    benchmark.group = f"attention-{mode}-{b}x{t}x{d}"
    benchmark.extra_info.update(impl=impl, mode=mode)
    benchmark(_step(layer, x, mode))


class AddPositions(torch.nn.Module):
    """An absolute table (learned / sinusoidal) added to x, then attention without positions."""

    def __init__(self, table, attn):
        super().__init__()
        self.table, self.attn = table, attn

    def forward(self, x):
        return self.attn(x + self.table(torch.arange(x.shape[1])))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("positional", ["none", "sinusoidal", "learned", "rope", "alibi"])
@pytest.mark.parametrize("impl", ["written-out", "fast"])
def test_positional(benchmark, impl, positional, size):
    """Forward + backward of attention with each positional scheme (rope / alibi inside attention)."""
    b, t, d = size
    inside = positional if positional in ("rope", "alibi") else "none"
    layer = _layer(impl, d, inside)
    if positional == "learned":
        layer = AddPositions(LearnedPositionalEmbedding(1024, d), layer)
    elif positional == "sinusoidal":
        layer = AddPositions(SinusoidalPositionalEncoding(d, 1024), layer)
    x = torch.randn(b, t, d, requires_grad=True)
    benchmark.group = f"positional-{impl}-fwd+bwd-{b}x{t}x{d}"
    benchmark.extra_info.update(impl=impl, positional=positional)
    benchmark(_step(layer, x, "fwd+bwd"))


@pytest.mark.parametrize("impl", ["written-out", "fast"])
def test_kv_cache_decoding(benchmark, impl):
    """Decoding 64 tokens one at a time with a KVCache (B=8, d=128, after a 64-token prompt)."""
    b, d = 8, 128
    layer = _layer(impl, d, "rope")
    x = torch.randn(b, 128, d)

    def decode():
        cache = KVCache(b, N_HEADS, 128, d // N_HEADS)
        with torch.no_grad():
            layer(x[:, :64], kv_cache=cache)
            for i in range(64, 128):
                layer(x[:, i:i + 1], kv_cache=cache)

    benchmark.group = "kv-cache-decode-64-tokens"
    benchmark.extra_info.update(impl=impl)
    benchmark(decode)
