"""Spec of ``corpus``: the story grammar, its exact document probabilities and its entropy floor.

The oracle for probabilities is a brute-force enumeration, written here, of every path of a small
acyclic grammar whose table this file defines (so nothing is computed through the implementation).
"""

import math
import random
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from .support import assert_close, assert_equal, raises_clear, seeds

#: Falsely failing the goodness-of-fit test on a correct implementation happens with probability 1e-6.
P_VALUE_THRESHOLD = 1e-6


@pytest.fixture(scope="module")
def corpus(impl):
    return impl.component("corpus")


def _table(weights):
    """A small acyclic grammar as ``{state: [(text, prob, next_state)]}``; ``weights`` are 8 numbers > 0.

    It has END transitions with probability < 1 in several states, texts of several lengths, and
    two paths that share a prefix.
    """
    w = [float(v) for v in weights]

    def norm(*xs):
        total = sum(xs)
        return [x / total for x in xs]

    a, b = norm(w[0], w[1])
    c, d, e = norm(w[2], w[3], w[4])
    f, g = norm(w[5], w[6])
    h, i = norm(w[7], 1.0)
    return {
        "start": [("Ann", a, "verb"), ("Bo", b, "verb")],
        "verb": [(" ran", c, "end"), (" sat", d, "end"), (" saw a dog", e, "dog")],
        "dog": [(".", f, "stop"), ("", g, None)],
        "end": [(".", h, "stop"), ("!", i, "stop")],
        "stop": [("", 0.75, None), (" Bye.", 0.25, "last")],
        "last": [("", 1.0, None)],
    }


def _enumerate(table, start="start"):
    """Every document of an acyclic table with its probability, by brute force over the paths."""
    out = Counter()

    def walk(state, text, p):
        for piece, prob, nxt in table[state]:
            if nxt is None:
                out[text] += p * prob
            else:
                walk(nxt, text + piece, p * prob)

    walk(start, "", 1.0)
    return dict(out)


def _grammar(corpus, table):
    transitions = {s: [corpus.Transition(*t) for t in ts] for s, ts in table.items()}
    return corpus.StoryGrammar(transitions, start="start")


weights = st.lists(st.floats(0.1, 10.0), min_size=8, max_size=8)


# --- probabilities ------------------------------------------------------------------------------

@given(w=weights)
def test_log_prob_is_the_path_probability(corpus, w):
    """log_prob(doc) is the natural log of the product of the path's probabilities, END included."""
    table = _table(w)
    grammar = _grammar(corpus, table)
    for doc, p in _enumerate(table).items():
        assert_close(torch.tensor(grammar.log_prob(doc), dtype=torch.float64),
                     torch.tensor(math.log(p), dtype=torch.float64), what=f"log_prob({doc!r})")


@given(w=weights)
def test_probabilities_sum_to_one(corpus, w):
    """Over every document a (small) grammar can produce, exp(log_prob) sums to 1."""
    table = _table(w)
    grammar = _grammar(corpus, table)
    total = math.fsum(math.exp(grammar.log_prob(doc)) for doc in _enumerate(table))
    assert abs(total - 1.0) < 1e-9, f"sum of P(doc) over all documents: expected 1, got {total!r}"


def test_small_grammar_is_a_distribution(corpus):
    """small_grammar(): its enumerated documents' probabilities sum to 1 and match log_prob."""
    grammar = corpus.small_grammar()
    table = {s: [(t.text, t.prob, t.next_state) for t in ts] for s, ts in grammar.transitions.items()}
    docs = _enumerate(table, grammar.start)
    assert len(docs) >= 5, f"small_grammar should produce several documents, got {len(docs)}"
    assert abs(math.fsum(docs.values()) - 1.0) < 1e-9, f"probabilities sum to {math.fsum(docs.values())}"
    for doc, p in docs.items():
        assert abs(grammar.log_prob(doc) - math.log(p)) < 1e-9, f"log_prob({doc!r}) != log({p})"


def test_impossible_text_has_log_prob_minus_inf(corpus):
    """A text the grammar cannot produce (a prefix, an extension, a stranger) has log_prob -inf."""
    grammar = _grammar(corpus, _table([1.0] * 8))
    for text in ["", "Ann", "Ann ran", "Ann ran.x", "Ann ran. Bye. Bye.", "Carl ran.", "Ann saw a dog!"]:
        got = grammar.log_prob(text)
        assert got == -math.inf, f"log_prob({text!r}): expected -inf, got {got}"


