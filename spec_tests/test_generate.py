"""Spec of ``generate``: ``sampling_distribution``, ``sample``, ``generate``, ``stream`` and ``stream_text``.

The distribution is checked against its definition, written here in float64 (``_oracle``):
temperature, then top-k (threshold rule, ties kept), then top-p (keep i iff the mass of the tokens
strictly more probable than i is < p). Logits are drawn from a few levels, so ties are common.
Decoding is checked with small ``TransformerLM`` models of the same implementation, and with
scripted stand-in models and a byte-level stand-in tokenizer.
"""

import math
import re

import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from .support import (assert_close, assert_equal, randint, randn, raises_clear, seed_all, seeds, sizes,
                      windowed_lm_logits)

temperatures = st.sampled_from([0.25, 0.5, 1.0, 2.0, 3.0])
top_ks = st.one_of(st.none(), st.integers(1, 12))
top_ps = st.one_of(st.none(), st.floats(0.02, 1.0))

#: Largest probability of a false failure of one frequency test example (a seed makes it reproducible);
#: at most 4 examples run, so at most 4e-10 per run.
FALSE_FAILURE_RATE = 1e-10


@pytest.fixture(scope="module")
def gen(impl):
    return impl.component("generate")


@pytest.fixture(scope="module")
def model_mod(impl):
    return impl.component("model")


# --- helpers ------------------------------------------------------------------------------------

def _tied_logits(shape, seed, n_levels, dtype=torch.float64):
    """Logits drawn from ``n_levels`` values in [-2, 2]: with few levels most entries tie."""
    levels = randn((n_levels,), seed + 1, torch.float64)
    levels = (levels * 1.0).clamp(-2.0, 2.0)
    return levels[randint(0, n_levels, shape, seed)].to(dtype)


def _oracle(logits, temperature, top_k=None, top_p=None):
    """The definition, in float64: ``(probs, kept, margin)``; margin = distance of the top-p sums to p."""
    x = logits.double()
    v = x.shape[-1]
    if temperature == 0 or top_k == 1:   # greedy: the lowest id among tied maxima
        kept = torch.nn.functional.one_hot(x.argmax(dim=-1), v).bool()
        return kept.double(), kept, float("inf")
    z = x / temperature
    kept = torch.ones_like(z, dtype=torch.bool)
    if top_k is not None and top_k < v:
        kth = z.sort(dim=-1, descending=True).values[..., top_k - 1:top_k]
        kept = z >= kth
    q = torch.softmax(z.masked_fill(~kept, float("-inf")), dim=-1)
    margin = float("inf")
    if top_p is not None:
        greater = q[..., None, :] > q[..., :, None]                      # [i, j] = q_j > q_i
        above = (q[..., None, :] * greater).sum(dim=-1)                  # mass strictly above i
        if bool(kept.any()):
            margin = float((above - top_p).abs()[kept].min())
        kept = kept & (above < top_p)
    probs = torch.where(kept, q, 0.0)
    return probs / probs.sum(dim=-1, keepdim=True), kept, margin


def _build(model_mod, seed, vocab_size=32, context_length=16, positional="learned", dropout=0.0, window=None,
           n_layers=2):
    """A small TransformerLM with every parameter random (so logits are well spread), in float64: the
    cached, uncached, batched and single-row paths then agree to ~1e-15, so an argmax or a draw can
    flip between them only on a gap that small (false-failure rate far below 1e-9; in float32 the
    paths differ by ~1e-7, enough to flip a near-tied greedy step about once in 10^4 runs)."""
    seed_all(seed)
    config = model_mod.ModelConfig(vocab_size=vocab_size, context_length=context_length, n_layers=n_layers,
                                   d_model=16, n_heads=2, positional=positional, dropout=dropout, window=window)
    lm = model_mod.TransformerLM(config)
    with torch.no_grad():
        for i, p in enumerate(lm.parameters()):
            p.copy_(randn(p.shape, seed + i, p.dtype, 0.5) + (1.0 if p.dim() == 1 else 0.0))
    return lm.double().eval()


def _argmax_decode(lm, prompt, n):
    """Greedy decoding by brute force: argmax of a full forward pass over the last context tokens."""
    ids = list(prompt)
    context = lm.config.context_length
    with torch.no_grad():
        for _ in range(n):
            logits, _ = lm(torch.tensor([ids[-context:]]))
            ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt):]


def _prompt(seed, length, vocab_size=32):
    return [int(i) for i in randint(0, vocab_size, (length,), seed)]


class _Cache:
    """The stand-in models' KV cache: only counts the tokens seen."""

    def __init__(self):
        self.length = 0


class ScriptedModel(torch.nn.Module):
    """A stand-in model that always predicts ``script[i]`` for the i-th new token (greedy decoding
    then reproduces the script exactly), with or without its (counting) cache."""

    def __init__(self, script, prompt_length, vocab_size=256, context_length=4096):
        super().__init__()
        self.script, self.prompt_length, self.vocab_size = list(script), prompt_length, vocab_size
        self.config = type("Config", (), {"context_length": context_length, "vocab_size": vocab_size})()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def new_kv_cache(self, batch_size, max_len=None):
        return [_Cache()]

    def forward(self, idx, targets=None, *, padding_mask=None, kv_cache=None):
        b, t = idx.shape
        seen = t if kv_cache is None else kv_cache[0].length + t
        if kv_cache is not None:
            kv_cache[0].length = seen
        logits = torch.zeros(b, t, self.vocab_size)
        step = seen - self.prompt_length
        logits[:, -1, self.script[min(step, len(self.script) - 1)]] = 10.0
        return logits, None


class ByteTokenizer:
    """A byte-level stand-in tokenizer (no merges): a character of k UTF-8 bytes spans k tokens."""

    vocab_size = 256

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode_bytes(self, ids):
        return bytes(ids)

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


# --- the sampling distribution ------------------------------------------------------------------

@given(lead=st.sampled_from([(), (3,), (2, 2)]), v=sizes(16), n_levels=sizes(6), t=temperatures,
       k=top_ks, p=top_ps, dtype=st.sampled_from([torch.float32, torch.float64]), seed=seeds)
def test_distribution_sums_to_one(gen, lead, v, n_levels, t, k, p, dtype, seed):
    """The distribution has the logits' shape, is non-negative, sums to 1 (float32 or float64)."""
    logits = _tied_logits((*lead, v), seed, n_levels, dtype)
    probs = gen.sampling_distribution(logits, temperature=t, top_k=k, top_p=p)
    assert tuple(probs.shape) == (*lead, v), f"shape: expected {(*lead, v)}, got {tuple(probs.shape)}"
    assert probs.dtype in (torch.float32, torch.float64), f"dtype: expected float32 or better, got {probs.dtype}"
    assert bool((probs >= 0).all()), "negative probabilities"
    assert_close(probs.double().sum(dim=-1), torch.ones(lead, dtype=torch.float64), what="sum of probs",
                 atol=1e-6, rtol=0)


@given(v=sizes(16, 2), n_levels=sizes(6), t=temperatures, k=top_ks, p=top_ps, seed=seeds)
def test_proportional_to_tempered_softmax_on_kept_set(gen, v, n_levels, t, k, p, seed):
    """Inside the kept set the probabilities are softmax(logits / T) renormalised; zero exactly outside."""
    logits = _tied_logits((v,), seed, n_levels) + randn((v,), seed + 2, torch.float64, 0.3)
    probs = gen.sampling_distribution(logits, temperature=t, top_k=k, top_p=p).double()
    kept = probs > 0
    expected = torch.softmax((logits / t).masked_fill(~kept, float("-inf")), dim=-1)
    assert_close(probs, expected, what=f"probs vs softmax(logits / {t}) over the kept set", atol=1e-6, rtol=1e-5)


@given(lead=st.sampled_from([(), (4,)]), v=sizes(16), n_levels=sizes(5), t=temperatures, k=top_ks,
       p=top_ps, shift=st.sampled_from([-50.0, -3.0, 0.5, 7.0, 1000.0]), seed=seeds)
