"""Spec of ``data``: loading documents, tokenizing with a cache, fixed-length and dynamic batching.

No tokenizer component is needed: the tests use ``ByteTokenizer`` (ids = UTF-8 bytes), and the
batchers work on id tensors built here.
"""

import functools
import hashlib
import json
import math
import os
import re
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

from .support import assert_close, assert_equal, randint, randn, raises_clear, seeds, sizes

IGNORE = -100
EOT = "<|endoftext|>"

#: Text without lone surrogates (which UTF-8 cannot encode).
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
documents = st.lists(texts, min_size=1, max_size=6)


@pytest.fixture(scope="module")
def data(impl):
    return impl.component("data")


class ByteTokenizer:
    """A stand-in tokenizer: ids are the UTF-8 bytes (+ ``offset``); counts its ``encode`` calls."""

    def __init__(self, offset=0):
        self.offset = offset
        self.calls = 0

    def encode(self, text, *, allowed_special=(), disallowed_special="all"):
        """As the BPE tokenizer: ``<|endoftext|>`` in the text raises unless allowed (id 999) or
        ``disallowed_special=()`` (then its bytes, as ordinary text)."""
        self.calls += 1
        if EOT in text and allowed_special != "all" and EOT not in allowed_special:
            if disallowed_special == "all" or EOT in disallowed_special:
                raise ValueError(f"text contains the special token {EOT!r}: pass allowed_special or disallowed_special")
        ids, allowed = [], allowed_special == "all" or EOT in allowed_special
        for k, piece in enumerate(text.split(EOT)):
            ids += ([999] if k and allowed else list(EOT.encode()) if k else []) + list(piece.encode("utf-8"))
        return [i + self.offset for i in ids]

    def to_dict(self):
        return {"kind": "bytes", "offset": self.offset}


def _stream(n, seed, vocab=50):
    return randint(0, vocab, (n,), seed)


def _expected_stream(token_docs, eot):
    out = [eot]
    for doc in token_docs:
        out += list(doc) + [eot]
    return out


def _token_docs(draw_lengths, seed, vocab=20):
    return [randint(1, vocab, (n,), seed + i) for i, n in enumerate(draw_lengths)]


def _expected_pieces(token_docs, eot, T):
    """Brute force: each document as [eot] + doc + [eot], cut into windows of T + 1 overlapping by 1."""
    pieces = []
    for doc in token_docs:
        seq = [eot] + [int(t) for t in doc] + [eot]
        start = 0
        while start < len(seq) - 1:
            pieces.append(tuple(seq[start:start + T + 1]))
            start += T
    return pieces


# --- the stream ---------------------------------------------------------------------------------

@given(lengths=st.lists(sizes(6, 0), min_size=1, max_size=5), seed=seeds)
def test_token_stream_separates_documents(data, lengths, seed):
    """token_stream is [eot] + doc_0 + [eot] + doc_1 + [eot] + ... + [eot]."""
    docs = _token_docs(lengths, seed)
    got = data.token_stream(docs, 0)
    assert got.dtype == torch.long, f"stream dtype: expected torch.long, got {got.dtype}"
    assert_equal(got.tolist(), _expected_stream([d.tolist() for d in docs], 0), what="token_stream")


# --- fixed-length batches -----------------------------------------------------------------------

@given(n=sizes(60, 2), t=sizes(8), b=sizes(4), seed=seeds, step=st.integers(0, 1000))
def test_fixed_windows_are_stream_slices(data, n, t, b, seed, step):
    """Each fixed-length row is x = stream[s:s+T], y = stream[s+1:s+T+1] for a start 0 <= s <= N-T-1."""
    n = max(n, t + 1)
    stream = torch.arange(n) * 7 + 3  # distinct values: x[0] tells the start
    x, y = data.FixedLengthBatches(stream, b, t, seed=seed).batch(step)
    assert tuple(x.shape) == (b, t) and tuple(y.shape) == (b, t), \
        f"x, y shapes: expected {(b, t)}, got {tuple(x.shape)}, {tuple(y.shape)}"
    for row in range(b):
        s = (int(x[row, 0]) - 3) // 7
        assert 0 <= s <= n - t - 1, f"row {row}: start {s} outside [0, {n - t - 1}]"
        assert_equal(x[row].tolist(), stream[s:s + t].tolist(), what=f"x row {row} (start {s})")
        assert_equal(y[row].tolist(), stream[s + 1:s + t + 1].tolist(), what=f"y row {row} (start {s})")


@given(n=sizes(200, 10), t=sizes(16, 3), seed=seeds)
@settings(max_examples=10)
def test_fixed_targets_are_shifted_inputs(data, n, t, seed):
    """y[:, t] == x[:, t + 1]: the target of a position is the next input.

    x == y only if all 4 windows of T + 1 >= 4 random ids (of 50) are constant: false failure < 1e-19."""
    stream = _stream(max(n, t + 2), seed)
    x, y = next(iter(data.FixedLengthBatches(stream, 4, t, seed=seed)))
    assert_equal(y[:, :-1].tolist(), x[:, 1:].tolist(), what="y[:, :-1] vs x[:, 1:]")
    assert not torch.equal(x, y) or (stream == stream[0]).all(), "y equals x: targets are not shifted"


@pytest.mark.parametrize("extra", [1, 2, 3])
def test_fixed_every_start_is_reachable(data, extra):
    """On a tiny stream, many batches draw every start 0 .. N-T-1 (the last included), and no other."""
    t = 5
    n = t + 1 + extra  # starts 0 .. extra
    stream = torch.arange(n)
    batcher = data.FixedLengthBatches(stream, 8, t, seed=extra)
    seen = Counter()
    for _ in range(100):
        x, _ = next(batcher)
        seen.update(x[:, 0].tolist())
    assert_equal(sorted(seen), list(range(extra + 1)), what="window starts drawn in 800 windows")


