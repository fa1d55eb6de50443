"""Spec of ``tokenizer``: byte-level BPE ``Tokenizer`` (train, encode, decode, save/load).

Oracles written here: a brute-force trainer that recounts every pair at every step, and a
rank-based encoder. ``tiktoken`` (optional) is a second encoding oracle.
"""

import json
import random
from collections import Counter

import pytest
import regex
from hypothesis import example, given
from hypothesis import strategies as st

from .support import assert_equal, raises_clear

GPT2 = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"

#: Small alphabets give many repeated pairs, ties and long merges; the rest exercises UTF-8.
small_text = st.text(alphabet="aab b  c\n'l.é😀0", max_size=40)
#: Any code point assigned in Unicode except surrogates (regex engines disagree on unassigned ones).
unicode_text = st.text(alphabet=st.characters(exclude_categories=("Cs", "Cn")), max_size=60)
patterns = st.sampled_from(["gpt2", None])

#: A fixed corpus for the shared trained tokenizer: prose, code, CJK, emoji, combining marks.
CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's the dog's day; we'll see, they've said.\n" * 3,
    "def f(x):\n    return x * 2  # doubled\n\n\nfor i in range(10):\n    print(f(i))\n" * 3,
    "日本語のテキスト、中文文本。 한국어 텍스트 😀😀🎉 café naïve e\u0301 \t\t  end",
    "numbers 123 4567 89, 3.14159 and 2.71828; aaa aaaa aaaaa bbb ab ab abab",
]


@pytest.fixture(scope="module")
def tokenizer(impl):
    return impl.component("tokenizer")


@pytest.fixture(scope="module")
def trained(tokenizer):
    """Trained on CORPUS to vocab 256 + 150 merges + 2 specials (EOT and a longer one)."""
    return tokenizer.Tokenizer.train(CORPUS, 408, special_tokens=[EOT, "<|endoftext|><|pad|>"])


def _pattern(tokenizer, name):
    return tokenizer.GPT2_PATTERN if name == "gpt2" else None


# --- oracles ------------------------------------------------------------------------------------

def _merge_left_to_right(word, pair, new_id):
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def _pretokens(docs, specials, pattern):
    """Pre-tokens (as byte tuples) with counts: specials cut out (longest first), then the pattern."""
    words = Counter()
    cut = "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True))
    for doc in docs:
        for piece in (regex.split(cut, doc) if specials else [doc]):
            for pre in (regex.findall(pattern, piece) if pattern else [piece] if piece else []):
                words[tuple(pre.encode())] += 1
    return words


def brute_force_merges(docs, n_merges, specials=(), pattern=GPT2):
    """The definition: recount every pair (overlaps included) in every pre-token at every step,
    merge the most frequent; ties -> greatest (bytes a, bytes b), then greatest (a, b)."""
    words = _pretokens(docs, specials, pattern)
    vocab = {i: bytes([i]) for i in range(256)}
    merges = []
    while len(merges) < n_merges:
        counts = Counter()
        for w, f in words.items():
            for p in zip(w, w[1:]):
                counts[p] += f
        if not counts:
            break
        best = max(counts, key=lambda p: (counts[p], vocab[p[0]], vocab[p[1]], p))
        new_id = 256 + len(merges)
        merges.append(best)
        vocab[new_id] = vocab[best[0]] + vocab[best[1]]
        merged = Counter()
        for w, f in words.items():
            merged[_merge_left_to_right(w, best, new_id)] += f
        words = merged
    return merges


def rank_encode(merges, specials, pattern, text):
    """Rank-based BPE: in each pre-token merge the lowest-rank pair (everywhere) until none is a merge."""
    ranks = {tuple(p): n for n, p in enumerate(merges)}
    first_special = 256 + len(merges)
    special_ids = {s: first_special + i for i, s in enumerate(specials)}
    cut = "(" + "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")"
    ids = []
    for k, piece in enumerate(regex.split(cut, text) if specials else [text]):
        if k % 2:
            ids.append(special_ids[piece])
            continue
        for pre in (regex.findall(pattern, piece) if pattern else [piece] if piece else []):
            word = tuple(pre.encode())
            while len(word) > 1:
                best = min(zip(word, word[1:]), key=lambda p: ranks.get(p, len(ranks)))
                if best not in ranks:
                    break
                word = _merge_left_to_right(word, best, 256 + ranks[best])
            ids.extend(word)
    return ids


# --- training -----------------------------------------------------------------------------------

@given(docs=st.lists(small_text, min_size=1, max_size=4), n_merges=st.integers(0, 40), pattern=patterns)
def test_merges_equal_brute_force(tokenizer, docs, n_merges, pattern):
    """Training merges exactly the pairs of the recount-everything definition, in the same order."""
    pat = _pattern(tokenizer, pattern)
    tok = tokenizer.Tokenizer.train(docs, 256 + n_merges, pattern=pat)
    expected = brute_force_merges(docs, n_merges, pattern=GPT2 if pattern else None)
    assert_equal([tuple(m) for m in tok.merges], expected, what=f"merges (pattern={pattern})")


@given(docs=st.lists(small_text, min_size=1, max_size=4), n_merges=st.integers(1, 30),
       where=st.lists(st.integers(0, 40), max_size=4))
def test_special_tokens_cut_out_before_training(tokenizer, docs, n_merges, where):
    """Special tokens are cut out of the documents before counting: they never take part in merges."""
    specials = ["<|s|>", "<|s|><|s|>x"]
    docs = [d[:k] + "<|s|>" + d[k:] if i < len(where) and (k := where[i]) <= len(d) else d
            for i, d in enumerate(docs)]
    docs = docs + ["<|s|>" * 5 + "<|s|><|s|>x" * 3]
    tok = tokenizer.Tokenizer.train(docs, 256 + n_merges + 2, special_tokens=specials)
    expected = brute_force_merges(docs, n_merges, specials=specials)
    assert_equal([tuple(m) for m in tok.merges], expected, what="merges with special tokens in the text")


@given(docs=st.lists(small_text, min_size=2, max_size=5), n_merges=st.integers(1, 30), seed=st.integers(0, 99))
def test_merges_depend_only_on_the_multiset_of_documents(tokenizer, docs, n_merges, seed):
    """Shuffling the documents gives the same merges."""
    tok = tokenizer.Tokenizer.train(docs, 256 + n_merges)
    shuffled = list(docs)
    random.Random(seed).shuffle(shuffled)
    again = tokenizer.Tokenizer.train(shuffled, 256 + n_merges)
    assert_equal(again.merges, tok.merges, what="merges after shuffling the documents")


def test_training_inputs_str_path_iterable(tokenizer, tmp_path):
    """A str, a path to a UTF-8 file and an iterable of one document train the same tokenizer."""
    text = CORPUS[0] + CORPUS[2]
    from_str = tokenizer.Tokenizer.train(text, 300)
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    from_path = tokenizer.Tokenizer.train(path, 300)
    from_iter = tokenizer.Tokenizer.train(iter([text]), 300)
    assert_equal(from_path.merges, from_str.merges, what="merges trained from a file path")
    assert_equal(from_iter.merges, from_str.merges, what="merges trained from an iterator of documents")
    assert_equal([tuple(m) for m in from_str.merges], brute_force_merges([text], 44), what="merges")


