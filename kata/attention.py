"""Causal self-attention (Vaswani et al., 2017) and its variants, with a KV cache.

Scaled dot-product attention, for queries ``q (..., Tq, D)``, keys ``k (..., Tk, D)``, values
``v (..., Tk, Dv)``::

    scores  = q k^T / sqrt(D)                    (..., Tq, Tk)
    scores  = scores + bias                      optional additive bias (ALiBi)
    scores  = -inf where mask is False           mask: True = may attend
    weights = softmax(scores) over the keys      a row with every key masked gives zeros (not NaN)
    weights = dropout(weights)                   training only (inverted dropout)
    out     = weights v                          (..., Tq, Dv)

Multi-head attention on ``x (B, T, C)`` with ``H`` heads of size ``D = C / H``::

    q = split(x Wq^T)  (B, H, T, D)      k, v = split(x Wk^T), split(x Wv^T)  (B, H_kv, T, D)
    q, k = RoPE(q, positions), RoPE(k, positions)          only when positional == "rope"
    k, v = cache.update(k, v)                              with a KVCache: (B, H_kv, L, D)
    k, v = expand_kv(k, v)                                 (B, H, L, D)     hook
    mask = attention_mask(T, L) & key padding              (B, 1, T, L)     hook
    bias = -m_h (i - j)                                    (H, T, L)        only when positional == "alibi"
    out  = attend(q, k, v, mask, bias)                     (B, H, T, D)     hook
    y    = merge(out) Wo^T                                 (B, T, C)        out_proj

``split`` is ``view(B, T, H, D).transpose(1, 2)`` (NOT ``view(B, H, T, D)``: that mixes positions
and heads); ``merge`` is ``transpose(1, 2).reshape(B, T, H * D)``.

The base class ``MultiHeadAttention`` is plain causal multi-head attention; a variant subclasses it
and overrides ONE hook: ``GroupedQueryAttention`` overrides ``expand_kv`` (H_kv < H kv heads, each
shared by H / H_kv query heads), ``SlidingWindowAttention`` overrides ``attention_mask`` (query ``i``
sees keys ``i - w < j <= i``). ``attend`` is the hook for changing the attention itself.
With a window, ``RollingKVCache`` keeps only the last ``w`` positions (a ring buffer); ``forward``
then masks by the keys' ``key_positions`` (see the contract's ``RollingKVCache`` section).

Write the maths with tensor operations: ``torch.nn.functional.scaled_dot_product_attention`` and
``torch.nn.MultiheadAttention`` are the spec's oracles; the reference uses the former only in the
opt-in ``fast=True`` path. Full contract: ``spec_tests/contract/attention.md``.

Spec: ``pytest --impl kata spec_tests/test_attention.py``.
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
    (with a KV cache, the new tokens come after the cached ones): ``allowed[i, j] = j <= i + (t_k - t_q)``.

    ``t_k`` defaults to ``t_q``. Errors: ``checks.positive_int`` on both; ``t_k < t_q`` is a ValueError
    naming ``t_k``.
    """
    raise NotImplementedError("causal_mask: key positions arange(t_k) <= query positions arange(t_k - t_q, t_k)")


def softmax(scores: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax along ``dim``, written out and stable: ``exp(s - max) / sum(exp(s - max))``.

    A slice that is all ``-inf`` (every key masked) must give zeros, not NaN: there the maximum is
    ``-inf`` and ``-inf - -inf`` is NaN, so replace such maxima by 0 and guard the division.
    """
    raise NotImplementedError("softmax: subtract the (finite) max, exponentiate, divide by the (non-zero) sum")


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout: zero each element with probability ``p``, scale the rest by ``1 / (1 - p)``.

    ``p = 0`` returns ``x`` unchanged. Draw with ``torch.rand_like(x)`` (torch's global RNG).
    """
    raise NotImplementedError("dropout: keep = rand_like(x) >= p; x * keep / (1 - p)")


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                                 dropout_p: float = 0.0, return_weights: bool = False):
    """``softmax(q k^T / sqrt(D) + bias, masked) v``; returns ``out`` or ``(out, weights)``.

    Shapes: ``q (..., Tq, D)``, ``k (..., Tk, D)``, ``v (..., Tk, Dv)``, ``mask`` bool broadcastable
    to ``(..., Tq, Tk)`` (True = attend), ``bias`` float broadcastable likewise. ``weights`` are the
    ones applied to ``v`` (after dropout). ``dropout_p`` applies whenever > 0 (the layer passes 0 in
    eval mode). Masked entries of the weights are exactly 0; a fully masked row gives zeros.

    Errors: ``checks.tensor`` on ``q`` (rank >= 2, floating), ``k`` (last dim = q's), ``v``; ``v``
    with another number of positions than ``k`` (ValueError naming ``v``); a non-bool ``mask``
    (TypeError naming ``mask``); ``dropout_p`` outside ``[0, 1)``.
    """
    raise NotImplementedError("scaled_dot_product_attention: scores, scale, bias, mask, softmax, dropout, @ v")


