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
``torch.nn.functional`` (``F.relu``, ``F.gelu`` (exact), ``F.gelu(x, approximate="tanh")``,
``F.silu``) instead of your functions.

Spec: ``pytest --impl kata spec_tests/test_feedforward.py``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import checks
from .linear import Linear

ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "swiglu")


def relu(x: torch.Tensor) -> torch.Tensor:
    """``max(x, 0)`` elementwise."""
    raise NotImplementedError("relu: keep x where x > 0, else 0")


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU: ``0.5 x (1 + erf(x / sqrt(2)))`` (``torch.erf``, ``math.sqrt``)."""
    raise NotImplementedError("gelu: 0.5 * x * (1 + erf(x / sqrt(2)))")


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation: ``0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))`` (``torch.tanh``)."""
    raise NotImplementedError("gelu_tanh: 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3)))")


def silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU (swish): ``x * sigmoid(x)``."""
    raise NotImplementedError("silu: x * sigmoid(x)")


class FeedForward(nn.Module):
    """Two-layer FFN (``w1``, ``w2``), plus the gate's linear branch ``w3`` for SwiGLU.

    Args:
        d_model, d_ff: positive ints (``checks.positive_int`` with those names).
        activation: one of ``ACTIVATIONS`` (``checks.one_of("activation", ...)``).
        bias: passed to every ``Linear``.
        fast: use ``F.relu`` / ``F.gelu`` / ``F.silu`` in forward (``checks.boolean("fast", fast)``).

    Attributes: ``w1 = Linear(d_model, d_ff)``, ``w2 = Linear(d_ff, d_model)``, and for swiglu only
    ``w3 = Linear(d_model, d_ff)`` (``None`` otherwise). Parameter count: ``2 d f`` (+ ``f + d``
    biases); swiglu ``3 d f`` (+ ``2 f + d``).
    """

    def __init__(self, d_model: int, d_ff: int, activation: str = "gelu", bias: bool = True,
                 fast: bool = False):
        super().__init__()
        raise NotImplementedError("FeedForward.__init__: check the arguments, build w1, w2 (and w3 for swiglu)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., d_model) -> (..., d_model)``; check ``x`` with ``checks.tensor`` first.

        swiglu: ``w2(silu(w1(x)) * w3(x))``; relu / gelu / gelu_tanh: ``w2(act(w1(x)))``.
        """
        raise NotImplementedError("FeedForward.forward: w2(act(w1(x))), or w2(silu(w1(x)) * w3(x)) for swiglu")
