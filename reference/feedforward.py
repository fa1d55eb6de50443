"""The position-wise feed-forward network (Vaswani et al., 2017; SwiGLU: Shazeer, 2020).

Applied to each position independently, ``(..., d_model) -> (..., d_model)``::

    relu, gelu, gelu_tanh:  FFN(x) = W2 act(W1 x + b1) + b2     W1: d_model -> d_ff, W2: d_ff -> d_model
    swiglu:      FFN(x) = W2 (silu(W1 x) * (W3 x))         W3: d_model -> d_ff, the linear branch

``gelu`` is the exact form ``x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))``. ``gelu_tanh`` is the tanh
approximation of Hendrycks & Gimpel (2016), GPT-2's activation (``gelu_new`` in Hugging Face
transformers)::

    gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))

``silu(x) = x * sigmoid(x)``. With ``bias=False`` no layer has a bias.

``fast=True`` is an opt-in fast path with the same semantics: the activations come from
``torch.nn.functional`` (``relu``, ``gelu`` exact, ``gelu(approximate="tanh")``, ``silu``), fused kernels, instead of the
functions below.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import checks
from .linear import Linear

ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "swiglu")


def relu(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, x, torch.zeros_like(x))


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU: ``0.5 x (1 + erf(x / sqrt(2)))``."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation: ``0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))``."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU (swish): ``x * sigmoid(x)``."""
    return x * torch.sigmoid(x)


class FeedForward(nn.Module):
    """Two-layer FFN (``w1``, ``w2``), plus the gate's linear branch ``w3`` for SwiGLU."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "gelu", bias: bool = True,
                 fast: bool = False):
        super().__init__()
        self.d_model = checks.positive_int("d_model", d_model)
        self.d_ff = checks.positive_int("d_ff", d_ff)
        self.activation = checks.one_of("activation", activation, ACTIVATIONS)
        self.fast = checks.boolean("fast", fast)
        self.w1 = Linear(d_model, d_ff, bias=bias)                                       # C -> F
        self.w2 = Linear(d_ff, d_model, bias=bias)                                       # F -> C
        self.w3 = Linear(d_model, d_ff, bias=bias) if activation == "swiglu" else None   # C -> F

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        checks.tensor("x", x, min_dim=1, last_dim=self.d_model, floating=True)
        _relu, _gelu, _silu = (F.relu, F.gelu, F.silu) if self.fast else (relu, gelu, silu)
        if self.activation == "swiglu":
            h = _silu(self.w1(x)) * self.w3(x)  # (..., F): the gated branch times the linear one
        elif self.activation == "gelu":
            h = _gelu(self.w1(x))               # (..., F)
        elif self.activation == "gelu_tanh":
            h = F.gelu(self.w1(x), approximate="tanh") if self.fast else gelu_tanh(self.w1(x))  # (..., F)
        else:
            h = _relu(self.w1(x))               # (..., F)
        return self.w2(h)                       # (..., C)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_ff={self.d_ff}, activation={self.activation!r}, fast={self.fast}"