class KVCache:
    """Keys and values of the tokens seen so far, for incremental decoding (one cache per layer).

    Attributes: ``batch_size``, ``n_kv_heads``, ``max_len``, ``head_dim``; buffers ``k``, ``v``
    ``(B, H_kv, max_len, D)`` (zeros, of ``dtype`` on ``device``); ``real`` ``(B, max_len)`` bool
    (ones: which stored tokens are real); ``length`` (int, 0 at first); ``padded`` (bool: has any
    padding token been stored?).

    ``update(k, v, padding_mask)`` appends ``T_new`` positions at ``length .. length + T_new - 1``
    and returns everything stored so far; ``padding_mask`` (property) is ``real[:, :length]`` once a
    padding token has been stored, else None; ``reset()`` empties the cache.
    """

    def __init__(self, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device=None):
        raise NotImplementedError("KVCache.__init__: check the sizes, allocate k, v (B, H_kv, max_len, D), real")

    def update(self, k: torch.Tensor, v: torch.Tensor, padding_mask: torch.Tensor | None = None):
        """Append ``k, v (B, H_kv, T_new, D)`` (and their ``padding_mask (B, T_new)``, True = real);
        return ``(k_all, v_all)``, each ``(B, H_kv, length, D)``.

        Errors (the cache is left unchanged): ``length + T_new > max_len`` is a ValueError naming
        ``max_len``; ``k``/``v`` not of shape ``(batch_size, n_kv_heads, T_new, head_dim)``
        (ValueError naming them) or not of the cache's dtype (TypeError).
        """
        raise NotImplementedError("KVCache.update: check, write at [length, length + T_new), return [:length]")

    @property
    def padding_mask(self) -> torch.Tensor | None:
        """``(B, length)`` bool, True = real token; None when every stored token is real."""
        raise NotImplementedError("KVCache.padding_mask: real[:, :length] if padded else None")

    def reset(self) -> None:
        """Forget everything stored (the buffers are reused)."""
        raise NotImplementedError("KVCache.reset: length = 0, padded = False, real = all True")


