"""Spec of ``attention``: scaled dot-product attention, multi-head attention and its variants
(grouped-query, sliding window), RoPE / ALiBi inside attention, padding, the KV cache, the fast path."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from .support import assert_close, assert_equal, randint, randn, raises_clear, seed_all, seeds, sizes

schemes = st.sampled_from(["none", "rope", "alibi", "learned"])  # learned / sinusoidal: no-ops in attention


@pytest.fixture(scope="module")
def attention(impl):
    return impl.component("attention")


@st.composite
def configs(draw, max_t=7):
    """A random attention layer: heads, kv heads (a divisor), head dim, window, positional scheme."""
    n_heads = draw(st.sampled_from([1, 2, 4]))
    n_kv = draw(st.sampled_from([d for d in (1, 2, 4) if n_heads % d == 0]))
    head_dim = draw(st.sampled_from([2, 4, 6]))
    t = draw(sizes(max_t))
    window = draw(st.one_of(st.none(), sizes(t + 1)))
    return dict(n_heads=n_heads, n_kv_heads=n_kv, head_dim=head_dim, t=t, window=window,
                positional=draw(schemes), bias=draw(st.booleans()), b=draw(sizes(3)))


def _build(attention, cfg, seed, dtype=torch.float64, fast=False, dropout=0.0, max_len=64):
    """build_attention with random weights AND biases (biases start at zero), in eval mode."""
    seed_all(seed)
    attn = attention.build_attention(d_model=cfg["n_heads"] * cfg["head_dim"], n_heads=cfg["n_heads"],
                                     n_kv_heads=cfg["n_kv_heads"], dropout=dropout, bias=cfg["bias"],
                                     positional=cfg["positional"], max_len=max_len, window=cfg["window"],
                                     fast=fast)
    with torch.no_grad():
        for i, p in enumerate(attn.parameters()):
            p.copy_(randn(p.shape, seed + 10 + i, torch.float64, 0.6))
    return attn.to(dtype).eval()


def _paper_alibi_slopes(n):
    def power_of_2(n):
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        return [start * start ** i for i in range(n)]
    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + _paper_alibi_slopes(2 * closest)[0::2][: n - closest]


def _rope(x, positions):
    """x (..., T, D) rotated as complex numbers z_i = x[2i] + j x[2i+1] times exp(j p 10000^(-2i/D))."""
    d = x.shape[-1]
    z = torch.view_as_complex(x.reshape(*x.shape[:-1], d // 2, 2).contiguous())
    angle = positions.double()[:, None] * 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    return torch.view_as_real(z * torch.polar(torch.ones_like(angle), angle)).reshape(x.shape)


def _brute_force(attn, cfg, x, padding_mask=None, positions=None):
    """The definition, one head and one query at a time, from the layer's weights (float64)."""
    b, t, c = x.shape
    h_n, kv_n, d = cfg["n_heads"], cfg["n_kv_heads"], cfg["head_dim"]
    positions = torch.arange(t) if positions is None else positions
    lin = lambda layer, h: F.linear(h, layer.weight, layer.bias)  # noqa: E731
    q = lin(attn.q_proj, x).view(b, t, h_n, d).transpose(1, 2)    # (B, H, T, D)
    k = lin(attn.k_proj, x).view(b, t, kv_n, d).transpose(1, 2)   # (B, Hkv, T, D)
    v = lin(attn.v_proj, x).view(b, t, kv_n, d).transpose(1, 2)
    if cfg["positional"] == "rope":
        q, k = _rope(q, positions), _rope(k, positions)
    slopes = _paper_alibi_slopes(h_n)
    out = torch.zeros(b, h_n, t, d, dtype=x.dtype)
    for bi in range(b):
        for h in range(h_n):
            g = h // (h_n // kv_n)                                # the kv head of query head h
            for i in range(t):
                keys = [j for j in range(t) if j <= i and (cfg["window"] is None or i - j < cfg["window"])
                        and (padding_mask is None or bool(padding_mask[bi, j]))]
                if not keys:
                    continue                                      # every key masked: zero output
                s = torch.stack([q[bi, h, i] @ k[bi, g, j] for j in keys]) / math.sqrt(d)
                if cfg["positional"] == "alibi":
                    s = s - slopes[h] * torch.tensor([float(positions[i] - positions[j]) for j in keys],
                                                     dtype=x.dtype)
                w = torch.softmax(s, dim=0)
                out[bi, h, i] = sum(w[n] * v[bi, g, j] for n, j in enumerate(keys))
    return lin(attn.out_proj, out.transpose(1, 2).reshape(b, t, c))


def _padding(b, t, seed):
    """A random (B, T) padding mask, True = real token, with at least one real token per row."""
    mask = torch.rand(b, t, generator=torch.Generator().manual_seed(seed)) > 0.35
    mask[:, -1] = True
    return mask


# --- causal_mask, softmax, scaled_dot_product_attention -----------------------------------------

@given(t_q=sizes(6), extra=sizes(4, 0))
def test_causal_mask_formula(attention, t_q, extra):
    """causal_mask(t_q, t_k)[i, j] = j <= i + (t_k - t_q): the queries are the last t_q positions."""
    t_k = t_q + extra
    got = attention.causal_mask(t_q, t_k)
    expected = torch.tensor([[j <= i + extra for j in range(t_k)] for i in range(t_q)])
    assert got.dtype == torch.bool, f"causal_mask dtype: expected torch.bool, got {got.dtype}"
    assert_close(got, expected, what=f"causal_mask({t_q}, {t_k})")
    assert_close(attention.causal_mask(t_q), torch.ones(t_q, t_q, dtype=torch.bool).tril(), what="causal_mask(t)")


@given(lead=st.sampled_from([(), (3,), (2, 2)]), tq=sizes(5), tk=sizes(5), d=sizes(6), dv=sizes(4),
       masked=st.booleans(), with_bias=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float64]),
       seed=seeds)
def test_sdpa_equals_torch(attention, lead, tq, tk, d, dv, masked, with_bias, dtype, seed):
    """scaled_dot_product_attention equals torch's (scale 1/sqrt(D), bool mask, additive bias)."""
    q, k, v = (randn((*lead, tq, d), seed, dtype, 1.5), randn((*lead, tk, d), seed + 1, dtype, 1.5),
               randn((*lead, tk, dv), seed + 2, dtype))
    mask = randint(0, 2, (tq, tk), seed).bool() if masked else None
    if mask is not None:
        mask[:, 0] = True  # no fully masked row here (torch gives NaN there)
    bias = randn((tq, tk), seed + 3, dtype) if with_bias else None
    got = attention.scaled_dot_product_attention(q, k, v, mask=mask, bias=bias)
    attn_mask = bias if mask is None else (mask if bias is None else bias.masked_fill(~mask, float("-inf")))
    assert_close(got, F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask), what="SDPA(q, k, v)")


@given(tq=sizes(6), tk=sizes(6), d=sizes(5), seed=seeds)
def test_sdpa_weights_are_a_distribution(attention, tq, tk, d, seed):
    """Returned weights: each row sums to 1 over the keys, masked entries are exactly 0, out = weights v."""
    q, k, v = randn((2, tq, d), seed, scale=2.0), randn((2, tk, d), seed + 1, scale=2.0), randn((2, tk, 3), seed + 2)
    mask = randint(0, 2, (2, tq, tk), seed).bool()
    mask[..., -1] = True
    out, weights = attention.scaled_dot_product_attention(q, k, v, mask=mask, return_weights=True)
    assert_equal(tuple(weights.shape), (2, tq, tk), what="weights shape")
    assert_close(weights.sum(-1), torch.ones(2, tq), what="row sums of the weights")
    assert bool((weights[~mask] == 0).all()), "masked entries of the weights must be exactly 0"
    assert bool((weights[mask] > 0).all()), "unmasked entries of the weights must be > 0"
    assert_close(out, weights @ v, what="out vs weights @ v")


@given(tq=sizes(5), tk=sizes(5), d=sizes(4), seed=seeds)
def test_sdpa_fully_masked_row_gives_zeros(attention, tq, tk, d, seed):
    """A query row whose every key is masked gets zero weights and a zero output, never NaN."""
    q, k, v = randn((tq, d), seed), randn((tk, d), seed + 1), randn((tk, d), seed + 2)
    mask = randint(0, 2, (tq, tk), seed).bool()
    mask[0] = False
    out, weights = attention.scaled_dot_product_attention(q, k, v, mask=mask, bias=randn((tq, tk), seed),
                                                          return_weights=True)
    assert not bool(torch.isnan(out).any()), "NaN in the output of a fully masked row"
    assert_close(out[0], torch.zeros(d), what="output of the fully masked query")
    assert_close(weights[0], torch.zeros(tk), what="weights of the fully masked query")


@given(t=sizes(6, 2), d=sizes(4), seed=seeds)
def test_sdpa_permutation_equivariant(attention, t, d, seed):
    """Without mask or positions, permuting queries permutes outputs; permuting keys with values changes nothing."""
    q, k, v = randn((t, d), seed, torch.float64), randn((t, d), seed + 1, torch.float64), randn((t, 3), seed + 2,
                                                                                              torch.float64)
    out = attention.scaled_dot_product_attention(q, k, v)
    perm = torch.randperm(t, generator=torch.Generator().manual_seed(seed))
    assert_close(attention.scaled_dot_product_attention(q[perm], k, v), out[perm], what="permuted queries")
    assert_close(attention.scaled_dot_product_attention(q, k[perm], v[perm]), out, what="permuted keys and values")


@given(t=sizes(6, 2), p=st.sampled_from([0.2, 0.5]), seed=seeds)
def test_sdpa_dropout_is_inverted(attention, t, p, seed):
    """With dropout_p, each weight is either dropped (0) or kept and scaled by 1 / (1 - p).

    False-failure rate: the 64 * t * t >= 256 weights are all > 0, each dropped independently with
    probability p in {0.2, 0.5}; "none dropped" has probability <= 0.8^256 = 1.6e-25 and "all
    dropped" <= 0.5^256 = 8.6e-78, so <= 1e-22 per run even at 400 examples (thorough).
    """
    q, k, v = randn((64, t, 3), seed), randn((64, t, 3), seed + 1), randn((64, t, 3), seed + 2)
    torch.manual_seed(seed)
    out, dropped = attention.scaled_dot_product_attention(q, k, v, dropout_p=p, return_weights=True)
    _, weights = attention.scaled_dot_product_attention(q, k, v, return_weights=True)
    kept = dropped != 0
    assert 0 < int(kept.sum()) < kept.numel(), "dropout should drop some weights and keep others"
    assert_close(dropped[kept], weights[kept] / (1 - p), what="kept weights (expected scaled by 1/(1-p))")
    assert_close(out, dropped @ v, what="out vs dropped weights @ v")


