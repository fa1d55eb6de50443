"""Datasets and batching: documents from files or objects, tokenized once (cached), served as batches.

**Documents** (``load_documents(source, field="text", separator=None)``), ``source`` is:

- a path (``str`` or ``os.PathLike``; a ``str`` is always a path, never the text itself) to
  - a ``.jsonl`` file: one JSON object per non-blank line (lines split on ``"\\n"`` only); each
    object's ``field`` must be a string. A line that is not valid JSON, not an object, or lacks the
    field raises ``ValueError`` naming the file and the 1-based line number;
  - any other file: plain UTF-8 text, read byte-exact (no newline translation). With
    ``separator=None`` the whole file is ONE document; with a ``separator`` string the file is
    ``text.split(separator)`` (so documents must not contain the separator);
  - a directory: every ``*.txt`` file below it (recursive), sorted by relative path, each read as a
    text file (same separator rule). No ``.txt`` file -> ``ValueError`` naming the directory;
- any other object (a custom dataset), by this protocol: an object with ``__len__`` and
  ``__getitem__`` gives ``[source[i] for i in range(len(source))]``; else an iterable gives
  ``list(source)``. Every item must be a ``str`` (``TypeError`` naming the item's index).

**Tokens.** ``tokenize_documents(documents, tokenizer, cache_dir=None)`` encodes each document as
ORDINARY text with ``tokenizer.encode(doc, disallowed_special=()) -> list[int]`` (any object with
that method, e.g. ``tokenizer.Tokenizer`` or a tiktoken ``Encoding``): a special token's string
inside a document (a literal ``<|endoftext|>``) is text, never the special id, so a document cannot
forge a document boundary; the boundaries are the end-of-text ids that ``token_stream`` puts
between the documents. With ``cache_dir`` the result
is cached in ``cache_dir/tokens-<key>.npz`` (numpy, ``allow_pickle=False``: ``tokens`` int32, all
documents concatenated; ``offsets`` int64, document ``i`` is ``tokens[offsets[i]:offsets[i+1]]``),
``key = cache_key(documents, tokenizer)``: a SHA-256 of the documents' text and of
``json.dumps(tokenizer.to_dict(), sort_keys=True)``. A second call with the same data and tokenizer
reads the file and does not call ``encode``; changing either gives another key.

**The stream.** ``token_stream(token_docs, eot_id)`` is ``[eot] + doc_0 + [eot] + doc_1 + [eot] ...
+ doc_n-1 + [eot]``: every document is preceded and followed by the end-of-text id. Its targets
(every token but the first) are each document's tokens and one end-of-text per document, which is
what ``corpus.stream_characters`` counts (a document's characters plus one separator).

**Fixed-length batches** (``FixedLengthBatches``, for training): batch ``step`` is ``B`` windows
``w = stream[s : s + T + 1]`` with ``s`` uniform in ``[0, N - T - 1]`` (every start, the last one
included), ``x = w[:-1]``, ``y = w[1:]``. The starts of batch ``step`` are drawn from a fresh
``torch.Generator`` seeded with ``batch_seed(seed, step)``: a batch depends only on ``(seed, step)``,
so resuming is exact: save ``state_dict()`` (``{"seed", "step"}``) and ``load_state_dict`` it, or
call ``batch(step)`` directly.

**Evaluation pass** (``evaluation_batches``): windows starting at ``0, T, 2T, ...``, window ``i``
has ``x = stream[iT : iT + T]``, ``y = stream[iT + 1 : iT + T + 1]``; the last window may be
partial: its ``x`` is right-padded with ``PAD_ID`` (0) and its ``y`` with ``IGNORE_INDEX`` (-100), so
every target ``stream[1:]`` appears exactly once (causal attention: padding never changes the
real positions' logits). Windows are grouped ``batch_size`` at a time (the
last batch may have fewer rows).

**Dynamic-length batches** (``DynamicBatches``): each document becomes the sequence
``[eot] + doc + [eot]``; a sequence longer than ``T + 1`` is split into pieces
``seq[kT : kT + T + 1]`` (consecutive pieces overlap by one token, so every target is in exactly one
piece; a last piece of one token is dropped, it has no target). An epoch shuffles the pieces, sorts
them by length (stable: bucketing), cuts them into batches of ``batch_size`` consecutive pieces
(the last batch may be smaller) and shuffles the batch order; every piece appears exactly once per
epoch. A batch is right-padded to its longest piece: ``x`` with ``PAD_ID``, ``y`` with
``IGNORE_INDEX``; ``padding_mask`` (B, T) bool is True exactly at real tokens of ``x`` (= where
``y != IGNORE_INDEX``). Epoch ``e``'s order comes from ``torch.Generator`` seeded with
``batch_seed(seed, e)``; resume with ``state_dict()`` (``{"seed", "epoch", "index"}``).

Spec: ``pytest --impl kata spec_tests/test_data.py`` (it needs no tokenizer: a stand-in encodes bytes).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import checks

#: Target value that losses ignore (``F.cross_entropy(ignore_index=-100)``).
IGNORE_INDEX = -100
#: Input id written at padded positions (never a target: its target is IGNORE_INDEX).
PAD_ID = 0


# --- documents ---------------------------------------------------------------------------------

def load_documents(source, field: str = "text", separator: str | None = None) -> list[str]:
    """Documents (list of str) from a file, a directory, a JSONL file or a custom dataset.

    - ``str`` / ``os.PathLike``: a directory -> every ``*.txt`` below it (``rglob``), sorted, each
      read as a text file (none: ValueError naming the directory); a missing path ->
      FileNotFoundError naming it; a ``.jsonl`` file -> ``record[field]`` of every non-blank line
      (split on ``"\\n"``; errors: ValueError ``f"{path}: line {number}: ..."``, 1-based, for invalid
      JSON, a non-object, a missing field (name it) or a non-str field); any other file -> its bytes
      decoded as UTF-8 (no newline translation), one document or ``text.split(separator)``.
    - otherwise: ``__len__`` + ``__getitem__`` -> ``[source[i] for i in range(len(source))]``, else an
      iterable -> ``list(source)``; a non-str item -> TypeError naming its index.
    ``separator`` must be None or a non-empty str (ValueError).
    """
    raise NotImplementedError("load_documents: dispatch on directory / .jsonl / text file / custom object")


# --- tokens and the cache ----------------------------------------------------------------------

def cache_key(documents: list[str], tokenizer) -> str:
    """SHA-256 hex digest of, in order: every document (8-byte little-endian length, then its UTF-8
    bytes, ``errors="surrogatepass"``), the tag ``b"tokenizer, documents as ordinary text"``, and
    ``json.dumps(tokenizer.to_dict(), sort_keys=True)`` in UTF-8. No ``to_dict``: TypeError."""
    raise NotImplementedError("cache_key: hashlib.sha256 over the documents and the tokenizer's to_dict()")


def tokenize_documents(documents: list[str], tokenizer, cache_dir=None) -> list[torch.Tensor]:
    """Each document's ids (``tokenizer.encode(doc, disallowed_special=())``: ordinary text) as a 1-D
    long tensor.

    With ``cache_dir``: if ``cache_dir/tokens-{cache_key(...)}.npz`` exists, load it
    (``np.load(path, allow_pickle=False)``: ``tokens`` int32 concatenated, ``offsets`` int64 of
    length n + 1) and do NOT call ``encode``; else encode, then save that file (create the directory;
    write to a temporary name and ``os.replace`` it).
    """
    raise NotImplementedError("tokenize_documents: encode each document; read / write the .npz cache")


def token_stream(token_docs: list, eot_id: int) -> torch.Tensor:
    """``[eot] + doc_0 + [eot] + doc_1 + [eot] + ... + [eot]`` as a 1-D long tensor.

    Errors: ``checks.non_negative_int("eot_id", eot_id)``.
    """
    raise NotImplementedError("token_stream: torch.cat of [eot], then each document followed by [eot]")


def batch_seed(seed: int, step: int) -> int:
    """The seed of the generator for batch (or epoch) ``step``:
    ``(seed * 1_000_003 + step * 7919 + 12345) % (2**63 - 1)``."""
    raise NotImplementedError("batch_seed: (seed * 1_000_003 + step * 7919 + 12345) % (2**63 - 1)")


# --- fixed-length batches ----------------------------------------------------------------------

class FixedLengthBatches:
    """Random windows of ``T + 1`` tokens of ``stream``: ``(x, y)`` each ``(B, T)`` long, ``y[:, t] == x[:, t + 1]``.

    Args:
        stream: 1-D integer tensor of ``N >= T + 1`` ids (``token_stream``), stored as ``self.stream``.
        batch_size: B. context_length: T. seed: int >= 0. ``self.step`` starts at 0.
    Errors: ``checks.tensor("stream", stream, min_dim=1, max_dim=1, floating=False)``; positive
    ``batch_size``, ``context_length``; non-negative ``seed``; ``N < T + 1`` -> ValueError naming
    ``context_length``.
    Iterating yields ``batch(step)`` for step = ``self.step``, ``self.step + 1``, ... forever.
    """

    def __init__(self, stream: torch.Tensor, batch_size: int, context_length: int, seed: int = 0):
        raise NotImplementedError("FixedLengthBatches.__init__: check and store the arguments; step = 0")

    @property
    def num_starts(self) -> int:
        """Number of possible window starts: ``N - T`` (starts 0 .. N - T - 1)."""
        raise NotImplementedError("FixedLengthBatches.num_starts: N - T")

    def starts(self, step: int) -> torch.Tensor:
        """The ``(B,)`` starts of batch ``step``: ``torch.randint(0, num_starts, (B,), generator=g)``
        with ``g = torch.Generator().manual_seed(batch_seed(seed, step))``."""
        raise NotImplementedError("FixedLengthBatches.starts: randint over [0, N - T) from a seeded generator")

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of batch ``step``: windows ``w = stream[s : s + T + 1]``, ``x = w[:-1]``, ``y = w[1:]``."""
        raise NotImplementedError("FixedLengthBatches.batch: gather windows of T + 1 tokens; shift by one")

    def __iter__(self):
        raise NotImplementedError("FixedLengthBatches.__iter__: return self")

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError("FixedLengthBatches.__next__: batch(self.step), then self.step += 1")

    def state_dict(self) -> dict:
        """``{"seed": seed, "step": step}`` (JSON-safe): enough for an exact resume."""
        raise NotImplementedError("FixedLengthBatches.state_dict: {'seed': ..., 'step': ...}")

    def load_state_dict(self, state: dict) -> None:
        """Restore ``seed`` and ``step``; the next batch is then ``batch(step)``."""
        raise NotImplementedError("FixedLengthBatches.load_state_dict: restore seed and step")