def test_fixed_is_reproducible_and_resumable(data):
    """Same seed -> same batches; state_dict() / load_state_dict() resumes the exact sequence."""
    stream = _stream(500, 0)
    first = data.FixedLengthBatches(stream, 3, 10, seed=5)
    for _ in range(4):
        next(first)
    state = first.state_dict()
    rest = [next(first) for _ in range(3)]
    again = data.FixedLengthBatches(stream, 3, 10, seed=5)
    replay = [next(again) for _ in range(7)][4:]
    resumed = data.FixedLengthBatches(stream, 3, 10, seed=999)
    resumed.load_state_dict(json.loads(json.dumps(state)))  # the state is JSON-safe
    for i, ((x1, y1), (x2, y2), (x3, y3)) in enumerate(zip(rest, replay, [next(resumed) for _ in range(3)])):
        assert torch.equal(x1, x2) and torch.equal(y1, y2), f"batch {4 + i}: same seed gave other batches"
        assert torch.equal(x1, x3) and torch.equal(y1, y3), f"batch {4 + i}: resumed batcher differs"
    other = data.FixedLengthBatches(stream, 3, 10, seed=6)
    assert not torch.equal(next(other)[0], data.FixedLengthBatches(stream, 3, 10, seed=5).batch(0)[0]), \
        "seeds 5 and 6 gave the same first batch"


@given(n=sizes(60, 2), t=sizes(8), b=sizes(4), seed=seeds, step=st.integers(0, 50), start_step=st.integers(0, 50))
def test_fixed_batches_follow_the_documented_draw(data, n, t, b, seed, step, start_step):
    """batch(step) takes its starts from torch.randint(0, N - T, (B,), generator=Generator().manual_seed(
    batch_seed(seed, step))); next() serves batch(self.step) and advances; seed defaults to 0."""
    n = max(n, t + 1)
    stream = torch.arange(n) * 3 + 1
    g = torch.Generator().manual_seed(data.batch_seed(seed, step))
    starts = torch.randint(0, n - t, (b,), generator=g)
    idx = starts[:, None] + torch.arange(t + 1)
    batcher = data.FixedLengthBatches(stream, b, t, seed=seed)
    x, y = batcher.batch(step)
    assert_equal(x.tolist(), stream[idx[:, :-1]].tolist(), what=f"x of batch({step}) vs the documented draw")
    assert_equal(y.tolist(), stream[idx[:, 1:]].tolist(), what=f"y of batch({step}) vs the documented draw")
    assert_equal(batcher.starts(step).tolist(), starts.tolist(), what=f"starts({step})")
    assert_equal(batcher.num_starts, n - t, what="num_starts")
    # iterating from a loaded state serves batch(step), batch(step + 1), ... of the state's seed
    other = data.FixedLengthBatches(stream, b, t, seed=seed + 1)
    for _ in range(start_step % 3):
        next(other)
    other.load_state_dict({"seed": seed, "step": start_step})
    for k in range(3):
        got = next(other)
        want = batcher.batch(start_step + k)
        assert_equal(got[0].tolist(), want[0].tolist(), what=f"next() number {k} after loading step {start_step}")
    assert_equal(other.state_dict(), {"seed": seed, "step": start_step + 3}, what="state_dict() after 3 next()")
    default = data.FixedLengthBatches(stream, b, t)
    zero = data.FixedLengthBatches(stream, b, t, seed=0)
    assert_equal(default.state_dict(), {"seed": 0, "step": 0}, what="state_dict() of a batcher without seed")
    assert_equal(next(default)[0].tolist(), zero.batch(0)[0].tolist(), what="first batch without seed (default 0)")


def test_batch_seed_separates_steps_and_seeds(data):
    """batch_seed(seed, step) is an int >= 0, distinct for distinct (seed, step) on a small grid."""
    values = {(s, k): data.batch_seed(s, k) for s in range(20) for k in range(50)}
    assert all(isinstance(v, int) and v >= 0 for v in values.values()), "batch_seed must give ints >= 0"
    assert len(set(values.values())) == len(values), "batch_seed repeats a value on seeds 0..19 x steps 0..49"


# --- evaluation pass ----------------------------------------------------------------------------

@given(n=sizes(70, 2), t=sizes(9), b=sizes(4), seed=seeds)
def test_evaluation_covers_every_target_once(data, n, t, b, seed):
    """The evaluation pass predicts every target stream[1:] exactly once, in order, from its true input."""
    stream = _stream(n, seed)
    batches = data.evaluation_batches(stream, b, t)
    xs = torch.cat([x for x, _ in batches])
    ys = torch.cat([y for _, y in batches])
    assert all(x.shape[0] <= b and x.shape[1] == t for x, _ in batches), "a batch has the wrong shape"
    real = ys != IGNORE
    assert_equal(ys[real].tolist(), stream[1:].tolist(), what="non-ignored targets, in order")
    assert_equal(xs[real].tolist(), stream[:-1].tolist(), what="inputs at non-ignored targets")
    flat = real.flatten().tolist()
    assert flat == sorted(flat, reverse=True), "ignored targets must all come at the end"
    assert xs.shape[0] == math.ceil((n - 1) / t), \
        f"windows: expected ceil((N-1)/T) = {math.ceil((n - 1) / t)}, got {xs.shape[0]}"