class RollingKVCache(KVCache):
    """The rolling buffer cache of sliding-window attention (Mistral): a ring of ``capacity =
    window`` slots (``min(window, max_len)`` when ``max_len`` is given); position ``p`` goes IN PLACE
    into slot ``p mod capacity``. Query ``p`` sees keys ``p - w < j <= p`` only, so the position
    ``p - capacity`` it overwrites is never needed again.

    Attributes: ``batch_size``, ``n_kv_heads``, ``window``, ``head_dim``, ``max_len`` (None:
    unbounded), ``capacity``; buffers ``k``, ``v`` ``(B, H_kv, capacity, D)`` and ``real``
    ``(B, capacity)`` allocated ONCE (never grow them); ``slot_positions (capacity,)`` long, the
    absolute position in each slot (-1: empty); ``length`` (positions seen: the next position),
    ``padded``; after each ``update``: ``key_positions (L,)`` and ``first_position`` (int) of the
    keys it returned.

    ``update(k, v, padding_mask)``: with ``T_new == 1``, or when the chunk fits in the free slots,
    write first and return the first ``stored`` slots (views, slot order); otherwise (a chunk of
    several tokens that wraps) return ``cat(stored slots, chunk)`` (its first queries still need
    the oldest keys), then write the chunk's last ``capacity`` positions. The returned keys always
    cover the positions ``first_position .. length - 1``, in slot order: the layer builds its mask
    from ``key_positions``. Errors: as ``KVCache`` (shapes, dtype); past ``max_len`` a ValueError
    naming ``max_len``; ``window < 1``.
    """

    def __init__(self, batch_size: int, n_kv_heads: int, window: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device=None, max_len: int | None = None):
        raise NotImplementedError("RollingKVCache.__init__: check the sizes, capacity = min(window, max_len), "
                                  "allocate k, v (B, H_kv, capacity, D), real, slot_positions (-1); reset()")

    @property
    def stored(self) -> int:
        """How many positions the buffers hold: ``min(length, capacity)``."""
        raise NotImplementedError("RollingKVCache.stored: min(length, capacity)")

    def update(self, k: torch.Tensor, v: torch.Tensor, padding_mask: torch.Tensor | None = None):
        """Store ``k, v (B, H_kv, T_new, D)`` at positions ``length ..`` (slot ``p mod capacity``);
        return the keys and values the new queries attend to, ``(B, H_kv, L, D)`` each."""
        raise NotImplementedError("RollingKVCache.update: check; in place for one token (or a chunk that fits), "
                                  "else cat(stored, chunk) then keep the chunk's last capacity; set key_positions")

    @property
    def padding_mask(self) -> torch.Tensor | None:
        """``(B, L)`` bool for the keys the last ``update`` returned; None while every token is real."""
        raise NotImplementedError("RollingKVCache.padding_mask: the returned keys' real flags if padded else None")

    def reset(self) -> None:
        """Forget everything stored (the buffers are reused)."""
        raise NotImplementedError("RollingKVCache.reset: length 0, padded False, real all True, slot_positions -1, "
                                  "no keys returned yet (first_position 0)")


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
        head_dim: the size D of each head (None: ``d_model // n_heads``; else a positive int).
        rope_base, rope_pairing: RoPE's ``base`` and ``pairing`` (see ``positional``).

    Attributes: the arguments (``n_kv_heads`` resolved to an int), ``head_dim`` (resolved), ``q_proj``
    (C -> H * D), ``k_proj`` and ``v_proj`` (C -> H_kv * D), ``out_proj`` (H * D -> C), all ``Linear``
    with ``bias``; ``rope`` (a ``RotaryEmbedding(head_dim, max_len, base=rope_base,
    pairing=rope_pairing)`` for ``"rope"``, else None).

    Errors (ValueError naming the argument): ``d_model`` not divisible by ``n_heads`` (when
    ``head_dim`` is None); ``rope_pairing`` not in ``ROPE_PAIRINGS``; ``n_heads``
    not divisible by ``n_kv_heads``; ``window < 1``; ``n_kv_heads < n_heads`` while
    ``type(self).expand_kv is MultiHeadAttention.expand_kv`` (name ``n_kv_heads``, suggest
    GroupedQueryAttention); a ``window`` while ``attention_mask`` is not overridden (name
    ``window``); ``dropout`` outside ``[0, 1)``; ``positional`` not in ``POSITIONAL``;
    ``fast`` not a bool (TypeError).

    Hooks (override ONE in a subclass): ``expand_kv``, ``attention_mask``, ``attend``.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, dropout: float = 0.0,
                 bias: bool = True, positional: str = "none", max_len: int = 2048, window: int | None = None,
                 fast: bool = False, head_dim: int | None = None, rope_base: float = 10000.0,
                 rope_pairing: str = "interleaved"):
        super().__init__()
        raise NotImplementedError("MultiHeadAttention.__init__: check arguments, build q/k/v/out projections, rope")

    # --- hooks --------------------------------------------------------------------------------

    def expand_kv(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hook: ``k, v (B, H_kv, L, D) -> (B, H, L, D)``, the keys and values of each query head.
        The base class has H_kv = H: return them unchanged."""
        raise NotImplementedError("MultiHeadAttention.expand_kv: identity in the base class")

    def attention_mask(self, t_q: int, t_k: int, device=None) -> torch.Tensor:
        """Hook: ``(t_q, t_k)`` bool, True = may attend; the queries are the last ``t_q`` of ``t_k``
        positions. The base class: ``causal_mask(t_q, t_k, device=device)``."""
        raise NotImplementedError("MultiHeadAttention.attention_mask: the causal mask")

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
               bias: torch.Tensor | None, need_weights: bool = False):
        """Hook: ``q (B, H, T, D)``, ``k, v (B, H, L, D)``, ``mask`` bool broadcastable to ``(B, H, T, L)``,
        ``bias`` ``(H, T, L)`` or None -> ``(out (B, H, T, D), weights (B, H, T, L) or None)``.

        Dropout rate: ``self.dropout`` in training mode, 0 in eval mode. With ``self.fast``, when no
        weights are needed, the dropout rate is 0 and every query row has a key it may attend
        (``mask.any(-1).all()``), return ``(F.scaled_dot_product_attention(q, k, v, attn_mask=m), None)``
        with ``m = mask`` or, with a bias, ``bias`` with ``-inf`` where the mask is False. Otherwise
        return ``scaled_dot_product_attention(..., return_weights=True)``.
        """
        raise NotImplementedError("MultiHeadAttention.attend: scaled_dot_product_attention (or the fast path)")

    # --- the pipeline -------------------------------------------------------------------------

    def split_heads(self, x: torch.Tensor, n_heads: int) -> torch.Tensor:
        """``(B, T, n_heads * D) -> (B, n_heads, T, D)``: ``view(B, T, n, D).transpose(1, 2)``."""
        raise NotImplementedError("MultiHeadAttention.split_heads: view(B, T, n, D), then swap T and n")

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, T, D) -> (B, T, H * D)``, heads concatenated in order."""
        raise NotImplementedError("MultiHeadAttention.merge_heads: transpose(1, 2), then reshape(B, T, H * D)")

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None,
                padding_mask: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                return_weights: bool = False):
        """``x (B, T, C) -> (B, T, C)`` (and the weights ``(B, H, T, L)`` when ``return_weights``).

        ``positions (T,)`` long, default ``arange(start, start + T)`` with ``start = kv_cache.length``
        (0 without a cache); with a cache, given positions must equal that (ValueError naming
        ``positions``); ``start + T > max_len`` is a ValueError naming ``max_len``.
        ``padding_mask (B, T)`` bool, True = real token (TypeError if not bool, ValueError if not
        ``(B, T)``): padded keys are never attended. With a cache it covers the new tokens; pass
        it to ``kv_cache.update`` and use ``kv_cache.padding_mask`` for the keys. RoPE rotates q
        and k at ``positions`` BEFORE caching; ALiBi's key positions are ``positions`` without a
        cache and ``arange(L)`` with one. Update the cache BEFORE attending (the new tokens must see
        themselves). ``x``: ``checks.tensor("x", x, min_dim=3, max_dim=3, last_dim=d_model,
        floating=True)``; ``kv_cache`` not a KVCache: TypeError.
        """
        raise NotImplementedError("MultiHeadAttention.forward: project, split, rope, cache, expand, mask, attend")