def test_overlapping_pairs_count_and_merge_left_to_right(tokenizer):
    """'aaa' holds (a, a) twice; merging it gives [aa, a] (left to right, no overlap)."""
    tok = tokenizer.Tokenizer.train(["aaa", "bb", "bb", "bb"], 258, pattern=None)
    # (a,a) counts 2, (b,b) counts 3 -> (b,b) first; then (a,a) 2 beats nothing else
    assert_equal([tuple(m) for m in tok.merges], [(98, 98), (97, 97)], what="merges of ['aaa', 'bb' x3]")
    tok = tokenizer.Tokenizer.train(["aaa", "bb", "bb"], 257, pattern=None)
    # (a,a) counts 2 (overlapping), (b,b) counts 2: tie -> greatest bytes (b"b", b"b")
    assert_equal([tuple(m) for m in tok.merges], [(98, 98)], what="merges of ['aaa', 'bb' x2] (tie)")
    tok = tokenizer.Tokenizer.train(["aaa", "bb"], 257, pattern=None)
    assert_equal([tuple(m) for m in tok.merges], [(97, 97)], what="merges of ['aaa', 'bb']")
    assert_equal(tok.encode("aaa"), [256, 97], what="encode('aaa') with merge (a, a)")


def test_ties_go_to_the_greatest_pair_of_bytes(tokenizer):
    """Among pairs of equal count, the lexicographically greatest (bytes(a), bytes(b)) merges first."""
    tok = tokenizer.Tokenizer.train(["ab", "cd", "ba", "ac"], 260, pattern=None)
    assert_equal([tuple(m) for m in tok.merges], [(99, 100), (98, 97), (97, 99), (97, 98)],
                 what="merges of four pairs that each occur once")


def test_training_stops_early_without_error(tokenizer):
    """When no pair is left, training stops with fewer merges; specials still follow the merges."""
    tok = tokenizer.Tokenizer.train("ab ab", 1000, special_tokens=[EOT])
    assert_equal([tuple(m) for m in tok.merges], [(97, 98), (32, 256)], what="merges of 'ab ab'")
    assert_equal(tok.vocab_size, 259, what="vocab_size after stopping early")
    assert_equal(tok.special_tokens, {EOT: 258}, what="special_tokens after stopping early")


@given(seed=st.integers(0, 2**16), n_merges=st.integers(0, 60), n_specials=st.integers(0, 2))
def test_vocab_size_is_reached_when_the_corpus_allows(tokenizer, seed, n_merges, n_specials):
    """vocab_size counts bytes, merges and specials: len(vocab) == vocab_size on a rich corpus."""
    rng = random.Random(seed)
    text = "".join(rng.choice("abcdefghij kl") for _ in range(3000))
    specials = ["<s>", "</s>"][:n_specials]
    tok = tokenizer.Tokenizer.train(text, 256 + n_merges + n_specials, special_tokens=specials)
    assert_equal(len(tok.vocab), 256 + n_merges + n_specials, what="len(vocab)")
    assert_equal(tok.vocab_size, 256 + n_merges + n_specials, what="vocab_size")
    assert_equal(len(tok.merges), n_merges, what="number of merges")


def test_byte_level_vocabulary(tokenizer, trained):
    """Ids 0-255 are the bytes; merge n is id 256+n, the concatenation of its pair; specials follow."""
    tok = trained
    for b in range(256):
        assert_equal(tok.vocab[b], bytes([b]), what=f"vocab[{b}]")
    assert_equal(len(tok.merges), 150, what="number of merges")
    for n, (a, b) in enumerate(tok.merges):
        assert a < 256 + n and b < 256 + n, f"merge {n} = {(a, b)} uses an id that is not older than it"
        assert_equal(tok.vocab[256 + n], tok.vocab[a] + tok.vocab[b], what=f"vocab[{256 + n}]")
    assert_equal(tok.special_tokens, {EOT: 406, "<|endoftext|><|pad|>": 407}, what="special_tokens")
    assert_equal(tok.vocab[406], EOT.encode(), what="vocab of the first special token")
    assert_equal(len(tok.vocab), tok.vocab_size, what="len(vocab)")
    assert_equal(tok.vocab_size, 408, what="vocab_size")


def _large_corpus(n_chars):
    """About ``n_chars`` characters of few distinct pre-tokens (fast to count). Every 50,000 characters
    a marker: a run of k spaces and a newline (k = 1, 2, ...), each a pre-token of its own whose
    last merge exists nowhere else, so a counter that cut such a run in two would lose a merge; other
    newlines follow a letter ("x\\n", where no pre-token crosses)."""
    filler = "ab cd ef gh "
    parts, k = [], 0
    while sum(map(len, parts)) < n_chars:
        block = (filler * 4200)[:50_000]
        k += 1
        block = block[:25_000] + " " * k + "\n " + block[25_000:]  # the marker: the pre-token " " * k + "\n"
        if k % 2 == 0:
            block = block[:45_000] + "x\n" + block[45_000:]         # a newline after a letter
        parts.append(block)
    return "".join(parts)


@pytest.mark.parametrize("shape", ["one long document", "many documents with specials", "no newline",
                                   "starting with newlines", "pre-tokens across newlines", "shifted by one",
                                   "newlines only after spaces"])
def test_large_input_merges_equal_brute_force(tokenizer, shape):
    """On more than 1 MB of text (past any batching of the counting), training until no pair is left
    learns exactly the merges of the recount-everything definition: one long document (with newlines
    every 50,000 characters), many documents with specials, one without any newline (ending in two
    spaces), one that starts with newlines (and ends in a letter), the long document shifted by one
    character, one under a pattern whose pre-tokens hold newlines (a word with the whitespace
    after it), and one whose every newline follows a space (no newline there is a safe place to cut:
    a counter that looks for one must give up, not loop or count text twice)."""
    text = _large_corpus(1_100_000)
    specials, pattern = [], GPT2
    if shape == "one long document":
        docs = [text]
    elif shape == "many documents with specials":
        docs, specials = [text[i:i + 99_991] + EOT + "zz" for i in range(0, len(text), 99_991)], [EOT]
    elif shape == "shifted by one":
        docs = ["a" + text]
    elif shape == "pre-tokens across newlines":
        docs, pattern = [text], r"\S+\s*"
    elif shape == "newlines only after spaces":
        docs = [text.replace("x\n", "xq")]
    elif shape == "no newline":
        docs = [text.replace("\n", "q") + "  "]
    else:
        docs = ["\n\n" + text.replace("\n", "q") + "x"]
    tok = tokenizer.Tokenizer.train(docs, 256 + 1000 + len(specials), special_tokens=specials, pattern=pattern)
    expected = brute_force_merges(docs, 1000, specials=specials, pattern=pattern)
    assert len(expected) < 1000, "the corpus runs out of pairs before 1000 merges"
    assert_equal([tuple(m) for m in tok.merges], expected, what=f"merges on {sum(map(len, docs))} characters ({shape})")


