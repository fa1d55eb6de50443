"""Spec of ``model``: ``ModelConfig``, ``TransformerBlock``, ``TransformerLM`` and ``dropout``.

Most properties hold for every positional scheme, attention variant (MHA, GQA, MQA, sliding
window) and norm placement: the tests sweep them with ``pytest.mark.parametrize`` and draw the rest
of the configuration with hypothesis.
"""

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import re

from .support import (assert_close, assert_equal, fresh, randint, randn, raises_clear, seed_all, seeds,
                      windowed_lm_logits)

POSITIONAL = ["learned", "sinusoidal", "rope", "alibi", "none"]
#: Attention variants as ModelConfig overrides (n_heads = 4 in the sweeps).
VARIANTS = {"mha": {}, "gqa": {"n_kv_heads": 2}, "mqa": {"n_kv_heads": 1}, "window": {"window": 3}}


@pytest.fixture(scope="module")
def model(impl):
    return impl.component("model")


@st.composite
def configs(draw, positional=None, variant=None, **fixed):
    """A small random ModelConfig as a dict (the sweeps fix ``positional`` and the attention variant)."""
    n_heads = 4 if variant is not None else draw(st.sampled_from([1, 2, 4]))
    head_dim = draw(st.sampled_from([2, 4]))
    d = dict(vocab_size=draw(st.integers(5, 23)), context_length=draw(st.integers(6, 12)),
             n_layers=draw(st.integers(1, 3)), d_model=n_heads * head_dim, n_heads=n_heads,
             n_kv_heads=draw(st.sampled_from([None, *[k for k in (1, 2, 4) if n_heads % k == 0]])),
             d_ff=draw(st.sampled_from([None, 12])),
             activation=draw(st.sampled_from(["relu", "gelu", "swiglu"])),
             norm=draw(st.sampled_from(["layernorm", "rmsnorm"])),
             norm_placement=draw(st.sampled_from(["pre", "post"])),
             positional=positional or draw(st.sampled_from(POSITIONAL)),
             window=draw(st.sampled_from([None, None, 2, 4])),
             tie_weights=draw(st.booleans()), bias=draw(st.booleans()))
    if variant is not None:
        d.update({"n_kv_heads": None, "window": None, **VARIANTS[variant]})
    d.update(fixed)
    return d


def _build(model, config: dict, seed: int, dtype=torch.float64, randomise=True):
    """A TransformerLM in eval mode; ``randomise`` gives every parameter (norm gains and biases too)
    random values, so that nothing is invisible because it starts at 0 or 1."""
    seed_all(seed)
    lm = model.TransformerLM(model.ModelConfig(**config)).to(dtype).eval()
    if randomise:
        with torch.no_grad():
            for i, p in enumerate(lm.parameters()):
                p.copy_(randn(p.shape, seed + i, dtype, 0.3) + (1.0 if p.dim() == 1 else 0.0))
    return lm


def _expected_d_ff(c: dict) -> int:
    if c.get("d_ff") is not None:
        return c["d_ff"]
    if c.get("activation", "gelu") == "swiglu":
        return 8 * math.ceil(math.ceil(8 * c["d_model"] / 3) / 8)
    return 4 * c["d_model"]


