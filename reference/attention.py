"""Causal self-attention (Vaswani et al., 2017) and its variants, with a KV cache.

Scaled dot-product attention, for queries ``q (..., Tq, D)``, keys ``k (..., Tk, D)``, values
``v (..., Tk, Dv)``::

    scores  = q k^T / sqrt(D)                    (..., Tq, Tk)
    scores  = scores + bias                      optional additive bias (ALiBi)
    scores  = -inf where mask is False           mask: True = may attend
    weights = softmax(scores) over the keys      a row with every key masked gives zeros (not NaN)
    weights = dropout(weights)                   training only (inverted dropout)
    out     = weights v                          (..., Tq, Dv)

Multi-head attention on ``x (B, T, C)`` with ``H`` heads of size ``D`` (``head_dim``, default ``C / H``)::

    q = split(x Wq^T)  (B, H, T, D)      k, v = split(x Wk^T), split(x Wv^T)  (B, H_kv, T, D)
    q, k = RoPE(q, positions), RoPE(k, positions)          only when positional == "rope"
    k, v = cache.update(k, v)                              with a KVCache: (B, H_kv, L, D)
    k, v = expand_kv(k, v)                                 (B, H, L, D)     hook
    mask = attention_mask(T, L) & key padding              (B, 1, T, L)     hook
    bias = -m_h (i - j)                                    (H, T, L)        only when positional == "alibi"
    out  = attend(q, k, v, mask, bias)                     (B, H, T, D)     hook
    y    = merge(out) Wo^T                                 (B, T, C)        out_proj: H * D -> C

The base class ``MultiHeadAttention`` is plain causal multi-head attention; a variant subclasses it
and overrides ONE hook: ``GroupedQueryAttention`` overrides ``expand_kv`` (H_kv < H kv heads, each
shared by H / H_kv query heads), ``SlidingWindowAttention`` overrides ``attention_mask`` (query ``i``
sees keys ``i - w < j <= i``). ``attend`` is the hook for changing the attention itself.

With a window, ``RollingKVCache`` keeps only the last ``w`` positions (a ring buffer): the memory is
proportional to the window, not the context, and the positions may go on past ``max_len``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import checks
from .linear import Linear
from .positional import POSITIONAL, ROPE_PAIRINGS, RotaryEmbedding, alibi_bias, check_positions


def causal_mask(t_q: int, t_k: int | None = None, device=None) -> torch.Tensor:
    """``(t_q, t_k)`` bool, True = may attend. The queries are the LAST ``t_q`` of ``t_k`` positions
    (with a KV cache, the new tokens come after the cached ones): ``allowed[i, j] = j <= i + (t_k - t_q)``."""
    checks.positive_int("t_q", t_q)
    t_k = t_q if t_k is None else checks.positive_int("t_k", t_k)
    if t_k < t_q:
        raise ValueError(f"t_k must be >= t_q (the queries are the last t_q keys), got t_q={t_q}, t_k={t_k}")
    # allowed[i, j] = j <= i + (t_k - t_q): the lower triangle, shifted right by t_k - t_q
    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril(t_k - t_q)   # (t_q, t_k)


def softmax(scores: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax along ``dim``, written out and stable; a slice that is all ``-inf`` gives zeros."""
    m = scores.amax(dim=dim, keepdim=True)                     # the row maximum
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # all -inf row: avoid -inf - -inf = NaN
    e = torch.exp(scores - m)                                  # masked entries: exp(-inf) = 0 exactly
    total = e.sum(dim=dim, keepdim=True)
    return e / torch.where(total > 0, total, torch.ones_like(total))


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout: zero each element with probability ``p``, scale the rest by ``1 / (1 - p)``."""
    if p == 0.0:
        return x
    keep = torch.rand_like(x) >= p
    return x * keep / (1.0 - p)


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                                 dropout_p: float = 0.0, return_weights: bool = False):
    """``softmax(q k^T / sqrt(D) + bias, masked) v``; returns ``out`` or ``(out, weights)``.

    ``weights`` are the ones applied to ``v`` (after dropout). ``dropout_p`` applies whenever > 0
    (as in ``torch.nn.functional.scaled_dot_product_attention``): the caller passes 0 in eval mode.
    """
    checks.tensor("q", q, min_dim=2, floating=True)
    checks.tensor("k", k, min_dim=2, last_dim=q.shape[-1], floating=True)
    checks.tensor("v", v, min_dim=2, floating=True)
    if v.shape[-2] != k.shape[-2]:
        raise ValueError(f"v must have as many positions as k ({k.shape[-2]}), got shape {tuple(v.shape)}")
    if mask is not None:
        checks.tensor("mask", mask)
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor (True = may attend), got {mask.dtype}")
    if bias is not None:
        checks.tensor("bias", bias, floating=True)
    checks.number_in_range("dropout_p", dropout_p, 0.0, 1.0, high_inclusive=False)

    d = q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)          # (..., Tq, Tk)
    if bias is not None:
        scores = scores + bias
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))     # masked keys: weight exactly 0
    weights = softmax(scores, dim=-1)                         # (..., Tq, Tk) rows sum to 1 (or are 0)
    weights = dropout(weights, dropout_p)
    out = weights @ v                                         # (..., Tq, Dv)
    return (out, weights) if return_weights else out


class KVCache:
    """Keys and values of the tokens seen so far, for incremental decoding (one cache per layer).

    ``k``, ``v``: buffers ``(B, H_kv, max_len, D)``; ``length``: how many positions are stored;
    ``update(k, v, padding_mask)`` appends ``T_new`` positions and returns everything stored so far.
    The cache also remembers which stored tokens are real (``padding_mask``) so padded prompts can
    be decoded: ``padding_mask`` is ``(B, length)`` bool, or None while every stored token is real.
    """

    def __init__(self, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device=None):
        self.batch_size = checks.positive_int("batch_size", batch_size)
        self.n_kv_heads = checks.positive_int("n_kv_heads", n_kv_heads)
        self.max_len = checks.positive_int("max_len", max_len)
        self.head_dim = checks.positive_int("head_dim", head_dim)
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)              # (B, H_kv, max_len, D)
        self.v = torch.zeros(shape, dtype=dtype, device=device)              # (B, H_kv, max_len, D)
        self.real = torch.ones(batch_size, max_len, dtype=torch.bool, device=device)  # (B, max_len)
        self.length = 0
        self.padded = False  # has any padding token been stored?

    def _check_new(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """``k, v`` must be ``(B, H_kv, T_new, D)`` tensors of the cache's shape and dtype."""
        expected = (self.batch_size, self.n_kv_heads, k.shape[-2] if k.dim() == 4 else 0, self.head_dim)
        for name, t in (("k", k), ("v", v)):
            checks.tensor(name, t, min_dim=4, max_dim=4, floating=True)
            if tuple(t.shape) != expected:
                raise ValueError(f"{name} must have shape (B, H_kv, T_new, D) = {expected}, got {tuple(t.shape)}")
            if t.dtype != self.k.dtype:
                raise TypeError(f"{name} must have the cache's dtype {self.k.dtype}, got {t.dtype}")

    def update(self, k: torch.Tensor, v: torch.Tensor, padding_mask: torch.Tensor | None = None):
        """Append ``k, v (B, H_kv, T_new, D)`` (and their ``padding_mask (B, T_new)``, True = real);
        return ``(k_all, v_all)``, each ``(B, H_kv, length, D)``. Overflow -> ValueError naming max_len."""
        self._check_new(k, v)
        t_new = k.shape[-2]
        if self.length + t_new > self.max_len:
            raise ValueError(f"KVCache overflow: {self.length} stored + {t_new} new positions > "
                             f"max_len={self.max_len}")
        start, end = self.length, self.length + t_new
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        if padding_mask is not None:
            self.real[:, start:end] = padding_mask
            self.padded = self.padded or not bool(padding_mask.all())
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]  # (B, H_kv, length, D)

    @property
    def padding_mask(self) -> torch.Tensor | None:
        """``(B, length)`` bool, True = real token; None when every stored token is real."""
        return self.real[:, : self.length] if self.padded else None

    def reset(self) -> None:
        """Forget everything stored (the buffers are reused)."""
        self.length = 0
        self.padded = False
        self.real.fill_(True)

    def __repr__(self) -> str:
        return (f"KVCache(batch_size={self.batch_size}, n_kv_heads={self.n_kv_heads}, max_len={self.max_len}, "
                f"head_dim={self.head_dim}, length={self.length})")


