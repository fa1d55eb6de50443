"""The token embedding: a learned table that maps each token id to a ``d_model`` vector.

``ids (...) long -> (..., d_model)``::

    E      : (vocab_size, d_model)     weights ~ N(0, 0.02^2)  (GPT-2's initialisation)
    out    = E[ids]                    a row lookup, one row per id

An id outside ``[0, vocab_size)`` is an error (``ValueError`` naming the id and the range): a
negative index would silently wrap around to the end of the table. Write the lookup with tensor
indexing: ``torch.nn.functional.embedding`` is the spec's oracle.

Spec: ``pytest --impl kata spec_tests/test_embedding.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from . import checks

INIT_STD = 0.02  # weights ~ N(0, INIT_STD^2)


class TokenEmbedding(nn.Module):
    """``weight`` ``(vocab_size, d_model)`` ~ N(0, 0.02^2); ``forward(ids)`` returns ``weight[ids]``.

    Args:
        vocab_size: number of rows V (positive int).
        d_model: width C of each row (positive int).

    Errors: ``checks.positive_int`` for both sizes; in forward, ``checks.tensor("ids", ids,
    floating=False)`` (TypeError for float / bool ids), then a ValueError naming the first bad id and
    the range when any id is ``< 0`` or ``>= vocab_size``, e.g.
    ``"ids: token id 7 is outside the vocabulary [0, vocab_size=5)"``.
    """

    def __init__(self, vocab_size: int, d_model: int):
        super().__init__()
        raise NotImplementedError(
            "TokenEmbedding.__init__: check the sizes; weight = Parameter(randn(V, C) * INIT_STD)")

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids (...)`` integer -> ``(..., d_model)``: range-check the ids, then ``weight[ids]``."""
        raise NotImplementedError("TokenEmbedding.forward: check ids are integers in [0, V), then index the table")