def test_softmax(attention):
    """softmax equals torch.softmax on finite rows, and gives zeros on an all -inf row."""
    x = randn((3, 5), 0, scale=10.0)
    assert_close(attention.softmax(x, dim=-1), torch.softmax(x, dim=-1), what="softmax(x, -1)")
    assert_close(attention.softmax(x, dim=0), torch.softmax(x, dim=0), what="softmax(x, 0)")
    x[1] = float("-inf")
    assert_close(attention.softmax(x, dim=-1)[1], torch.zeros(5), what="softmax of an all -inf row")
    big = torch.tensor([1000.0, 1000.0, -1000.0])
    assert_close(attention.softmax(big), torch.tensor([0.5, 0.5, 0.0]), what="softmax of large scores (stable)")


def test_sdpa_bad_arguments(attention):
    """Mismatched shapes, integer tensors and non-bool masks raise clear errors."""
    q = torch.zeros(2, 3, 4)
    with raises_clear(ValueError, "k"):
        attention.scaled_dot_product_attention(q, torch.zeros(2, 3, 5), torch.zeros(2, 3, 4))
    with raises_clear(ValueError, "v"):
        attention.scaled_dot_product_attention(q, q, torch.zeros(2, 2, 4))
    with raises_clear(TypeError, "mask"):
        attention.scaled_dot_product_attention(q, q, q, mask=torch.ones(3, 3))
    with raises_clear(TypeError, "q"):
        attention.scaled_dot_product_attention(q.long(), q, q)
    with raises_clear(ValueError, "t_k"):
        attention.causal_mask(4, 3)


# --- MultiHeadAttention -------------------------------------------------------------------------

@given(cfg=configs(), seed=seeds)
@pytest.mark.parametrize("padded", [False, True])
def test_layer_equals_brute_force(attention, cfg, seed, padded):
    """Every variant and positional scheme equals the definition computed one head and one query at a time."""
    attn = _build(attention, cfg, seed)
    x = randn((cfg["b"], cfg["t"], cfg["n_heads"] * cfg["head_dim"]), seed, torch.float64)
    mask = _padding(cfg["b"], cfg["t"], seed) if padded else None
    got = attn(x, positions=torch.arange(cfg["t"]), padding_mask=mask)
    assert_close(got, _brute_force(attn, cfg, x, mask), what=f"attention {cfg}")