# --- dynamic batches ----------------------------------------------------------------------------

doc_lengths = st.lists(sizes(20, 0), min_size=1, max_size=12)


@given(lengths=doc_lengths, t=sizes(8), b=sizes(5), seed=seeds, epoch=st.integers(0, 3))
def test_dynamic_every_piece_once_per_epoch(data, lengths, t, b, seed, epoch):
    """Each epoch holds every document (split into context-sized pieces) exactly once."""
    docs = _token_docs(lengths, seed)
    batcher = data.DynamicBatches(docs, b, t, eot_id=0, seed=seed)
    batches = batcher.epoch_batches(epoch)
    got = []
    for batch in batches:
        for row in range(batch.x.shape[0]):
            n = int(batch.padding_mask[row].sum())
            got.append(tuple(batch.x[row, :n].tolist() + batch.y[row, n - 1:n].tolist()))
    expected = _expected_pieces(docs, 0, t)
    assert_equal(sorted(got), sorted(expected), what="pieces seen in one epoch")
    assert_equal(len(batches), math.ceil(len(expected) / b), what="batches per epoch")
    assert len(batcher) == len(batches), f"len(batcher): expected {len(batches)}, got {len(batcher)}"


@given(lengths=doc_lengths, t=sizes(8), b=sizes(5), seed=seeds)
def test_dynamic_padding(data, lengths, t, b, seed):
    """Padding is at the end only; pad targets are -100; the mask is True exactly at real tokens."""
    docs = _token_docs(lengths, seed)
    for batch in data.DynamicBatches(docs, b, t, eot_id=0, seed=seed).epoch_batches(0):
        x, y, mask = batch.x, batch.y, batch.padding_mask
        assert mask.dtype == torch.bool, f"padding_mask dtype: expected torch.bool, got {mask.dtype}"
        assert x.shape == y.shape == mask.shape and x.shape[1] <= t, \
            f"shapes x {tuple(x.shape)}, y {tuple(y.shape)}, mask {tuple(mask.shape)}; T <= {t}"
        assert_equal(mask.tolist(), (y != IGNORE).tolist(), what="padding_mask vs (y != -100)")
        for row in mask.tolist():
            assert row == sorted(row, reverse=True), f"padding not at the end: mask row {row}"
        assert mask[:, 0].all(), "every row has a real first token"
        assert mask.any(dim=0).all(), "a column is padding in every row: batch longer than its longest piece"
        inner = mask[:, 1:]
        assert_equal(y[:, :-1][inner].tolist(), x[:, 1:][inner].tolist(), what="y[t] vs x[t+1] at real tokens")


@given(lengths=st.lists(sizes(12, 0), min_size=1, max_size=8), t=sizes(8, 2), b=sizes(5), seed=seeds)
@settings(max_examples=10)
def test_dynamic_loss_equals_per_document_loss(data, lengths, t, b, seed):
    """Token-weighted loss over padded batches == loss of the pieces taken one at a time (F.cross_entropy)."""
    docs = _token_docs(lengths, seed)
    batches = data.DynamicBatches(docs, b, t, eot_id=0, seed=seed).epoch_batches(0)
    table = randn((20, 20), seed, torch.float64)  # the "model": logits = table[input token]
    # One F.cross_entropy call per side (small calls are slow on a busy machine): padded batches ...
    logits = torch.cat([table[batch.x].flatten(0, 1) for batch in batches])
    targets = torch.cat([batch.y.flatten() for batch in batches])
    total = F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum")
    count = int((targets != IGNORE).sum())
    # ... and the pieces one at a time, unpadded (the sum of their losses, in one call).
    pieces = [torch.tensor(piece) for piece in _expected_pieces(docs, 0, t)]
    expected_total = F.cross_entropy(table[torch.cat([p[:-1] for p in pieces])],
                                     torch.cat([p[1:] for p in pieces]), reduction="sum")
    expected_count = sum(len(p) - 1 for p in pieces)
    assert_equal(count, expected_count, what="number of targets")
    assert_close(total / count, expected_total / expected_count, what="token-weighted loss")


def test_dynamic_is_reproducible_and_resumable(data):
    """Same seed -> same batches; epochs differ; state_dict() / load_state_dict() resumes exactly."""
    docs = _token_docs([3, 9, 1, 14, 6, 2, 8, 11, 5, 4], 0)
    a = data.DynamicBatches(docs, 3, 6, eot_id=0, seed=1)
    b = data.DynamicBatches(docs, 3, 6, eot_id=0, seed=1)
    for _ in range(len(a) + 2):
        next(a)
    state = a.state_dict()
    rest = [next(a) for _ in range(len(a))]
    b.load_state_dict(json.loads(json.dumps(state)))
    for i, (u, v) in enumerate(zip(rest, [next(b) for _ in range(len(a))])):
        assert torch.equal(u.x, v.x) and torch.equal(u.pieces, v.pieces), f"batch {i} after resume differs"
    fresh = data.DynamicBatches(docs, 3, 6, eot_id=0, seed=1)
    orders = [[bt.pieces.tolist() for bt in fresh.epoch_batches(e)] for e in range(3)]
    assert orders[0] == [bt.pieces.tolist() for bt in data.DynamicBatches(docs, 3, 6, 0, seed=1).epoch_batches(0)]
    assert orders[0] != orders[1] or orders[1] != orders[2], "every epoch has the same order"


