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

- ``"interleaved"``: pairs ``(x[2i], x[2i+1])``, as above: the RoFormer paper and Meta's original
  Llama code;
- ``"half"``: pairs ``(x[i], x[i + D/2])`` (the two halves of the head vector): GPT-NeoX and
  Hugging Face transformers' Llama ("rotate_half")::

      y[i]       = x[i] cos(p theta_i) - x[i + D/2] sin(p theta_i)
      y[i + D/2] = x[i] sin(p theta_i) + x[i + D/2] cos(p theta_i)

  The two conventions differ by a fixed permutation of each head's coordinates, so a model trained
  with one converts to the other exactly by permuting the rows of ``Wq`` and ``Wk``.

ALiBi adds ``-m_h * (i - j)`` to the score of query position ``i`` and key position ``j`` of head
``h``. Slopes, for ``n`` heads (``h = 1 .. n``): if ``n`` is a power of two, ``m_h = 2^(-8h/n)``;
otherwise, with ``n'`` the largest power of two below ``n``, the ``n'`` slopes of ``n'`` followed by
the first ``n - n'`` of every other slope of ``2n'`` (``2^(-8h/(2n'))`` for odd ``h`` = 1, 3, 5...).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import checks

POSITIONAL = ("sinusoidal", "learned", "rope", "alibi", "none")
ROPE_PAIRINGS = ("interleaved", "half")  # which coordinates RoPE rotates together (module docstring)
INIT_STD = 0.02  # learned position table ~ N(0, INIT_STD^2)


def check_positions(positions: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """``positions`` must be a 1-D integer tensor of values in ``[0, max_len)`` (ValueError naming max_len)."""
    checks.tensor("positions", positions, min_dim=1, max_dim=1, floating=False)
    if torch.compiler.is_compiling():   # traced by torch.compile: asserts in the graph, no host sync
        torch._assert_async(~(positions < 0).any(), "positions must be >= 0")
        if max_len is not None:
            torch._assert_async(~(positions >= max_len).any(), f"positions must be < max_len={max_len}")
        return positions
    if positions.numel() and bool((positions < 0).any()):
        raise ValueError(f"positions must be >= 0, got min {int(positions.min())}")
    if max_len is not None and positions.numel() and bool((positions >= max_len).any()):
        raise ValueError(f"positions must be < max_len={max_len}, got position {int(positions.max())}"
                         f" (the input is longer than max_len)")
    return positions


# --- sinusoidal ---------------------------------------------------------------------------------

def sinusoidal_table(max_len: int, d_model: int) -> torch.Tensor:
    """``(max_len, d_model)`` float32: ``PE[p, 2i] = sin(p / 10000^(2i/d))``, ``PE[p, 2i+1] = cos(...)``."""
    checks.positive_int("max_len", max_len)
    checks.positive_int("d_model", d_model)
    if d_model % 2:
        raise ValueError(f"d_model must be even for sinusoidal positions, got {d_model}")
    p = torch.arange(max_len, dtype=torch.float64)[:, None]                       # (L, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)                      # (d/2,) = 2i
    angle = p / 10000.0 ** (two_i / d_model)                                      # (L, d/2)
    table = torch.empty(max_len, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle)                                             # even columns: sin
    table[:, 1::2] = torch.cos(angle)                                             # odd columns: cos
    return table.float()


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed (not learned) table ``sinusoidal_table(max_len, d_model)``; ``forward(positions) -> (T, C)``.

    The table is a non-persistent buffer (not in the state dict: it is a function of the shape).
    """

    def __init__(self, d_model: int, max_len: int):
        super().__init__()
        self.d_model = checks.positive_int("d_model", d_model)
        self.max_len = checks.positive_int("max_len", max_len)
        self.register_buffer("table", sinusoidal_table(max_len, d_model), persistent=False)  # (L, C)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        check_positions(positions, self.max_len)
        return self.table[positions]  # (T, C)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, max_len={self.max_len}"


# --- learned ------------------------------------------------------------------------------------

class LearnedPositionalEmbedding(nn.Module):
    """A learned table ``weight`` ``(max_len, d_model)`` ~ N(0, 0.02^2); ``forward(positions) -> (T, C)``."""

    def __init__(self, max_len: int, d_model: int):
        super().__init__()
        self.max_len = checks.positive_int("max_len", max_len)
        self.d_model = checks.positive_int("d_model", d_model)
        self.weight = nn.Parameter(torch.randn(max_len, d_model) * INIT_STD)  # (L, C)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        check_positions(positions, self.max_len)
        return self.weight[positions]  # (T, C)

    def extra_repr(self) -> str:
        return f"max_len={self.max_len}, d_model={self.d_model}"


# --- RoPE ---------------------------------------------------------------------------------------

class RotaryEmbedding(nn.Module):
    """Rotary position embedding; ``forward(x (..., T, D), positions (T,))``.

    No parameters. The angles ``p * base^(-2i/D)`` are computed in float64 for the given positions
    (exact for any dtype of ``x``), then cos/sin are cast to ``x.dtype``. Positions must be < max_len
    (``rotate``: any position >= 0).
    ``pairing`` (``ROPE_PAIRINGS``): ``"interleaved"`` rotates ``(x[2i], x[2i+1])``, ``"half"``
    rotates ``(x[i], x[i + D/2])``.
    """

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0, pairing: str = "interleaved"):
        super().__init__()
        self.head_dim = checks.positive_int("head_dim", head_dim)
        if head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE (it rotates pairs), got {head_dim}")
        self.max_len = checks.positive_int("max_len", max_len)
        self.base = checks.number_in_range("base", base, 1.0, None, low_inclusive=False)
        self.pairing = checks.one_of("pairing", pairing, ROPE_PAIRINGS)

    def angles(self, positions: torch.Tensor) -> torch.Tensor:
        """``(T, D/2)`` float64: ``angles[t, i] = positions[t] * base^(-2i/D)``."""
        two_i = torch.arange(0, self.head_dim, 2, dtype=torch.float64, device=positions.device)  # (D/2,)
        theta = self.base ** (-two_i / self.head_dim)                                         # (D/2,)
        return positions.to(torch.float64)[:, None] * theta                                   # (T, D/2)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.rotate(x, check_positions(positions, self.max_len))

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``forward`` for any positions ``>= 0``, ``max_len`` or beyond: the angles are computed, not
        looked up, so a rolling KV cache can keep decoding past the context length."""
        checks.tensor("x", x, min_dim=2, last_dim=self.head_dim, floating=True)
        check_positions(positions)
        if positions.shape[0] != x.shape[-2]:
            raise ValueError(f"positions must have shape (T,) = ({x.shape[-2]},) for x of shape "
                             f"{tuple(x.shape)}, got {tuple(positions.shape)}")
        angle = self.angles(positions)                  # (T, D/2)
        cos = torch.cos(angle).to(x.dtype)              # (T, D/2)
        sin = torch.sin(angle).to(x.dtype)              # (T, D/2)
        if self.pairing == "half":
            x1 = x[..., : self.head_dim // 2]           # (..., T, D/2) first half x[i]
            x2 = x[..., self.head_dim // 2:]            # (..., T, D/2) second half x[i + D/2]
        else:
            x1 = x[..., 0::2]                           # (..., T, D/2) even elements x[2i]
            x2 = x[..., 1::2]                           # (..., T, D/2) odd elements x[2i+1]
        y1 = x1 * cos - x2 * sin                        # (..., T, D/2)
        y2 = x1 * sin + x2 * cos                        # (..., T, D/2)
        if self.pairing == "half":
            return torch.cat((y1, y2), dim=-1)          # (..., T, D) halves side by side
        return torch.stack((y1, y2), dim=-1).flatten(-2)  # (..., T, D) pairs interleaved back

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, max_len={self.max_len}, base={self.base}, pairing={self.pairing!r}"


# --- ALiBi --------------------------------------------------------------------------------------

def alibi_slopes(n_heads: int) -> torch.Tensor:
    """``(n_heads,)`` float32 slopes ``m_h`` (see the module docstring; the paper's reference code)."""
    checks.positive_int("n_heads", n_heads)

    def power_of_two_slopes(n: int) -> list[float]:
        return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]  # m_h = 2^(-8h/n), h = 1..n

    closest = 2 ** int(math.floor(math.log2(n_heads)))  # n': largest power of two <= n_heads
    slopes = power_of_two_slopes(closest)
    if closest < n_heads:
        slopes += power_of_two_slopes(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(n_heads: int, q_positions: torch.Tensor, k_positions: torch.Tensor) -> torch.Tensor:
    """``(H, Tq, Tk)`` float32: ``bias[h, i, j] = -m_h * (q_positions[i] - k_positions[j])``.

    A key after the query (``j > i``) gets a positive bias; the causal mask removes those anyway.
    """
    checks.tensor("q_positions", q_positions, min_dim=1, max_dim=1, floating=False)
    checks.tensor("k_positions", k_positions, min_dim=1, max_dim=1, floating=False)
    slopes = alibi_slopes(n_heads).to(q_positions.device)                   # (H,)
    distance = (q_positions[:, None] - k_positions[None, :]).float()        # (Tq, Tk) = i - j
    return -slopes[:, None, None] * distance                                # (H, Tq, Tk)
