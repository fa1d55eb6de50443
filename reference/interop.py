"""Hugging Face interop: GPT-2 and Llama weights in and out, byte-level BPE tokenizers in and out.

A Hugging Face model directory (what ``save_pretrained`` writes) holds ``config.json`` and
``model.safetensors`` (or shards listed in ``model.safetensors.index.json``). This module reads
and writes that layout with ``json`` and ``safetensors`` alone: it never imports transformers and
never touches the network. Pickled weights (``pytorch_model.bin``) are refused.

``from_hf(source)`` builds a ``TransformerLM`` from a directory (or from a transformers model in
memory: anything with ``.config.to_dict()`` and ``.state_dict()``); ``to_hf(model, path)`` writes
one. A setting that the other side cannot express is a ``ValueError`` naming the field.

GPT-2 (``model_type="gpt2"``, ``GPT2LMHeadModel``), ``ModelConfig`` <- ``config.json``::

    vocab_size <- vocab_size        context_length <- n_positions     n_layers <- n_layer
    d_model <- n_embd               n_heads <- n_head                 d_ff <- n_inner (None: 4 n_embd)
    activation <- activation_function: "gelu_new" / "gelu_pytorch_tanh" -> "gelu_tanh",
                                       "gelu" -> "gelu", "relu" -> "relu"
    norm_eps <- layer_norm_epsilon  tie_weights <- tie_word_embeddings
    dropout <- resid_pdrop = embd_pdrop = attn_pdrop (Bare-LM has one rate: they must be equal)
    fixed: positional "learned", norm "layernorm", norm_placement "pre", every bias on

Its weights (``transformer.`` prefix optional; the ``attn.bias`` / ``attn.masked_bias`` mask
buffers of old files are skipped). GPT-2 stores its projections as ``Conv1D``: ``(in, out)``, the
TRANSPOSE of ``Linear.weight`` ``(out, in)``. q, k, v are fused in one ``(C, 3C)`` matrix, in that
order along the output axis::

    wte.weight (V, C)                    -> token_embedding.weight
    wpe.weight (P, C)                    -> position_embedding.weight
    h.{l}.ln_1.weight / .bias            -> blocks.{l}.ln_1.weight / .bias
    h.{l}.attn.c_attn.weight (C, 3C)     -> split in 3 along dim 1, each transposed:
                                            blocks.{l}.attn.q_proj / k_proj / v_proj .weight (C, C)
    h.{l}.attn.c_attn.bias (3C,)         -> split in 3: q_proj / k_proj / v_proj .bias
    h.{l}.attn.c_proj.weight (C, C)      -> blocks.{l}.attn.out_proj.weight, transposed (.bias as is)
    h.{l}.ln_2.weight / .bias            -> blocks.{l}.ln_2.weight / .bias
    h.{l}.mlp.c_fc.weight (C, F)         -> blocks.{l}.ffn.w1.weight (F, C), transposed (.bias as is)
    h.{l}.mlp.c_proj.weight (F, C)       -> blocks.{l}.ffn.w2.weight (C, F), transposed (.bias as is)
    ln_f.weight / .bias                  -> ln_f.weight / .bias
    lm_head.weight (V, C)                -> lm_head.weight (absent when tied: it is wte)

Every attention matrix is square, so a forgotten transpose passes every shape check: only the
logits show it.

Llama (``model_type="llama"``, ``LlamaForCausalLM``), ``ModelConfig`` <- ``config.json``::

    vocab_size <- vocab_size        context_length <- max_position_embeddings
    n_layers <- num_hidden_layers   d_model <- hidden_size            n_heads <- num_attention_heads
    n_kv_heads <- num_key_value_heads (grouped-query attention)       d_ff <- intermediate_size
    head_dim <- head_dim            norm_eps <- rms_norm_eps          tie_weights <- tie_word_embeddings
    rope_base <- rope_parameters["rope_theta"] (older files: rope_theta; rope_type must be "default")
    attention_bias <- attention_bias                                  ffn_bias <- mlp_bias
    fixed: positional "rope", rope_pairing "half", norm "rmsnorm", norm_placement "pre",
           activation "swiglu" (hidden_act "silu"), dropout 0 (attention_dropout must be 0)

Its weights (``model.`` prefix; every matrix is an ``nn.Linear``: no transposes)::

    embed_tokens.weight                      -> token_embedding.weight
    layers.{l}.input_layernorm.weight        -> blocks.{l}.ln_1.weight
    layers.{l}.self_attn.q_proj / k_proj / v_proj / o_proj
                                             -> blocks.{l}.attn.q_proj / k_proj / v_proj / out_proj
    layers.{l}.post_attention_layernorm.weight -> blocks.{l}.ln_2.weight
    layers.{l}.mlp.gate_proj                 -> blocks.{l}.ffn.w1   (the silu branch)
    layers.{l}.mlp.up_proj                   -> blocks.{l}.ffn.w3   (the linear branch)
    layers.{l}.mlp.down_proj                 -> blocks.{l}.ffn.w2
    norm.weight                              -> ln_f.weight
    lm_head.weight                           -> lm_head.weight (absent when tied)

RoPE pairs: transformers' Llama rotates ``(x[i], x[i + D/2])`` ("rotate_half"), so an imported
model gets ``rope_pairing="half"`` and the weights go over unchanged. A Bare-LM model with
``rope_pairing="interleaved"`` (pairs ``(x[2i], x[2i+1])``) is exported by permuting, in every head,
the rows of ``Wq`` and ``Wk`` (and their biases): new row ``i`` = old row ``2i``, new row
``i + D/2`` = old row ``2i + 1`` (``interleaved_to_half``). Queries and keys move together, so the
scores ``q . k`` are unchanged and only the pairing convention changes. ``v`` is not permuted.

Tokenizers (byte-level BPE, as GPT-2, RoBERTa and Llama 3 use): ``tokenizer.json`` (the
``tokenizers`` library's file) and GPT-2's ``vocab.json`` + ``merges.txt``. Token strings are bytes
written through GPT-2's byte-to-unicode table (``bytes_to_unicode``: printable bytes stand for
themselves, the other 68 are moved to U+0100 onwards, so a space is ``"Ġ"``). ``save_hf_tokenizer``
keeps Bare-LM's ids (byte ``b`` is id ``b``, merge ``n`` is id ``256 + n``, then the specials), so
an exported model and tokenizer fit together. Other files number their tokens their own way (GPT-2
gives id 0 to ``"!"``): ``load_hf_tokenizer`` returns the tokenizer and ``token_ids``, the file's id
of each Bare-LM id, and ``from_hf(source, token_ids=...)`` reorders the embedding rows to match.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .model import ModelConfig, TransformerLM
from .tokenizer import GPT2_PATTERN, Tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
FAMILIES = ("gpt2", "llama")   # the model_type values this module reads and writes

_GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
_GPT2_ACTIVATION_NAMES = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}


# =============================================================================================
# Configs
# =============================================================================================

def config_from_hf(hf: Mapping) -> ModelConfig:
    """The ``ModelConfig`` of a transformers ``config.json`` (a dict); ValueError naming any field
    that Bare-LM cannot express."""
    if not isinstance(hf, Mapping):
        raise TypeError(f"the Hugging Face config must be a mapping (config.json), got {type(hf).__name__}")
    model_type = hf.get("model_type")
    if model_type == "gpt2":
        return _gpt2_config_from_hf(hf)
    if model_type == "llama":
        return _llama_config_from_hf(hf)
    raise ValueError(f"model_type must be one of {', '.join(map(repr, FAMILIES))}; got {model_type!r}")


def _require(hf: Mapping, name: str):
    if name not in hf or hf[name] is None:
        raise ValueError(f"the Hugging Face config has no {name!r}")
    return hf[name]


def _must_be(hf: Mapping, name: str, allowed, default, why: str) -> None:
    value = hf.get(name, default)
    if value not in allowed:
        raise ValueError(f"{name}={value!r} cannot be expressed in Bare-LM ({why})")


def _gpt2_config_from_hf(hf: Mapping) -> ModelConfig:
    _must_be(hf, "add_cross_attention", (False,), False, "no cross-attention")
    _must_be(hf, "scale_attn_weights", (True,), True, "scores are always divided by sqrt(head_dim)")
    _must_be(hf, "scale_attn_by_inverse_layer_idx", (False,), False, "no per-layer score scaling")
    activation = hf.get("activation_function", "gelu_new")
    if activation not in _GPT2_ACTIVATIONS:
        raise ValueError(f"activation_function={activation!r} cannot be expressed in Bare-LM; "
                         f"known: {sorted(_GPT2_ACTIVATIONS)}")
    rates = {name: float(hf.get(name, 0.1)) for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop")}
    if len(set(rates.values())) > 1:
        raise ValueError(f"resid_pdrop, embd_pdrop and attn_pdrop must be equal (Bare-LM has one dropout "
                         f"rate), got {rates}")
    return ModelConfig(
        vocab_size=_require(hf, "vocab_size"), context_length=_require(hf, "n_positions"),
        n_layers=_require(hf, "n_layer"), d_model=_require(hf, "n_embd"), n_heads=_require(hf, "n_head"),
        d_ff=hf.get("n_inner"), dropout=rates["resid_pdrop"], activation=_GPT2_ACTIVATIONS[activation],
        norm="layernorm", norm_placement="pre", positional="learned",
        tie_weights=bool(hf.get("tie_word_embeddings", True)), bias=True,
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)))


def _llama_rope_theta(hf: Mapping) -> float:
    params = hf.get("rope_parameters")
    if params is not None:
        if params.get("rope_type", "default") != "default":
            raise ValueError(f"rope_parameters={dict(params)!r} cannot be expressed in Bare-LM "
                             f"(only rope_type 'default': no RoPE scaling)")
        return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    scaling = hf.get("rope_scaling")
    if scaling is not None and scaling.get("rope_type", scaling.get("type", "default")) != "default":
        raise ValueError(f"rope_scaling={dict(scaling)!r} cannot be expressed in Bare-LM (no RoPE scaling)")
    return float(hf.get("rope_theta", 10000.0))


def _llama_config_from_hf(hf: Mapping) -> ModelConfig:
    _must_be(hf, "hidden_act", ("silu",), "silu", "the SwiGLU gate is silu")
    _must_be(hf, "pretraining_tp", (1, None), 1, "no tensor-parallel slicing of the projections")
    if float(hf.get("attention_dropout", 0.0)) != 0.0:
        raise ValueError(f"attention_dropout={hf['attention_dropout']!r} cannot be expressed in Bare-LM "
                         f"(its dropout also acts on the embeddings and the residual stream; Llama has none)")
    d_model, n_heads = _require(hf, "hidden_size"), _require(hf, "num_attention_heads")
    head_dim = hf.get("head_dim")
    return ModelConfig(
        vocab_size=_require(hf, "vocab_size"), context_length=_require(hf, "max_position_embeddings"),
        n_layers=_require(hf, "num_hidden_layers"), d_model=d_model, n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads, d_ff=_require(hf, "intermediate_size"),
        dropout=0.0, activation="swiglu", norm="rmsnorm", norm_placement="pre", positional="rope",
        tie_weights=bool(hf.get("tie_word_embeddings", False)), bias=False,
        attention_bias=bool(hf.get("attention_bias", False)), ffn_bias=bool(hf.get("mlp_bias", False)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)), rope_base=_llama_rope_theta(hf),
        rope_pairing="half", head_dim=None if head_dim in (None, d_model // n_heads) else head_dim)


def family_of(config: ModelConfig) -> str:
    """``"gpt2"`` or ``"llama"``: the transformers family that can express ``config``; ValueError
    naming the first field that neither can."""
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
    if config.window is not None:
        raise ValueError(f"window={config.window} (sliding-window attention) cannot be expressed by "
                         f"transformers' GPT-2 or Llama")
    if config.norm_placement != "pre":
        raise ValueError(f"norm_placement={config.norm_placement!r} cannot be expressed by transformers' "
                         f"GPT-2 or Llama (both are Pre-LN)")
    if config.positional == "learned":
        if config.activation not in _GPT2_ACTIVATION_NAMES:
            raise ValueError(f"activation={config.activation!r} cannot be expressed by GPT-2 "
                             f"(positional='learned'); use one of {sorted(_GPT2_ACTIVATION_NAMES)}")
        family = "gpt2"   # field: (its value, what GPT-2 needs)
        needed = {"norm": (config.norm, "layernorm"), "bias": (config.bias, True),
                  "attention_bias": (config.resolved_attention_bias, True),
                  "ffn_bias": (config.resolved_ffn_bias, True),
                  "n_kv_heads": (config.resolved_n_kv_heads, config.n_heads),
                  "head_dim": (config.resolved_head_dim, config.d_model // config.n_heads)}
    elif config.positional == "rope":
        family = "llama"
        needed = {"norm": (config.norm, "rmsnorm"), "activation": (config.activation, "swiglu"),
                  "dropout": (config.dropout, 0.0)}
    else:
        raise ValueError(f"positional={config.positional!r} cannot be expressed by transformers' GPT-2 "
                         f"('learned') or Llama ('rope')")
    for name, (value, wanted) in needed.items():
        if value != wanted:
            raise ValueError(f"{name}={value!r} cannot be expressed by {family} "
                             f"(positional={config.positional!r}); it needs {name}={wanted!r}")
    return family


def config_to_hf(config: ModelConfig) -> dict:
    """The transformers ``config.json`` (a dict) of a ``ModelConfig``; ValueError naming any field
    that transformers' GPT-2 / Llama cannot express (see ``family_of``)."""
    family = family_of(config)
    if family == "gpt2":
        return {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": config.vocab_size, "n_positions": config.context_length,
            "n_layer": config.n_layers, "n_embd": config.d_model, "n_head": config.n_heads,
            "n_inner": config.d_ff, "activation_function": _GPT2_ACTIVATION_NAMES[config.activation],
            "layer_norm_epsilon": config.norm_eps, "tie_word_embeddings": config.tie_weights,
            "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
            "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False, "add_cross_attention": False,
            "bos_token_id": None, "eos_token_id": None,
        }
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": config.vocab_size, "max_position_embeddings": config.context_length,
        "num_hidden_layers": config.n_layers, "hidden_size": config.d_model,
        "num_attention_heads": config.n_heads, "num_key_value_heads": config.resolved_n_kv_heads,
        "head_dim": config.resolved_head_dim, "intermediate_size": config.resolved_d_ff,
        "hidden_act": "silu", "rms_norm_eps": config.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base},
        "rope_theta": config.rope_base,   # older transformers read this one
        "attention_bias": config.resolved_attention_bias, "mlp_bias": config.resolved_ffn_bias,
        "attention_dropout": 0.0, "tie_word_embeddings": config.tie_weights, "pretraining_tp": 1,
        "bos_token_id": None, "eos_token_id": None,
    }