def test_shift_invariant(gen, lead, v, n_levels, t, k, p, shift, seed):
    """Adding the same constant to every logit changes nothing."""
    logits = _tied_logits((*lead, v), seed, n_levels)
    got = gen.sampling_distribution(logits + shift, temperature=t, top_k=k, top_p=p)
    assume(_oracle(logits, t, k, p)[2] > 1e-5)   # keep away from the top-p boundary
    expected = gen.sampling_distribution(logits, temperature=t, top_k=k, top_p=p)
    assert_close(got, expected, what=f"probs of logits + {shift} vs probs of logits", atol=1e-6, rtol=1e-5)


@given(lead=st.sampled_from([(), (3,), (2, 2)]), v=sizes(16), n_levels=sizes(5), t=temperatures,
       k=st.integers(1, 18), seed=seeds)
def test_top_k_kept_set(gen, lead, v, n_levels, t, k, seed):
    """top-k keeps exactly the tokens whose logit is >= the k-th largest (ties kept; k >= V keeps all)."""
    logits = _tied_logits((*lead, v), seed, n_levels)
    probs = gen.sampling_distribution(logits, temperature=t, top_k=k)
    expected, kept, _ = _oracle(logits, t, top_k=k)
    assert torch.equal(probs > 0, kept), (
        f"kept set for top_k={k} on logits {logits.tolist()}: expected {kept.tolist()}, got {(probs > 0).tolist()}")
    assert_close(probs.double(), expected, what="top-k probabilities", atol=1e-6, rtol=1e-5)


@given(lead=st.sampled_from([(), (3,), (2, 2)]), v=sizes(16), n_levels=sizes(5), t=temperatures,
       k=top_ks, p=st.floats(0.02, 1.0), seed=seeds)
def test_top_p_kept_set(gen, lead, v, n_levels, t, k, p, seed):
    """top-p keeps i iff the mass strictly more probable than i (after temperature and top-k) is < p."""
    logits = _tied_logits((*lead, v), seed, n_levels)
    probs = gen.sampling_distribution(logits, temperature=t, top_k=k, top_p=p)
    expected, kept, margin = _oracle(logits, t, k, p)
    assume(margin > 1e-5)
    assert torch.equal(probs > 0, kept), (
        f"kept set for T={t}, top_k={k}, top_p={p} on logits {logits.tolist()}: expected "
        f"{kept.tolist()}, got {(probs > 0).tolist()}")
    assert_close(probs.double(), expected, what="top-p probabilities", atol=1e-6, rtol=1e-5)


@given(v=sizes(16, 2), n_levels=sizes(3), k=top_ks, p=st.floats(0.02, 1.0), seed=seeds)
def test_top_p_closed_under_ties(gen, v, n_levels, k, p, seed):
    """Tied tokens are kept or dropped together, whatever their order: permuting the logits permutes the probs."""
    assume(k != 1)   # top_k=1 is greedy: the lowest id wins, which is order-dependent by definition
    logits = _tied_logits((v,), seed, n_levels)
    perm = torch.randperm(v, generator=torch.Generator().manual_seed(seed))
    got = gen.sampling_distribution(logits[perm], top_k=k, top_p=p)
    assume(_oracle(logits, 1.0, k, p)[2] > 1e-5)
    expected = gen.sampling_distribution(logits, top_k=k, top_p=p)[perm]
    assert_close(got, expected, what="probs of permuted logits vs permuted probs", atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("p, kept", [(0.8, [0, 3]), (0.5, [3]), (0.81, [0, 1, 2, 3]), (0.2, [3]), (1.0, [0, 1, 2, 3])])
def test_top_p_example(gen, p, kept):
    """probs [0.3, 0.1, 0.1, 0.5]: p=0.8 keeps {0.5, 0.3}; p=0.81 keeps both tied 0.1 tokens too."""
    logits = torch.tensor([0.3, 0.1, 0.1, 0.5], dtype=torch.float64).log()
    got = gen.sampling_distribution(logits, top_p=p)
    base = torch.tensor([0.3, 0.1, 0.1, 0.5], dtype=torch.float64)
    mask = torch.zeros(4, dtype=torch.bool)
    mask[kept] = True
    expected = torch.where(mask, base, 0.0) / base[mask].sum()
    assert_close(got, expected, what=f"sampling_distribution(log [0.3, 0.1, 0.1, 0.5], top_p={p})", atol=1e-12)


def test_top_p_after_top_k_example(gen):
    """top-p applies to the distribution renormalised over the top-k set."""
    logits = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64).log()
    # top_k=2 -> [4/7, 3/7]: 3/7 has 4/7 >= 0.5 above it, dropped (over all four: 0.4 < 0.5 above it, kept)
    got = gen.sampling_distribution(logits, top_k=2, top_p=0.5)
    assert_close(got, torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64),
                 what="top_k=2 then top_p=0.5 on [0.4, 0.3, 0.2, 0.1]", atol=1e-12)
    got = gen.sampling_distribution(logits, top_k=3, top_p=0.75)
    # top_k=3 -> [4/9, 3/9, 2/9]: the 2/9 token has 7/9 > 0.75 above it: dropped (over all four: 0.7 < 0.75, kept)
    assert_close(got, torch.tensor([4 / 7, 3 / 7, 0.0, 0.0], dtype=torch.float64),
                 what="top_k=3 then top_p=0.75 on [0.4, 0.3, 0.2, 0.1]", atol=1e-12)


@given(lead=st.sampled_from([(), (5,)]), v=sizes(16), n_levels=sizes(4), k=top_ks, p=top_ps, seed=seeds)
def test_greedy(gen, lead, v, n_levels, k, p, seed):
    """temperature=0 puts all the mass on the argmax, the lowest id winning ties (top-k/top-p change nothing)."""
    logits = _tied_logits((*lead, v), seed, n_levels)
    probs = gen.sampling_distribution(logits, temperature=0.0, top_k=k, top_p=p)
    first_max = (logits == logits.amax(dim=-1, keepdim=True)).double().argmax(dim=-1)   # lowest id
    expected = torch.nn.functional.one_hot(first_max, v).double()
    assert_close(probs.double(), expected, what=f"greedy probs of logits {logits.tolist()}", atol=0, rtol=0)


@given(v=sizes(16), n_levels=sizes(4), t=temperatures, seed=seeds)
def test_top_k_one_is_greedy(gen, v, n_levels, t, seed):
    """top_k=1 equals greedy (temperature 0) even with tied maxima: the lowest id takes all the mass."""
    logits = _tied_logits((v,), seed, n_levels)
    probs = gen.sampling_distribution(logits, temperature=t, top_k=1)
    first_max = int((logits == logits.max()).double().argmax())
    expected = torch.nn.functional.one_hot(torch.tensor(first_max), v).double()
    assert_close(probs.double(), expected, what=f"top_k=1 probs of logits {logits.tolist()}", atol=0, rtol=0)


@given(v=sizes(16), n_levels=sizes(5), k=top_ks, seed=seeds)
def test_low_temperature_tends_to_greedy(gen, v, n_levels, k, seed):
    """As T -> 0 the mass goes to the maxima (uniformly over tied maxima); levels are >= 0.05 apart."""
    assume(k != 1)   # top_k=1 is greedy outright (test_top_k_one_is_greedy)
    levels = torch.arange(n_levels, dtype=torch.float64) * 0.05
    logits = levels[randint(0, n_levels, (v,), seed)]
    probs = gen.sampling_distribution(logits, temperature=1e-3, top_k=k)
    maxima = logits == logits.max()
    assert_close(probs.double(), maxima.double() / maxima.sum(), what="probs at T = 1e-3", atol=1e-9)


@given(v=sizes(16), n_levels=sizes(5), k=top_ks, seed=seeds)
def test_high_temperature_tends_to_uniform(gen, v, n_levels, k, seed):
    """As T -> inf the distribution tends to uniform over the kept (top-k) set."""
    logits = _tied_logits((v,), seed, n_levels)
    probs = gen.sampling_distribution(logits, temperature=1e7, top_k=k)
    _, kept, _ = _oracle(logits, 1.0, top_k=k)
    assert_close(probs.double(), kept.double() / kept.sum(), what="probs at T = 1e7", atol=1e-6)