def test_large_input_on_one_cpu(tokenizer, monkeypatch):
    """On a machine with one CPU (os.cpu_count() == 1), training on one document of 3.3 MB (three batches
    or more of any counting that batches by the megabyte, a piece cut more than once) learns exactly the
    merges of the definition, as with more CPUs."""
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    docs = [_large_corpus(3_300_000)]
    tok = tokenizer.Tokenizer.train(docs, 256 + 1000)
    assert_equal([tuple(m) for m in tok.merges], brute_force_merges(docs, 1000),
                 what=f"merges on {sum(map(len, docs))} characters with one CPU")


def test_defaults(tokenizer):
    """Tokenizer() has no merges, no specials and GPT-2's pattern; train() without special_tokens or
    pattern uses none and GPT-2's pattern; encode() without arguments disallows every special."""
    tok = tokenizer.Tokenizer()
    assert_equal((tok.merges, tok.special_tokens, tok.pattern), ([], {}, GPT2), what="Tokenizer() fields")
    assert_equal(tokenizer.GPT2_PATTERN, GPT2, what="GPT2_PATTERN")
    text = "hello  world\n\n  it's 123 <|endoftext|>"
    assert_equal(tok.encode(text), list(text.encode()), what="Tokenizer().encode: the UTF-8 bytes")
    docs = ["we'll  see 12 34\n\n  ok", "see  we'll\n\n"]
    trained = tokenizer.Tokenizer.train(docs, 256 + 10)
    assert_equal((trained.special_tokens, trained.pattern), ({}, GPT2), what="train() without specials / pattern")
    assert_equal([tuple(m) for m in trained.merges], brute_force_merges(docs, 10),
                 what="merges of train() with defaults")
    with_eot = tokenizer.Tokenizer([], special_tokens=[EOT])
    with raises_clear(ValueError, EOT):
        with_eot.encode(text)
    with raises_clear(ValueError, EOT):
        list(with_eot.encode_iterable([text]))


# --- encoding -----------------------------------------------------------------------------------

@given(text=unicode_text, specials=st.lists(st.sampled_from([EOT, "<|endoftext|><|pad|>"]), max_size=3),
       where=st.lists(st.integers(0, 60), max_size=3))
def test_round_trip(trained, text, specials, where):
    """decode(encode(s)) == s for any unicode text, with special tokens anywhere in it."""
    for s, k in zip(specials, where):
        text = text[:k] + s + text[k:]
    ids = trained.encode(text, allowed_special="all")
    assert all(isinstance(i, int) and 0 <= i < trained.vocab_size for i in ids), f"ids out of range: {ids}"
    assert_equal(trained.decode(ids), text, what="decode(encode(text))")
    assert_equal(trained.decode_bytes(ids), text.encode(), what="decode_bytes(encode(text))")


@given(text=st.text(alphabet="ab \n\t😀e\u0301日", max_size=30), pattern=patterns)
def test_round_trip_any_pattern(tokenizer, text, pattern):
    """The round trip holds with pre-tokenization off (pattern=None) and on."""
    tok = tokenizer.Tokenizer.train(CORPUS[2] + CORPUS[3], 300, pattern=_pattern(tokenizer, pattern))
    assert_equal(tok.decode(tok.encode(text)), text, what=f"decode(encode(text)) with pattern={pattern}")


@given(text=unicode_text | small_text, specials=st.lists(st.sampled_from([EOT, "<|endoftext|><|pad|>"]), max_size=2))
def test_encode_equals_rank_oracle(trained, text, specials):
    """Encoding applies merges by rank inside each pre-token, specials atomic (oracle in this file)."""
    got = trained.encode(text + "".join(specials) + text, allowed_special="all")
    expected = rank_encode(trained.merges, list(trained.special_tokens), GPT2, text + "".join(specials) + text)
    assert_equal(got, expected, what="encode(text)")


@given(merges=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), max_size=12),
       text=st.text(alphabet="abcd", max_size=25))
def test_encode_by_pair_rank_with_repeated_bytes(tokenizer, merges, text):
    """Given merges (which may produce the same bytes twice), encoding goes by pair rank, not bytes."""
    pairs = []
    for a, b in merges:  # ids among the 4 letters a..d (97..100) and the merges before
        ids = [97, 98, 99, 100] + [256 + n for n in range(len(pairs))]
        pair = (ids[a % len(ids)], ids[-1 - b % len(ids)])
        if pair not in pairs:
            pairs.append(pair)
    tok = tokenizer.Tokenizer(pairs, pattern=None)
    assert_equal(tok.encode(text), rank_encode(pairs, [], None, text), what=f"encode({text!r}) with merges {pairs}")


def test_repeated_bytes_keep_their_own_ids(tokenizer):
    """(a, bc) and (ab, c) both make b'abc' with different ids; encoding follows pair ranks."""
    a, b, c = 97, 98, 99
    tok = tokenizer.Tokenizer([(b, c), (a, b), (a, 256), (257, c)], pattern=None)
    assert_equal(tok.vocab[258], b"abc", what="vocab[258]")
    assert_equal(tok.vocab[259], b"abc", what="vocab[259]")
    assert_equal(tok.encode("abc"), [258], what="encode('abc'): (b, c) has rank 0, then (a, bc)")
    tok = tokenizer.Tokenizer([(a, b), (b, c), (a, 257), (256, c)], pattern=None)
    assert_equal(tok.encode("abc"), [259], what="encode('abc'): (a, b) has rank 0, then (ab, c)")
    assert_equal(tok.decode([258, 259]), "abcabc", what="decode([258, 259])")


@given(text=unicode_text)
@example(text="a<|endoftext|>b")
def test_encode_equals_tiktoken(trained, text):
    """Encoding equals tiktoken built from the same bytes ranks and pattern (special tokens' strings,
    should the text hold any, are ordinary text on both sides: disallowed_special=() / encode_ordinary)."""
    got = trained.encode(text, disallowed_special=())
    tiktoken = pytest.importorskip("tiktoken", reason="tiktoken (a test-only extra) is not installed")
    ranks = {trained.vocab[i]: i for i in range(256 + len(trained.merges))}
    assert len(ranks) == 256 + len(trained.merges), "no two merges of this corpus produce the same bytes"
    enc = _tiktoken_encoding(tiktoken, trained)
    assert_equal(got, enc.encode_ordinary(text), what=f"encode({text!r}) vs tiktoken")


_TIKTOKEN = {}


def _tiktoken_encoding(tiktoken, tok):
    key = id(tok)
    if key not in _TIKTOKEN:
        ranks = {tok.vocab[i]: i for i in range(256 + len(tok.merges))}
        _TIKTOKEN[key] = tiktoken.Encoding("bare-lm-spec", pat_str=GPT2, mergeable_ranks=ranks, special_tokens={})
    return _TIKTOKEN[key]


