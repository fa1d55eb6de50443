"""The decoder-only transformer language model (GPT-2 style; Radford et al., 2019).

``idx (B, T) long -> logits (B, T, V)``::

    h_0   = dropout(E[idx] + P[positions])        E: token table (V, C); P: learned or sinusoidal
                                                  positions (none for rope / alibi / none, which
                                                  act inside attention)
    h_l   = Block_l(h_{l-1})                      l = 1 .. n_layers
    logits = W_out norm_f(h_L)                    Pre-LN: final norm ln_f; Post-LN: no final norm
                                                  W_out (V, C) IS E when tie_weights

Each block has two sublayers, ``f_1 = attention`` then ``f_2 = FFN``, each wrapped as::

    Pre-LN  (norm_placement="pre"):   x = x + dropout(f(LN(x)))
    Post-LN (norm_placement="post"):  x = LN(x + dropout(f(x)))

Dropout (rate ``dropout``, inverted: kept values are scaled by 1 / (1 - p), identity in eval mode)
sits on the embeddings, on each sublayer's output (residual dropout) and on the attention weights
(inside attention).

Initialisation (GPT-2): every Linear and embedding weight ~ N(0, 0.02^2), biases 0, norm gains 1;
the residual output projections (attention ``out_proj`` and FFN ``w2``) ~ N(0, (0.02 / sqrt(2 n_layers))^2),
so the residual stream's variance does not grow with depth.

KV cache: ``forward(idx, kv_cache=caches)`` takes only the NEW tokens; their positions continue
from ``caches[0].length``; each layer's attention appends its keys and values to its cache.

Build it from your own components: ``TokenEmbedding``, the positional modules, ``build_attention``,
``FeedForward``, ``build_norm``, ``Linear`` and ``cross_entropy``.

Spec: ``pytest --impl kata spec_tests/test_model.py``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from . import checks
from .attention import KVCache, RollingKVCache, build_attention
from .embedding import TokenEmbedding
from .feedforward import ACTIVATIONS, FeedForward
from .linear import INIT_STD, Linear
from .loss import IGNORE_INDEX, cross_entropy
from .norm import NORMS, build_norm
from .positional import POSITIONAL, ROPE_PAIRINGS, LearnedPositionalEmbedding, SinusoidalPositionalEncoding

NORM_PLACEMENTS = ("pre", "post")
#: The positional schemes under which a sliding-window model may run past ``context_length`` with
#: rolling KV caches (relative positions, or none); learned and sinusoidal tables are absolute.
ROLLING_POSITIONAL = ("rope", "alibi", "none")


@dataclass
class ModelConfig:
    """Every hyperparameter of a ``TransformerLM``; validated on construction (errors name the field).

    ``n_kv_heads=None`` means ``n_heads`` (multi-head attention); fewer is grouped-query attention
    (1: multi-query). ``d_ff=None`` means ``4 * d_model``, or for ``swiglu`` ``8 * d_model / 3``
    rounded up to a multiple of 8 (same parameter count as ``4 * d_model`` with two matrices).
    ``window=None``: full causal attention; an int: each query sees at most ``window`` keys (itself
    and the ``window - 1`` before it). ``fast=True`` turns on every layer's opt-in fast path (fused
    torch kernels with the same semantics: attention, norms, FFN activations, the loss).

    ``__post_init__`` validates, in this spirit (each error names the field):

    - ``vocab_size, context_length, n_layers, d_model, n_heads``: ``checks.positive_int``;
      ``n_kv_heads, d_ff, window``: None or a positive int;
    - ``dropout``: ``checks.number_in_range("dropout", dropout, 0.0, 1.0, high_inclusive=False)``;
    - ``activation`` in ``ACTIVATIONS``, ``norm`` in ``NORMS``, ``norm_placement`` in
      ``NORM_PLACEMENTS``, ``positional`` in ``POSITIONAL`` (``checks.one_of``);
    - ``tie_weights, bias, fast``: bools (else TypeError);
    - ``d_model % n_heads == 0`` (ValueError naming d_model and n_heads), ``n_heads % n_kv_heads == 0``;
    - rope needs an even ``head_dim``, sinusoidal an even ``d_model`` (ValueError naming the scheme
      and ``head_dim`` / ``d_model``);
    - ``head_dim``: None or a positive int (when given, ``d_model % n_heads`` is not required);
      ``attention_bias, ffn_bias``: None or bools; ``norm_eps > 0``, ``rope_base > 1``
      (``checks.number_in_range``); ``rope_pairing`` in ``ROPE_PAIRINGS``.

    Options for models from elsewhere (Hugging Face GPT-2 and Llama; the defaults are Bare-LM's own):
    ``norm_eps`` is every norm's eps; ``rope_base`` and ``rope_pairing`` (``"interleaved"``,
    RoFormer and Meta's Llama code, or ``"half"``, GPT-NeoX and transformers' Llama) shape RoPE;
    ``head_dim=None`` means ``d_model // n_heads`` (otherwise attention works in
    ``n_heads * head_dim`` channels); ``attention_bias`` and ``ffn_bias`` (None: ``bias``) switch
    the biases of the attention projections and of the FFN apart, ``bias`` still covers the norms.
    """

    vocab_size: int
    context_length: int
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int | None = None
    d_ff: int | None = None
    dropout: float = 0.0
    activation: str = "gelu"
    norm: str = "layernorm"
    norm_placement: str = "pre"
    positional: str = "learned"
    window: int | None = None
    tie_weights: bool = True
    bias: bool = True
    fast: bool = False
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    rope_pairing: str = "interleaved"
    head_dim: int | None = None
    attention_bias: bool | None = None
    ffn_bias: bool | None = None

    def __post_init__(self):
        raise NotImplementedError("ModelConfig.__post_init__: validate every field (see the class docstring)")

    @property
    def resolved_head_dim(self) -> int:
        """``head_dim``, or ``d_model // n_heads`` when it is None."""
        raise NotImplementedError("ModelConfig.resolved_head_dim: head_dim, or d_model // n_heads if None")

    @property
    def resolved_attention_bias(self) -> bool:
        """``attention_bias``, or ``bias`` when it is None."""
        raise NotImplementedError("ModelConfig.resolved_attention_bias: attention_bias, or bias if None")

    @property
    def resolved_ffn_bias(self) -> bool:
        """``ffn_bias``, or ``bias`` when it is None."""
        raise NotImplementedError("ModelConfig.resolved_ffn_bias: ffn_bias, or bias if None")

    @property
    def resolved_n_kv_heads(self) -> int:
        """``n_kv_heads``, or ``n_heads`` when it is None."""
        raise NotImplementedError("ModelConfig.resolved_n_kv_heads: n_kv_heads, or n_heads if None")

    @property
    def resolved_d_ff(self) -> int:
        """``d_ff``, or its default: ``4 * d_model``; swiglu: ``ceil(8 * d_model / 3)`` rounded up to a multiple of 8."""
        raise NotImplementedError("ModelConfig.resolved_d_ff: d_ff, else 4 * d_model (swiglu: ceil(8d/3) up to a multiple of 8)")

    def to_dict(self) -> dict:
        """Every field by name; JSON-safe (ints, floats, strings, bools, None). ``dataclasses.asdict``."""
        raise NotImplementedError("ModelConfig.to_dict: dataclasses.asdict(self)")

    @classmethod
    def from_dict(cls, d: Mapping) -> ModelConfig:
        """The inverse of ``to_dict``; unknown keys and missing required fields are ValueErrors naming them."""
        raise NotImplementedError("ModelConfig.from_dict: refuse unknown keys by name, then cls(**d)")


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout: in training, zero each element with probability ``p``, scale the rest by ``1 / (1 - p)``.

    Identity when ``training`` is False or ``p == 0`` (return ``x`` itself). Draw the mask from
    torch's global RNG (``torch.rand_like(x) >= p``), so ``torch.manual_seed`` reproduces it.
    """
    raise NotImplementedError("dropout: x * (rand_like(x) >= p) / (1 - p) in training, x otherwise")


class TransformerBlock(nn.Module):
    """One layer: attention then FFN, each a residual sublayer with its norm placed before (Pre-LN)
    or after the residual sum (Post-LN).

    Attributes: ``ln_1``, ``attn`` (from ``attention.build_attention``), ``ln_2``, ``ffn``
    (``FeedForward``), ``layer_index``, ``norm_placement``, ``dropout`` (the rate).

    ``__init__`` builds, from the config (TypeError if ``config`` is not a ``ModelConfig``;
    ``layer_index`` must be in ``[0, n_layers)``):

    - ``ln_1 = build_norm(config.norm, d_model, eps=config.norm_eps, bias=config.bias, fast=config.fast)``,
      ``ln_2`` the same (and ``ln_f`` of the model);
    - ``attn = build_attention(d_model=..., n_heads=..., n_kv_heads=..., dropout=...,
      bias=config.resolved_attention_bias, positional=..., max_len=config.context_length, window=...,
      fast=config.fast, head_dim=config.head_dim, rope_base=..., rope_pairing=...)``;
    - ``ffn = FeedForward(d_model, config.resolved_d_ff, activation=..., bias=config.resolved_ffn_bias,
      fast=config.fast)``.
    """

    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        raise NotImplementedError("TransformerBlock.__init__: ln_1, attn, ln_2, ffn from the config")

    def forward(self, x: torch.Tensor, positions: torch.Tensor, padding_mask: torch.Tensor | None = None,
                kv_cache: KVCache | None = None) -> torch.Tensor:
        """``(B, T, C) -> (B, T, C)``; ``positions (T,)``, ``padding_mask (B, T)`` and ``kv_cache`` go to attention.

        Pre-LN:  ``x = x + dropout(attn(ln_1(x)))``;  ``x = x + dropout(ffn(ln_2(x)))``.
        Post-LN: ``x = ln_1(x + dropout(attn(x)))``;  ``x = ln_2(x + dropout(ffn(x)))``.
        Call attention as ``self.attn(h, positions=positions, padding_mask=padding_mask, kv_cache=kv_cache)``;
        dropout (rate ``self.dropout``) is active only in training mode.
        """
        raise NotImplementedError("TransformerBlock.forward: two residual sublayers, norms before (pre) or after (post)")


class TransformerLM(nn.Module):
    """The language model: embeddings, ``n_layers`` blocks, (Pre-LN) a final norm, the output head.

    Attributes: ``config``, ``token_embedding`` (``TokenEmbedding``), ``position_embedding``
    (``LearnedPositionalEmbedding`` / ``SinusoidalPositionalEncoding``, or None for rope / alibi /
    none), ``blocks`` (``nn.ModuleList`` of ``TransformerBlock``), ``ln_f`` (a norm for Pre-LN,
    None for Post-LN), ``lm_head`` (``Linear(d_model, vocab_size, bias=False)``; its ``weight`` IS
    ``token_embedding.weight`` when ``tie_weights``).

    ``__init__``: TypeError if ``config`` is not a ``ModelConfig``; build the attributes, tie by
    assigning the embedding's Parameter to ``lm_head.weight`` (one Parameter, not a copy), then
    ``reset_parameters()``.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        raise NotImplementedError("TransformerLM.__init__: embeddings, blocks, ln_f (pre only), lm_head, tie, init")

    def reset_parameters(self) -> None:
        """GPT-2 initialisation: every ``Linear``, ``TokenEmbedding`` and ``LearnedPositionalEmbedding``
        weight ~ ``N(0, INIT_STD^2)``, their biases 0; then every block's ``attn.out_proj.weight`` and
        ``ffn.w2.weight`` ~ ``N(0, (INIT_STD / sqrt(2 n_layers))^2)``; every norm's gain 1 and bias 0
        (``fill_(1.0)``, ``zero_()``: a reset after training restores them too).
        Under ``torch.no_grad()``, with ``tensor.normal_(0.0, std)`` and ``tensor.zero_()``."""
        raise NotImplementedError("TransformerLM.reset_parameters: N(0, 0.02^2), residual projections / sqrt(2 n_layers)")

    def new_kv_cache(self, batch_size: int, max_len: int | None = None) -> list[KVCache]:
        """One empty ``KVCache`` per layer, for ``max_len`` tokens (default ``context_length``), in the
        parameters' dtype and device: ``KVCache(batch_size, resolved_n_kv_heads, max_len, resolved_head_dim,
        dtype=..., device=...)``. With a ``window``: ``RollingKVCache(batch_size, resolved_n_kv_heads,
        window, resolved_head_dim, dtype=..., device=..., max_len=max_len)`` per layer instead."""
        raise NotImplementedError("TransformerLM.new_kv_cache: one KVCache(B, n_kv_heads, max_len, head_dim) per block "
                                  "(a RollingKVCache with a window)")

    @property
    def rolls_past_context(self) -> bool:
        """Whether decoding with ``new_kv_cache`` may continue past ``context_length``: a sliding
        window and a positional scheme in ``ROLLING_POSITIONAL``."""
        raise NotImplementedError("TransformerLM.rolls_past_context: window is set and positional in ROLLING_POSITIONAL")

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Trainable parameters, each shared tensor counted once. ``exclude_embeddings``: without the
        token table (and so the tied head) and the learned position table.

        ``self.parameters()`` already yields a shared (tied) Parameter only once."""
        raise NotImplementedError("TransformerLM.num_parameters: sum of numel over self.parameters()")

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                padding_mask: torch.Tensor | None = None,
                kv_cache: list[KVCache] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``idx (B, T)`` -> ``(logits (B, T, V), loss)``; loss = ``cross_entropy(logits, targets,
        fast=config.fast)`` (ignore index -100) when ``targets (B, T)`` is given, else None.

        1. Check ``idx``: an integer tensor of rank 2 (``checks.tensor``), at least one token, every id in
           ``[0, vocab_size)`` (ValueError naming the id and vocab_size).
        2. ``start = kv_cache[0].length`` with a cache (a list of one cache per layer), else 0;
           ``start + T > context_length`` is a ValueError naming context_length, unless the caches
           are ``RollingKVCache`` and ``rolls_past_context`` (then the positions go on past it).
        3. ``positions = arange(start, start + T)``; ``x = token_embedding(idx)`` (+ ``position_embedding(positions)``
           when there is one); ``x = dropout(x)``.
        4. Each block with ``(x, positions, padding_mask=..., kv_cache=its own cache or None)``;
           ``ln_f`` if any; ``logits = lm_head(x)``.
        """
        raise NotImplementedError("TransformerLM.forward: embed, add positions, dropout, blocks, ln_f, lm_head, loss")