def test_derivation_is_the_path(corpus):
    """derivation(doc) is the path of transitions whose texts concatenate to doc, END last."""
    grammar = _grammar(corpus, _table([1.0] * 8))
    path = grammar.derivation("Bo saw a dog. Bye.")
    got = [(t.text, t.next_state) for t in path]
    expected = [("Bo", "verb"), (" saw a dog", "dog"), (".", "stop"), (" Bye.", "last"), ("", None)]
    assert_equal(got, expected, what="derivation")
    assert grammar.derivation("Bo saw a cat") is None, "derivation of an impossible text must be None"


# --- sampling -----------------------------------------------------------------------------------

def test_sampling_frequencies_match_probabilities(corpus):
    """Sampled document frequencies fit the enumerated probabilities (G-test, p >= 1e-6)."""
    table = _table([3.0, 1.0, 5.0, 2.0, 1.0, 1.0, 2.0, 4.0])
    grammar = _grammar(corpus, table)
    n = 20000
    counts = Counter(grammar.documents(n, seed=123))
    probs = _enumerate(table)
    strangers = set(counts) - set(probs)
    assert not strangers, f"sampled documents the grammar cannot produce: {sorted(strangers)[:3]}"
    g = 2.0 * sum(c * math.log(c / (n * probs[doc])) for doc, c in counts.items())
    df = len(probs) - 1
    p_value = float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                            torch.tensor(g / 2, dtype=torch.float64)))
    assert p_value >= P_VALUE_THRESHOLD, \
        f"G-test: G = {g:.1f} on {df} degrees of freedom, p = {p_value:.3g} < {P_VALUE_THRESHOLD}"


def _oracle_sample(table, rng, start="start"):
    """The contract's sampler: in each state draw u = rng.random() and take the first transition
    (in list order) whose cumulative probability exceeds u (the last one if rounding leaves none)."""
    state, pieces = start, []
    while state is not None:
        options = table[state]
        u, cumulative, chosen = rng.random(), 0.0, options[-1]
        for option in options:
            cumulative += option[1]
            if u < cumulative:
                chosen = option
                break
        pieces.append(chosen[0])
        state = chosen[2]
    return "".join(pieces)


@given(w=weights, seed=seeds, n=st.integers(0, 30))
def test_sampling_follows_the_documented_draws(corpus, w, seed, n):
    """documents(n, seed) are the contract's draws from ONE random.Random(seed), document after
    document (one rng.random() per state visited); sample_document(rng) draws from rng the same way."""
    table = _table(w)
    grammar = _grammar(corpus, table)
    rng = random.Random(seed)
    expected = [_oracle_sample(table, rng) for _ in range(n)]
    assert_equal(grammar.documents(n, seed), expected, what=f"documents({n}, {seed})")
    from_tuples = corpus.StoryGrammar(table, start="start")  # (text, prob, next_state) tuples are Transitions
    assert_equal(from_tuples.documents(n, seed), expected, what=f"documents({n}, {seed}) of a table of tuples")
    assert_equal(grammar.states, list(table), what="states")
    rng, mine = random.Random(seed), random.Random(seed)
    for i in range(3):
        assert_equal(grammar.sample_document(rng), _oracle_sample(table, mine), what=f"sample_document number {i}")
    assert_equal(rng.getstate(), mine.getstate(), what="the rng's state after three documents")


def test_documents_default_seed(corpus):
    """documents(n) without seed uses seed DEFAULT_SEED = 0: random.Random(0)."""
    assert_equal(corpus.DEFAULT_SEED, 0, what="DEFAULT_SEED")
    table = _table([2.0, 1.0, 1.0, 3.0, 1.0, 1.0, 1.0, 2.0])
    rng = random.Random(0)
    assert_equal(_grammar(corpus, table).documents(40), [_oracle_sample(table, rng) for _ in range(40)],
                 what="documents(40) without seed")