def _epoch_order_oracle(data, pieces, b, seed, epoch):
    """The contract's epoch, written out: randperm of the pieces, stable sort by length, groups of B,
    randperm of the groups, from one Generator seeded with batch_seed(seed, epoch)."""
    g = torch.Generator().manual_seed(data.batch_seed(seed, epoch))
    order = torch.randperm(len(pieces), generator=g).tolist()
    order.sort(key=lambda i: len(pieces[i]))
    groups = [order[i:i + b] for i in range(0, len(order), b)]
    return [groups[j] for j in torch.randperm(len(groups), generator=g).tolist()]


@given(lengths=doc_lengths, t=sizes(8), b=sizes(5), seed=seeds, epoch=st.integers(0, 3))
def test_dynamic_epoch_follows_the_documented_order(data, lengths, t, b, seed, epoch):
    """epoch_order(e) is the contract's shuffle / stable sort by length / group / shuffle of groups;
    pieces are the documented windows; iterating from epoch 0 serves exactly epoch_batches(0), (1), ..."""
    docs = _token_docs(lengths, seed)
    batcher = data.DynamicBatches(docs, b, t, eot_id=0, seed=seed)
    assert_equal([tuple(p.tolist()) for p in batcher.pieces], _expected_pieces(docs, 0, t), what="pieces")
    assert_equal(list(batcher.document_of), [d for d, doc in enumerate(docs) for _ in _expected_pieces([doc], 0, t)],
                 what="document_of (the document of each piece)")
    expected = _epoch_order_oracle(data, batcher.pieces, b, seed, epoch)
    assert_equal([o.tolist() for o in batcher.epoch_order(epoch)], expected, what=f"epoch_order({epoch})")
    served = [next(batcher) for _ in range(2 * len(batcher))]
    wanted = batcher.epoch_batches(0) + batcher.epoch_batches(1)
    for i, (got, want) in enumerate(zip(served, wanted)):
        assert_equal(got.pieces.tolist(), want.pieces.tolist(), what=f"pieces of next() number {i}")
    assert_equal(batcher.state_dict(), {"seed": seed, "epoch": 2, "index": 0}, what="state after two epochs")
    default = data.DynamicBatches(docs, b, t, eot_id=0)
    assert_equal(default.state_dict(), {"seed": 0, "epoch": 0, "index": 0}, what="state of a batcher without seed")
    assert_equal([o.tolist() for o in default.epoch_order(epoch)],
                 _epoch_order_oracle(data, default.pieces, b, 0, epoch), what="epoch_order without seed (default 0)")


def _fresh_at(data, docs, b, t, state):
    """The documented oracle: a FRESH batcher with the state's seed serves epoch_batches(epoch)[index:],
    then epoch_batches(epoch + 1), ..."""
    fresh = data.DynamicBatches(docs, b, t, eot_id=0, seed=state["seed"])
    epoch, index = state["epoch"], state["index"]
    while True:
        for batch in fresh.epoch_batches(epoch)[index:]:
            yield batch
        epoch, index = epoch + 1, 0


@given(lengths=st.lists(sizes(10, 0), min_size=1, max_size=8), t=sizes(6), b=sizes(3), seed=seeds,
       used=st.integers(0, 12), other_seed=seeds, epoch=st.integers(0, 2), index=st.integers(0, 4))
def test_dynamic_load_state_serves_what_a_fresh_batcher_would(data, lengths, t, b, seed, used, other_seed, epoch, index):
    """A DynamicBatches that has already served batches and then loads ANY state serves exactly what a
    fresh one at that state serves: epoch_batches(epoch)[index:] of the state's seed, then the next epochs."""
    docs = _token_docs(lengths, seed)
    batcher = data.DynamicBatches(docs, b, t, eot_id=0, seed=seed)
    for _ in range(used):
        next(batcher)
    index = index % len(batcher)
    for state in ({"seed": other_seed, "epoch": epoch, "index": index}, {"seed": seed, "epoch": epoch, "index": index}):
        batcher.load_state_dict(dict(state))
        assert_equal(batcher.state_dict(), state, what="state_dict() right after load_state_dict(state)")
        expected = _fresh_at(data, docs, b, t, state)
        for i in range(len(batcher) + 1):
            got, want = next(batcher), next(expected)
            assert_equal(got.pieces.tolist(), want.pieces.tolist(), what=f"pieces of batch {i} after loading {state}")
            assert_equal(got.x.tolist(), want.x.tolist(), what=f"x of batch {i} after loading {state}")


# --- loading documents --------------------------------------------------------------------------

@given(docs=documents, field=st.sampled_from(["text", "body"]))
def test_jsonl_round_trip(data, docs, field):
    """Documents written as JSONL (one object per line) load back equal, from any field name."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "docs.jsonl"
        lines = [json.dumps({field: d, "id": i}, ensure_ascii=i % 2 == 0) for i, d in enumerate(docs)]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        assert_equal(data.load_documents(path, field=field), docs, what="documents from JSONL")


@given(doc=texts)
@example(doc="a\r\nb\rc\n")
def test_text_file_is_one_document(data, doc):
    """A text file (no separator) is one document, read byte-exact (no newline translation)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "doc.txt"
        path.write_bytes(doc.encode("utf-8"))
        assert_equal(data.load_documents(str(path)), [doc], what="documents from a text file")