def _closed_form_count(c: dict, exclude_embeddings=False) -> int:
    """The parameter count, written from the architecture."""
    v, d, n, h = c["vocab_size"], c["d_model"], c["n_layers"], c["n_heads"]
    kv = (c.get("n_kv_heads") or h) * (d // h)            # width of k and of v
    bias = c.get("bias", True)
    f = _expected_d_ff(c)
    norm = d * (2 if bias and c.get("norm", "layernorm") == "layernorm" else 1)
    attention = d * d + 2 * d * kv + d * d + ((d + 2 * kv + d) if bias else 0)
    mats = 3 if c.get("activation", "gelu") == "swiglu" else 2
    ffn = mats * d * f + (((mats - 1) * f + d) if bias else 0)
    total = n * (attention + ffn + 2 * norm)
    total += norm if c.get("norm_placement", "pre") == "pre" else 0  # ln_f
    if not exclude_embeddings:
        total += v * d                                                # token table
        total += c["context_length"] * d if c.get("positional", "learned") == "learned" else 0
    total += 0 if c.get("tie_weights", True) else v * d               # untied lm_head (no bias)
    return total


def _zero_sublayer_outputs(lm):
    """Zero every attention out_proj and FFN w2 (weights and biases): each sublayer outputs 0."""
    with torch.no_grad():
        for block in lm.blocks:
            for layer in (block.attn.out_proj, block.ffn.w2):
                layer.weight.zero_()
                if layer.bias is not None:
                    layer.bias.zero_()


def _norm(kind, x, layer, eps=1e-5):
    if kind == "layernorm":
        return F.layer_norm(x, (x.shape[-1],), layer.weight, layer.bias, eps=eps)
    return F.rms_norm(x, (x.shape[-1],), layer.weight, eps=eps)


BASE = dict(vocab_size=13, context_length=10, n_layers=2, d_model=8, n_heads=2)


# --- ModelConfig --------------------------------------------------------------------------------

@given(c=configs(), dropout=st.sampled_from([0.0, 0.1, 0.5]), fast=st.booleans())
def test_config_round_trip(model, c, dropout, fast):
    """ModelConfig.from_dict(json round trip of to_dict()) == the config, field by field."""
    config = model.ModelConfig(**c, dropout=dropout, fast=fast)
    d = config.to_dict()
    back = model.ModelConfig.from_dict(json.loads(json.dumps(d)))
    assert_equal(back, config, what="ModelConfig.from_dict(json.loads(json.dumps(to_dict())))")
    expected = {**c, "dropout": dropout, "fast": fast}
    assert_equal({k: d[k] for k in expected}, expected, what="to_dict() fields")
    assert_equal(sorted(d), sorted(f.name for f in dataclasses.fields(model.ModelConfig)),
                 what="to_dict() keys (every field)")


def test_config_defaults(model):
    """Defaults: n_kv_heads None, d_ff None, dropout 0, gelu, layernorm, pre, learned, no window, tied, bias, not fast."""
    config = model.ModelConfig(**BASE)
    expected = dict(n_kv_heads=None, d_ff=None, dropout=0.0, activation="gelu", norm="layernorm",
                    norm_placement="pre", positional="learned", window=None, tie_weights=True, bias=True,
                    fast=False)
    assert_equal({k: getattr(config, k) for k in expected}, expected, what="ModelConfig defaults")


def test_from_dict_rejects_unknown_and_missing_keys(model):
    """from_dict names an unknown key (a typo is never silently dropped) and a missing required field."""
    d = model.ModelConfig(**BASE).to_dict()
    with raises_clear((ValueError, TypeError), "n_layer"):
        model.ModelConfig.from_dict({**d, "n_layer": 3})
    d.pop("d_model")
    with raises_clear((ValueError, TypeError), "d_model"):
        model.ModelConfig.from_dict(d)


BAD_CONFIGS = [
    ("vocab_size", ValueError, {"vocab_size": 0}),
    ("vocab_size", TypeError, {"vocab_size": 12.0}),
    ("context_length", ValueError, {"context_length": 0}),
    ("n_layers", ValueError, {"n_layers": -1}),
    ("d_model", ValueError, {"d_model": 0}),
    ("n_heads", ValueError, {"n_heads": 0}),
    ("n_heads", ValueError, {"n_heads": 3}),                   # 8 % 3 != 0: names d_model and n_heads
    ("n_kv_heads", ValueError, {"n_kv_heads": 0}),
    ("n_kv_heads", ValueError, {"n_heads": 4, "n_kv_heads": 3}),
    ("d_ff", ValueError, {"d_ff": 0}),
    ("dropout", ValueError, {"dropout": 1.0}),
    ("dropout", ValueError, {"dropout": -0.1}),
    ("activation", ValueError, {"activation": "tanh"}),
    ("norm", ValueError, {"norm": "batchnorm"}),
    ("norm_placement", ValueError, {"norm_placement": "sandwich"}),
    ("positional", ValueError, {"positional": "relative"}),
    ("window", ValueError, {"window": 0}),
    ("tie_weights", TypeError, {"tie_weights": "yes"}),
    ("bias", TypeError, {"bias": 1}),
    ("fast", TypeError, {"fast": None}),
    ("rope", ValueError, {"positional": "rope", "d_model": 6, "n_heads": 2}),        # head_dim 3
    ("sinusoidal", ValueError, {"positional": "sinusoidal", "d_model": 7, "n_heads": 1}),
]


@pytest.mark.parametrize("field, error, override", BAD_CONFIGS, ids=[f"{f}-{i}" for i, (f, _, _) in
                                                                      enumerate(BAD_CONFIGS)])
def test_bad_config(model, field, error, override):
    """A bad ModelConfig field raises a clear error naming it (rope: odd head_dim; sinusoidal: odd d_model)."""
    words = {"rope": ("rope", "head_dim"), "sinusoidal": ("sinusoidal", "d_model")}.get(field, (field,))
    if field == "n_heads" and override.get("n_heads") == 3:
        words = ("d_model", "n_heads")
    with raises_clear(error, *words):
        model.ModelConfig(**{**BASE, **override})


# --- dropout ------------------------------------------------------------------------------------

@given(p=st.sampled_from([0.1, 0.5, 0.8]), seed=seeds)
def test_dropout_function(model, p, seed):
    """dropout zeroes about a fraction p and scales the rest by 1/(1-p); eval mode or p=0 is the identity.

    False-failure rate: the dropped fraction of n = 65,536 independent draws is more than 0.05 from
    p with probability <= 2 exp(-2 n 0.05^2) = 2e-142 (Hoeffding), per example and per run.
    """
    x = randn((256, 256), seed).abs() + 0.5
    seed_all(seed)
    y = model.dropout(x, p, True)
    zero = y == 0
    frac = zero.double().mean().item()
    assert abs(frac - p) < 0.05, f"fraction dropped: expected about {p}, got {frac:.3f}"
    assert_close(y[~zero], x[~zero] / (1 - p), what="kept values (should be x / (1 - p))")
    assert model.dropout(x, p, False) is x or torch.equal(model.dropout(x, p, False), x), "eval dropout changed x"
    assert torch.equal(model.dropout(x, 0.0, True), x), "dropout with p = 0 changed x"


# --- behaviour of the stack -----------------------------------------------------------------------

@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("positional", POSITIONAL)
@settings(max_examples=4)
@given(data=st.data(), seed=seeds)
def test_causal(model, positional, variant, data, seed):
    """Changing the tokens after position t never changes the logits at positions <= t."""
    c = data.draw(configs(positional, variant), label="config")
    lm = _build(model, c, seed)
    t_len = c["context_length"]
    idx = randint(0, c["vocab_size"], (2, t_len), seed)
    logits, _ = lm(idx)
    t = data.draw(st.integers(0, t_len - 2), label="t")
    changed = idx.clone()
    changed[:, t + 1:] = randint(0, c["vocab_size"], (2, t_len - t - 1), seed + 1)
    logits_changed, _ = lm(changed)
    assert_close(logits_changed[:, :t + 1], logits[:, :t + 1],
                 what=f"logits at positions <= {t} after changing later tokens")
    assert_equal(tuple(logits.shape), (2, t_len, c["vocab_size"]), what="logits shape (B, T, V)")


#: The dtype of the fast-vs-written-out comparisons (see test_fast_equals_written_out).
FAST_DTYPE = torch.float64


@settings(max_examples=10)
@given(c=configs(), padded=st.booleans(), seed=seeds)
def test_fast_equals_written_out(model, c, padded, seed):
    """fast=True changes speed, not results: same weights give the same logits, loss and gradients.

    In float64 (``FAST_DTYPE``): the two paths round differently, and a norm over nearly equal
    features (d_model 2 gives variances far below eps) multiplies that rounding by up to
    ``1 / sqrt(eps)`` (about 316). Float32's rounding (6e-8) then reaches the 1e-5 tolerance on
    correct code (seen once in 100 runs); float64's (1e-16) stays about 1e8 below it.
    """
    slow = _build(model, {**c, "fast": False}, seed, FAST_DTYPE)
    fast = _build(model, {**c, "fast": True}, seed, FAST_DTYPE, randomise=False)
    fast.load_state_dict(slow.state_dict())
    b, t = 2, c["context_length"]
    idx = randint(0, c["vocab_size"], (b, t), seed)
    targets = randint(0, c["vocab_size"], (b, t), seed + 1)
    targets[:, -2:] = -100                                   # ignored targets take part too
    mask = None
    if padded:                                               # the second row: 2 real tokens, then padding
        mask = torch.ones(b, t, dtype=torch.bool)
        mask[1, 2:] = False
    logits_s, loss_s = slow(idx, targets, padding_mask=mask)
    logits_f, loss_f = fast(idx, targets, padding_mask=mask)
    assert_close(logits_f, logits_s, what="logits of fast=True vs fast=False")
    assert_close(loss_f, loss_s, what="loss of fast=True vs fast=False")
    loss_s.backward()
    loss_f.backward()
    for (name, pf), ps in zip(fast.named_parameters(), slow.parameters()):
        assert_close(pf.grad, ps.grad, what=f"gradient of {name}, fast=True vs fast=False", atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("positional", POSITIONAL)
@settings(max_examples=3)
@given(data=st.data(), seed=seeds)
def test_kv_cache_equals_full_forward(model, positional, variant, data, seed):
    """Decoding with a KV cache, token by token or in chunks, gives the full forward pass's logits."""
    c = data.draw(configs(positional, variant), label="config")
    lm = _build(model, c, seed)
    t_len = c["context_length"]
    idx = randint(0, c["vocab_size"], (2, t_len), seed)
    full, _ = lm(idx)
    chunked = data.draw(st.booleans(), label="chunked")
    cuts, pos = [], 0
    while pos < t_len:
        step = data.draw(st.integers(1, 4), label="chunk") if chunked else 1
        cuts.append((pos, min(pos + step, t_len)))
        pos += step
    caches = lm.new_kv_cache(2)
    pieces = []
    for a, b in cuts:
        logits, _ = lm(idx[:, a:b], kv_cache=caches)
        pieces.append(logits)
    assert_close(torch.cat(pieces, dim=1), full, what=f"cached logits in chunks {cuts} vs full forward")


@pytest.mark.parametrize("placement", ["pre", "post"])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@given(seed=seeds)
def test_block_with_zeroed_sublayers(model, placement, norm, seed):
    """Sublayer outputs zeroed: a Pre-LN block is the identity; a Post-LN block returns ln_2(ln_1(x))."""
    c = {**BASE, "norm": norm, "norm_placement": placement}
    seed_all(seed)
    block = model.TransformerBlock(model.ModelConfig(**c), 0).double().eval()
    with torch.no_grad():
        for i, p in enumerate(block.parameters()):
            p.copy_(randn(p.shape, seed + i, torch.float64, 0.3) + (1.0 if p.dim() == 1 else 0.0))
        for layer in (block.attn.out_proj, block.ffn.w2):
            layer.weight.zero_()
            if layer.bias is not None:
                layer.bias.zero_()
    x = randn((2, 5, c["d_model"]), seed, torch.float64, 2.0) + 1.0
    out = block(x, torch.arange(5))
    if placement == "pre":
        assert_close(out, x, what="Pre-LN block with zeroed sublayers (should be the identity)")
    else:
        expected = _norm(norm, _norm(norm, x, block.ln_1), block.ln_2)
        assert_close(out, expected, what="Post-LN block with zeroed sublayers (should be ln_2(ln_1(x)))")


@pytest.mark.parametrize("placement", ["pre", "post"])
@given(data=st.data(), seed=seeds)
def test_stack_with_zeroed_sublayers(model, placement, data, seed):
    """Sublayers zeroed: Pre-LN logits = head(ln_f(emb)); Post-LN logits = head(norms of every block (emb)), no ln_f."""
    c = data.draw(configs(norm_placement=placement), label="config")
    lm = _build(model, c, seed)
    _zero_sublayer_outputs(lm)
    t_len = c["context_length"]
    idx = randint(0, c["vocab_size"], (2, t_len), seed)
    logits, _ = lm(idx)
    h = lm.token_embedding.weight[idx]
    if c["positional"] in ("learned", "sinusoidal"):
        h = h + lm.position_embedding(torch.arange(t_len))
    if placement == "pre":
        assert lm.ln_f is not None, "a Pre-LN stack needs a final norm ln_f"
        h = _norm(c["norm"], h, lm.ln_f)
    else:
        assert lm.ln_f is None, "a Post-LN stack has no final norm (ln_f must be None)"
        for block in lm.blocks:
            h = _norm(c["norm"], _norm(c["norm"], h, block.ln_1), block.ln_2)
    assert_close(logits, h @ lm.lm_head.weight.T, what=f"{placement}-LN logits with zeroed sublayers")


@pytest.mark.parametrize("placement", ["pre", "post"])
@given(seed=seeds)
def test_residual_connections(model, placement, seed):
    """Sublayer outputs a (attn), f (ffn): Pre-LN gives x + a + f; Post-LN gives ln_2(ln_1(x + a) + f)."""
    c = {**BASE, "norm_placement": placement}
    seed_all(seed)
    block = model.TransformerBlock(model.ModelConfig(**c), 1).double().eval()
    x = randn((1, 4, c["d_model"]), seed, torch.float64, 2.0)
    a, f = randn(x.shape, seed + 1, torch.float64), randn(x.shape, seed + 2, torch.float64)

    class Fixed(torch.nn.Module):
        """A stand-in sublayer whose output is a fixed tensor."""

        def __init__(self, value):
            super().__init__()
            self.value = value

        def forward(self, h, *args, **kwargs):
            return self.value

    block.attn, block.ffn = Fixed(a), Fixed(f)
    out = block(x, torch.arange(4))
    if placement == "pre":
        expected = x + a + f
    else:
        expected = _norm("layernorm", _norm("layernorm", x + a, block.ln_1) + f, block.ln_2)
    assert_close(out, expected, what=f"{placement}-LN block with fixed sublayer outputs a (attn), f (ffn)")


@pytest.mark.parametrize("sublayer", ["attn", "ffn"])
@given(p=st.sampled_from([0.2, 0.5]), seed=seeds)
def test_residual_dropout(model, sublayer, p, seed):
    """In train mode each sublayer's output is dropped elementwise (rate p, kept values / (1-p)) before the residual sum.

    False-failure rate: n = 16,384 independent draws; the dropped fraction is more than 0.06 from p
    with probability <= 2 exp(-2 n 0.06^2) = 1e-51 (Hoeffding) per example.
    """
    c = {**BASE, "dropout": p, "d_model": 32, "n_heads": 4}
    seed_all(seed)
    block = model.TransformerBlock(model.ModelConfig(**c), 0).train()

    class Ones(torch.nn.Module):
        def forward(self, h, *args, **kwargs):
            return torch.ones_like(h)

    class Zeros(torch.nn.Module):
        def forward(self, h, *args, **kwargs):
            return torch.zeros_like(h)

    setattr(block, "attn", Ones() if sublayer == "attn" else Zeros())
    setattr(block, "ffn", Ones() if sublayer == "ffn" else Zeros())
    x = randn((32, 16, 32), seed)
    delta = block(x, torch.arange(16)) - x           # Pre-LN: the dropped sublayer output
    dropped = (delta.abs() < 1e-6).double().mean().item()
    assert abs(dropped - p) < 0.06, f"fraction of the {sublayer} output dropped: expected about {p}, got {dropped:.3f}"
    kept = delta[delta.abs() >= 1e-6]
    assert_close(kept, torch.full_like(kept, 1 / (1 - p)), what="kept sublayer outputs (1 / (1 - p))")


@given(p=st.sampled_from([0.2, 0.5]), seed=seeds)
def test_embedding_dropout(model, p, seed):
    """In train mode the embeddings (token + position) are dropped elementwise (rate p, kept values / (1-p)).

    False-failure rate: n = 16,384 independent draws; the dropped fraction is more than 0.06 from p
    with probability <= 2 exp(-2 n 0.06^2) = 1e-51 (Hoeffding) per example.
    """
    c = {**BASE, "dropout": p, "d_model": 32, "n_heads": 4, "context_length": 16}
    lm = _build(model, c, seed, torch.float32, randomise=False).train()
    _zero_sublayer_outputs(lm)
    seen = {}
    lm.ln_f.register_forward_pre_hook(lambda module, args: seen.update(h=args[0].detach()))
    idx = randint(0, c["vocab_size"], (32, 16), seed)
    lm(idx)
    emb = lm.token_embedding.weight[idx] + lm.position_embedding(torch.arange(16))
    h = seen["h"]
    zero = h == 0
    assert abs(zero.double().mean().item() - p) < 0.06, \
        f"fraction of embedding entries dropped: expected about {p}, got {zero.double().mean().item():.3f}"
    assert_close(h[~zero], emb.detach()[~zero] / (1 - p), what="kept embedding entries ((tok + pos) / (1 - p))")


@given(seed=seeds)
@settings(max_examples=5)
def test_eval_is_deterministic_and_dropout_free(model, seed):
    """Eval mode is deterministic and equals a dropout-0 model with the same weights; train mode is stochastic.

    False-failure rate: two train-mode passes can only agree if the 2 * 10 * 16 embedding draws
    (rate 0.3) agree, probability <= (0.3^2 + 0.7^2)^320 = 1e-76.
    """
    c = {**BASE, "dropout": 0.3, "d_model": 16, "n_heads": 4}
    lm = _build(model, c, seed, torch.float32)
    idx = randint(0, c["vocab_size"], (2, 10), seed)
    first, _ = lm(idx)
    second, _ = lm(idx)
    assert_close(second, first, what="two eval-mode forward passes")
    plain = model.TransformerLM(model.ModelConfig(**{**c, "dropout": 0.0}))
    plain.load_state_dict(lm.state_dict())
    assert_close(plain(idx)[0], first, what="eval model with dropout 0.3 vs the same weights with dropout 0")
    lm.train()
    a, b = lm(idx)[0], lm(idx)[0]
    assert not torch.allclose(a, b), "train mode with dropout 0.3 gave the same logits twice"
    assert not torch.allclose(a, first), "train mode with dropout 0.3 gave the eval-mode logits"


@given(data=st.data(), seed=seeds)
@settings(max_examples=10)
def test_loss_equals_cross_entropy(model, data, seed):
    """The returned loss is F.cross_entropy of the returned logits and targets (ignore index -100); None without targets."""
    c = data.draw(configs(), label="config")
    lm = _build(model, c, seed)
    idx = randint(0, c["vocab_size"], (3, c["context_length"]), seed)
    targets = randint(0, c["vocab_size"], idx.shape, seed + 1)
    targets[0, :2] = -100
    logits, loss = lm(idx, targets)
    expected = F.cross_entropy(logits.reshape(-1, c["vocab_size"]), targets.reshape(-1), ignore_index=-100)
    assert_close(loss, expected, what="model loss vs F.cross_entropy(logits, targets)")
    assert lm(idx)[1] is None, "the loss must be None when no targets are given"


@given(seed=seeds, positional=st.sampled_from(POSITIONAL), placement=st.sampled_from(["pre", "post"]))
@settings(max_examples=5)
def test_initial_loss_is_log_vocab(model, seed, positional, placement):
    """At initialisation the loss on uniform random tokens is within 0.15 of ln(vocab_size).

    False-failure rate: the logits have std about 0.02 * sqrt(64) = 0.16, so the expected loss is
    ln(256) + about 0.013, and the mean over 128 targets has std about 0.016: 0.15 is over 8
    standard deviations, a rate below 1e-15 per example.
    """
    c = dict(vocab_size=256, context_length=32, n_layers=2, d_model=64, n_heads=4, positional=positional,
             norm_placement=placement)
    lm = _build(model, c, seed, torch.float32, randomise=False)
    idx = randint(0, 256, (4, 32), seed)
    _, loss = lm(idx, randint(0, 256, (4, 32), seed + 1))
    assert abs(loss.item() - math.log(256)) < 0.15, f"initial loss: expected about ln(256) = 5.545, got {loss.item():.4f}"


@pytest.mark.parametrize("tie", [True, False])
def test_initialisation(model, tie):
    """Weights ~ N(0, 0.02^2), biases 0, norm gains 1; attn out_proj and FFN w2 ~ N(0, (0.02 / sqrt(2 n_layers))^2).

    False-failure rate: every matrix has n >= 4,096 draws; the sample std is within 10% of sigma
    (9 standard errors sigma / sqrt(2n)) and the mean within 0.2 sigma (12.8 standard errors
    sigma / sqrt(n)) except with probability below 1e-18 per matrix, 1e-16 for the ~40 matrices.
    """
    seed_all(0)
    n_layers = 8
    config = dict(vocab_size=512, context_length=64, n_layers=n_layers, d_model=64, n_heads=4, tie_weights=tie)
    lm = model.TransformerLM(model.ModelConfig(**config))
    residual = {id(b.attn.out_proj.weight) for b in lm.blocks} | {id(b.ffn.w2.weight) for b in lm.blocks}
    norms = {id(p) for b in lm.blocks for p in (*b.ln_1.parameters(), *b.ln_2.parameters())}
    norms |= {id(p) for p in lm.ln_f.parameters()}
    for name, p in lm.named_parameters():
        if id(p) in norms:
            expected = torch.ones_like(p) if name.endswith("weight") else torch.zeros_like(p)
            assert_close(p.detach(), expected, what=f"initial {name} (norm gain 1, bias 0)")
        elif p.dim() == 1:
            assert_close(p.detach(), torch.zeros_like(p), what=f"initial bias {name}")
        else:
            std = 0.02 / math.sqrt(2 * n_layers) if id(p) in residual else 0.02
            got = p.detach().std().item()
            assert abs(got - std) < 0.1 * std, f"initial std of {name}: expected {std:.4g}, got {got:.4g}"
            assert abs(p.detach().mean().item()) < 0.2 * std, f"initial mean of {name}: expected 0"


@pytest.mark.parametrize("tie", [True, False])
def test_weight_tying(model, tie):
    """Tied: lm_head.weight IS token_embedding.weight (same storage, gradients add up); untied: separate."""
    seed_all(0)
    lm = model.TransformerLM(model.ModelConfig(**BASE, tie_weights=tie))
    head, table = lm.lm_head.weight, lm.token_embedding.weight
    if tie:
        assert head.data_ptr() == table.data_ptr(), "tied lm_head.weight must share storage with the token table"
        with torch.no_grad():
            table[3, 0] += 1.0
        assert head[3, 0] == table[3, 0], "tied weights diverged after changing the token table"
    else:
        assert head.data_ptr() != table.data_ptr(), "untied lm_head.weight must not share the token table"
        assert not torch.equal(head, table), "untied lm_head.weight must be initialised independently"


@given(c=configs())
def test_num_parameters_closed_form(model, c):
    """num_parameters() equals the closed form (embeddings, attention with kv heads, FFN, norms, head; tied once)."""
    lm = model.TransformerLM(model.ModelConfig(**c))
    got = lm.num_parameters()
    assert_equal(got, _closed_form_count(c), what=f"num_parameters() of {c}")
    unique = {p.data_ptr(): p.numel() for p in lm.parameters()}
    assert_equal(got, sum(unique.values()), what="num_parameters() vs the distinct parameter tensors")
    assert_equal(lm.num_parameters(exclude_embeddings=True), _closed_form_count(c, exclude_embeddings=True),
                 what="num_parameters(exclude_embeddings=True)")


@given(c=configs())
@settings(max_examples=10)
def test_default_d_ff(model, c):
    """d_ff=None means 4*d_model, or for swiglu ceil(8*d_model/3) rounded up to a multiple of 8."""
    c = {**c, "d_ff": None}
    lm = model.TransformerLM(model.ModelConfig(**c))
    for block in lm.blocks:
        assert_equal(block.ffn.w1.weight.shape[0], _expected_d_ff(c), what=f"FFN width for {c['activation']}")


@pytest.mark.parametrize("positional", POSITIONAL)
def test_gradients_reach_every_parameter(model, positional):
    """Backpropagating the loss gives every parameter a non-zero gradient."""
    c = {**BASE, "positional": positional, "tie_weights": False, "n_kv_heads": 1}
    lm = _build(model, c, 0, torch.float32)
    idx = randint(0, c["vocab_size"], (2, c["context_length"]), 1)
    lm(idx, randint(0, c["vocab_size"], idx.shape, 2))[1].backward()
    for name, p in lm.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"parameter {name} got no gradient"


@pytest.mark.parametrize("positional", POSITIONAL)
@settings(max_examples=5)
@given(seed=seeds)
def test_padding_mask(model, positional, seed):
    """With left padding (padding_mask False), the padded tokens do not change the logits of the real ones."""
    c = {**BASE, "positional": positional, "d_model": 16, "n_heads": 4}
    lm = _build(model, c, seed)
    idx = randint(0, c["vocab_size"], (2, 10), seed)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, :4] = False
    logits, _ = lm(idx, padding_mask=mask)
    changed = idx.clone()
    changed[0, :4] = randint(0, c["vocab_size"], (4,), seed + 1)
    logits_changed, _ = lm(changed, padding_mask=mask)
    assert_close(logits_changed[:, 4:], logits[:, 4:], what="logits of real tokens after changing padded ones")


def test_bad_inputs(model):
    """Ids outside [0, V), too-long input, a float or 1-D idx and wrong targets raise clear errors."""
    seed_all(0)
    lm = model.TransformerLM(model.ModelConfig(**BASE))
    with raises_clear(ValueError, "13"):
        lm(torch.tensor([[1, 13]]))
    with raises_clear(ValueError, "-1"):
        lm(torch.tensor([[-1, 2]]))
    with raises_clear(ValueError, "context_length"):
        lm(torch.zeros(1, 11, dtype=torch.long))
    with raises_clear(TypeError, "idx"):
        lm(torch.zeros(1, 4))
    with raises_clear(ValueError, "idx"):
        lm(torch.zeros(4, dtype=torch.long))
    with raises_clear(ValueError, "targets"):
        lm(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long))
    caches = lm.new_kv_cache(1)
    lm(torch.zeros(1, 8, dtype=torch.long), kv_cache=caches)
    with raises_clear(ValueError, "context_length"):
        lm(torch.zeros(1, 3, dtype=torch.long), kv_cache=caches)
    with raises_clear(TypeError, "config"):
        model.TransformerLM(BASE)


