"""Byte-level BPE tokenizer (Sennrich et al., 2016; byte-level as in GPT-2, Radford et al., 2019).

Vocabulary::

    id 0..255                 the single bytes (byte b has id b)
    id 256 + n                merge n: vocab[256 + n] = vocab[a] + vocab[b] for merges[n] = (a, b)
    id 256 + len(merges) + i  special token i (its UTF-8 bytes)

Training (``Tokenizer.train``) on documents:

1. Cut the special tokens out of each document (they never take part in merges).
2. Pre-tokenize every piece with ``pattern`` (a regex; GPT-2's by default; ``None``: the piece is
   one pre-token). Pairs are counted INSIDE pre-tokens only, never across their boundaries.
3. Each pre-token is a sequence of ids (its UTF-8 bytes). Count every adjacent pair, weighted by the
   pre-token's frequency; overlapping pairs all count (``aaa`` holds ``(a, a)`` twice).
4. Merge the most frequent pair into a new id; ties go to the lexicographically greatest
   ``(vocab[a], vocab[b])`` (then the greatest ``(a, b)``, which only matters when two ids share
   bytes). Each pre-token replaces its occurrences LEFT TO RIGHT, without overlap (``aaa`` ->
   ``[aa, a]``). Repeat until ``vocab_size`` (which counts the 256 bytes, the merges and the specials)
   is reached, or stop early when no pair is left.

The trainer counts pre-token frequencies once, then after each merge updates the pair counts only
for the pre-tokens that held the merged pair (a heap with lazy deletion finds the best pair).

Encoding applies, inside each pre-token, the merge of LOWEST RANK (earliest merge) among the
adjacent pairs, everywhere left to right, until no pair is a merge. This equals any standard
rank-based BPE encoder (tiktoken) given the same ranks and pattern. Two merges may produce the same
bytes (``(a, bc)`` and ``(ab, c)``): each keeps its own id and encoding goes by pair rank, so a
bytes-keyed rank table (tiktoken's ``mergeable_ranks``) describes the tokenizer only when no bytes
repeat. Allowed special tokens are atomic; where they overlap, the longest one wins. A special
token's string in the text raises ValueError unless allowed (``allowed_special``) or not disallowed
(``disallowed_special=()``: then it is ordinary text), as in tiktoken.

Decoding concatenates the bytes of the ids; invalid UTF-8 becomes U+FFFD (``decode``), or use
``decode_bytes`` for the raw bytes.
"""

from __future__ import annotations

import heapq
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator

import regex

from . import checks

#: GPT-2's pre-tokenization pattern: contractions, letter runs, digit runs, punctuation runs, each
#: with an optional leading space, and whitespace runs (a run before a word leaves its last space).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

#: The conventional document separator special token.
ENDOFTEXT = "<|endoftext|>"

FORMAT = "bare-lm-tokenizer"
VERSION = 1

_CACHE_LIMIT = 200_000  # pre-tokens kept in the encoding cache before it is cleared