@given(n_heads=st.sampled_from([1, 2, 4]), head_dim=sizes(4), t=sizes(6), bias=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=seeds)
def test_mha_equals_torch_multihead_attention(attention, n_heads, head_dim, t, bias, dtype, seed):
    """MultiHeadAttention equals torch.nn.MultiheadAttention (in_proj = cat(q, k, v), out_proj) under a causal mask."""
    cfg = dict(n_heads=n_heads, n_kv_heads=n_heads, head_dim=head_dim, window=None, positional="none", bias=bias)
    attn = _build(attention, cfg, seed, dtype)
    d = n_heads * head_dim
    x = randn((2, t, d), seed, dtype)
    got = attn(x)
    ref = torch.nn.MultiheadAttention(d, n_heads, bias=bias, batch_first=True).to(dtype)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
        ref.out_proj.weight.copy_(attn.out_proj.weight)
        if bias:
            ref.in_proj_bias.copy_(torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
            ref.out_proj.bias.copy_(attn.out_proj.bias)
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    expected, _ = ref(x, x, x, attn_mask=~causal, need_weights=False)  # torch: True = NOT allowed
    assert_close(got, expected, what="MultiHeadAttention vs torch.nn.MultiheadAttention")


@given(n_heads=st.sampled_from([2, 4]), head_dim=sizes(4), t=sizes(6), seed=seeds)
def test_mha_is_concatenated_heads(attention, n_heads, head_dim, t, seed):
    """MHA = out_proj(concat_h SDPA(x Wq_h, x Wk_h, x Wv_h, causal)), head h using rows h*D:(h+1)*D."""
    cfg = dict(n_heads=n_heads, n_kv_heads=n_heads, head_dim=head_dim, window=None, positional="none", bias=True)
    attn = _build(attention, cfg, seed)
    x = randn((2, t, n_heads * head_dim), seed, torch.float64)
    got = attn(x)
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    heads = []
    for h in range(n_heads):
        rows = slice(h * head_dim, (h + 1) * head_dim)
        q, k, v = (F.linear(x, p.weight[rows], p.bias[rows]) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
        heads.append(F.scaled_dot_product_attention(q, k, v, attn_mask=causal))
    expected = F.linear(torch.cat(heads, dim=-1), attn.out_proj.weight, attn.out_proj.bias)
    assert_close(got, expected, what="MHA vs concatenated per-head attention")


@given(n_heads=st.sampled_from([2, 4]), head_dim=st.sampled_from([2, 4]), t=sizes(6), positional=schemes, seed=seeds)
def test_gqa_with_all_kv_heads_equals_mha(attention, n_heads, head_dim, t, positional, seed):
    """GroupedQueryAttention with n_kv_heads == n_heads equals MultiHeadAttention with the same weights."""
    d = n_heads * head_dim
    seed_all(seed)
    gqa = attention.GroupedQueryAttention(d, n_heads, n_kv_heads=n_heads, positional=positional, max_len=16)
    mha = attention.MultiHeadAttention(d, n_heads, positional=positional, max_len=16)
    with torch.no_grad():
        for i, (p, r) in enumerate(zip(gqa.parameters(), mha.parameters())):
            p.copy_(randn(p.shape, seed + i, scale=0.6))
            r.copy_(p)
    x = randn((2, t, d), seed)
    assert_close(gqa(x), mha(x), what="GQA(n_kv_heads=n_heads) vs MHA")


@given(n_heads=st.sampled_from([2, 4, 6]), head_dim=st.sampled_from([2, 4]), t=sizes(6), positional=schemes,
       seed=seeds, data=st.data())
def test_gqa_equals_mha_with_repeated_kv_weights(attention, n_heads, head_dim, t, positional, seed, data):
    """GQA equals MHA whose k/v weights repeat kv head g for query heads g*G .. g*G+G-1 (G = H / H_kv)."""
    n_kv = data.draw(st.sampled_from([k for k in range(1, n_heads) if n_heads % k == 0]), label="n_kv_heads")
    d, group = n_heads * head_dim, n_heads // n_kv
    cfg = dict(n_heads=n_heads, n_kv_heads=n_kv, head_dim=head_dim, window=None, positional=positional, bias=True)
    gqa = _build(attention, cfg, seed)
    x = randn((2, t, d), seed, torch.float64)
    got = gqa(x)
    mha = attention.MultiHeadAttention(d, n_heads, positional=positional, max_len=64).double()
    with torch.no_grad():
        for name in ("q_proj", "out_proj"):
            getattr(mha, name).load_state_dict(getattr(gqa, name).state_dict())
        for name in ("k_proj", "v_proj"):
            src, dst = getattr(gqa, name), getattr(mha, name)
            dst.weight.copy_(src.weight.view(n_kv, head_dim, d).repeat_interleave(group, dim=0).reshape(d, d))
            dst.bias.copy_(src.bias.view(n_kv, head_dim).repeat_interleave(group, dim=0).reshape(d))
    assert_close(got, mha(x), what=f"GQA(n_kv_heads={n_kv}) vs MHA with repeated kv weights")


@given(cfg=configs(), seed=seeds)
def test_window_at_least_t_is_full_causal(attention, cfg, seed):
    """Sliding-window attention with window >= T equals full causal attention."""
    windowed = dict(cfg, window=cfg["t"] + cfg["b"] - 1)
    attn = _build(attention, windowed, seed)
    x = randn((cfg["b"], cfg["t"], cfg["n_heads"] * cfg["head_dim"]), seed, torch.float64)
    got = attn(x)
    full = _build(attention, dict(cfg, window=None), seed)
    assert_close(got, full(x), what=f"window {windowed['window']} >= T={cfg['t']} vs full causal")


@given(t=sizes(7), window=sizes(4), seed=seeds)
def test_window_weights(attention, t, window, seed):
    """With window w, query i puts weight only on keys i - w < j <= i (and the weights sum to 1)."""
    attn = _build(attention, dict(n_heads=2, n_kv_heads=2, head_dim=2, window=window, positional="none",
                                  bias=True), seed)
    _, weights = attn(randn((1, t, 4), seed, torch.float64), return_weights=True)
    allowed = torch.tensor([[i - window < j <= i for j in range(t)] for i in range(t)])
    assert_equal(tuple(weights.shape), (1, 2, t, t), what="weights shape (B, H, T, L)")
    assert bool((weights[..., ~allowed] == 0).all()), f"weight outside the window {window}"
    assert bool((weights[..., allowed] > 0).all()), f"zero weight inside the window {window}"
    assert_close(weights.sum(-1), torch.ones(1, 2, t, dtype=torch.float64), what="row sums")


@given(cfg=configs(), seed=seeds)
def test_causal(attention, cfg, seed):
    """Changing x after position t never changes the outputs at positions <= t (every scheme and variant)."""
    attn = _build(attention, cfg, seed)
    b, t = cfg["b"], cfg["t"]
    x = randn((b, t, cfg["n_heads"] * cfg["head_dim"]), seed, torch.float64)
    cut = int(randint(0, t, (), seed))
    y = attn(x)
    x2 = x.clone()
    x2[:, cut + 1:] = randn(x2[:, cut + 1:].shape, seed + 1, torch.float64, 3.0)
    assert_close(attn(x2)[:, : cut + 1], y[:, : cut + 1], what=f"outputs at <= {cut} after changing the future")


@given(cfg=configs(), seed=seeds)
def test_padding_values_never_matter(attention, cfg, seed):
    """The values at padded positions never change the outputs at real positions."""
    attn = _build(attention, cfg, seed)
    b, t = cfg["b"], cfg["t"]
    x = randn((b, t, cfg["n_heads"] * cfg["head_dim"]), seed, torch.float64)
    mask = _padding(b, t, seed)
    y = attn(x, padding_mask=mask)
    x2 = torch.where(mask[..., None], x, randn(x.shape, seed + 1, torch.float64, 5.0))
    y2 = attn(x2, padding_mask=mask)
    assert not bool(torch.isnan(y2).any()), "NaN in the output with padding"
    assert_close(y2[mask], y[mask], what="outputs at real positions after changing the padded inputs")


@given(cfg=configs(), seed=seeds, padded=st.booleans())
def test_fast_path_equals_written_out(attention, cfg, seed, padded):
    """fast=True gives the same outputs as the written-out path (padding and fully masked rows included)."""
    fast = _build(attention, cfg, seed, torch.float32, fast=True)
    x = randn((cfg["b"], cfg["t"], cfg["n_heads"] * cfg["head_dim"]), seed)
    mask = None
    if padded:
        mask = _padding(cfg["b"], cfg["t"], seed)
        mask[0, 0] = False  # a fully masked query row (the first query of a padded row)
    got = fast(x, padding_mask=mask)
    slow = _build(attention, cfg, seed, torch.float32, fast=False)
    assert not bool(torch.isnan(got).any()), "NaN from the fast path"
    assert_close(got, slow(x, padding_mask=mask), what="fast path vs written-out path")
    _, weights = fast(x, padding_mask=mask, return_weights=True)
    assert weights is not None, "return_weights=True must return the weights even with fast=True"


@given(cfg=configs(), seed=seeds, data=st.data())
@pytest.mark.parametrize("padded", [False, True])
def test_kv_cache_equals_full_forward(attention, cfg, seed, data, padded):
    """Decoding chunk by chunk (one token or more) with a KVCache gives the full causal forward's outputs."""
    attn = _build(attention, cfg, seed)
    b, t, d = cfg["b"], cfg["t"], cfg["n_heads"] * cfg["head_dim"]
    x = randn((b, t, d), seed, torch.float64)
    mask = _padding(b, t, seed) if padded else None
    cache = attention.KVCache(b, cfg["n_kv_heads"], t + 2, cfg["head_dim"], dtype=torch.float64)
    outs, start = [], 0
    while start < t:
        n = data.draw(st.integers(1, t - start), label="chunk")
        chunk_mask = None if mask is None else mask[:, start:start + n]
        outs.append(attn(x[:, start:start + n], positions=torch.arange(start, start + n),
                         padding_mask=chunk_mask, kv_cache=cache))
        start += n
        assert_equal(cache.length, start, what="cache.length after the chunk")
    got = torch.cat(outs, dim=1)
    full = attn(x, padding_mask=mask)
    if mask is not None:
        got, full = got[mask], full[mask]
    assert_close(got, full, what=f"cached decoding vs full forward {cfg}")


def test_kv_cache_one_token_at_a_time(attention):
    """Token-by-token decoding (positions defaulting to the cache length) matches for rope, alibi, GQA, window."""
    cfg = dict(n_heads=4, n_kv_heads=2, head_dim=4, window=3, positional="rope", bias=True, b=2)
    for positional in ("rope", "alibi"):
        attn = _build(attention, dict(cfg, positional=positional), 0)
        x = randn((2, 9, 16), 1, torch.float64)
        cache = attention.KVCache(2, 2, 9, 4, dtype=torch.float64)
        got = torch.cat([attn(x[:, i:i + 1], kv_cache=cache) for i in range(9)], dim=1)
        assert_close(got, attn(x), what=f"one token at a time ({positional}, GQA, window 3) vs full forward")


def test_kv_cache_update_and_overflow(attention):
    """KVCache.update appends and returns everything stored; overflowing max_len is a ValueError naming max_len."""
    cache = attention.KVCache(2, 3, 5, 4)
    assert_equal(cache.length, 0, what="length of a new cache")
    k1, v1 = randn((2, 3, 2, 4), 0), randn((2, 3, 2, 4), 1)
    k2, v2 = randn((2, 3, 3, 4), 2), randn((2, 3, 3, 4), 3)
    cache.update(k1, v1)
    k_all, v_all = cache.update(k2, v2)
    assert_equal(cache.length, 5, what="length after 2 + 3 positions")
    assert_close(k_all, torch.cat([k1, k2], dim=2), what="keys stored")
    assert_close(v_all, torch.cat([v1, v2], dim=2), what="values stored")
    with raises_clear(ValueError, "max_len", "5"):
        cache.update(k1[:, :, :1], v1[:, :, :1])
    assert_equal(cache.length, 5, what="length after a refused update")
    cache.reset()
    assert_equal(cache.length, 0, what="length after reset()")
    with raises_clear(ValueError, "k"):
        cache.update(randn((2, 2, 1, 4), 0), randn((2, 2, 1, 4), 0))
    with raises_clear(ValueError, "max_len"):
        attention.KVCache(2, 3, 0, 4)


def test_layer_kv_cache_overflow_and_positions(attention):
    """Through the layer: a cache overflow names max_len; positions that do not continue the cache are refused."""
    attn = attention.MultiHeadAttention(8, 2, max_len=32).eval()
    cache = attention.KVCache(1, 2, 4, 4)
    attn(randn((1, 3, 8), 0), kv_cache=cache)
    with raises_clear(ValueError, "max_len"):
        attn(randn((1, 2, 8), 1), kv_cache=cache)
    cache = attention.KVCache(1, 2, 8, 4)
    attn(randn((1, 3, 8), 0), kv_cache=cache)
    with raises_clear(ValueError, "positions"):
        attn(randn((1, 1, 8), 1), positions=torch.tensor([0]), kv_cache=cache)


@given(cfg=configs(), seed=seeds)
def test_dropout_only_in_training(attention, cfg, seed):
    """Eval mode ignores dropout (same as dropout=0); training mode drops attention weights.

    False-failure rate: with B = 16 and T = 8 there are at least B * H * T = 128 positive weights
    (the diagonal, even with window 1), each dropped with probability 0.5: "none dropped" has
    probability <= 0.5^128 = 2.9e-39 per example, <= 1.2e-36 per run at 400 examples.
    """
    cfg = dict(cfg, t=8, b=16)
    attn = _build(attention, cfg, seed, dropout=0.5)
    x = randn((cfg["b"], 8, cfg["n_heads"] * cfg["head_dim"]), seed, torch.float64)
    got = attn(x)
    plain = _build(attention, cfg, seed, dropout=0.0)
    assert_close(got, plain(x), what="eval mode with dropout=0.5 vs dropout=0")
    _, kept = attn(x, return_weights=True)
    attn.train()
    torch.manual_seed(seed)
    _, dropped = attn(x, return_weights=True)
    assert bool(((dropped == 0) & (kept > 0)).any()), "training mode: no attention weight was dropped"
    survivors = dropped != 0
    assert_close(dropped[survivors], kept[survivors] * 2, what="kept weights in training (scaled by 1/(1-0.5))")


def test_gradients_reach_every_parameter(attention):
    """Backpropagating through attention gives every parameter and the input a gradient."""
    for n_kv, window, positional in ((4, None, "none"), (2, 3, "rope"), (1, 2, "alibi")):
        cfg = dict(n_heads=4, n_kv_heads=n_kv, head_dim=4, window=window, positional=positional, bias=True)
        attn = _build(attention, cfg, 0, torch.float32)
        x = randn((2, 5, 16), 1).requires_grad_()
        (attn(x) * randn((2, 5, 16), 2)).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0, "no gradient reached the input"
        for name, p in attn.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"parameter {name} got no gradient ({cfg})"


def test_build_attention_picks_the_class(attention):
    """build_attention picks MHA, GQA, sliding window or both from (n_kv_heads, window); names its layers."""
    kw = dict(d_model=16, n_heads=4, dropout=0.0, bias=True, positional="rope", max_len=32, fast=False)
    plain = attention.build_attention(n_kv_heads=None, window=None, **kw)
    assert type(plain) is attention.MultiHeadAttention, f"expected MultiHeadAttention, got {type(plain).__name__}"
    assert type(attention.build_attention(n_kv_heads=4, window=None, **kw)) is attention.MultiHeadAttention
    gqa = attention.build_attention(n_kv_heads=2, window=None, **kw)
    assert isinstance(gqa, attention.GroupedQueryAttention), f"n_kv_heads=2: got {type(gqa).__name__}"
    swa = attention.build_attention(n_kv_heads=None, window=3, **kw)
    assert isinstance(swa, attention.SlidingWindowAttention), f"window=3: got {type(swa).__name__}"
    both = attention.build_attention(n_kv_heads=1, window=3, **kw)
    assert isinstance(both, attention.GroupedQueryAttention) and isinstance(both, attention.SlidingWindowAttention)
    for layer in (plain, gqa, both):
        assert isinstance(layer, attention.MultiHeadAttention)
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            assert hasattr(layer, name), f"{type(layer).__name__} has no {name}"
    assert_equal(tuple(gqa.k_proj.weight.shape), (8, 16), what="k_proj weight shape with 2 kv heads of 4")


def test_subclass_overriding_one_hook(attention):
    """A subclass overriding only attention_mask changes which keys are seen (an all-True mask: bidirectional)."""
    class Bidirectional(attention.MultiHeadAttention):
        def attention_mask(self, t_q, t_k, device=None):
            return torch.ones(t_q, t_k, dtype=torch.bool, device=device)

    seed_all(0)
    layer = Bidirectional(8, 2)
    x = randn((2, 5, 8), 0)
    got = layer(x)
    ref = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([layer.q_proj.weight, layer.k_proj.weight, layer.v_proj.weight]))
        ref.in_proj_bias.copy_(torch.cat([layer.q_proj.bias, layer.k_proj.bias, layer.v_proj.bias]))
        ref.out_proj.weight.copy_(layer.out_proj.weight)
        ref.out_proj.bias.copy_(layer.out_proj.bias)
    assert_close(got, ref(x, x, x, need_weights=False)[0], what="bidirectional subclass vs torch MHA without mask")


def test_bad_arguments(attention):
    """Bad sizes, ratios, windows, schemes and inputs raise clear errors naming the argument."""
    build = attention.build_attention
    with raises_clear(ValueError, "d_model", "n_heads"):
        build(d_model=10, n_heads=4)
    with raises_clear(ValueError, "n_kv_heads"):
        build(d_model=12, n_heads=6, n_kv_heads=4)
    with raises_clear(ValueError, "window"):
        build(d_model=8, n_heads=2, window=0)
    with raises_clear(ValueError, "positional", "rope"):
        build(d_model=8, n_heads=2, positional="relative")
    with raises_clear(ValueError, "head_dim"):
        build(d_model=6, n_heads=2, positional="rope")
    with raises_clear(ValueError, "dropout"):
        build(d_model=8, n_heads=2, dropout=1.0)
    attn = build(d_model=8, n_heads=2, max_len=6)
    with raises_clear(ValueError, "x"):
        attn(torch.zeros(2, 3, 7))
    with raises_clear(ValueError, "x"):
        attn(torch.zeros(3, 8))
    with raises_clear(ValueError, "padding_mask"):
        attn(torch.zeros(2, 3, 8), padding_mask=torch.ones(2, 4, dtype=torch.bool))
    with raises_clear(TypeError, "padding_mask"):
        attn(torch.zeros(2, 3, 8), padding_mask=torch.ones(2, 3))
    with raises_clear(ValueError, "max_len"):
        attn(torch.zeros(1, 7, 8))
    with raises_clear(ValueError, "positions"):
        attn(torch.zeros(1, 3, 8), positions=torch.arange(4))


# --- defaults, low precision, the fast path in training, a reset cache ---------------------------

def _torch_causal_mha(layer, x):
    """torch.nn.MultiheadAttention with ``layer``'s weights and biases, under a causal mask."""
    d = layer.d_model
    ref = torch.nn.MultiheadAttention(d, layer.n_heads, batch_first=True).to(x.dtype)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([layer.q_proj.weight, layer.k_proj.weight, layer.v_proj.weight]))
        ref.in_proj_bias.copy_(torch.cat([layer.q_proj.bias, layer.k_proj.bias, layer.v_proj.bias]))
        ref.out_proj.weight.copy_(layer.out_proj.weight)
        ref.out_proj.bias.copy_(layer.out_proj.bias)
    t = x.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    return ref(x, x, x, attn_mask=~causal, need_weights=False)[0]