def test_new_kv_cache(model):
    """new_kv_cache(B, max_len) gives one empty cache per layer; each forward with it advances every cache."""
    seed_all(0)
    lm = model.TransformerLM(model.ModelConfig(**{**BASE, "n_layers": 3}))
    caches = lm.new_kv_cache(2, max_len=6)
    assert_equal(len(caches), 3, what="number of caches (one per layer)")
    assert_equal([cache.length for cache in caches], [0, 0, 0], what="lengths of new caches")
    lm(torch.zeros(2, 4, dtype=torch.long), kv_cache=caches)
    lm(torch.zeros(2, 1, dtype=torch.long), kv_cache=caches)
    assert_equal([cache.length for cache in caches], [5, 5, 5], what="cache lengths after 4 + 1 tokens")


# --- defaults, modes, state_dict round trip, low precision ----------------------------------------

def test_default_config_builds_the_documented_model(model, impl):
    """ModelConfig with only the required fields: learned positions, Pre-LN LayerNorm with biases, GELU 4*C, tied, MHA, no dropout."""
    seed_all(0)
    lm = model.TransformerLM(model.ModelConfig(**BASE))
    learned = impl.component("positional").LearnedPositionalEmbedding
    assert isinstance(lm.position_embedding, learned), \
        f"default positional='learned': got {type(lm.position_embedding).__name__}"
    assert lm.ln_f is not None and lm.ln_f.bias is not None, "default Pre-LN LayerNorm with bias: ln_f missing or no bias"
    assert lm.lm_head.weight is lm.token_embedding.weight, "default tie_weights=True: lm_head.weight is not the table"
    assert_equal(lm.num_parameters(), _closed_form_count(BASE), what="parameter count of the default model")
    for block in lm.blocks:
        assert block.ffn.w3 is None and block.ffn.w1.weight.shape[0] == 4 * BASE["d_model"], "default FFN: gelu, 4 * C"
        assert block.attn.n_kv_heads == BASE["n_heads"] and block.attn.window is None, "default attention: MHA"
    idx = randint(0, BASE["vocab_size"], (2, BASE["context_length"]), 0)
    block = lm.blocks[0]
    h = randn((2, 4, BASE["d_model"]), 1)
    expected_ffn = F.linear(F.gelu(F.linear(h, block.ffn.w1.weight, block.ffn.w1.bias)), block.ffn.w2.weight,
                            block.ffn.w2.bias)
    assert_close(block.ffn(h), expected_ffn, what="default activation (exact GELU)")
    lm.train()                                             # default dropout 0: training mode is deterministic
    assert_close(lm(idx)[0], lm.eval()(idx)[0], what="default model: train-mode logits vs eval-mode logits")