class Tokenizer:
    """A byte-level BPE tokenizer: ``merges`` (ordered id pairs), ``special_tokens``, ``pattern``."""

    def __init__(self, merges=(), special_tokens=(), pattern=GPT2_PATTERN):
        self.merges: list[tuple[int, int]] = _check_merges(merges)
        self.vocab: dict[int, bytes] = {b: bytes([b]) for b in range(256)}
        for n, (a, b) in enumerate(self.merges):
            self.vocab[256 + n] = self.vocab[a] + self.vocab[b]
        specials = _check_specials(special_tokens)
        first = 256 + len(self.merges)
        self.special_tokens: dict[str, int] = {s: first + i for i, s in enumerate(specials)}
        for s, i in self.special_tokens.items():
            self.vocab[i] = s.encode("utf-8")
        self.pattern = _check_pattern(pattern)
        self._compiled = regex.compile(pattern) if pattern is not None else None
        # (a, b) -> (rank, new id); rank n is merge n
        self._ranks = {pair: (n, 256 + n) for n, pair in enumerate(self.merges)}
        self._special_res: dict[frozenset, tuple] = {}  # specials looked for -> (regex, longest length)
        self._cache: dict[str, list[int]] = {}

    # --- training ------------------------------------------------------------------------------

    @classmethod
    def train(cls, data, vocab_size, special_tokens=(), pattern=GPT2_PATTERN, progress=False):
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges (fewer when no pair is left).

        ``data``: a str (the text), an ``os.PathLike`` (a UTF-8 file) or an iterable of str documents.
        """
        specials = _check_specials(special_tokens)
        checks.positive_int("vocab_size", vocab_size)
        if vocab_size < 256 + len(specials):
            raise ValueError(f"vocab_size must be >= 256 + len(special_tokens) = {256 + len(specials)}, "
                             f"got {vocab_size}")
        _check_pattern(pattern)
        n_merges = vocab_size - 256 - len(specials)
        words = _count_pretokens(_documents(data), specials, pattern)
        merges = _learn_merges(words, n_merges, progress)
        return cls(merges, specials, pattern)

    # --- vocabulary ----------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """256 bytes + merges + special tokens."""
        return 256 + len(self.merges) + len(self.special_tokens)

    # --- encoding ------------------------------------------------------------------------------

    def encode(self, text: str, *, allowed_special=(), disallowed_special="all") -> list[int]:
        """``text`` -> ids: allowed special tokens atomically, every other piece by BPE per pre-token.

        Special tokens in raw text follow tiktoken's convention. The specials in ``allowed_special``
        (a collection of registered special strings, or ``"all"``) become their ids. A disallowed
        special found in the text raises ValueError naming it and both arguments;
        ``disallowed_special="all"`` (the default) disallows every special that is not allowed,
        ``()`` disallows none: then a special's string is encoded as ordinary text. Specials are
        found leftmost first, the longest of overlapping ones winning, among the allowed and the
        disallowed together.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        special_re, allowed, _ = self._special_matcher(allowed_special, disallowed_special)
        ids: list[int] = []
        if special_re is None:
            self._encode_ordinary(text, ids)
            return ids
        start = 0
        for m in special_re.finditer(text):
            special = _allowed_or_raise(m.group(), allowed)
            self._encode_ordinary(text[start:m.start()], ids)
            ids.append(self.special_tokens[special])
            start = m.end()
        self._encode_ordinary(text[start:], ids)
        return ids

    def encode_iterable(self, chunks: Iterable[str], *, allowed_special=(),
                        disallowed_special="all") -> Iterator[int]:
        """Encode a stream of str chunks lazily; equals ``encode("".join(chunks), ...)`` with the same
        ``allowed_special`` / ``disallowed_special`` (a disallowed special raises when it is found).

        Text is held back only while it may still change: the last two pre-tokens (a pre-token may
        grow, or a contraction split differently, when more text comes) and anything within a
        special token's length of the end. The settled pre-tokens are encoded AS FOUND in the
        buffer, never by re-splitting the settled text on its own: alone, ``"x\\n\\n\\n"`` is one
        pre-token, while followed by ``"b"`` it is ``"\\n\\n"``, ``"\\n"``. With ``pattern=None`` a
        piece is held until the next special token. The pattern must not look behind (GPT-2's does not).
        """
        special_re, allowed, longest = self._special_matcher(allowed_special, disallowed_special)
        buf = ""
        for chunk in chunks:
            if not isinstance(chunk, str):
                raise TypeError(f"chunks must be str, got {type(chunk).__name__}")
            buf += chunk
            ids: list[int] = []
            cut = self._encode_stable_prefix(buf, ids, special_re, allowed, longest)
            if cut:
                yield from ids
                buf = buf[cut:]
        if buf:
            yield from self.encode(buf, allowed_special=allowed_special, disallowed_special=disallowed_special)

    def _special_matcher(self, allowed_special, disallowed_special):
        """``(regex of the specials to look for or None, the allowed ones, the longest one's length)``."""
        every = self.special_tokens
        if isinstance(allowed_special, str) and allowed_special == "all":
            allowed = frozenset(every)
        else:
            allowed = _special_names("allowed_special", allowed_special, every)
        if isinstance(disallowed_special, str) and disallowed_special == "all":
            disallowed = frozenset(every) - allowed
        else:
            disallowed = _special_names("disallowed_special", disallowed_special, every)
            if allowed & disallowed:
                raise ValueError(f"special tokens {sorted(allowed & disallowed)} are both in allowed_special "
                                 f"and in disallowed_special")
        seen = allowed | disallowed  # the specials looked for in the text
        if seen not in self._special_res:
            self._special_res[seen] = _special_regex(sorted(seen)), max(map(len, seen), default=0)
        special_re, longest = self._special_res[seen]
        return special_re, allowed, longest

    def _encode_stable_prefix(self, buf: str, out: list[int], special_re, allowed, longest: int) -> int:
        """Append the ids of a prefix of ``buf`` that no later text can change; return its length."""
        end = len(buf) - max(longest - 1, 0)  # a special starting at >= end may be cut short
        if end <= 0:
            return 0
        seg_start = 0  # start of the last ordinary segment, right after a settled special
        if special_re is not None:
            for m in special_re.finditer(buf):
                if m.start() >= end:
                    break
                special = _allowed_or_raise(m.group(), allowed)
                self._encode_ordinary(buf[seg_start:m.start()], out)  # a whole segment: ends at a special
                out.append(self.special_tokens[special])
                seg_start = m.end()
        if self._compiled is None:
            return seg_start
        pieces = list(self._compiled.finditer(buf, seg_start, end))
        if len(pieces) < 3:
            return seg_start
        for m in pieces[:-2]:  # settled: each is followed by two more pre-tokens
            self._encode_piece(m.group(), out)
        return pieces[-2].start()

    def _encode_ordinary(self, text: str, out: list[int]) -> None:
        """Append the ids of ``text`` (no special tokens in it) to ``out``."""
        if not text:
            return
        cache = self._cache
        pieces = self._compiled.findall(text) if self._compiled is not None else [text]
        for piece in pieces:
            ids = cache.get(piece)
            if ids is None:
                ids = self._bpe(piece)
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                cache[piece] = ids
            out.extend(ids)

    def _encode_piece(self, piece: str, out: list[int]) -> None:
        """Append the ids of one pre-token (as ``_encode_ordinary`` does for each of its pieces)."""
        ids = self._cache.get(piece)
        if ids is None:
            ids = self._bpe(piece)
        out.extend(ids)

    def _bpe(self, piece: str) -> list[int]:
        """BPE of one pre-token: merge the lowest-rank pair, everywhere, until none is a merge."""
        ids = list(_utf8(piece, "text"))
        ranks = self._ranks
        while len(ids) >= 2:
            best = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, _NO_RANK))
            if best not in ranks:
                break
            ids = _merge(ids, best, ranks[best][1])
        return ids

    # --- decoding ------------------------------------------------------------------------------

    def decode_bytes(self, ids) -> bytes:
        """The concatenated bytes of ``ids``; an unknown id raises ValueError naming it."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        vocab = self.vocab
        try:
            return b"".join([vocab[i] for i in ids])
        except (KeyError, TypeError):
            for i in ids:
                if isinstance(i, bool) or not isinstance(i, int) or i not in vocab:
                    raise ValueError(f"unknown token id {i!r}: ids must be ints in [0, {self.vocab_size})") from None
            raise

    def decode(self, ids) -> str:
        """``decode_bytes(ids)`` as UTF-8, invalid sequences replaced with U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # --- persistence ---------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """A JSON-safe dict: format, version, pattern, merges (id pairs), special tokens (in id order)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "pattern": self.pattern,
            "merges": [[a, b] for a, b in self.merges],
            "special_tokens": list(self.special_tokens),
        }

    @classmethod
    def from_dict(cls, d) -> "Tokenizer":
        """Rebuild from ``to_dict()``; anything malformed raises ValueError saying what."""
        if not isinstance(d, dict):
            raise ValueError(f"tokenizer data must be a dict, got {type(d).__name__}")
        if d.get("format") != FORMAT or d.get("version") != VERSION:
            raise ValueError(f"tokenizer data: format must be {FORMAT!r} version {VERSION}, "
                             f"got {d.get('format')!r} version {d.get('version')!r}")
        missing = [k for k in ("pattern", "merges", "special_tokens") if k not in d]
        if missing:
            raise ValueError(f"tokenizer data: missing field(s) {missing}")
        unknown = sorted(set(d) - {"format", "version", "pattern", "merges", "special_tokens", "tokens"})
        if unknown:
            raise ValueError(f"tokenizer data: unknown field(s) {unknown}")
        merges = d["merges"]
        if not isinstance(merges, list) or not all(isinstance(p, list) and len(p) == 2 for p in merges):
            raise ValueError("tokenizer data: merges must be a list of [a, b] id pairs")
        try:
            return cls([tuple(p) for p in merges], d["special_tokens"], d["pattern"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"tokenizer data: {err}") from None

    def save(self, path) -> None:
        """Write ``to_dict()`` as JSON (one merge per line, with the readable merged token)."""
        d = self.to_dict()
        lines = [f"  {json.dumps(k)}: {json.dumps(d[k])}," for k in ("format", "version", "pattern")]
        lines.append(f'  "special_tokens": {json.dumps(d["special_tokens"], ensure_ascii=False)},')
        merge_lines = [f"    [{a}, {b}]" for a, b in self.merges]
        lines.append('  "merges": [' + ("\n" + ",\n".join(merge_lines) + "\n  " if merge_lines else "") + "],")
        tokens = [self.vocab[256 + n].decode("utf-8", errors="backslashreplace") for n in range(len(self.merges))]
        lines.append(f'  "tokens": {json.dumps(tokens, ensure_ascii=False)}')
        with open(path, "w", encoding="utf-8") as f:
            f.write("{\n" + "\n".join(lines) + "\n}\n")

    @classmethod
    def load(cls, path) -> "Tokenizer":
        """Read a file written by ``save``; a corrupt or inconsistent file raises ValueError."""
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            d = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"tokenizer file {os.fspath(path)!r} is not valid JSON: {err}") from None
        try:
            tok = cls.from_dict(d)
        except ValueError as err:
            raise ValueError(f"tokenizer file {os.fspath(path)!r}: {err}") from None
        tokens = d.get("tokens")  # informative; a hand edit that disagrees with merges is refused
        if tokens is not None:
            expected = [tok.vocab[256 + n].decode("utf-8", errors="backslashreplace") for n in range(len(tok.merges))]
            if tokens != expected:
                raise ValueError(f"tokenizer file {os.fspath(path)!r}: 'tokens' disagrees with 'merges' "
                                 f"(edit merges only, or delete 'tokens')")
        return tok

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"special_tokens={list(self.special_tokens)}, pattern={'gpt2' if self.pattern == GPT2_PATTERN else self.pattern!r})")


