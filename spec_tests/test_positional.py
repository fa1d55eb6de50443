"""Spec of ``positional``: sinusoidal and learned tables, RoPE and ALiBi."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from .support import (assert_close, assert_equal, batch_shapes, fresh, randint, randn, raises_clear, seed_all, seeds,
                      sizes)

even = sizes(8).map(lambda n: 2 * n)   # 2 .. 16


@pytest.fixture(scope="module")
def positional(impl):
    return impl.component("positional")


def _paper_alibi_slopes(n):
    """The ALiBi paper's reference code (Press et al., 2022), verbatim in spirit."""
    def power_of_2(n):
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        return [start * start ** i for i in range(n)]
    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + _paper_alibi_slopes(2 * closest)[0::2][: n - closest]


def _rope_complex(x, positions, base=10000.0):
    """RoPE as complex multiplication: z_i = x[2i] + j x[2i+1] times exp(j p base^(-2i/D))."""
    d = x.shape[-1]
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)            # (D/2,)
    angle = positions.double()[:, None] * theta                                   # (T, D/2)
    return torch.view_as_real(z * torch.polar(torch.ones_like(angle), angle)).reshape(x.shape)


# --- sinusoidal ---------------------------------------------------------------------------------

@given(max_len=sizes(40), d=even)
def test_sinusoidal_formula(positional, max_len, d):
    """sinusoidal_table: PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d))."""
    table = positional.sinusoidal_table(max_len, d)
    expected = torch.tensor([[math.sin(p / 10000 ** (c / d)) if c % 2 == 0 else math.cos(p / 10000 ** ((c - 1) / d))
                              for c in range(d)] for p in range(max_len)], dtype=torch.float32)
    assert_close(table, expected, what="sinusoidal_table")


@given(d=even, p=sizes(60, 0), q=sizes(60, 0), shift=sizes(30))
def test_sinusoidal_dot_product_is_relative(positional, d, p, q, shift):
    """PE(p) . PE(q) depends only on p - q: shifting both positions keeps the dot product."""
    table = positional.sinusoidal_table(100, d).double()
    assert_close(table[p + shift] @ table[q + shift], table[p] @ table[q], what="PE(p+s).PE(q+s) vs PE(p).PE(q)",
                 atol=1e-5)


@given(d=even, max_len=sizes(20), seed=seeds)
def test_sinusoidal_module_looks_up_positions(positional, d, max_len, seed):
    """SinusoidalPositionalEncoding(positions) is table[positions] (any positions), with no parameters."""
    enc = positional.SinusoidalPositionalEncoding(d, max_len)
    positions = randint(0, max_len, (7,), seed)
    got = enc(positions)
    assert_close(got, positional.sinusoidal_table(max_len, d)[positions], what="encoding(positions)")
    assert_equal(list(enc.parameters()), [], what="parameters of the fixed encoding")


# --- learned ------------------------------------------------------------------------------------

@given(max_len=sizes(20), d=sizes(8), seed=seeds)
def test_learned_looks_up_positions(positional, max_len, d, seed):
    """LearnedPositionalEmbedding(positions) is weight[positions]; weight is (max_len, d_model)."""
    seed_all(seed)
    emb = positional.LearnedPositionalEmbedding(max_len, d)
    positions = randint(0, max_len, (5,), seed)
    got = emb(positions)
    assert_equal(tuple(emb.weight.shape), (max_len, d), what="weight shape")
    assert_close(got, emb.weight[positions], what="embedding(positions)")


def test_learned_initialisation(positional):
    """The learned table is drawn from N(0, 0.02^2).

    False-failure rate: 64,000 draws; 0.001 is 17.9 standard errors of the std (0.02 / sqrt(128,000)):
    below 1e-70 for a correct draw.
    """
    seed_all(0)
    w = positional.LearnedPositionalEmbedding(1000, 64).weight.detach()
    assert abs(w.std().item() - 0.02) < 0.001, f"weight std: expected 0.02, got {w.std().item():.5f}"


@pytest.mark.parametrize("kind", ["learned", "sinusoidal"])
def test_position_beyond_max_len(positional, kind):
    """A position >= max_len (an input longer than max_len) is a ValueError naming max_len."""
    emb = positional.LearnedPositionalEmbedding(8, 4) if kind == "learned" else \
        positional.SinusoidalPositionalEncoding(4, 8)
    emb(torch.arange(8))  # exactly max_len positions is fine
    with raises_clear(ValueError, "max_len", "8"):
        emb(torch.arange(9))
    with raises_clear(ValueError, "max_len"):
        emb(torch.tensor([8]))
    with raises_clear(ValueError, "positions"):
        emb(torch.tensor([-1, 0]))
    with raises_clear(TypeError, "positions"):
        emb(torch.arange(3.0))


