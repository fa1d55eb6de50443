"""Position information: sinusoidal and learned absolute positions, RoPE and ALiBi.

One config field, ``positional``, picks the scheme (``POSITIONAL``):

- ``"sinusoidal"`` (Vaswani et al., 2017) and ``"learned"`` (GPT-2) give a ``(T, d_model)`` table
  the model ADDS to the token embeddings;
- ``"rope"`` (Su et al., RoFormer, 2021) and ``"alibi"`` (Press et al., 2022) act INSIDE attention
  (see ``attention.MultiHeadAttention``): RoPE rotates queries and keys, ALiBi biases the scores;
- ``"none"``: no position information at all (causal attention still breaks the symmetry).

Sinusoidal, for position ``p`` and ``i = 0 .. d/2 - 1`` (``d`` must be even)::

    PE[p, 2i]   = sin(p / 10000^(2i/d))
    PE[p, 2i+1] = cos(p / 10000^(2i/d))

RoPE rotates each interleaved pair ``(x[2i], x[2i+1])`` of a head vector at position ``p`` by the
angle ``p * theta_i`` with ``theta_i = base^(-2i/D)`` (``D`` = head_dim, even)::

    y[2i]   = x[2i] cos(p theta_i) - x[2i+1] sin(p theta_i)
    y[2i+1] = x[2i] sin(p theta_i) + x[2i+1] cos(p theta_i)

so ``<R(p) q, R(s) k>`` depends on ``p - s`` only. As complex numbers: ``z_i = x[2i] + j x[2i+1]``,
``z_i -> z_i * exp(j p theta_i)``.

Which coordinates form a pair is a convention (``ROPE_PAIRINGS``), with the same angles ``theta_i``:
``"interleaved"`` (the default): pairs ``(x[2i], x[2i+1])`` as above (the RoFormer paper, Meta's
Llama code); ``"half"``: pairs ``(x[i], x[i + D/2])`` (GPT-NeoX, Hugging Face transformers' Llama,
"rotate_half")::

    y[i]       = x[i] cos(p theta_i) - x[i + D/2] sin(p theta_i)
    y[i + D/2] = x[i] sin(p theta_i) + x[i + D/2] cos(p theta_i)

ALiBi adds ``-m_h * (i - j)`` to the score of query position ``i`` and key position ``j`` of head
``h``. Slopes, for ``n`` heads (``h = 1 .. n``): if ``n`` is a power of two, ``m_h = 2^(-8h/n)``;
otherwise, with ``n'`` the largest power of two below ``n``, the ``n'`` slopes of ``n'`` followed by
the first ``n - n'`` of every other slope of ``2n'`` (``2^(-8h/(2n'))`` for odd ``h`` = 1, 3, 5...).
Example: ``n = 6`` gives ``1/4, 1/16, 1/64, 1/256, 1/2, 1/8``.

Spec: ``pytest --impl kata spec_tests/test_positional.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from . import checks

POSITIONAL = ("sinusoidal", "learned", "rope", "alibi", "none")
ROPE_PAIRINGS = ("interleaved", "half")  # which coordinates RoPE rotates together (module docstring)
INIT_STD = 0.02  # learned position table ~ N(0, INIT_STD^2)


def check_positions(positions: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """``positions`` must be a 1-D integer tensor (``checks.tensor("positions", positions, min_dim=1,
    max_dim=1, floating=False)``) of values ``>= 0`` and, when ``max_len`` is given, ``< max_len``
    (ValueError whose message names ``positions`` / ``max_len``). Returns ``positions``."""
    raise NotImplementedError("check_positions: 1-D integer tensor, values in [0, max_len), clear errors")


def sinusoidal_table(max_len: int, d_model: int) -> torch.Tensor:
    """``(max_len, d_model)`` float32: ``PE[p, 2i] = sin(p / 10000^(2i/d))``, ``PE[p, 2i+1] = cos(...)``.

    Compute in float64, return float32. Errors: sizes not positive ints; odd ``d_model`` (ValueError
    naming ``d_model``).
    """
    raise NotImplementedError("sinusoidal_table: angles p / 10000^(2i/d); sin in even columns, cos in odd ones")


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed (not learned) table ``sinusoidal_table(max_len, d_model)``; ``forward(positions) -> (T, C)``.

    Keep the table as a non-persistent buffer ``table``:
    ``self.register_buffer("table", ..., persistent=False)`` (it follows ``.to()``, it is not saved).
    No parameters. Positions are checked with ``check_positions(positions, max_len)``.
    """

    def __init__(self, d_model: int, max_len: int):
        super().__init__()
        raise NotImplementedError("SinusoidalPositionalEncoding.__init__: check sizes, register the table buffer")

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """``positions (T,)`` long -> ``(T, d_model)``: ``table[positions]``."""
        raise NotImplementedError("SinusoidalPositionalEncoding.forward: check positions, look up the table")