@pytest.mark.parametrize("how", ["MultiHeadAttention", "build_attention"])
def test_defaults(attention, how):
    """Only d_model and n_heads given: biases, no dropout (train mode = torch MHA), no positions, causal, max_len 2048."""
    seed_all(0)
    layer = (attention.MultiHeadAttention(8, 2) if how == "MultiHeadAttention"
             else attention.build_attention(d_model=8, n_heads=2))
    assert type(layer) is attention.MultiHeadAttention, f"{how} with defaults: got {type(layer).__name__}"
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        assert getattr(layer, name).bias is not None, f"{how} default bias=True: {name}.bias is None"
    assert layer.fast is False, f"{how} default fast=False, got {layer.fast!r}"
    assert layer.window is None and layer.n_kv_heads == 2, "defaults: window None, n_kv_heads = n_heads"
    layer = layer.double().train()              # dropout 0 by default: training mode is deterministic
    with torch.no_grad():
        for i, p in enumerate(layer.parameters()):
            p.copy_(randn(p.shape, 10 + i, torch.float64, 0.6))
    x = randn((2, 5, 8), 0, torch.float64)
    assert_close(layer(x), _torch_causal_mha(layer, x),
                 what=f"{how}(8, 2) in training mode vs torch MHA (defaults: dropout 0, positional none, causal)")
    layer(x[:, :1], positions=torch.tensor([2047]))  # default max_len=2048: position 2047 is allowed
    with raises_clear(ValueError, "max_len"):
        layer(x[:, :1], positions=torch.tensor([2048]))