class RollingKVCache(KVCache):
    """The rolling buffer cache of sliding-window attention (Mistral; Jiang et al., 2023): a query at
    position ``p`` sees only the keys ``p - w < j <= p``, so a ring of ``capacity = min(window, max_len)``
    slots suffices; position ``p`` is written IN PLACE into slot ``p mod capacity`` (the buffers are
    allocated once), overwriting position ``p - capacity``, which no later query can see.

    ``length``: positions seen so far (the next position, as for ``KVCache``); ``stored``: how many
    are held, ``min(length, capacity)``; ``slot_positions (capacity,)``: the absolute position in
    each slot (-1: empty). Keys are stored as given (after RoPE, at their absolute positions).

    ``update(k, v, padding_mask)`` returns the keys the new queries attend to, in SLOT order (not
    chronological: softmax does not care about the order of the keys, only the mask and the ALiBi
    bias must follow them, and they do: ``key_positions``), and ``key_positions``, ``padding_mask``
    and ``first_position`` describe them:

    - one new token, or a chunk that fits in the free slots: it is written first, and the buffers'
      first ``stored`` slots are returned (views: no copy). Written at ``p``, slot ``p mod capacity``
      held ``p - capacity <= p - w``, outside the window of ``p``;
    - a chunk of ``T_new > 1`` tokens that would overwrite slots: its first queries still need the
      oldest stored keys, so it returns ``stored + T_new`` keys, the stored ones then the chunk (a
      temporary, like the chunk's activations), and then keeps the chunk's last ``capacity``.

    So the cache holds ``capacity`` positions whatever the number of tokens (``k.numel() =
    B * H_kv * capacity * D``), and one step attends to at most ``capacity`` keys. ``max_len``
    (None: unbounded) bounds ``length``: positions may go past the layer's ``max_len`` (rope, alibi and
    none depend on relative positions only).
    """

    def __init__(self, batch_size: int, n_kv_heads: int, window: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device=None, max_len: int | None = None):
        self.batch_size = checks.positive_int("batch_size", batch_size)
        self.n_kv_heads = checks.positive_int("n_kv_heads", n_kv_heads)
        self.window = checks.positive_int("window", window)
        self.head_dim = checks.positive_int("head_dim", head_dim)
        self.max_len = None if max_len is None else checks.positive_int("max_len", max_len)
        self.capacity = window if max_len is None else min(window, max_len)
        shape = (batch_size, n_kv_heads, self.capacity, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)              # (B, H_kv, capacity, D)
        self.v = torch.zeros(shape, dtype=dtype, device=device)              # (B, H_kv, capacity, D)
        self.real = torch.ones(batch_size, self.capacity, dtype=torch.bool, device=device)   # (B, capacity)
        self.slot_positions = torch.full((self.capacity,), -1, dtype=torch.long, device=device)  # (capacity,)
        self.reset()

    @property
    def stored(self) -> int:
        """How many positions the buffers hold: ``min(length, capacity)``."""
        return min(self.length, self.capacity)

    def update(self, k: torch.Tensor, v: torch.Tensor, padding_mask: torch.Tensor | None = None):
        """Store ``k, v (B, H_kv, T_new, D)`` at positions ``length ..``; return the keys and values
        the new queries attend to, ``(B, H_kv, L, D)`` each, in slot order (see the class doc).
        Past ``max_len`` -> ValueError naming max_len (the cache is left unchanged)."""
        self._check_new(k, v)
        t_new = k.shape[-2]
        if self.max_len is not None and t_new > self.max_len - self.length:
            raise ValueError(f"RollingKVCache overflow: {self.length} seen + {t_new} new positions > "
                             f"max_len={self.max_len}")
        if padding_mask is not None:
            if padding_mask.dtype != torch.bool or tuple(padding_mask.shape) != (self.batch_size, t_new):
                raise ValueError(f"padding_mask must be a (B, T_new) = {(self.batch_size, t_new)} bool tensor, "
                                 f"got {tuple(padding_mask.shape)} {padding_mask.dtype}")
            self.padded = bool(self.padded or not padding_mask.all())
        start, end, n_old = self.length, self.length + t_new, self.stored
        positions = torch.arange(start, end, device=self.k.device)            # (T_new,)
        if t_new == 1 or n_old + t_new <= self.capacity:
            self._write(k, v, padding_mask, positions, start)                   # nothing visible overwritten
            n = min(end, self.capacity)
            k_all, v_all = self.k[:, :, :n], self.v[:, :, :n]                  # (B, H_kv, n, D) views
            self.key_positions, self._key_real = self.slot_positions[:n], self.real[:, :n]
            self.first_position = end - n
        else:
            real = (torch.ones(self.batch_size, t_new, dtype=torch.bool, device=self.k.device)
                    if padding_mask is None else padding_mask)                 # (B, T_new)
            k_all = torch.cat([self.k[:, :, :n_old], k], dim=2)               # (B, H_kv, n_old + T_new, D)
            v_all = torch.cat([self.v[:, :, :n_old], v], dim=2)
            self.key_positions = torch.cat([self.slot_positions[:n_old], positions])   # (n_old + T_new,)
            self._key_real = torch.cat([self.real[:, :n_old], real], dim=1)            # (B, n_old + T_new)
            self.first_position = start - n_old
            keep = slice(max(0, t_new - self.capacity), t_new)                 # the chunk's last `capacity`
            self._write(k[:, :, keep], v[:, :, keep], real[:, keep], positions[keep], start + keep.start)
        self.length = end
        return k_all, v_all

    def _write(self, k, v, padding_mask, positions, start: int) -> None:
        """Write ``k, v (B, H_kv, n, D)`` of the positions ``start .. start + n - 1`` (``n <= capacity``)
        in place, position ``p`` into slot ``p mod capacity``: two slices at most (the ring wraps once)."""
        n = k.shape[2]
        first = start % self.capacity                                       # the slot of position `start`
        head = min(n, self.capacity - first)                                # slots first .. then 0 ..
        for slots, part in ((slice(first, first + head), slice(0, head)), (slice(0, n - head), slice(head, n))):
            if part.start == part.stop:
                continue
            self.k[:, :, slots] = k[:, :, part]
            self.v[:, :, slots] = v[:, :, part]
            if padding_mask is not None:
                self.real[:, slots] = padding_mask[:, part]
            elif self.padded:                                               # clear stale padding flags
                self.real[:, slots] = True
            self.slot_positions[slots] = positions[part]

    @property
    def padding_mask(self) -> torch.Tensor | None:
        """``(B, L)`` bool for the keys the last ``update`` returned, True = real; None when every
        stored token is real."""
        return self._key_real if self.padded else None

    def reset(self) -> None:
        """Forget everything stored (the buffers are reused)."""
        self.length, self.padded = 0, False
        self.real.fill_(True)
        self.slot_positions.fill_(-1)
        self.key_positions = self.slot_positions[:0]       # (0,) positions of the keys last returned
        self._key_real = self.real[:, :0]
        self.first_position = 0                            # the oldest of them

    def __repr__(self) -> str:
        return (f"RollingKVCache(batch_size={self.batch_size}, n_kv_heads={self.n_kv_heads}, window={self.window}, "
                f"head_dim={self.head_dim}, capacity={self.capacity}, length={self.length})")


