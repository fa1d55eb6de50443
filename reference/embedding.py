"""The token embedding: a learned table that maps each token id to a ``d_model`` vector.

``ids (...) long -> (..., d_model)``::

    E      : (vocab_size, d_model)     weights ~ N(0, 0.02^2)  (GPT-2's initialisation)
    out    = E[ids]                    a row lookup, one row per id

An id outside ``[0, vocab_size)`` is an error (``ValueError`` naming the id and the range): a
negative index would silently wrap around to the end of the table.
"""

from __future__ import annotations

import torch
from torch import nn

from . import checks

INIT_STD = 0.02  # weights ~ N(0, INIT_STD^2)


class TokenEmbedding(nn.Module):
    """``weight`` ``(vocab_size, d_model)`` ~ N(0, 0.02^2); ``forward(ids)`` returns ``weight[ids]``."""

    def __init__(self, vocab_size: int, d_model: int):
        super().__init__()
        self.vocab_size = checks.positive_int("vocab_size", vocab_size)
        self.d_model = checks.positive_int("d_model", d_model)
        self.weight = nn.Parameter(torch.randn(vocab_size, d_model) * INIT_STD)  # (V, C)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        checks.tensor("ids", ids, floating=False)
        outside = (ids < 0) | (ids >= self.vocab_size)          # (...) bool
        if torch.compiler.is_compiling():   # traced by torch.compile: an assert in the graph, no host sync
            torch._assert_async(~outside.any(), f"ids: a token id is outside the vocabulary [0, vocab_size={self.vocab_size})")
        elif bool(outside.any()):
            bad = int(ids[outside][0])
            raise ValueError(f"ids: token id {bad} is outside the vocabulary [0, vocab_size={self.vocab_size})")
        return self.weight[ids]                                 # (..., C)

    def extra_repr(self) -> str:
        return f"{self.vocab_size}, {self.d_model}"
