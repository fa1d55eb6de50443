"""Hugging Face interop: GPT-2 and Llama weights in and out, byte-level BPE tokenizers in and out.

A Hugging Face model directory (what ``save_pretrained`` writes) holds ``config.json`` and
``model.safetensors`` (or shards listed in ``model.safetensors.index.json``). Read and write it
with ``json`` and ``safetensors`` alone (``safetensors.safe_open``, ``safetensors.torch.save_file``):
never import transformers, never touch the network, never unpickle ``pytorch_model.bin``.

GPT-2 (``model_type="gpt2"``), ``ModelConfig`` <- ``config.json``::

    vocab_size <- vocab_size        context_length <- n_positions     n_layers <- n_layer
    d_model <- n_embd               n_heads <- n_head                 d_ff <- n_inner (None: 4 n_embd)
    activation <- activation_function: "gelu_new" / "gelu_pytorch_tanh" -> "gelu_tanh",
                                       "gelu" -> "gelu", "relu" -> "relu"
    norm_eps <- layer_norm_epsilon  tie_weights <- tie_word_embeddings
    dropout <- resid_pdrop = embd_pdrop = attn_pdrop (must be equal)
    fixed: positional "learned", norm "layernorm", norm_placement "pre", every bias on

GPT-2's weights (``transformer.`` prefix optional; skip the ``attn.bias``/``attn.masked_bias``
mask buffers of old files). ``Conv1D`` weights are ``(in, out)``: the TRANSPOSE of
``Linear.weight``. ``c_attn`` fuses q, k, v along the output axis, in that order::

    wte (V, C) -> token_embedding        wpe (P, C) -> position_embedding
    h.{l}.ln_1 / ln_2 -> blocks.{l}.ln_1 / ln_2          ln_f -> ln_f
    h.{l}.attn.c_attn.weight (C, 3C) -> split in 3 along dim 1, transpose: q_proj, k_proj, v_proj
    h.{l}.attn.c_attn.bias (3C,)     -> split in 3
    h.{l}.attn.c_proj -> attn.out_proj (transposed)     h.{l}.mlp.c_fc -> ffn.w1 (transposed)
    h.{l}.mlp.c_proj -> ffn.w2 (transposed)             lm_head.weight (absent when tied)

Llama (``model_type="llama"``)::

    vocab_size, context_length <- max_position_embeddings, n_layers <- num_hidden_layers,
    d_model <- hidden_size, n_heads <- num_attention_heads, n_kv_heads <- num_key_value_heads,
    d_ff <- intermediate_size, head_dim <- head_dim, norm_eps <- rms_norm_eps,
    rope_base <- rope_parameters["rope_theta"] (older: rope_theta; rope_type must be "default"),
    attention_bias <- attention_bias, ffn_bias <- mlp_bias, tie_weights <- tie_word_embeddings;
    fixed: positional "rope", rope_pairing "half", norm "rmsnorm", activation "swiglu"
    (hidden_act "silu"), dropout 0 (attention_dropout must be 0)

Llama's weights (``model.`` prefix; ``nn.Linear``: no transposes): ``embed_tokens``,
``layers.{l}.input_layernorm`` -> ``ln_1``, ``self_attn.{q,k,v}_proj`` -> ``attn.{q,k,v}_proj``,
``self_attn.o_proj`` -> ``attn.out_proj``, ``post_attention_layernorm`` -> ``ln_2``,
``mlp.gate_proj`` -> ``ffn.w1`` (silu branch), ``mlp.up_proj`` -> ``ffn.w3``, ``mlp.down_proj`` ->
``ffn.w2``, ``norm`` -> ``ln_f``, ``lm_head``.

RoPE: transformers' Llama rotates ``(x[i], x[i + D/2])``; import with ``rope_pairing="half"``, no
permutation. Export an ``"interleaved"`` model by permuting each head's rows of ``Wq`` and ``Wk``
(and biases) with ``interleaved_to_half``.

Tokenizers: token strings are bytes through GPT-2's ``bytes_to_unicode`` table. Export keeps
Bare-LM's ids; import returns ``token_ids`` (the file's id of each Bare-LM id).

Spec: ``pytest --impl kata spec_tests/test_interop.py`` (needs ``pip install -e '.[test]'``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from .model import ModelConfig, TransformerLM
from .tokenizer import GPT2_PATTERN, Tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
FAMILIES = ("gpt2", "llama")   # the model_type values this module reads and writes


def config_from_hf(hf: Mapping) -> ModelConfig:
    """The ``ModelConfig`` of a transformers ``config.json`` dict (table in the module docstring).

    ValueError naming the field for anything Bare-LM cannot express: an unknown ``model_type``;
    GPT-2 ``add_cross_attention``, ``scale_attn_weights=False``, ``scale_attn_by_inverse_layer_idx``,
    an unknown ``activation_function``, unequal dropout rates; Llama ``hidden_act`` other than silu,
    ``pretraining_tp != 1``, ``attention_dropout != 0``, RoPE scaling (``rope_parameters`` /
    ``rope_scaling`` with a rope_type other than "default")."""
    raise NotImplementedError("config_from_hf: dispatch on model_type, map each field (module docstring)")


def family_of(config: ModelConfig) -> str:
    """``"gpt2"`` (positional "learned": layernorm, every bias, MHA, default head_dim, relu/gelu/gelu_tanh)
    or ``"llama"`` (positional "rope": rmsnorm, swiglu, dropout 0); both Pre-LN without a window.
    ValueError naming the first field that neither family can express."""
    raise NotImplementedError("family_of: check window, norm_placement, positional, then the family's needs")


def config_to_hf(config: ModelConfig) -> dict:
    """The transformers ``config.json`` dict of ``config`` (``model_type``, ``architectures``
    ``["GPT2LMHeadModel"]`` / ``["LlamaForCausalLM"]``, every field of the table); ValueError as
    ``family_of``."""
    raise NotImplementedError("config_to_hf: family_of(config), then the inverse of the table")


def interleaved_to_half(w: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """Rows of a q or k projection (``(n_heads * head_dim, ...)``) reordered per head: new row ``i`` =
    old ``2i``, new row ``i + D/2`` = old ``2i + 1``."""
    raise NotImplementedError("interleaved_to_half: view (H, D/2, 2, ...), swap the middle axes, flatten")


def half_to_interleaved(w: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """The inverse of ``interleaved_to_half``."""
    raise NotImplementedError("half_to_interleaved: view (H, 2, D/2, ...), swap the middle axes, flatten")


def from_hf(source, *, dtype: torch.dtype | None = None, token_ids=None) -> TransformerLM:
    """A ``TransformerLM`` in eval mode with the weights of a transformers GPT-2 or Llama model.

    ``source``: a directory (``config.json`` + ``model.safetensors``) or a transformers model in
    memory (``.config.to_dict()``, ``.state_dict()``). ``dtype``: None keeps the weights' dtype.
    ``token_ids``: the source's id of each Bare-LM token: embedding and head rows in that order.
    Missing or left-over tensors, a tied head that differs from the embedding: ValueError naming them.
    """
    raise NotImplementedError("from_hf: read config + tensors, config_from_hf, rename / transpose / split, load")


def to_hf(model: TransformerLM, path) -> Path:
    """Write ``model`` as a transformers directory (``config.json`` with ``dtype``, ``model.safetensors``;
    no ``lm_head.weight`` when tied); returns the directory."""
    raise NotImplementedError("to_hf: config_to_hf, rename / transpose / fuse (and permute rope rows), save_file")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> character table: the 188 printable bytes (``!``..``~``, ``¡``..``¬``,
    ``®``..``ÿ``) stand for themselves; the other 68, in byte order, become U+0100, U+0101, ..."""
    raise NotImplementedError("bytes_to_unicode: printable bytes map to themselves, the rest to chr(256 + n)")