# =============================================================================================
# Weights
# =============================================================================================

def interleaved_to_half(w: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """Rows of a q or k projection (``(n_heads * head_dim, ...)``: weight or bias) reordered so that
    RoPE on half-split pairs gives what RoPE on interleaved pairs gave: per head, new row ``i`` =
    old ``2i``, new row ``i + D/2`` = old ``2i + 1``."""
    rest = w.shape[1:]
    w = w.reshape(n_heads, head_dim // 2, 2, *rest)      # (H, D/2, 2, ...): row 2i + j at [i, j]
    return w.transpose(1, 2).reshape(n_heads * head_dim, *rest)  # (H, 2, D/2, ...): j first


def half_to_interleaved(w: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """The inverse of ``interleaved_to_half``."""
    rest = w.shape[1:]
    w = w.reshape(n_heads, 2, head_dim // 2, *rest)
    return w.transpose(1, 2).reshape(n_heads * head_dim, *rest)


def _strip_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in tensors.items()}


def _gpt2_names(config: ModelConfig) -> dict[str, str]:
    """Bare-LM name -> GPT-2 name for the tensors that go over as they are (no transpose, no split)."""
    names = {"token_embedding.weight": "wte.weight", "position_embedding.weight": "wpe.weight",
             "ln_f.weight": "ln_f.weight", "ln_f.bias": "ln_f.bias"}
    for l in range(config.n_layers):
        for ours, theirs in (("ln_1", "ln_1"), ("ln_2", "ln_2"), ("attn.out_proj", "attn.c_proj"),
                             ("ffn.w1", "mlp.c_fc"), ("ffn.w2", "mlp.c_proj")):
            names[f"blocks.{l}.{ours}.bias"] = f"h.{l}.{theirs}.bias"
    return names


def _gpt2_to_bare(config: ModelConfig, hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    hf = _strip_prefix(hf, "transformer.")
    hf = {k: v for k, v in hf.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}  # mask buffers
    used, out = set(), {}

    def take(name):
        if name not in hf:
            raise ValueError(f"the GPT-2 weights have no tensor {name!r}")
        used.add(name)
        return hf[name]

    for ours, theirs in _gpt2_names(config).items():
        out[ours] = take(theirs)
    c = config.d_model
    for l in range(config.n_layers):
        p = f"blocks.{l}."
        out[p + "ln_1.weight"], out[p + "ln_2.weight"] = take(f"h.{l}.ln_1.weight"), take(f"h.{l}.ln_2.weight")
        w, b = take(f"h.{l}.attn.c_attn.weight"), take(f"h.{l}.attn.c_attn.bias")     # (C, 3C), (3C,)
        for i, proj in enumerate(("q_proj", "k_proj", "v_proj")):
            out[p + f"attn.{proj}.weight"] = w[:, i * c:(i + 1) * c].t()                # Conv1D -> Linear
            out[p + f"attn.{proj}.bias"] = b[i * c:(i + 1) * c]
        out[p + "attn.out_proj.weight"] = take(f"h.{l}.attn.c_proj.weight").t()
        out[p + "ffn.w1.weight"] = take(f"h.{l}.mlp.c_fc.weight").t()
        out[p + "ffn.w2.weight"] = take(f"h.{l}.mlp.c_proj.weight").t()
    _head(config, hf, out, used, "wte.weight")
    return out


def _bare_to_gpt2(model: TransformerLM) -> dict[str, torch.Tensor]:
    config, sd = model.config, model.state_dict()
    out = {"transformer." + theirs: sd[ours] for ours, theirs in _gpt2_names(config).items()}
    for l in range(config.n_layers):
        p, h = f"blocks.{l}.", f"transformer.h.{l}."
        out[h + "ln_1.weight"], out[h + "ln_2.weight"] = sd[p + "ln_1.weight"], sd[p + "ln_2.weight"]
        out[h + "attn.c_attn.weight"] = torch.cat(
            [sd[p + f"attn.{proj}.weight"].t() for proj in ("q_proj", "k_proj", "v_proj")], dim=1)  # (C, 3C)
        out[h + "attn.c_attn.bias"] = torch.cat([sd[p + f"attn.{proj}.bias"] for proj in ("q_proj", "k_proj", "v_proj")])
        out[h + "attn.c_proj.weight"] = sd[p + "attn.out_proj.weight"].t()
        out[h + "mlp.c_fc.weight"] = sd[p + "ffn.w1.weight"].t()
        out[h + "mlp.c_proj.weight"] = sd[p + "ffn.w2.weight"].t()
    if not config.tie_weights:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def _llama_names(config: ModelConfig) -> dict[str, str]:
    """Bare-LM name -> Llama name (without the ``model.`` prefix, except ``lm_head``)."""
    names = {"token_embedding.weight": "embed_tokens.weight", "ln_f.weight": "norm.weight"}
    pieces = [("ln_1.weight", "input_layernorm.weight"), ("ln_2.weight", "post_attention_layernorm.weight")]
    projections = [("attn.q_proj", "self_attn.q_proj"), ("attn.k_proj", "self_attn.k_proj"),
                   ("attn.v_proj", "self_attn.v_proj"), ("attn.out_proj", "self_attn.o_proj")]
    ffn = [("ffn.w1", "mlp.gate_proj"), ("ffn.w3", "mlp.up_proj"), ("ffn.w2", "mlp.down_proj")]
    for ours, theirs in projections + ffn:
        pieces.append((ours + ".weight", theirs + ".weight"))
    if config.resolved_attention_bias:
        pieces += [(ours + ".bias", theirs + ".bias") for ours, theirs in projections]
    if config.resolved_ffn_bias:
        pieces += [(ours + ".bias", theirs + ".bias") for ours, theirs in ffn]
    for l in range(config.n_layers):
        for ours, theirs in pieces:
            names[f"blocks.{l}.{ours}"] = f"layers.{l}.{theirs}"
    return names


def _llama_to_bare(config: ModelConfig, hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    hf = _strip_prefix(hf, "model.")
    hf = {k: v for k, v in hf.items() if not k.endswith("rotary_emb.inv_freq")}  # old files keep RoPE's table
    used, out = set(), {}
    for ours, theirs in _llama_names(config).items():
        if theirs not in hf:
            raise ValueError(f"the Llama weights have no tensor {theirs!r}")
        used.add(theirs)
        out[ours] = hf[theirs]
    _head(config, hf, out, used, "embed_tokens.weight")
    return out


def _bare_to_llama(model: TransformerLM) -> dict[str, torch.Tensor]:
    config, sd = model.config, model.state_dict()
    h, d = config.n_heads, config.resolved_head_dim
    h_kv = config.resolved_n_kv_heads
    out = {}
    for ours, theirs in _llama_names(config).items():
        t = sd[ours]
        if config.rope_pairing == "interleaved" and ".attn.q_proj." in ours:
            t = interleaved_to_half(t, h, d)
        elif config.rope_pairing == "interleaved" and ".attn.k_proj." in ours:
            t = interleaved_to_half(t, h_kv, d)
        out["model." + theirs] = t
    if not config.tie_weights:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return out


def _head(config: ModelConfig, hf: dict, out: dict, used: set, embedding: str) -> None:
    """The output head: its own tensor when untied; when tied, the embedding (a stored copy must equal it)."""
    if config.tie_weights:
        if "lm_head.weight" in hf:
            used.add("lm_head.weight")
            if not torch.equal(hf["lm_head.weight"], hf[embedding]):
                raise ValueError("tie_word_embeddings is true, but lm_head.weight differs from the embedding")
    else:
        if "lm_head.weight" not in hf:
            raise ValueError("tie_word_embeddings is false, but the weights have no 'lm_head.weight'")
        used.add("lm_head.weight")
        out["lm_head.weight"] = hf["lm_head.weight"]
    unused = sorted(set(hf) - used)
    if unused:
        raise ValueError(f"tensors Bare-LM has no place for: {unused[:5]}{' ...' if len(unused) > 5 else ''}")


# =============================================================================================
# Files
# =============================================================================================

def _read_json(file: Path, what: str) -> dict:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no {what} at {file}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file} is not valid JSON ({err})") from None


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    index = directory / WEIGHTS_INDEX_FILE
    if (directory / WEIGHTS_FILE).exists():
        files = [directory / WEIGHTS_FILE]
    elif index.exists():
        files = [directory / f for f in sorted(set(_read_json(index, "index")["weight_map"].values()))]
    else:
        found = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
        raise FileNotFoundError(f"no {WEIGHTS_FILE} (or {WEIGHTS_INDEX_FILE}) in {directory}; found {found} "
                                f"(pickled .bin weights are not read)")
    tensors = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    return tensors


def from_hf(source, *, dtype: torch.dtype | None = None, token_ids=None) -> TransformerLM:
    """A ``TransformerLM`` (in eval mode) with the weights of a transformers GPT-2 or Llama model.

    ``source``: a directory (``config.json`` + ``model.safetensors``) or a transformers model in
    memory (``.config.to_dict()``, ``.state_dict()``). ``dtype``: None keeps the weights' dtype.
    ``token_ids``: the source's id of each Bare-LM token (from ``load_hf_tokenizer``): the embedding
    and head rows are taken in that order (``vocab_size = len(token_ids)``).
    """
    if hasattr(source, "state_dict") and hasattr(source, "config"):
        hf_config = source.config.to_dict()
        tensors = {k: v.detach().clone() for k, v in source.state_dict().items()}
    elif isinstance(source, (str, os.PathLike)):
        directory = Path(source)
        hf_config = _read_json(directory / CONFIG_FILE, CONFIG_FILE)
        tensors = _read_weights(directory)
    else:
        raise TypeError(f"source must be a directory path or a transformers model, got {type(source).__name__}")
    config = config_from_hf(hf_config)
    family = hf_config["model_type"]
    ours = _gpt2_to_bare(config, tensors) if family == "gpt2" else _llama_to_bare(config, tensors)
    if token_ids is not None:
        token_ids = torch.as_tensor(list(token_ids), dtype=torch.long)
        if token_ids.numel() == 0 or bool(((token_ids < 0) | (token_ids >= config.vocab_size)).any()):
            raise ValueError(f"token_ids must be ids in [0, vocab_size={config.vocab_size})")
        for name in ("token_embedding.weight", "lm_head.weight"):
            if name in ours:
                ours[name] = ours[name][token_ids]
        config.vocab_size = len(token_ids)
    if dtype is None:
        dtype = ours["token_embedding.weight"].dtype
    model = TransformerLM(config).to(dtype)
    expected = model.state_dict()
    for name, tensor in ours.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ValueError(f"tensor for {name} has shape {tuple(tensor.shape)}, the config needs "
                             f"{tuple(expected[name].shape)}")
    missing = sorted(set(expected) - set(ours) - ({"lm_head.weight"} if config.tie_weights else set()))
    if missing:
        raise ValueError(f"no weights for {missing}")
    model.load_state_dict(ours, strict=False)
    return model.eval()


def to_hf(model: TransformerLM, path) -> Path:
    """Write ``model`` as a transformers directory (``config.json`` + ``model.safetensors``), loadable
    with ``AutoModelForCausalLM.from_pretrained(path)``; returns the directory."""
    if not isinstance(model, TransformerLM):
        raise TypeError(f"model must be a TransformerLM, got {type(model).__name__}")
    hf_config = config_to_hf(model.config)
    tensors = _bare_to_gpt2(model) if hf_config["model_type"] == "gpt2" else _bare_to_llama(model)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    hf_config["dtype"] = str(model.token_embedding.weight.dtype).removeprefix("torch.")
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    (directory / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return directory


# =============================================================================================
# Tokenizers
# =============================================================================================

def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> character table: the 188 printable bytes (``!``..``~``, ``¡``..``¬``,
    ``®``..``ÿ``) stand for themselves; the other 68, in byte order, become U+0100, U+0101, ..."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    table, n = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


def _token_strings(tokenizer: Tokenizer) -> dict[int, str]:
    """Bare-LM id -> the token's string in byte-level BPE files (bytes through ``bytes_to_unicode``)."""
    table = bytes_to_unicode()
    strings, seen = {}, {}
    for i in range(256 + len(tokenizer.merges)):
        s = "".join(table[b] for b in tokenizer.vocab[i])
        if s in seen:
            raise ValueError(f"tokens {seen[s]} and {i} have the same bytes {tokenizer.vocab[i]!r}: a "
                             f"byte-level BPE file (one id per string) cannot express that")
        seen[s] = i
        strings[i] = s
    return strings


def save_hf_tokenizer(tokenizer: Tokenizer, path) -> Path:
    """Write ``tokenizer.json`` and GPT-2's ``vocab.json`` + ``merges.txt`` into directory ``path``,
    with Bare-LM's ids; returns the directory."""
    if not isinstance(tokenizer, Tokenizer):
        raise TypeError(f"tokenizer must be a Tokenizer, got {type(tokenizer).__name__}")
    strings = _token_strings(tokenizer)
    vocab = {s: i for i, s in strings.items()}
    merges = [f"{strings[a]} {strings[b]}" for a, b in tokenizer.merges]
    if tokenizer.pattern == GPT2_PATTERN:   # ByteLevel's own regex is GPT-2's pattern
        pre_tokenizer = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    else:
        byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
        pre_tokenizer = byte_level if tokenizer.pattern is None else {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": tokenizer.pattern}, "behavior": "Isolated", "invert": False},
            byte_level]}
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for s, i in tokenizer.special_tokens.items()]
    data = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None, "pre_tokenizer": pre_tokenizer, "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": merges},
    }
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / TOKENIZER_FILE).write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    full_vocab = dict(vocab, **tokenizer.special_tokens)
    (directory / VOCAB_FILE).write_text(json.dumps(full_vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    (directory / MERGES_FILE).write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8")
    return directory


def _pattern_of(pre: Mapping | None, file: Path) -> str | None:
    """The pre-tokenization regex of a tokenizer.json ``pre_tokenizer`` that is byte-level."""
    def byte_level(p):
        if p.get("add_prefix_space", False):
            raise ValueError(f"{file}: pre_tokenizer add_prefix_space=true cannot be expressed in Bare-LM")
        return GPT2_PATTERN if p.get("use_regex", True) else None

    if pre is None:
        raise ValueError(f"{file}: pre_tokenizer is null; Bare-LM reads byte-level BPE (a ByteLevel pre_tokenizer)")
    if pre.get("type") == "ByteLevel":
        return byte_level(pre)
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if (len(steps) == 2 and steps[0].get("type") == "Split" and steps[1].get("type") == "ByteLevel"
            and "Regex" in steps[0].get("pattern", {}) and steps[0].get("behavior") == "Isolated"
            and not steps[0].get("invert", False) and byte_level(steps[1]) is None):
        return steps[0]["pattern"]["Regex"]
    raise ValueError(f"{file}: pre_tokenizer {json.dumps(pre)[:120]} cannot be expressed in Bare-LM "
                     f"(ByteLevel, or Sequence[Split(Regex, Isolated), ByteLevel(use_regex=false)])")


def _read_tokenizer_json(file: Path):
    data = _read_json(file, TOKENIZER_FILE)
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"{file}: model type {model.get('type')!r} cannot be expressed in Bare-LM (byte-level BPE only)")
    for name, allowed in (("byte_fallback", (False, None)), ("ignore_merges", (False, None)),
                          ("dropout", (None,)), ("continuing_subword_prefix", (None, "")),
                          ("end_of_word_suffix", (None, ""))):
        if model.get(name) not in allowed:
            raise ValueError(f"{file}: model {name}={model.get(name)!r} cannot be expressed in Bare-LM")
    if data.get("normalizer") is not None:
        raise ValueError(f"{file}: normalizer {json.dumps(data['normalizer'])[:80]} cannot be expressed in Bare-LM")
    pattern = _pattern_of(data.get("pre_tokenizer"), file)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
    added = {t["content"]: t["id"] for t in data.get("added_tokens", [])}
    return model.get("vocab", {}), merges, added, pattern


def load_hf_tokenizer(path) -> tuple[Tokenizer, list[int]]:
    """``(tokenizer, token_ids)`` from a directory with ``tokenizer.json`` (or ``vocab.json`` +
    ``merges.txt``), or from such a file. ``token_ids[i]`` is the file's id of Bare-LM id ``i``.

    Vocabulary entries that are neither a byte, a merge's result nor a special token are a
    ValueError naming them; so is any setting Bare-LM cannot express (naming it)."""
    path = Path(path)
    if path.is_dir() and (path / TOKENIZER_FILE).exists():
        path = path / TOKENIZER_FILE
    if path.is_file() and path.name != VOCAB_FILE:
        vocab, merges, added, pattern = _read_tokenizer_json(path)
    else:
        directory = path.parent if path.is_file() else path
        vocab = _read_json(directory / VOCAB_FILE, VOCAB_FILE)
        try:
            lines = (directory / MERGES_FILE).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise FileNotFoundError(f"no {TOKENIZER_FILE}, or {VOCAB_FILE} + {MERGES_FILE}, in {directory}") from None
        merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
        added, pattern, path = {}, GPT2_PATTERN, directory / MERGES_FILE
    table = bytes_to_unicode()
    ours = {table[b]: b for b in range(256)}                        # token string -> Bare-LM id
    pairs = []
    for n, merge in enumerate(merges):
        if len(merge) != 2 or merge[0] not in ours or merge[1] not in ours:
            raise ValueError(f"{path}: merge {n} {' '.join(merge)!r} is not two known tokens")
        pairs.append((ours[merge[0]], ours[merge[1]]))
        ours.setdefault(merge[0] + merge[1], 256 + n)
    strings = {b: table[b] for b in range(256)}
    strings.update({256 + n: a + b for n, (a, b) in enumerate(merges)})
    specials = {s: i for s, i in vocab.items() if s not in ours and s not in added}
    if path.name != MERGES_FILE and specials:                      # tokenizer.json lists its specials
        raise ValueError(f"{path}: vocabulary entries that are neither bytes, merges nor added tokens: "
                         f"{sorted(specials)[:5]}")
    specials.update({s: i for s, i in added.items() if s not in ours})
    specials = dict(sorted(specials.items(), key=lambda item: item[1]))
    tokenizer = Tokenizer(pairs, list(specials), pattern=pattern)
    token_ids = []
    for i in range(256 + len(pairs)):
        s = strings[i]
        if s not in vocab:
            raise ValueError(f"{path}: token {s!r} (made by the merges) is not in the vocabulary")
        token_ids.append(vocab[s])
    token_ids += list(specials.values())
    return tokenizer, token_ids


def load_hf(path, *, dtype: torch.dtype | None = None) -> tuple[TransformerLM, Tokenizer | None]:
    """``(model, tokenizer)`` from a transformers directory: the tokenizer when the directory has one
    (then the model's rows follow the tokenizer's ids), else None. For ``bare-lm generate --hf``."""
    directory = Path(path)
    has_tokenizer = (directory / TOKENIZER_FILE).exists() or (directory / VOCAB_FILE).exists()
    if not has_tokenizer:
        return from_hf(directory, dtype=dtype), None
    tokenizer, token_ids = load_hf_tokenizer(directory)
    return from_hf(directory, dtype=dtype, token_ids=token_ids), tokenizer