@given(v=sizes(16), t=temperatures, seed=seeds)
def test_keep_everything(gen, v, t, seed):
    """top_p=1 and top_k >= V keep every token: the result is softmax(logits / T)."""
    logits = randn((v,), seed, torch.float64, 3.0)
    probs = gen.sampling_distribution(logits, temperature=t, top_k=v + 2, top_p=1.0)
    assert_close(probs.double(), torch.softmax(logits / t, dim=-1), what="probs with top_k=V+2, top_p=1", atol=1e-9)


def test_large_logits_in_float32(gen):
    """Large float32 logits (1e4) do not overflow: the result stays a distribution."""
    logits = torch.tensor([1e4, 1e4 - 1.0, -1e4, 0.0])
    probs = gen.sampling_distribution(logits, temperature=0.5)
    assert_close(probs.double(), torch.softmax(logits.double() / 0.5, -1), what="probs of large logits", atol=1e-7)


@pytest.mark.parametrize("kwargs, name", [
    ({"temperature": -0.5}, "temperature"), ({"top_k": 0}, "top_k"), ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"), ({"top_p": -0.1}, "top_p"), ({"temperature": float("nan")}, "temperature"),
])
def test_bad_sampling_parameters(gen, kwargs, name):
    """temperature < 0, top_k < 1 and top_p outside (0, 1] raise a ValueError naming the argument."""
    with raises_clear(ValueError, name):
        gen.sampling_distribution(torch.zeros(5), **kwargs)
    with raises_clear(ValueError, name):
        gen.sample(torch.zeros(5), **kwargs)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_logits(gen, bad):
    """Logits that are not finite raise a ValueError naming logits."""
    logits = torch.zeros(2, 5)
    logits[1, 3] = bad
    with raises_clear(ValueError, "logits"):
        gen.sampling_distribution(logits)


@given(shape=st.sampled_from([(5,), (3, 4), (2, 2, 3)]),
       dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
       bad=st.lists(st.sampled_from([float("nan"), float("inf"), float("-inf")]), min_size=1, max_size=3),
       seed=seeds)
def test_non_finite_logits_anywhere(gen, shape, dtype, bad, seed):
    """Any NaN or infinity, anywhere, several mixed, in any floating dtype: sampling_distribution and
    sample both raise a ValueError naming logits; the dtype's largest and smallest finite values are accepted."""
    numel = math.prod(shape)
    where = torch.randperm(numel, generator=torch.Generator().manual_seed(seed))[:len(bad)]
    logits = randn(shape, seed, dtype).reshape(-1)
    logits[where] = torch.tensor(bad[:len(where)], dtype=dtype)
    logits = logits.reshape(shape)
    with raises_clear(ValueError, "logits"):
        gen.sampling_distribution(logits)
    with raises_clear(ValueError, "logits"):
        gen.sample(logits, generator=torch.Generator().manual_seed(seed))
    info = torch.finfo(dtype)
    extreme = torch.full((numel,), info.max, dtype=dtype)
    extreme[where] = info.min                                   # finite, however large
    probs = gen.sampling_distribution(extreme.reshape(shape))
    assert bool(torch.isfinite(probs).all()), f"{dtype} logits at +-finfo.max: probs not finite: {probs.tolist()}"
    ids = gen.sample(extreme.reshape(shape), generator=torch.Generator().manual_seed(seed))
    assert tuple(ids.shape) == shape[:-1], f"sample of {shape} logits: shape {tuple(ids.shape)}"


# --- the sampler --------------------------------------------------------------------------------

def _p_value(counts, expected_probs, n):
    """Pearson chi-square p-value; bins with expected count < 5 are merged (zero-probability bins dropped)."""
    expected = expected_probs * n
    order = expected.argsort()
    bins_e, bins_o, acc_e, acc_o = [], [], 0.0, 0.0
    for i in order.tolist():
        if expected[i] == 0:
            continue
        acc_e, acc_o = acc_e + float(expected[i]), acc_o + float(counts[i])
        if acc_e >= 5.0:
            bins_e.append(acc_e), bins_o.append(acc_o)
            acc_e, acc_o = 0.0, 0.0
    if acc_e > 0:  # a small remainder joins the last bin
        if bins_e:
            bins_e[-1] += acc_e
            bins_o[-1] += acc_o
        else:
            bins_e, bins_o = [acc_e], [acc_o]
    e, o = torch.tensor(bins_e, dtype=torch.float64), torch.tensor(bins_o, dtype=torch.float64)
    df = len(bins_e) - 1
    if df == 0:
        return 1.0, 0.0, df
    stat = float(((o - e) ** 2 / e).sum())
    p = float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), torch.tensor(stat / 2, dtype=torch.float64)))
    return p, stat, df


@settings(max_examples=4)
@given(v=sizes(20, 2), n_levels=sizes(6), t=temperatures, k=top_ks, p=top_ps, seed=seeds)
def test_sample_frequencies_match_distribution(gen, v, n_levels, t, k, p, seed):
    """The frequencies of 200k draws match the distribution (chi-square, false-failure rate <= 1e-10 per
    example, 4e-10 per run)."""
    n = 200_000
    logits = _tied_logits((v,), seed, n_levels) + randn((v,), seed + 3, torch.float64, 0.5)
    ids = gen.sample(logits.float().expand(n, v), temperature=t, top_k=k, top_p=p,
                     generator=torch.Generator().manual_seed(seed))
    expected, kept, margin = _oracle(logits.float(), t, k, p)
    assume(margin > 1e-5)
    assert tuple(ids.shape) == (n,) and ids.dtype == torch.long, f"ids: expected ({n},) long, got {tuple(ids.shape)} {ids.dtype}"
    counts = torch.bincount(ids, minlength=v).double()
    assert int(counts[~kept].sum()) == 0, f"drew tokens outside the kept set {kept.tolist()}: counts {counts.tolist()}"
    p_value, stat, df = _p_value(counts, expected, n)
    assert p_value >= FALSE_FAILURE_RATE, (
        f"frequencies do not match the distribution: chi-square {stat:.1f} with {df} df, p = {p_value:.3g}; "
        f"expected probs {expected.tolist()}, observed {(counts / n).tolist()}")


@settings(max_examples=5)
@given(v=sizes(12, 2), n_levels=sizes(4), k=st.integers(1, 3), p=top_ps, seed=seeds)
def test_sample_never_draws_zero_probability(gen, v, n_levels, k, p, seed):
    """The sampler never draws a token whose probability is 0 (outside the top-k / top-p set)."""
    logits = _tied_logits((v,), seed, n_levels)
    ids = gen.sample(logits.expand(20_000, v), top_k=k, top_p=p, generator=torch.Generator().manual_seed(seed))
    probs = gen.sampling_distribution(logits, top_k=k, top_p=p)
    drawn = sorted(set(ids.tolist()))
    assert all(float(probs[i]) > 0 for i in drawn), f"drew {drawn}, but probs are {probs.tolist()}"


@given(b=sizes(4), v=sizes(10, 2), seed=seeds)
def test_sample_shapes_and_seeding(gen, b, v, seed):
    """(B, V) -> (B,) long, (V,) -> scalar long; the same generator seed gives the same draws."""
    logits = randn((b, v), seed)
    first = gen.sample(logits, generator=torch.Generator().manual_seed(seed))
    again = gen.sample(logits, generator=torch.Generator().manual_seed(seed))
    assert tuple(first.shape) == (b,) and first.dtype == torch.long, f"expected ({b},) long, got {tuple(first.shape)} {first.dtype}"
    assert torch.equal(first, again), f"same seed, different draws: {first.tolist()} vs {again.tolist()}"
    one = gen.sample(logits[0], generator=torch.Generator().manual_seed(seed))
    assert one.shape == () and one.dtype == torch.long, f"(V,) logits: expected a scalar long, got {tuple(one.shape)} {one.dtype}"
    assert 0 <= int(one) < v


