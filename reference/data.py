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
    """Documents (list of str) from a file, a directory, a JSONL file or a custom dataset (see module doc)."""
    if separator is not None and (not isinstance(separator, str) or separator == ""):
        raise ValueError(f"separator must be None or a non-empty str, got {separator!r}")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*.txt") if p.is_file())
            if not files:
                raise ValueError(f"directory {str(path)!r} holds no .txt files")
            return [doc for f in files for doc in _read_text(f, separator)]
        if not path.exists():
            raise FileNotFoundError(f"no such file or directory: {str(path)!r}")
        if path.suffix == ".jsonl":
            return _read_jsonl(path, field)
        return _read_text(path, separator)
    if hasattr(source, "__len__") and hasattr(source, "__getitem__"):
        items = [source[i] for i in range(len(source))]
    elif hasattr(source, "__iter__"):
        items = list(source)
    else:
        raise TypeError(f"source must be a path, a sequence or an iterable of str, got {type(source).__name__}")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"source item {i} must be a str, got {type(item).__name__}")
    return items


def _read_text(path: Path, separator: str | None) -> list[str]:
    text = path.read_bytes().decode("utf-8")
    return [text] if separator is None else text.split(separator)


def _read_jsonl(path: Path, field: str) -> list[str]:
    documents = []
    lines = path.read_bytes().decode("utf-8").split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {number}: invalid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}: line {number}: expected a JSON object, got {type(record).__name__}")
        if field not in record:
            raise ValueError(f"{path}: line {number}: missing field {field!r}")
        if not isinstance(record[field], str):
            raise ValueError(f"{path}: line {number}: field {field!r} must be a string, "
                             f"got {type(record[field]).__name__}")
        documents.append(record[field])
    return documents


# --- tokens and the cache ----------------------------------------------------------------------

