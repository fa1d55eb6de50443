"""Normalisation layers: LayerNorm (Ba et al., 2016) and RMSNorm (Zhang & Sennrich, 2019).

Both normalise each vector along the last dimension, ``(..., d_model) -> (..., d_model)``.

LayerNorm::

    mu    = mean(x)                      over the last dim
    var   = mean((x - mu)^2)             biased: divide by d_model, not d_model - 1
    y     = (x - mu) / sqrt(var + eps) * weight + bias

RMSNorm (no centring, no bias)::

    y     = x / sqrt(mean(x^2) + eps) * weight

Statistics of half-precision inputs (float16, bfloat16) are computed in float32, then cast back.
Write them with tensor operations: ``torch.nn.LayerNorm`` and ``F.rms_norm`` are the spec's oracles.

``fast=True`` is the one place torch's own kernels are allowed, as an opt-in fast path with the same
semantics: ``F.layer_norm(x, (d_model,), weight, bias, eps)`` / ``F.rms_norm(x, (d_model,), weight,
eps)`` when ``x.dtype == weight.dtype``; otherwise the written-out path. Do it last.

Spec: ``pytest --impl kata spec_tests/test_norm.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from . import checks

NORMS = ("layernorm", "rmsnorm")


class LayerNorm(nn.Module):
    """LayerNorm with a learnable gain ``weight`` (ones) and, when ``bias``, a shift ``bias`` (zeros).

    Args:
        d_model: size of the last dimension (positive int).
        eps: added to the variance *inside* the square root (a float > 0).
        bias: when False, ``self.bias`` is None.
        fast: the opt-in fused path (``F.layer_norm``; see the module docstring), kept as ``self.fast``.

    Errors: ``checks.positive_int("d_model", ...)``, ``checks.number_in_range("eps", eps, 0.0, None,
    low_inclusive=False)``, ``checks.boolean("fast", fast)``; in forward, ``checks.tensor("x", x, min_dim=1, last_dim=d_model, floating=True)``.
    """

    def __init__(self, d_model: int, eps: float = 1e-5, bias: bool = True, fast: bool = False):
        super().__init__()
        raise NotImplementedError(
            "LayerNorm.__init__: check the arguments; weight = Parameter(ones(d_model)), bias = zeros or None")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., d_model) -> (..., d_model)``: ``(x - mean) / sqrt(biased var + eps) * weight + bias``."""
        raise NotImplementedError("LayerNorm.forward: subtract the mean, divide by sqrt(var + eps), scale, shift")


class RMSNorm(nn.Module):
    """RMSNorm with a learnable gain ``weight`` (ones) and no bias.

    Args and errors as ``LayerNorm`` (no ``bias`` argument; ``fast`` uses ``F.rms_norm``).
    """

    def __init__(self, d_model: int, eps: float = 1e-5, fast: bool = False):
        super().__init__()
        raise NotImplementedError("RMSNorm.__init__: check the arguments; weight = Parameter(ones(d_model))")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., d_model) -> (..., d_model)``: ``x / sqrt(mean(x^2) + eps) * weight``."""
        raise NotImplementedError("RMSNorm.forward: divide by sqrt(mean(x^2) + eps), then scale by weight")


def build_norm(kind: str, d_model: int, eps: float = 1e-5, bias: bool = True, fast: bool = False) -> nn.Module:
    """``"layernorm"`` -> ``LayerNorm(d_model, eps, bias, fast)``, ``"rmsnorm"`` -> ``RMSNorm(d_model, eps, fast)``.

    Any other ``kind``: ``checks.one_of("norm", kind, NORMS)`` raises ValueError.
    """
    raise NotImplementedError("build_norm: pick LayerNorm or RMSNorm by name")