def test_builtin_corpus_defaults(corpus):
    """builtin_corpus() = story_grammar().documents(20000, 0), documents(1000, 1); the documented floor
    on the default validation documents is 0.2473 bits/char."""
    assert_equal((corpus.DEFAULT_TRAIN_DOCUMENTS, corpus.DEFAULT_VAL_DOCUMENTS), (20000, 1000),
                 what="(DEFAULT_TRAIN_DOCUMENTS, DEFAULT_VAL_DOCUMENTS)")
    train, val = corpus.builtin_corpus()
    grammar = corpus.story_grammar()
    assert_equal(val, grammar.documents(1000, 1), what="default validation documents")
    assert_equal(len(train), 20000, what="number of default training documents")
    assert_equal(train[:50] + train[-50:], (lambda d: d[:50] + d[-50:])(grammar.documents(20000, 0)),
                 what="default training documents (first and last 50)")
    floor = grammar.entropy_floor_bits_per_char(val)
    assert abs(floor - 0.2473) < 5e-5, f"floor on the default validation documents: documented 0.2473, got {floor:.5f}"


@given(seed=seeds)
@settings(max_examples=5)
def test_documents_are_deterministic(corpus, seed):
    """documents(n, seed) is a function of (n, seed); another seed gives other documents."""
    grammar = corpus.story_grammar()
    a = grammar.documents(20, seed)
    assert_equal(grammar.documents(20, seed), a, what="documents(20, seed) drawn twice")
    assert_equal(grammar.documents(5, seed), a[:5], what="documents(5, seed) vs documents(20, seed)[:5]")
    assert grammar.documents(20, seed + 1) != a, "seeds seed and seed + 1 gave the same documents"
    assert_equal(corpus.story_grammar().documents(3, seed), a[:3], what="a fresh grammar's documents")


def test_sample_document_uses_the_given_rng(corpus):
    """sample_document(rng) draws from rng only: the same random.Random state gives the same document."""
    grammar = corpus.story_grammar()
    docs = [grammar.sample_document(random.Random(7)) for _ in range(3)]
    assert docs[0] == docs[1] == docs[2], f"same rng state, different documents: {docs}"


@given(seed=seeds)
@settings(max_examples=5)
def test_story_documents_have_finite_log_prob(corpus, seed):
    """Every sampled story has a finite log_prob equal to the sum of its derivation's log-probabilities."""
    grammar = corpus.story_grammar()
    for doc in grammar.documents(30, seed):
        lp = grammar.log_prob(doc)
        assert math.isfinite(lp) and lp < 0, f"log_prob({doc[:60]!r}...) = {lp}"
        path = grammar.derivation(doc)
        assert_equal("".join(t.text for t in path), doc, what="concatenated derivation")
        assert abs(lp - math.fsum(math.log(t.prob) for t in path)) < 1e-9, "log_prob != sum of log(prob)"


def test_stories_read_like_english(corpus):
    """Stories start with a capital letter, end with a sentence mark, use few words and are short-ish."""
    docs = corpus.story_grammar().documents(300, 0)
    words = Counter(w.strip('.,!"') for d in docs for w in d.split())
    assert all(d[:1].isupper() and d[-1] in '.!"' for d in docs), "a story does not look like sentences"
    assert 20 <= len(words) <= 200, f"vocabulary of {len(words)} words: expected a few dozen"
    mean = sum(map(len, docs)) / len(docs)
    assert 50 <= mean <= 600, f"mean story length {mean:.0f} characters"


# --- the entropy floor --------------------------------------------------------------------------

@given(w=weights, seed=seeds)
@settings(max_examples=10)
def test_entropy_floor_formula(corpus, w, seed):
    """entropy_floor_bits_per_char(docs) == sum -log2 P(d) / sum (len(d) + 1)."""
    table = _table(w)
    grammar = _grammar(corpus, table)
    docs = grammar.documents(50, seed)
    probs = _enumerate(table)
    expected = -math.fsum(math.log2(probs[d]) for d in docs) / sum(len(d) + 1 for d in docs)
    got = grammar.entropy_floor_bits_per_char(docs)
    assert abs(got - expected) < 1e-9 * max(1.0, expected), f"entropy floor: expected {expected!r}, got {got!r}"
    assert_equal(corpus.stream_characters(docs), sum(len(d) + 1 for d in docs), what="stream_characters")