def test_encode_real_text_equals_tiktoken(trained):
    """On the training corpus itself (long pre-tokens, code, CJK) encoding equals tiktoken."""
    text = "".join(CORPUS)
    got = trained.encode(text)
    tiktoken = pytest.importorskip("tiktoken", reason="tiktoken (a test-only extra) is not installed")
    assert_equal(got, _tiktoken_encoding(tiktoken, trained).encode_ordinary(text), what="encode(corpus) vs tiktoken")
    assert len(got) < len(text.encode()) * 0.6, "150 merges should compress the training text"


def test_special_tokens_are_atomic(trained):
    """A special token encodes to its own id, never split, wherever it appears; text around it round-trips."""
    eot = trained.special_tokens[EOT]
    assert_equal(trained.encode(EOT, allowed_special="all"), [eot], what=f"encode({EOT!r})")
    for left, right in [("x", "y"), ("dog.", " The"), ("", "\n"), ("😀", "<|"), ("<|endof", "")]:
        ids = trained.encode(left + EOT + right, allowed_special="all")
        assert_equal(ids, trained.encode(left) + [eot] + trained.encode(right),
                     what=f"encode({left + EOT + right!r})")
    plain = trained.encode("<|endoftext")
    assert eot not in plain and plain, "a partial special token is ordinary text"


def test_longest_special_token_wins(tokenizer):
    """Where registered special tokens overlap, the longest match wins (whatever the order given)."""
    tok = tokenizer.Tokenizer([], special_tokens=["<a>", "<a><b>", "<b>"])
    assert_equal(tok.special_tokens, {"<a>": 256, "<a><b>": 257, "<b>": 258}, what="special_tokens")
    assert_equal(tok.encode("<a><b>", allowed_special="all"), [257], what="encode('<a><b>')")
    assert_equal(tok.encode("<a><a><b><b>", allowed_special="all"), [256, 257, 258], what="encode('<a><a><b><b>')")
    assert_equal(tok.encode("x<a>y", allowed_special="all"), [120, 256, 121], what="encode('x<a>y')")


# --- special tokens in raw text (tiktoken's convention) ------------------------------------------

PAD2 = "<|endoftext|><|pad|>"


def _with_specials(text, specials, where):
    for s, k in zip(specials, where):
        text = text[:k] + s + text[k:]
    return text


def _chunked(text, cuts):
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    return [text[i:j] for i, j in zip(bounds, bounds[1:])]


def rank_encode_allowed(tok, allowed, text):
    """The rule, written out: only the ALLOWED specials are atomic (with their registered ids,
    longest first); every other character, a non-allowed special's string included, is ordinary text."""
    ids = []
    cut = "(" + "|".join(regex.escape(s) for s in sorted(allowed, key=len, reverse=True)) + ")"
    for k, piece in enumerate(regex.split(cut, text) if allowed else [text]):
        ids += [tok.special_tokens[piece]] if k % 2 else rank_encode(tok.merges, [], GPT2, piece)
    return ids


@given(text=small_text | unicode_text, specials=st.lists(st.sampled_from([EOT, PAD2]), min_size=1, max_size=3),
       where=st.lists(st.integers(0, 60), min_size=3, max_size=3), cuts=st.lists(st.integers(0, 100), max_size=5))
def test_special_in_text_raises_by_default(trained, text, specials, where, cuts):
    """By default (allowed_special=(), disallowed_special="all") a special token's string in the text is
    a ValueError naming the token and both arguments, from encode and from encode_iterable."""
    text = _with_specials(text, specials, where)
    found = regex.search("|".join(regex.escape(s) for s in (PAD2, EOT)), text).group()
    with raises_clear(ValueError, found, "allowed_special", "disallowed_special"):
        trained.encode(text)
    with raises_clear(ValueError, found, "allowed_special", "disallowed_special"):
        list(trained.encode_iterable(_chunked(text, cuts)))
    broken = text.replace(EOT, "<|endo ftext|>")  # no whole special left: ordinary text, no error
    assert_equal(trained.encode(broken), rank_encode(trained.merges, [], GPT2, broken),
                 what=f"encode({broken!r}) (no whole special token in it)")


@given(text=small_text | unicode_text, specials=st.lists(st.sampled_from([EOT, PAD2]), max_size=3),
       where=st.lists(st.integers(0, 60), min_size=3, max_size=3), cuts=st.lists(st.integers(0, 100), max_size=5))
def test_disallowed_special_empty_encodes_specials_as_text(trained, text, specials, where, cuts):
    """disallowed_special=() (nothing allowed): a special's string is encoded as ordinary text, exactly
    as if no special token were registered; decode gives the text back; encode_iterable agrees."""
    text = _with_specials(text, specials, where)
    ids = trained.encode(text, disallowed_special=())
    assert_equal(ids, rank_encode(trained.merges, [], GPT2, text), what="encode(text, disallowed_special=())")
    assert not set(ids) & set(trained.special_tokens.values()), f"special ids in ordinary text: {ids}"
    assert_equal(trained.decode(ids), text, what="decode(encode(text, disallowed_special=()))")
    assert_equal(list(trained.encode_iterable(_chunked(text, cuts), disallowed_special=())), ids,
                 what="encode_iterable(chunks, disallowed_special=())")


@given(text=small_text | unicode_text, specials=st.lists(st.sampled_from([EOT, PAD2]), max_size=3),
       where=st.lists(st.integers(0, 60), min_size=3, max_size=3), cuts=st.lists(st.integers(0, 100), max_size=5),
       allowed=st.sampled_from(["all", (EOT, PAD2), (EOT,), (PAD2,), ()]))
def test_allowed_specials_become_their_ids(trained, text, specials, where, cuts, allowed):
    """The allowed specials become their ids (longest first); with disallowed_special=() the others are
    ordinary text; allowed_special="all" allows every special; encode_iterable agrees."""
    text = _with_specials(text, specials, where)
    expected = rank_encode_allowed(trained, list(trained.special_tokens) if allowed == "all" else allowed, text)
    got = trained.encode(text, allowed_special=allowed, disallowed_special=())
    assert_equal(got, expected, what=f"encode(text, allowed_special={allowed!r}, disallowed_special=())")
    assert_equal(list(trained.encode_iterable(_chunked(text, cuts), allowed_special=allowed, disallowed_special=())),
                 expected, what=f"encode_iterable(chunks, allowed_special={allowed!r}, disallowed_special=())")
    assert_equal(trained.decode(got), text, what="decode(encode(text, ...))")
    if allowed in ("all", (EOT, PAD2)):  # nothing left to disallow: the default disallowed_special agrees
        assert_equal(trained.encode(text, allowed_special=allowed), expected,
                     what=f"encode(text, allowed_special={allowed!r})")