@given(b=sizes(4), v=sizes(10), n_levels=sizes(3), seed=seeds)
def test_sample_greedy(gen, b, v, n_levels, seed):
    """sample(temperature=0) is the argmax, the lowest id on ties."""
    logits = _tied_logits((b, v), seed, n_levels)
    got = gen.sample(logits, temperature=0.0)
    expected = (logits == logits.amax(dim=-1, keepdim=True)).double().argmax(dim=-1)
    assert torch.equal(got, expected), f"greedy draws: expected {expected.tolist()}, got {got.tolist()}"


# --- decoding -----------------------------------------------------------------------------------

@settings(max_examples=6)
@given(positional=st.sampled_from(["learned", "rope", "alibi"]), t0=sizes(6), n=st.integers(0, 9),
       use_cache=st.booleans(), seed=seeds)
def test_greedy_equals_repeated_argmax(gen, model_mod, positional, t0, n, use_cache, seed):
    """Greedy generation equals the argmax of a full forward pass, token after token."""
    lm = _build(model_mod, seed, positional=positional)
    prompt = _prompt(seed, t0)
    got = gen.generate(lm, prompt, n, temperature=0.0, use_cache=use_cache)
    assert_equal(got, _argmax_decode(lm, prompt, n), what=f"greedy tokens (use_cache={use_cache})")


@settings(max_examples=6)
@given(positional=st.sampled_from(["learned", "rope", "alibi", "none"]), t0=sizes(6), n=sizes(10),
       t=st.sampled_from([0.7, 1.0, 1.5]), k=top_ks, p=top_ps, seed=seeds)
def test_cached_equals_uncached(gen, model_mod, positional, t0, n, t, k, p, seed):
    """With the same seed, generation with the KV cache gives the same tokens as without it."""
    lm = _build(model_mod, seed, positional=positional)
    prompt = _prompt(seed, t0)
    cached = gen.generate(lm, prompt, n, temperature=t, top_k=k, top_p=p, seed=seed, use_cache=True)
    uncached = gen.generate(lm, prompt, n, temperature=t, top_k=k, top_p=p, seed=seed, use_cache=False)
    assert_equal(cached, uncached, what="tokens with the KV cache vs without")


@settings(max_examples=5)
@given(b=sizes(3), t0=sizes(5), n=sizes(8), use_cache=st.booleans(), seed=seeds)
def test_same_seed_same_tokens(gen, model_mod, b, t0, n, use_cache, seed):
    """The same seed gives the same tokens (batched: a (B, n) long tensor), whatever the global RNG does."""
    lm = _build(model_mod, seed)
    prompt = randint(0, 32, (b, t0), seed)
    first = gen.generate(lm, prompt, n, seed=seed, use_cache=use_cache)
    torch.manual_seed(seed + 1)
    torch.rand(7)
    again = gen.generate(lm, prompt, n, seed=seed, use_cache=use_cache)
    assert isinstance(first, torch.Tensor) and tuple(first.shape) == (b, n) and first.dtype == torch.long, (
        f"batched result: expected a ({b}, {n}) long tensor, got {type(first).__name__} "
        f"{getattr(first, 'shape', None)}")
    assert torch.equal(first, again), f"same seed, different tokens: {first.tolist()} vs {again.tolist()}"


@settings(max_examples=5)
@given(b=st.sampled_from([None, 1, 3]), t0=sizes(5), n=st.integers(0, 8), stop=st.booleans(), seed=seeds)
def test_stream_equals_generate(gen, model_mod, b, t0, n, stop, seed):
    """stream yields exactly the tokens generate returns (ints for one prompt, (B,) tensors for a batch)."""
    lm = _build(model_mod, seed)
    prompt = _prompt(seed, t0) if b is None else randint(0, 32, (b, t0), seed)
    stop_ids = [3, 7, 11] if stop else ()
    streamed = list(gen.stream(lm, prompt, n, stop_ids=stop_ids, seed=seed))
    generated = gen.generate(lm, prompt, n, stop_ids=stop_ids, seed=seed)
    if b is None:
        assert all(isinstance(i, int) for i in streamed), f"stream of one prompt must yield ints, got {streamed}"
        assert_equal(streamed, generated, what="stream vs generate")
    else:
        joined = torch.stack(streamed, dim=1) if streamed else torch.empty(b, 0, dtype=torch.long)
        assert torch.equal(joined, generated), f"stream vs generate: {joined.tolist()} vs {generated.tolist()}"


@settings(max_examples=5)
@given(t0=sizes(5), n=st.integers(0, 12), as_tensor=st.booleans(), use_cache=st.booleans(), seed=seeds)
def test_max_new_tokens_exact(gen, model_mod, t0, n, as_tensor, use_cache, seed):
    """Without stop ids, exactly max_new_tokens ids come back (a list[int] for one prompt, 0 allowed)."""
    lm = _build(model_mod, seed)
    prompt = _prompt(seed, t0)
    got = gen.generate(lm, torch.tensor(prompt) if as_tensor else prompt, n, seed=seed, use_cache=use_cache)
    assert isinstance(got, list) and all(isinstance(i, int) for i in got), f"expected a list of ints, got {got!r}"
    assert_equal(len(got), n, what="number of new tokens")
    assert all(0 <= i < 32 for i in got), f"ids outside the vocabulary: {got}"


@settings(max_examples=8)
@given(t0=sizes(4), j=st.integers(0, 9), t=st.sampled_from([0.0, 1.0]), use_cache=st.booleans(), seed=seeds)
def test_stop_id_ends_and_is_included(gen, model_mod, t0, j, t, use_cache, seed):
    """Generation ends at the first stop id, which is the last token returned."""
    lm = _build(model_mod, seed)
    prompt = _prompt(seed, t0)
    free = gen.generate(lm, prompt, 10, temperature=t, seed=seed, use_cache=use_cache)
    stop = free[j]
    first = free.index(stop)
    got = gen.generate(lm, prompt, 10, temperature=t, seed=seed, stop_ids=[stop], use_cache=use_cache)
    assert_equal(got, free[:first + 1], what=f"tokens with stop_ids=[{stop}] (stop included, nothing after)")


def test_stop_ids_in_a_batch(gen):
    """In a batch, a row that has stopped emits PAD_ID (-1) until every row stops or max_new_tokens."""
    lm = ScriptedModel([5, 9, 4, 9, 6, 8, 7], prompt_length=2)
    prompt = torch.tensor([[1, 2], [3, 4]])
    got = gen.generate(lm, prompt, 10, temperature=0.0, stop_ids=[9])
    assert gen.PAD_ID == -1, f"PAD_ID: expected -1, got {gen.PAD_ID}"
    assert torch.equal(got, torch.tensor([[5, 9], [5, 9]])), f"both rows stop at 9: got {got.tolist()}"

    class TwoScripts(ScriptedModel):
        def forward(self, idx, targets=None, *, padding_mask=None, kv_cache=None):
            logits, _ = super().forward(idx, kv_cache=kv_cache)
            step = (idx.shape[1] if kv_cache is None else kv_cache[0].length) - self.prompt_length
            logits[1, -1] = 0.0
            logits[1, -1, [7, 8, 6, 9, 2, 2, 2][min(step, 6)]] = 10.0
            return logits, None

    for use_cache in (True, False):
        got = gen.generate(TwoScripts([5, 9, 4, 9, 6, 8, 7], 2), prompt, 10, temperature=0.0, stop_ids=[9],
                           use_cache=use_cache)
        expected = torch.tensor([[5, 9, -1, -1], [7, 8, 6, 9]])
        assert torch.equal(got, expected), f"rows stopping at different steps: expected {expected.tolist()}, got {got.tolist()}"


@settings(max_examples=6)
@given(positional=st.sampled_from(["learned", "rope", "alibi"]), b=sizes(4, 2), t0=sizes(5), n=sizes(10),
       use_cache=st.booleans(), pick=st.lists(st.integers(0, 9), min_size=1, max_size=2), seed=seeds)