def evaluation_batches(stream: torch.Tensor, batch_size: int,
                       context_length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Sequential windows covering every target ``stream[1:]`` exactly once.

    Starts ``0, T, 2T, ...`` while ``start < N - 1``; ``x = stream[start : start + T]``,
    ``y = stream[start + 1 : start + T + 1]``; a short last window is right-padded (``x`` with
    ``PAD_ID``, ``y`` with ``IGNORE_INDEX``) to T. Windows are stacked ``batch_size`` at a time into
    ``(x, y)`` pairs of shape ``(<= B, T)``. Errors: as FixedLengthBatches; ``N < 2`` -> ValueError.
    """
    raise NotImplementedError("evaluation_batches: windows at 0, T, 2T, ...; pad the last; group by B")


# --- dynamic-length batches --------------------------------------------------------------------

@dataclass
class Batch:
    """A padded batch: ``x``, ``y`` (B, T) long; ``padding_mask`` (B, T) bool, True = real token;
    ``pieces`` (B,) long: indices into ``DynamicBatches.pieces``."""

    x: torch.Tensor
    y: torch.Tensor
    padding_mask: torch.Tensor
    pieces: torch.Tensor


class DynamicBatches:
    """Documents bucketed by length, padded to the longest in the batch.

    Args:
        token_docs: list of 1-D id sequences (non-empty list). batch_size: B. context_length: T
            (max x length). eot_id: the end-of-text id around every document. seed: int >= 0.
    ``__init__`` builds ``self.pieces`` (list of 1-D long tensors) and ``self.document_of`` (piece ->
    document index): document ``d`` becomes ``seq = [eot] + doc + [eot]``, cut into
    ``seq[start : start + T + 1]`` for ``start`` in ``range(0, len(seq) - 1, T)``. ``self.epoch`` and
    ``self.index`` (batch within the epoch) start at 0.
    Errors: positive ``batch_size``/``context_length``, non-negative ``eot_id``/``seed``, empty
    ``token_docs`` -> ValueError naming ``token_docs``.
    """

    def __init__(self, token_docs: list, batch_size: int, context_length: int, eot_id: int, seed: int = 0):
        raise NotImplementedError("DynamicBatches.__init__: check arguments; cut each [eot]+doc+[eot] into pieces")

    def __len__(self) -> int:
        """Batches per epoch: ``ceil(len(pieces) / batch_size)``."""
        raise NotImplementedError("DynamicBatches.__len__: ceil(len(pieces) / batch_size)")

    def epoch_order(self, epoch: int) -> list[torch.Tensor]:
        """The piece indices of each batch of ``epoch``: with ``g`` seeded by ``batch_seed(seed, epoch)``,
        ``order = randperm(P, generator=g)``, stable-sorted by piece length, cut into groups of
        ``batch_size`` (keep the last, smaller group), then the groups reordered by
        ``randperm(len(groups), generator=g)``. Each group is a 1-D long tensor."""
        raise NotImplementedError("DynamicBatches.epoch_order: shuffle, sort by length, group, shuffle groups")

    def collate(self, indices: torch.Tensor) -> Batch:
        """Right-pad the pieces ``indices`` into a ``Batch`` of width (longest piece - 1):
        row b: ``x[b, :n] = p[:-1]``, ``y[b, :n] = p[1:]``, ``padding_mask[b, :n] = True`` (n = len(p) - 1);
        elsewhere ``x = PAD_ID``, ``y = IGNORE_INDEX``, mask False."""
        raise NotImplementedError("DynamicBatches.collate: pad x with PAD_ID, y with IGNORE_INDEX; build the mask")

    def epoch_batches(self, epoch: int) -> list[Batch]:
        """Every batch of ``epoch``, in order: ``[collate(i) for i in epoch_order(epoch)]``."""
        raise NotImplementedError("DynamicBatches.epoch_batches: collate every group of epoch_order(epoch)")

    def __iter__(self):
        raise NotImplementedError("DynamicBatches.__iter__: return self")

    def __next__(self) -> Batch:
        raise NotImplementedError(
            "DynamicBatches.__next__: batch self.index of self.epoch; advance (next epoch after the last)")

    def state_dict(self) -> dict:
        """``{"seed", "epoch", "index"}`` (JSON-safe)."""
        raise NotImplementedError("DynamicBatches.state_dict: {'seed': ..., 'epoch': ..., 'index': ...}")

    def load_state_dict(self, state: dict) -> None:
        """Restore ``seed``, ``epoch`` and ``index``: from then on the batcher serves exactly what a
        fresh ``DynamicBatches`` with that seed serves from ``epoch_batches(epoch)[index]`` on. If
        ``__next__`` keeps the current epoch's order, key it by ``(seed, epoch)``, or drop it here."""
        raise NotImplementedError("DynamicBatches.load_state_dict: restore seed, epoch and index")