@given(docs=st.lists(texts.filter(lambda s: "@" not in s), min_size=1, max_size=5))
def test_text_file_with_separator(data, docs):
    """With separator=S, a text file is split on S."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "docs.txt"
        path.write_bytes("@@".join(docs).encode("utf-8"))
        assert_equal(data.load_documents(path, separator="@@"), docs, what="documents split on '@@'")


def test_directory_is_recursive_and_sorted(data, tmp_path):
    """A directory gives every *.txt file below it, recursively, sorted by path; other files are ignored."""
    files = {"b.txt": "second", "a.txt": "first", "sub/c.txt": "third", "sub/deeper/d.txt": "fourth",
             "notes.md": "ignored"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    assert_equal(data.load_documents(tmp_path), ["first", "second", "third", "fourth"],
                 what="documents from a directory")


def test_custom_datasets(data):
    """A sequence (__len__ + __getitem__) or an iterable of str is a dataset; other items are errors."""
    class Docs:
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return f"doc {i}"

    assert_equal(data.load_documents(Docs()), ["doc 0", "doc 1", "doc 2"], what="sequence dataset")
    assert_equal(data.load_documents(iter(["x", "y"])), ["x", "y"], what="iterable dataset")
    with raises_clear(TypeError, "1"):
        data.load_documents(["ok", 5])


def test_jsonl_errors_name_file_and_line(data, tmp_path):
    """A broken JSONL line, a missing field or a non-object raises ValueError naming the file and line."""
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"\n', encoding="utf-8")
    with raises_clear(ValueError, "broken.jsonl", "line 3"):
        data.load_documents(path)
    path.write_text('{"text": "a"}\n{"body": "b"}\n', encoding="utf-8")
    with raises_clear(ValueError, "broken.jsonl", "line 2", "text"):
        data.load_documents(path)
    path.write_text('{"text": "a"}\n[1, 2]\n', encoding="utf-8")
    with raises_clear(ValueError, "broken.jsonl", "line 2"):
        data.load_documents(path)


def test_empty_directory_and_missing_path(data, tmp_path):
    """A directory without .txt files is a ValueError naming it; a missing path is FileNotFoundError."""
    (tmp_path / "empty").mkdir()
    with raises_clear(ValueError, "empty"):
        data.load_documents(tmp_path / "empty")
    with raises_clear(FileNotFoundError, "nowhere"):
        data.load_documents(tmp_path / "nowhere.txt")


# --- tokenizing and the cache -------------------------------------------------------------------

def test_tokenize_documents(data):
    """tokenize_documents gives each document's ids as a 1-D long tensor (no cache_dir: no files)."""
    tok = ByteTokenizer(offset=1)
    got = data.tokenize_documents(["hé", "", "ok"], tok)
    assert all(t.dtype == torch.long for t in got), "token tensors must be torch.long"
    assert_equal([t.tolist() for t in got], [tok.encode(d) for d in ["hé", "", "ok"]], what="token ids")


def test_documents_are_encoded_as_ordinary_text(data):
    """A special token's string inside a document is ordinary text (encode(doc, disallowed_special=())):
    its bytes, never the special id, and no error."""
    docs = [f"a{EOT}b", EOT, "plain"]
    got = data.tokenize_documents(docs, ByteTokenizer())
    assert_equal([t.tolist() for t in got], [list(d.encode()) for d in docs],
                 what="ids of documents holding <|endoftext|>")


def test_cache_is_used_and_invalidated(data, tmp_path):
    """A second load reads the cache (encode not called); new data or a new tokenizer is re-encoded."""
    docs = ["one story", "another story", ""]
    tok = ByteTokenizer()
    first = data.tokenize_documents(docs, tok, cache_dir=tmp_path / "cache")
    assert tok.calls > 0, "encode was never called on the first load"
    calls = tok.calls
    second = data.tokenize_documents(list(docs), ByteTokenizer(), cache_dir=tmp_path / "cache")
    assert_equal([t.tolist() for t in second], [t.tolist() for t in first], what="cached ids")
    spy = ByteTokenizer()
    data.tokenize_documents(docs, spy, cache_dir=tmp_path / "cache")
    assert spy.calls == 0, f"second load called encode {spy.calls} times: the cache was not used"
    assert tok.calls == calls
    other_tok = ByteTokenizer(offset=3)
    got = data.tokenize_documents(docs, other_tok, cache_dir=tmp_path / "cache")
    assert_equal([t.tolist() for t in got], [ByteTokenizer(3).encode(d) for d in docs],
                 what="ids after a tokenizer change (cache must be invalidated)")
    new_docs = ["one stork", "another story", ""]  # same lengths, other text
    got = data.tokenize_documents(new_docs, ByteTokenizer(), cache_dir=tmp_path / "cache")
    assert_equal([t.tolist() for t in got], [ByteTokenizer().encode(d) for d in new_docs],
                 what="ids after a data change (cache must be invalidated)")
    assert not any(p.suffix == ".pkl" for p in (tmp_path / "cache").iterdir()), "the cache must not pickle"


@given(text=st.text(st.characters(blacklist_categories=("Cs",)), min_size=2, max_size=12), cut=st.integers(1, 11),
       other=st.integers(1, 11))
def test_cache_key_sees_document_boundaries(data, tmp_path_factory, text, cut, other):
    """The same text split at other document boundaries is another cache key, and tokenize_documents
    with a cache gives each split its own per-document ids."""
    cut, other = cut % len(text) or 1, other % len(text) or 1
    a, b = [text[:cut], text[cut:]], [text[:other], text[other:]]
    if cut != other:
        assert data.cache_key(a, ByteTokenizer()) != data.cache_key(b, ByteTokenizer()), \
            f"cache_key({a!r}) == cache_key({b!r}): document boundaries are not in the key"
    assert data.cache_key(a, ByteTokenizer()) != data.cache_key(["".join(a)], ByteTokenizer()), \
        "two documents and their concatenation share a cache key"
    assert data.cache_key(a, ByteTokenizer()) != data.cache_key(a, ByteTokenizer(offset=1)), "tokenizer not in the key"
    assert_equal(data.cache_key(list(a), ByteTokenizer()), data.cache_key(a, ByteTokenizer()), what="cache_key twice")
    cache = tmp_path_factory.mktemp("cache")
    for docs in (a, b, ["".join(a)], a):
        got = data.tokenize_documents(docs, ByteTokenizer(), cache_dir=cache)
        assert_equal([t.tolist() for t in got], [list(d.encode()) for d in docs], what=f"cached ids of {docs!r}")