def test_overlapping_allowed_and_disallowed_specials(trained):
    """Specials are found leftmost, then longest, among the allowed and disallowed ones together: an
    allowed longer special that holds a disallowed one is fine; the disallowed one alone raises."""
    eot, pad2 = trained.special_tokens[EOT], trained.special_tokens[PAD2]
    assert_equal(trained.encode("x" + PAD2 + "y", allowed_special={PAD2}),
                 trained.encode("x", allowed_special={PAD2}) + [pad2] + trained.encode("y"),
                 what=f"encode('x{PAD2}y', allowed_special={{{PAD2!r}}})")
    with raises_clear(ValueError, repr(EOT)):
        trained.encode("x" + EOT + "y", allowed_special={PAD2})
    assert_equal(trained.encode(PAD2, allowed_special={EOT}, disallowed_special=()),
                 [eot] + rank_encode(trained.merges, [], GPT2, "<|pad|>"),
                 what=f"encode({PAD2!r}, allowed_special={{EOT}}, disallowed_special=())")
    with raises_clear(ValueError, repr(PAD2)):
        trained.encode("a" + PAD2, allowed_special={EOT})


def test_bad_special_arguments(trained):
    """allowed_special / disallowed_special: a bare str other than "all" is a TypeError, an unknown special
    or one both allowed and disallowed a ValueError naming the argument."""
    with raises_clear(TypeError, "allowed_special"):
        trained.encode("abc", allowed_special=EOT)
    with raises_clear(TypeError, "disallowed_special"):
        trained.encode("abc", disallowed_special=EOT)
    with raises_clear(ValueError, "allowed_special", "<|nope|>"):
        trained.encode("abc", allowed_special={"<|nope|>"})
    with raises_clear(ValueError, "disallowed_special", "<|nope|>"):
        trained.encode("abc", disallowed_special=["<|nope|>"])
    with raises_clear(ValueError, "allowed_special", "disallowed_special"):
        trained.encode("abc", allowed_special={EOT}, disallowed_special={EOT})
    with raises_clear(ValueError, "allowed_special", "<|nope|>"):
        list(trained.encode_iterable(["abc"], allowed_special={"<|nope|>"}))


def test_special_ids_follow_the_given_order(tokenizer, tmp_path):
    """The i-th special token AS GIVEN (not sorted) gets id 256 + len(merges) + i, kept by save/load."""
    specials = ["<|z|>", EOT, "<a>", "<|b|>"]
    tok = tokenizer.Tokenizer([(97, 98)], special_tokens=specials)
    assert_equal(tok.special_tokens, {"<|z|>": 257, EOT: 258, "<a>": 259, "<|b|>": 260}, what="special_tokens")
    assert_equal(tok.encode("<a>ab<|z|>", allowed_special="all"), [259, 256, 257], what="encode('<a>ab<|z|>')")
    trained = tokenizer.Tokenizer.train("ab ab ab", 256 + 1 + 4, special_tokens=specials)
    assert_equal(trained.special_tokens, tok.special_tokens, what="special_tokens after train")
    assert_equal(tok.to_dict()["special_tokens"], specials, what="to_dict()['special_tokens']")
    tok.save(tmp_path / "tok.json")
    assert_equal(tokenizer.Tokenizer.load(tmp_path / "tok.json").special_tokens, tok.special_tokens,
                 what="special_tokens after save/load")


@given(text=small_text | unicode_text, specials=st.lists(st.sampled_from([EOT, "<|endoftext|><|pad|>", "<| a b |>"]),
                                                         max_size=3),
       where=st.lists(st.integers(0, 60), max_size=3), cuts=st.lists(st.integers(0, 100), max_size=8))
def test_encode_iterable_equals_encode(tokenizer, text, specials, where, cuts):
    """encode_iterable over chunks cut anywhere gives the ids of encode on the joined text."""
    tok = tokenizer.Tokenizer.train(CORPUS, 350, special_tokens=[EOT, "<|endoftext|><|pad|>", "<| a b |>"])
    for s, k in zip(specials, where):
        text = text[:k] + s + text[k:]
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    chunks = [text[i:j] for i, j in zip(bounds, bounds[1:])]
    got = list(tok.encode_iterable(iter(chunks), allowed_special="all"))
    assert_equal(got, tok.encode(text, allowed_special="all"), what=f"encode_iterable({chunks!r})")


#: Whitespace-heavy text: runs of spaces, tabs and newlines between short words and punctuation.
spacey_text = st.lists(st.sampled_from(["a", "b", "ab", ".", " ", "  ", "   ", "\n", "\n\n", "\n\n\n",
                                        "\t\t", " \n", "\n  "]), max_size=14).map("".join)
#: A corpus whose merges join whitespace ("  ", "\n\n", " \n", "\t\t" ...), so that a pre-token
#: boundary moved inside a whitespace run changes the ids (bytes alone would hide it).
SPACEY_CORPUS = ["a  b   c\n\n d \n\n\n e\t\t f  \n  g\n" * 20, "x\n\n\ny \t z.  .\n" * 20]


@pytest.fixture(scope="module")
def spacey(tokenizer):
    """Trained on SPACEY_CORPUS to 40 merges (many of them whitespace runs), one special token."""
    return tokenizer.Tokenizer.train(SPACEY_CORPUS, 256 + 40 + 1, special_tokens=[EOT])


@given(text=spacey_text, cuts=st.lists(st.integers(0, 40), max_size=6))
@example(text="x\n\n\nb c", cuts=[])
@example(text="a\n\t\taa\n  \n", cuts=[])
@example(text="\n\t\ta\n \n\nab.\n  ab   ", cuts=[])
def test_encode_iterable_equals_encode_inside_whitespace_runs(spacey, text, cuts):
    """encode_iterable(chunks) == encode("".join(chunks)) for any chunking, also with a chunk boundary
    inside a run of whitespace (a file read line by line) and merges that join whitespace."""
    assert any(spacey.vocab[256 + n].isspace() and len(spacey.vocab[256 + n]) > 1 for n in range(len(spacey.merges))), \
        "the whitespace corpus must give merges of whitespace"
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    chunks = [text[i:j] for i, j in zip(bounds, bounds[1:])]
    got = list(spacey.encode_iterable(chunks))
    assert_equal(got, spacey.encode(text), what=f"encode_iterable({chunks!r})")
    lines = text.splitlines(keepends=True)
    assert_equal(list(spacey.encode_iterable(lines)), spacey.encode(text), what=f"encode_iterable({lines!r}) (lines)")


@pytest.mark.parametrize("chunks", [
    ["we'l", "l go"], ["x'", "ll"], ["a  ", "  b"], ["ab <|endof", "text|> c"], ["<| a", " b |>z"],
    ["x <| a b", " |>"], ["<|endoftext|>", "<|pad|>"], ["q", "", "<|endoftext|><|pa", "d|", ">"],
    ["1", "23", "45 6", "7"], ["héllo", " wörld\n\n", "\n  ", "  x"],
])
def test_encode_iterable_chunk_boundaries(tokenizer, chunks):
    """encode_iterable equals encode on the joined text for chunks cut inside words and specials."""
    for specials in ([EOT, "<|endoftext|><|pad|>", "<| a b |>"], []):
        tok = tokenizer.Tokenizer.train(CORPUS, 350, special_tokens=specials)
        got = list(tok.encode_iterable(chunks, allowed_special="all"))
        assert_equal(got, tok.encode("".join(chunks), allowed_special="all"),
                     what=f"encode_iterable({chunks!r}), specials {specials}")


