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
from ``caches[0].length``; each layer's attention appends its keys and values to its cache. With a
sliding window the caches are ``RollingKVCache`` ring buffers of ``window`` slots; with rope, alibi
or none (``ROLLING_POSITIONAL``) the positions may then go past ``context_length``.
"""

from __future__ import annotations

import dataclasses
import functools
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
from .norm import NORMS, LayerNorm, RMSNorm, build_norm
from .norm import build_norm as _build_norm
from .positional import POSITIONAL, ROPE_PAIRINGS, LearnedPositionalEmbedding, SinusoidalPositionalEncoding

NORM_PLACEMENTS = ("pre", "post")
#: The positional schemes under which a sliding-window model may run past ``context_length`` with
#: rolling KV caches: attention depends on relative positions only (or none). Learned and
#: sinusoidal tables are absolute, with no row past the context.
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

    Options for models from elsewhere (Hugging Face GPT-2 and Llama; the defaults are Bare-LM's own):
    ``norm_eps`` is every norm's eps; ``rope_base`` and ``rope_pairing`` (``ROPE_PAIRINGS``:
    ``"interleaved"``, RoFormer and Meta's Llama code, or ``"half"``, GPT-NeoX and transformers'
    Llama) shape RoPE; ``head_dim=None`` means ``d_model // n_heads`` (otherwise attention works in
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
        for name in ("vocab_size", "context_length", "n_layers", "d_model", "n_heads"):
            checks.positive_int(name, getattr(self, name))
        for name in ("n_kv_heads", "d_ff", "window", "head_dim"):
            if getattr(self, name) is not None:
                checks.positive_int(name, getattr(self, name))
        self.dropout = checks.number_in_range("dropout", self.dropout, 0.0, 1.0, high_inclusive=False)
        checks.one_of("activation", self.activation, ACTIVATIONS)
        checks.one_of("norm", self.norm, NORMS)
        checks.one_of("norm_placement", self.norm_placement, NORM_PLACEMENTS)
        checks.one_of("positional", self.positional, POSITIONAL)
        for name in ("tie_weights", "bias", "fast"):
            checks.boolean(name, getattr(self, name))
        for name in ("attention_bias", "ffn_bias"):
            if getattr(self, name) is not None:
                checks.boolean(name, getattr(self, name))
        self.norm_eps = checks.number_in_range("norm_eps", self.norm_eps, 0.0, None, low_inclusive=False)
        self.rope_base = checks.number_in_range("rope_base", self.rope_base, 1.0, None, low_inclusive=False)
        checks.one_of("rope_pairing", self.rope_pairing, ROPE_PAIRINGS)
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ValueError(f"d_model must be divisible by n_heads: d_model={self.d_model}, n_heads={self.n_heads}")
        if self.n_heads % self.resolved_n_kv_heads:
            raise ValueError(f"n_heads must be divisible by n_kv_heads: n_heads={self.n_heads}, "
                             f"n_kv_heads={self.n_kv_heads}")
        if self.positional == "rope" and self.resolved_head_dim % 2:
            raise ValueError(f"positional='rope' needs an even head_dim (default d_model / n_heads), got "
                             f"{self.resolved_head_dim} (d_model={self.d_model}, n_heads={self.n_heads})")
        if self.positional == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"positional='sinusoidal' needs an even d_model, got d_model={self.d_model}")

    @property
    def resolved_head_dim(self) -> int:
        """``head_dim``, or ``d_model // n_heads`` when it is None."""
        return self.d_model // self.n_heads if self.head_dim is None else self.head_dim

    @property
    def resolved_attention_bias(self) -> bool:
        """``attention_bias``, or ``bias`` when it is None."""
        return self.bias if self.attention_bias is None else self.attention_bias

    @property
    def resolved_ffn_bias(self) -> bool:
        """``ffn_bias``, or ``bias`` when it is None."""
        return self.bias if self.ffn_bias is None else self.ffn_bias

    @property
    def resolved_n_kv_heads(self) -> int:
        """``n_kv_heads``, or ``n_heads`` when it is None."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def resolved_d_ff(self) -> int:
        """``d_ff``, or its default: ``4 * d_model``; swiglu: ``ceil(8 * d_model / 3)`` rounded up to a multiple of 8."""
        if self.d_ff is not None:
            return self.d_ff
        if self.activation == "swiglu":
            hidden = -(-8 * self.d_model // 3)   # ceil(8 d / 3)
            return -(-hidden // 8) * 8           # rounded up to a multiple of 8
        return 4 * self.d_model

    def to_dict(self) -> dict:
        """Every field by name; JSON-safe (ints, floats, strings, bools, None)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> ModelConfig:
        """The inverse of ``to_dict``; unknown keys and missing required fields are ValueErrors naming them."""
        if not isinstance(d, Mapping):
            raise TypeError(f"ModelConfig.from_dict needs a mapping, got {type(d).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s) {unknown}; known fields: {sorted(fields)}")
        missing = [name for name, f in fields.items()
                   if f.default is dataclasses.MISSING and name not in d]
        if missing:
            raise ValueError(f"missing ModelConfig field(s) {missing}")
        return cls(**{name: d[name] for name in fields if name in d})


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout: in training, zero each element with probability ``p``, scale the rest by ``1 / (1 - p)``.

    Identity when ``training`` is False or ``p == 0``.
    """
    if not training or p == 0.0:
        return x
    keep = torch.rand_like(x) >= p      # (...) True with probability 1 - p
    return x * keep / (1.0 - p)


class TransformerBlock(nn.Module):
    """One layer: attention then FFN, each a residual sublayer with its norm placed before (Pre-LN)
    or after the residual sum (Post-LN).

    Attributes: ``ln_1``, ``attn`` (from ``attention.build_attention``), ``ln_2``, ``ffn``
    (``FeedForward``), ``layer_index``, ``norm_placement``, ``dropout`` (the rate).
    """

    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        checks.non_negative_int("layer_index", layer_index)
        if layer_index >= config.n_layers:
            raise ValueError(f"layer_index must be in [0, n_layers={config.n_layers}), got {layer_index}")
        self.layer_index = layer_index
        self.norm_placement = config.norm_placement
        self.dropout = config.dropout
        c = config.d_model
        self.ln_1 = build_norm(config.norm, c, eps=config.norm_eps, bias=config.bias, fast=config.fast)
        self.attn = build_attention(d_model=c, n_heads=config.n_heads, n_kv_heads=config.n_kv_heads,
                                    dropout=config.dropout, bias=config.resolved_attention_bias,
                                    positional=config.positional, max_len=config.context_length,
                                    window=config.window, fast=config.fast, head_dim=config.head_dim,
                                    rope_base=config.rope_base, rope_pairing=config.rope_pairing)
        self.ln_2 = build_norm(config.norm, c, eps=config.norm_eps, bias=config.bias, fast=config.fast)
        self.ffn = FeedForward(c, config.resolved_d_ff, activation=config.activation,
                               bias=config.resolved_ffn_bias, fast=config.fast)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, padding_mask: torch.Tensor | None = None,
                kv_cache: KVCache | None = None) -> torch.Tensor:
        """``(B, T, C) -> (B, T, C)``; ``positions (T,)``, ``padding_mask (B, T)`` and ``kv_cache`` go to attention."""
        def attend(h):
            return self.attn(h, positions=positions, padding_mask=padding_mask, kv_cache=kv_cache)

        p, training = self.dropout, self.training
        if self.norm_placement == "pre":
            x = x + dropout(attend(self.ln_1(x)), p, training)    # (B, T, C)
            x = x + dropout(self.ffn(self.ln_2(x)), p, training)  # (B, T, C)
        else:
            x = self.ln_1(x + dropout(attend(x), p, training))    # (B, T, C)
            x = self.ln_2(x + dropout(self.ffn(x), p, training))  # (B, T, C)
        return x


class TransformerLM(nn.Module):
    """The language model: embeddings, ``n_layers`` blocks, (Pre-LN) a final norm, the output head.

    Attributes: ``config``, ``token_embedding`` (``TokenEmbedding``), ``position_embedding``
    (``LearnedPositionalEmbedding`` / ``SinusoidalPositionalEncoding``, or None for rope / alibi /
    none), ``blocks`` (``nn.ModuleList`` of ``TransformerBlock``), ``ln_f`` (a norm for Pre-LN,
    None for Post-LN), ``lm_head`` (``Linear(d_model, vocab_size, bias=False)``; its ``weight`` IS
    ``token_embedding.weight`` when ``tie_weights``).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        self.config = config
        c = config.d_model
        self.token_embedding = TokenEmbedding(config.vocab_size, c)
        if config.positional == "learned":
            self.position_embedding = LearnedPositionalEmbedding(config.context_length, c)
        elif config.positional == "sinusoidal":
            self.position_embedding = SinusoidalPositionalEncoding(c, config.context_length)
        else:
            self.position_embedding = None  # rope / alibi act inside attention; "none": no positions
        self.blocks = nn.ModuleList(TransformerBlock(config, i) for i in range(config.n_layers))
        build_norm = functools.partial(_build_norm, eps=config.norm_eps)  # ln_f too has the config's eps
        self.ln_f = build_norm(config.norm, c, bias=config.bias, fast=config.fast) if config.norm_placement == "pre" else None
        self.lm_head = Linear(c, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.token_embedding.weight  # one Parameter, two uses
        for module in self.modules():                          # fast: every Linear is F.linear
            if isinstance(module, Linear):
                module.fast = config.fast
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 initialisation (see the module docstring)."""
        residual_std = INIT_STD / math.sqrt(2 * self.config.n_layers)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, (Linear, TokenEmbedding, LearnedPositionalEmbedding)):
                    module.weight.normal_(0.0, INIT_STD)
                    if getattr(module, "bias", None) is not None:
                        module.bias.zero_()
                elif isinstance(module, (LayerNorm, RMSNorm)):
                    module.weight.fill_(1.0)                   # gain 1
                    if getattr(module, "bias", None) is not None:
                        module.bias.zero_()                    # shift 0
            for block in self.blocks:
                block.attn.out_proj.weight.normal_(0.0, residual_std)
                block.ffn.w2.weight.normal_(0.0, residual_std)

    def new_kv_cache(self, batch_size: int, max_len: int | None = None) -> list[KVCache]:
        """One empty ``KVCache`` per layer, for ``max_len`` tokens (default ``context_length``), in the
        parameters' dtype and device. With a ``window``: a ``RollingKVCache`` of ``min(window, max_len)``
        slots per layer instead; ``max_len`` may then exceed ``context_length`` when
        ``rolls_past_context``."""
        checks.positive_int("batch_size", batch_size)
        max_len = self.config.context_length if max_len is None else checks.positive_int("max_len", max_len)
        weight = self.token_embedding.weight
        if self.config.window is not None:
            return [RollingKVCache(batch_size, self.config.resolved_n_kv_heads, self.config.window,
                                   self.config.resolved_head_dim, dtype=weight.dtype, device=weight.device,
                                   max_len=max_len) for _ in self.blocks]
        return [KVCache(batch_size, self.config.resolved_n_kv_heads, max_len, self.config.resolved_head_dim,
                        dtype=weight.dtype, device=weight.device) for _ in self.blocks]

    @property
    def rolls_past_context(self) -> bool:
        """Whether decoding with ``new_kv_cache`` may continue past ``context_length``: a sliding
        window and a positional scheme in ``ROLLING_POSITIONAL``."""
        return self.config.window is not None and self.config.positional in ROLLING_POSITIONAL

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Trainable parameters, each shared tensor counted once. ``exclude_embeddings``: without the
        token table (and so the tied head) and the learned position table."""
        total = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            total -= self.token_embedding.weight.numel()
            if isinstance(self.position_embedding, LearnedPositionalEmbedding):
                total -= self.position_embedding.weight.numel()
        return total

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                padding_mask: torch.Tensor | None = None,
                kv_cache: list[KVCache] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``idx (B, T)`` -> ``(logits (B, T, V), loss)``; loss = ``cross_entropy(logits, targets)``
        (ignore index -100) when ``targets (B, T)`` is given, else None."""
        config = self.config
        checks.tensor("idx", idx, min_dim=2, max_dim=2, floating=False)
        b, t = idx.shape
        if t == 0:
            raise ValueError(f"idx must hold at least one token per row, got shape {tuple(idx.shape)}")
        if torch.compiler.is_compiling():   # traced by torch.compile: an assert in the graph, no host sync
            outside = (idx < 0) | (idx >= config.vocab_size)             # (B, T) bool
            torch._assert_async(~outside.any(), f"idx holds a token id outside [0, vocab_size={config.vocab_size})")
        elif idx.numel():                  # (a batch of no rows has no id to check)
            lowest, highest = (int(i) for i in torch.aminmax(idx))       # one reduction for both bounds
            if lowest < 0 or highest >= config.vocab_size:
                bad = int(idx[(idx < 0) | (idx >= config.vocab_size)][0])   # the first, row-major
                raise ValueError(f"idx holds token id {bad}, outside [0, vocab_size={config.vocab_size})")
        start = 0
        if kv_cache is not None:
            if not isinstance(kv_cache, (list, tuple)) or len(kv_cache) != len(self.blocks):
                raise ValueError(f"kv_cache must be a list of one KVCache per layer ({len(self.blocks)}), "
                                 f"e.g. from new_kv_cache(batch_size)")
            start = kv_cache[0].length
        rolling = kv_cache is not None and isinstance(kv_cache[0], RollingKVCache) and self.rolls_past_context
        if start + t > config.context_length and not rolling:
            raise ValueError(f"sequence of {start + t} tokens (cached {start} + new {t}) is longer than "
                             f"context_length={config.context_length} (only a sliding-window model with "
                             f"positional in {ROLLING_POSITIONAL} and its rolling KV caches may go past it)")
        positions = torch.arange(start, start + t, device=idx.device)    # (T,) continuing the cache

        x = self.token_embedding(idx)                                     # (B, T, C)
        if self.position_embedding is not None:
            x = x + self.position_embedding(positions)                    # (B, T, C) + (T, C)
        x = dropout(x, config.dropout, self.training)
        for i, block in enumerate(self.blocks):
            # positions=None: attention's default, the same arange (it then skips re-checking it)
            x = block(x, None, padding_mask=padding_mask,
                      kv_cache=None if kv_cache is None else kv_cache[i])  # (B, T, C)
        if self.ln_f is not None:
            x = self.ln_f(x)
        logits = self.lm_head(x)                                          # (B, T, V)
        loss = None if targets is None else cross_entropy(logits, targets, ignore_index=IGNORE_INDEX,
                                                          fast=config.fast)
        return logits, loss