def test_load_documents_defaults(data, tmp_path):
    """Without field, a JSONL file's "text" field is read; without separator, a text file is one document."""
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "one", "body": "x"}\n{"body": "y", "text": "two"}\n', encoding="utf-8")
    assert_equal(data.load_documents(path), ["one", "two"], what="documents of a JSONL file without field")
    text = tmp_path / "doc.txt"
    text.write_text("a\n\nb\n\n", encoding="utf-8")
    assert_equal(data.load_documents(text), ["a\n\nb\n\n"], what="documents of a text file without separator")


# --- errors -------------------------------------------------------------------------------------

def test_bad_arguments(data):
    """Bad sizes, seeds and streams raise clear errors naming the argument."""
    stream = torch.arange(10)
    with raises_clear(ValueError, "batch_size"):
        data.FixedLengthBatches(stream, 0, 4)
    with raises_clear(ValueError, "context_length"):
        data.FixedLengthBatches(stream, 2, 0)
    with raises_clear(ValueError, "context_length"):
        data.FixedLengthBatches(stream, 2, 10)  # needs N >= T + 1
    with raises_clear(TypeError, "stream"):
        data.FixedLengthBatches(stream.float(), 2, 4)
    with raises_clear(ValueError, "seed"):
        data.FixedLengthBatches(stream, 2, 4, seed=-1)
    with raises_clear(ValueError, "context_length"):
        data.evaluation_batches(stream, 2, 0)
    with raises_clear(ValueError, "batch_size"):
        data.DynamicBatches([torch.arange(3)], 0, 4, eot_id=0)
    with raises_clear(ValueError, "token_docs"):
        data.DynamicBatches([], 2, 4, eot_id=0)
    with raises_clear(ValueError, "eot_id"):
        data.token_stream([torch.arange(3)], -1)


# --- the documented formulas: batch_seed, cache_key, the cache file ------------------------------

def _batch_seed_formula(seed, step):
    return (seed * 1_000_003 + step * 7919 + 12345) % (2**63 - 1)


def _hitting(total):
    """A (seed, step) whose seed * 1_000_003 + step * 7919 + 12345 is exactly ``total``."""
    for seed in range(7919):  # 1_000_003 is invertible mod the prime 7919: some seed < 7919 works
        rest = total - 12345 - seed * 1_000_003
        if rest >= 0 and rest % 7919 == 0:
            return seed, rest // 7919
    raise AssertionError(f"no (seed, step) reaches {total}")


@functools.cache
def _boundary_cases():
    return [_hitting(total) for total in (2**62 - 2, 2**62 - 1, 2**62, 2**63 - 2, 2**63 - 1, 2**63, 2**64 - 1, 2**64)]


@given(seed=st.one_of(st.integers(0, 1000), st.integers(0, 2**70)),
       step=st.one_of(st.integers(0, 1000), st.integers(0, 2**40)))
@example(seed=0, step=0)
def test_batch_seed_is_the_documented_formula(data, seed, step):
    """batch_seed(seed, step) == (seed * 1_000_003 + step * 7919 + 12345) % (2**63 - 1) for all ints >= 0,
    also where the sum crosses 2**62 and 2**63 (a valid manual_seed: 0 <= value < 2**63 - 1)."""
    cases = [(seed, step)] + _boundary_cases()
    for s, k in cases:
        got, want = data.batch_seed(s, k), _batch_seed_formula(s, k)
        assert isinstance(got, int) and got == want, \
            f"batch_seed({s}, {k}) (sum {s * 1_000_003 + k * 7919 + 12345}): expected {want}, got {got!r}"
        assert 0 <= got < 2**63 - 1, f"batch_seed({s}, {k}) = {got} is outside [0, 2**63 - 1)"


def _cache_key_formula(docs, tokenizer):
    h = hashlib.sha256()
    for doc in docs:
        raw = doc.encode("utf-8")
        h.update(len(raw).to_bytes(8, "little"))
        h.update(raw)
    h.update(b"tokenizer, documents as ordinary text")
    h.update(json.dumps(tokenizer.to_dict(), sort_keys=True).encode("utf-8"))
    return h.hexdigest()


class DictTokenizer(ByteTokenizer):
    """A ByteTokenizer whose to_dict() is a given dict (its key order included)."""

    def __init__(self, fingerprint):
        super().__init__()
        self.fingerprint = fingerprint

    def to_dict(self):
        return self.fingerprint


@given(docs=st.lists(texts, max_size=4), offset=st.integers(0, 3))
@example(docs=[], offset=0)
@example(docs=["a" * 300, ""], offset=1)
def test_cache_key_is_the_documented_sha256(data, docs, offset):
    """cache_key = sha256(for each document: its UTF-8 byte count as 8 bytes little-endian, then the bytes;
    then b"tokenizer, documents as ordinary text"; then json.dumps(to_dict(), sort_keys=True)).hexdigest()."""
    tok = ByteTokenizer(offset)
    assert_equal(data.cache_key(docs, tok), _cache_key_formula(docs, tok), what=f"cache_key({docs!r})")