def test_entropy_floor_is_the_exact_entropy_rate(corpus):
    """On the small grammar, the floor over the enumerated documents weighted by P is H / E[len + 1]."""
    grammar = corpus.small_grammar()
    table = {s: [(t.text, t.prob, t.next_state) for t in ts] for s, ts in grammar.transitions.items()}
    probs = _enumerate(table, grammar.start)
    entropy = -math.fsum(p * math.log2(p) for p in probs.values())
    chars = math.fsum(p * (len(d) + 1) for d, p in probs.items())
    # A sample holding each document in proportion to its probability (x 1000, rounded) gives H / E[len+1].
    docs = [d for d, p in probs.items() for _ in range(round(1000 * p))]
    rounded = {d: round(1000 * p) for d, p in probs.items()}
    expected = -math.fsum(k * math.log2(probs[d]) for d, k in rounded.items()) / sum(
        k * (len(d) + 1) for d, k in rounded.items())
    got = grammar.entropy_floor_bits_per_char(docs)
    assert abs(got - expected) < 1e-9, f"floor: expected {expected!r}, got {got!r}"
    assert abs(got - entropy / chars) < 0.05 * entropy / chars, "floor far from H / E[len + 1]"


def test_builtin_corpus(corpus):
    """builtin_corpus: deterministic, validation independent of n_train, floor in a learnable range."""
    train, val = corpus.builtin_corpus(50, 200, seed=3)
    assert_equal((len(train), len(val)), (50, 200), what="(len(train), len(val))")
    again_train, again_val = corpus.builtin_corpus(10, 200, seed=3)
    assert_equal(again_train, train[:10], what="train documents with a smaller n_train")
    assert_equal(again_val, val, what="validation documents with another n_train")
    assert train[:20] != val[:20], "train and validation documents are the same draws"
    assert corpus.builtin_corpus(5, 5, seed=4) != corpus.builtin_corpus(5, 5, seed=3), "seed ignored"
    floor = corpus.story_grammar().entropy_floor_bits_per_char(val)
    assert 0.1 < floor < 1.5, f"entropy floor {floor:.3f} bits/char outside (0.1, 1.5)"


# --- errors -------------------------------------------------------------------------------------

def test_bad_grammars(corpus):
    """Invalid tables raise ValueError naming the state at fault."""
    T = corpus.Transition
    ok = {"s": [T("a", 0.5, "t"), T("b", 0.5, "t")], "t": [T("", 1.0, None)]}
    corpus.StoryGrammar(ok, "s")
    with raises_clear(ValueError, "'s'", "sum"):
        corpus.StoryGrammar({"s": [T("a", 0.5, "t"), T("b", 0.4, "t")], "t": [T("", 1.0, None)]}, "s")
    with raises_clear(ValueError, "'s'", "prefix"):
        corpus.StoryGrammar({"s": [T("a", 0.5, "t"), T("ab", 0.5, "t")], "t": [T("", 1.0, None)]}, "s")
    with raises_clear(ValueError, "'s'", "nowhere"):
        corpus.StoryGrammar({"s": [T("a", 1.0, "nowhere")]}, "s")
    with raises_clear(ValueError, "'t'"):
        corpus.StoryGrammar({"s": [T("a", 1.0, "t")], "t": [T("x", 1.0, None)]}, "s")
    with raises_clear(ValueError, "start"):
        corpus.StoryGrammar(ok, "u")
    with raises_clear(ValueError, "n"):
        corpus.StoryGrammar(ok, "s").documents(-1)


# --- the stored table ---------------------------------------------------------------------------

def test_stored_transitions_are_frozen(corpus):
    """A grammar stores frozen, hashable Transitions (tuples in the table become Transition(*t)):
    a checked transition cannot be changed afterwards, and equal transitions hash alike."""
    import dataclasses

    grammar = corpus.StoryGrammar({"s": [("a", 0.5, "t"), ("b", 0.5, "t")], "t": [("", 1.0, None)]}, "s")
    first = grammar.transitions["s"][0]
    assert isinstance(first, corpus.Transition), f"stored transition is a {type(first).__name__}, not a Transition"
    for field, value in (("prob", 2.0), ("text", ""), ("next_state", None)):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(first, field, value)
    assert_equal((first.text, first.prob, first.next_state), ("a", 0.5, "t"), what="the transition after the attempts")
    assert_equal(hash(first), hash(corpus.Transition("a", 0.5, "t")), what="hash of equal Transitions")
    assert_equal(len({first, corpus.Transition("a", 0.5, "t")}), 1, what="size of a set of two equal Transitions")