def test_batched_greedy_rows_equal_rows_alone(gen, model_mod, positional, b, t0, n, use_cache, pick, seed):
    """A real model, greedy: each row of a batched generate equals that row generated alone, up to and
    including its first stop id; after it the row holds PAD_ID; the batch ends when every row has
    stopped (its width is the longest row) or at max_new_tokens. Rows stop at different steps."""
    lm = _build(model_mod, seed, positional=positional)  # float64: batching cannot flip an argmax
    prompts = randint(0, 32, (b, t0), seed)
    free = [gen.generate(lm, prompts[r].tolist(), n, temperature=0.0, use_cache=use_cache) for r in range(b)]
    stops = sorted({free[0][j % n] for j in pick})  # tokens of row 0: rows tend to stop at different steps
    alone = []
    for r in range(b):
        row = gen.generate(lm, prompts[r].tolist(), n, temperature=0.0, stop_ids=stops, use_cache=use_cache)
        first = next((j for j, tok in enumerate(free[r]) if tok in stops), None)
        assert_equal(row, free[r] if first is None else free[r][:first + 1], what=f"row {r} alone with stop_ids={stops}")
        alone.append(row)
    got = gen.generate(lm, prompts, n, temperature=0.0, stop_ids=stops, use_cache=use_cache)
    width = max(len(row) for row in alone)
    expected = [row + [gen.PAD_ID] * (width - len(row)) for row in alone]
    assert_equal(got.tolist(), expected, what=f"batched greedy tokens with stop_ids={stops} (use_cache={use_cache})")


@settings(max_examples=4)
@given(b=sizes(3), t0=sizes(5), n=sizes(6), seed=seeds)
def test_generate_defaults(gen, model_mod, b, t0, n, seed):
    """Defaults: temperature 1, no top-k / top-p, no stop ids, seed None (torch's global RNG), the cache
    on: generate(lm, p, n) after torch.manual_seed(s) equals the explicit call after the same seed."""
    lm = _build(model_mod, seed)
    prompt = randint(0, 32, (b, t0), seed)
    widths = []
    hook = lm.register_forward_hook(lambda module, args, out: widths.append(args[0].shape[-1]))
    torch.manual_seed(seed)
    try:
        default = gen.generate(lm, prompt, n)
    finally:
        hook.remove()
    assert_equal(widths, [t0] + [1] * (len(widths) - 1), what="widths fed to the model by default (cache on: "
                 "the prompt once, then one new token per step)")
    torch.manual_seed(seed)
    explicit = gen.generate(lm, prompt, n, temperature=1.0, top_k=None, top_p=None, stop_ids=(), seed=None,
                            use_cache=True)
    assert_equal(default.tolist(), explicit.tolist(), what="generate with defaults vs the explicit defaults")
    torch.manual_seed(seed)
    streamed = list(gen.stream(lm, prompt[0].tolist(), n))
    torch.manual_seed(seed)
    single = gen.generate(lm, prompt[0].tolist(), n, temperature=1.0, seed=None, use_cache=True)
    assert_equal(streamed, single, what="stream with defaults vs generate with the explicit defaults")
    logits = randn((b, 9), seed, torch.float64)
    assert_close(gen.sampling_distribution(logits), torch.softmax(logits, dim=-1),
                 what="sampling_distribution(logits) with defaults = softmax(logits)")
    rows = logits[0].expand(200, 9).contiguous()
    torch.manual_seed(seed)
    drawn = gen.sample(rows)
    torch.manual_seed(seed)
    again = gen.sample(rows, temperature=1.0, top_k=None, top_p=None, generator=None)
    assert_equal(drawn.tolist(), again.tolist(), what="sample with defaults vs the explicit defaults")


@settings(max_examples=5)
@given(positional=st.sampled_from(["learned", "rope", "alibi"]), extra=sizes(6), seed=seeds)
def test_long_prompt_is_cropped(gen, model_mod, positional, extra, seed):
    """A prompt longer than the context keeps its last context_length tokens."""
    lm = _build(model_mod, seed, context_length=8, positional=positional)
    prompt = _prompt(seed, 8 + extra)
    got = gen.generate(lm, prompt, 4, temperature=0.0)
    assert_equal(got, _argmax_decode(lm, prompt[-8:], 4), what="tokens after a long prompt vs after its last 8")


@settings(max_examples=5)
@given(positional=st.sampled_from(["learned", "rope", "alibi"]), t0=sizes(8), seed=seeds)
def test_generation_past_the_context_slides(gen, model_mod, positional, t0, seed):
    """Past the context length each token is predicted from the last context_length tokens, cached or not."""
    lm = _build(model_mod, seed, context_length=8, positional=positional)
    prompt = _prompt(seed, t0)
    cached = gen.generate(lm, prompt, 12, temperature=0.0, use_cache=True)
    expected = _argmax_decode(lm, prompt, 12)
    assert_equal(cached, expected, what="greedy tokens past the context (with cache)")
    uncached = gen.generate(lm, prompt, 12, temperature=0.0, use_cache=False)
    assert_equal(uncached, expected, what="greedy tokens past the context (without cache)")


def _spy_caches(lm):
    """Record the caches that generation asks the model for (``new_kv_cache``)."""
    made, new_kv_cache = [], lm.new_kv_cache

    def spy(*args, **kwargs):
        made.append(new_kv_cache(*args, **kwargs))
        return made[-1]
    lm.new_kv_cache = spy
    return made


@settings(max_examples=6)
@given(positional=st.sampled_from(["rope", "alibi", "none"]), window=st.integers(2, 6), n_layers=st.integers(1, 3),
       t0=sizes(10), seed=seeds)
# reach 3 * 5 + 1 = 16 > context 8: a decoder that crops to the context (and recomputes) differs
@example(positional="rope", window=6, n_layers=3, t0=8, seed=0)
@example(positional="alibi", window=5, n_layers=3, t0=3, seed=1)
def test_rolling_decoding_past_the_context(gen, model_mod, positional, window, n_layers, t0, seed):
    """A sliding-window model with rope, alibi or none decodes past context_length with its rolling
    caches (window positions per layer, however many tokens): greedy tokens equal the argmax of the
    windowed model's definition at the TRUE positions, which sees n_layers * (window - 1) + 1 tokens
    back, further than the context when n_layers > 1. In float64 two paths differ by ~1e-15, so a
    near-tied argmax flips with probability far below 1e-9 per run."""
    lm = _build(model_mod, seed, context_length=8, positional=positional, window=window, n_layers=n_layers)
    made = _spy_caches(lm)
    prompt, n = _prompt(seed, min(t0, 8)), 20
    got = gen.generate(lm, prompt, n, temperature=0.0, use_cache=True)
    assert_equal(len(got), n, what="number of tokens decoded past the context")
    ids = torch.tensor([prompt + got[:-1]])
    expected = windowed_lm_logits(lm, ids)[0, len(prompt) - 1:].argmax(dim=-1).tolist()
    assert_equal(got, expected, what=f"greedy tokens past the context (window {window}, {n_layers} layers) "
                                     f"vs the definition at the true positions")
    assert made, "generate(use_cache=True) must build its caches with model.new_kv_cache"
    sizes_ = sorted({cache.k.numel() for cache in made[0]})
    assert_equal(sizes_, [1 * 2 * window * 8], what="cache.k elements (B * n_kv_heads * window * head_dim)")


@settings(max_examples=6)
@given(positional=st.sampled_from(["learned", "rope", "alibi", "none"]), window=st.integers(1, 8), t0=sizes(16),
       n=sizes(24), t=st.sampled_from([0.7, 1.0, 1.5]), k=top_ks, p=top_ps, seed=seeds)
def test_windowed_cached_equals_uncached(gen, model_mod, positional, window, t0, n, t, k, p, seed):
    """A sliding-window model (2 layers, window <= 8: its reach 2 (w - 1) + 1 fits in the context 16)
    gives the same sampled tokens for the same seed with its rolling caches as without a cache,
    prompts shorter and longer than the window, before and past the context. In float64 the paths
    differ by ~1e-15, so a draw flips between them with probability far below 1e-9 per run."""
    lm = _build(model_mod, seed, positional=positional, window=window)
    prompt = _prompt(seed, t0)
    cached = gen.generate(lm, prompt, n, temperature=t, top_k=k, top_p=p, seed=seed, use_cache=True)
    uncached = gen.generate(lm, prompt, n, temperature=t, top_k=k, top_p=p, seed=seed, use_cache=False)
    assert_equal(cached, uncached, what=f"tokens with the rolling KV cache vs without (window {window})")


