"""Normalisation layers: LayerNorm (Ba et al., 2016) and RMSNorm (Zhang & Sennrich, 2019).

Both normalise each vector along the last dimension, ``(..., d_model) -> (..., d_model)``.

LayerNorm::

    mu    = mean(x)                      over the last dim
    var   = mean((x - mu)^2)             biased: divide by d_model, not d_model - 1
    y     = (x - mu) / sqrt(var + eps) * weight + bias

RMSNorm (no centring, no bias)::

    y     = x / sqrt(mean(x^2) + eps) * weight

Statistics of half-precision inputs are computed in float32, then cast back.

``fast=True`` is an opt-in fast path with the same semantics: ``torch.nn.functional.layer_norm`` /
``rms_norm`` (fused kernels) whenever the input has the parameters' dtype; otherwise the
written-out path above.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import checks

NORMS = ("layernorm", "rmsnorm")


class LayerNorm(nn.Module):
    """LayerNorm with a learnable gain ``weight`` (ones) and, when ``bias``, a shift ``bias`` (zeros)."""

    def __init__(self, d_model: int, eps: float = 1e-5, bias: bool = True, fast: bool = False):
        super().__init__()
        self.d_model = checks.positive_int("d_model", d_model)
        self.eps = checks.number_in_range("eps", eps, 0.0, None, low_inclusive=False)
        self.fast = checks.boolean("fast", fast)
        self.weight = nn.Parameter(torch.ones(d_model))                  # (C,)
        self.bias = nn.Parameter(torch.zeros(d_model)) if bias else None  # (C,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        checks.tensor("x", x, min_dim=1, last_dim=self.d_model, floating=True)
        if self.fast and x.dtype == self.weight.dtype:
            return F.layer_norm(x, (self.d_model,), self.weight, self.bias, self.eps)
        h = _upcast(x)                                           # (..., C)
        mu = h.mean(dim=-1, keepdim=True)                        # (..., 1)
        var = ((h - mu) ** 2).mean(dim=-1, keepdim=True)         # (..., 1) biased variance
        y = ((h - mu) / torch.sqrt(var + self.eps)).to(x.dtype)  # (..., C) zero mean, unit variance
        y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self) -> str:
        return f"{self.d_model}, eps={self.eps}, bias={self.bias is not None}, fast={self.fast}"


class RMSNorm(nn.Module):
    """RMSNorm with a learnable gain ``weight`` (ones) and no bias."""

    def __init__(self, d_model: int, eps: float = 1e-5, fast: bool = False):
        super().__init__()
        self.d_model = checks.positive_int("d_model", d_model)
        self.eps = checks.number_in_range("eps", eps, 0.0, None, low_inclusive=False)
        self.fast = checks.boolean("fast", fast)
        self.weight = nn.Parameter(torch.ones(d_model))  # (C,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        checks.tensor("x", x, min_dim=1, last_dim=self.d_model, floating=True)
        if self.fast and x.dtype == self.weight.dtype:
            return F.rms_norm(x, (self.d_model,), self.weight, self.eps)
        h = _upcast(x)                                                     # (..., C)
        rms = torch.sqrt((h * h).mean(dim=-1, keepdim=True) + self.eps)   # (..., 1)
        return (h / rms).to(x.dtype) * self.weight

    def extra_repr(self) -> str:
        return f"{self.d_model}, eps={self.eps}, fast={self.fast}"


def build_norm(kind: str, d_model: int, eps: float = 1e-5, bias: bool = True, fast: bool = False) -> nn.Module:
    """``"layernorm"`` -> LayerNorm, ``"rmsnorm"`` -> RMSNorm (which has no bias)."""
    checks.one_of("norm", kind, NORMS)
    if kind == "layernorm":
        return LayerNorm(d_model, eps=eps, bias=bias, fast=fast)
    return RMSNorm(d_model, eps=eps, fast=fast)


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