def test_train_and_eval_reach_every_submodule(model):
    """model.train() / .eval() set every submodule's mode; the helpers leave the mode as they found it."""
    seed_all(0)
    lm = model.TransformerLM(model.ModelConfig(**{**BASE, "dropout": 0.2, "positional": "rope"}))
    for mode in (True, False, True):
        lm.train(mode)
        wrong = [name or "model" for name, m in lm.named_modules() if m.training is not mode]
        assert not wrong, f"after model.train({mode}) these modules have training={not mode}: {wrong}"
        caches = lm.new_kv_cache(1)
        lm.num_parameters()
        lm.num_parameters(exclude_embeddings=True)
        lm(torch.zeros(1, 3, dtype=torch.long), kv_cache=caches)
        lm.reset_parameters()
        wrong = [name or "model" for name, m in lm.named_modules() if m.training is not mode]
        assert not wrong, (f"new_kv_cache / num_parameters / a cached forward / reset_parameters changed "
                           f"the mode of {wrong} (was training={mode})")


@settings(max_examples=8)
@given(c=configs(), seed=seeds)
def test_loaded_model_behaves_like_the_original(model, c, seed):
    """A fresh model that loads another's state_dict gives the same logits, loss and gradients, in eval and train mode."""
    c = {**c, "dropout": 0.2}
    original = _build(model, c, seed, torch.float32)
    seed_all(seed + 1)
    loaded = model.TransformerLM(model.ModelConfig(**c))
    loaded.load_state_dict(original.state_dict())
    assert_equal(sorted(loaded.state_dict()), sorted(original.state_dict()), what="state_dict keys")
    if c["tie_weights"]:
        assert loaded.lm_head.weight is loaded.token_embedding.weight, "load_state_dict untied the head"
    idx = randint(0, c["vocab_size"], (2, c["context_length"]), seed)
    targets = randint(0, c["vocab_size"], (2, c["context_length"]), seed + 1)
    for training in (False, True):
        results = []
        for lm in (original, loaded):
            lm.train(training)
            lm.zero_grad()
            torch.manual_seed(seed)                     # the same dropout masks in train mode
            logits, loss = lm(idx, targets)
            loss.backward()
            results.append((logits, loss, {n: p.grad.clone() for n, p in lm.named_parameters()}))
        (lo, so, go), (ll, sl, gl) = results
        mode = "train" if training else "eval"
        assert_close(ll, lo, what=f"logits of the loaded model vs the original ({mode} mode)", atol=0, rtol=0)
        assert_close(sl, so, what=f"loss of the loaded model vs the original ({mode} mode)", atol=0, rtol=0)
        for name in go:
            assert_close(gl[name], go[name], what=f"gradient of {name}, loaded vs original ({mode} mode)",
                         atol=0, rtol=0)