@pytest.mark.parametrize("use_cache", [True, False])
def test_eval_mode_no_grad_and_mode_restored(gen, model_mod, use_cache):
    """The model runs in eval mode (dropout off) under no_grad; its training mode is restored after."""
    lm = _build(model_mod, 0, positional="learned", dropout=0.5)
    prompt = _prompt(0, 4)
    seen = []
    hook = lm.register_forward_hook(lambda module, args, out: seen.append((module.training, torch.is_grad_enabled())))
    lm.train()
    try:
        got = gen.generate(lm, prompt, 6, temperature=0.0, use_cache=use_cache)
    finally:
        hook.remove()
    assert lm.training, "generate must restore the model's training mode"
    assert seen and not any(training for training, _ in seen), "the model must run in eval mode"
    assert not any(grad for _, grad in seen), "the model must run under torch.no_grad()"
    lm.eval()
    assert_equal(got, _argmax_decode(lm, prompt, 6), what="greedy tokens of a model with dropout 0.5")
    gen.generate(lm, torch.tensor([prompt]), 3, temperature=0.0, use_cache=use_cache)
    assert not lm.training, "generate must leave an eval-mode model in eval mode"


def test_bad_decoding_arguments(gen, model_mod):
    """Bad temperature, top_k, top_p, max_new_tokens < 0 and empty prompts raise clear errors."""
    lm = _build(model_mod, 0)
    for kwargs, name in [({"temperature": -1.0}, "temperature"), ({"top_k": 0}, "top_k"), ({"top_p": 0.0}, "top_p"),
                         ({"top_p": 2.0}, "top_p")]:
        with raises_clear(ValueError, name):
            gen.generate(lm, [1, 2], 3, **kwargs)
        with raises_clear(ValueError, name):
            gen.stream(lm, [1, 2], 3, **kwargs)   # checked at the call, not at the first next()
    with raises_clear(ValueError, "max_new_tokens"):
        gen.generate(lm, [1, 2], -1)
    with raises_clear(ValueError, "max_new_tokens"):
        gen.stream(lm, [1, 2], -1)
    for empty in ([], torch.empty(0, dtype=torch.long), torch.empty(2, 0, dtype=torch.long)):
        with raises_clear(ValueError, "prompt"):
            gen.generate(lm, empty, 3)
    with raises_clear(ValueError, "prompt"):
        gen.stream_text(lm, ByteTokenizer(), "", 3)


# --- streaming text -----------------------------------------------------------------------------

TEXTS = ["hello, world", "héllo wörld", "日本語のテキスト", "emoji 😀👍🏽 and 🇫🇷!", "mixed: ü世😀x"]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("use_cache", [True, False])
def test_stream_text_holds_back_split_characters(gen, text, use_cache):
    """stream_text never splits a character across pieces (one byte per token), and the pieces join to the text."""
    tok = ByteTokenizer()
    script = tok.encode(text)
    lm = ScriptedModel(script, prompt_length=2)
    pieces = list(gen.stream_text(lm, tok, "ab", len(script), temperature=0.0, use_cache=use_cache))
    assert all(isinstance(s, str) and s for s in pieces), f"pieces must be non-empty strings, got {pieces!r}"
    bad = [s for s in pieces if "\ufffd" in s]
    assert not bad, f"a character was split across pieces: {pieces!r}"
    assert_equal("".join(pieces), text, what="joined pieces")
    assert len(pieces) == len(text), f"each character should come out as soon as it is complete: {pieces!r}"


@pytest.mark.parametrize("raw", [b"ok\xff\xfeok", "ab😀".encode()[:-1], b"\xe4\xb8x\xe4\xb8\xad",
                                 "x日".encode()[:-2] + b"\xc3\xa9", b"\xf0\x9f\x98\x80\x80z"])
def test_stream_text_invalid_bytes_as_decode(gen, raw):
    """Bytes that can never form a character come out as U+FFFD exactly as tokenizer.decode does."""
    tok = ByteTokenizer()
    lm = ScriptedModel(list(raw), prompt_length=1)
    pieces = list(gen.stream_text(lm, tok, "a", len(raw), temperature=0.0))
    assert_equal("".join(pieces), tok.decode(list(raw)), what=f"joined pieces of {raw!r}")


def test_stream_text_stops_and_counts(gen):
    """stream_text honours max_new_tokens and stop ids (the stop token's text is included)."""
    tok = ByteTokenizer()
    script = tok.encode("abc.def")
    lm = ScriptedModel(script, prompt_length=1)
    assert_equal("".join(gen.stream_text(lm, tok, "x", 3, temperature=0.0)), "abc", what="3 new tokens")
    assert_equal("".join(gen.stream_text(lm, tok, "x", 7, temperature=0.0, stop_ids=[ord(".")])), "abc.",
                 what="text up to the stop id '.'")


@settings(max_examples=4)
@given(t=st.sampled_from([0.8, 1.0, 2.0]), seed=seeds)
def test_stream_text_with_a_trained_tokenizer(gen, model_mod, impl, t, seed):
    """With a real tokenizer and model, the pieces join to tokenizer.decode of the generated ids."""
    tokenizer_mod = impl.component("tokenizer")
    tok = tokenizer_mod.Tokenizer.train(["日本語 😀 héllo wörld " * 3, "👍🏽 emoji 🇫🇷 ü 世界"], 270)
    lm = _build(model_mod, seed, vocab_size=tok.vocab_size, context_length=24)
    prompt = "héllo 世"
    pieces = list(gen.stream_text(lm, tok, prompt, 20, temperature=t, seed=seed))
    ids = gen.generate(lm, tok.encode(prompt), 20, temperature=t, seed=seed)
    assert_equal("".join(pieces), tok.decode(ids), what="joined pieces vs decode(ids)")
    n_replacements = tok.decode(ids).count("\ufffd")
    assert_equal("".join(pieces).count("\ufffd"), n_replacements, what="number of U+FFFD")


# --- compiled decoding ------------------------------------------------------------------------------
# The spec compiles with the "eager" backend: dynamo traces the model's forward (graph capture, guards,
# recompilation on new lengths) and runs the captured graph as is; inductor's code generation costs
# tens of seconds per model on 2 CPU cores and is checked by benchmarks/test_bench_compile.py.

def test_compiled_generate_equals_eager(gen, model_mod):
    """generate(compile="eager") gives the eager tokens for the same seed, with the KV cache (a float64 model
    with spread logits: a draw flips between the two only on a gap ~1e-15, false-failure rate far below 1e-9)."""
    seed_all(11)
    config = model_mod.ModelConfig(vocab_size=32, context_length=16, n_layers=1, d_model=16, n_heads=2)
    lm = model_mod.TransformerLM(config)
    with torch.no_grad():
        for i, p in enumerate(lm.parameters()):
            p.copy_(randn(p.shape, 11 + i, p.dtype, 0.5) + (1.0 if p.dim() == 1 else 0.0))
    lm = lm.double().train()
    prompt = _prompt(12, 5)
    eager = gen.generate(lm, prompt, 4, temperature=1.0, seed=5)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    compiled = gen.generate(lm, prompt, 4, temperature=1.0, seed=5, compile="eager")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs, \
        "generate(compile='eager'): torch.compile traced no graph (the switch was ignored)"
    assert_equal(compiled, eager, what="compiled vs eager tokens (seed 5, KV cache)")
    assert lm.training, "generate(compile=...) must restore the model's training mode"


def test_compiled_switch_values(gen, model_mod):
    """compile takes False, True (inductor) or a backend name: True is accepted (checked with 0 new tokens,
    so the compiled model never runs and inductor generates no code); 0, 1, 1.0 and "" are TypeErrors
    naming compile (0 and 1 are not the booleans)."""
    seed_all(3)
    lm = model_mod.TransformerLM(model_mod.ModelConfig(vocab_size=32, context_length=16, n_layers=1, d_model=16,
                                                       n_heads=2))
    prompt = _prompt(12, 5)
    assert_equal(gen.generate(lm, prompt, 0, compile=True), [], what="generate(prompt, 0, compile=True): no new tokens")
    for bad in (0, 1, 1.0, ""):
        with raises_clear(TypeError, "compile"):
            gen.generate(lm, prompt, 2, compile=bad)