class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention, the base class of every variant.

    Args:
        d_model: model width C (a multiple of ``n_heads`` unless ``head_dim`` is given).
        n_heads: number of query heads H.
        n_kv_heads: number of key/value heads (None: H). Only a subclass that overrides
            ``expand_kv`` (``GroupedQueryAttention``) accepts fewer than H.
        dropout: dropout on the attention weights, in training mode only.
        bias: whether the four projections have biases.
        positional: one of ``POSITIONAL``; ``"rope"`` and ``"alibi"`` act here, the others are no-ops.
        max_len: the longest sequence (positions must be < max_len).
        window: sliding window w (None: unlimited). Only a subclass that overrides
            ``attention_mask`` (``SlidingWindowAttention``) accepts one.
        fast: use ``torch.nn.functional.scaled_dot_product_attention`` where its semantics are
            identical (no weights requested, no dropout active, no fully masked query row).
        head_dim: the size D of each head (None: ``d_model // n_heads``); ``Wq`` is ``C -> H * D``,
            ``Wk``, ``Wv`` are ``C -> H_kv * D``, ``Wo`` is ``H * D -> C``.
        rope_base: RoPE's base (``theta_i = rope_base^(-2i/D)``); used when positional == "rope".
        rope_pairing: one of ``ROPE_PAIRINGS``: which coordinates RoPE rotates together.

    Hooks (override ONE in a subclass): ``expand_kv``, ``attention_mask``, ``attend``.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, dropout: float = 0.0,
                 bias: bool = True, positional: str = "none", max_len: int = 2048, window: int | None = None,
                 fast: bool = False, head_dim: int | None = None, rope_base: float = 10000.0,
                 rope_pairing: str = "interleaved"):
        super().__init__()
        self.d_model = checks.positive_int("d_model", d_model)
        self.n_heads = checks.positive_int("n_heads", n_heads)
        if head_dim is None and d_model % n_heads:
            raise ValueError(f"d_model must be divisible by n_heads, got d_model={d_model}, n_heads={n_heads}")
        self.head_dim = d_model // n_heads if head_dim is None else checks.positive_int("head_dim", head_dim)
        self.n_kv_heads = n_heads if n_kv_heads is None else checks.positive_int("n_kv_heads", n_kv_heads)
        if n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads must be divisible by n_kv_heads, got n_heads={n_heads}, "
                             f"n_kv_heads={self.n_kv_heads}")
        self.window = None if window is None else checks.positive_int("window", window)
        # The plain class has neither shared kv heads nor a window: those need the variants' hooks.
        if self.n_kv_heads != n_heads and type(self).expand_kv is MultiHeadAttention.expand_kv:
            raise ValueError(f"n_kv_heads={n_kv_heads} < n_heads={n_heads} needs GroupedQueryAttention")
        if self.window is not None and type(self).attention_mask is MultiHeadAttention.attention_mask:
            raise ValueError(f"window={window} needs SlidingWindowAttention")
        self.dropout = checks.number_in_range("dropout", dropout, 0.0, 1.0, high_inclusive=False)
        self.positional = checks.one_of("positional", positional, POSITIONAL)
        self.max_len = checks.positive_int("max_len", max_len)
        self.fast = checks.boolean("fast", fast)
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        self.q_proj = Linear(d_model, q_dim, bias=bias)     # C -> H * D
        self.k_proj = Linear(d_model, kv_dim, bias=bias)    # C -> H_kv * D
        self.v_proj = Linear(d_model, kv_dim, bias=bias)    # C -> H_kv * D
        self.out_proj = Linear(q_dim, d_model, bias=bias)   # H * D -> C
        checks.one_of("rope_pairing", rope_pairing, ROPE_PAIRINGS)
        self.rope = (RotaryEmbedding(self.head_dim, max_len, base=rope_base, pairing=rope_pairing)
                     if positional == "rope" else None)

    # --- hooks --------------------------------------------------------------------------------

    def expand_kv(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hook: ``k, v (B, H_kv, L, D) -> (B, H, L, D)``, the keys and values of each query head."""
        return k, v

    def attention_mask(self, t_q: int, t_k: int, device=None) -> torch.Tensor:
        """Hook: ``(t_q, t_k)`` bool, True = may attend; the queries are the last ``t_q`` of ``t_k`` positions."""
        return causal_mask(t_q, t_k, device=device)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
               bias: torch.Tensor | None, need_weights: bool = False):
        """Hook: ``q (B, H, T, D)``, ``k, v (B, H, L, D)``, ``mask`` bool broadcastable to ``(B, H, T, L)``,
        ``bias`` ``(H, T, L)`` or None -> ``(out (B, H, T, D), weights (B, H, T, L) or None)``."""
        dropout_p = self.dropout if self.training else 0.0
        if self.fast and not need_weights and dropout_p == 0.0:
            # Same maths, fused. A fully masked row (some torch versions and backends give NaN there)
            # attends to every key instead, then gets zeros, as written out: no host sync needed.
            has_key = mask.any(dim=-1, keepdim=True)                          # (..., T, 1)
            mask = mask | ~has_key
            attn_mask = mask if bias is None else bias.masked_fill(~mask, float("-inf"))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
            return torch.where(has_key, out, 0.0), None
        return scaled_dot_product_attention(q, k, v, mask, bias, dropout_p, return_weights=True)

    # --- the pipeline -------------------------------------------------------------------------

    def split_heads(self, x: torch.Tensor, n_heads: int) -> torch.Tensor:
        """``(B, T, n_heads * D) -> (B, n_heads, T, D)``."""
        b, t, _ = x.shape
        return x.view(b, t, n_heads, self.head_dim).transpose(1, 2)

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, T, D) -> (B, T, H * D)``, heads concatenated in order."""
        b, _, t, _ = x.shape
        return x.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None,
                padding_mask: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                return_weights: bool = False):
        """``x (B, T, C) -> (B, T, C)`` (and the weights ``(B, H, T, L)`` when ``return_weights``).

        ``positions (T,)`` long (default ``arange(start, start + T)``, start = cached length);
        with a KV cache they must continue from ``kv_cache.length``. ``padding_mask (B, T)`` bool,
        True = real token: padded keys are never attended.
        """
        checks.tensor("x", x, min_dim=3, max_dim=3, last_dim=self.d_model, floating=True)
        b, t, _ = x.shape
        start = 0
        if kv_cache is not None:
            if not isinstance(kv_cache, KVCache):
                raise TypeError(f"kv_cache must be a KVCache or None, got {type(kv_cache).__name__}")
            start = kv_cache.length
        rolling = isinstance(kv_cache, RollingKVCache)   # positions may then go past max_len
        if rolling and kv_cache.window != self.window:
            raise ValueError(f"kv_cache is a RollingKVCache of window={kv_cache.window}, but this layer's "
                             f"window is {self.window}: they must be equal")
        if positions is None:
            if self.rope is not None or self.positional == "alibi":   # only they use the positions
                positions = torch.arange(start, start + t, device=x.device)   # (T,)
        else:
            check_positions(positions, None if rolling else self.max_len)
            if positions.shape != (t,):
                raise ValueError(f"positions must have shape (T,) = ({t},), got {tuple(positions.shape)}")
            expected_positions = torch.arange(start, start + t, device=x.device)   # (T,)
            if kv_cache is not None and not torch.equal(positions, expected_positions):
                raise ValueError(f"positions must continue from kv_cache.length={start}: expected "
                                 f"arange({start}, {start + t})")
        if start + t > self.max_len and not rolling:
            raise ValueError(f"{start + t} positions are more than max_len={self.max_len}")
        if padding_mask is not None:
            checks.tensor("padding_mask", padding_mask)
            if padding_mask.dtype != torch.bool:
                raise TypeError(f"padding_mask must be a bool tensor (True = real token), got {padding_mask.dtype}")
            if padding_mask.shape != (b, t):
                raise ValueError(f"padding_mask must have shape (B, T) = {(b, t)}, got {tuple(padding_mask.shape)}")

        q = self.split_heads(self.q_proj(x), self.n_heads)     # (B, H, T, D)
        k = self.split_heads(self.k_proj(x), self.n_kv_heads)  # (B, H_kv, T, D)
        v = self.split_heads(self.v_proj(x), self.n_kv_heads)  # (B, H_kv, T, D)
        if self.rope is not None:
            rope = self.rope.rotate if rolling else self.rope  # rotate: no max_len bound
            q = rope(q, positions)                              # rotated at their absolute positions
            k = rope(k, positions)
        key_padding = padding_mask                              # (B, L) | None
        k_positions = positions                                 # (L,)
        if kv_cache is not None:
            k, v = kv_cache.update(k, v, padding_mask)          # (B, H_kv, L, D) old and new
            key_padding = kv_cache.padding_mask
            if rolling:
                k_positions = kv_cache.key_positions            # (L,) absolute, in slot order
            elif self.positional == "alibi":
                k_positions = torch.arange(kv_cache.length, device=x.device)
        k, v = self.expand_kv(k, v)                             # (B, H, L, D)
        if k.shape[1] != self.n_heads:
            raise ValueError(f"expand_kv must return n_heads={self.n_heads} heads, got {k.shape[1]}")
        length = k.shape[-2]

        if self._plain_causal(t, length, key_padding, return_weights):
            # fast path under the plain causal mask, built by SDPA itself (the same values as the
            # bool mask): one new token sees every stored key (no mask); without a cached prefix
            # the mask is the square lower triangle (is_causal)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)   # (B, H, T, D)
            return self.out_proj(self.merge_heads(out))         # (B, T, C)
        if rolling:
            # the keys cover the positions first .. start + T - 1, in slot order: the mask of that
            # span, its columns taken in the keys' order
            first = kv_cache.first_position
            mask = self.attention_mask(t, start + t - first, device=x.device)[:, k_positions - first]  # (T, L)
        else:
            mask = self.attention_mask(t, length, device=x.device)  # (T, L)
        if key_padding is not None:
            mask = mask & key_padding[:, None, None, :]         # (B, 1, T, L)
        bias = None
        if self.positional == "alibi":
            bias = alibi_bias(self.n_heads, positions, k_positions).to(q.dtype)  # (H, T, L)

        out, weights = self.attend(q, k, v, mask, bias, need_weights=return_weights)  # (B, H, T, D)
        y = self.out_proj(self.merge_heads(out))                # (B, T, C)
        return (y, weights) if return_weights else y

    def _plain_causal(self, t: int, length: int, key_padding, return_weights: bool) -> bool:
        """Whether ``attend``'s fast path would run with the plain causal mask of one query (all
        True) or of a square ``(T, T)`` (no cached prefix): no padding, no ALiBi bias, no weights,
        no active dropout, the base class's ``attention_mask`` and ``attend`` hooks."""
        cls = type(self)
        return (self.fast and (t == 1 or t == length) and key_padding is None and not return_weights
                and self.positional != "alibi" and (self.dropout == 0.0 or not self.training)
                and cls.attention_mask is MultiHeadAttention.attention_mask
                and cls.attend is MultiHeadAttention.attend)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
                f"positional={self.positional!r}, window={self.window}, fast={self.fast}")