@settings(max_examples=8)
@given(c=configs(), seed=seeds, padded=st.booleans())
def test_fast_equals_written_out_in_training(model, c, seed, padded):
    """In train mode with dropout, fast=True gives the logits and loss of fast=False under the same RNG seed
    (in float64, as in ``test_fast_equals_written_out``)."""
    c = {**c, "dropout": 0.3}
    slow = _build(model, {**c, "fast": False}, seed, FAST_DTYPE).train()
    fast = _build(model, {**c, "fast": True}, seed, FAST_DTYPE, randomise=False).train()
    fast.load_state_dict(slow.state_dict())
    idx = randint(0, c["vocab_size"], (2, c["context_length"]), seed)
    targets = randint(0, c["vocab_size"], (2, c["context_length"]), seed + 1)
    mask = None
    if padded:
        mask = torch.ones(2, c["context_length"], dtype=torch.bool)
        mask[1, 2:] = False
    torch.manual_seed(seed)
    logits_s, loss_s = slow(idx, targets, padding_mask=mask)
    torch.manual_seed(seed)
    logits_f, loss_f = fast(idx, targets, padding_mask=mask)
    assert_close(logits_f, logits_s, what="train-mode logits of fast=True vs fast=False (same seed)")
    assert_close(loss_f, loss_s, what="train-mode loss of fast=True vs fast=False (same seed)")


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@settings(max_examples=3)
@given(c=configs(), seed=seeds)
def test_low_precision(model, dtype, c, seed, fast):
    """A model moved to float16 / bfloat16 gives logits and loss of that dtype, close to float64 on the same rounded weights.

    Tolerance: 16 * eps(dtype) * M for the logits and the loss, M = max(|h| |W_head|^T) with h the
    head's float64 input (a bound on the logits' operands), and at least the loss itself (measured
    worst relative to max|logits| and the loss over 120 models: 3.5).
    """
    lm = _build(model, {**c, "fast": fast}, seed, torch.float64)
    lm = lm.to(dtype).double()                       # the weights rounded to the dtype
    idx = randint(0, c["vocab_size"], (2, c["context_length"]), seed)
    targets = randint(0, c["vocab_size"], (2, c["context_length"]), seed + 1)
    seen = {}
    hook = lm.lm_head.register_forward_pre_hook(lambda module, args: seen.update(h=args[0].detach()))
    with torch.no_grad():
        expected, expected_loss = lm(idx, targets)
        hook.remove()
        magnitude = float((seen["h"].abs() @ lm.lm_head.weight.double().abs().T).max())
        got, loss = lm.to(dtype)(idx, targets)
    assert got.dtype == dtype and loss.dtype == dtype, f"logits / loss dtype: expected {dtype}, got {got.dtype} / {loss.dtype}"
    eps = torch.finfo(dtype).eps
    assert_close(got, expected.to(dtype), what=f"logits in {dtype} vs float64", atol=16 * eps * magnitude)
    assert_close(loss, expected_loss.to(dtype), what=f"loss in {dtype} vs float64",
                 atol=16 * eps * max(magnitude, float(expected_loss)))


# --- rolling KV caches: a sliding window past the context -------------------------------------------