def test_encode_iterable_is_lazy(trained):
    """encode_iterable yields ids before the input is exhausted (bounded memory on large files)."""
    def chunks():
        for _ in range(50):
            yield "The quick brown fox jumps over the lazy dog. "
        raise RuntimeError("read past the first 50 chunks")
    it = trained.encode_iterable(chunks())
    first = [next(it) for _ in range(20)]
    assert_equal(first, trained.encode("The quick brown fox jumps over the lazy dog. " * 50)[:20],
                 what="first ids of encode_iterable")


# --- decoding -----------------------------------------------------------------------------------

def test_decode_replaces_invalid_utf8(trained):
    """decode replaces invalid UTF-8 with U+FFFD; decode_bytes gives the raw bytes."""
    e_acute = list("é".encode())  # two bytes
    assert_equal(trained.decode([0xFF]), "\ufffd", what="decode([0xff])")
    assert_equal(trained.decode(e_acute[:1] + [120]), "\ufffdx", what="decode(first byte of 'é' + 'x')")
    assert_equal(trained.decode(e_acute), "é", what="decode(bytes of 'é')")
    assert_equal(trained.decode_bytes([0xFF, 120]), b"\xffx", what="decode_bytes([0xff, 120])")
    assert_equal(trained.decode([]), "", what="decode([])")
    import torch
    assert_equal(trained.decode(torch.tensor(e_acute)), "é", what="decode(a 1-D tensor of ids)")


def test_decode_unknown_id_raises(trained):
    """An id outside the vocabulary raises ValueError naming it."""
    with raises_clear(ValueError, "408"):
        trained.decode([104, 408])
    with raises_clear(ValueError, "-1"):
        trained.decode_bytes([-1])


# --- save / load --------------------------------------------------------------------------------

@given(text=unicode_text | small_text)
def test_save_load_round_trip(tokenizer, trained, tmp_path_factory, text):
    """save then load gives the same merges, specials, pattern and encodings; the file is JSON."""
    path = tmp_path_factory.mktemp("tok") / "tok.json"
    trained.save(path)
    loaded = tokenizer.Tokenizer.load(path)
    json.loads(path.read_text(encoding="utf-8"))
    assert_equal(loaded.merges, trained.merges, what="merges after load")
    assert_equal(loaded.special_tokens, trained.special_tokens, what="special_tokens after load")
    assert_equal(loaded.encode(text + EOT, allowed_special="all"), trained.encode(text + EOT, allowed_special="all"),
                 what="encode after load")


@pytest.mark.parametrize("pattern", ["gpt2", None, r"\w+|\W"])
def test_to_dict_from_dict_round_trip(tokenizer, pattern):
    """to_dict is JSON-safe and from_dict(to_dict()) is the same tokenizer (pattern included)."""
    pat = tokenizer.GPT2_PATTERN if pattern == "gpt2" else pattern
    tok = tokenizer.Tokenizer.train(CORPUS, 320, special_tokens=[EOT], pattern=pat)
    d = json.loads(json.dumps(tok.to_dict()))
    back = tokenizer.Tokenizer.from_dict(d)
    assert_equal(back.pattern, pat, what="pattern after from_dict")
    text = "".join(CORPUS) + EOT + "abc"
    assert_equal(back.encode(text, allowed_special="all"), tok.encode(text, allowed_special="all"),
                 what="encode after from_dict(to_dict())")
    assert_equal(back.vocab, tok.vocab, what="vocab after from_dict(to_dict())")


# --- errors -------------------------------------------------------------------------------------

def test_vocab_size_too_small_raises(tokenizer):
    """vocab_size < 256 + len(special_tokens) raises ValueError naming vocab_size."""
    with raises_clear(ValueError, "vocab_size"):
        tokenizer.Tokenizer.train("hello", 256, special_tokens=[EOT])
    with raises_clear(ValueError, "vocab_size"):
        tokenizer.Tokenizer.train("hello", 100)
    assert_equal(tokenizer.Tokenizer.train("hello", 257, special_tokens=[EOT]).merges, [],
                 what="merges with vocab_size = 256 + 1 special")


def test_lone_surrogate_raises(trained, tokenizer):
    """A str that cannot be UTF-8 encoded (lone surrogate) raises a clear ValueError naming the argument
    (text, data, special_tokens) and the surrogate."""
    with raises_clear(ValueError, "surrogate", "text"):
        trained.encode("ab\ud800cd")
    with raises_clear(ValueError, "surrogate", "data"):
        tokenizer.Tokenizer.train(["ok", "x\udfffy"], 300)
    with raises_clear(ValueError, "surrogate", "special_tokens"):
        tokenizer.Tokenizer([], special_tokens=["<\udc00>"])


def _saved(trained, tmp_path):
    path = tmp_path / "tok.json"
    trained.save(path)
    return path, json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("edit, words", [
    (lambda d: d.update(merges=d["merges"] + [[0, 99999]]), ["merges", "99999"]),
    (lambda d: d.update(merges=[[300, 97]] + d["merges"]), ["merges", "300"]),
    (lambda d: d.update(merges="abc"), ["merges"]),
    (lambda d: d.update(merges=[[97, "b"]]), ["merges"]),
    (lambda d: d.update(merges=[[97, 98, 99]]), ["merges"]),
    (lambda d: d.update(special_tokens=5), ["special_tokens"]),
    (lambda d: d.update(special_tokens=[EOT, EOT]), ["special_tokens"]),
    (lambda d: d.update(special_tokens=[""]), ["special_tokens"]),
    (lambda d: d.update(pattern=12), ["pattern"]),
    (lambda d: d.update(pattern="(unclosed"), ["pattern"]),
    (lambda d: d.pop("merges"), ["merges"]),
])
def test_bad_tokenizer_data_raises(tokenizer, trained, tmp_path, edit, words):
    """Hand-edited or wrong-typed tokenizer data raises ValueError saying what is wrong."""
    d = trained.to_dict()
    edit(d)
    with raises_clear(ValueError, *words):
        tokenizer.Tokenizer.from_dict(d)
    path = tmp_path / "tok.json"
    path.write_text(json.dumps(d), encoding="utf-8")
    with raises_clear(ValueError, *words):
        tokenizer.Tokenizer.load(path)