@pytest.mark.parametrize("transitions", [{}, [], [("s", [("", 1.0, None)])], ("s",)],
                         ids=["empty dict", "empty list", "list of pairs", "tuple holding the start"])
def test_transitions_must_be_a_non_empty_dict(corpus, transitions):
    """transitions that is not a dict, or an empty dict, is a ValueError naming transitions."""
    with raises_clear(ValueError, "transitions"):
        corpus.StoryGrammar(transitions, "s")
    corpus.StoryGrammar({"s": [("", 1.0, None)]}, "s")   # one state with only END: accepted


def test_a_state_may_have_many_transitions(corpus):
    """A state with 300 prefix-free transitions is valid: only distinct texts are compared for prefixes."""
    texts = [f"w{k:03d}" for k in range(300)]
    grammar = corpus.StoryGrammar({"s": [(t, 1 / 300, "t") for t in texts], "t": [("", 1.0, None)]}, "s")
    for t in (texts[0], texts[256], texts[299]):
        assert abs(grammar.log_prob(t) - math.log(1 / 300)) < 1e-12, f"log_prob({t!r}) != log(1/300)"


# --- sampling at the boundaries -----------------------------------------------------------------

class _ScriptedRandom(random.Random):
    """A random.Random whose random() returns the given values in turn (then 0.0)."""

    def __init__(self, values):
        super().__init__(0)
        self.values = list(values)

    def random(self):
        return self.values.pop(0) if self.values else 0.0


@st.composite
def _dyadic_probabilities(draw):
    """2 to 5 probabilities k / 16 (k >= 1) that sum to 1 exactly."""
    n = draw(st.integers(2, 5))
    cuts = sorted(draw(st.lists(st.integers(1, 15), min_size=n - 1, max_size=n - 1, unique=True)))
    edges = [0, *cuts, 16]
    return [(b - a) / 16 for a, b in zip(edges, edges[1:])]


@given(probs=_dyadic_probabilities())
def test_sampling_at_exact_cumulative_probabilities(corpus, probs):
    """u = rng.random() picks the FIRST transition whose cumulative probability EXCEEDS u (strictly):
    for every u = j / 16, including u equal to a cumulative probability, the pick is the oracle's."""
    letters = "abcde"[: len(probs)]
    table = {"s": [(x, p, "t") for x, p in zip(letters, probs)], "t": [("", 1.0, None)]}
    grammar = corpus.StoryGrammar(table, "s")
    for j in range(16):
        u = j / 16
        expected = _oracle_sample(table, _ScriptedRandom([u, 0.0]), start="s")
        got = grammar.sample_document(_ScriptedRandom([u, 0.0]))
        assert_equal(got, expected, what=f"document drawn with u = {u} for probabilities {probs}")


def test_sampling_falls_back_to_the_last_transition(corpus):
    """When the probabilities sum to a little under 1 (within PROB_TOLERANCE) and u is above their sum,
    the LAST transition of the state is taken."""
    table = {"s": [("a", 0.25, "t"), ("b", 0.25, "t"), ("c", 0.5 - 5e-10, "t")], "t": [("", 1.0, None)]}
    grammar = corpus.StoryGrammar(table, "s")
    u = 1.0 - 2.0 ** -53                                 # the largest value random.random() returns
    assert_equal(grammar.sample_document(_ScriptedRandom([u, u])), "c", what="document drawn with u = 1 - 2**-53")


# --- the entropy floor's argument ---------------------------------------------------------------

def test_entropy_floor_needs_at_least_one_document(corpus):
    """entropy_floor_bits_per_char([]) is a ValueError naming documents; one document is enough."""
    table = _table([1.0] * 8)
    grammar = _grammar(corpus, table)
    with raises_clear(ValueError, "documents"):
        grammar.entropy_floor_bits_per_char([])
    doc = "Bo saw a dog. Bye."
    expected = -math.log2(_enumerate(table)[doc]) / (len(doc) + 1)
    got = grammar.entropy_floor_bits_per_char([doc])
    assert abs(got - expected) < 1e-12, f"floor of one document: expected {expected!r}, got {got!r}"


# --- the story grammar and the built-in corpus ---------------------------------------------------