@settings(max_examples=8)
@given(positional=st.sampled_from(["rope", "alibi", "none"]), data=st.data(), seed=seeds)
def test_rolling_caches_go_past_the_context(model, positional, data, seed):
    """A sliding-window model with rope, alibi or none: its caches (new_kv_cache) hold min(window,
    max_len) positions per layer, B * H_kv * that * D elements each, however many tokens are fed, and
    chunk by chunk, up to 3 times past context_length, the logits equal the windowed model's
    definition at the true positions (every key after RoPE at its absolute position)."""
    n_heads, head_dim = data.draw(st.sampled_from([2, 4]), label="H"), data.draw(st.sampled_from([2, 4]), label="D")
    c = data.draw(configs(positional, norm_placement="pre", n_heads=n_heads, d_model=n_heads * head_dim,
                          n_kv_heads=data.draw(st.sampled_from([None, 1, 2]), label="n_kv_heads")), label="config")
    c["window"] = data.draw(st.integers(1, c["context_length"] - 1), label="window")
    lm = _build(model, c, seed)
    assert lm.rolls_past_context, f"rolls_past_context must be True for window {c['window']} and {positional}"
    total = 3 * c["context_length"]
    idx = randint(0, c["vocab_size"], (2, total), seed)
    caches = lm.new_kv_cache(2, max_len=total)
    n_kv = c["n_kv_heads"] or n_heads
    numel = 2 * n_kv * c["window"] * head_dim
    pieces, pos = [], 0
    while pos < total:
        n = min(data.draw(st.sampled_from([1, 1, 2, c["window"] + 2]), label="chunk"), total - pos)
        logits, _ = lm(idx[:, pos:pos + n], kv_cache=caches)
        pieces.append(logits)
        pos += n
        assert_equal([(cache.k.numel(), cache.v.numel()) for cache in caches], [(numel, numel)] * len(caches),
                     what=f"cache (k, v) elements after {pos} tokens: B=2 * n_kv_heads * window * head_dim each")
    expected = windowed_lm_logits(lm, idx)
    assert_close(torch.cat(pieces, dim=1), expected,
                 what=f"rolling-cache logits over {total} tokens (context {c['context_length']}) vs definition")


@pytest.mark.parametrize("positional", ["learned", "sinusoidal"])
def test_absolute_positions_stop_at_the_context(model, positional):
    """Learned and sinusoidal positions have no row past the context: even with rolling caches a
    windowed model refuses to go past context_length (ValueError naming it); without a window the
    caches are plain KVCaches of max_len positions."""
    seed_all(0)
    lm = model.TransformerLM(model.ModelConfig(**{**BASE, "positional": positional, "window": 3})).eval()
    assert not lm.rolls_past_context, f"rolls_past_context must be False for {positional}"
    caches = lm.new_kv_cache(1, max_len=BASE["context_length"])
    assert_equal(caches[0].k.shape[2], 3, what="positions held by a windowed model's cache (window 3)")
    lm(torch.zeros(1, BASE["context_length"], dtype=torch.long), kv_cache=caches)
    with raises_clear(ValueError, "context_length"):
        lm(torch.zeros(1, 1, dtype=torch.long), kv_cache=caches)
    plain = model.TransformerLM(model.ModelConfig(**{**BASE, "positional": "rope"}))
    assert not plain.rolls_past_context, "rolls_past_context must be False without a window"
    assert_equal(plain.new_kv_cache(1, max_len=7)[0].k.shape[2], 7, what="positions held without a window")


# --- ModelConfig: both sides of every boundary, every default, names by value ---------------------

def test_config_number_boundaries(model):
    """norm_eps must be > 0 and rope_base > 1: the bound itself and below are ValueErrors naming the field, just above is accepted."""
    for name, bound in (("norm_eps", 0.0), ("rope_base", 1.0)):
        for bad in (bound, bound - 0.5, -1.0):
            with raises_clear(ValueError, name):
                model.ModelConfig(**BASE, **{name: bad})
        for good in (math.nextafter(bound, math.inf), bound + 0.5):
            config = model.ModelConfig(**BASE, **{name: good})
            assert_equal(getattr(config, name), good, what=f"ModelConfig({name}={good!r}).{name} (just above {bound})")
        with raises_clear(TypeError, name):
            model.ModelConfig(**BASE, **{name: "1.5"})


def test_config_optional_biases(model):
    """attention_bias and ffn_bias take None, True or False; anything else (1, 0, "yes") is a TypeError naming the field."""
    for name in ("attention_bias", "ffn_bias"):
        for bad in (1, 0, "yes"):
            with raises_clear(TypeError, name):
                model.ModelConfig(**BASE, **{name: bad})
        for good in (None, True, False):
            assert_equal(getattr(model.ModelConfig(**BASE, **{name: good}), name), good,
                         what=f"ModelConfig({name}={good!r}).{name}")


@pytest.mark.parametrize("positional", POSITIONAL)
def test_config_parity_rules_apply_to_their_scheme_only(model, positional):
    """Only rope needs an even head_dim and only sinusoidal an even d_model; the other schemes accept odd ones.

    Names are compared by value: a positional read from a file (an equal string that is not the
    literal) is held to the same rule.
    """
    name = fresh(positional)
    odd_head = dict(BASE, d_model=6, n_heads=2)                       # head_dim 3, d_model even
    odd_head_explicit = dict(BASE, d_model=8, n_heads=2, head_dim=3)  # head_dim set, odd
    odd_model = dict(BASE, d_model=7, n_heads=1)                      # d_model (and head_dim) odd
    for c in (odd_head, odd_head_explicit):
        if positional == "rope":
            with raises_clear(ValueError, "rope", "head_dim"):
                model.ModelConfig(**c, positional=name)
        else:
            model.ModelConfig(**c, positional=name)
    if positional in ("rope", "sinusoidal"):
        with raises_clear(ValueError, positional):
            model.ModelConfig(**odd_model, positional=name)
    else:
        model.ModelConfig(**odd_model, positional=name)
    model.ModelConfig(**dict(BASE, d_model=8, n_heads=2, head_dim=4), positional=name)   # even: accepted


def test_resolved_d_ff_for_every_width(model):
    """resolved_d_ff for d_model 1..96: d_ff when set; else 4 * d_model, or for swiglu ceil(8 d_model / 3) rounded up to a multiple of 8 (names by value)."""
    for activation in ("relu", "gelu", "gelu_tanh", "swiglu"):
        for d_model in range(1, 97):
            config = model.ModelConfig(**dict(BASE, d_model=d_model, n_heads=1), activation=fresh(activation))
            expected = 8 * math.ceil(math.ceil(8 * d_model / 3) / 8) if activation == "swiglu" else 4 * d_model
            assert_equal(config.resolved_d_ff, expected, what=f"resolved_d_ff of {activation}, d_model={d_model}")
        assert_equal(model.ModelConfig(**BASE, activation=activation, d_ff=20).resolved_d_ff, 20,
                     what=f"resolved_d_ff of {activation} with d_ff=20")
    seed_all(0)
    lm = model.TransformerLM(model.ModelConfig(**dict(BASE, d_model=3, n_heads=1), activation=fresh("swiglu")))
    for block in lm.blocks:                                  # ceil(8 * 3 / 3) = 8: already a multiple of 8
        assert_equal(tuple(block.ffn.w1.weight.shape), (8, 3), what="swiglu FFN w1 shape for d_model=3 (d_ff 8)")


ALL_DEFAULTS = dict(n_kv_heads=None, d_ff=None, dropout=0.0, activation="gelu", norm="layernorm",
                    norm_placement="pre", positional="learned", window=None, tie_weights=True, bias=True,
                    fast=False, norm_eps=1e-5, rope_base=10000.0, rope_pairing="interleaved", head_dim=None,
                    attention_bias=None, ffn_bias=None)


def test_from_dict_fills_every_default(model):
    """from_dict with only the required fields (or some optional ones) builds the config with every documented default."""
    config = model.ModelConfig.from_dict(dict(BASE))
    assert_equal(config, model.ModelConfig(**BASE), what="ModelConfig.from_dict(required fields only)")
    assert_equal({k: getattr(config, k) for k in ALL_DEFAULTS}, ALL_DEFAULTS,
                 what="defaults filled in by from_dict(required fields only)")
    assert_equal({k: getattr(model.ModelConfig(**BASE), k) for k in ALL_DEFAULTS}, ALL_DEFAULTS,
                 what="ModelConfig(required fields only) defaults")
    some = model.ModelConfig.from_dict({**BASE, "norm_eps": 1e-6, "positional": "rope"})
    assert_equal({k: getattr(some, k) for k in ALL_DEFAULTS},
                 {**ALL_DEFAULTS, "norm_eps": 1e-6, "positional": "rope"}, what="from_dict with two optional fields")
    with raises_clear(ValueError, "vocab_size"):
        model.ModelConfig.from_dict({k: v for k, v in BASE.items() if k != "vocab_size"})


