"""Spec of ``embedding``: ``TokenEmbedding(vocab_size, d_model)``."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from .support import assert_close, assert_equal, batch_shapes, randint, randn, raises_clear, seed_all, seeds, sizes


@pytest.fixture(scope="module")
def embedding(impl):
    return impl.component("embedding")


@given(lead=batch_shapes(0, 3), vocab=sizes(20), d=sizes(8), seed=seeds)
def test_lookup_equals_torch(embedding, lead, vocab, d, seed):
    """TokenEmbedding(ids) is row ids[...] of its weight, as torch.nn.functional.embedding."""
    seed_all(seed)
    emb = embedding.TokenEmbedding(vocab, d)
    ids = randint(0, vocab, lead, seed)
    got = emb(ids)
    assert_close(got, F.embedding(ids, emb.weight), what="TokenEmbedding(ids)")


@given(vocab=sizes(12), d=sizes(6), seed=seeds)
def test_gradient_reaches_the_rows_used(embedding, vocab, d, seed):
    """The weight's gradient is the sum of the upstream gradients of each id's occurrences."""
    seed_all(seed)
    emb = embedding.TokenEmbedding(vocab, d)
    ids = randint(0, vocab, (3, 5), seed)
    upstream = randn((3, 5, d), seed + 1)
    (emb(ids) * upstream).sum().backward()
    expected = torch.zeros(vocab, d).index_add_(0, ids.flatten(), upstream.reshape(-1, d))
    assert_close(emb.weight.grad, expected, what="weight.grad")


def test_initialisation(embedding):
    """The weight is a (vocab_size, d_model) float32 Parameter drawn from N(0, 0.02^2).

    False-failure rate: 64,000 draws; 0.001 is 12.6 standard errors of the mean (0.02 / 253) and
    17.9 of the std (0.02 / sqrt(128,000)): below 1e-35 for a correct draw.
    """
    seed_all(0)
    emb = embedding.TokenEmbedding(1000, 64)
    w = emb.weight.detach()
    assert_equal(tuple(w.shape), (1000, 64), what="weight shape")
    assert w.dtype == torch.float32, f"weight dtype: expected float32, got {w.dtype}"
    assert abs(w.std().item() - 0.02) < 0.001, f"weight std: expected 0.02, got {w.std().item():.5f}"
    assert abs(w.mean().item()) < 0.001, f"weight mean: expected 0, got {w.mean().item():.5f}"
    names = [n for n, _ in emb.named_parameters()]
    assert_equal(names, ["weight"], what="parameters")


@given(vocab=sizes(10), bad=st.sampled_from(["vocab", "vocab+3", "-1", "-vocab"]))
def test_ids_outside_the_vocabulary(embedding, vocab, bad):
    """An id outside [0, vocab_size) is a ValueError naming the id and vocab_size; negatives never wrap."""
    emb = embedding.TokenEmbedding(vocab, 4)
    value = {"vocab": vocab, "vocab+3": vocab + 3, "-1": -1, "-vocab": -vocab}[bad]
    ids = torch.tensor([[0, value, 0]])
    with raises_clear(ValueError, str(value), "vocab_size", str(vocab)):
        emb(ids)


def test_bad_arguments(embedding):
    """Non-positive sizes and non-integer ids raise clear errors."""
    with raises_clear(ValueError, "vocab_size"):
        embedding.TokenEmbedding(0, 4)
    with raises_clear(ValueError, "d_model"):
        embedding.TokenEmbedding(4, 0)
    with raises_clear(TypeError, "vocab_size"):
        embedding.TokenEmbedding(4.0, 4)
    emb = embedding.TokenEmbedding(4, 3)
    with raises_clear(TypeError, "ids"):
        emb(torch.zeros(2, 3))
    with raises_clear(TypeError, "ids"):
        emb(torch.zeros(2, 3, dtype=torch.bool))
    with raises_clear(TypeError, "ids"):
        emb([0, 1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_lookup_keeps_the_tables_dtype(embedding, dtype):
    """A table moved to float16 / bfloat16 / float64 returns rows of that dtype, exactly the table's rows."""
    seed_all(0)
    emb = embedding.TokenEmbedding(11, 6).to(dtype)
    ids = randint(0, 11, (3, 4), 1)
    got = emb(ids)
    assert got.dtype == dtype, f"lookup dtype: expected {dtype}, got {got.dtype}"
    assert_close(got, emb.weight.detach()[ids], what=f"rows of the {dtype} table", atol=0, rtol=0)


def test_loaded_table_equals_the_original(embedding):
    """A fresh TokenEmbedding that loads another's state_dict (key 'weight') looks up the same rows."""
    seed_all(0)
    original = embedding.TokenEmbedding(9, 5)
    seed_all(1)
    loaded = embedding.TokenEmbedding(9, 5)
    loaded.load_state_dict(original.state_dict())
    assert_equal(sorted(original.state_dict()), ["weight"], what="state_dict keys")
    ids = randint(0, 9, (4, 3), 2)
    assert_close(loaded(ids), original(ids), what="lookup of the loaded table vs the original", atol=0, rtol=0)


def test_compiled_ids_outside_the_vocabulary(embedding):
    """Compiled, TokenEmbedding still refuses ids outside [0, vocab_size) and looks up the ones inside.

    Traced by dynamo (the `eager` backend, one graph): an id of -1 or >= vocab_size is refused (an
    in-graph assert there is a RuntimeError; eager mode raises ValueError), ids in [0, vocab_size) give
    the table's rows."""
    seed_all(0)
    emb = embedding.TokenEmbedding(5, 3)
    emb(torch.arange(5))  # eager first: a stub reads as not started
    torch._dynamo.reset()
    lookup = torch.compile(lambda ids: emb(ids) * 1, backend="eager", fullgraph=True)
    ids = torch.tensor([[0, 4, 2], [1, 3, 0]])
    assert_close(lookup(ids), emb.weight.detach()[ids], what="compiled lookup of ids in [0, 5)", atol=0, rtol=0)
    for bad in ([0, 5], [-1, 0], [2, 9]):
        with pytest.raises((RuntimeError, ValueError)):
            lookup(torch.tensor(bad))