class GroupedQueryAttention(MultiHeadAttention):
    """Grouped-query attention (Ainslie et al., 2023): ``n_kv_heads`` key/value heads, each shared by
    ``n_heads / n_kv_heads`` consecutive query heads (query head h uses kv head ``h // (H / H_kv)``).
    ``n_kv_heads = 1`` is multi-query attention (Shazeer, 2019). Overrides ``expand_kv``."""

    def expand_kv(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        group = self.n_heads // self.n_kv_heads
        return k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (B, H, L, D)


class SlidingWindowAttention(MultiHeadAttention):
    """Sliding-window attention (Beltagy et al., 2020; Mistral): query ``i`` sees keys ``j`` with
    ``i - window < j <= i`` (itself and the ``window - 1`` before it). Overrides ``attention_mask``;
    its KV cache can be a ``RollingKVCache`` of ``window`` slots."""

    def attention_mask(self, t_q: int, t_k: int, device=None) -> torch.Tensor:
        allowed = causal_mask(t_q, t_k, device=device)                 # (t_q, t_k)
        if self.window is None:
            return allowed
        i = torch.arange(t_k - t_q, t_k, device=device)[:, None]      # (t_q, 1)
        j = torch.arange(t_k, device=device)[None, :]                  # (1, t_k)
        return allowed & (i - j < self.window)


class SlidingWindowGroupedQueryAttention(GroupedQueryAttention, SlidingWindowAttention):
    """Both variants at once: shared kv heads and a sliding window (each hook from its class)."""


def build_attention(*, d_model: int, n_heads: int, n_kv_heads: int | None = None, dropout: float = 0.0,
                    bias: bool = True, positional: str = "none", max_len: int = 2048,
                    window: int | None = None, fast: bool = False, head_dim: int | None = None,
                    rope_base: float = 10000.0, rope_pairing: str = "interleaved") -> MultiHeadAttention:
    """The attention layer for a config: ``GroupedQueryAttention`` when ``n_kv_heads`` is set and below
    ``n_heads``, ``SlidingWindowAttention`` when ``window`` is set, both: ``SlidingWindowGroupedQueryAttention``,
    neither: ``MultiHeadAttention``. Keyword arguments only; the same meanings as ``MultiHeadAttention``."""
    grouped = n_kv_heads is not None and n_kv_heads != n_heads
    if grouped and window is not None:
        cls = SlidingWindowGroupedQueryAttention
    elif grouped:
        cls = GroupedQueryAttention
    elif window is not None:
        cls = SlidingWindowAttention
    else:
        cls = MultiHeadAttention
    return cls(d_model, n_heads, n_kv_heads=n_kv_heads, dropout=dropout, bias=bias, positional=positional,
               max_len=max_len, window=window, fast=fast, head_dim=head_dim, rope_base=rope_base,
               rope_pairing=rope_pairing)