# --- helpers -------------------------------------------------------------------------------------

_NO_RANK = (float("inf"), -1)


def _merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace each occurrence of ``pair`` in ``ids``, left to right, without overlap, by ``new_id``."""
    a, b = pair
    out = []
    i, n = 0, len(ids)
    while i < n:
        if i < n - 1 and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _pairs(word) -> list[tuple[int, int]]:
    """Every adjacent pair of ``word``, overlapping ones included (``aaa`` -> two ``(a, a)``)."""
    return list(zip(word, word[1:]))


def _utf8(text: str, name: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"{name} cannot be encoded as UTF-8: lone surrogate {text[err.start]!r} "
                         f"(U+{ord(text[err.start]):04X})") from None


def _special_regex(specials):
    """Alternation of the specials, LONGEST first, so the longest of overlapping specials wins."""
    if not specials:
        return None
    return regex.compile("|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True)))


def _special_names(name: str, value, every: dict) -> frozenset:
    """``value`` (a collection of registered special token strings) as a frozenset."""
    if isinstance(value, str):
        raise TypeError(f"{name} must be 'all' or a collection of special token strings, got the str {value!r}")
    try:
        names = frozenset(value)
    except TypeError:
        raise TypeError(f"{name} must be 'all' or a collection of special token strings, "
                        f"got {type(value).__name__}") from None
    unknown = sorted(repr(s) for s in names if s not in every)
    if unknown:
        raise ValueError(f"{name}: {', '.join(unknown)} not among the special tokens {list(every)}")
    return names


def _allowed_or_raise(special: str, allowed: frozenset) -> str:
    if special not in allowed:
        raise ValueError(f"text contains the special token {special!r}, which is disallowed: pass "
                         f"allowed_special={{{special!r}}} (or 'all') to encode it as that special token, or "
                         f"disallowed_special=() to encode it as ordinary text")
    return special


def _check_specials(special_tokens) -> list[str]:
    if isinstance(special_tokens, str):
        raise TypeError("special_tokens must be an iterable of str, not a single str")
    try:
        specials = list(special_tokens)
    except TypeError:
        raise TypeError(f"special_tokens must be an iterable of str, got {type(special_tokens).__name__}") from None
    for s in specials:
        if not isinstance(s, str) or not s:
            raise ValueError(f"special_tokens must be non-empty str, got {s!r}")
        _utf8(s, "special_tokens")
    if len(set(specials)) != len(specials):
        raise ValueError(f"special_tokens must be distinct, got {specials}")
    return specials


def _check_pattern(pattern):
    if pattern is None:
        return None
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a regex str or None, got {type(pattern).__name__}")
    try:
        regex.compile(pattern)
    except regex.error as err:
        raise ValueError(f"pattern is not a valid regex: {err}") from None
    return pattern


def _check_merges(merges) -> list[tuple[int, int]]:
    out = []
    for n, pair in enumerate(merges):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"merges[{n}] must be a pair of ids, got {pair!r}")
        for i in pair:
            if isinstance(i, bool) or not isinstance(i, int):
                raise ValueError(f"merges[{n}] must hold int ids, got {pair!r}")
            if not 0 <= i < 256 + n:
                raise ValueError(f"merges[{n}] = {list(pair)} references unknown id {i} "
                                 f"(merge {n} may use ids 0..{255 + n})")
        out.append((pair[0], pair[1]))
    if len(set(out)) != len(out):
        raise ValueError("merges must not repeat a pair")
    return out


def _documents(data) -> Iterator[str]:
    if isinstance(data, str):
        yield data
    elif isinstance(data, os.PathLike):
        with open(data, encoding="utf-8") as f:
            yield f.read()
    else:
        try:
            docs = iter(data)
        except TypeError:
            raise TypeError(f"data must be a str, a path or an iterable of str, got {type(data).__name__}") from None
        for doc in docs:
            if not isinstance(doc, str):
                raise TypeError(f"data: documents must be str, got {type(doc).__name__}")
            yield doc


def _count_pretokens(docs, specials, pattern) -> Counter:
    """Pre-token (bytes) -> frequency over all documents, special tokens cut out first.

    Large inputs (several batches of ``_BATCH_CHARS``) are pre-tokenized by two processes.
    """
    batches = _batches(docs, specials, pattern)
    first, second = next(batches, None), next(batches, None)
    counts: Counter = Counter()
    if second is None or (os.cpu_count() or 1) < 2:
        for batch in (first, second):
            if batch is not None:
                counts.update(_count_batch(batch, pattern))
        for batch in batches:
            counts.update(_count_batch(batch, pattern))
    else:
        from concurrent.futures import ProcessPoolExecutor
        from itertools import chain, repeat
        with ProcessPoolExecutor(2) as pool:
            all_batches = chain([first, second], batches)
            for c in pool.map(_count_batch, all_batches, repeat(pattern)):
                counts.update(c)
    words: Counter = Counter()
    for piece, c in counts.items():
        words[_utf8(piece, "data")] += c
    return words


_BATCH_CHARS = 1_000_000
_SPACE = regex.compile(r"\s")


def _batches(docs, specials, pattern) -> Iterator[list[str]]:
    """Lists of pieces (documents with the specials cut out) of about ``_BATCH_CHARS`` characters.

    With GPT-2's pattern a long piece is also cut before a newline that follows a non-space: no
    pre-token crosses that point, so counting the parts separately changes nothing.
    """
    special_re = _special_regex(specials)
    batch, size = [], 0
    for doc in docs:
        pieces = special_re.split(doc) if special_re is not None else [doc]
        for piece in pieces:
            for part in _safe_parts(piece, pattern):
                batch.append(part)
                size += len(part)
                if size >= _BATCH_CHARS:
                    yield batch
                    batch, size = [], 0
    if batch:
        yield batch


def _safe_parts(piece: str, pattern) -> Iterator[str]:
    if pattern != GPT2_PATTERN or len(piece) <= _BATCH_CHARS:
        yield piece
        return
    start = 0
    while len(piece) - start > _BATCH_CHARS:
        cut = piece.find("\n", start + _BATCH_CHARS // 2)
        while cut != -1 and _SPACE.match(piece, cut - 1):
            cut = piece.find("\n", cut + 1)
        if cut == -1:
            break
        yield piece[start:cut]
        start = cut
    yield piece[start:]


def _count_batch(batch: list[str], pattern) -> Counter:
    """Pre-token (str) -> frequency in a list of pieces."""
    counts: Counter = Counter()
    if pattern is None:
        counts.update(p for p in batch if p)
        return counts
    findall = regex.compile(pattern).findall
    for piece in batch:
        counts.update(findall(piece))
    return counts


class _Greatest:
    """Heap key for which the GREATEST (bytes a, bytes b, a, b) comes first (heapq is a min-heap)."""
    __slots__ = ("key",)

    def __init__(self, key):
        self.key = key

    def __lt__(self, other):
        return self.key > other.key


def _learn_merges(word_counts: Counter, n_merges: int, progress: bool) -> list[tuple[int, int]]:
    """The merges, most frequent pair first, updating pair counts incrementally."""
    words = [list(w) for w in word_counts]   # pre-token -> ids
    freqs = list(word_counts.values())
    vocab = {b: bytes([b]) for b in range(256)}
    counts: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for i, w in enumerate(words):
        f = freqs[i]
        for p in _pairs(w):
            counts[p] = counts.get(p, 0) + f
            where.setdefault(p, set()).add(i)

    def entry(p):
        return (-counts[p], _Greatest((vocab[p[0]], vocab[p[1]], p[0], p[1])), p)

    heap = [entry(p) for p in counts]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    bar = None
    if progress and n_merges > 0:
        from tqdm import tqdm
        bar = tqdm(total=n_merges, desc="BPE merges", unit="merge")
    while len(merges) < n_merges:
        best = None
        while heap:
            neg, _, p = heapq.heappop(heap)
            if counts.get(p) == -neg:
                best = p
                break
        if best is None:
            break  # no pair left: every pre-token is a single token
        new_id = 256 + len(merges)
        merges.append(best)
        vocab[new_id] = vocab[best[0]] + vocab[best[1]]
        delta: dict[tuple[int, int], int] = {}  # pair -> change of its count in this step
        for i in where.pop(best):
            w = words[i]
            new_w = _merge(w, best, new_id)
            if len(new_w) == len(w):
                continue  # stale index: this pre-token no longer holds the pair
            f = freqs[i]
            for p in _pairs(w):
                delta[p] = delta.get(p, 0) - f
            for p in _pairs(new_w):
                delta[p] = delta.get(p, 0) + f
                if new_id in p:
                    where.setdefault(p, set()).add(i)
            words[i] = new_w
        for p, d in delta.items():
            if not d:
                continue  # a neighbour pair that the merge left alone
            c = counts.get(p, 0) + d
            if c > 0:
                counts[p] = c
                heapq.heappush(heap, (-c, _Greatest((vocab[p[0]], vocab[p[1]], p[0], p[1])), p))
            else:
                del counts[p]
                where.pop(p, None)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return merges
