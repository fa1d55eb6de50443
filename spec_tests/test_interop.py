"""Spec of ``interop``: GPT-2 and Llama weights in and out of Hugging Face transformers, byte-level
BPE tokenizer files in and out, and the ModelConfig options they need.

The oracles are transformers and ``tokenizers`` themselves (the ``test`` extra; tests that need
them skip without them), run on tiny models built from configs: nothing is downloaded. Every
weight, gain and bias is redrawn at random before comparing, so no wrong mapping hides behind an
initial 0 or 1. The ModelConfig options (``norm_eps``, ``rope_base``, ``rope_pairing``,
``head_dim``, ``attention_bias``, ``ffn_bias``, ``activation="gelu_tanh"``) are checked here
against written-out formulas and torch's own functions.
"""

import dataclasses
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from .support import assert_close, assert_equal, randint, randn, raises_clear, seed_all, seeds

VOCAB = 101          # a vocabulary of the tiny models
CONTEXT = 48         # their context length: a prompt of 8 and 30 greedy steps fit
LOGITS_ATOL = 1e-5   # float32 logits against transformers' (measured gap about 1e-6)


@pytest.fixture(scope="module")
def interop(impl):
    return impl.component("interop")


@pytest.fixture(scope="module")
def model(impl):
    return impl.component("model")


def _transformers():
    os.environ["HF_HUB_OFFLINE"] = "1"            # never the network
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    tf = pytest.importorskip("transformers", reason="transformers (a test-only extra) is not installed")
    tf.logging.set_verbosity_error()
    return tf