# --- dropout: p = 0 draws nothing, the mask is u >= p ----------------------------------------------

def test_dropout_at_zero_draws_nothing(model):
    """dropout(x, 0, training) and dropout(x, p, False) return x itself and draw nothing from torch's global RNG."""
    x = randn((4, 5), 0)
    calls = [("dropout(x, 0.0, True)", lambda: model.dropout(x, 0.0, True)),
             ("dropout(x, 0.5, False)", lambda: model.dropout(x, 0.5, False))]
    for name, call in calls:
        torch.manual_seed(123)
        expected_draws = torch.rand(8)
        torch.manual_seed(123)
        got = call()
        assert_equal(torch.rand(8), expected_draws, what=f"torch's RNG after {name} (expected untouched)")
        assert got is x, f"{name} must return x itself (the identity)"


@pytest.mark.parametrize("fast", [False, True])
def test_dropout_zero_model_draws_nothing(model, fast):
    """A dropout-0 model's train-mode forward draws nothing from torch's global RNG (fast=False and fast=True)."""
    lm = _build(model, {**BASE, "fast": fast}, 0, torch.float32).train()
    idx = randint(0, BASE["vocab_size"], (2, 6), 1)
    torch.manual_seed(123)
    expected_draws = torch.rand(8)
    torch.manual_seed(123)
    lm(idx, randint(0, BASE["vocab_size"], (2, 6), 2))
    assert_equal(torch.rand(8), expected_draws,
                 what=f"torch's RNG after a train-mode forward of a dropout-0 model (fast={fast}; expected untouched)")