class LearnedPositionalEmbedding(nn.Module):
    """A learned table ``weight`` ``(max_len, d_model)`` ~ N(0, 0.02^2); ``forward(positions) -> (T, C)``.

    A position ``>= max_len`` (an input longer than max_len) is a ValueError naming ``max_len``.
    """

    def __init__(self, max_len: int, d_model: int):
        super().__init__()
        raise NotImplementedError("LearnedPositionalEmbedding.__init__: weight = Parameter(randn(L, C) * INIT_STD)")

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """``positions (T,)`` long -> ``(T, d_model)``: ``weight[positions]``."""
        raise NotImplementedError("LearnedPositionalEmbedding.forward: check positions < max_len, look up")


class RotaryEmbedding(nn.Module):
    """Rotary position embedding; ``forward(x (..., T, D), positions (T,))``; ``pairing`` in
    ``ROPE_PAIRINGS`` (``"interleaved"``: ``(x[2i], x[2i+1])``; ``"half"``: ``(x[i], x[i + D/2])``).

    No parameters. Compute the angles ``p * base^(-2i/D)`` in float64 for the given positions, then
    cast cos/sin to ``x.dtype``. Output: ``x``'s shape and dtype.

    Errors: ``head_dim`` not a positive int or odd (ValueError naming ``head_dim``); ``max_len`` not
    a positive int; ``base <= 1``; ``pairing`` not in ``ROPE_PAIRINGS`` (``checks.one_of("pairing", ...)``); in forward ``checks.tensor("x", x, min_dim=2, last_dim=head_dim,
    floating=True)``, ``check_positions(positions, max_len)``, and ``positions`` of a length other
    than ``x.shape[-2]`` (ValueError naming ``positions``).
    """

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0, pairing: str = "interleaved"):
        super().__init__()
        raise NotImplementedError("RotaryEmbedding.__init__: check head_dim (even), max_len, base > 1, pairing")

    def angles(self, positions: torch.Tensor) -> torch.Tensor:
        """``(T, D/2)`` float64: ``angles[t, i] = positions[t] * base^(-2i/D)``."""
        raise NotImplementedError("RotaryEmbedding.angles: outer product of positions and base^(-2i/D), in float64")

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate each pair (``(x[..., 2i], x[..., 2i+1])``; ``"half"``: ``(x[..., i], x[..., i + D/2])``)
        by ``angles(positions)[t, i]`` at each row ``t``."""
        raise NotImplementedError("RotaryEmbedding.forward: split even/odd elements, rotate, interleave back")

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``forward`` for any positions ``>= 0`` (``check_positions(positions)``, no ``max_len``
        bound): a rolling KV cache decodes past the context length."""
        raise NotImplementedError("RotaryEmbedding.rotate: forward's rotation without the max_len check")


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """``(n_heads,)`` float32 slopes ``m_h`` (see the module docstring: the paper's reference code).

    ``checks.positive_int("n_heads", n_heads)``.
    """
    raise NotImplementedError("alibi_slopes: 2^(-8h/n) for a power of two n; otherwise n' slopes + every other of 2n'")


def alibi_bias(n_heads: int, q_positions: torch.Tensor, k_positions: torch.Tensor) -> torch.Tensor:
    """``(H, Tq, Tk)`` float32: ``bias[h, i, j] = -m_h * (q_positions[i] - k_positions[j])``.

    Both position tensors are 1-D integer tensors (``checks.tensor(..., min_dim=1, max_dim=1,
    floating=False)`` naming ``q_positions`` / ``k_positions``).
    """
    raise NotImplementedError("alibi_bias: -slope[h] * (query position - key position)")