# --- what the decoder asks of the model -----------------------------------------------------------
# A stand-in model that records every call: the width it is fed, whether a KV cache comes with it, and
# the caches it is asked for. It predicts (last id + 1) % V, so every path gives the same tokens.

class _Recorder(torch.nn.Module):
    """Predicts ``(last id + 1) % vocab_size`` at the last position (``poison``: also puts that value at
    id 7); records ``calls`` = (width fed, kv_cache given) and ``caches`` = new_kv_cache's (batch, max_len).
    ``rolls``: the ``rolls_past_context`` attribute (None: the model has none); ``vocab``: whether
    ``config`` has a ``vocab_size``; ``parameters``: whether the model has any."""

    def __init__(self, vocab_size=16, context_length=4, rolls=None, vocab=True, parameters=True, poison=None):
        super().__init__()
        self.vocab_size, self.poison = vocab_size, poison
        fields = {"context_length": context_length, **({"vocab_size": vocab_size} if vocab else {})}
        self.config = type("Config", (), fields)()
        if rolls is not None:
            self.rolls_past_context = rolls
        if parameters:
            self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.calls, self.caches = [], []

    def new_kv_cache(self, batch_size, max_len=None):
        self.caches.append((batch_size, max_len))
        return [_Cache()]

    def forward(self, idx, targets=None, *, padding_mask=None, kv_cache=None):
        b, t = idx.shape
        self.calls.append((t, kv_cache is not None))
        logits = torch.zeros(b, t, self.vocab_size)
        logits[torch.arange(b), -1, (idx[:, -1] + 1) % self.vocab_size] = 100.0   # the other ids: ~e^-100
        if self.poison is not None:
            logits[:, -1, 7] = self.poison
        return logits, None


def _expected_calls(t0, n, context, use_cache, rolls):
    """The contract's decoding schedule: (width, cached) per step and the caches asked for."""
    t = min(t0, context)                       # a long prompt keeps its last context_length tokens
    calls = []
    for i in range(n):
        if use_cache and (rolls or t + i <= context):
            calls.append((t if i == 0 else 1, True))          # the prompt once, then the new token only
        else:
            calls.append((min(t + i, context), False))        # a full pass over the last context tokens
    return calls, min(context, t + n) if not rolls else t + n


@given(b=st.sampled_from([None, 1, 3]), t0=sizes(7), n=st.integers(0, 7), context=sizes(5),
       use_cache=st.booleans(), rolls=st.sampled_from([None, False, True]))
@example(b=3, t0=2, n=0, context=4, use_cache=True, rolls=None)      # an empty batch result is (B, 0)
@example(b=None, t0=2, n=1, context=4, use_cache=True, rolls=None)   # one new token: still through the cache
@example(b=None, t0=2, n=0, context=4, use_cache=True, rolls=None)   # no token: no cache, no forward
@example(b=None, t0=2, n=5, context=4, use_cache=True, rolls=None)   # fills the context exactly, then slides
@example(b=None, t0=2, n=5, context=4, use_cache=False, rolls=None)
@example(b=1, t0=6, n=3, context=4, use_cache=True, rolls=None)      # a long prompt is cropped, then cached
@example(b=None, t0=6, n=3, context=4, use_cache=True, rolls=True)   # cropped, then rolls at the true positions
@example(b=None, t0=2, n=3, context=100, use_cache=True, rolls=True)
@example(b=None, t0=2, n=3, context=100, use_cache=True, rolls=False)
def test_decoding_schedule(gen, b, t0, n, context, use_cache, rolls):
    """The model is fed the (cropped) prompt once, then one new token a step through ONE cache from
    new_kv_cache(B, min(context, T + n)) (T + n when it rolls_past_context), recomputing the last
    context_length tokens without cache past the context; use_cache=False: full passes; n=0: nothing."""
    lm = _Recorder(context_length=context, rolls=rolls)
    prompt = [int(i) for i in randint(0, 16, (t0,), t0 + n)]
    got = gen.generate(lm, prompt if b is None else torch.tensor([prompt] * b), n, temperature=0.0,
                       use_cache=use_cache)
    expected_tokens = [(prompt[-1] + 1 + i) % 16 for i in range(n)]
    if b is None:
        assert_equal(got, expected_tokens, what="tokens of the (last id + 1) model")
    else:
        assert_equal(got, torch.tensor([expected_tokens] * b, dtype=torch.long).reshape(b, n),
                     what=f"batched tokens of the (last id + 1) model, a ({b}, {n}) long tensor")
    calls, max_len = _expected_calls(t0, n, context, use_cache, bool(rolls))
    assert_equal(lm.calls, calls, what=f"(width fed, kv_cache given) per forward call, prompt of {t0}, "
                                       f"context {context}, {n} new, use_cache={use_cache}, rolls={rolls}")
    caches = [(b or 1, max_len)] if use_cache and n > 0 else []
    assert_equal(lm.caches, caches, what="new_kv_cache calls (batch_size, max_len)")


# --- argument checks on both sides of each boundary -------------------------------------------------

def _error_of(call):
    """The exception ``call()`` raises (a stub's NotImplementedError passes through)."""
    try:
        call()
    except NotImplementedError:
        raise
    except Exception as err:  # noqa: BLE001 - the test inspects it
        return err
    raise AssertionError("expected an error, but nothing was raised")


def test_prompt_checks_at_the_boundaries(gen):
    """Prompt ids in [0, vocab_size) are accepted, one outside is a ValueError naming prompt_ids and that
    id; a 1-D or 2-D long tensor or a list of ints (not bools, not floats) is accepted, anything else refused."""
    lm = _Recorder(vocab_size=16, context_length=8)
    for ok in ([0, 15], [15], torch.tensor([15, 0]), torch.tensor([[0, 15], [15, 0]])):
        got = gen.generate(lm, ok, 2, temperature=0.0)
        assert len(got) == 2, f"prompt {ok!r} (ids in [0, 16)) must be accepted: got {got!r}"
    for bad, bad_id in [([5, 16], "16"), ([0, 20], "20"), ([3, 20, 7], "20"), ([-1, 4], "-1"), ([0, -3, 2], "-3"),
                        (torch.tensor([[2, 4], [20, 1]]), "20")]:
        with raises_clear(ValueError, "prompt_ids", bad_id):
            gen.generate(lm, bad, 2)
    with raises_clear(ValueError, "prompt_ids"):
        gen.stream(lm, [0, 16], 2)   # checked at the call
    for bad in (torch.tensor(3), torch.zeros(1, 1, 2, dtype=torch.long)):
        with raises_clear(ValueError, "prompt_ids"):
            gen.generate(lm, bad, 2)
    with raises_clear(ValueError, "prompt_ids"):
        gen.generate(lm, torch.empty(0, 3, dtype=torch.long), 2)   # no row
    for bad in ([1, 2.0], [1, 2.5], [True, 2], [1, "2"], torch.tensor([1.0, 2.0])):
        with raises_clear(TypeError, "prompt_ids"):
            gen.generate(lm, bad, 2)
    for bad in ([2.5], [True], [3, None]):
        with raises_clear(TypeError, "stop_ids"):
            gen.generate(lm, [1, 2], 2, stop_ids=bad)


def test_models_without_parameters_or_vocab_size(gen):
    """A model without parameters decodes on the CPU (seeded too); without config.vocab_size the prompt
    ids are not range-checked by generate (the model's own checks apply). At T = 1 the model's other ids
    have probability ~15 e^-100 per draw: a false failure is below 1e-40."""
    for lm in (_Recorder(parameters=False), _Recorder(vocab=False), _Recorder(parameters=False, vocab=False)):
        for seed in (None, 3):
            got = gen.generate(lm, [1, 2], 3, temperature=0.0, seed=seed)
            assert_equal(got, [3, 4, 5], what="tokens of the (last id + 1) model without parameters / vocab_size")
            got = gen.generate(lm, torch.tensor([[1, 2], [4, 5]]), 2, seed=seed, temperature=1.0)
            assert_equal(got.tolist(), [[3, 4], [6, 7]], what="batched tokens at T = 1 (the model puts all but ~e^-100 of the mass on one id)")


