"""Forward+backward time of the reference's FFN activations and norms against torch's built-ins.

Run: ``pytest benchmarks/test_bench_layers.py --benchmark-only --benchmark-group-by=group``.
Each group holds the reference layer and its torch equivalent at one size, so the ratio shows.
"""

import pytest
import torch
import torch.nn.functional as F

from reference.feedforward import FeedForward
from reference.norm import LayerNorm, RMSNorm

SIZES = [(8, 128, 128), (8, 256, 512)]  # (B, T, d_model)


class TorchFeedForward(torch.nn.Module):
    """The same FFN from torch.nn modules and torch's fused activations."""

    def __init__(self, d_model, d_ff, activation):
        super().__init__()
        self.activation = activation
        self.w1 = torch.nn.Linear(d_model, d_ff)
        self.w2 = torch.nn.Linear(d_ff, d_model)
        self.w3 = torch.nn.Linear(d_model, d_ff) if activation == "swiglu" else None

    def forward(self, x):
        if self.activation == "swiglu":
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        return self.w2(F.relu(self.w1(x)) if self.activation == "relu" else F.gelu(self.w1(x)))


def _fwd_bwd(layer, x):
    def step():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).sum().backward()
    return step


@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("activation", ["relu", "gelu", "swiglu"])
@pytest.mark.parametrize("impl", ["reference", "torch"])
def test_feedforward(benchmark, impl, activation, size):
    b, t, d = size
    torch.manual_seed(0)
    layer = (FeedForward(d, 4 * d, activation) if impl == "reference" else TorchFeedForward(d, 4 * d, activation))
    x = torch.randn(b, t, d, requires_grad=True)
    benchmark.group = f"ffn-{activation}-{b}x{t}x{d}"
    benchmark.extra_info.update(impl=impl, activation=activation)
    benchmark(_fwd_bwd(layer, x))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("impl", ["reference", "torch"])
def test_norm(benchmark, impl, kind, size):
    b, t, d = size
    if impl == "reference":
        layer = LayerNorm(d) if kind == "layernorm" else RMSNorm(d)
    else:
        layer = torch.nn.LayerNorm(d) if kind == "layernorm" else torch.nn.RMSNorm(d, eps=1e-5)
    x = torch.randn(b, t, d, requires_grad=True)
    benchmark.group = f"{kind}-{b}x{t}x{d}"
    benchmark.extra_info.update(impl=impl, kind=kind)
    benchmark(_fwd_bwd(layer, x))