def _randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter redrawn: 1-D gains (names ending in a norm's ``weight``) ~ 1 + N(0, 0.2^2),
    everything else (matrices, biases, embeddings) ~ N(0, 0.1^2)."""
    with torch.no_grad():
        for i, (name, p) in enumerate(module.named_parameters()):
            is_gain = p.dim() == 1 and name.endswith("weight")
            value = randn(p.shape, seed + i, torch.float64, 0.2 if is_gain else 0.1) + (1.0 if is_gain else 0.0)
            p.copy_(value.to(p.dtype))
    return module.eval()


def _gpt2(tf, tie: bool, seed: int, **overrides):
    cfg = dict(vocab_size=VOCAB, n_positions=CONTEXT, n_embd=32, n_layer=2, n_head=4, n_inner=None,
               activation_function="gelu_new", layer_norm_epsilon=1e-5, tie_word_embeddings=tie,
               bos_token_id=None, eos_token_id=None, pad_token_id=None)
    cfg.update(overrides)
    seed_all(seed)
    return _randomise(tf.GPT2LMHeadModel(tf.GPT2Config(**cfg)), seed)


def _llama(tf, tie: bool, seed: int, **overrides):
    cfg = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CONTEXT,
               rms_norm_eps=1e-6, rope_theta=500000.0, tie_word_embeddings=tie, hidden_act="silu",
               bos_token_id=None, eos_token_id=None, pad_token_id=None)
    cfg.update(overrides)
    seed_all(seed)
    return _randomise(tf.LlamaForCausalLM(tf.LlamaConfig(**cfg)), seed)


FAMILIES = {"gpt2": _gpt2, "llama": _llama}
CASES = [(family, tie) for family in FAMILIES for tie in (True, False)]


def _ids(seed: int, t: int = 20, b: int = 2) -> torch.Tensor:
    return randint(0, VOCAB, (b, t), seed)


def _hf_logits(hf_model, ids) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(ids).logits


def _our_logits(lm, ids) -> torch.Tensor:
    with torch.no_grad():
        return lm(ids)[0]


# =============================================================================================
# ModelConfig options
# =============================================================================================

NEW_FIELDS = {"norm_eps": 1e-5, "rope_base": 10000.0, "rope_pairing": "interleaved", "head_dim": None,
              "attention_bias": None, "ffn_bias": None}


def test_new_options_default_to_todays_model(model):
    """The new ModelConfig fields default to Bare-LM's own model: eps 1e-5, RoPE base 10000,
    interleaved pairs, head_dim d_model / n_heads, both bias switches following ``bias``."""
    cfg = model.ModelConfig(vocab_size=10, context_length=8, n_layers=1, d_model=12, n_heads=3)
    for name, value in NEW_FIELDS.items():
        assert_equal(getattr(cfg, name), value, what=f"ModelConfig().{name}")
    assert_equal(cfg.resolved_head_dim, 4, what="resolved_head_dim of d_model 12, n_heads 3")
    for bias in (True, False):
        cfg = model.ModelConfig(vocab_size=10, context_length=8, n_layers=1, d_model=12, n_heads=3, bias=bias)
        assert_equal((cfg.resolved_attention_bias, cfg.resolved_ffn_bias), (bias, bias),
                     what=f"(resolved_attention_bias, resolved_ffn_bias) with bias={bias}")


@given(norm_eps=st.sampled_from([1e-6, 1e-5, 0.25]), rope_base=st.sampled_from([10000.0, 500000.0, 7.5]),
       rope_pairing=st.sampled_from(["interleaved", "half"]), head_dim=st.sampled_from([None, 2, 6]),
       attention_bias=st.sampled_from([None, True, False]), ffn_bias=st.sampled_from([None, True, False]))
def test_new_options_round_trip_through_json(model, norm_eps, rope_base, rope_pairing, head_dim,
                                             attention_bias, ffn_bias):
    """``to_dict`` holds every new option and ``from_dict`` (through JSON) restores it."""
    cfg = model.ModelConfig(vocab_size=10, context_length=8, n_layers=1, d_model=8, n_heads=2,
                            positional="rope", norm_eps=norm_eps, rope_base=rope_base,
                            rope_pairing=rope_pairing, head_dim=head_dim, attention_bias=attention_bias,
                            ffn_bias=ffn_bias)
    d = cfg.to_dict()
    for name in NEW_FIELDS:
        assert_equal(d.get(name, "<missing>"), getattr(cfg, name), what=f"to_dict()[{name!r}]")
    assert_equal(model.ModelConfig.from_dict(json.loads(json.dumps(d))), cfg, what="from_dict(json(to_dict()))")


@pytest.mark.parametrize("field, value, error", [
    ("norm_eps", 0.0, ValueError), ("norm_eps", -1e-6, ValueError), ("rope_base", 1.0, ValueError),
    ("rope_pairing", "rotate_half", ValueError), ("head_dim", 0, ValueError), ("head_dim", 2.0, TypeError),
    ("attention_bias", 1, TypeError), ("ffn_bias", "yes", TypeError),
])
def test_bad_new_option_is_a_clear_error(model, field, value, error):
    """A bad value for a new option is an error naming the field."""
    with raises_clear(error, field):
        model.ModelConfig(vocab_size=10, context_length=8, n_layers=1, d_model=8, n_heads=2,
                          positional="rope", **{field: value})


def test_head_dim_frees_d_model_from_n_heads(model):
    """With ``head_dim`` set, ``d_model`` need not be a multiple of ``n_heads``; odd head_dim with
    rope is still an error naming head_dim."""
    model.ModelConfig(vocab_size=10, context_length=8, n_layers=1, d_model=10, n_heads=4, head_dim=4)
    with raises_clear(ValueError, "head_dim"):
        model.ModelConfig(vocab_size=10, context_length=8, n_layers=1, d_model=12, n_heads=4, head_dim=3,
                          positional="rope")


@given(x_seed=seeds, shape=st.sampled_from([(3,), (2, 4)]), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_gelu_tanh_is_the_tanh_approximation(impl, x_seed, shape, dtype):
    """``gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` = torch's
    ``gelu(approximate="tanh")``, which is not exact GELU."""
    ff = impl.component("feedforward")
    x = randn(shape, x_seed, dtype, 3.0)
    assert_close(ff.gelu_tanh(x), F.gelu(x, approximate="tanh"), what="gelu_tanh(x)")
    probe = torch.tensor([2.7], dtype=torch.float64)           # where the two differ most: 4.7e-4
    assert abs(float(ff.gelu_tanh(probe) - F.gelu(probe))) > 4e-4, "gelu_tanh must not be exact GELU"


@pytest.mark.parametrize("fast", [False, True])
@given(seed=seeds, bias=st.booleans())
def test_feedforward_gelu_tanh_equals_torch(impl, fast, seed, bias):
    """``FeedForward(activation="gelu_tanh")`` is ``w2(gelu_tanh(w1 x))``, fast path or not."""
    ff = impl.component("feedforward")
    seed_all(seed)
    layer = _randomise(ff.FeedForward(6, 10, activation="gelu_tanh", bias=bias, fast=fast).double(), seed)
    x = randn((2, 3, 6), seed, torch.float64)
    b1 = None if layer.w1.bias is None else layer.w1.bias
    b2 = None if layer.w2.bias is None else layer.w2.bias
    expected = F.linear(F.gelu(F.linear(x, layer.w1.weight, b1), approximate="tanh"), layer.w2.weight, b2)
    assert_close(layer(x), expected, what=f"FeedForward(gelu_tanh, fast={fast})(x)")


def _rope_oracle(x: torch.Tensor, positions: torch.Tensor, base: float, pairing: str) -> torch.Tensor:
    """RoPE written out: theta_i = base^(-2i/D); interleaved pairs (2i, 2i+1) or half pairs (i, i+D/2)."""
    d = x.shape[-1]
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)              # (D/2,)
    angle = positions.to(torch.float64)[:, None] * theta                           # (T, D/2)
    cos, sin = torch.cos(angle).to(x.dtype), torch.sin(angle).to(x.dtype)
    if pairing == "half":                                    # transformers' Llama: rotate_half
        cos2, sin2 = torch.cat((cos, cos), -1), torch.cat((sin, sin), -1)
        rotated = torch.cat((-x[..., d // 2:], x[..., : d // 2]), -1)
        return x * cos2 + rotated * sin2
    y = torch.empty_like(x)
    y[..., 0::2] = x[..., 0::2] * cos - x[..., 1::2] * sin
    y[..., 1::2] = x[..., 0::2] * sin + x[..., 1::2] * cos
    return y


@given(seed=seeds, head_dim=st.sampled_from([2, 4, 8]), t=st.integers(1, 7),
       base=st.sampled_from([10000.0, 500000.0, 3.0]), pairing=st.sampled_from(["interleaved", "half"]))
def test_rope_pairing_and_base_equal_the_formula(impl, seed, head_dim, t, base, pairing):
    """``RotaryEmbedding(D, L, base, pairing)`` equals RoPE written out for that pairing and base
    ("half" is transformers' rotate_half)."""
    positional = impl.component("positional")
    rope = positional.RotaryEmbedding(head_dim, 64, base=base, pairing=pairing)
    x = randn((2, t, head_dim), seed, torch.float64)
    positions = randint(0, 64, (t,), seed + 1)
    assert_close(rope(x, positions), _rope_oracle(x, positions, base, pairing), what=f"RoPE({pairing}, base={base})")


def _attention_oracle(attn, x, n_heads, n_kv_heads, head_dim, base, pairing):
    """Causal attention from the layer's own weights, torch's SDPA, and the written-out RoPE."""
    b, t, _ = x.shape
    def proj(layer, h):
        return F.linear(x, layer.weight, layer.bias).view(b, t, h, head_dim).transpose(1, 2)
    q, k, v = proj(attn.q_proj, n_heads), proj(attn.k_proj, n_kv_heads), proj(attn.v_proj, n_kv_heads)
    positions = torch.arange(t)
    q, k = _rope_oracle(q, positions, base, pairing), _rope_oracle(k, positions, base, pairing)
    group = n_heads // n_kv_heads
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)               # (B, H, T, D)
    out = out.transpose(1, 2).reshape(b, t, n_heads * head_dim)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)


@given(seed=seeds, head_dim=st.sampled_from([2, 6]), n_kv_heads=st.sampled_from([1, 2, 4]),
       base=st.sampled_from([10000.0, 500000.0]), pairing=st.sampled_from(["interleaved", "half"]),
       attention_bias=st.booleans(), ffn_bias=st.booleans())
def test_model_options_reach_every_layer(model, seed, head_dim, n_kv_heads, base, pairing, attention_bias, ffn_bias):
    """Each block's attention uses the config's head_dim (not d_model / n_heads), RoPE base and
    pairing, GQA and attention_bias; the FFN follows ffn_bias, the norms keep ``bias``."""
    cfg = model.ModelConfig(vocab_size=11, context_length=8, n_layers=2, d_model=10, n_heads=4,
                            n_kv_heads=n_kv_heads, head_dim=head_dim, positional="rope", rope_base=base,
                            rope_pairing=pairing, bias=True, attention_bias=attention_bias, ffn_bias=ffn_bias)
    seed_all(seed)
    lm = _randomise(model.TransformerLM(cfg).double(), seed)
    x = randn((2, 5, 10), seed, torch.float64)
    for i, block in enumerate(lm.blocks):
        attn = block.attn
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            has = getattr(attn, name).bias is not None
            assert_equal(has, attention_bias, what=f"blocks[{i}].attn.{name} has a bias (attention_bias={attention_bias})")
        for name in ("w1", "w2"):
            assert_equal(getattr(block.ffn, name).bias is not None, ffn_bias, what=f"blocks[{i}].ffn.{name} has a bias")
        assert_equal(block.ln_1.bias is not None, True, what=f"blocks[{i}].ln_1 has a bias (bias=True)")
        expected = _attention_oracle(attn, x, 4, n_kv_heads, head_dim, base, pairing)
        assert_close(attn(x), expected, what=f"blocks[{i}].attn(x) with head_dim={head_dim}, base={base}, {pairing}")
    caches = lm.new_kv_cache(1)
    assert_equal(caches[0].k.shape[-1], head_dim, what="new_kv_cache head size")


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@given(seed=seeds, norm_eps=st.sampled_from([1e-6, 0.5, 3.0]))
def test_norm_eps_reaches_every_norm(model, norm, seed, norm_eps):
    """``norm_eps`` is the eps of ``ln_1``, ``ln_2`` and ``ln_f`` (checked against torch's norms)."""
    cfg = model.ModelConfig(vocab_size=11, context_length=8, n_layers=2, d_model=8, n_heads=2, norm=norm,
                            norm_eps=norm_eps)
    seed_all(seed)
    lm = _randomise(model.TransformerLM(cfg).double(), seed)
    x = randn((3, 8), seed, torch.float64, 0.3)   # small inputs: eps matters
    norms = {"ln_f": lm.ln_f, **{f"blocks[{i}].{n}": getattr(b, n) for i, b in enumerate(lm.blocks) for n in ("ln_1", "ln_2")}}
    for name, ln in norms.items():
        if norm == "layernorm":
            expected = F.layer_norm(x, (8,), ln.weight, ln.bias, norm_eps)
        else:
            expected = F.rms_norm(x, (8,), ln.weight, norm_eps)
        assert_close(ln(x), expected, what=f"{name}(x) with norm_eps={norm_eps}")


@given(seed=seeds, n_heads=st.sampled_from([1, 2, 3]), head_dim=st.sampled_from([2, 4, 6]), rows=st.sampled_from([(), (5,)]))
def test_interleaved_to_half_moves_rope_pairs(interop, impl, seed, n_heads, head_dim, rows):
    """Permuting q/k rows with ``interleaved_to_half`` turns interleaved RoPE into half-split RoPE:
    ``P(rope_interleaved(x)) == rope_half(P(x))`` per head; ``half_to_interleaved`` undoes it."""
    positional = impl.component("positional")
    w = randn((n_heads * head_dim, *rows), seed, torch.float64)
    moved = interop.interleaved_to_half(w, n_heads, head_dim)
    assert_close(interop.half_to_interleaved(moved, n_heads, head_dim), w, what="half_to_interleaved(interleaved_to_half(w))")
    expected = w.reshape(n_heads, head_dim // 2, 2, *rows).transpose(1, 2).reshape(w.shape)
    assert_close(moved, expected, what="interleaved_to_half(w): new row i = old 2i, i + D/2 = old 2i + 1")
    t = 4
    x = randn((t, n_heads, head_dim), seed + 1, torch.float64)                     # (T, H, D) a head's vectors
    positions = torch.arange(t)
    inter = positional.RotaryEmbedding(head_dim, 16, pairing="interleaved")
    half = positional.RotaryEmbedding(head_dim, 16, pairing="half")
    def per_head(rope, v):
        return rope(v.transpose(0, 1), positions).transpose(0, 1)                  # rotate (H, T, D)
    def permute(v):
        return interop.interleaved_to_half(v.reshape(t, -1).t(), n_heads, head_dim).t().reshape(t, n_heads, head_dim)
    assert_close(permute(per_head(inter, x)), per_head(half, permute(x)), what="P(rope_interleaved(x)) vs rope_half(P(x))")


# =============================================================================================
# Weights against transformers
# =============================================================================================

@pytest.mark.parametrize("family, tie", CASES)
def test_from_hf_logits_equal_transformers(interop, family, tie):
    """A transformers GPT-2 (tanh GELU) or Llama (GQA, half-split RoPE, eps 1e-6, base 500000),
    tied or not, every weight random: ``from_hf`` gives its logits (float32, within 1e-5)."""
    tf = _transformers()
    hf_model = FAMILIES[family](tf, tie, seed=1)
    lm = interop.from_hf(hf_model)
    ids = _ids(2)
    assert_close(_our_logits(lm, ids), _hf_logits(hf_model, ids), what=f"{family} (tied={tie}) logits",
                 atol=LOGITS_ATOL, rtol=0.0)


@pytest.mark.parametrize("family, tie", CASES)
def test_from_hf_directory_equals_transformers(interop, tmp_path, family, tie):
    """``from_hf(dir)`` on what ``save_pretrained`` wrote gives transformers' logits."""
    tf = _transformers()
    hf_model = FAMILIES[family](tf, tie, seed=3)
    hf_model.save_pretrained(tmp_path)
    lm = interop.from_hf(tmp_path)
    ids = _ids(4)
    assert_close(_our_logits(lm, ids), _hf_logits(hf_model, ids), what=f"{family} (tied={tie}) from a directory",
                 atol=LOGITS_ATOL, rtol=0.0)


#: Bare-LM configs that transformers can express, as ModelConfig overrides of a tiny model.
EXPORTS = {
    "gpt2-gelu_tanh": dict(positional="learned", activation="gelu_tanh", norm_eps=1e-5),
    "gpt2-gelu-untied": dict(positional="learned", activation="gelu", tie_weights=False, d_ff=40),
    "llama-interleaved": dict(positional="rope", norm="rmsnorm", activation="swiglu", bias=False,
                              n_kv_heads=2, rope_pairing="interleaved", rope_base=500000.0, norm_eps=1e-6),
    "llama-half-untied": dict(positional="rope", norm="rmsnorm", activation="swiglu", bias=False,
                              n_kv_heads=1, rope_pairing="half", tie_weights=False),
    "llama-head_dim-biases": dict(positional="rope", norm="rmsnorm", activation="swiglu", bias=False,
                                  head_dim=12, attention_bias=True, ffn_bias=True, n_kv_heads=2),
}


def _bare(model, name: str, seed: int):
    cfg = dict(vocab_size=VOCAB, context_length=CONTEXT, n_layers=2, d_model=32, n_heads=4, **EXPORTS[name])
    seed_all(seed)
    return _randomise(model.TransformerLM(model.ModelConfig(**cfg)), seed)


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_to_hf_logits_equal_transformers(interop, model, tmp_path, name):
    """``to_hf`` writes a directory that transformers loads (``AutoModelForCausalLM``) with Bare-LM's
    logits: interleaved RoPE permuted to half-split, GQA, a head size of its own, biases."""
    tf = _transformers()
    lm = _bare(model, name, seed=5)
    interop.to_hf(lm, tmp_path)
    hf_model = tf.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = _ids(6)
    assert_close(_hf_logits(hf_model, ids), _our_logits(lm, ids), what=f"transformers' logits of to_hf({name})",
                 atol=LOGITS_ATOL, rtol=0.0)


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_from_hf_of_to_hf_is_the_same_model(interop, model, tmp_path, name):
    """``from_hf(to_hf(m))`` reads back the model that was written: the same config.json settings
    (``config_to_hf`` of both configs) and the same logits (an interleaved RoPE model comes back
    half-split, its q and k rows permuted)."""
    lm = _bare(model, name, seed=6)
    interop.to_hf(lm, tmp_path)
    back = interop.from_hf(tmp_path)
    assert_equal(interop.config_to_hf(back.config), interop.config_to_hf(lm.config),
                 what=f"config_to_hf of from_hf(to_hf({name})) vs of the model written")
    ids = _ids(6)
    assert_close(_our_logits(back, ids), _our_logits(lm, ids), what=f"logits of from_hf(to_hf({name}))",
                 atol=LOGITS_ATOL, rtol=0.0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_from_hf_reads_sharded_weights(interop, tmp_path, family):
    """Weights that ``save_pretrained`` splits over several files (``max_shard_size``; an index file
    names each tensor's file) load as one model with transformers' logits."""
    tf = _transformers()
    hf_model = FAMILIES[family](tf, False, seed=13)
    hf_model.save_pretrained(tmp_path, max_shard_size="40KB")
    shards = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "model.safetensors.index.json").exists(), \
        f"save_pretrained(max_shard_size='40KB') wrote {shards}: the test needs several shards and an index"
    lm = interop.from_hf(tmp_path)
    ids = _ids(13)
    assert_close(_our_logits(lm, ids), _hf_logits(hf_model, ids), what=f"{family} from {len(shards)} shards",
                 atol=LOGITS_ATOL, rtol=0.0)


@pytest.mark.parametrize("family, tie", CASES)
def test_greedy_tokens_equal_transformers(interop, impl, family, tie):
    """30 greedy tokens of the imported model, with and without the KV cache, are transformers'
    greedy tokens (its ``generate`` with its own cache)."""
    tf = _transformers()
    generate = impl.component("generate")
    hf_model = FAMILIES[family](tf, tie, seed=7)
    lm = interop.from_hf(hf_model)
    prompt = _ids(8, t=8, b=1)
    with torch.no_grad():
        expected = hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                     max_new_tokens=30, min_new_tokens=30, pad_token_id=0)[0, 8:].tolist()
    for use_cache in (True, False):
        got = generate.generate(lm, prompt[0].tolist(), 30, temperature=0.0, use_cache=use_cache)
        assert_equal(got, expected, what=f"{family} (tied={tie}) greedy tokens, use_cache={use_cache}")


@pytest.mark.parametrize("family, tie", CASES)
def test_to_hf_of_from_hf_gives_identical_tensors(interop, tmp_path, family, tie):
    """``to_hf(from_hf(dir))`` writes exactly the tensors ``save_pretrained`` wrote (names, shapes,
    dtypes, values) and a config.json that transformers reads back with the same settings."""
    tf = _transformers()
    from safetensors.torch import load_file
    hf_model = FAMILIES[family](tf, tie, seed=9)
    hf_model.save_pretrained(tmp_path / "hf")
    interop.to_hf(interop.from_hf(tmp_path / "hf"), tmp_path / "ours")
    theirs, ours = load_file(str(tmp_path / "hf" / "model.safetensors")), load_file(str(tmp_path / "ours" / "model.safetensors"))
    assert_equal(sorted(ours), sorted(theirs), what="tensor names")
    for name, tensor in theirs.items():
        assert_equal((tuple(ours[name].shape), ours[name].dtype), (tuple(tensor.shape), tensor.dtype), what=f"{name} shape, dtype")
        assert torch.equal(ours[name], tensor), f"{name}: values differ after to_hf(from_hf(dir))"
    a = tf.AutoConfig.from_pretrained(tmp_path / "hf").to_dict()
    b = tf.AutoConfig.from_pretrained(tmp_path / "ours").to_dict()
    keys = {"gpt2": ["vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "activation_function",
                     "layer_norm_epsilon", "tie_word_embeddings"],
            "llama": ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                      "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_parameters",
                      "tie_word_embeddings", "attention_bias", "mlp_bias", "hidden_act"]}[family]
    assert_equal({k: b.get(k) for k in keys}, {k: a.get(k) for k in keys}, what="config.json settings after the round trip")


def test_from_hf_converts_dtype_and_reorders_rows(interop, tmp_path):
    """``dtype`` converts the weights; ``token_ids`` takes the embedding and head rows in its order."""
    tf = _transformers()
    hf_model = _gpt2(tf, False, seed=11)
    order = list(range(VOCAB))[::-1][: VOCAB - 5]                   # Bare-LM id i is the source's order[i]
    lm = interop.from_hf(hf_model, dtype=torch.float64, token_ids=order)
    assert_equal(lm.token_embedding.weight.dtype, torch.float64, what="weights' dtype with dtype=float64")
    ids = randint(0, len(order), (1, 12), 12)
    hf_ids = torch.tensor(order)[ids]
    expected = _hf_logits(hf_model, hf_ids)[..., order].double()
    assert_close(_our_logits(lm, ids), expected, what="logits with token_ids", atol=LOGITS_ATOL, rtol=0.0)


# =============================================================================================
# What one side cannot express
# =============================================================================================

GPT2_JSON = dict(model_type="gpt2", vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2, n_inner=None,
                 activation_function="gelu_new", layer_norm_epsilon=1e-5, resid_pdrop=0.1, embd_pdrop=0.1,
                 attn_pdrop=0.1, tie_word_embeddings=True, scale_attn_weights=True,
                 scale_attn_by_inverse_layer_idx=False, add_cross_attention=False)
LLAMA_JSON = dict(model_type="llama", vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=16,
                  rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
                  hidden_act="silu", attention_bias=False, mlp_bias=False, tie_word_embeddings=False,
                  attention_dropout=0.0, pretraining_tp=1)


def test_config_from_hf_reads_every_field(interop):
    """``config_from_hf`` maps each documented config.json field to its ModelConfig field."""
    g = interop.config_from_hf(GPT2_JSON)
    assert_equal((g.vocab_size, g.context_length, g.n_layers, g.d_model, g.n_heads, g.resolved_d_ff, g.activation,
                  g.norm_eps, g.tie_weights, g.dropout, g.positional, g.norm, g.norm_placement),
                 (50, 16, 1, 16, 2, 64, "gelu_tanh", 1e-5, True, 0.1, "learned", "layernorm", "pre"), what="GPT-2 config")
    m = interop.config_from_hf(LLAMA_JSON)
    assert_equal((m.vocab_size, m.context_length, m.n_layers, m.d_model, m.n_heads, m.resolved_n_kv_heads,
                  m.resolved_d_ff, m.resolved_head_dim, m.norm_eps, m.rope_base, m.rope_pairing, m.tie_weights,
                  m.resolved_attention_bias, m.resolved_ffn_bias, m.positional, m.norm, m.activation),
                 (50, 16, 1, 16, 2, 1, 24, 8, 1e-6, 500000.0, "half", False, False, False, "rope", "rmsnorm", "swiglu"),
                 what="Llama config")
    old_style = {k: v for k, v in LLAMA_JSON.items() if k != "rope_parameters"} | {"rope_theta": 123456.0}
    assert_equal(interop.config_from_hf(old_style).rope_base, 123456.0, what="rope_base from an older rope_theta")


GPT2_OPTIONAL = ("n_inner", "activation_function", "layer_norm_epsilon", "resid_pdrop", "embd_pdrop", "attn_pdrop",
                 "tie_word_embeddings", "scale_attn_weights", "scale_attn_by_inverse_layer_idx", "add_cross_attention")
LLAMA_OPTIONAL = ("num_key_value_heads", "head_dim", "rms_norm_eps", "rope_parameters", "hidden_act",
                  "attention_bias", "mlp_bias", "tie_word_embeddings", "attention_dropout", "pretraining_tp")


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_config_from_hf_fills_in_transformers_defaults(interop, family):
    """A config.json that leaves out every optional key reads as transformers' own defaults: the same
    ModelConfig as the dict transformers' GPT2Config / LlamaConfig gives for the required keys alone
    (GPT-2: dropout 0.1, eps 1e-5, scaled attention, tied; Llama: eps 1e-6, rope_theta 10000, untied)."""
    tf = _transformers()
    base, optional, cls = {"gpt2": (GPT2_JSON, GPT2_OPTIONAL, tf.GPT2Config),
                           "llama": (LLAMA_JSON, LLAMA_OPTIONAL, tf.LlamaConfig)}[family]
    required = {k: v for k, v in base.items() if k not in optional}
    theirs = cls(**{k: v for k, v in required.items() if k != "model_type"}).to_dict()
    assert_equal(interop.config_from_hf(required), interop.config_from_hf(theirs),
                 what=f"config_from_hf of a {family} config.json without {list(optional)} vs of transformers' "
                      f"defaults for it")
    if family == "llama":   # an older file: rope_parameters without rope_theta, and no top-level rope_theta
        older = {**required, "rope_parameters": {"rope_type": "default"}}
        assert_equal(interop.config_from_hf(older).rope_base, 10000.0,
                     what="rope_base of rope_parameters without rope_theta")


def test_config_from_hf_reads_a_head_dim_and_old_style_rope_scaling(interop):
    """A Llama head_dim other than hidden_size / num_attention_heads is kept (0 is a ValueError naming
    head_dim); an older config's rope_scaling of rope_type "default" (a string read from JSON, compared
    by value) is plain RoPE, and any other rope_scaling is a ValueError naming rope_scaling."""
    for head_dim in (4, 18, 32):                                   # hidden 16, 2 heads: 8 is hidden / heads
        m = interop.config_from_hf({**LLAMA_JSON, "head_dim": head_dim})
        assert_equal(m.resolved_head_dim, head_dim,
                     what=f"head_dim of a Llama config with head_dim {head_dim} (hidden 16, 2 heads)")
    with raises_clear(ValueError, "head_dim"):
        interop.config_from_hf({**LLAMA_JSON, "head_dim": 0})
    old_style = {k: v for k, v in LLAMA_JSON.items() if k != "rope_parameters"} | {"rope_theta": 1000.0}
    default = json.loads('{"rope_type": "default"}')
    assert_equal(interop.config_from_hf({**old_style, "rope_scaling": default}).rope_base, 1000.0,
                 what='rope_base with rope_scaling {"rope_type": "default"}')
    with raises_clear(ValueError, "rope_scaling"):
        interop.config_from_hf({**old_style, "rope_scaling": {"type": "linear", "factor": 2.0}})


def test_config_to_hf_compares_settings_by_value(interop):
    """config_to_hf reads a config's settings by value: a config whose positional is a string built at
    run time (as read from a file) is exported as a Llama ("rope") or GPT-2 ("learned") config."""
    config = interop.config_from_hf(LLAMA_JSON)
    config = dataclasses.replace(config, positional="".join(["ro", "pe"]))
    assert_equal(interop.config_to_hf(config)["model_type"], "llama", what="model_type of a rope config")
    config = dataclasses.replace(interop.config_from_hf(GPT2_JSON), positional="".join(["lear", "ned"]))
    assert_equal(interop.config_to_hf(config)["model_type"], "gpt2", what="model_type of a learned-positions config")


def test_from_hf_takes_its_options_by_keyword(interop):
    """from_hf(source, *, dtype, token_ids) as the contract writes it: source by position or by keyword,
    dtype and token_ids by keyword only (a positional dtype is a TypeError)."""
    tf = _transformers()
    hf_model = _gpt2(tf, False, seed=3)
    ids = _ids(3)
    assert_close(_our_logits(interop.from_hf(source=hf_model), ids), _hf_logits(hf_model, ids),
                 what="logits of from_hf(source=model)", atol=LOGITS_ATOL, rtol=0.0)
    with pytest.raises(TypeError):
        interop.from_hf(hf_model, torch.float64)


def test_from_hf_checks_source_and_token_ids(interop):
    """from_hf refuses a module without a config (TypeError naming source) and token_ids that are
    empty or outside [0, vocab_size) (ValueError naming token_ids); one id is a vocabulary of one."""
    tf = _transformers()
    hf_model = _gpt2(tf, False, seed=3)
    with raises_clear(TypeError, "source"):
        interop.from_hf(torch.nn.Linear(2, 2))
    for bad in ([], [VOCAB], [VOCAB + 5], [-1], [0, VOCAB + 1]):
        with raises_clear(ValueError, "token_ids"):
            interop.from_hf(hf_model, token_ids=bad)
    lm = interop.from_hf(hf_model, token_ids=[7])
    assert_equal(tuple(lm.token_embedding.weight.shape), (1, 32), what="embedding of from_hf(token_ids=[7])")
    assert_equal(lm.token_embedding.weight[0], hf_model.transformer.wte.weight[7].detach(), what="row 0 = source row 7")


@pytest.mark.parametrize("base, change, field", [
    (GPT2_JSON, {"model_type": "bert"}, "model_type"),
    (GPT2_JSON, {"activation_function": "quick_gelu"}, "activation_function"),
    (GPT2_JSON, {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    (GPT2_JSON, {"add_cross_attention": True}, "add_cross_attention"),
    (GPT2_JSON, {"attn_pdrop": 0.0}, "attn_pdrop"),
    (LLAMA_JSON, {"hidden_act": "gelu"}, "hidden_act"),
    (LLAMA_JSON, {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0}}, "rope_parameters"),
    (LLAMA_JSON, {"attention_dropout": 0.1}, "attention_dropout"),
    (LLAMA_JSON, {"pretraining_tp": 2}, "pretraining_tp"),
])
def test_config_bare_lm_cannot_express_is_a_clear_error(interop, base, change, field):
    """A transformers setting Bare-LM cannot express is a ValueError naming the field."""
    with raises_clear(ValueError, field):
        interop.config_from_hf({**base, **change})


@pytest.mark.parametrize("change, field", [
    ({"window": 4}, "window"),
    ({"norm_placement": "post"}, "norm_placement"),
    ({"positional": "alibi"}, "positional"),
    ({"norm": "rmsnorm"}, "norm"),
    ({"n_kv_heads": 2}, "n_kv_heads"),
    ({"activation": "swiglu"}, "activation"),
    ({"attention_bias": False}, "attention_bias"),
    ({"ffn_bias": False}, "ffn_bias"),
    ({"head_dim": 4}, "head_dim"),
    ({"positional": "rope", "norm": "rmsnorm", "activation": "gelu"}, "activation"),
    ({"positional": "rope", "norm": "layernorm", "activation": "swiglu"}, "norm"),
    ({"positional": "rope", "norm": "rmsnorm", "activation": "swiglu", "dropout": 0.1}, "dropout"),
])
def test_config_transformers_cannot_express_is_a_clear_error(interop, model, tmp_path, change, field):
    """Exporting a model that transformers' GPT-2 / Llama cannot express is a ValueError naming the
    field, and writes no weights."""
    cfg = model.ModelConfig(vocab_size=20, context_length=8, n_layers=1, d_model=8, n_heads=4, **change)
    with raises_clear(ValueError, field):
        interop.to_hf(model.TransformerLM(cfg), tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists(), "no weights may be written for a refused config"


def test_missing_or_extra_tensors_are_clear_errors(interop, tmp_path):
    """A checkpoint missing a tensor, or holding one Bare-LM has no place for, is a ValueError naming it."""
    from safetensors.torch import load_file, save_file
    tf = _transformers()
    _llama(tf, False, seed=13).save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    name = "model.layers.1.mlp.up_proj.weight"
    save_file({k: v for k, v in tensors.items() if k != name}, str(tmp_path / "model.safetensors"))
    with raises_clear(ValueError, "layers.1.mlp.up_proj.weight"):
        interop.from_hf(tmp_path)
    save_file({**tensors, "model.layers.0.self_attn.q_norm.weight": torch.ones(12)}, str(tmp_path / "model.safetensors"))
    with raises_clear(ValueError, "q_norm"):
        interop.from_hf(tmp_path)


# =============================================================================================
# Tokenizers against the tokenizers library
# =============================================================================================

EOT = "<|endoftext|>"
CORPUS = [
    "Once upon a time, there was a little robot named Bo. Bo liked to count: 1, 2, 3, 10, 100!\n",
    "def add(a, b):\n    return a + b  # adds two numbers\n\n\tprint(add(2, 3))\n",
    "Les élèves ont mangé des crêpes. Über straße naïve café — “quoted” text… ½ ¾\n",
    "日本語のテキストと中文文本。Emoji: 😀🎉👍🏽 and Ελληνικά, русский текст, עברית.\n",
    "It's we've they're I'm you'll he'd: contractions!  Double  spaces   and trailing \n",
]
unicode_text = st.text(alphabet=st.characters(exclude_categories=("Cs", "Cn")), max_size=40)
OTHER_PATTERN = r"\p{L}+|\p{N}|\s+|[^\s\p{L}\p{N}]+"    # covers every character, as GPT-2's does
PATTERNS = {"gpt2": "GPT2", "other": OTHER_PATTERN, "none": None}


def _tokenizers():
    return pytest.importorskip("tokenizers", reason="tokenizers (a test-only extra) is not installed")


_TRAINED = {}


def _trained(impl, pattern_name: str):
    """Trained on CORPUS to 256 + 200 merges + 2 specials; the merges make distinct bytes."""
    key = (id(impl), pattern_name)
    if key not in _TRAINED:
        tokenizer = impl.component("tokenizer")
        pattern = tokenizer.GPT2_PATTERN if pattern_name == "gpt2" else PATTERNS[pattern_name]
        tok = tokenizer.Tokenizer.train(CORPUS, 458, special_tokens=[EOT, "<|pad|>"], pattern=pattern)
        assert len({tok.vocab[i] for i in range(256 + len(tok.merges))}) == 256 + len(tok.merges), \
            "no two merges of this corpus produce the same bytes"
        _TRAINED[key] = tok
    return _TRAINED[key]


_EXPORTED = {}


def _exported(impl, interop, pattern_name, tmp_path_factory):
    key = (id(impl), pattern_name)
    if key not in _EXPORTED:
        tk = _tokenizers()
        directory = tmp_path_factory.mktemp(f"tok-{pattern_name}")
        interop.save_hf_tokenizer(_trained(impl, pattern_name), directory)
        _EXPORTED[key] = tk.Tokenizer.from_file(str(directory / "tokenizer.json")), directory
    return _EXPORTED[key]


@pytest.mark.parametrize("pattern_name", sorted(PATTERNS))
@given(text=unicode_text, special=st.sampled_from(["", EOT, "<|pad|>"]), more=unicode_text)
@settings(max_examples=25)
def test_exported_tokenizer_json_encodes_like_tokenizers(impl, interop, tmp_path_factory, pattern_name, text, special, more):
    """The ``tokenizers`` library loading the exported tokenizer.json gives Bare-LM's ids for any
    text of assigned code points (specials included), for GPT-2's pattern, another, or none."""
    tok = _trained(impl, pattern_name)
    hf, _ = _exported(impl, interop, pattern_name, tmp_path_factory)
    full = text + special + more
    ids = tok.encode(full, allowed_special="all")  # tokenizers always matches its special tokens
    assert_equal(hf.encode(full, add_special_tokens=False).ids, ids, what=f"tokenizers' ids of {full!r}")
    assert_equal(hf.decode(ids, skip_special_tokens=False), tok.decode(ids), what=f"tokenizers' decode of {full!r}")


def test_exported_tokenizer_json_encodes_the_corpus_like_tokenizers(impl, interop, tmp_path_factory):
    """On the training corpus itself (long pre-tokens, code, CJK, emoji) the ids are the same."""
    tok = _trained(impl, "gpt2")
    hf, _ = _exported(impl, interop, "gpt2", tmp_path_factory)
    text = EOT.join(CORPUS)
    assert_equal(hf.encode(text, add_special_tokens=False).ids, tok.encode(text, allowed_special="all"),
                 what="tokenizers' ids of the corpus")


@given(text=unicode_text)
@settings(max_examples=25)
def test_exported_vocab_and_merges_encode_like_tokenizers(impl, interop, tmp_path_factory, text):
    """GPT-2's ``vocab.json`` + ``merges.txt``, loaded by ``tokenizers``' BPE with a ByteLevel
    pre-tokenizer (GPT-2's pattern), give Bare-LM's ids."""
    tk = _tokenizers()
    tok = _trained(impl, "gpt2")
    _, directory = _exported(impl, interop, "gpt2", tmp_path_factory)
    key = ("files", id(impl))
    if key not in _EXPORTED:
        hf = tk.Tokenizer(tk.models.BPE.from_file(str(directory / "vocab.json"), str(directory / "merges.txt")))
        hf.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        _EXPORTED[key] = hf
    assert_equal(_EXPORTED[key].encode(text).ids, tok.encode(text), what=f"vocab.json + merges.txt ids of {text!r}")


@pytest.mark.parametrize("pattern_name", sorted(PATTERNS))
def test_load_hf_tokenizer_inverts_save(impl, interop, tmp_path, pattern_name):
    """``load_hf_tokenizer(save_hf_tokenizer(tok))`` is the same tokenizer, ids unchanged (also into
    a directory that does not exist yet, parents included); so is loading the directory's
    vocab.json + merges.txt (GPT-2's pattern)."""
    tok = _trained(impl, pattern_name)
    interop.save_hf_tokenizer(tok, tmp_path / "new" / "dir")       # made with its parents
    back, token_ids = interop.load_hf_tokenizer(tmp_path / "new" / "dir")
    assert_equal((back.merges, back.special_tokens), (tok.merges, tok.special_tokens), what="from a new nested directory")
    interop.save_hf_tokenizer(tok, tmp_path)
    back, token_ids = interop.load_hf_tokenizer(tmp_path)
    assert_equal((back.merges, back.special_tokens, back.pattern), (tok.merges, tok.special_tokens, tok.pattern),
                 what="merges, special tokens, pattern after the round trip")
    assert_equal(token_ids, list(range(tok.vocab_size)), what="token_ids of a file written with Bare-LM's ids")
    if pattern_name == "gpt2":
        (tmp_path / "tokenizer.json").unlink()
        back, token_ids = interop.load_hf_tokenizer(tmp_path)
        assert_equal((back.merges, back.special_tokens), (tok.merges, tok.special_tokens), what="from vocab.json + merges.txt")


def test_load_hf_tokenizer_inverts_save_past_256_merges(impl, interop, tmp_path):
    """The round trip keeps ids past 511: a tokenizer of 300 merges (runs of "a" of every length up to
    301, no pre-tokenizer) loads back with the same merges and token_ids 0..555."""
    tok = impl.component("tokenizer").Tokenizer([(97, 97)] + [(256 + n, 97) for n in range(299)], pattern=None)
    interop.save_hf_tokenizer(tok, tmp_path)
    back, token_ids = interop.load_hf_tokenizer(tmp_path)
    assert_equal(back.merges, tok.merges, what="merges of a 300-merge tokenizer after the round trip")
    assert_equal(token_ids, list(range(tok.vocab_size)), what="token_ids of a 300-merge tokenizer")


def _foreign_tokenizer(tk, directory):
    """A byte-level BPE trained by the tokenizers library: its own numbering (specials first, then
    its alphabet in its own order, then merges)."""
    hf = tk.Tokenizer(tk.models.BPE())
    hf.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=420, special_tokens=[EOT], show_progress=False,
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(CORPUS, trainer)
    hf.save(str(directory / "tokenizer.json"))
    return hf


@given(text=unicode_text, more=unicode_text)
@settings(max_examples=25)
def test_load_hf_tokenizer_maps_a_foreign_numbering(interop, tmp_path_factory, text, more):
    """A tokenizer.json with its own numbering loads as a Bare-LM tokenizer whose ids, through
    ``token_ids``, are the ``tokenizers`` library's ids for the same text."""
    tk = _tokenizers()
    key = "foreign"
    if key not in _EXPORTED:
        directory = tmp_path_factory.mktemp("foreign")
        _EXPORTED[key] = _foreign_tokenizer(tk, directory), interop.load_hf_tokenizer(directory)
    hf, (tok, token_ids) = _EXPORTED[key]
    full = text + EOT + more
    assert_equal([token_ids[i] for i in tok.encode(full, allowed_special="all")], hf.encode(full).ids,
                 what=f"ids of {full!r}")


def test_load_hf_gives_a_model_that_speaks_the_tokenizer(interop, tmp_path):
    """``load_hf(dir)`` with a foreign tokenizer beside the weights: the model's logits for the
    tokenizer's ids are transformers' logits for the file's ids of the same text."""
    tf, tk = _transformers(), _tokenizers()
    hf_tok = _foreign_tokenizer(tk, tmp_path)
    hf_model = _gpt2(tf, True, seed=15, vocab_size=hf_tok.get_vocab_size())
    hf_model.save_pretrained(tmp_path)
    lm, tok = interop.load_hf(tmp_path)
    text = "Once upon a time, Bo counted to 3."
    ours = torch.tensor([tok.encode(text)])
    theirs = torch.tensor([hf_tok.encode(text).ids])
    token_ids = interop.load_hf_tokenizer(tmp_path)[1]
    expected = _hf_logits(hf_model, theirs)[..., token_ids]
    assert_close(_our_logits(lm, ours), expected, what="load_hf logits, in the tokenizer's ids", atol=LOGITS_ATOL, rtol=0.0)


def test_bytes_to_unicode_is_gpt2s_table(interop):
    """The 188 printable bytes stand for themselves, the other 68 become U+0100.. in byte order
    (a space is 'Ġ'); equal to transformers' own table when it is installed."""
    table = interop.bytes_to_unicode()
    assert_equal(sorted(table), list(range(256)), what="bytes_to_unicode keys")
    assert_equal(len(set(table.values())), 256, what="distinct characters")
    printable = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    assert_equal([table[b] for b in printable], [chr(b) for b in printable], what="printable bytes")
    others = [b for b in range(256) if b not in printable]
    assert_equal([table[b] for b in others], [chr(256 + n) for n in range(68)], what="the other 68 bytes")
    assert_equal(table[ord(" ")], "Ġ", what="the space")
    try:
        from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode
    except ImportError:
        return
    assert_equal(table, bytes_to_unicode(), what="transformers' bytes_to_unicode")


def test_same_bytes_twice_cannot_be_exported(impl, interop, tmp_path):
    """Two tokens with the same bytes ((a, bc) and (ab, c)) are a ValueError naming both ids."""
    tokenizer = impl.component("tokenizer")
    a, b, c = 97, 98, 99
    tok = tokenizer.Tokenizer([(b, c), (a, b), (a, 256), (257, c)], pattern=None)
    with raises_clear(ValueError, "258", "259"):
        interop.save_hf_tokenizer(tok, tmp_path)


@pytest.mark.parametrize("files", [(), ("vocab.json",), ("merges.txt",)], ids=["empty", "vocab only", "merges only"])
def test_load_hf_tokenizer_without_its_files_is_a_clear_error(impl, interop, tmp_path, files):
    """A directory with neither tokenizer.json nor both vocab.json and merges.txt: FileNotFoundError naming
    the file that is missing, and with vocab.json alone also tokenizer.json (the other way to give one)."""
    interop.save_hf_tokenizer(_trained(impl, "gpt2"), tmp_path / "saved")
    (tmp_path / "dir").mkdir()
    for name in files:
        (tmp_path / "dir" / name).write_bytes((tmp_path / "saved" / name).read_bytes())
    words = {(): ["vocab.json"], ("vocab.json",): ["merges.txt", "tokenizer.json"], ("merges.txt",): ["vocab.json"]}
    with raises_clear(FileNotFoundError, *words[files]):
        interop.load_hf_tokenizer(tmp_path / "dir")


@pytest.mark.parametrize("path, value, field", [
    (("normalizer",), {"type": "NFC"}, "normalizer"),
    (("model", "byte_fallback"), True, "byte_fallback"),
    (("model", "ignore_merges"), True, "ignore_merges"),
    (("pre_tokenizer",), {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
     "add_prefix_space"),
    (("pre_tokenizer",), {"type": "Whitespace"}, "pre_tokenizer"),
    (("model", "type"), "WordPiece", "WordPiece"),
    (("pre_tokenizer",), {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "MergedWithPrevious", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}, "pre_tokenizer"),
    (("pre_tokenizer",), {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        {"type": "Digits", "individual_digits": True}]}, "pre_tokenizer"),
    (("model", "merges"), [["zzq", "a"]], "merge 0"),
    (("model", "merges"), [["a", "zzq"]], "merge 0"),
])
def test_tokenizer_bare_lm_cannot_express_is_a_clear_error(impl, interop, tmp_path, path, value, field):
    """A tokenizer.json setting Bare-LM cannot express is a ValueError naming it."""
    interop.save_hf_tokenizer(_trained(impl, "gpt2"), tmp_path)
    data = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with raises_clear(ValueError, field):
        interop.load_hf_tokenizer(tmp_path / "tokenizer.json")