@pytest.mark.parametrize("edit", ["change one", "drop one", "add one", "not a list"])
def test_tampered_tokens_raise_on_load(tokenizer, trained, tmp_path, edit):
    """A saved file whose readable "tokens" disagree with its merges is refused on load with a ValueError
    naming the file and "tokens"; a file without "tokens" loads the same tokenizer."""
    path, d = _saved(trained, tmp_path)
    assert_equal(len(d["tokens"]), len(trained.merges), what="number of tokens in the saved file")
    if edit == "change one":
        d["tokens"][3] = d["tokens"][3] + "x"
    elif edit == "drop one":
        d["tokens"].pop()
    elif edit == "add one":
        d["tokens"].append("zz")
    else:
        d["tokens"] = "abc"
    path.write_text(json.dumps(d, ensure_ascii=False), encoding="utf-8")
    with raises_clear(ValueError, "tok.json", "tokens"):
        tokenizer.Tokenizer.load(path)
    del d["tokens"]
    path.write_text(json.dumps(d), encoding="utf-8")
    loaded = tokenizer.Tokenizer.load(path)
    assert_equal((loaded.merges, loaded.special_tokens), (trained.merges, trained.special_tokens),
                 what="merges and specials of a file without tokens")


def test_corrupt_file_raises(tokenizer, trained, tmp_path):
    """A truncated or non-JSON tokenizer file raises ValueError naming the file."""
    path, _ = _saved(trained, tmp_path)
    text = path.read_text(encoding="utf-8")
    path.write_text(text[: len(text) // 2], encoding="utf-8")
    with raises_clear(ValueError, "tok.json"):
        tokenizer.Tokenizer.load(path)
    path.write_text("[1, 2, 3]", encoding="utf-8")
    with raises_clear(ValueError, "tok.json"):
        tokenizer.Tokenizer.load(path)


# --- the file format's constants, keyword-only arguments ------------------------------------------

def test_format_and_version_constants(tokenizer, trained):
    """FORMAT is "bare-lm-tokenizer" and VERSION is 1; to_dict() carries exactly these."""
    assert_equal((tokenizer.FORMAT, tokenizer.VERSION), ("bare-lm-tokenizer", 1), what="(FORMAT, VERSION)")
    d = trained.to_dict()
    assert_equal((d["format"], d["version"]), ("bare-lm-tokenizer", 1), what="to_dict()['format'], ['version']")


@pytest.mark.parametrize("field, value", [("version", 0), ("version", 2), ("version", "1"), ("version", None),
                                          ("format", "zzz"), ("format", "a"), ("format", None)])
def test_from_dict_refuses_another_format_or_version(tokenizer, trained, field, value):
    """Tokenizer data of another format or version (below or above 1, or not the int 1) is refused naming the field."""
    d = trained.to_dict()
    if value is None:
        del d[field]
    else:
        d[field] = value
    with raises_clear(ValueError, field):
        tokenizer.Tokenizer.from_dict(d)


def test_encode_keywords_are_keyword_only(trained):
    """allowed_special and disallowed_special are keyword-only: passing them by position is a TypeError."""
    with pytest.raises(TypeError):
        trained.encode("abc", "all")
    with pytest.raises(TypeError):
        list(trained.encode_iterable(["abc"], "all"))


def test_all_compares_by_value(trained):
    """"all" is recognised by value (a str built at run time works), for both arguments; any other bare str,
    however it sorts against "all", is a TypeError naming the argument."""
    built = "".join(["a", "ll"])
    text = "x" + EOT + "y"
    assert_equal(trained.encode(text, allowed_special=built), trained.encode(text, allowed_special="all"),
                 what="encode(..., allowed_special=<'all' built at run time>)")
    with raises_clear(ValueError, EOT):
        trained.encode(text, disallowed_special=built)
    for word in ("zzz", "allx", "b"):
        with raises_clear(TypeError, "allowed_special"):
            trained.encode("abc", allowed_special=word)
        with raises_clear(TypeError, "disallowed_special"):
            trained.encode("abc", disallowed_special=word)


def test_special_arguments_of_the_wrong_type(trained):
    """allowed_special / disallowed_special that are not collections (an int, a float) are a TypeError naming them."""
    with raises_clear(TypeError, "allowed_special"):
        trained.encode("abc", allowed_special=5)
    with raises_clear(TypeError, "disallowed_special"):
        trained.encode("abc", disallowed_special=3.5)


# --- sizes past 256: many merges, many specials, long pre-tokens ----------------------------------

def _many_merges():
    """400 distinct merges: 200 pairs of letters, then 200 that each extend an earlier merge by 'a'."""
    letters = [ord(c) for c in "abcdefghijklmnopqrst"]
    merges = [(a, b) for a in letters for b in letters[:10]]           # 200 byte pairs
    merges += [(n + 56, 97) for n in range(200, 400)]                  # ids 256..455, each < 256 + n
    return merges


def test_more_than_256_merges_and_specials(tokenizer, tmp_path):
    """With 400 merges and 300 specials (ids past 512): vocab[256 + n] is merge n's bytes, the specials follow
    at 656 + i, vocab_size is 956, encode equals the rank oracle, and save/load and to_dict/from_dict keep it all."""
    merges = _many_merges()
    specials = [f"<|s{i}|>" for i in range(300)]
    tok = tokenizer.Tokenizer(merges, special_tokens=specials)
    vocab = {b: bytes([b]) for b in range(256)}
    for n, (a, b) in enumerate(merges):
        vocab[256 + n] = vocab[a] + vocab[b]
    for i, s in enumerate(specials):
        vocab[656 + i] = s.encode()
    assert_equal(tok.vocab, vocab, what="vocab of 400 merges and 300 specials")
    assert_equal(tok.special_tokens, {s: 656 + i for i, s in enumerate(specials)}, what="special_tokens")
    assert_equal(tok.vocab_size, 956, what="vocab_size")
    rng = random.Random(0)
    text = " ".join("".join(rng.choice("abcdefghijklmnopqrst") for _ in range(rng.randint(1, 9))) + "a" * rng.randint(0, 6)
                    for _ in range(300)) + "<|s299|>" + "<|s7|>ab"
    expected = rank_encode(merges, specials, GPT2, text)
    assert_equal(tok.encode(text, allowed_special="all"), expected, what="encode with 400 merges (rank oracle)")
    tok.save(tmp_path / "tok.json")
    for how, back in (("load(save())", lambda: tokenizer.Tokenizer.load(tmp_path / "tok.json")),
                      ("from_dict(to_dict())", lambda: tokenizer.Tokenizer.from_dict(json.loads(json.dumps(tok.to_dict()))))):
        other = back()
        assert_equal((other.merges, other.special_tokens, other.vocab), (tok.merges, tok.special_tokens, tok.vocab),
                     what=f"merges, specials and vocab after {how}")
        assert_equal(other.encode(text, allowed_special="all"), expected, what=f"encode after {how}")


def test_training_more_than_256_merges(tokenizer):
    """train to vocab_size 658 (400 merges, 2 specials) on 6,000 words drawn from 150 learns the brute-force
    definition's 400 merges, the later ones built on merges past id 511."""
    rng = random.Random(1)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(6, 12))) for _ in range(150)]
    text = " ".join(rng.choice(words) for _ in range(6000))
    tok = tokenizer.Tokenizer.train(text, 658, special_tokens=["<s>", "</s>"])
    expected = brute_force_merges([text], 400)
    assert any(max(m) > 511 for m in expected), "the corpus should give merges of ids past 511"
    assert_equal([tuple(m) for m in tok.merges], expected, what="400 merges")
    assert_equal(tok.special_tokens, {"<s>": 656, "</s>": 657}, what="special_tokens after 400 merges")