def save_hf_tokenizer(tokenizer: Tokenizer, path) -> Path:
    """Write ``tokenizer.json`` (BPE model, ByteLevel pre-tokenizer, or Split(pattern) + ByteLevel;
    specials as added tokens) and ``vocab.json`` + ``merges.txt`` with Bare-LM's ids. Two tokens with
    the same bytes: ValueError naming both ids."""
    raise NotImplementedError("save_hf_tokenizer: token strings through bytes_to_unicode, vocab, merges, files")


def load_hf_tokenizer(path) -> tuple[Tokenizer, list[int]]:
    """``(tokenizer, token_ids)`` from ``tokenizer.json`` (or ``vocab.json`` + ``merges.txt``);
    ``token_ids[i]`` is the file's id of Bare-LM id ``i``. Settings Bare-LM cannot express
    (normalizer, byte_fallback, ignore_merges, add_prefix_space, a non-BPE model): ValueError naming them."""
    raise NotImplementedError("load_hf_tokenizer: merges as id pairs (strings -> ids), specials, token_ids")


def load_hf(path, *, dtype: torch.dtype | None = None) -> tuple[TransformerLM, Tokenizer | None]:
    """``(model, tokenizer)`` from a transformers directory; the tokenizer (and row order) when the
    directory has one, else ``(model, None)``."""
    raise NotImplementedError("load_hf: load_hf_tokenizer if present, then from_hf(..., token_ids=...)")