# --- RoPE ---------------------------------------------------------------------------------------

@given(lead=batch_shapes(0, 2), t=sizes(6), d=even, seed=seeds)
def test_rope_equals_complex_rotation(positional, lead, t, d, seed):
    """RoPE multiplies z_i = x[2i] + j x[2i+1] by exp(j p 10000^(-2i/D)) (interleaved pairs)."""
    rope = positional.RotaryEmbedding(d, 64)
    x = randn((*lead, t, d), seed, torch.float64)
    positions = randint(0, 64, (t,), seed)
    assert_close(rope(x, positions), _rope_complex(x, positions), what="RoPE(x, positions)")


@given(t=sizes(5), d=even, seed=seeds, base=st.sampled_from([100.0, 10000.0, 500000.0]))
def test_rope_rotation_matrix_and_base(positional, t, d, seed, base):
    """RoPE with any base equals the block-diagonal 2x2 rotation matrices R(p theta_i) on (x[2i], x[2i+1])."""
    rope = positional.RotaryEmbedding(d, 1000, base=base)
    x = randn((t, d), seed, torch.float64)
    positions = randint(0, 1000, (t,), seed + 1)
    got = rope(x, positions)
    expected = torch.empty_like(x)
    for r in range(t):
        for i in range(d // 2):
            a = positions[r].item() * base ** (-2 * i / d)
            rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)
            expected[r, 2 * i: 2 * i + 2] = rot @ x[r, 2 * i: 2 * i + 2]
    assert_close(got, expected, what=f"RoPE(x) with base {base}")


@given(t=sizes(6), d=even, seed=seeds)
def test_rope_preserves_norms_and_position_zero_is_identity(positional, t, d, seed):
    """RoPE preserves every vector's norm, and rotates position 0 by nothing."""
    rope = positional.RotaryEmbedding(d, 32)
    x = randn((2, t, d), seed, torch.float64)
    y = rope(x, randint(0, 32, (t,), seed))
    assert_close(y.norm(dim=-1), x.norm(dim=-1), what="|RoPE(x)| vs |x|")
    assert_close(rope(x, torch.zeros(t, dtype=torch.long)), x, what="RoPE at position 0")