class GroupedQueryAttention(MultiHeadAttention):
    """Grouped-query attention (Ainslie et al., 2023): ``n_kv_heads`` key/value heads, each shared by
    ``n_heads / n_kv_heads`` consecutive query heads (query head h uses kv head ``h // (H / H_kv)``).
    ``n_kv_heads = 1`` is multi-query attention (Shazeer, 2019). Overrides ``expand_kv`` only."""

    def expand_kv(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, H_kv, L, D) -> (B, H, L, D)``: each kv head repeated ``H / H_kv`` times IN PLACE
        (``repeat_interleave`` on dim 1: kv heads a, b -> a, a, b, b; not ``repeat``: a, b, a, b)."""
        raise NotImplementedError("GroupedQueryAttention.expand_kv: repeat_interleave(H // H_kv, dim=1)")


class SlidingWindowAttention(MultiHeadAttention):
    """Sliding-window attention (Beltagy et al., 2020; Mistral): query ``i`` sees keys ``j`` with
    ``i - window < j <= i`` (itself and the ``window - 1`` before it). Overrides ``attention_mask`` only.
    ``window=None`` means unlimited (plain causal)."""

    def attention_mask(self, t_q: int, t_k: int, device=None) -> torch.Tensor:
        """The causal mask AND ``i - j < window`` (query positions ``t_k - t_q .. t_k - 1``)."""
        raise NotImplementedError("SlidingWindowAttention.attention_mask: causal mask & (i - j < window)")


class SlidingWindowGroupedQueryAttention(GroupedQueryAttention, SlidingWindowAttention):
    """Both variants at once: shared kv heads and a sliding window (each hook from its class)."""


def build_attention(*, d_model: int, n_heads: int, n_kv_heads: int | None = None, dropout: float = 0.0,
                    bias: bool = True, positional: str = "none", max_len: int = 2048,
                    window: int | None = None, fast: bool = False, head_dim: int | None = None,
                    rope_base: float = 10000.0, rope_pairing: str = "interleaved") -> MultiHeadAttention:
    """The attention layer for a config: ``GroupedQueryAttention`` when ``n_kv_heads`` is set and below
    ``n_heads``, ``SlidingWindowAttention`` when ``window`` is set, both: ``SlidingWindowGroupedQueryAttention``,
    neither: ``MultiHeadAttention``. Keyword arguments only; the same meanings as ``MultiHeadAttention``
    (pass them all on: ``cls(d_model, n_heads, n_kv_heads=..., dropout=..., ...)``)."""
    raise NotImplementedError("build_attention: pick the class from (n_kv_heads, window), pass every argument on")