def test_cache_key_ignores_the_key_order_of_to_dict(data):
    """to_dict() enters the key sorted (json.dumps(sort_keys=True)): the same dict in another key order,
    nested dicts included, is the same cache key; another value is another key."""
    a = {"vocab": [1, 2], "kind": "bpe", "merges": {"z": 1, "b": 2}}
    b = {"merges": {"b": 2, "z": 1}, "kind": "bpe", "vocab": [1, 2]}
    c = {"merges": {"b": 2, "z": 3}, "kind": "bpe", "vocab": [1, 2]}
    key_a, key_b = data.cache_key(["doc"], DictTokenizer(a)), data.cache_key(["doc"], DictTokenizer(b))
    assert key_a == key_b, f"same to_dict() in another key order: keys {key_a} and {key_b} differ"
    assert key_a != data.cache_key(["doc"], DictTokenizer(c)), "another to_dict() value gave the same key"


@given(docs=st.lists(texts, max_size=5), offset=st.integers(0, 3))
@example(docs=[], offset=0)
@example(docs=[EOT, f"a{EOT}"], offset=1)
@settings(max_examples=20)
def test_cache_file_holds_int32_tokens_and_int64_offsets(data, tmp_path_factory, docs, offset):
    """The cache is cache_dir/tokens-<cache_key>.npz (cache_dir and missing parents created): tokens int32
    (all documents concatenated, empty for no document), offsets int64 [0, end of doc 0, ...]; a reload
    gives the same ids without encode. Documents are ordinary text (a special token's string too)."""
    tok = ByteTokenizer(offset)
    cache = tmp_path_factory.mktemp("cache") / "missing" / "parents"
    got = data.tokenize_documents(docs, tok, cache_dir=cache)
    ids = [tok.encode(d, disallowed_special=()) for d in docs]
    assert_equal([t.tolist() for t in got], ids, what="ids on the first (encoding) call")
    names = sorted(p.name for p in cache.iterdir())
    assert_equal(names, [f"tokens-{data.cache_key(docs, tok)}.npz"], what="files in cache_dir")
    with np.load(cache / names[0], allow_pickle=False) as saved:
        tokens, offsets = saved["tokens"], saved["offsets"]
    assert tokens.dtype == np.int32 and offsets.dtype == np.int64, \
        f"cache dtypes: expected tokens int32, offsets int64, got {tokens.dtype}, {offsets.dtype}"
    assert_equal(tokens.tolist(), [i for doc in ids for i in doc], what="cached tokens (documents concatenated)")
    assert_equal(offsets.tolist(), [0] + [sum(map(len, ids[:k + 1])) for k in range(len(ids))],
                 what="cached offsets")
    spy = ByteTokenizer(offset)
    again = data.tokenize_documents(docs, spy, cache_dir=cache)
    assert spy.calls == 0, f"reload called encode {spy.calls} times"
    assert_equal([t.tolist() for t in again], ids, what="ids read back from the cache")


_UNPICKLED = []


def _record_unpickling():
    _UNPICKLED.append(True)
    return 7


class _PicklePayload:
    """An object whose unpickling is recorded in _UNPICKLED."""

    def __reduce__(self):
        return (_record_unpickling, ())


def test_cache_is_never_unpickled(data, tmp_path):
    """A cache file holding pickled (object) arrays is refused (ValueError naming pickle), never unpickled."""
    docs, tok = ["ab"], ByteTokenizer()
    path = tmp_path / f"tokens-{data.cache_key(docs, tok)}.npz"
    np.savez(path, tokens=np.array([_PicklePayload(), _PicklePayload()], dtype=object),
             offsets=np.array([0, 2], dtype=np.int64))
    _UNPICKLED.clear()
    with raises_clear(ValueError, "pickle"):
        data.tokenize_documents(docs, tok, cache_dir=tmp_path)
    assert not _UNPICKLED, "tokenize_documents unpickled the cache file (np.load must use allow_pickle=False)"


# --- boundaries and errors of the batchers ------------------------------------------------------

def _value_error_message(call):
    """The message of the ValueError that ``call()`` raises (a stub's NotImplementedError passes through)."""
    with pytest.raises(ValueError) as info:
        call()
    return str(info.value)


@pytest.mark.parametrize("t", [1, 2, 10, 11])
def test_fixed_needs_t_plus_one_tokens(data, t):
    """N = T + 1 tokens is accepted (one start, 0); N = T is a ValueError naming context_length and T + 1."""
    batcher = data.FixedLengthBatches(torch.arange(t + 1) + 5, 2, t)
    assert_equal(batcher.num_starts, 1, what=f"num_starts of N = T + 1 = {t + 1} tokens")
    x, y = batcher.batch(0)
    assert_equal(x.tolist(), [list(range(5, t + 5))] * 2, what="x of the only window")
    assert_equal(y.tolist(), [list(range(6, t + 6))] * 2, what="y of the only window")
    message = _value_error_message(lambda: data.FixedLengthBatches(torch.arange(t) + 5, 2, t))
    assert "context_length" in message and re.search(rf"(?<![\d.]){t + 1}(?![\d.])", message), \
        f"N = T = {t}: the error should name context_length and the required T + 1 = {t + 1}, got {message!r}"


