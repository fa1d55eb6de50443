"""The affine layer every other component is built from: ``y = x W^T + b``.

Shapes: ``weight`` is ``(out_features, in_features)`` (as in ``torch.nn.Linear``), ``bias`` is
``(out_features,)``. Any number of leading dims: ``(..., in_features) -> (..., out_features)``.

Spec: ``pytest --impl kata spec_tests/test_linear.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from . import checks

INIT_STD = 0.02  # GPT-2's initialisation: weights ~ N(0, 0.02^2), biases zero.


class Linear(nn.Module):
    """``y = x @ weight.T + bias``; weights ~ N(0, 0.02^2), bias zeros.

    Args:
        in_features, out_features: positive ints (else ``checks.positive_int`` raises).
        bias: when False, ``self.bias`` is None.
        fast: a bool (``checks.boolean``), kept as ``self.fast``; when True, ``forward`` may return
            ``torch.nn.functional.linear(x, weight, bias)`` (the same values, one fused call). The
            written-out path (``fast=False``, the default) is the exercise.

    Attributes: ``weight`` an ``nn.Parameter`` of shape ``(out_features, in_features)`` drawn from
    ``torch.randn`` (the global RNG) times ``INIT_STD``; ``bias`` zeros of shape ``(out_features,)``.
    Use tensor operations, not ``torch.nn.Linear`` or ``F.linear`` (the spec uses those as oracles),
    except in the opt-in ``fast`` path.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, fast: bool = False):
        super().__init__()
        raise NotImplementedError(
            "Linear.__init__: validate sizes with checks.positive_int, create weight (out, in) ~ N(0, 0.02^2) "
            "and bias zeros(out) (or None); keep fast (checks.boolean)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(..., in_features)`` float tensor -> ``(..., out_features)``.

        A wrong last dimension raises ValueError naming ``x`` (``checks.tensor(..., last_dim=...)``).
        """
        raise NotImplementedError("Linear.forward: return x @ weight.T (+ bias)")