@given(d=even, p=sizes(50, 0), s=sizes(50, 0), shift=sizes(40), seed=seeds)
def test_rope_scores_depend_on_offset_only(positional, d, p, s, shift, seed):
    """<RoPE(q, p), RoPE(k, s)> depends only on p - s: shifting both positions keeps the score."""
    rope = positional.RotaryEmbedding(d, 128)
    q, k = randn((1, d), seed, torch.float64), randn((1, d), seed + 1, torch.float64)
    score = (rope(q, torch.tensor([p])) * rope(k, torch.tensor([s]))).sum()
    shifted = (rope(q, torch.tensor([p + shift])) * rope(k, torch.tensor([s + shift]))).sum()
    assert_close(shifted, score, what="score at (p+shift, s+shift) vs (p, s)", atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rope_keeps_dtype(positional, dtype):
    """RoPE keeps the input's dtype and shape; float32 agrees with the float64 formula."""
    rope = positional.RotaryEmbedding(8, 512)
    x = randn((2, 3, 5, 8), 0).to(dtype)
    positions = torch.tensor([0, 7, 100, 300, 511])
    y = rope(x, positions)
    assert y.dtype == dtype and y.shape == x.shape, f"expected {dtype} {tuple(x.shape)}, got {y.dtype} {tuple(y.shape)}"
    tol = {torch.float32: 1e-5, torch.bfloat16: 5e-2, torch.float16: 5e-3}[dtype]
    assert_close(y.double(), _rope_complex(x.double(), positions), what=f"RoPE in {dtype}", atol=tol, rtol=tol)


def test_rope_bad_arguments(positional):
    """Odd head_dim, wrong last dim, mismatched positions and positions >= max_len raise clear errors."""
    with raises_clear(ValueError, "head_dim"):
        positional.RotaryEmbedding(5, 8)
    with raises_clear(ValueError, "head_dim"):
        positional.RotaryEmbedding(0, 8)
    rope = positional.RotaryEmbedding(4, 8)
    with raises_clear(ValueError, "x", "4"):
        rope(torch.zeros(3, 6), torch.arange(3))
    with raises_clear(ValueError, "positions"):
        rope(torch.zeros(3, 4), torch.arange(2))
    with raises_clear(ValueError, "max_len"):
        rope(torch.zeros(9, 4), torch.arange(9))
    with raises_clear(TypeError, "x"):
        rope(torch.zeros(3, 4, dtype=torch.long), torch.arange(3))


@given(t=sizes(6), d=st.sampled_from([2, 4, 8]), offset=st.integers(0, 5000), seed=seeds)
def test_rope_rotate_has_no_max_len(positional, t, d, offset, seed):
    """rotate(x, positions) is RoPE's rotation at ANY positions >= 0, max_len and beyond (a rolling KV
    cache decodes past the context with it); negative positions are still refused."""
    rope = positional.RotaryEmbedding(d, 4)
    x = randn((2, t, d), seed, torch.float64)
    positions = torch.arange(offset, offset + t)
    assert_close(rope.rotate(x, positions), _rope_complex(x, positions),
                 what=f"rotate at positions {offset}..{offset + t - 1} (max_len 4) vs the complex rotation")
    with raises_clear(ValueError, "positions"):
        rope.rotate(x, positions - offset - 1)


# --- ALiBi --------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_heads", list(range(1, 17)) + [24, 32, 48])
def test_alibi_slopes_match_the_paper(positional, n_heads):
    """alibi_slopes(n): 2^(-8h/n) for powers of two, else n' slopes then every other slope of 2n'."""
    slopes = positional.alibi_slopes(n_heads)
    assert_close(slopes.double(), torch.tensor(_paper_alibi_slopes(n_heads), dtype=torch.float64),
                 what=f"alibi_slopes({n_heads})", atol=1e-7, rtol=1e-6)


def test_alibi_slopes_examples(positional):
    """alibi_slopes(8) = 1/2, 1/4, ..., 1/256 and alibi_slopes(6) = 1/4, 1/16, 1/64, 1/256, 1/2, 1/8."""
    assert_close(positional.alibi_slopes(8).double(), torch.tensor([2.0 ** -h for h in range(1, 9)],
                 dtype=torch.float64), what="alibi_slopes(8)")
    assert_close(positional.alibi_slopes(6).double(), torch.tensor([1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8],
                 dtype=torch.float64), what="alibi_slopes(6)")


@given(n_heads=sizes(12), tq=sizes(6), tk=sizes(6), seed=seeds)
def test_alibi_bias_formula(positional, n_heads, tq, tk, seed):
    """alibi_bias[h, i, j] = -m_h * (q_positions[i] - k_positions[j])."""
    qp, kp = randint(0, 50, (tq,), seed), randint(0, 50, (tk,), seed + 1)
    bias = positional.alibi_bias(n_heads, qp, kp)
    m = torch.tensor(_paper_alibi_slopes(n_heads), dtype=torch.float64)
    expected = -m[:, None, None] * (qp[:, None] - kp[None, :]).double()
    assert_close(bias.double(), expected, what="alibi_bias", atol=1e-5, rtol=1e-6)


def test_constants_and_bad_arguments(positional):
    """POSITIONAL lists the five schemes; odd d for sinusoidal and non-positive sizes raise clear errors."""
    assert_equal(tuple(positional.POSITIONAL), ("sinusoidal", "learned", "rope", "alibi", "none"), what="POSITIONAL")
    with raises_clear(ValueError, "d_model"):
        positional.sinusoidal_table(8, 5)
    with raises_clear(ValueError, "d_model"):
        positional.SinusoidalPositionalEncoding(3, 8)
    with raises_clear(ValueError, "max_len"):
        positional.sinusoidal_table(0, 4)
    with raises_clear(ValueError, "max_len"):
        positional.LearnedPositionalEmbedding(0, 4)
    with raises_clear(ValueError, "n_heads"):
        positional.alibi_slopes(0)


def test_check_positions_without_max_len(positional):
    """check_positions(positions) without max_len accepts any non-negative position; negatives are still refused."""
    big = torch.tensor([0, 5, 100_000])
    assert torch.equal(positional.check_positions(big), big), "check_positions without max_len changed its input"
    with raises_clear(ValueError, "positions"):
        positional.check_positions(torch.tensor([0, -1]))


def test_state_dicts(positional):
    """The learned table is the state ('weight') and a fresh module loading it looks up the same rows; the sinusoidal table is not saved."""
    seed_all(0)
    original = positional.LearnedPositionalEmbedding(12, 4)
    seed_all(1)
    loaded = positional.LearnedPositionalEmbedding(12, 4)
    assert_equal(sorted(original.state_dict()), ["weight"], what="state_dict keys of LearnedPositionalEmbedding")
    assert_equal([n for n, _ in original.named_parameters()], ["weight"], what="parameters of LearnedPositionalEmbedding")
    loaded.load_state_dict(original.state_dict())
    positions = torch.tensor([0, 3, 11, 3])
    assert_close(loaded(positions), original(positions), what="loaded learned positions vs the original", atol=0, rtol=0)
    sinusoidal = positional.SinusoidalPositionalEncoding(4, 12)
    assert_equal(list(sinusoidal.state_dict()), [], what="state_dict keys of SinusoidalPositionalEncoding (not persistent)")
    assert_equal(list(sinusoidal.parameters()), [], what="parameters of SinusoidalPositionalEncoding")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_tables_move_with_the_module(positional, dtype):
    """Learned and sinusoidal modules moved with .to(dtype) return rows of that dtype (the table cast once)."""
    seed_all(0)
    positions = torch.tensor([0, 2, 7])
    learned = positional.LearnedPositionalEmbedding(8, 6)
    expected = learned.weight.detach().to(dtype)[positions]
    got = learned.to(dtype)(positions)
    assert got.dtype == dtype, f"learned positions in {dtype}: got {got.dtype}"
    assert_close(got, expected, what=f"learned rows in {dtype}", atol=0, rtol=0)
    sinusoidal = positional.SinusoidalPositionalEncoding(6, 8).to(dtype)
    got = sinusoidal(positions)
    assert got.dtype == dtype, f"sinusoidal positions in {dtype}: got {got.dtype}"
    assert_close(got, positional.sinusoidal_table(8, 6).to(dtype)[positions], what=f"sinusoidal rows in {dtype}",
                 atol=0, rtol=0)


def test_alibi_bias_bad_positions(positional):
    """alibi_bias takes 1-D integer position tensors: a scalar, a 2-D or a float tensor is a clear error."""
    good = torch.arange(3)
    for name, q, k in (("q_positions", torch.tensor(1), good), ("q_positions", good[None, :], good),
                       ("k_positions", good, torch.tensor(1)), ("k_positions", good, good[None, :]),
                       ("q_positions", good.float(), good)):
        with raises_clear((ValueError, TypeError), name):
            positional.alibi_bias(2, q, k)


def test_compiled_check_positions_refuses_out_of_range(positional):
    """Compiled, check_positions still refuses positions outside [0, max_len).

    Traced by dynamo (the `eager` backend): a negative position and one >= max_len are refused (an
    in-graph assert there is a RuntimeError; eager mode raises ValueError), [0, max_len) passes."""
    positional.check_positions(torch.arange(5), 5)  # eager first: a stub reads as not started
    torch._dynamo.reset()
    check = torch.compile(lambda p: positional.check_positions(p, 5) * 1, backend="eager", fullgraph=True)
    assert_equal(check(torch.arange(5)).tolist(), list(range(5)), what="compiled check_positions on [0, 5)")
    for bad in ([0, 5], [-1, 0], [2, 7]):
        with pytest.raises((RuntimeError, ValueError)):
            check(torch.tensor(bad))


# --- argument boundaries, the "half" pairing, large sizes ---------------------------------------

def _rope_half(x, positions, base=10000.0):
    """RoPE on the pairs (x[i], x[i + D/2]): z_i = x[i] + j x[i + D/2] times exp(j p base^(-2i/D))."""
    d = x.shape[-1]
    z = torch.complex(x.double()[..., : d // 2], x.double()[..., d // 2:])            # (..., T, D/2)
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)                 # (D/2,)
    angle = positions.double()[:, None] * theta                                       # (T, D/2)
    r = z * torch.polar(torch.ones_like(angle), angle)
    return torch.cat((r.real, r.imag), dim=-1)                                        # (..., T, D)


@given(lead=batch_shapes(1, 2, 3), t=sizes(5), d=even, seed=seeds)
def test_rope_half_pairing_formula(positional, lead, t, d, seed):
    """pairing="half" (the name as read from a config: equal, not the same object) rotates the pairs
    (x[i], x[i + D/2]): y[i] = x[i] cos - x[i+D/2] sin, y[i+D/2] = x[i] sin + x[i+D/2] cos, for
    forward and rotate, with leading dims."""
    rope = positional.RotaryEmbedding(d, 64, pairing=fresh("half"))
    x = randn((*lead, t, d), seed, torch.float64)
    positions = randint(0, 64, (t,), seed + 1)
    assert_close(rope(x, positions), _rope_half(x, positions), what=f"half-pairing RoPE, x of shape {tuple(x.shape)}")
    assert_close(rope.rotate(x, positions + 100), _rope_half(x, positions + 100),
                 what="half-pairing rotate past max_len")


@given(t=sizes(5), d=even, seed=seeds)
def test_rope_half_is_a_permutation_of_interleaved(positional, t, d, seed):
    """The two pairings differ by a fixed permutation: with perm = (0, D/2, 1, D/2 + 1, ...),
    half(x)[..., perm] == interleaved(x[..., perm])."""
    half = positional.RotaryEmbedding(d, 32, pairing="half")
    interleaved = positional.RotaryEmbedding(d, 32, pairing="interleaved")
    perm = torch.tensor([c for i in range(d // 2) for c in (i, i + d // 2)])
    x = randn((2, t, d), seed, torch.float64)
    positions = randint(0, 32, (t,), seed + 1)
    assert_close(half(x, positions)[..., perm], interleaved(x[..., perm], positions),
                 what="half(x) permuted vs interleaved(x permuted)")


def test_rope_long_sequence_and_wide_heads(positional):
    """RoPE at T = 300 positions with head_dim = 512 (sizes past small-int caches) is the complex rotation."""
    rope = positional.RotaryEmbedding(512, 300)
    x = randn((300, 512), 0, torch.float64)
    positions = torch.arange(300)
    assert_close(rope(x, positions), _rope_complex(x, positions), what="RoPE with T=300, head_dim=512")
    assert_close(rope.rotate(x, positions), _rope_complex(x, positions), what="rotate with T=300, head_dim=512")


def test_rope_base_boundary(positional):
    """base must be a finite number > 1: 1.0, 0.5, nan and inf are a ValueError naming base; the
    smallest float above 1 and 1.5 are accepted."""
    for bad in (1.0, 0.5, 0.0, float("nan"), float("inf")):
        with raises_clear(ValueError, "base"):
            positional.RotaryEmbedding(4, 8, base=bad)
    x = randn((3, 4), 0, torch.float64)
    for good in (math.nextafter(1.0, 2.0), 1.5):
        rope = positional.RotaryEmbedding(4, 8, base=good)
        assert_close(rope(x, torch.arange(3)), _rope_complex(x, torch.arange(3), base=good), what=f"RoPE with base {good}")


def test_rope_shape_errors(positional):
    """RoPE's x must have rank >= 2 (a 1-D x is a ValueError naming x, a 2-D one works), and positions
    must have length x.shape[-2] exactly: longer or shorter is a ValueError naming positions."""
    rope = positional.RotaryEmbedding(4, 8)
    for call in (rope, rope.rotate):
        with raises_clear(ValueError, "x"):
            call(torch.zeros(4), torch.arange(1))
        assert_equal(tuple(call(torch.zeros(1, 4), torch.arange(1)).shape), (1, 4), what="RoPE of a (1, 4) x")
        for n in (2, 4):
            with raises_clear(ValueError, "positions"):
                call(torch.zeros(3, 4), torch.arange(n))
        with raises_clear(ValueError, "positions"):
            call(torch.zeros(1, 4), torch.arange(3))


def test_check_positions_rank(positional):
    """check_positions takes exactly 1-D tensors: a 0-dim or a 2-D tensor is a ValueError naming
    positions, with or without max_len and through LearnedPositionalEmbedding; a 1-D one passes."""
    for bad in (torch.tensor(1), torch.tensor([[0, 1]]), torch.zeros(2, 1, dtype=torch.long)):
        with raises_clear(ValueError, "positions"):
            positional.check_positions(bad, 8)
        with raises_clear(ValueError, "positions"):
            positional.check_positions(bad)
        with raises_clear(ValueError, "positions"):
            positional.LearnedPositionalEmbedding(8, 4)(bad)
    assert_equal(positional.check_positions(torch.tensor([1]), 8).tolist(), [1], what="check_positions([1], 8)")


@given(max_len=sizes(20), beyond=sizes(30), at=sizes(4, 0))
def test_every_position_beyond_max_len_is_refused(positional, max_len, beyond, at):
    """Any position >= max_len is refused (ValueError naming max_len), not only max_len itself:
    max_len + k for k >= 1 among valid positions, in check_positions, both tables and RoPE's forward."""
    positions = torch.zeros(5, dtype=torch.long)
    positions[at] = max_len + beyond
    with raises_clear(ValueError, "max_len"):
        positional.check_positions(positions, max_len)
    for module in (positional.LearnedPositionalEmbedding(max_len, 2), positional.SinusoidalPositionalEncoding(2, max_len)):
        with raises_clear(ValueError, "max_len"):
            module(positions)
    with raises_clear(ValueError, "max_len"):
        positional.RotaryEmbedding(2, max_len)(torch.zeros(5, 2), positions)