def test_story_possessive_agrees_with_pronoun(corpus):
    """In the story grammar, "She ... her mom" and "He ... his mom": the possessive after a pronoun
    matches it, in every text piece that has one (and there are such pieces for both pronouns)."""
    import re

    grammar = corpus.story_grammar()
    found = Counter()
    for state, options in grammar.transitions.items():
        for t in options:
            for pronoun, possessive in re.findall(r"\b(She|He) (?:\w+ )+?(her|his) mom", t.text):
                found[pronoun] += 1
                assert_equal(possessive, {"She": "her", "He": "his"}[pronoun],
                             what=f"possessive in state {state!r}'s text {t.text!r}")
    assert found["She"] > 0 and found["He"] > 0, f"pieces with a pronoun and 'mom': {dict(found)}"


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 7, 2**20 + 5])
def test_builtin_corpus_seeds(corpus, seed):
    """builtin_corpus(n_train, n_val, seed) is story_grammar().documents(n_train, 2 * seed) and
    .documents(n_val, 2 * seed + 1), for every seed."""
    grammar = corpus.story_grammar()
    train, val = corpus.builtin_corpus(3, 2, seed)
    assert_equal(train, grammar.documents(3, 2 * seed), what=f"training documents for seed {seed}")
    assert_equal(val, grammar.documents(2, 2 * seed + 1), what=f"validation documents for seed {seed}")


# --- errors at the boundaries ---------------------------------------------------------------------

def test_at_most_one_end_per_state(corpus):
    """A state with two END transitions is a ValueError naming it and END; one END is accepted."""
    T = corpus.Transition
    with raises_clear(ValueError, "'s'", "END"):
        corpus.StoryGrammar({"s": [T("", 0.5, None), T("", 0.5, None)]}, "s")
    with raises_clear(ValueError, "'s'", "END"):
        corpus.StoryGrammar({"s": [T("", 0.25, None), T("a", 0.5, "s"), T("", 0.25, None)]}, "s")
    corpus.StoryGrammar({"s": [T("", 0.5, None), T("a", 0.5, "s")]}, "s")


@pytest.mark.parametrize("probs", [(0.0, 1.0), (-0.5, 0.75, 0.75), (0.75, 0.75, -0.5), (1.0 + 5e-10,),
                                   (True,), (0.5, "0.5"), (0.5, None)],
                         ids=["zero", "negative first", "negative last", "just above 1", "bool", "str", "None"])
def test_probability_outside_the_range_is_refused(corpus, probs):
    """Each prob must be a real number (int or float, not bool) in (0, 1]: 0, a negative number,
    1 + 5e-10 (even when the state's sum is within PROB_TOLERANCE of 1) and non-numbers are a
    ValueError naming the state and prob."""
    letters = "abc"
    table = {"s": [(x, p, "t") for x, p in zip(letters, probs)], "t": [("", 1.0, None)]}
    with raises_clear(ValueError, "'s'", "prob"):
        corpus.StoryGrammar(table, "s")


@pytest.mark.parametrize("probs", [(5e-10, 1.0 - 5e-10), (1.0,), (1,), (0.5, 0.5 - 5e-10)],
                         ids=["tiny positive", "one", "the int 1", "sum 1 - 5e-10"])
def test_probability_inside_the_range_is_accepted(corpus, probs):
    """Probabilities in (0, 1] (ints included) whose sum is within PROB_TOLERANCE of 1 are accepted."""
    letters = "abc"
    table = {"s": [(x, p, "t") for x, p in zip(letters, probs)], "t": [("", 1.0, None)]}
    grammar = corpus.StoryGrammar(table, "s")
    assert abs(grammar.log_prob("a") - math.log(probs[0])) < 1e-12, "log_prob of the first transition"


def test_prefix_refused_in_either_order(corpus):
    """Texts of a state must be prefix-free whichever comes first: "ab" before "a" is refused too."""
    T = corpus.Transition
    with raises_clear(ValueError, "'s'", "prefix"):
        corpus.StoryGrammar({"s": [T("ab", 0.5, "t"), T("a", 0.5, "t")], "t": [T("", 1.0, None)]}, "s")
    with raises_clear(ValueError, "'s'", "prefix"):
        corpus.StoryGrammar({"s": [T("x", 0.25, "t"), T("ab", 0.25, "t"), T("b", 0.25, "t"), T("a", 0.25, "t")],
                             "t": [T("", 1.0, None)]}, "s")
