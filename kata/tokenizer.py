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

Spec: ``pytest --impl kata spec_tests/test_tokenizer.py``.

Decoding concatenates the bytes of the ids; invalid UTF-8 becomes U+FFFD (``decode``), or use
``decode_bytes`` for the raw bytes.
"""

from __future__ import annotations

import os  # noqa: F401  (data may be an os.PathLike)
from collections.abc import Iterable, Iterator

import regex  # noqa: F401  (the `regex` package: \p{L} classes for GPT2_PATTERN)

from . import checks  # noqa: F401

#: GPT-2's pre-tokenization pattern: contractions, letter runs, digit runs, punctuation runs, each
#: with an optional leading space, and whitespace runs (a run before a word leaves its last space).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

#: The conventional document separator special token.
ENDOFTEXT = "<|endoftext|>"

FORMAT = "bare-lm-tokenizer"
VERSION = 1

_CACHE_LIMIT = 200_000  # pre-tokens kept in the encoding cache before it is cleared


class Tokenizer:
    """A byte-level BPE tokenizer: ``merges`` (ordered id pairs), ``special_tokens``, ``pattern``.

    Attributes (public):
        merges: list[tuple[int, int]]; merge n makes id 256 + n.
        vocab: dict[int, bytes]: 0..255 -> bytes([b]); 256 + n -> vocab[a] + vocab[b]; then specials.
        special_tokens: dict[str, int]: the i-th special token has id 256 + len(merges) + i.
        pattern: the pre-tokenization regex (``regex`` package syntax) or None (no pre-tokenization).

    Errors (ValueError or TypeError, naming the argument): a merge that is not a pair of ints, or uses
    an id not older than itself (merge n may use ids 0..255+n), or repeats a pair; special tokens that
    are not distinct non-empty str; a pattern that is not a str/None or does not compile.

    Tips: keep ``ranks = {(a, b): n}``; compile the specials into one regex alternation sorted
    LONGEST first (``regex.escape``), so the longest of overlapping specials wins; keep a
    ``dict`` cache pre-token -> ids for encoding.
    """

    def __init__(self, merges=(), special_tokens=(), pattern=GPT2_PATTERN):
        raise NotImplementedError(
            "Tokenizer.__init__: check merges/specials/pattern; build vocab (bytes, merges, specials) and ranks")

    @classmethod
    def train(cls, data, vocab_size, special_tokens=(), pattern=GPT2_PATTERN, progress=False):
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges (fewer when no pair is left).

        ``data``: a str (the text), an ``os.PathLike`` (a UTF-8 file) or an iterable of str documents.

        1. Split each document on the special tokens (longest first); the specials are dropped.
        2. Pre-tokenize each piece: ``regex.findall(pattern, piece)`` (or the whole piece if None);
           count each pre-token's frequency ONCE (a Counter of their UTF-8 bytes).
        3. Pair counts: for each pre-token (a list of ids) and each adjacent pair, add its frequency.
           Overlapping pairs all count: ``aaa`` adds 2 to ``(a, a)``. Never pair across pre-tokens.
        4. Repeat: take the pair of largest count; ties -> greatest ``(vocab[a], vocab[b])``, then
           greatest ``(a, b)``. Append it to merges as id 256 + n; in every pre-token that holds it,
           replace it LEFT TO RIGHT without overlap (``aaa`` -> ``[aa, a]``). Stop when no pair is left.
        5. Speed: a recount per merge is far too slow. Keep ``pair -> set of pre-token indices`` and,
           after a merge, update the counts only for those pre-tokens (subtract their old pairs, add
           their new ones); a heap with stale entries skipped finds the best pair quickly.

        Errors: ``vocab_size`` not an int (TypeError) or ``< 256 + len(special_tokens)`` (ValueError
        naming vocab_size and that minimum); a lone surrogate in the data (ValueError naming data).
        ``progress``: a tqdm bar on stderr counting the merges (it ends at n/n); without it nothing is
        written.
        """
        raise NotImplementedError("Tokenizer.train: count pre-tokens once, then merge the best pair and update counts")

    @property
    def vocab_size(self) -> int:
        """256 bytes + merges + special tokens."""
        raise NotImplementedError("Tokenizer.vocab_size: 256 + len(merges) + len(special_tokens)")

    def encode(self, text: str, *, allowed_special=(), disallowed_special="all") -> list[int]:
        """``text`` -> ids.

        Special tokens in the text (tiktoken's convention): look for the allowed and the disallowed
        specials together (one regex alternation, longest first: leftmost, then longest wins). An
        allowed one (``allowed_special``: a collection of special strings, or ``"all"``) becomes its
        id; a disallowed one raises ValueError naming the token, ``allowed_special`` and
        ``disallowed_special``. ``disallowed_special="all"`` means every special not allowed; with
        ``disallowed_special=()`` a special that is not allowed is ordinary text. A bare str other
        than ``"all"`` is a TypeError; an unknown special, or one both allowed and disallowed, a
        ValueError naming the argument.

        Every other piece is pre-tokenized; each pre-token starts as its UTF-8 bytes and, while some
        adjacent pair is a merge, the pair of LOWEST rank is merged everywhere (left to right). Cache
        pre-token -> ids. A lone surrogate raises ValueError naming text ("text cannot be encoded as
        UTF-8: lone surrogate ..."); a non-str raises TypeError naming text.
        """
        raise NotImplementedError("Tokenizer.encode: cut out specials, pre-tokenize, merge lowest rank first")

    def encode_iterable(self, chunks: Iterable[str], *, allowed_special=(),
                        disallowed_special="all") -> Iterator[int]:
        """Encode a stream of str chunks lazily; equals ``encode("".join(chunks), ...)`` with the same
        ``allowed_special`` / ``disallowed_special``.

        Keep a buffer; after each chunk encode and drop only a prefix that later text cannot change:
        not the last two pre-tokens (a word may grow, ``we'l|l`` splits differently) and nothing
        within ``len(longest special) - 1`` characters of the end (a special may be cut in two).
        Encode the settled pre-tokens as the pattern found them in the buffer, not by splitting the
        settled text again on its own: alone, ``"x\\n\\n\\n"`` is one pre-token, but followed by
        ``"b"`` it is ``"\\n\\n"``, ``"\\n"`` (and merges of whitespace tell them apart).
        Encode the rest at the end.
        """
        raise NotImplementedError("Tokenizer.encode_iterable: buffer, emit the stable prefix, keep the tail")

    def decode_bytes(self, ids) -> bytes:
        """The concatenated bytes of ``ids`` (a list or a 1-D tensor); an unknown id raises
        ValueError naming it."""
        raise NotImplementedError("Tokenizer.decode_bytes: b''.join(vocab[i]); unknown id -> ValueError")

    def decode(self, ids) -> str:
        """``decode_bytes(ids)`` as UTF-8, invalid sequences replaced with U+FFFD."""
        raise NotImplementedError("Tokenizer.decode: decode_bytes(ids).decode('utf-8', errors='replace')")

    def to_dict(self) -> dict:
        """A JSON-safe dict: ``format`` (FORMAT), ``version`` (VERSION), ``pattern``, ``merges`` (list of
        [a, b]), ``special_tokens`` (list of str, in id order)."""
        raise NotImplementedError("Tokenizer.to_dict: format, version, pattern, merges, special_tokens")

    @classmethod
    def from_dict(cls, d) -> "Tokenizer":
        """Rebuild from ``to_dict()``; anything malformed (wrong format/version, missing field,
        wrong types, a merge with an unknown id) raises ValueError saying which field."""
        raise NotImplementedError("Tokenizer.from_dict: validate the fields, then cls(merges, specials, pattern)")

    def save(self, path) -> None:
        """Write ``to_dict()`` as readable UTF-8 JSON (may add ``tokens``: the merged tokens as text);
        non-ASCII characters as themselves (``json.dumps(..., ensure_ascii=False)``)."""
        raise NotImplementedError("Tokenizer.save: json of to_dict()")

    @classmethod
    def load(cls, path) -> "Tokenizer":
        """Read a file written by ``save``; invalid JSON or bad fields raise ValueError naming the file."""
        raise NotImplementedError("Tokenizer.load: json.loads, then from_dict; errors name the file")
