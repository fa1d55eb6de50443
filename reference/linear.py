"""The affine layer every other component is built from: ``y = x W^T + b``.

Shapes: ``weight`` is ``(out_features, in_features)`` (as in ``torch.nn.Linear``), ``bias`` is
``(out_features,)``. Any number of leading dims: ``(..., in_features) -> (..., out_features)``.

``fast=True`` is an opt-in fast path with the same semantics: ``torch.nn.functional.linear`` (one
fused matmul-and-add call) instead of the two written-out operations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import checks

INIT_STD = 0.02  # GPT-2's initialisation: weights ~ N(0, 0.02^2), biases zero.


class Linear(nn.Module):
    """``y = x @ weight.T + bias``; weights ~ N(0, 0.02^2), bias zeros."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, fast: bool = False):
        super().__init__()
        self.in_features = checks.positive_int("in_features", in_features)
        self.out_features = checks.positive_int("out_features", out_features)
        self.fast = checks.boolean("fast", fast)
        self.weight = nn.Parameter(torch.randn(out_features, in_features) * INIT_STD)  # (out, in)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None           # (out,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        checks.tensor("x", x, min_dim=1, last_dim=self.in_features, floating=True)
        if self.fast:
            return F.linear(x, self.weight, self.bias)
        y = x @ self.weight.T  # (..., in) @ (in, out) -> (..., out)
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"fast={self.fast}")