@given(seed=seeds, p=st.sampled_from([0.1, 0.25, 0.5, 0.75]), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_dropout_keeps_where_the_uniform_draw_is_at_least_p(model, seed, p, dtype):
    """dropout(x, p, True) is x / (1 - p) where u >= p and 0 elsewhere, u = torch.rand_like(x) drawn from the global RNG.

    The test sets p to one of the draws (u == p there: kept), so a strict u > p fails. Deterministic
    (the same seed gives the same u): no false failures; x has no zero (randn: probability 0).
    """
    x = randn((32, 16), seed, dtype)
    torch.manual_seed(seed)
    u = torch.rand_like(x)
    p = float(u.flatten()[int((u.flatten() - p).abs().argmin())])     # a draw near p: u == p somewhere
    torch.manual_seed(seed)
    got = model.dropout(x, p, True)
    keep = u >= p
    assert_equal(got != 0, keep, what=f"kept elements of dropout(x, {p}, True) (expected u >= p, u = torch.rand_like(x))")
    assert_close(got[keep], x[keep] / (1 - p), what="kept elements (expected x / (1 - p))")


# --- TransformerBlock: the layer index -------------------------------------------------------------

def test_block_layer_index_range(model):
    """TransformerBlock takes layer_index in [0, n_layers): n_layers - 1 is accepted; n_layers, n_layers + 1 and -1 are ValueErrors naming layer_index."""
    config = model.ModelConfig(**{**BASE, "n_layers": 3})
    seed_all(0)
    for good in (0, 2):
        assert_equal(model.TransformerBlock(config, good).layer_index, good, what=f"TransformerBlock(n_layers=3, {good}).layer_index")
    for bad in (3, 4, 300, -1):
        with raises_clear(ValueError, "layer_index"):
            model.TransformerBlock(config, bad)
    with raises_clear(TypeError, "layer_index"):
        model.TransformerBlock(config, 1.0)


# --- TransformerLM: names by value, every Linear's fast, re-initialisation --------------------------

@pytest.mark.parametrize("overrides", [
    dict(positional="learned", norm_placement="pre", activation="swiglu"),
    dict(positional="sinusoidal", norm_placement="post", activation="gelu"),
    dict(positional="rope", norm_placement="pre", activation="relu", norm="rmsnorm"),
], ids=["learned-pre-swiglu", "sinusoidal-post-gelu", "rope-pre-relu"])
def test_config_names_compare_by_value(model, overrides):
    """A config whose names are equal strings that are not the literals (read from a file) builds the same model: same parameters, same logits."""
    literal = _build(model, {**BASE, **overrides}, 0)
    named = _build(model, {**BASE, **{k: fresh(v) for k, v in overrides.items()}}, 1, randomise=False)
    assert_equal(type(named.position_embedding), type(literal.position_embedding),
                 what=f"position_embedding type for positional={overrides['positional']!r} (a fresh string)")
    assert_equal(named.ln_f is None, literal.ln_f is None,
                 what=f"ln_f is None for norm_placement={overrides['norm_placement']!r} (a fresh string)")
    assert_equal({k: tuple(v.shape) for k, v in named.state_dict().items()},
                 {k: tuple(v.shape) for k, v in literal.state_dict().items()}, what="state_dict keys and shapes")
    named.load_state_dict(literal.state_dict())
    idx = randint(0, BASE["vocab_size"], (2, BASE["context_length"]), 2)
    assert_close(named(idx)[0], literal(idx)[0], what="logits of the model built from fresh strings vs literals")


@pytest.mark.parametrize("fast", [False, True])
def test_every_linear_follows_config_fast(model, impl, fast):
    """TransformerLM sets every Linear's fast (lm_head, the attention projections, the FFN) to config.fast."""
    seed_all(0)
    linear = impl.component("linear").Linear
    for c in ({**BASE, "fast": fast}, {**BASE, "fast": fast, "tie_weights": False, "activation": "swiglu"}):
        lm = model.TransformerLM(model.ModelConfig(**c))
        layers = {name or "model": m.fast for name, m in lm.named_modules() if isinstance(m, linear)}
        assert "lm_head" in layers, "lm_head must be a Linear"
        assert_equal(layers, {name: fast for name in layers}, what=f"fast of every Linear with config.fast={fast}")


def test_reset_parameters_reinitialises(model, impl):
    """reset_parameters() on a model whose weights changed draws them again: Linear and embedding weights ~ N(0, 0.02^2), out_proj / w2 ~ N(0, (0.02 / sqrt(2 n_layers))^2), biases 0, norm gains 1 and norm biases 0.

    False-failure rate: every matrix has n >= 1,024 draws; the sample std is within 25% of sigma
    (11 standard errors sigma / sqrt(2n)) and the mean within 0.25 sigma (8 standard errors) except
    with probability below 1e-14 per matrix, 1e-12 for the ~20 matrices.
    """
    n_layers = 2
    c = dict(vocab_size=32, context_length=32, n_layers=n_layers, d_model=32, n_heads=4, tie_weights=False)
    seed_all(0)
    lm = model.TransformerLM(model.ModelConfig(**c))
    linear = impl.component("linear").Linear
    norms = {id(p) for b in lm.blocks for p in (*b.ln_1.parameters(), *b.ln_2.parameters())}
    norms |= {id(p) for p in lm.ln_f.parameters()}
    with torch.no_grad():
        for p in lm.parameters():
            p.fill_(3.0)
    lm.reset_parameters()
    residual = {id(b.attn.out_proj.weight) for b in lm.blocks} | {id(b.ffn.w2.weight) for b in lm.blocks}
    biases = {id(m.bias) for m in lm.modules() if isinstance(m, linear) and m.bias is not None}
    for name, p in lm.named_parameters():
        if id(p) in norms:  # gains 1, biases 0 (LayerNorm's bias, ln_f's too)
            expected = torch.ones_like(p) if name.endswith("weight") else torch.zeros_like(p)
            assert_close(p.detach(), expected, what=f"{name} after reset_parameters (norm gain 1, bias 0)")
            continue
        if id(p) in biases:
            assert_close(p.detach(), torch.zeros_like(p), what=f"{name} after reset_parameters (bias 0)")
            continue
        assert p.dim() == 2, f"unexpected parameter {name} of shape {tuple(p.shape)}"
        std = 0.02 / math.sqrt(2 * n_layers) if id(p) in residual else 0.02
        got = p.detach().std().item()
        assert abs(got - std) < 0.25 * std, f"std of {name} after reset_parameters: expected {std:.4g}, got {got:.4g}"
        assert abs(p.detach().mean().item()) < 0.25 * std, \
            f"mean of {name} after reset_parameters: expected 0, got {p.detach().mean().item():.4g}"


# --- TransformerLM.forward: its signature and its errors, both sides of each bound ---------------

def _names_number(message: str, n: int) -> bool:
    """Whether ``message`` holds the integer ``n`` as a whole number (not a part of another one)."""
    return re.search(rf"(?<![\w.-]){re.escape(str(n))}(?![\w.])", message) is not None


def test_forward_signature(model):
    """forward(idx, targets=None, *, padding_mask=None, kv_cache=None): idx and targets by position or keyword; padding_mask and kv_cache keyword only (a TypeError by position)."""
    lm = _build(model, BASE, 0)
    idx = randint(0, BASE["vocab_size"], (2, 5), 1)
    targets = randint(0, BASE["vocab_size"], (2, 5), 2)
    logits, loss = lm(idx, targets)
    for name, call in (("forward(idx, targets=targets)", lambda: lm(idx, targets=targets)),
                       ("forward(idx=idx, targets=targets)", lambda: lm(idx=idx, targets=targets))):
        got_logits, got_loss = call()
        assert_close(got_logits, logits, what=f"logits of {name} vs forward(idx, targets)")
        assert_close(got_loss, loss, what=f"loss of {name} vs forward(idx, targets)")
    assert lm(idx=idx)[1] is None, "forward(idx=idx): the loss must be None without targets"
    mask = torch.ones(2, 5, dtype=torch.bool)
    with pytest.raises(TypeError):
        lm(idx, None, mask)                                   # padding_mask is keyword-only
    with pytest.raises(TypeError):
        lm(idx, None, None, lm.new_kv_cache(2))               # kv_cache is keyword-only


def test_forward_idx_errors(model):
    """idx of rank 3 or with no token per row is a ValueError naming idx; an id outside [0, vocab_size) is a ValueError naming idx, the first bad id (row-major) and vocab_size."""
    lm = _build(model, BASE, 0)
    v = BASE["vocab_size"]
    for shape in ((1, 2, 3), (2, 0), (1, 0)):
        with raises_clear(ValueError, "idx"):
            lm(torch.zeros(shape, dtype=torch.long))
    for ids, first in (([[0, v]], v), ([[1, v + 1]], v + 1), ([[-1, 2]], -1), ([[3, -2]], -2),
                       ([[v + 7, 0, -3], [v, 1, 2]], v + 7), ([[0, 1, 2], [-5, v + 2, 1]], -5)):
        with raises_clear(ValueError, "idx", f"vocab_size={v}"):
            try:
                lm(torch.tensor(ids))
            except ValueError as err:
                assert _names_number(str(err), first), \
                    f"the error for idx {ids} should name the first id outside [0, {v}), {first}: {err}"
                raise
    for ids in ([[0, v - 1]], [[v - 1, 0, 5]]):                 # the bounds themselves: accepted
        assert_equal(tuple(lm(torch.tensor(ids))[0].shape), (len(ids), len(ids[0]), v),
                     what=f"logits shape for idx {ids} (ids 0 and vocab_size - 1 are in range)")


def test_compiled_forward_checks_ids_in_the_graph(model):
    """Compiled (dynamo, eager backend, one graph), forward gives the eager logits for ids in [0, vocab_size) and refuses an id outside with a RuntimeError naming idx and vocab_size."""
    v = BASE["vocab_size"]
    lm = _build(model, {**BASE, "n_layers": 1}, 0)
    idx = torch.tensor([[0, v - 1, 3], [5, 1, 0]])
    expected, _ = lm(idx)                                   # eager first: a stub reads as not started
    torch._dynamo.reset()
    compiled = torch.compile(lm, backend="eager", fullgraph=True)
    assert_close(compiled(idx)[0], expected, what="compiled logits for ids in [0, vocab_size) vs eager")
    for bad in ([[0, v, 3], [5, 1, 0]], [[0, 1, 3], [-1, 1, 0]], [[0, 1, 3], [5, v + 40, 0]]):
        with raises_clear(RuntimeError, "idx", f"vocab_size={v}"):
            compiled(torch.tensor(bad))


def test_kv_cache_list_length(model):
    """kv_cache must be a list of exactly one cache per layer: one short, one long or a bare cache is a ValueError naming kv_cache; the right length works, also past 256 layers."""
    seed_all(0)
    lm = model.TransformerLM(model.ModelConfig(**{**BASE, "n_layers": 3})).eval()
    idx = torch.zeros(1, 2, dtype=torch.long)
    caches = lm.new_kv_cache(1)
    for bad in (caches[:2], caches + lm.new_kv_cache(1)[:1], caches[0]):
        with raises_clear(ValueError, "kv_cache"):
            lm(idx, kv_cache=bad)
    c = dict(vocab_size=5, context_length=4, n_layers=257, d_model=2, n_heads=1, bias=False)
    deep = model.TransformerLM(model.ModelConfig(**c)).eval()
    caches = deep.new_kv_cache(1)
    with torch.no_grad():
        deep(torch.zeros(1, 1, dtype=torch.long), kv_cache=caches)
    assert_equal({cache.length for cache in caches}, {1}, what="lengths of 257 caches after one token")


def test_cached_positions_continue_from_the_first_cache(model):
    """With kv_cache, the new tokens' positions are caches[0].length + 0..T-1 (sublayers zeroed: logits = head(ln_f(E[idx] + P[positions])))."""
    c = {**BASE, "positional": "learned", "n_layers": 2}
    lm = _build(model, c, 0)
    _zero_sublayer_outputs(lm)
    caches = lm.new_kv_cache(1)
    lm(randint(0, c["vocab_size"], (1, 3), 1), kv_cache=caches)
    caches = [caches[0], lm.new_kv_cache(1)[1]]               # caches[0] holds 3 positions, caches[1] none
    idx = randint(0, c["vocab_size"], (1, 2), 2)
    logits, _ = lm(idx, kv_cache=caches)
    h = lm.token_embedding.weight[idx] + lm.position_embedding.weight[3:5]
    expected = _norm("layernorm", h, lm.ln_f) @ lm.lm_head.weight.T
    assert_close(logits, expected, what="logits of 2 new tokens after caches[0].length = 3 (positions 3, 4)")


@pytest.mark.parametrize("positional", ["learned", "rope"])
def test_context_length_bound_with_a_cache(model, positional):
    """Cached plus new tokens: exactly context_length is accepted, one more is a ValueError naming context_length and the total, for every split."""
    c = {**BASE, "positional": positional, "n_layers": 1}
    ctx = c["context_length"]
    lm = _build(model, c, 0)
    for start in range(ctx + 1):
        for t, ok in ((ctx - start + 1, False), (ctx - start, True)):
            if t == 0:
                continue
            caches = lm.new_kv_cache(1, max_len=3 * ctx)
            if start:
                lm(torch.zeros(1, start, dtype=torch.long), kv_cache=caches)
            idx = torch.zeros(1, t, dtype=torch.long)
            if ok:
                lm(idx, kv_cache=caches)
                assert_equal(caches[0].length, ctx, what=f"cache length after {start} cached + {t} new tokens")
                continue
            with raises_clear(ValueError, "context_length"):
                try:
                    lm(idx, kv_cache=caches)
                except ValueError as err:
                    assert _names_number(str(err), start + t), \
                        f"{start} cached + {t} new tokens: the error should name the total {start + t}: {err}"
                    raise