def test_stream_text_empty_prompt_names_prompt(gen):
    """stream_text's empty prompt is a ValueError naming its own argument `prompt` (stream_text has no prompt_ids)."""
    err = _error_of(lambda: gen.stream_text(_Recorder(vocab_size=256), ByteTokenizer(), "", 3))
    assert isinstance(err, ValueError) and re.search(r"\bprompt\b", str(err)), (
        f"stream_text(prompt=''): expected a ValueError naming `prompt`, got {type(err).__name__}: {err}")
    assert "".join(gen.stream_text(_Recorder(vocab_size=256), ByteTokenizer(), "a", 2, temperature=0.0)) == "bc", \
        "stream_text(prompt='a') (one token) must be accepted: the (last id + 1) model gives 'bc'"


@pytest.mark.parametrize("shape", [(), (0,), (3, 0), (2, 1, 0)])
def test_logits_rank_and_vocabulary_refused(gen, shape):
    """0-dim logits or an empty last (vocabulary) dimension: a ValueError naming logits."""
    for fn in (gen.sampling_distribution, gen.sample):
        with raises_clear(ValueError, "logits"):
            fn(torch.zeros(shape))


@pytest.mark.parametrize("shape", [(1,), (0, 5), (2, 0, 3), (3, 1)])
def test_logits_smallest_accepted(gen, shape):
    """(..., V) logits with V >= 1 are accepted, empty leading dimensions too: probs (..., V), ids (...)."""
    logits = torch.zeros(shape, dtype=torch.float64)
    for t in (0.0, 1.0):
        probs = gen.sampling_distribution(logits, temperature=t)
        assert_close(probs, torch.full(shape, 1.0 / shape[-1], dtype=torch.float64) if t else
                     torch.nn.functional.one_hot(torch.zeros(shape[:-1], dtype=torch.long), shape[-1]).double(),
                     what=f"sampling_distribution(zeros{shape}, temperature={t})")
        ids = gen.sample(logits, temperature=t, generator=torch.Generator().manual_seed(0))
        assert tuple(ids.shape) == shape[:-1] and ids.dtype == torch.long, \
            f"sample(zeros{shape}): expected {shape[:-1]} long, got {tuple(ids.shape)} {ids.dtype}"
        assert bool((ids >= 0).all() & (ids < shape[-1]).all()), f"ids outside [0, {shape[-1]}): {ids.tolist()}"


# --- non-finite logits from the model while decoding ------------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("batch", [None, 2])
@pytest.mark.parametrize("stop_ids", [(), (7,)])
@pytest.mark.parametrize("t", [0.0, 1.0])
def test_model_non_finite_logits_while_decoding(gen, bad, batch, stop_ids, t):
    """A model producing non-finite logits is a ValueError naming logits, one prompt or a batch, also at a step
    where the draw is a stop id that ends every row (greedy: +inf at the stop id 7 is drawn), from generate and
    from stream's iteration; nothing non-finite is ever yielded as a token."""
    prompt = [1, 2] if batch is None else torch.tensor([[1, 2]] * batch)
    for use_cache in (True, False):
        lm = _Recorder(poison=bad)
        with raises_clear(ValueError, "logits"):
            gen.generate(lm, prompt, 4, temperature=t, stop_ids=stop_ids, seed=0, use_cache=use_cache)
        it = gen.stream(lm, prompt, 4, temperature=t, stop_ids=stop_ids, seed=0, use_cache=use_cache)
        yielded = []
        with raises_clear(ValueError, "logits"):
            for token in it:
                yielded.append(token)
        assert not yielded, f"stream yielded {yielded!r} from non-finite logits (at the first step)"


# --- defaults of stream and stream_text -------------------------------------------------------------

@settings(max_examples=2)
@given(n=sizes(8, 5), seed=seeds)
def test_stream_and_stream_text_defaults(gen, model_mod, n, seed):
    """stream and stream_text default to temperature 1, no top-k / top-p / stop ids, seed None (the global RNG),
    the cache on and no compilation: after the same torch.manual_seed they give generate's explicit tokens, the
    prompt fed once then one token a step, and torch.compile traces nothing. (A model of 128 ids: ASCII, so
    the text shows every id.)"""
    lm = _build(model_mod, seed, vocab_size=128, context_length=10, n_layers=1)
    tok, prompt = ByteTokenizer(), "ab"
    ids = tok.encode(prompt)
    torch.manual_seed(seed)
    explicit = gen.generate(lm, ids, n, temperature=1.0, top_k=None, top_p=None, stop_ids=(), seed=None,
                            use_cache=True, compile=False)
    widths, compiling = [], []

    def record(module, args, out):
        widths.append(args[0].shape[-1])
        compiling.append(torch.compiler.is_compiling())
    hook = lm.register_forward_hook(record)
    try:
        torch.manual_seed(seed)
        streamed = list(gen.stream(lm, ids, n))
        stream_widths, widths[:] = list(widths), []
        torch.manual_seed(seed)
        text = "".join(gen.stream_text(lm, tok, prompt, n))
    finally:
        hook.remove()
    assert_equal(streamed, explicit, what="stream(lm, ids, n) vs generate with the explicit defaults")
    assert_equal(text, tok.decode(explicit), what="stream_text(lm, tok, prompt, n) vs decode(generate(explicit defaults))")
    for name, got in (("stream", stream_widths), ("stream_text", widths)):
        assert_equal(got, [len(ids)] + [1] * (n - 1), what=f"widths fed to the model by {name} by default "
                     "(cache on: the prompt once, then one new token per step)")
    assert not any(compiling), "stream / stream_text ran the model under torch.compile by default (compile must default to False)"


# --- the top-p rounding boundary --------------------------------------------------------------------

def _robust_two_token_logits():
    """Logits [0, d] whose float64 softmax is exact whatever the exp's last bit: e = exp(d) in [0.25, 0.5) is a
    multiple of 2^-52, so 1 + e (and 1 + e +- 1 ulp) rounds to the same sum S, and p_0 = 1 / S in any order."""
    for i in range(4000):
        d = -1.0 - i * 1e-9
        e = float(torch.tensor(d, dtype=torch.float64).exp())
        if e == math.exp(d) and 0.25 <= e < 0.5 and (e * 2.0 ** 52).is_integer():
            return d, 1.0 / (1.0 + e)
    raise AssertionError("no robust logit found")   # never: about 1 in 4 candidates qualifies


def test_top_p_rounding_boundary(gen):
    """top-p keeps i iff (the mass above i) < top_p * (1 - TOP_P_RTOL) in float64: for probs [p_0, 1 - p_0] the
    second token is dropped at the top_p where top_p * (1 - TOP_P_RTOL) == p_0 exactly (and just below it), kept
    at the next float up."""
    d, p0 = _robust_two_token_logits()
    logits = torch.tensor([0.0, d], dtype=torch.float64)
    c = 1.0 - gen.TOP_P_RTOL
    at = p0 / c
    while at * c < p0:
        at = math.nextafter(at, 2.0)
    while math.nextafter(at, 0.0) * c >= p0:
        at = math.nextafter(at, 0.0)
    assert at * c == p0, f"test setup: no float top_p with top_p * (1 - TOP_P_RTOL) == p_0 = {p0!r}"   # it exists
    above = math.nextafter(at, 2.0)
    while above * c <= p0:
        above = math.nextafter(above, 2.0)
    for top_p, kept in ((math.nextafter(at, 0.0), False), (at, False), (above, True)):
        probs = gen.sampling_distribution(logits, top_p=top_p)
        assert bool(probs[1] > 0) == kept, (
            f"probs {[p0, 1 - p0]}, top_p={top_p!r} (top_p * (1 - TOP_P_RTOL) {'>' if kept else '<='} p_0 = {p0!r}): "
            f"the second token must be {'kept' if kept else 'dropped'}, got probs {probs.tolist()}")