def test_a_pre_token_longer_than_256_bytes(tokenizer):
    """A pre-token of 301 bytes ('a' * 301 under GPT-2's pattern) encodes as the rank oracle says and
    round-trips; training on a 301-byte piece (pattern=None) merges left to right to the very end."""
    tok = tokenizer.Tokenizer([(97, 97), (256, 256)])
    for text in ("a" * 301, "a" * 300, " " + "a" * 301):
        assert_equal(tok.encode(text), rank_encode(tok.merges, [], GPT2, text), what=f"encode of {len(text)} chars")
        assert_equal(tok.decode(tok.encode(text)), text, what=f"decode(encode()) of {len(text)} chars")
    word = "ab" * 150 + "a"
    trained = tokenizer.Tokenizer.train(word, 256 + 3, pattern=None)
    assert_equal([tuple(m) for m in trained.merges], brute_force_merges([word], 3, pattern=None),
                 what="merges of one 301-byte pre-token")


def test_256_specials_vocab_size_bound(tokenizer):
    """With 256 specials, vocab_size must be >= 512: 511 is refused naming vocab_size and 512, 512 accepted."""
    specials = [f"<{i}>" for i in range(256)]
    with raises_clear(ValueError, "vocab_size", "512"):
        tokenizer.Tokenizer.train("hello", 511, special_tokens=specials)
    tok = tokenizer.Tokenizer.train("hello", 512, special_tokens=specials)
    assert_equal((tok.merges, tok.vocab_size), ([], 512), what="merges and vocab_size with 256 specials, vocab_size 512")


def test_vocab_size_error_names_the_minimum(tokenizer):
    """vocab_size below the minimum names the minimum, 256 + len(special_tokens) (259 with three specials)."""
    with raises_clear(ValueError, "vocab_size", "259"):
        tokenizer.Tokenizer.train("hello", 100, special_tokens=["<a>", "<b>", "<c>"])


# --- merges and decode errors: the boundaries ------------------------------------------------------

@pytest.mark.parametrize("merges, words", [
    ([(256, 97)], ["merges[0]", "256", "0..255"]),                 # merge 0 may use 0..255 only
    ([(97, 98), (257, 97)], ["merges[1]", "257", "0..256"]),       # merge 1 may use 0..256
    ([(97, 98, 99)], ["merges[0]"]),                               # three ids
    ([5], ["merges[0]"]),                                          # not a pair at all
    ([(97, 98), (97, 98)], ["merges", "repeat"]),
    ([(97,)], ["merges[0]"]),                                      # one id
    ([(-1, 97)], ["merges[0]", "-1"]),                             # below 0
])
def test_bad_merges_raise(tokenizer, merges, words):
    """A merge that uses an id not older than itself or a negative one, is not a pair, or repeats one raises
    ValueError saying which."""
    with raises_clear(ValueError, *words):
        tokenizer.Tokenizer(merges)


def test_decode_names_the_unknown_id_not_its_neighbours(trained):
    """decode of known ids followed by an unknown one names the unknown one (99999, -3, 2.5, 'a')."""
    for bad in (99999, -3, 2.5, "a"):
        with raises_clear(ValueError, repr(bad)):
            trained.decode([104, 105, bad])


# --- save: readable UTF-8 ------------------------------------------------------------------------

def test_saved_file_is_readable_utf8(tokenizer, tmp_path):
    """save writes non-ASCII special tokens and merged tokens as themselves (UTF-8), not as \\u escapes."""
    e = list("é".encode())
    tok = tokenizer.Tokenizer([(e[0], e[1])], special_tokens=["<|é|>"])
    tok.save(tmp_path / "tok.json")
    text = (tmp_path / "tok.json").read_text(encoding="utf-8")
    assert '"<|é|>"' in text, f"the special token '<|é|>' should appear as itself in the file:\n{text}"
    assert '"é"' in text, f"the merged token 'é' should appear as itself in 'tokens':\n{text}"
    assert "\\u" not in text, f"the file should hold no \\u escapes:\n{text}"


# --- the progress bar -----------------------------------------------------------------------------

@pytest.mark.parametrize("n_merges", [1, 5])
def test_training_progress_bar(tokenizer, capfd, n_merges):
    """train(progress=True) shows a bar that counts the merges to n/n (one merge included); without
    progress (the default) nothing is written."""
    capfd.readouterr()
    tokenizer.Tokenizer.train("ab ab cd cd ef", 256 + n_merges)
    assert_equal(capfd.readouterr().err, "", what="stderr of train() without progress")
    tokenizer.Tokenizer.train("ab ab cd cd ef", 256 + n_merges, progress=True)
    err = capfd.readouterr().err
    assert f"{n_merges}/{n_merges}" in err, f"train(progress=True) should end its bar at {n_merges}/{n_merges}:\n{err!r}"


def test_both_allowed_and_disallowed_names_only_the_overlap(tokenizer):
    """A special both allowed and disallowed is named in the ValueError; a special only allowed is not."""
    tok = tokenizer.Tokenizer([], special_tokens=["<a>", "<b>"])
    with pytest.raises(ValueError) as info:
        tok.encode("x", allowed_special={"<a>", "<b>"}, disallowed_special={"<a>"})
    message = str(info.value)
    assert "<a>" in message and "<b>" not in message, \
        f"the message should name '<a>' (in both) and not '<b>' (only allowed): {message!r}"


def test_merges_may_use_id_0_and_the_newest_id(tokenizer):
    """Merge n may use any id in 0..255+n: byte 0, and the merge just before it."""
    tok = tokenizer.Tokenizer([(0, 97), (256, 0), (257, 257)], pattern=None)
    assert_equal(tok.vocab[258], b"\x00a\x00" * 2, what="vocab[258] of merges (0, 97), (256, 0), (257, 257)")
    assert_equal(tok.encode("\x00a\x00\x00a\x00"), [258], what="encode('\\x00a\\x00\\x00a\\x00')")


@pytest.mark.parametrize("merges", [5, "ab", {"a": 1}])
def test_from_dict_merges_not_a_list(tokenizer, trained, merges):
    """Tokenizer data whose merges is not a list (an int, a str, a dict) is a ValueError naming merges."""
    d = trained.to_dict()
    d["merges"] = merges
    with raises_clear(ValueError, "merges"):
        tokenizer.Tokenizer.from_dict(d)


def test_train_data_of_the_wrong_type(tokenizer):
    """train's data must be a str, a path or an iterable of str: an int is a TypeError naming data."""
    with raises_clear(TypeError, "data"):
        tokenizer.Tokenizer.train(5, 300)
    with raises_clear(TypeError, "data"):
        tokenizer.Tokenizer.train(["ok", 5], 300)