def test_streams_must_be_one_dimensional(data):
    """A 0-d or 2-D stream is a ValueError naming stream and its dimensions, in FixedLengthBatches and
    evaluation_batches."""
    for bad in (torch.tensor(5), torch.arange(24).reshape(2, 12), torch.arange(24).reshape(1, 24)):
        for what, call in (("FixedLengthBatches", lambda: data.FixedLengthBatches(bad, 2, 4)),
                           ("evaluation_batches", lambda: data.evaluation_batches(bad, 2, 4))):
            message = _value_error_message(call)
            assert "stream" in message and re.search(r"dim|1-d|rank", message, re.IGNORECASE), \
                f"{what} of a stream of shape {tuple(bad.shape)}: the error should name stream and its " \
                f"dimensions, got {message!r}"


def test_evaluation_needs_two_tokens(data):
    """evaluation_batches needs N >= 2 tokens (one target): N = 2 is one padded window, N = 1 or 0 is a
    ValueError naming stream."""
    got = data.evaluation_batches(torch.tensor([7, 8]), 3, 4)
    assert_equal([(x.tolist(), y.tolist()) for x, y in got], [([[7, 8, 0, 0]], [[8, IGNORE, IGNORE, IGNORE]])],
                 what="evaluation_batches of 2 tokens, T = 4")
    for n in (1, 0):
        with raises_clear(ValueError, "stream"):
            data.evaluation_batches(torch.arange(n), 3, 4)


def test_padding_ids_are_the_documented_constants(data):
    """Padded inputs are PAD_ID = 0 and padded targets IGNORE_INDEX = -100, in evaluation and dynamic batches."""
    [(x, y)] = data.evaluation_batches(torch.tensor([5, 6, 7]), 1, 4)
    assert_equal(x.tolist(), [[5, 6, 7, 0]], what="x of a short evaluation window (pad 0)")
    assert_equal(y.tolist(), [[6, 7, IGNORE, IGNORE]], what="y of a short evaluation window (pad -100)")
    batch = data.DynamicBatches([torch.tensor([3]), torch.tensor([4, 5, 6])], 2, 8, eot_id=9).collate(
        torch.tensor([0, 1]))
    assert_equal(batch.x.tolist(), [[9, 3, 0, 0], [9, 4, 5, 6]], what="x of a padded dynamic batch (pad 0)")
    assert_equal(batch.y.tolist(), [[3, 9, IGNORE, IGNORE], [4, 5, 6, 9]], what="y of a padded dynamic batch")
    assert_equal((data.PAD_ID, data.IGNORE_INDEX), (0, IGNORE), what="(PAD_ID, IGNORE_INDEX)")


def test_dynamic_long_epoch_rolls_over(data):
    """After the last batch of an epoch of 300 batches (more than small cached ints), next() moves to
    (epoch + 1, index 0) and serves epoch_batches(epoch + 1)[0]."""
    docs = [torch.tensor([i % 7 + 1]) for i in range(300)]
    batcher = data.DynamicBatches(docs, 1, 4, eot_id=0, seed=3)
    assert_equal(len(batcher), 300, what="batches per epoch (300 pieces, B = 1)")
    served = [next(batcher) for _ in range(301)]
    assert_equal(batcher.state_dict(), {"seed": 3, "epoch": 1, "index": 1}, what="state after 301 next()")
    assert_equal(served[300].pieces.tolist(), batcher.epoch_batches(1)[0].pieces.tolist(),
                 what="pieces of the first batch after the 300-batch epoch")


# --- loading documents: separators, suffixes, dataset protocol ------------------------------------

class _EmptyStr(str):
    """A str subclass: an empty one is not the interned "" object."""


def test_separator_must_be_a_non_empty_str(data, tmp_path):
    """separator is None or a non-empty str: "" (any empty str) or a non-str is a ValueError naming separator,
    whatever the source; a one-character str (also a str subclass) splits a text file."""
    path = tmp_path / "doc.txt"
    path.write_bytes(b"a@b")
    for bad in ("", _EmptyStr(""), 5, b"@"):
        for source in (["a", "b"], path):
            with raises_clear(ValueError, "separator"):
                data.load_documents(source, separator=bad)
    assert_equal(data.load_documents(path, separator="@"), ["a", "b"], what="documents split on '@'")
    assert_equal(data.load_documents(path, separator=_EmptyStr("@")), ["a", "b"], what="split on a str subclass")
    assert_equal(data.load_documents(["a@b"], separator="@"), ["a@b"], what="a dataset's items (never split)")


def test_only_jsonl_suffix_is_jsonl(data, tmp_path):
    """Only a .jsonl file is JSONL: a file without suffix or with .json, .csv, .dat, .a is one text document."""
    content = '{"text": "x"}\n{"text": "y"}\n'
    for name in ("doc", "doc.json", "doc.csv", "doc.dat", "doc.a", "doc.jsonl.txt"):
        path = tmp_path / name
        path.write_bytes(content.encode())
        assert_equal(data.load_documents(path), [content], what=f"documents of the text file {name!r}")


def test_dataset_protocol_needs_len_and_getitem(data):
    """Only an object with both __len__ and __getitem__ is indexed; a sized or an indexable iterable
    lacking the other is read with list(source)."""
    class Sized:
        def __len__(self):
            return 2

        def __iter__(self):
            return iter(["s0", "s1"])

    class Indexable:
        def __getitem__(self, i):
            raise AssertionError("indexed without __len__")

        def __iter__(self):
            return iter(["i0"])

    assert_equal(data.load_documents(Sized()), ["s0", "s1"], what="sized iterable without __getitem__")
    assert_equal(data.load_documents(Indexable()), ["i0"], what="iterable with __getitem__ but no __len__")
    assert_equal(data.load_documents({"only"}), ["only"], what="a set")