def cache_key(documents: list[str], tokenizer) -> str:
    """SHA-256 (hex) of the documents (length-prefixed UTF-8) and of the tokenizer's ``to_dict()``."""
    if not hasattr(tokenizer, "to_dict"):
        raise TypeError("tokenizer needs a to_dict() method to be cached (its fingerprint)")
    h = hashlib.sha256()
    for doc in documents:
        data = doc.encode("utf-8", errors="surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    h.update(b"tokenizer, documents as ordinary text")  # the encoding rule: caches of another rule differ
    h.update(json.dumps(tokenizer.to_dict(), sort_keys=True).encode("utf-8"))
    return h.hexdigest()


def tokenize_documents(documents: list[str], tokenizer, cache_dir=None) -> list[torch.Tensor]:
    """Each document's ids as a 1-D long tensor; cached in ``cache_dir`` when given (see module doc)."""
    documents = list(documents)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"tokens-{cache_key(documents, tokenizer)}.npz"
        if path.exists():
            with np.load(path, allow_pickle=False) as saved:
                tokens = torch.from_numpy(saved["tokens"].astype(np.int64))
                offsets = saved["offsets"].tolist()
            return [tokens[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
    # ordinary text: a special token's string in a document is not the special (see the module doc)
    token_docs = [torch.tensor(tokenizer.encode(doc, disallowed_special=()), dtype=torch.long) for doc in documents]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        lengths = [len(t) for t in token_docs]
        offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)
        tokens = torch.cat(token_docs).numpy().astype(np.int32) if token_docs else np.zeros(0, np.int32)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, tokens=tokens, offsets=offsets)
        os.replace(tmp, path)  # atomic: a reader never sees half a file
    return token_docs


def token_stream(token_docs: list, eot_id: int) -> torch.Tensor:
    """``[eot] + doc_0 + [eot] + doc_1 + [eot] + ... + [eot]`` as a 1-D long tensor."""
    checks.non_negative_int("eot_id", eot_id)
    eot = torch.tensor([eot_id], dtype=torch.long)
    pieces = [eot]
    for doc in token_docs:
        pieces.append(torch.as_tensor(doc, dtype=torch.long).reshape(-1))
        pieces.append(eot)
    return torch.cat(pieces)


def batch_seed(seed: int, step: int) -> int:
    """The seed of the generator for batch (or epoch) ``step`` of a batcher seeded with ``seed``."""
    return (seed * 1_000_003 + step * 7919 + 12345) % (2**63 - 1)


# --- fixed-length batches ----------------------------------------------------------------------

class FixedLengthBatches:
    """Random windows of ``T + 1`` tokens of ``stream``: ``(x, y)`` each ``(B, T)`` long, ``y[:, t] == x[:, t + 1]``.

    Args:
        stream: 1-D long tensor of ``N >= T + 1`` ids (``token_stream``).
        batch_size: B. context_length: T. seed: int >= 0.
    Iterating yields ``batch(step)`` for step = ``self.step``, ``self.step + 1``, ... forever.
    """

    def __init__(self, stream: torch.Tensor, batch_size: int, context_length: int, seed: int = 0):
        checks.tensor("stream", stream, min_dim=1, max_dim=1, floating=False)
        self.batch_size = checks.positive_int("batch_size", batch_size)
        self.context_length = checks.positive_int("context_length", context_length)
        self.seed = checks.non_negative_int("seed", seed)
        if stream.numel() < context_length + 1:
            raise ValueError(f"stream has {stream.numel()} tokens, fewer than context_length + 1 = "
                             f"{context_length + 1}")
        self.stream = stream.long()
        self.step = 0

    @property
    def num_starts(self) -> int:
        """Number of possible window starts: ``N - T`` (starts 0 .. N - T - 1)."""
        return self.stream.numel() - self.context_length

    def starts(self, step: int) -> torch.Tensor:
        """The ``(B,)`` window starts of batch ``step``."""
        g = torch.Generator().manual_seed(batch_seed(self.seed, step))
        return torch.randint(0, self.num_starts, (self.batch_size,), generator=g)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of batch ``step``: a pure function of ``(seed, step)``."""
        checks.non_negative_int("step", step)
        starts = self.starts(step)                                          # (B,)
        idx = starts[:, None] + torch.arange(self.context_length + 1)       # (B, T + 1)
        windows = self.stream[idx]                                          # (B, T + 1)
        return windows[:, :-1], windows[:, 1:]                              # x, y: (B, T)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.batch(self.step)
        self.step += 1
        return out

    def state_dict(self) -> dict:
        return {"seed": self.seed, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.seed = checks.non_negative_int("seed", state["seed"])
        self.step = checks.non_negative_int("step", state["step"])


def evaluation_batches(stream: torch.Tensor, batch_size: int,
                       context_length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Sequential windows covering every target ``stream[1:]`` exactly once (see module doc)."""
    checks.tensor("stream", stream, min_dim=1, max_dim=1, floating=False)
    checks.positive_int("batch_size", batch_size)
    T = checks.positive_int("context_length", context_length)
    n = stream.numel()
    if n < 2:
        raise ValueError(f"stream must have at least 2 tokens, got {n}")
    xs, ys = [], []
    for start in range(0, n - 1, T):
        x = stream[start:start + T].long()               # (<= T,)
        y = stream[start + 1:start + T + 1].long()       # same length as x
        x = torch.cat([x, torch.full((T - len(x),), PAD_ID, dtype=torch.long)])
        y = torch.cat([y, torch.full((T - len(y),), IGNORE_INDEX, dtype=torch.long)])
        xs.append(x)
        ys.append(y)
    return [(torch.stack(xs[i:i + batch_size]), torch.stack(ys[i:i + batch_size]))
            for i in range(0, len(xs), batch_size)]


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
    """Documents bucketed by length, padded to the longest in the batch (see module doc).

    Args:
        token_docs: list of 1-D id sequences. batch_size: B. context_length: T (max x length).
        eot_id: the end-of-text id around every document. seed: int >= 0.
    """

    def __init__(self, token_docs: list, batch_size: int, context_length: int, eot_id: int, seed: int = 0):
        self.batch_size = checks.positive_int("batch_size", batch_size)
        self.context_length = checks.positive_int("context_length", context_length)
        self.eot_id = checks.non_negative_int("eot_id", eot_id)
        self.seed = checks.non_negative_int("seed", seed)
        if len(token_docs) == 0:
            raise ValueError("token_docs must hold at least one document")
        T = context_length
        self.pieces: list[torch.Tensor] = []     # each (L,) with 2 <= L <= T + 1
        self.document_of: list[int] = []         # piece -> index of its document
        eot = torch.tensor([eot_id], dtype=torch.long)
        for d, doc in enumerate(token_docs):
            seq = torch.cat([eot, torch.as_tensor(doc, dtype=torch.long).reshape(-1), eot])
            for start in range(0, len(seq) - 1, T):
                self.pieces.append(seq[start:start + T + 1])
                self.document_of.append(d)
        self.epoch = 0
        self.index = 0
        self._order = (None, [])  # ((seed, epoch), epoch_order(epoch)): computed once per epoch

    def __len__(self) -> int:
        """Batches per epoch: ``ceil(len(pieces) / batch_size)``."""
        return -(-len(self.pieces) // self.batch_size)

    def epoch_order(self, epoch: int) -> list[torch.Tensor]:
        """The piece indices of each batch of ``epoch``, in order."""
        g = torch.Generator().manual_seed(batch_seed(self.seed, epoch))
        order = torch.randperm(len(self.pieces), generator=g).tolist()
        order.sort(key=lambda i: len(self.pieces[i]))                        # stable: ties stay shuffled
        groups = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        perm = torch.randperm(len(groups), generator=g).tolist()
        return [torch.tensor(groups[j], dtype=torch.long) for j in perm]

    def collate(self, indices: torch.Tensor) -> Batch:
        """Right-pad the pieces ``indices`` into a ``Batch``."""
        pieces = [self.pieces[i] for i in indices.tolist()]
        T = max(len(p) for p in pieces) - 1
        B = len(pieces)
        x = torch.full((B, T), PAD_ID, dtype=torch.long)
        y = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.bool)
        for b, p in enumerate(pieces):
            n = len(p) - 1
            x[b, :n] = p[:-1]
            y[b, :n] = p[1:]
            mask[b, :n] = True
        return Batch(x, y, mask, indices)

    def epoch_batches(self, epoch: int) -> list[Batch]:
        """Every batch of ``epoch``, in order."""
        checks.non_negative_int("epoch", epoch)
        return [self.collate(idx) for idx in self.epoch_order(epoch)]

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        if self._order[0] != (self.seed, self.epoch):  # keyed by the seed too: load_state_dict may change it
            self._order = ((self.seed, self.epoch), self.epoch_order(self.epoch))
        order = self._order[1]
        out = self.collate(order[self.index])
        self.index += 1
        if self.index == len(order):
            self.epoch, self.index = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.seed = checks.non_negative_int("seed", state["seed"])
        self.epoch = checks.non_negative_int("epoch", state["epoch"])
        self.index = checks.non_negative_int("index", state["index"])