def test_sdpa_and_cache_defaults(attention):
    """SDPA without mask, bias, dropout_p or return_weights returns out = torch's SDPA; KVCache is float32 by default."""
    q, k, v = randn((2, 4, 3), 0), randn((2, 5, 3), 1), randn((2, 5, 2), 2)
    torch.manual_seed(0)
    out = attention.scaled_dot_product_attention(q, k, v)
    assert isinstance(out, torch.Tensor), f"return_weights=False by default: expected a tensor, got {type(out)}"
    assert_close(out, F.scaled_dot_product_attention(q, k, v), what="SDPA(q, k, v) with every default")
    cache = attention.KVCache(2, 1, 4, 3)
    assert cache.k.dtype == torch.float32 and cache.v.dtype == torch.float32, \
        f"KVCache default dtype float32, got {cache.k.dtype}"
    with raises_clear(TypeError, "k"):
        cache.update(randn((2, 1, 1, 3), 0, torch.float64), randn((2, 1, 1, 3), 1, torch.float64))


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@settings(max_examples=max(1, settings().max_examples // 2))
@given(cfg=configs(max_t=6), seed=seeds)
def test_low_precision(attention, dtype, cfg, seed, fast):
    """In float16 / bfloat16 the layer keeps the dtype and equals a float64 oracle on the same rounded weights.

    Tolerance: 10 * eps(dtype) * M (measured worst relative to max|y| over 300 layers: 3.5), since
    each of the projections, scores, softmax and output rounds once to the dtype; M bounds the
    output's operands: out_proj written with |W|, |b| applied to the largest |v| (so outputs that
    cancel to ~0 are fine).
    """
    layer = _build(attention, cfg, seed, torch.float64, fast=fast)
    layer = layer.to(dtype).double()                    # the weights rounded to the dtype
    x = randn((cfg["b"], cfg["t"], cfg["n_heads"] * cfg["head_dim"]), seed, torch.float64).to(dtype)
    mask = _padding(cfg["b"], cfg["t"], seed)
    expected = layer(x.double(), padding_mask=mask)
    got = layer.to(dtype)(x, padding_mask=mask)
    assert got.dtype == dtype, f"output dtype: expected {dtype}, got {got.dtype}"
    lin_abs = lambda layer, h: F.linear(h, layer.weight.double().abs(),  # noqa: E731
                                        None if layer.bias is None else layer.bias.double().abs())
    v_max = float(lin_abs(layer.v_proj, x.double().abs()).detach().max())
    magnitude = float(lin_abs(layer.out_proj, torch.full((layer.d_model,), v_max, dtype=torch.float64)).detach().max())
    atol = 10 * torch.finfo(dtype).eps * max(magnitude, float(expected.detach().abs().max()))
    assert_close(got, expected.to(dtype), what=f"attention in {dtype} vs float64 {cfg}", atol=atol)


@given(cfg=configs(), seed=seeds, p=st.sampled_from([0.0, 0.5]), padded=st.booleans())
def test_fast_path_equals_written_out_in_training(attention, cfg, seed, p, padded):
    """In training mode (dropout active or 0), fast=True equals fast=False with the same RNG seed.

    With dropout > 0 the fast path takes the written-out path, so it draws the same dropout mask
    from torch's global RNG (the contract fixes this); with dropout 0 nothing is random.
    """
    fast = _build(attention, cfg, seed, torch.float32, fast=True, dropout=p).train()
    slow = _build(attention, cfg, seed, torch.float32, fast=False, dropout=p).train()
    x = randn((cfg["b"], cfg["t"], cfg["n_heads"] * cfg["head_dim"]), seed)
    mask = _padding(cfg["b"], cfg["t"], seed) if padded else None
    torch.manual_seed(seed)
    got = fast(x, padding_mask=mask)
    torch.manual_seed(seed)
    expected = slow(x, padding_mask=mask)
    assert_close(got, expected, what=f"fast path vs written-out path in training mode (dropout {p})")


def test_kv_cache_reset_equals_fresh(attention):
    """After reset(), a used cache (padding stored) behaves exactly like a fresh one: lengths, k/v, padding_mask."""
    used = attention.KVCache(2, 1, 6, 4, dtype=torch.float64)
    stale = torch.tensor([[True, False, False, True, False, True], [False, True, False, False, True, True]])
    used.update(randn((2, 1, 6, 4), 0, torch.float64), randn((2, 1, 6, 4), 1, torch.float64), stale)
    used.reset()
    fresh = attention.KVCache(2, 1, 6, 4, dtype=torch.float64)
    chunks = [(randn((2, 1, 1, 4), 2, torch.float64), randn((2, 1, 1, 4), 3, torch.float64), None),
              (randn((2, 1, 1, 4), 4, torch.float64), randn((2, 1, 1, 4), 5, torch.float64),
               torch.tensor([[False], [True]])),
              (randn((2, 1, 3, 4), 6, torch.float64), randn((2, 1, 3, 4), 7, torch.float64), None)]
    assert_equal(used.length, 0, what="length after reset()")
    assert used.padding_mask is None, "padding_mask after reset() must be None (no padding stored)"
    for i, (k, v, pad) in enumerate(chunks):
        got, expected = used.update(k, v, pad), fresh.update(k, v, pad)
        assert_equal(used.length, fresh.length, what=f"length after update {i}")
        assert_close(got[0], expected[0], what=f"keys after update {i}, reset cache vs fresh cache")
        assert_close(got[1], expected[1], what=f"values after update {i}, reset cache vs fresh cache")
        if fresh.padding_mask is None:
            assert used.padding_mask is None, f"update {i}: fresh padding_mask None, reset cache {used.padding_mask}"
        else:
            assert used.padding_mask is not None, f"update {i}: the reset cache lost the padding"
            assert_close(used.padding_mask, fresh.padding_mask, what=f"padding_mask after update {i}")
    cfg = dict(n_heads=2, n_kv_heads=1, head_dim=4, window=None, positional="rope", bias=True)
    layer = _build(attention, cfg, 0)
    x = randn((2, 4, 8), 8, torch.float64)
    used.reset()
    fresh = attention.KVCache(2, 1, 6, 4, dtype=torch.float64)
    assert_close(layer(x, kv_cache=used), layer(x, kv_cache=fresh), what="layer output with a reset vs a fresh cache")


# --- the rolling KV cache (sliding window) ---------------------------------------------------------

@st.composite
def windowed_configs(draw, max_t=12):
    """A random sliding-window layer (``configs``) whose window is often shorter than the sequence."""
    cfg = draw(configs(max_t=max_t))
    cfg["window"] = draw(sizes(max(1, cfg["t"] - 1)))
    return cfg


def _check_ring(cache, b, n_kv, capacity, d, data_ptr, length, what):
    """The buffers are the ones allocated at construction, of exactly ``capacity`` positions."""
    expected = (b, n_kv, capacity, d)
    assert_equal(tuple(cache.k.shape), expected, what=f"{what}: cache.k shape (B, H_kv, capacity, D)")
    assert_equal(tuple(cache.v.shape), expected, what=f"{what}: cache.v shape (B, H_kv, capacity, D)")
    assert_equal(cache.k.data_ptr(), data_ptr, what=f"{what}: cache.k was reallocated (data_ptr)")
    assert_equal(cache.length, length, what=f"{what}: cache.length (positions seen)")
    assert_equal(cache.stored, min(length, capacity), what=f"{what}: cache.stored = min(length, capacity)")


@given(cfg=windowed_configs(), seed=seeds, data=st.data())
@pytest.mark.parametrize("padded", [False, True])
def test_rolling_cache_equals_full_cache_and_brute_force(attention, cfg, seed, data, padded):
    """Chunk by chunk (one token, or prefills longer than the window) a RollingKVCache of `window`
    slots gives the full KVCache's outputs and the windowed attention's definition; its buffers
    keep B * H_kv * window * D elements each and are never reallocated."""
    attn = _build(attention, cfg, seed)
    b, t, w, n_kv, hd = cfg["b"], cfg["t"], cfg["window"], cfg["n_kv_heads"], cfg["head_dim"]
    x = randn((b, t, cfg["n_heads"] * hd), seed, torch.float64)
    mask = _padding(b, t, seed) if padded else None
    rolling = attention.RollingKVCache(b, n_kv, w, hd, dtype=torch.float64)
    full = attention.KVCache(b, n_kv, t, hd, dtype=torch.float64)
    data_ptr = rolling.k.data_ptr()
    outs, start = [], 0
    while start < t:
        n = data.draw(st.integers(1, t - start), label="chunk")
        chunk_mask = None if mask is None else mask[:, start:start + n]
        got = attn(x[:, start:start + n], padding_mask=chunk_mask, kv_cache=rolling)
        expected = attn(x[:, start:start + n], padding_mask=chunk_mask, kv_cache=full)
        rows = slice(None) if mask is None else chunk_mask
        assert_close(got[rows], expected[rows], what=f"chunk {start}..{start + n - 1}: rolling vs full KV cache {cfg}")
        outs.append(got)
        start += n
        _check_ring(rolling, b, n_kv, w, hd, data_ptr, start, f"after positions 0..{start - 1} (window {w})")
    got, oracle = torch.cat(outs, dim=1), _brute_force(attn, cfg, x, mask)
    if mask is not None:
        got, oracle = got[mask], oracle[mask]
    assert_close(got, oracle, what=f"rolling cache vs the windowed attention's definition {cfg}")


@settings(max_examples=10)
@given(cfg=windowed_configs(max_t=6), max_len=sizes(6, 2), steps=st.integers(2, 4), seed=seeds, data=st.data())
def test_rolling_cache_decodes_past_max_len(attention, cfg, max_len, steps, seed, data):
    """With a RollingKVCache the positions go on past the layer's max_len (rope rotates each key at
    its absolute position): over `steps` times max_len positions, fed in random chunks, the outputs
    equal the definition at the true positions, each one-token step attends to min(p + 1, window)
    keys, and the buffers never grow."""
    w = min(cfg["window"], max_len)
    cfg = dict(cfg, window=w, positional=data.draw(st.sampled_from(["rope", "alibi", "none"]), label="positional"))
    attn = _build(attention, cfg, seed, max_len=max_len)
    b, n_kv, hd, total = cfg["b"], cfg["n_kv_heads"], cfg["head_dim"], steps * max_len
    x = randn((b, total, cfg["n_heads"] * hd), seed + 1, torch.float64)
    cache = attention.RollingKVCache(b, n_kv, w, hd, dtype=torch.float64)
    data_ptr = cache.k.data_ptr()
    outs, start = [], 0
    while start < total:
        n = data.draw(st.sampled_from([1, 1, 1, 2, w + 1]), label="chunk")
        n = min(n, total - start)
        y, weights = attn(x[:, start:start + n], kv_cache=cache, return_weights=True)
        if n == 1:
            assert_equal(weights.shape[-1], min(start + 1, w),
                         what=f"keys attended by the one-token step at position {start} (window {w})")
        outs.append(y)
        start += n
        _check_ring(cache, b, n_kv, w, hd, data_ptr, start, f"after position {start - 1} (max_len {max_len})")
    oracle = _brute_force(attn, cfg, x, positions=torch.arange(total))
    assert_close(torch.cat(outs, dim=1), oracle, what=f"{total} positions past max_len={max_len} vs definition {cfg}")


def test_rolling_cache_update(attention):
    """RollingKVCache.update returns the keys the new queries may see (positions first_position ..
    length - 1, each key with its position in key_positions, in any order) and keeps min(length,
    capacity); a chunk longer than the free slots still returns the stored keys with it."""
    b, n_kv, w, d = 2, 3, 4, 2
    cache = attention.RollingKVCache(b, n_kv, w, d, dtype=torch.float64)
    assert_equal((cache.length, cache.stored, cache.capacity), (0, 0, w), what="new cache (length, stored, capacity)")
    keys = randn((b, n_kv, 20, d), 0, torch.float64)
    values = randn((b, n_kv, 20, d), 1, torch.float64)
    start = 0
    for n in (3, 1, 1, 5, 1, 2, 7):                 # fills, wraps one at a time, and by chunks > window
        k_all, v_all = cache.update(keys[:, :, start:start + n], values[:, :, start:start + n])
        end = start + n
        what = f"update of positions {start}..{end - 1} (window {w})"
        pos = cache.key_positions
        first = cache.first_position
        assert_equal(sorted(pos.tolist()), list(range(first, end)),
                     what=f"{what}: key_positions (sorted) = first_position .. length - 1")
        needed, oldest = max(0, start - w + 1), max(0, start - w)  # the first query sees start - w + 1 on
        assert oldest <= first <= needed, (f"{what}: first_position must be in [{oldest}, {needed}] (every key "
                                           f"the queries see, nothing evicted before), got {first}")
        if n == 1:
            assert_equal(k_all.shape[2], min(end, w), what=f"{what}: keys returned for one token")
        assert_close(k_all, keys[:, :, pos], what=f"{what}: each returned key is the key of its key_positions")
        assert_close(v_all, values[:, :, pos], what=f"{what}: each returned value is the value of its key_positions")
        assert_equal((cache.length, cache.stored), (end, min(end, w)), what=f"{what}: (length, stored)")
        start = end


def test_rolling_cache_bounds_and_errors(attention):
    """max_len bounds the positions (capacity min(window, max_len), overflow names max_len, the cache
    unchanged); bad sizes, shapes, dtypes and a layer whose window differs are clear errors."""
    cache = attention.RollingKVCache(1, 2, 8, 4, max_len=5)
    assert_equal(cache.capacity, 5, what="capacity of window 8, max_len 5")
    cache.update(randn((1, 2, 5, 4), 0), randn((1, 2, 5, 4), 1))
    with raises_clear(ValueError, "max_len", "5"):
        cache.update(randn((1, 2, 1, 4), 0), randn((1, 2, 1, 4), 1))
    assert_equal(cache.length, 5, what="length after a refused update")
    for kwargs, name in ((dict(window=0), "window"), (dict(batch_size=0), "batch_size"),
                         (dict(head_dim=0), "head_dim"), (dict(max_len=0), "max_len")):
        args = {**dict(batch_size=1, n_kv_heads=2, window=3, head_dim=4), **kwargs}
        with raises_clear(ValueError, name):
            attention.RollingKVCache(**args)
    cache = attention.RollingKVCache(1, 2, 3, 4)
    with raises_clear(ValueError, "k"):
        cache.update(randn((1, 1, 1, 4), 0), randn((1, 1, 1, 4), 0))
    with raises_clear(TypeError, "k"):
        cache.update(randn((1, 2, 1, 4), 0, torch.float64), randn((1, 2, 1, 4), 0, torch.float64))
    plain = attention.MultiHeadAttention(8, 2, max_len=16).eval()
    with raises_clear(ValueError, "window"):
        plain(randn((1, 2, 8), 0), kv_cache=attention.RollingKVCache(1, 2, 3, 4))
    windowed = attention.SlidingWindowAttention(8, 2, max_len=16, window=4).eval()
    with raises_clear(ValueError, "window"):
        windowed(randn((1, 2, 8), 0), kv_cache=attention.RollingKVCache(1, 2, 3, 4))
    with raises_clear(ValueError, "max_len"):    # without a rolling cache max_len still holds
        windowed(randn((1, 17, 8), 0))


def test_rolling_cache_reset_equals_fresh(attention):
    """After reset(), a used rolling cache (wrapped, padding stored) behaves exactly like a fresh one."""
    cfg = dict(n_heads=2, n_kv_heads=1, head_dim=4, window=3, positional="alibi", bias=True)
    layer = _build(attention, cfg, 0, max_len=8)
    used = attention.RollingKVCache(2, 1, 3, 4, dtype=torch.float64)
    stale = torch.tensor([[True, False, True, True, False, True, True], [False, True, True, False, True, True, False]])
    layer(randn((2, 7, 8), 0, torch.float64), padding_mask=stale, kv_cache=used)
    used.reset()
    assert_equal((used.length, used.stored), (0, 0), what="(length, stored) after reset()")
    assert used.padding_mask is None, "padding_mask after reset() must be None (no padding stored)"
    fresh = attention.RollingKVCache(2, 1, 3, 4, dtype=torch.float64)
    x = randn((2, 10, 8), 1, torch.float64)
    for start, n in ((0, 2), (2, 1), (3, 4), (7, 1), (8, 2)):
        chunk = x[:, start:start + n]
        assert_close(layer(chunk, kv_cache=used), layer(chunk, kv_cache=fresh),
                     what=f"positions {start}..{start + n - 1}: reset cache vs fresh cache")


# --- generated-mutant properties: the functions and the attention modules ---------------------------

import contextlib  # noqa: E402
import re  # noqa: E402

from torch.overrides import TorchFunctionMode  # noqa: E402

from .support import fresh  # noqa: E402


def _distinct_int(n):
    """An int equal to ``n`` but another object (a size read from a config file): ``is`` on ints > 256 fails."""
    copy = int(str(n))
    assert copy == n
    return copy


@contextlib.contextmanager
def _raises_words(exc_type, *words):
    """Expect ``exc_type`` whose message holds each of ``words`` as a whole word (``x``, not the x of "expected")."""
    with pytest.raises(exc_type) as info:
        yield
    message = str(info.value)
    missing = [w for w in words if not re.search(rf"(?<![\w.]){re.escape(w)}(?![\w.])", message)]
    assert not missing, f"raised {exc_type.__name__}({message!r}), but the message should name {missing} (whole words)"


class _TorchSDPASpy(TorchFunctionMode):
    """Counts the calls to torch.nn.functional.scaled_dot_product_attention, however the code imported it."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def test_softmax_default_dim_is_the_last(attention):
    """softmax(x) without dim is the softmax over the last dimension (dim=-1)."""
    for shape in ((3, 5), (2, 3, 4)):
        x = randn(shape, 1, torch.float64, 3.0)
        assert_close(attention.softmax(x), torch.softmax(x, dim=-1),
                     what=f"softmax(x) of shape {shape} with the default dim vs torch.softmax(x, -1)")


def _assert_draws_nothing(calls):
    """Each call leaves torch's global RNG where it found it."""
    for name, call in calls.items():
        torch.manual_seed(123)
        expected_draws = torch.rand(8)
        torch.manual_seed(123)
        call()
        assert_equal(torch.rand(8), expected_draws, what=f"torch's RNG after {name} (expected untouched)")


def _layers_without_dropout(attention, fast):
    """A layer in eval mode (whatever its dropout) and one in training mode with dropout 0, as calls."""
    layers = {f"dropout={p}, fast={fast}, {mode} mode": attention.MultiHeadAttention(8, 2, dropout=p, fast=fast).train(
              mode == "training") for p, mode in ((0.5, "eval"), (0.0, "training"))}
    return {name: (lambda layer=layer: layer(randn((2, 5, 8), 4))) for name, layer in layers.items()}


def test_dropout_zero_returns_x_and_draws_nothing(attention):
    """dropout(x, 0) returns x itself and draws nothing from torch's global RNG; nor does SDPA with
    dropout_p=0, nor a layer in eval mode (whatever its dropout) or in training mode with dropout 0."""
    x = randn((4, 6), 0)
    q, k, v = randn((2, 3, 4), 1), randn((2, 5, 4), 2), randn((2, 5, 4), 3)
    assert attention.dropout(x, 0.0) is x, "dropout(x, 0.0) must return x itself (p = 0 returns x)"
    _assert_draws_nothing({"dropout(x, 0.0)": lambda: attention.dropout(x, 0.0),
                           "scaled_dot_product_attention(q, k, v, dropout_p=0.0)":
                               lambda: attention.scaled_dot_product_attention(q, k, v, dropout_p=0.0),
                           **_layers_without_dropout(attention, fast=False)})


def test_fast_path_without_dropout_draws_nothing(attention):
    """With fast=True, a layer in eval mode (whatever its dropout) or in training mode with dropout 0 draws
    nothing from torch's global RNG either."""
    _assert_draws_nothing(_layers_without_dropout(attention, fast=True))


@given(seed=seeds, p=st.sampled_from([0.1, 0.25, 0.5, 0.75]), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_dropout_keeps_where_the_uniform_draw_is_at_least_p(attention, seed, p, dtype):
    """dropout(x, p) is x / (1 - p) where u >= p and 0 elsewhere, u = torch.rand_like(x) drawn from the global RNG.

    The test sets p to one of the draws (u == p there: kept), so a strict u > p fails. Deterministic
    (the same seed gives the same u): no false failures; x has no zero (randn: probability 0).
    """
    x = randn((32, 16), seed, dtype)
    torch.manual_seed(seed)
    u = torch.rand_like(x)
    p = float(u.flatten()[int((u.flatten() - p).abs().argmin())])     # a draw near p: u == p somewhere
    torch.manual_seed(seed)
    got = attention.dropout(x, p)
    keep = u >= p
    assert_equal(got != 0, keep, what=f"kept elements of dropout(x, {p}) (expected u >= p, u = torch.rand_like(x))")
    assert_close(got[keep], x[keep] / (1 - p), what="kept elements (expected x / (1 - p))")


@given(seed=seeds, p=st.sampled_from([0.2, 0.3, 0.8]))
def test_dropout_drops_a_fraction_p(attention, seed, p):
    """dropout(x, p) zeroes each element with probability p: about a fraction p of 20000 elements.

    False-failure rate: 20000 independent drops; Hoeffding: P(|fraction - p| >= 0.05) <=
    2 exp(-2 * 20000 * 0.05^2) = 2 exp(-100) = 7.4e-44 per example, < 1e-40 per run at 400 examples.
    """
    torch.manual_seed(seed)
    got = attention.dropout(torch.ones(20000, dtype=torch.float64), p)
    fraction = float((got == 0).double().mean())
    assert abs(fraction - p) < 0.05, f"dropout(x, {p}) zeroed a fraction {fraction:.4f} of the elements, expected ~{p}"


def test_sdpa_argument_boundaries(attention):
    """SDPA refuses rank-1 q, k or v and v with more positions than k (ValueError naming them, the message
    giving k's positions); dropout_p 0 and 0.999 are accepted, -0.1 and 1.0 refused; 300 keys work."""
    q, k, v = randn((2, 3, 4), 0), randn((2, 5, 4), 1), randn((2, 5, 4), 2)
    for name, args in (("q", (q[0, 0], k[0], v[0])), ("k", (q[0], k[0, 0], v[0])), ("v", (q[0], k[0], v[0, 0]))):
        with raises_clear(ValueError, name, "dimensions"):
            attention.scaled_dot_product_attention(*args)
    with _raises_words(ValueError, "v", "5"):           # k's 5 positions (v: shape (2, 6, 4))
        attention.scaled_dot_product_attention(q, k, randn((2, 6, 4), 3))
    for p in (0.0, 0.999):
        out = attention.scaled_dot_product_attention(q, k, v, dropout_p=p)
        assert_equal(tuple(out.shape), (2, 3, 4), what=f"SDPA output shape with dropout_p={p}")
        assert bool(torch.isfinite(out).all()), f"SDPA with dropout_p={p}: non-finite output"
    for p in (-0.1, 1.0):
        with raises_clear(ValueError, "dropout_p"):
            attention.scaled_dot_product_attention(q, k, v, dropout_p=p)
    q, k, v = randn((1, 2), 4, torch.float64), randn((300, 2), 5, torch.float64), randn((300, 3), 6, torch.float64)
    assert_close(attention.scaled_dot_product_attention(q, k, v), F.scaled_dot_product_attention(q, k, v),
                 what="SDPA with 300 keys")


def test_layer_argument_boundaries(attention):
    """The plain class refuses n_kv_heads < n_heads and a window, naming the variant to use; dropout 0 is
    accepted and -0.1 refused; x of rank 2 or 4 is a ValueError naming x."""
    with raises_clear(ValueError, "n_kv_heads", "GroupedQueryAttention"):
        attention.MultiHeadAttention(8, 2, n_kv_heads=1)
    with raises_clear(ValueError, "window", "SlidingWindowAttention"):
        attention.MultiHeadAttention(8, 2, window=3)
    with raises_clear(ValueError, "dropout"):
        attention.MultiHeadAttention(8, 2, dropout=-0.1)
    layer = attention.MultiHeadAttention(8, 2, dropout=0.0).eval()
    for shape in ((3, 8), (2, 3, 4, 8)):
        with _raises_words(ValueError, "x"):
            layer(torch.zeros(shape))


def test_layer_length_boundaries_and_messages(attention):
    """max_len positions in all are accepted and one more refused (the message counts them), also after a cached
    prefix; positions not continuing the cache name the expected arange; a short positions or a smaller
    padding_mask is refused."""
    layer = attention.MultiHeadAttention(8, 2, max_len=8).eval()
    x = randn((2, 9, 8), 0)
    assert_equal(tuple(layer(x[:, :8]).shape), (2, 8, 8), what="output shape of max_len=8 positions")
    with raises_clear(ValueError, "9 positions", "max_len=8"):
        layer(x)
    cache = attention.KVCache(2, 2, 20, 4)                 # longer than the layer's max_len
    layer(x[:, :3], kv_cache=cache)
    with raises_clear(ValueError, "positions", "arange(3, 4)"):
        layer(x[:, 3:4], positions=torch.tensor([0]), kv_cache=cache)
    with raises_clear(ValueError, "9 positions", "max_len=8"):   # 3 cached + 6 new
        layer(x[:, 3:9], kv_cache=cache)
    assert_equal(tuple(layer(x[:, 3:8], kv_cache=cache).shape), (2, 5, 8), what="3 cached + 5 new = max_len")
    with raises_clear(ValueError, "positions"):
        layer(x[:, :3], positions=torch.arange(2))
    for shape in ((2, 2), (1, 3)):
        with raises_clear(ValueError, "padding_mask"):
            layer(x[:, :3], padding_mask=torch.ones(shape, dtype=torch.bool))


@pytest.mark.parametrize("fast", [False, True])
def test_positional_names_compare_by_value(attention, fast):
    """A positional name equal to "rope" / "alibi" but not the literal acts the same (with a KV cache too);
    "sinusoidal", like "learned", does nothing inside attention (= "none")."""
    cfg = dict(n_heads=2, n_kv_heads=2, head_dim=4, window=None, bias=True)
    x = randn((2, 5, 8), 0, torch.float64)
    for name in ("rope", "alibi"):
        literal = _build(attention, dict(cfg, positional=name), 1, fast=fast)
        copy = _build(attention, dict(cfg, positional=fresh(name)), 1, fast=fast)
        expected = literal(x)
        assert_close(copy(x), expected, what=f"positional={name!r} read at run time vs the literal")
        cache = attention.KVCache(2, 2, 5, 4, dtype=torch.float64)
        got = torch.cat([copy(x[:, a:b], kv_cache=cache) for a, b in ((0, 3), (3, 4), (4, 5))], dim=1)
        assert_close(got, expected, what=f"positional={name!r} read at run time, with a KV cache, vs the literal")
    none = _build(attention, dict(cfg, positional="none"), 1, fast=fast)
    sinusoidal = _build(attention, dict(cfg, positional="sinusoidal"), 1, fast=fast)
    assert sinusoidal.rope is None, "positional='sinusoidal' has no rope"
    assert_close(sinusoidal(x), none(x), what="positional='sinusoidal' vs 'none' inside attention")


def test_sizes_past_256_compare_by_value(attention):
    """300 heads with n_kv_heads an equal but distinct 300 are plain multi-head attention (= torch's), and a
    window of 300 takes a RollingKVCache whose window is an equal but distinct 300."""
    n = 300
    seed_all(0)
    layer = attention.build_attention(d_model=n, n_heads=n, n_kv_heads=_distinct_int(n))
    assert type(layer) is attention.MultiHeadAttention, f"n_kv_heads = n_heads = 300: got {type(layer).__name__}"
    x = randn((1, 2, n), 0)
    assert_close(layer(x), _torch_causal_mha(layer, x), what="300 heads of size 1 vs torch MHA")
    windowed = attention.SlidingWindowAttention(8, 2, window=n, max_len=16).eval()
    x = randn((1, 3, 8), 1)
    cache = attention.RollingKVCache(1, 2, _distinct_int(n), 4)
    assert_close(windowed(x, kv_cache=cache), windowed(x), what="window 300 with a RollingKVCache of window 300")


def test_expand_kv_must_return_n_heads(attention):
    """An expand_kv hook returning fewer or more than n_heads heads is a ValueError naming expand_kv, n_heads and
    the count it returned."""
    class Unexpanded(attention.MultiHeadAttention):
        def expand_kv(self, k, v):
            return k, v

    class Doubled(attention.MultiHeadAttention):
        def expand_kv(self, k, v):
            return k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)

    x = randn((3, 5, 8), 0)
    for layer, count in ((Unexpanded(8, 2, n_kv_heads=1), "1"), (Doubled(8, 2), "4")):
        with _raises_words(ValueError, "expand_kv", "n_heads=2", count):
            layer.eval()(x)


@pytest.mark.parametrize("n_kv_heads", [2, 1])
@pytest.mark.parametrize("positional", ["none", "rope"])
def test_fast_path_with_kv_cache_equals_full_forward(attention, positional, n_kv_heads):
    """fast=True with a KVCache, in chunks of 2, 1, 2, 1, 3, 1 tokens, equals the written-out full forward;
    so do fast=True forwards of 2 and 10 tokens without a cache."""
    cfg = dict(n_heads=2, n_kv_heads=n_kv_heads, head_dim=4, window=None, positional=positional, bias=True)
    fast, slow = _build(attention, cfg, 3, fast=True), _build(attention, cfg, 3)
    x = randn((2, 10, 8), 4, torch.float64)
    expected = slow(x)
    for t in (2, 10):
        assert_close(fast(x[:, :t]), expected[:, :t], what=f"fast path, {t} tokens, vs written out ({cfg})")
    cache, outs, start = attention.KVCache(2, n_kv_heads, 10, 4, dtype=torch.float64), [], 0
    for n in (2, 1, 2, 1, 3, 1):
        outs.append(fast(x[:, start:start + n], kv_cache=cache))
        assert_close(outs[-1], expected[:, start:start + n],
                     what=f"fast path with a KV cache, tokens {start}..{start + n - 1}, vs written out ({cfg})")
        start += n


def test_fast_path_in_training_applies_dropout(attention):
    """fast=True in training mode with dropout (the plain causal layer, no padding) equals fast=False under the
    same seed: it drops the same weights (a deterministic comparison)."""
    cfg = dict(n_heads=2, n_kv_heads=2, head_dim=4, window=None, positional="none", bias=True)
    fast = _build(attention, cfg, 5, fast=True, dropout=0.5).train()
    slow = _build(attention, cfg, 5, dropout=0.5).train()
    x = randn((4, 6, 8), 6, torch.float64)
    for t in (1, 6):
        torch.manual_seed(7)
        got = fast(x[:, :t])
        torch.manual_seed(7)
        assert_close(got, slow(x[:, :t]), what=f"fast vs written out in training mode, dropout 0.5, {t} tokens")


def test_fast_path_calls_an_overridden_attend(attention):
    """fast=True still calls a subclass's attend hook: the plain causal shortcut is for the base class's hooks only."""
    class Silent(attention.MultiHeadAttention):
        def attend(self, q, k, v, mask, bias, need_weights=False):
            return torch.zeros_like(q), None

    layer = Silent(8, 2, fast=True).eval()
    with torch.no_grad():
        layer.out_proj.bias.copy_(randn((8,), 0))
    for t in (1, 4):
        assert_close(layer(randn((2, t, 8), 1)), layer.out_proj.bias.detach().expand(2, t, 8),
                     what=f"fast=True, {t} tokens, with attend returning zeros (expected out_proj.bias everywhere)")


@pytest.mark.parametrize("fast", [False, True])
def test_attend_need_weights_defaults_to_false(attention, fast):
    """attend(q, k, v, mask, bias) is attend(..., need_weights=False): the same output, weights None or not alike."""
    q, k, v = randn((2, 2, 3, 4), 0), randn((2, 2, 3, 4), 1), randn((2, 2, 3, 4), 2)
    mask = torch.ones(3, 3, dtype=torch.bool).tril()
    layer = attention.MultiHeadAttention(8, 2, fast=fast).eval()
    out, weights = layer.attend(q, k, v, mask, None)
    out_false, weights_false = layer.attend(q, k, v, mask, None, need_weights=False)
    assert (weights is None) == (weights_false is None), \
        f"fast={fast}: attend's weights by default {type(weights)}, with need_weights=False {type(weights_false)}"
    assert_close(out, out_false, what=f"fast={fast}: attend by default vs need_weights=False")


def test_fast_switch_chooses_torch_sdpa(attention):
    """fast=True runs torch's scaled_dot_product_attention when no weights are requested and no dropout is active
    (padding and ALiBi included); fast=False, return_weights and active dropout never call it."""
    x = randn((2, 5, 8), 0, torch.float64)
    mask = _padding(2, 5, 1)
    for positional in ("none", "alibi"):
        cfg = dict(n_heads=2, n_kv_heads=2, head_dim=4, window=None, positional=positional, bias=True)
        for fast, padding, weights, train in ((True, None, False, False), (True, mask, False, False),
                                              (False, None, False, False), (False, mask, False, False),
                                              (True, mask, True, False), (True, None, False, True)):
            layer = _build(attention, cfg, 2, fast=fast, dropout=0.5).train(train)
            with _TorchSDPASpy() as spy:
                layer(x, padding_mask=padding, return_weights=weights)
            expected = fast and not weights and not train
            assert (spy.calls > 0) == expected, (
                f"fast={fast}, padded={padding is not None}, return_weights={weights}, training={train}, "
                f"{positional}: torch's scaled_dot_product_attention called {spy.calls} times, expected "
                f"{'at least once' if expected else 'never'}")


def test_build_attention_exact_classes(attention):
    """build_attention gives exactly GroupedQueryAttention for n_kv_heads < n_heads without a window, exactly
    SlidingWindowAttention for a window without fewer kv heads."""
    kw = dict(d_model=16, n_heads=4, max_len=32)
    for args, cls in ((dict(n_kv_heads=2), attention.GroupedQueryAttention),
                      (dict(window=3), attention.SlidingWindowAttention),
                      (dict(n_kv_heads=4, window=3), attention.SlidingWindowAttention),
                      (dict(n_kv_heads=1, window=3), attention.SlidingWindowGroupedQueryAttention)):
        layer = attention.build_attention(**args, **kw)
        assert type(layer) is cls, f"build_attention({args}): expected {cls.__name__}, got {type(layer).__name__}"


# --- generated-mutant properties: KVCache and RollingKVCache -----------------------------------------

def _rolling_state(cache):
    """The observable state of a RollingKVCache: its sizes, its slots and the keys the last update returned."""
    mask = cache.padding_mask
    return dict(length=cache.length, stored=cache.stored, first_position=cache.first_position,
                key_positions=cache.key_positions.tolist(), slot_positions=cache.slot_positions.tolist(),
                padding_mask=None if mask is None else mask.tolist())


def _assert_empty_rolling(cache, what):
    """A fresh (or reset) RollingKVCache: nothing seen, every slot empty (-1), no key returned yet."""
    assert_equal((cache.length, cache.stored), (0, 0), what=f"{what}: (length, stored)")
    assert_equal(cache.slot_positions.tolist(), [-1] * cache.capacity, what=f"{what}: slot_positions (-1 = empty)")
    assert cache.key_positions.dtype == torch.long, f"{what}: key_positions dtype: expected torch.long, got " \
                                                    f"{cache.key_positions.dtype}"
    assert_equal(cache.key_positions.tolist(), [], what=f"{what}: key_positions (no update yet: no keys)")
    assert_equal(cache.first_position, 0, what=f"{what}: first_position (no update yet)")
    assert cache.padding_mask is None, f"{what}: padding_mask must be None (no padding stored), got {cache.padding_mask}"


def test_rolling_cache_reset_equals_fresh_every_observable(attention):
    """After reset() a used rolling cache equals a fresh one in every observable, and each returned key's
    padding flag is the one given with it (True when its update had no padding_mask)."""
    b, n_kv, w, d = 2, 1, 3, 2
    keys, values = randn((b, n_kv, 16, d), 0, torch.float64), randn((b, n_kv, 16, d), 1, torch.float64)
    used = attention.RollingKVCache(b, n_kv, w, d, dtype=torch.float64)
    used.update(randn((b, n_kv, 5, d), 2, torch.float64), randn((b, n_kv, 5, d), 3, torch.float64),
                torch.tensor([[False, True, False, True, False], [True, False, False, True, True]]))
    used.update(randn((b, n_kv, 1, d), 4, torch.float64), randn((b, n_kv, 1, d), 5, torch.float64),
                torch.tensor([[False], [True]]))
    used.reset()
    fresh = attention.RollingKVCache(b, n_kv, w, d, dtype=torch.float64)
    _assert_empty_rolling(fresh, "a fresh cache")
    _assert_empty_rolling(used, "after reset()")
    # (chunk length, its padding_mask; None: every token real): unpadded keys then padding, then no
    # mask again (one token into a padded ring, a chunk longer than the window), then both again
    steps = [(2, None), (1, [[False], [True]]), (1, None), (4, None), (1, [[True], [True]]),
             (2, [[True, False], [False, True]]), (1, None), (3, None)]
    flags = torch.ones(b, 16, dtype=torch.bool)     # each position's flag, True = real
    start, padded = 0, False
    for n, pad in steps:
        end = start + n
        what = f"update of positions {start}..{end - 1} (window {w}, padding_mask {pad})"
        mask = None if pad is None else torch.tensor(pad)
        k, v = keys[:, :, start:end], values[:, :, start:end]
        got, expected = used.update(k, v, mask), fresh.update(k, v, mask)
        if mask is not None:
            flags[:, start:end] = mask
            padded = padded or not bool(mask.all())
        assert_equal(_rolling_state(used), _rolling_state(fresh), what=f"{what}: reset cache vs fresh cache")
        assert_close(got[0], expected[0], what=f"{what}: keys returned, reset cache vs fresh cache")
        assert_close(got[1], expected[1], what=f"{what}: values returned, reset cache vs fresh cache")
        pos = used.key_positions
        assert_close(got[0], keys[:, :, pos], what=f"{what}: each returned key is the key of its key_positions")
        slots = [max((p for p in range(end) if p % w == s), default=-1) for s in range(w)]
        assert_equal(used.slot_positions.tolist(), slots,
                     what=f"{what}: slot_positions (slot s: the latest position p = s mod capacity; -1: empty)")
        if not padded:
            assert used.padding_mask is None, f"{what}: no padding stored, padding_mask must be None"
        else:
            assert used.padding_mask is not None, f"{what}: padding was stored, padding_mask must not be None"
            assert_equal(used.padding_mask.tolist(), flags[:, pos].tolist(),
                         what=f"{what}: padding_mask = the flag of each returned key (True: given without a mask)")
        start = end


@given(cfg=windowed_configs(max_t=10), seed=seeds, data=st.data())
def test_rolling_cache_reset_mixed_padding_equals_windowed_definition(attention, cfg, seed, data):
    """A reset rolling cache fed chunks with and without a padding_mask (without: all real) gives a fresh
    cache's outputs and, at the real positions, the windowed attention's definition over the whole context."""
    attn = _build(attention, cfg, seed)
    b, t, w, n_kv, hd = cfg["b"], cfg["t"], cfg["window"], cfg["n_kv_heads"], cfg["head_dim"]
    c = cfg["n_heads"] * hd
    used = attention.RollingKVCache(b, n_kv, w, hd, dtype=torch.float64)
    stale = _padding(b, w + 2, seed + 2)
    stale[:, 0] = False                                             # some padding stored before the reset
    attn(randn((b, w + 2, c), seed + 1, torch.float64), padding_mask=stale, kv_cache=used)
    used.reset()
    fresh = attention.RollingKVCache(b, n_kv, w, hd, dtype=torch.float64)
    x = randn((b, t, c), seed, torch.float64)
    flags = _padding(b, t, seed)
    outs, start = [], 0
    while start < t:
        n = data.draw(st.integers(1, t - start), label="chunk")
        chunk = slice(start, start + n)
        if not data.draw(st.booleans(), label="chunk has a padding_mask"):
            flags[:, chunk] = True                                   # no padding_mask: every token real
            mask = None
        else:
            mask = flags[:, chunk]
        got = attn(x[:, chunk], padding_mask=mask, kv_cache=used)
        assert_close(got, attn(x[:, chunk], padding_mask=mask, kv_cache=fresh),
                     what=f"positions {start}..{start + n - 1}: reset rolling cache vs fresh one {cfg}")
        outs.append(got)
        start += n
    got, oracle = torch.cat(outs, dim=1), _brute_force(attn, cfg, x, flags)
    assert_close(got[flags], oracle[flags], what=f"reset rolling cache, mixed padding, vs the windowed definition {cfg}")


def test_rolling_cache_fitting_update_returns_views(attention):
    """One new token, or a chunk that fits in the free slots (filling them exactly included), returns views of
    the cache's own buffers, their first min(length, capacity) slots: no copy."""
    def check(cache, got, end, what):
        for name, out, buf in (("keys", got[0], cache.k), ("values", got[1], cache.v)):
            assert_equal(tuple(out.shape), (1, 2, min(end, cache.capacity), 2), what=f"{what}: {name} shape")
            assert_equal(out.untyped_storage().data_ptr(), buf.untyped_storage().data_ptr(),
                         what=f"{what}: {name} returned must be a view of the cache's buffer (storage data_ptr)")
            assert_equal(out.data_ptr(), buf.data_ptr(), what=f"{what}: {name} returned must start at slot 0")

    for w in range(1, 6):
        for n_old in range(w):
            for n in range(1, w - n_old + 1):                           # n_old + n <= capacity
                cache = attention.RollingKVCache(1, 2, w, 2, dtype=torch.float64)
                if n_old:
                    cache.update(randn((1, 2, n_old, 2), 0, torch.float64), randn((1, 2, n_old, 2), 1, torch.float64))
                got = cache.update(randn((1, 2, n, 2), 2, torch.float64), randn((1, 2, n, 2), 3, torch.float64))
                check(cache, got, n_old + n, f"window {w}: {n} new after {n_old} stored")
        cache = attention.RollingKVCache(1, 2, w, 2, dtype=torch.float64)
        cache.update(randn((1, 2, w + 1, 2), 0, torch.float64), randn((1, 2, w + 1, 2), 1, torch.float64))
        got = cache.update(randn((1, 2, 1, 2), 2, torch.float64), randn((1, 2, 1, 2), 3, torch.float64))
        check(cache, got, w + 2, f"window {w}: one token into a full ring")


def test_rolling_cache_max_len_boundary(attention):
    """With max_len, an update of T_new positions after L is accepted iff L + T_new <= max_len (just inside
    accepted, just outside a ValueError naming max_len that leaves the cache unchanged), whatever L."""
    for max_len in (4, 5, 6):
        for window in (2, 8):
            for seen in range(max_len + 1):
                for n in range(1, max_len - seen + 2):
                    cache = attention.RollingKVCache(1, 1, window, 2, max_len=max_len)
                    if seen:
                        cache.update(randn((1, 1, seen, 2), 0), randn((1, 1, seen, 2), 1))
                    what = f"window {window}, max_len {max_len}: {n} new after {seen} seen"
                    before = _rolling_state(cache)
                    k, v = randn((1, 1, n, 2), 2), randn((1, 1, n, 2), 3)
                    if seen + n <= max_len:
                        try:
                            cache.update(k, v)
                        except ValueError as err:
                            raise AssertionError(f"{what}: {seen + n} <= max_len must be accepted, got {err!r}")
                        assert_equal(cache.length, seen + n, what=f"{what}: length")
                    else:
                        with raises_clear(ValueError, "max_len"):
                            cache.update(k, v)
                        assert_equal(_rolling_state(cache), before, what=f"{what}: the refused update changed the cache")


def test_rolling_cache_bad_padding_mask(attention):
    """RollingKVCache.update refuses a padding_mask that is not (B, T_new) bool (a shape too small or too
    large in either dim: ValueError; another dtype: ValueError or TypeError), naming padding_mask, the cache unchanged."""
    b, t = 2, 2
    k, v = randn((b, 1, t, 2), 0), randn((b, 1, t, 2), 1)
    bad_shapes = [(b, t + 1), (b, t - 1), (b + 1, t), (b - 1, t), (b, t, 1), (b,)]
    cases = [(torch.zeros(shape, dtype=torch.bool), (ValueError,)) for shape in bad_shapes]
    cases += [(torch.ones(b, t, dtype=dtype), (ValueError, TypeError)) for dtype in (torch.long, torch.float32)]
    for mask, errors in cases:
        cache = attention.RollingKVCache(b, 1, 3, 2)
        cache.update(randn((b, 1, 1, 2), 2), randn((b, 1, 1, 2), 3))
        before = _rolling_state(cache)
        with raises_clear(errors, "padding_mask"):
            cache.update(k, v, mask)
        assert_equal(_rolling_state(cache), before,
                     what=f"a refused padding_mask {tuple(mask.shape)} {mask.dtype} changed the cache")


@pytest.mark.parametrize("rolling", [False, True])
def test_cache_update_refuses_wrong_shapes_and_ranks(attention, rolling):
    """k, v must be (B, H_kv, T_new, D) with k's T_new: any dim one too small or too large is a ValueError naming
    the tensor, a rank other than 4 a ValueError naming it and the rank 4; the cache is left unchanged."""
    b, n_kv, t, d = 2, 2, 2, 3
    cache = attention.RollingKVCache(b, n_kv, 5, d) if rolling else attention.KVCache(b, n_kv, 5, d)
    right = randn((b, n_kv, t, d), 0)
    for name, dims in (("k", (0, 1, 3)), ("v", (0, 1, 2, 3))):      # T_new is k's: a T_new of v's differs
        for dim in dims:
            for delta in (-1, 1):
                shape = [b, n_kv, t, d]
                shape[dim] += delta
                bad = randn(tuple(shape), 1)
                with raises_clear(ValueError, name):
                    cache.update(*((bad, right) if name == "k" else (right, bad)))
                assert_equal(cache.length, 0, what=f"length after refusing {name} of shape {tuple(shape)}")
    for shape in ((b, n_kv, d), (b, n_kv, t, d, 1), (d,), ()):
        bad = randn(shape, 2)
        for name in ("k", "v"):
            with raises_clear(ValueError, name, "4"):
                cache.update(*((bad, right) if name == "k" else (right, bad)))
            assert_equal(cache.length, 0, what=f"length after refusing {name} of rank {len(shape)}")
