"""Spec of ``checkpoint``: ``save_checkpoint``, ``load_checkpoint``, ``load_model``, RNG state helpers."""

import builtins
import contextlib
import hashlib
import json
import os
import pickle
import random
import shutil
import sys
import threading
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from .support import assert_equal, file_size_limit, randint, raises_clear, seed_all, seeds

TEXT = "the cat sat on the mat. the dog sat on the log. " * 4


@pytest.fixture(scope="module")
def checkpoint(impl):
    return impl.component("checkpoint")


def _model(impl, seed=0, **overrides):
    model = impl.component("model")
    seed_all(seed)
    cfg = dict(vocab_size=270, context_length=8, n_layers=1, d_model=8, n_heads=2, dropout=0.1)
    cfg.update(overrides)
    return model.TransformerLM(model.ModelConfig(**cfg))


def _tokenizer(impl):
    tok = impl.component("tokenizer")
    return tok.Tokenizer.train(TEXT, 270, special_tokens=[tok.ENDOFTEXT])


def _trained(impl, seed, steps=2, **overrides):
    """A model, an AdamW that took ``steps`` steps on it, and the data it used."""
    optim = impl.component("optim")
    model = _model(impl, seed, **overrides)
    opt = optim.AdamW(optim.param_groups(model, 0.1), lr=1e-2)
    for s in range(steps):
        ids = randint(0, 270, (2, 8), seed + s)
        _, loss = model(ids, ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_weights(got, expected, what):
    assert_equal(sorted(got), sorted(expected), what=f"{what}: state_dict keys")
    for k in expected:
        assert torch.equal(got[k], expected[k]), f"{what}: {k} differs"


def _assert_same_tree(got, expected, what):
    if isinstance(expected, torch.Tensor):
        assert isinstance(got, torch.Tensor), f"{what}: expected a tensor, got {type(got).__name__}"
        assert got.dtype == expected.dtype and torch.equal(got.cpu(), expected.cpu()), f"{what}: tensor differs"
    elif isinstance(expected, dict):
        assert isinstance(got, dict), f"{what}: expected a dict, got {type(got).__name__}"
        assert_equal(sorted(map(str, got)), sorted(map(str, expected)), what=f"{what}: keys")
        for k in expected:
            _assert_same_tree(got[k], expected[k], f"{what}[{k!r}]")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(expected), f"{what}: expected {expected!r}, got {got!r}"
        for i, (a, b) in enumerate(zip(got, expected)):
            _assert_same_tree(a, b, f"{what}[{i}]")
    else:
        assert_equal(got, expected, what=what)


@given(seed=seeds, tie=st.booleans())
@settings(max_examples=5)
def test_round_trip(checkpoint, impl, tmp_path_factory, seed, tie):
    """save then load gives identical weights, step, optimizer state, RNG state, configs and tokenizer."""
    path = tmp_path_factory.mktemp("ckpt") / "run"
    model, opt = _trained(impl, seed, tie_weights=tie)
    tokenizer = _tokenizer(impl)
    torch.manual_seed(seed)
    rng = checkpoint.get_rng_state()
    torch.rand(3)  # the global RNG moves on: the checkpoint must hold the state it was given
    data_state = {"position": 17, "generator": torch.Generator().manual_seed(seed).get_state(), "order": [3, 1, 2]}
    train_config = {"lr": 0.01, "steps": 10, "name": "tiny", "grad_clip": None}
    checkpoint.save_checkpoint(path, model, step=7, optimizer=opt, tokenizer=tokenizer, rng_state=rng,
                               data_state=data_state, train_config=train_config, extra={"note": "hi"})
    ckpt = checkpoint.load_checkpoint(path)
    _assert_same_weights(_state(ckpt.model), _state(model), "weights")
    assert_equal(ckpt.step, 7, what="step")
    assert_equal(ckpt.model_config.to_dict(), model.config.to_dict(), what="model config")
    assert_equal(ckpt.tokenizer.to_dict(), tokenizer.to_dict(), what="tokenizer")
    _assert_same_tree(ckpt.rng_state["torch"], rng["torch"], "rng_state['torch']")
    _assert_same_tree(ckpt.data_state, data_state, "data_state")
    _assert_same_tree(ckpt.train_config, train_config, "train_config")
    _assert_same_tree(ckpt.extra, {"note": "hi"}, "extra")
    # The optimizer state, loaded into a fresh optimizer, is the one saved.
    optim = impl.component("optim")
    fresh = optim.AdamW(optim.param_groups(ckpt.model, 0.1), lr=1e-2)
    fresh.load_state_dict(ckpt.optimizer_state)
    _assert_same_tree(fresh.state_dict(), opt.state_dict(), "optimizer state")


@pytest.mark.parametrize("tie", [True, False])
def test_tied_weights_stay_tied(checkpoint, impl, tmp_path, tie):
    """A tied model loads with ONE shared tensor (same parameter count); an untied one stays untied."""
    model, opt = _trained(impl, 0, tie_weights=tie)
    checkpoint.save_checkpoint(tmp_path / "c", model, step=2, optimizer=opt)
    loaded = checkpoint.load_checkpoint(tmp_path / "c").model
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert_equal(count(loaded), count(model), what="number of (distinct) parameters after load")
    ids = randint(0, 270, (1, 8), 5)
    loaded.eval(), model.eval()
    assert torch.equal(loaded(ids)[0], model(ids)[0]), "loaded model gives different logits"


def test_resumed_optimizer_continues_exactly(checkpoint, impl, tmp_path):
    """Weights + optimizer state loaded from a checkpoint continue training bit-identically."""
    optim = impl.component("optim")
    model, opt = _trained(impl, 3)
    checkpoint.save_checkpoint(tmp_path / "c", model, step=2, optimizer=opt)
    ckpt = checkpoint.load_checkpoint(tmp_path / "c")
    opt2 = optim.AdamW(optim.param_groups(ckpt.model, 0.1), lr=1e-2)
    opt2.load_state_dict(ckpt.optimizer_state)
    for m, o in ((model, opt), (ckpt.model, opt2)):
        m.eval()
        ids = randint(0, 270, (2, 8), 99)
        o.zero_grad()
        m(ids, ids)[1].backward()
        o.step()
    _assert_same_weights(_state(ckpt.model), _state(model), "weights one step after resuming")


def test_overwrite(checkpoint, impl, tmp_path):
    """Saving again to the same path replaces the checkpoint (the later step and weights load)."""
    model, opt = _trained(impl, 1)
    checkpoint.save_checkpoint(tmp_path / "c", model, step=1, optimizer=opt)
    model2, opt2 = _trained(impl, 2, steps=3)
    checkpoint.save_checkpoint(tmp_path / "c", model2, step=3, optimizer=opt2)
    ckpt = checkpoint.load_checkpoint(tmp_path / "c")
    assert_equal(ckpt.step, 3, what="step after overwriting")
    _assert_same_weights(_state(ckpt.model), _state(model2), "weights after overwriting")


class Crash(Exception):
    pass


@pytest.mark.parametrize("where", ["optimizer.state_dict", "tokenizer.to_dict"])
def test_interrupted_save_keeps_previous(checkpoint, impl, tmp_path, monkeypatch, where):
    """A save that dies halfway leaves the previous checkpoint intact and loadable."""
    model, opt = _trained(impl, 1)
    tokenizer = _tokenizer(impl)
    checkpoint.save_checkpoint(tmp_path / "c", model, step=1, optimizer=opt, tokenizer=tokenizer)
    before = _state(model)
    model2, opt2 = _trained(impl, 2, steps=3)
    target = opt2 if where.startswith("optimizer") else tokenizer

    def crash(*args, **kwargs):
        raise Crash("simulated crash in the middle of save_checkpoint")

    monkeypatch.setattr(target, where.split(".")[1], crash)
    with pytest.raises(Crash):
        checkpoint.save_checkpoint(tmp_path / "c", model2, step=3, optimizer=opt2, tokenizer=tokenizer)
    monkeypatch.undo()
    ckpt = checkpoint.load_checkpoint(tmp_path / "c")
    assert_equal(ckpt.step, 1, what="step after an interrupted save")
    _assert_same_weights(_state(ckpt.model), before, "weights after an interrupted save")


def _file(path, name):
    """The one file called ``name`` inside the checkpoint ``path`` (wherever the layout puts it)."""
    found = [p for p in Path(path).rglob(name) if p.is_file()]
    assert len(found) == 1, f"a checkpoint must hold exactly one {name}, found {found}"
    return found[0]


_DAMAGES = [(name, damage) for name in ("model.safetensors", "state.safetensors", "checkpoint.json")
            for damage in ("truncate", "flip-last-tensor-byte", "delete")
            if name.endswith(".safetensors") or not damage.startswith("flip")]  # JSON: see the field edits


@pytest.mark.parametrize("name, damage", _DAMAGES)
def test_corrupt_checkpoint_raises_clear_error(checkpoint, impl, tmp_path, name, damage):
    """A truncated, altered or missing file raises a clear error naming the file, never loads garbage."""
    model, opt = _trained(impl, 0)
    checkpoint.save_checkpoint(tmp_path / "c", model, step=2, optimizer=opt)
    file = _file(tmp_path / "c", name)
    data = file.read_bytes()
    if damage == "truncate":
        file.write_bytes(data[: len(data) // 2])
    elif damage.startswith("flip"):  # safetensors: header, then the raw tensor bytes, the last at the end
        file.write_bytes(data[:-1] + bytes([data[-1] ^ 0x55]))
    else:
        file.unlink()
    errors = (ValueError, FileNotFoundError) if damage == "delete" else ValueError
    with raises_clear(errors, name):
        checkpoint.load_checkpoint(tmp_path / "c")


def _meta_sha256(meta):
    """The contract's hash of checkpoint.json: sha256 of the canonical JSON of every other field."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("ascii")).hexdigest()


def _edit_json(path, edit, rehash=False):
    """Apply ``edit(meta)`` to the checkpoint's JSON; with ``rehash``, record the new meta_sha256."""
    file = _file(path, "checkpoint.json")
    meta = json.loads(file.read_text(encoding="utf-8"))
    edit(meta)
    if rehash:
        meta["meta_sha256"] = _meta_sha256(meta)
    file.write_text(json.dumps(meta, indent=3), encoding="utf-8")
    return file


def _first_pair(tree):
    """The first [key, value] pair of an encoded dict ({"__dict__": [[k, v], ...]})."""
    return tree["__dict__"][0]


def _python_rng(meta):
    """The saved python ``random`` state [version, internal ints, gauss] inside the encoded rng dict."""
    return next(v for k, v in meta["rng"]["__dict__"] if k == "python")


# Each edit changes one field the CONTRACT fixes, keeping the JSON valid (never a byte offset of one layout).
_EDITS = {
    "step": lambda m: m.update(step=m["step"] + 1),
    "model_config.dropout": lambda m: m["model_config"].update(dropout=0.25),
    "tokenizer merge": lambda m: m["tokenizer"]["merges"].__setitem__(0, m["tokenizer"]["merges"][1]),
    "train_config lr": lambda m: _first_pair(m["train_config"]).__setitem__(1, 0.5),
    "extra": lambda m: _first_pair(m["extra"]).__setitem__(1, "edited"),
    "model.safetensors sha256": lambda m: m["sha256"].update({"model.safetensors": "0" * 64}),
    "python rng state": lambda m: _python_rng(m)[1].__setitem__(0, _python_rng(m)[1][0] ^ 1),
    "tied names": lambda m: m["tied"].clear(),
}


@pytest.mark.parametrize("field", list(_EDITS))
def test_edited_json_field_is_refused(checkpoint, impl, tmp_path, field):
    """Editing any field of checkpoint.json (step, a config value, a merge, a hash...) is refused, naming the file."""
    model, opt = _trained(impl, 0)
    checkpoint.save_checkpoint(tmp_path / "c", model, step=2, optimizer=opt, tokenizer=_tokenizer(impl),
                               train_config={"lr": 0.01}, extra={"note": "hi"})
    _edit_json(tmp_path / "c", _EDITS[field])
    with raises_clear(checkpoint.CheckpointError, "checkpoint.json"):
        checkpoint.load_checkpoint(tmp_path / "c")


def test_reformatted_json_still_loads(checkpoint, impl, tmp_path):
    """checkpoint.json's integrity is over its content: rewritten with other key order and indentation, it loads."""
    model, opt = _trained(impl, 0)
    tokenizer = _tokenizer(impl)
    checkpoint.save_checkpoint(tmp_path / "c", model, step=2, optimizer=opt, tokenizer=tokenizer)
    file = _file(tmp_path / "c", "checkpoint.json")
    meta = json.loads(file.read_text(encoding="utf-8"))
    file.write_text(json.dumps(dict(reversed(list(meta.items()))), indent=7, ensure_ascii=False), encoding="utf-8")
    ckpt = checkpoint.load_checkpoint(tmp_path / "c")
    assert_equal(ckpt.step, 2, what="step")
    assert_equal(ckpt.tokenizer.to_dict(), tokenizer.to_dict(), what="tokenizer")
    _assert_same_weights(_state(ckpt.model), _state(model), "weights")


def _drop(key):
    return lambda m: m.pop(key)


def _set(key, value):
    return lambda m: m.__setitem__(key, value)


# (edit applied AND re-hashed, so that only the field check can catch it; words the error must name)
_BAD_FIELDS = {
    "missing step": (_drop("step"), "step"),
    "missing model_config": (_drop("model_config"), "model_config"),
    "missing tied": (_drop("tied"), "tied"),
    "missing tokenizer": (_drop("tokenizer"), "tokenizer"),
    "missing train_config": (_drop("train_config"), "train_config"),
    "null model_config": (_set("model_config", None), "model_config"),
    "null tied": (_set("tied", None), "tied"),
    "null step": (_set("step", None), "step"),
    "step a string": (_set("step", "2"), "step"),
    "step a float": (_set("step", 2.5), "step"),
    "step a bool": (_set("step", True), "step"),
    "negative step": (_set("step", -1), "step"),
    "tied a list": (_set("tied", ["lm_head.weight"]), "tied"),
    "tokenizer a string": (_set("tokenizer", "bpe"), "tokenizer"),
    "tokenizer merges not pairs": (lambda m: m["tokenizer"].update(merges="abc"), "merges"),
    "train_config a number": (_set("train_config", 3), "train_config"),
    "unknown model_config key": (lambda m: m["model_config"].update(no_such_field=1), "no_such_field"),
    "model_config dropout out of range": (lambda m: m["model_config"].update(dropout=2.0), "dropout"),
    "model_config d_model a string": (lambda m: m["model_config"].update(d_model="8"), "d_model"),
    "model_config missing vocab_size": (lambda m: m["model_config"].pop("vocab_size"), "vocab_size"),
}


@pytest.mark.parametrize("case", list(_BAD_FIELDS))
def test_bad_json_field_raises_clear_error(checkpoint, impl, tmp_path, case):
    """A checkpoint.json field that is missing, null, of the wrong type or out of range is a CheckpointError naming the file and the field."""
    model, opt = _trained(impl, 0)
    checkpoint.save_checkpoint(tmp_path / "c", model, step=2, optimizer=opt, tokenizer=_tokenizer(impl),
                               train_config={"lr": 0.01})
    edit, word = _BAD_FIELDS[case]
    _edit_json(tmp_path / "c", edit, rehash=True)
    with raises_clear(checkpoint.CheckpointError, "checkpoint.json", word):
        checkpoint.load_checkpoint(tmp_path / "c")


def test_model_config_keeps_every_field(checkpoint, impl, tmp_path):
    """Every field of ModelConfig.to_dict(), whatever fields it has, comes back equal (non-default values)."""
    model = impl.component("model")
    cfg = model.ModelConfig(vocab_size=20, context_length=6, n_layers=2, d_model=8, n_heads=2, dropout=0.3,
                            tie_weights=False)
    checkpoint.save_checkpoint(tmp_path / "c", model.TransformerLM(cfg), step=0)
    got = checkpoint.load_checkpoint(tmp_path / "c").model_config
    assert_equal(got.to_dict(), cfg.to_dict(), what="model config after the round trip")
    assert_equal(json.loads(_file(tmp_path / "c", "checkpoint.json").read_text())["model_config"], cfg.to_dict(),
                 what="model_config in checkpoint.json (ModelConfig.to_dict())")


def test_missing_checkpoint(checkpoint, impl, tmp_path):
    """Loading a path with no checkpoint raises FileNotFoundError naming the path."""
    checkpoint.load_checkpoint  # the component must exist before the test can be meaningful
    with raises_clear(FileNotFoundError, "nowhere"):
        checkpoint.load_checkpoint(tmp_path / "nowhere")


def test_loading_never_unpickles(checkpoint, impl, tmp_path, monkeypatch):
    """load_checkpoint works with torch.load and pickle.load/loads disabled: nothing is unpickled."""
    model, opt = _trained(impl, 0)
    checkpoint.save_checkpoint(tmp_path / "c", model, step=2, optimizer=opt, tokenizer=_tokenizer(impl))

    def forbidden(*args, **kwargs):
        raise AssertionError("a checkpoint must not be unpickled (torch.load / pickle.load called)")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    ckpt = checkpoint.load_checkpoint(tmp_path / "c")
    _assert_same_weights(_state(ckpt.model), _state(model), "weights")


def test_load_model(checkpoint, impl, tmp_path):
    """load_model gives (model in eval mode, tokenizer) that reproduce the saved model's logits."""
    model, opt = _trained(impl, 4)
    tokenizer = _tokenizer(impl)
    checkpoint.save_checkpoint(tmp_path / "c", model, step=2, optimizer=opt, tokenizer=tokenizer)
    loaded, tok = checkpoint.load_model(tmp_path / "c")
    assert not loaded.training, "load_model must return the model in eval mode"
    assert_equal(tok.encode(TEXT[:30]), tokenizer.encode(TEXT[:30]), what="tokenizer.encode after load_model")
    ids = randint(0, 270, (2, 8), 6)
    model.eval()
    assert torch.equal(loaded(ids)[0], model(ids)[0]), "loaded model gives different logits"


def test_rng_state_round_trip(checkpoint):
    """set_rng_state(get_rng_state()) replays the same torch random numbers."""
    torch.manual_seed(123)
    state = checkpoint.get_rng_state()
    first = torch.rand(5)
    torch.rand(3)
    checkpoint.set_rng_state(state)
    assert torch.equal(torch.rand(5), first), "torch.rand after set_rng_state differs"


def test_bad_step(checkpoint, impl, tmp_path):
    """A negative step raises a ValueError naming step."""
    checkpoint.save_checkpoint
    model = _model(impl)
    with raises_clear(ValueError, "step"):
        checkpoint.save_checkpoint(tmp_path / "c", model, step=-1)


# --- crashes: fault injection at every step of a save ---------------------------------------------
#
# A crash is the process stopping at one filesystem-modifying operation: nothing from it on reaches
# the disk. The spec sees every such operation, however an implementation imported it, through
# Python's audit events (``open`` for writing, ``os.rename`` - raised by os.rename AND os.replace -,
# ``os.remove``, ``os.rmdir``, ``os.mkdir``, ``shutil.rmtree``, ...) plus the ``os.fsync`` attribute.
# At the n-th operation the hook raises ``ProcessDied``; so does every later operation (a dead
# process runs no clean-up handler). A crash at an ``open`` that creates or truncates a file leaves
# that file EMPTY (created, nothing written). Then a new "process" (a plain load/save with no hook)
# sees only the files.

class ProcessDied(BaseException):
    """The simulated death of the process (a BaseException: ``except Exception`` does not swallow it)."""


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_MUTATING_EVENTS = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.truncate",
                    "os.link", "os.symlink", "shutil.move", "shutil.copyfile", "os.chmod", "os.utime",
                    "os.fsync"}


class _Plan:
    """Counts the filesystem-modifying operations of one thread; dies at operation ``crash_at``."""

    def __init__(self, crash_at=None, on_open=None):
        self.crash_at, self.on_open = crash_at, on_open
        self.steps, self.opens, self.dead, self.busy = [], 0, False, False
        self.raw = []  # (event, args) of each step; an fsync's args: (fd, the path it flushed)
        self.thread = threading.get_ident()

    def event(self, event, args):
        if self.busy or threading.get_ident() != self.thread:
            return
        if event == "open" and self.on_open is not None:
            self.busy = True
            try:
                self.on_open(self.opens)
            finally:
                self.busy = False
            self.opens += 1
        if not _is_mutating(event, args):
            return
        if self.dead:
            raise ProcessDied(f"{event}{args!r} after the process died")
        n = len(self.steps)
        self.steps.append(f"{event}{args!r}")
        self.raw.append((event, args))
        if n == self.crash_at:
            self.dead = True
            if event == "open":
                self._leave_empty(args)
            raise ProcessDied(f"crash at step {n}: {event}{args!r}")

    def _leave_empty(self, args):
        file, _, flags = args
        if isinstance(file, (str, bytes, os.PathLike)) and os.path.isabs(file):
            if flags & os.O_TRUNC or (flags & os.O_CREAT and not os.path.exists(file)):
                self.busy = True
                try:
                    with builtins.open(file, "wb"):
                        pass
                finally:
                    self.busy = False


def _is_mutating(event, args):
    if event == "open":
        return isinstance(args[2], int) and bool(args[2] & _WRITE_FLAGS)
    return event in _MUTATING_EVENTS


_ACTIVE: list = []  # the plan in force (at most one)


def _audit(event, args):
    if _ACTIVE and (event == "open" or event in _MUTATING_EVENTS):
        _ACTIVE[0].event(event, args)


_HOOK_INSTALLED = []


@contextlib.contextmanager
def _injected(monkeypatch, plan):
    """Run the body under ``plan`` (an audit hook is installed once per process; it is idle outside)."""
    if not _HOOK_INSTALLED:
        sys.addaudithook(_audit)
        _HOOK_INSTALLED.append(True)
    real_fsync = os.fsync

    def fsync(fd):
        try:
            flushed = os.path.realpath(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            flushed = None
        plan.event("os.fsync", (fd, flushed))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    _ACTIVE.append(plan)
    try:
        yield plan
    finally:
        _ACTIVE.clear()
        monkeypatch.setattr(os, "fsync", real_fsync)


@pytest.fixture
def no_disk_flush(monkeypatch):
    """``os.fsync`` does nothing (a crash here is an exception, not a power cut): many saves stay fast."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def _tiny(impl, seed):
    """A tiny model whose weights identify ``seed``."""
    return _model(impl, seed, vocab_size=16, context_length=4, d_model=4, n_heads=1, dropout=0.0)


class _Versions:
    """Tiny models saved at steps 1, 2, ...: a loaded checkpoint must be ONE of them, whole."""

    def __init__(self, checkpoint, impl, path, models=None):
        self.checkpoint, self.path = checkpoint, path
        self.models = models or {s: _tiny(impl, s) for s in range(1, 6)}

    def save(self, step, plan=None, monkeypatch=None):
        """Save version ``step``; under ``plan``, True when the save ran to its end (no crash)."""
        if plan is None:
            self.checkpoint.save_checkpoint(self.path, self.models[step], step=step, rng_state=_RNG)
            return True
        try:
            with _injected(monkeypatch, plan):
                self.checkpoint.save_checkpoint(self.path, self.models[step], step=step, rng_state=_RNG)
        except ProcessDied:
            return False
        return not plan.dead

    def assert_loads_one_of(self, steps, what):
        try:
            ckpt = self.checkpoint.load_checkpoint(self.path)
        except NotImplementedError:
            raise
        except Exception as err:
            raise AssertionError(f"{what}: the checkpoint does not load: {type(err).__name__}: {err}") from None
        assert ckpt.step in steps, f"{what}: loaded step {ckpt.step}, expected one of {sorted(steps)}"
        _assert_same_weights(_state(ckpt.model), _state(self.models[ckpt.step]),
                             f"{what}: weights of the checkpoint of step {ckpt.step}")
        return ckpt.step


_RNG = {"torch": torch.Generator().manual_seed(0).get_state()}


def _entries(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*"))


def _count_steps(checkpoint, impl, tmp_path, monkeypatch, previous):
    """The number of filesystem-modifying operations of a save over a checkpoint of ``previous``."""
    v = _Versions(checkpoint, impl, tmp_path / "count" / "c")
    for step in previous:
        v.save(step)
    plan = _Plan()
    assert v.save(len(previous) + 1, plan, monkeypatch), "a save without a crash must complete"
    root = str(tmp_path / "count")
    return len(plan.steps), [s.replace(root, "<dir>") for s in plan.steps]


def test_crash_at_every_step_keeps_a_checkpoint(checkpoint, impl, tmp_path, monkeypatch, no_disk_flush):
    """A crash at ANY filesystem operation of a save leaves the previous or the new checkpoint, whole.

    Then a new save (another process) succeeds and leaves exactly what one save leaves: no leftover
    of the crashed save, no superseded version.
    """
    n, steps = _count_steps(checkpoint, impl, tmp_path, monkeypatch, previous=[1])
    clean = tmp_path / "clean" / "c"
    _Versions(checkpoint, impl, clean).save(3)
    expected_entries = _entries(clean.parent)  # a saved checkpoint holds one version, nothing else
    for i in range(n):
        v = _Versions(checkpoint, impl, tmp_path / f"crash{i}" / "c")
        v.save(1)
        finished = v.save(2, _Plan(crash_at=i), monkeypatch)
        assert not finished, f"step {i} ({steps[i]}) was never reached"
        v.assert_loads_one_of({1, 2}, f"after a crash at step {i} ({steps[i]})")
        v.save(3)
        v.assert_loads_one_of({3}, f"a save after a crash at step {i} ({steps[i]})")
        for name in ("model.safetensors", "state.safetensors", "checkpoint.json"):
            _file(v.path, name)  # one copy each: the superseded version is gone
        assert_equal(len(_entries(v.path.parent)), len(expected_entries),
                     what=f"files left after a crash at step {i} ({steps[i]}) and a clean save "
                          f"(as in {expected_entries}; leftovers: {_entries(v.path.parent)})")


def test_two_crashes_in_a_row_keep_a_checkpoint(checkpoint, impl, tmp_path, monkeypatch, no_disk_flush):
    """A crash at step i of a save, then at step j of the next, still leaves a whole checkpoint (all i, j).

    The one that loads is one of the three (the first, or whichever crashed save got committed); a
    final save succeeds.
    """
    n, steps = _count_steps(checkpoint, impl, tmp_path, monkeypatch, previous=[1])
    for i in range(n):
        first = _Versions(checkpoint, impl, tmp_path / f"crash{i}" / "c")
        first.save(1)
        assert not first.save(2, _Plan(crash_at=i), monkeypatch), f"step {i} ({steps[i]}) was never reached"
        j = 0
        while True:
            v = _Versions(checkpoint, impl, tmp_path / f"crash{i}-{j}" / "c", first.models)  # a copy of it
            shutil.copytree(first.path.parent, v.path.parent, symlinks=True)
            finished = v.save(3, _Plan(crash_at=j), monkeypatch)
            if not finished:
                what = f"after crashes at step {i} ({steps[i]}), then at step {j} of the next save"
                v.assert_loads_one_of({1, 2, 3}, what)
                v.save(4)
                v.assert_loads_one_of({4}, f"a save {what}")
            if finished:
                break  # the second save had fewer than j steps: every j was tried
            j += 1


def test_first_save_crashed_anywhere_is_no_checkpoint_or_the_new_one(checkpoint, impl, tmp_path, monkeypatch,
                                                                     no_disk_flush):
    """A first save that crashes at any step leaves no checkpoint (FileNotFoundError, has_checkpoint False) or the new one, whole."""
    n, steps = _count_steps(checkpoint, impl, tmp_path, monkeypatch, previous=[])
    for i in range(n):
        v = _Versions(checkpoint, impl, tmp_path / f"crash{i}" / "c")
        assert not v.save(1, _Plan(crash_at=i), monkeypatch), f"step {i} ({steps[i]}) was never reached"
        what = f"after a crash at step {i} ({steps[i]}) of the first save"
        try:
            checkpoint.load_checkpoint(v.path)
        except FileNotFoundError:
            assert not checkpoint.has_checkpoint(v.path), f"{what}: has_checkpoint is True, load finds none"
        else:
            v.assert_loads_one_of({1}, what)
            assert checkpoint.has_checkpoint(v.path), f"{what}: has_checkpoint is False, but it loads"
    assert not checkpoint.has_checkpoint(tmp_path / "nowhere"), "has_checkpoint of a missing path"


def test_remove_leftovers_keeps_the_checkpoint(checkpoint, impl, tmp_path, monkeypatch, no_disk_flush):
    """After a crash at any step, remove_leftovers leaves exactly what one clean save leaves, and the same checkpoint."""
    n, steps = _count_steps(checkpoint, impl, tmp_path, monkeypatch, previous=[1])
    clean = _Versions(checkpoint, impl, tmp_path / "clean" / "c")
    clean.save(1)
    expected = len(_entries(clean.path.parent))
    for i in range(n):
        v = _Versions(checkpoint, impl, tmp_path / f"crash{i}" / "c", clean.models)
        v.save(1)
        v.save(2, _Plan(crash_at=i), monkeypatch)
        step = v.assert_loads_one_of({1, 2}, f"after a crash at step {i} ({steps[i]})")
        checkpoint.remove_leftovers(v.path)
        v.assert_loads_one_of({step}, f"remove_leftovers after a crash at step {i} ({steps[i]})")
        assert_equal(len(_entries(v.path.parent)), expected,
                     what=f"entries after a crash at step {i} ({steps[i]}) and remove_leftovers "
                          f"({_entries(v.path.parent)})")


# --- readers beside a writer ----------------------------------------------------------------------

def _load_under(checkpoint, monkeypatch, path, on_open):
    plan = _Plan(on_open=on_open)
    with _injected(monkeypatch, plan):
        return checkpoint.load_checkpoint(path)


def test_a_save_between_any_two_reads_of_a_load(checkpoint, impl, tmp_path, monkeypatch, no_disk_flush):
    """A save that runs between ANY two file opens of a load never makes it fail: it returns the old or the new checkpoint, whole."""
    v = _Versions(checkpoint, impl, tmp_path / "c")
    for k in range(1000):
        v.save(1)
        saved = []

        def save_at_open(n):
            if n == k:
                v.save(2)
                saved.append(n)

        ckpt = _load_under(checkpoint, monkeypatch, v.path, save_at_open)
        what = f"a load with a save at its open #{k}"
        assert ckpt.step in (1, 2), f"{what}: loaded step {ckpt.step}, expected 1 or 2"
        _assert_same_weights(_state(ckpt.model), _state(v.models[ckpt.step]), f"{what}: weights of step {ckpt.step}")
        if not saved:
            break  # the load opened fewer than k files: every gap was tried
    assert k > 0, "load_checkpoint opened no file"


def test_load_beside_repeated_saves(checkpoint, impl, tmp_path, monkeypatch, no_disk_flush):
    """A load during which a save completes at each of its file opens (10 saves) still returns one whole checkpoint."""
    v = _Versions(checkpoint, impl, tmp_path / "c")
    v.save(1)
    saves = []

    def save_at_every_open(n):
        if len(saves) < 10:
            saves.append(2 + len(saves) % 4)
            v.save(saves[-1])

    ckpt = _load_under(checkpoint, monkeypatch, v.path, save_at_every_open)
    assert ckpt.step in {1, *saves}, f"loaded step {ckpt.step}, saved {[1] + saves}"
    _assert_same_weights(_state(ckpt.model), _state(v.models[ckpt.step]), f"weights of step {ckpt.step}")


def test_reader_thread_beside_a_writer_sees_only_whole_checkpoints(checkpoint, impl, tmp_path):
    """A thread loading in a loop while another saves 12 times only ever gets whole checkpoints, never an error."""
    v = _Versions(checkpoint, impl, tmp_path / "c")
    v.save(1)
    started, done, problems, loads = threading.Event(), threading.Event(), [], []

    def reader():
        while not done.is_set() and len(loads) < 2000:
            try:
                ckpt = checkpoint.load_checkpoint(v.path)
                loads.append(ckpt.step)
                _assert_same_weights(_state(ckpt.model), _state(v.models[ckpt.step]), f"weights of step {ckpt.step}")
            except BaseException as err:  # noqa: BLE001 - reported by the main thread
                problems.append(f"load #{len(loads)}: {type(err).__name__}: {err}")
                return
            finally:
                started.set()

    thread = threading.Thread(target=reader)
    thread.start()
    started.wait()
    try:
        for s in range(12):
            v.save(2 + s % 4)
    finally:
        done.set()
        thread.join()
    assert not problems, f"a reader beside a writer failed ({len(loads)} loads went well): {problems[0]}"


def test_restored_rng_continues_like_an_uninterrupted_run(checkpoint, impl, tmp_path):
    """After save, other draws, load and set_rng_state, python's random (gauss too) and torch draw what fresh generators seeded alike draw uninterrupted."""
    model = _tiny(impl, 0)
    seed = 20240611
    random.seed(seed)
    torch.manual_seed(seed)
    random.random(), random.gauss(0.0, 1.0)  # gauss leaves the second normal of its pair pending
    torch.rand(3)
    checkpoint.save_checkpoint(tmp_path / "c", model, step=0)  # rng_state: the global states, now
    random.seed(7), torch.manual_seed(7), random.gauss(0.0, 1.0)  # the process moves on (or restarts)
    checkpoint.set_rng_state(checkpoint.load_checkpoint(tmp_path / "c").rng_state)
    got = [random.gauss(0.0, 1.0), random.random(), random.random()]
    got_torch = torch.rand(4)
    fresh = random.Random(seed)  # an uninterrupted run: the same draws, then the next ones
    fresh.random(), fresh.gauss(0.0, 1.0)
    assert_equal(got, [fresh.gauss(0.0, 1.0), fresh.random(), fresh.random()],
                 what="random.gauss, random.random after restoring the checkpoint's RNG state")
    g = torch.Generator().manual_seed(seed)
    torch.rand(3, generator=g)
    assert torch.equal(got_torch, torch.rand(4, generator=g)), "torch.rand after restoring the RNG state"


# --- the previous format --------------------------------------------------------------------------

def _old_layout(path):
    """A directory laid out as format bare-lm-checkpoint/1: the three files directly in ``path``."""
    path.mkdir(parents=True)
    (path / "checkpoint.json").write_text(json.dumps({"format": "bare-lm-checkpoint/1", "step": 1}))
    (path / "model.safetensors").write_bytes(b"")
    (path / "state.safetensors").write_bytes(b"")


def test_old_format_is_refused_clearly(checkpoint, impl, tmp_path):
    """A bare-lm-checkpoint/1 directory (the files directly in path) is a CheckpointError naming checkpoint.json and that format."""
    checkpoint.load_checkpoint
    _old_layout(tmp_path / "c")
    with raises_clear(checkpoint.CheckpointError, "checkpoint.json", "bare-lm-checkpoint/1"):
        checkpoint.load_checkpoint(tmp_path / "c")


def test_save_over_old_format_replaces_it(checkpoint, impl, tmp_path):
    """Saving to a bare-lm-checkpoint/1 directory replaces that checkpoint: the new one loads, the old files are gone."""
    _old_layout(tmp_path / "c")
    v = _Versions(checkpoint, impl, tmp_path / "c")
    v.save(2)
    v.assert_loads_one_of({2}, "a save over a bare-lm-checkpoint/1 directory")
    for name in ("model.safetensors", "state.safetensors", "checkpoint.json"):
        _file(v.path, name)  # exactly one of each: the old-layout files went


def _commit_step(checkpoint, impl, tmp_path, monkeypatch, n):
    """The step of a save over version 1 whose completion makes version 2 load: found by crashing at each."""
    for i in range(n):
        v = _Versions(checkpoint, impl, tmp_path / f"commit{i}" / "c")
        v.save(1)
        v.save(2, _Plan(crash_at=i + 1), monkeypatch)
        if v.assert_loads_one_of({1, 2}, f"after a crash at step {i + 1}") == 2:
            return i
    raise AssertionError("no crash before the end of the save leaves the new checkpoint: it never commits")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd to see what an fsync flushes")
def test_new_checkpoint_is_flushed_before_its_commit(checkpoint, impl, tmp_path, monkeypatch, no_disk_flush):
    """Before the step that commits a save, every file and directory of the new checkpoint was fsynced; after it, the commit's directory.

    The commit step is the one whose completion makes the new checkpoint load (found by crashing at
    each step); a file renamed after its fsync counts under its new name. Without this, a power
    cut right after the commit could leave a committed checkpoint with empty or missing files.
    """
    v = _Versions(checkpoint, impl, tmp_path / "run" / "c")
    v.save(1)
    plan = _Plan()
    assert v.save(2, plan, monkeypatch)
    commit = _commit_step(checkpoint, impl, tmp_path, monkeypatch, len(plan.raw))
    flushed = []  # [step, path], the path followed through later renames
    for step, (event, args) in enumerate(plan.raw):
        if event == "os.fsync" and args[1] is not None:
            flushed.append([step, args[1]])
        elif event == "os.rename" and args[2:] == (-1, -1):
            src, dst = (os.path.realpath(os.fspath(a)) for a in args[:2])
            for entry in flushed:
                if entry[1] == src or entry[1].startswith(src + os.sep):
                    entry[1] = dst + entry[1][len(src):]
    before = {p for step, p in flushed if step < commit}
    root = os.path.realpath(v.path)
    for entry in [root, *(os.path.realpath(p) for p in Path(root).rglob("*"))]:
        assert entry in before, (f"{os.path.relpath(entry, root)} of the new checkpoint was not fsynced before "
                                 f"the commit (step {commit}: {plan.steps[commit]}); fsynced before it: "
                                 f"{sorted(os.path.relpath(p, root) for p in before)}")
    event, args = plan.raw[commit]
    if event == "os.rename":
        parent = os.path.dirname(os.path.realpath(os.fspath(args[1])))
        assert any(step > commit and p == parent for step, p in flushed), \
            f"the directory of the commit ({plan.steps[commit]}) is not fsynced after it: the commit may be lost"


# --- checkpoint.json, field by field: every check, just outside and inside -----------------------

def _saved_tiny(checkpoint, impl, path, step=1, **kwargs):
    """A tiny tied model saved at ``path`` (with a tensor in ``extra``); returns the model."""
    model = _tiny(impl, step)
    checkpoint.save_checkpoint(path, model, step=step, rng_state=_RNG, **kwargs)
    return model


def _load_error(checkpoint, path):
    """The error ``load_checkpoint(path)`` raises (an AssertionError when it loads)."""
    try:
        checkpoint.load_checkpoint(path)
    except NotImplementedError:
        raise
    except Exception as err:  # noqa: BLE001 - the caller checks its type and message
        return err
    raise AssertionError(f"{path} loaded, but it should have been refused")


def _assert_refused(checkpoint, path, *words, absent=()):
    """load_checkpoint(path) raises a CheckpointError naming ``words`` and none of ``absent``.

    The words are looked for in the message with the checkpoint's own path cut out (a test's
    temporary directory is named after the test, and would name them for any message).
    """
    err = _load_error(checkpoint, path)
    message = str(err)
    for root in {str(path), os.path.realpath(path)}:
        message = message.replace(root, "<path>")
    if not isinstance(err, checkpoint.CheckpointError):
        raise AssertionError(f"expected a CheckpointError naming {list(words)}, got {type(err).__name__}: {err}")
    missing = [w for w in words if w.lower() not in message.lower()]
    wrong = [w for w in absent if w.lower() in message.lower()]
    assert not missing, f"raised CheckpointError({message!r}), but the message should name {missing}"
    assert not wrong, f"raised CheckpointError({message!r}), but the message should not say {wrong}"


@pytest.mark.parametrize("value", ["bare-lm-checkpoint/1", "bare-lm-checkpoint/3", "bare-lm-checkpoint/2 ",
                                   "Bare-LM-checkpoint/2", 2, None])
def test_format_other_than_the_current_one_is_refused(checkpoint, impl, tmp_path, value):
    """A checkpoint.json whose format is any value but "bare-lm-checkpoint/2" (older, newer, not a string) is refused, naming format."""
    _saved_tiny(checkpoint, impl, tmp_path / "c")
    checkpoint.load_checkpoint(tmp_path / "c")  # the format as saved (a string read from JSON) loads
    _edit_json(tmp_path / "c", _set("format", value), rehash=True)
    _assert_refused(checkpoint, tmp_path / "c", "checkpoint.json", "format")


def test_missing_and_unknown_keys_are_named_as_such(checkpoint, impl, tmp_path):
    """A missing top-level key is named as missing (not unknown), an unknown one as unknown (not missing); both at once, both."""
    _saved_tiny(checkpoint, impl, tmp_path / "c")
    original = _file(tmp_path / "c", "checkpoint.json").read_text(encoding="utf-8")
    cases = [(_drop("extra"), ["extra", "missing"], ["unknown"]),
             (_set("surplus", 1), ["surplus", "unknown"], ["missing"]),
             (lambda m: (m.pop("extra"), m.update(surplus=1)), ["extra", "surplus", "missing", "unknown"], [])]
    for edit, words, absent in cases:
        _file(tmp_path / "c", "checkpoint.json").write_text(original, encoding="utf-8")
        _edit_json(tmp_path / "c", edit, rehash=True)
        _assert_refused(checkpoint, tmp_path / "c", "checkpoint.json", *words, absent=absent)


@pytest.mark.parametrize("value", ["0" * 64, "f" * 64, "upper", None, 0])
def test_meta_sha256_other_than_the_content_hash_is_refused(checkpoint, impl, tmp_path, value):
    """A meta_sha256 that is not the content's hash (lower or higher, the right one in upper case, not a string) is refused."""
    _saved_tiny(checkpoint, impl, tmp_path / "c")
    _edit_json(tmp_path / "c", lambda m: m.update(meta_sha256=m["meta_sha256"].upper() if value == "upper" else value))
    _assert_refused(checkpoint, tmp_path / "c", "checkpoint.json")


def _sha256_edit(kind):
    def edit(m):
        h = m["sha256"]
        if kind == "state file missing":
            h.pop("state.safetensors")
        elif kind == "a third file":
            h["x.safetensors"] = h["model.safetensors"]
        elif kind == "upper case":
            h["state.safetensors"] = h["state.safetensors"].upper()
        elif kind == "63 digits":
            h["state.safetensors"] = h["state.safetensors"][:63]
        elif kind == "a number":
            h["state.safetensors"] = 5
        elif kind == "null":
            h["state.safetensors"] = None
    return edit


@pytest.mark.parametrize("kind", ["state file missing", "a third file", "upper case", "63 digits", "a number", "null"])
def test_sha256_field_maps_exactly_both_files_to_lowercase_digits(checkpoint, impl, tmp_path, kind):
    """sha256 must map model.safetensors and state.safetensors, no other key, each to 64 lowercase hex digits: else refused naming sha256 and the form."""
    _saved_tiny(checkpoint, impl, tmp_path / "c")
    _edit_json(tmp_path / "c", _sha256_edit(kind), rehash=True)
    _assert_refused(checkpoint, tmp_path / "c", "checkpoint.json", "sha256", "hex")


@pytest.mark.parametrize("tied", [{"lm_head.weight": "no_such.weight"}, {"lm_head.weight": 5},
                                  {"lm_head.weight": None}, {"lm_head.weight": ["token_embedding.weight"]}],
                         ids=["unknown name", "a number", "null", "a list"])
def test_tied_alias_must_name_a_stored_weight(checkpoint, impl, tmp_path, tied):
    """A tied entry whose target is not a stored weight's name (another name, not a string) is refused, naming tied."""
    _saved_tiny(checkpoint, impl, tmp_path / "c")
    _edit_json(tmp_path / "c", _set("tied", tied), rehash=True)
    _assert_refused(checkpoint, tmp_path / "c", "checkpoint.json", "tied")


def test_tied_alias_that_is_stored_too_is_refused(checkpoint, impl, tmp_path):
    """An untied model's checkpoint given the tied entry lm_head -> token_embedding (both stored) is refused, naming tied."""
    model = _model(impl, 0, tie_weights=False)
    checkpoint.save_checkpoint(tmp_path / "c", model, step=1, rng_state=_RNG)
    assert_equal(json.loads(_file(tmp_path / "c", "checkpoint.json").read_text())["tied"], {},
                 what="tied of an untied model")
    _edit_json(tmp_path / "c", _set("tied", {"lm_head.weight": "token_embedding.weight"}), rehash=True)
    _assert_refused(checkpoint, tmp_path / "c", "checkpoint.json", "tied")


def _python_pair(meta):
    return next(p for p in meta["rng"]["__dict__"] if p[0] == "python")


def test_rng_field_null_loads_as_none(checkpoint, impl, tmp_path):
    """A checkpoint.json whose rng is null loads, with rng_state None."""
    _saved_tiny(checkpoint, impl, tmp_path / "c")
    _edit_json(tmp_path / "c", _set("rng", None), rehash=True)
    assert checkpoint.load_checkpoint(tmp_path / "c").rng_state is None, "rng null must load as rng_state None"


@pytest.mark.parametrize("case", ["no torch state", "torch state a list"])
def test_rng_field_must_hold_the_torch_state_as_a_tensor(checkpoint, impl, tmp_path, case):
    """An rng dict without the torch state, or with one that is not a tensor, is refused, naming rng."""
    checkpoint.save_checkpoint(tmp_path / "c", _tiny(impl, 1), step=1)  # the default rng_state: with python's
    if case == "no torch state":
        edit = lambda m: m["rng"].update({"__dict__": [p for p in m["rng"]["__dict__"] if p[0] != "torch"]})
    else:
        edit = lambda m: next(p for p in m["rng"]["__dict__"] if p[0] == "torch").__setitem__(1, [1, 2, 3])
    _edit_json(tmp_path / "c", edit, rehash=True)
    _assert_refused(checkpoint, tmp_path / "c", "checkpoint.json", "rng")


def _tensor_ref(meta):
    """The encoded tensor {"__tensor__": key} of extra["t"]."""
    return next(v for k, v in meta["extra"]["__dict__"] if k == "t")


# Malformed encoded values put in ``extra``: (edit of the whole JSON object)
_MALFORMED = {
    "an empty object": lambda m: m.update(extra={}),
    "a plain object": lambda m: m.update(extra={"x": 1}),
    "a tensor missing from state.safetensors": lambda m: m.update(extra={"__tensor__": "no_such_tensor"}),
    "a tensor key that is not a string": lambda m: m.update(extra={"__tensor__": 5}),
    "a tensor with another key": lambda m: m.update(extra={"__dict__": [["t", dict(_tensor_ref(m), x=1)]]}),
    "a dict with another key": lambda m: m.update(extra={"__dict__": [["a", 1]], "x": 1}),
    "a dict whose pairs are a number": lambda m: m.update(extra={"__dict__": 5}),
    "a pair of one": lambda m: m.update(extra={"__dict__": [["a"]]}),
    "a pair of three": lambda m: m.update(extra={"__dict__": [["a", 1, 2]]}),
    "a pair that is a string": lambda m: m.update(extra={"__dict__": ["ab"]}),
    "a key that cannot be a dict key": lambda m: m.update(extra={"__dict__": [[["a"], 1]]}),
}


@pytest.mark.parametrize("case", list(_MALFORMED))
def test_malformed_encoded_value_is_refused(checkpoint, impl, tmp_path, case):
    """An encoded value that is neither a JSON scalar, a list, {"__tensor__": stored key} nor {"__dict__": [[key, value], ...]} is refused, naming the field."""
    _saved_tiny(checkpoint, impl, tmp_path / "c", extra={"t": torch.arange(3)})
    got = checkpoint.load_checkpoint(tmp_path / "c").extra
    assert torch.equal(got["t"], torch.arange(3)), "extra['t'] as saved"
    _edit_json(tmp_path / "c", _MALFORMED[case], rehash=True)
    _assert_refused(checkpoint, tmp_path / "c", "checkpoint.json", "extra")


# --- the tensor files: hashed right, still refused ------------------------------------------------

def _replace_tensor_file(path, name, data):
    """Write ``data`` as the tensor file ``name`` and record its sha256 (checkpoint.json re-hashed): only
    the reading of the file can refuse it."""
    _file(path, name).write_bytes(data)
    _edit_json(path, lambda m: m["sha256"].update({name: hashlib.sha256(data).hexdigest()}), rehash=True)


def _safetensors_bytes(header, body=b""):
    """A file in the safetensors layout: 8-byte little-endian header length, the JSON header, the data."""
    head = json.dumps(header).encode("utf-8") if not isinstance(header, bytes) else header
    return len(head).to_bytes(8, "little") + head + body


_UNREADABLE = {
    "empty": b"",
    "shorter than a header": b"abc",
    "header length past the end": (10 ** 6).to_bytes(8, "little") + b"{}",
    "header not JSON": _safetensors_bytes(b"hello"),
    "offsets past the data": _safetensors_bytes({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 80]}},
                                                b"\0" * 8),
}


@pytest.mark.parametrize("name", ["model.safetensors", "state.safetensors"])
@pytest.mark.parametrize("case", list(_UNREADABLE))
def test_unreadable_tensor_file_with_its_sha256_is_refused(checkpoint, impl, tmp_path, name, case):
    """A tensor file that is not safetensors, even with its sha256 recorded, is a CheckpointError naming the file."""
    _saved_tiny(checkpoint, impl, tmp_path / "c")
    _replace_tensor_file(tmp_path / "c", name, _UNREADABLE[case])
    _assert_refused(checkpoint, tmp_path / "c", name)


def test_tensor_file_of_a_dtype_torch_lacks_is_refused(checkpoint, impl, tmp_path):
    """A valid safetensors file holding a dtype torch has no type for (F4), with its sha256, is a CheckpointError naming it."""
    _saved_tiny(checkpoint, impl, tmp_path / "c")
    data = _safetensors_bytes({"w": {"dtype": "F4", "shape": [16], "data_offsets": [0, 8]}}, b"\1" * 8)
    _replace_tensor_file(tmp_path / "c", "state.safetensors", data)
    _assert_refused(checkpoint, tmp_path / "c", "state.safetensors")


def _rewrite_weights(path, change):
    """Apply ``change(weights)`` to model.safetensors' tensors and store them with their sha256."""
    from safetensors.torch import load, save
    weights = load(_file(path, "model.safetensors").read_bytes())
    change(weights)
    _replace_tensor_file(path, "model.safetensors", save(weights))


_MISFITS = {
    "a weight missing": lambda w: w.pop("ln_f.weight"),
    "a weight the model lacks": lambda w: w.update({"extra.weight": torch.zeros(4)}),
    "a weight of another shape": lambda w: w.update({"ln_f.weight": torch.zeros(5)}),
}


@pytest.mark.parametrize("case", list(_MISFITS))
def test_weights_that_do_not_fit_the_config_are_refused(checkpoint, impl, tmp_path, case):
    """model.safetensors (with its sha256) lacking a weight, holding one the model lacks or one of another shape is refused, naming it."""
    _saved_tiny(checkpoint, impl, tmp_path / "c")
    _rewrite_weights(tmp_path / "c", lambda w: None)
    checkpoint.load_checkpoint(tmp_path / "c")  # the same weights, written again: they fit
    _rewrite_weights(tmp_path / "c", _MISFITS[case])
    _assert_refused(checkpoint, tmp_path / "c", "model.safetensors")


# --- the pointer and the retry bound of a load ----------------------------------------------------

class _OnVersionOpen:
    """Calls ``action(version)`` at an open of a file inside the version ``CURRENT`` names, at most ``times`` times.

    ``action`` returns the version ``CURRENT`` names afterwards (its own operations are not seen).
    Installed with ``_injected`` like a ``_Plan``: it sees every ``open`` audit event of this thread.
    """

    def __init__(self, path, action, times=1):
        self.path, self.action, self.times, self.calls, self.busy = Path(path), action, times, 0, False
        self.current = (self.path / "CURRENT").read_text().strip()
        self.thread = threading.get_ident()

    def event(self, event, args):
        if (event != "open" or self.busy or self.calls >= self.times or threading.get_ident() != self.thread
                or not isinstance(args[0], (str, os.PathLike))):
            return
        file = os.path.realpath(os.fspath(args[0]))
        if not file.startswith(os.path.realpath(self.path / self.current) + os.sep):
            return
        self.busy = True
        try:
            self.calls += 1
            self.current = self.action(self.current)
        finally:
            self.busy = False


def _commit_under(path):
    """An action for ``_OnVersionOpen``: what a reader sees of a save that commits meanwhile - the
    checkpoint under a new version name (the old directory renamed), ``CURRENT`` replaced to name it."""
    def move_on(version):
        new = f"v-{(int(version[2:], 16) + 1) % 16 ** 16:016x}"
        os.rename(Path(path) / version, Path(path) / new)
        tmp = Path(path) / f".CURRENT.tmp-{'0' * 16}"
        tmp.write_text(f"{new}\n")
        os.replace(tmp, Path(path) / "CURRENT")
        return new
    return move_on


def test_load_gives_up_after_load_attempts_replacements(checkpoint, impl, tmp_path, monkeypatch, no_disk_flush):
    """A load whose checkpoint is replaced under it LOAD_ATTEMPTS - 1 times loads; LOAD_ATTEMPTS (100) times is a CheckpointError."""
    path = tmp_path / "c"
    model = _saved_tiny(checkpoint, impl, path)
    assert_equal(checkpoint.LOAD_ATTEMPTS, 100, what="LOAD_ATTEMPTS")
    for times, loads in ((checkpoint.LOAD_ATTEMPTS - 1, True), (checkpoint.LOAD_ATTEMPTS, False)):
        writer = _OnVersionOpen(path, _commit_under(path), times)
        with _injected(monkeypatch, writer):
            if loads:
                ckpt = checkpoint.load_checkpoint(path)
            else:
                err = _load_error(checkpoint, path)
        assert_equal(writer.calls, times, what="saves committed under the load (it should read each version)")
        if loads:
            _assert_same_weights(_state(ckpt.model), _state(model), f"weights after {times} replacements")
        else:
            assert isinstance(err, checkpoint.CheckpointError), (
                f"a load replaced under it {times} times must give up with a CheckpointError, "
                f"got {type(err).__name__}: {err}")


@pytest.mark.parametrize("pointer", ["removed", "not a version name"])
def test_failed_load_with_current_gone_meanwhile_reports_its_own_error(checkpoint, impl, tmp_path, monkeypatch,
                                                                       pointer):
    """A load failing on its version (model.safetensors missing) while CURRENT is removed or garbled meanwhile raises the version's CheckpointError, naming that file."""
    path = tmp_path / "c"
    _saved_tiny(checkpoint, impl, path)
    _file(path, "model.safetensors").unlink()

    def break_pointer(version):
        if pointer == "removed":
            (path / "CURRENT").unlink()
        else:
            (path / "CURRENT").write_text("garbage\n")
        return version

    writer = _OnVersionOpen(path, break_pointer)
    with _injected(monkeypatch, writer):
        _assert_refused(checkpoint, path, "model.safetensors")
    assert_equal(writer.calls, 1, what="opens of the version's files before the error")


def test_current_naming_a_missing_version_is_refused(checkpoint, impl, tmp_path):
    """A CURRENT naming a well-formed version that does not exist is a CheckpointError naming CURRENT and that version; has_checkpoint is False."""
    path = tmp_path / "c"
    _saved_tiny(checkpoint, impl, path)
    shutil.rmtree(path / (path / "CURRENT").read_text().strip())
    (path / "CURRENT").write_text("v-0123456789abcdef\n")
    _assert_refused(checkpoint, path, "CURRENT", "v-0123456789abcdef")
    assert not checkpoint.has_checkpoint(path), "has_checkpoint with CURRENT naming a missing version"


def test_current_not_naming_a_version_is_quoted_up_to_40_characters(checkpoint, impl, tmp_path):
    """A CURRENT that is not "v-<16 hex>" is a CheckpointError naming CURRENT and quoting its first 40 characters, no more."""
    path = tmp_path / "c"
    _saved_tiny(checkpoint, impl, path)
    text = "A" * 39 + "!" + "#" * 20  # the 40th character "!", then 20 more
    (path / "CURRENT").write_text(text)
    _assert_refused(checkpoint, path, "CURRENT", text[:40])
    message = str(_load_error(checkpoint, path)).replace(str(path), "<path>")
    assert "#" not in message, f"the message quotes more than CURRENT's first 40 characters: {message!r}"


def test_load_of_a_file_is_refused_naming_it(checkpoint, impl, tmp_path):
    """load_checkpoint of a path that is a regular file is a CheckpointError naming it and saying a checkpoint is a directory."""
    file = tmp_path / "model.bin"
    file.write_bytes(b"not a checkpoint")
    with raises_clear(checkpoint.CheckpointError, "model.bin", "directory"):
        checkpoint.load_checkpoint(file)
    assert not checkpoint.has_checkpoint(file), "has_checkpoint of a regular file"


# --- RNG state keys, save's arguments -------------------------------------------------------------

def test_rng_state_holds_cuda_states_only_where_cuda_is_available(checkpoint):
    """get_rng_state() holds "torch" (a uint8 tensor) and "python", and "cuda" exactly where CUDA is available."""
    state = checkpoint.get_rng_state()
    expected = {"torch", "python"} | ({"cuda"} if torch.cuda.is_available() else set())
    assert_equal(sorted(state), sorted(expected),
                 what=f"get_rng_state() keys (CUDA available: {torch.cuda.is_available()})")
    assert state["torch"].dtype == torch.uint8, f"get_rng_state()['torch'] must be uint8, got {state['torch'].dtype}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rng_state_round_trip(checkpoint):
    """set_rng_state restores every CUDA device's RNG from get_rng_state(); a state without "cuda" leaves them alone."""
    torch.cuda.manual_seed_all(321)
    state = checkpoint.get_rng_state()
    first = torch.rand(5, device="cuda")
    checkpoint.set_rng_state(state)
    assert torch.equal(torch.rand(5, device="cuda"), first), "torch.rand on CUDA after set_rng_state differs"
    checkpoint.set_rng_state(state)
    cpu_only = {k: v for k, v in state.items() if k != "cuda"}  # e.g. a checkpoint saved without CUDA
    torch.rand(3, device="cuda")
    expected = torch.cuda.get_rng_state_all()
    checkpoint.set_rng_state(cpu_only)
    got = torch.cuda.get_rng_state_all()
    assert all(torch.equal(a, b) for a, b in zip(got, expected)), "a state without 'cuda' changed the CUDA RNG"


def test_save_takes_step_and_the_rest_by_keyword_only(checkpoint, impl, tmp_path):
    """save_checkpoint(path, model, *, step, ...): path and model by position or by name; step given by position is a TypeError."""
    model = _tiny(impl, 1)
    checkpoint.save_checkpoint(path=tmp_path / "a", model=model, step=1, rng_state=_RNG)
    assert_equal(checkpoint.load_checkpoint(tmp_path / "a").step, 1, what="step saved with path= and model=")
    with pytest.raises(TypeError):
        checkpoint.save_checkpoint(tmp_path / "b", model, 1)
    assert not (tmp_path / "b").exists(), "save_checkpoint with a positional step wrote to its path"


@pytest.mark.parametrize("case", ["no config", "a config without to_dict"])
def test_model_without_a_config_to_dict_is_a_type_error(checkpoint, impl, tmp_path, case):
    """A model without config.to_dict() is a TypeError naming config, raised before anything is written."""
    checkpoint.save_checkpoint
    model = torch.nn.Linear(2, 2)
    if case != "no config":
        model.config = {"d_model": 2}  # a dict: no to_dict()
    with raises_clear(TypeError, "config"):
        checkpoint.save_checkpoint(tmp_path / "c", model, step=0, rng_state=_RNG)
    assert not (tmp_path / "c").exists(), f"a refused save ({case}) created its path"


# --- remove_leftovers: the old layout, other names, leftovers already gone ------------------------

_OLD_FILES = ["checkpoint.json", "model.safetensors", "state.safetensors"]
_NOT_LEFTOVERS = ["notes.txt", "v-0123", "v-0123456789abcdef.bak", ".CURRENT.tmp-01", "CURRENT.old"]


def _strangers(path):
    """Entries whose names are no leftover's (remove_leftovers leaves them alone)."""
    for name in _NOT_LEFTOVERS:
        if name.startswith("v-"):
            (path / name).mkdir()
        else:
            (path / name).write_text("keep me")


def test_remove_leftovers_removes_old_layout_files_only_beside_a_current_version(checkpoint, impl, tmp_path):
    """remove_leftovers leaves a bare-lm-checkpoint/1 directory (no CURRENT) as it is; beside a current version it removes those three files; other names never."""
    old = tmp_path / "old"
    _old_layout(old)
    _strangers(old)
    removed = checkpoint.remove_leftovers(old)
    assert_equal(sorted(Path(p).name for p in removed), [], what="removed from an old-layout directory without CURRENT")
    assert_equal(sorted(p.name for p in old.iterdir()), sorted(_OLD_FILES + _NOT_LEFTOVERS),
                 what="entries of an old-layout directory after remove_leftovers")
    with raises_clear(checkpoint.CheckpointError, "bare-lm-checkpoint/1"):
        checkpoint.load_checkpoint(old)

    new = tmp_path / "new"
    model = _saved_tiny(checkpoint, impl, new)
    version = (new / "CURRENT").read_text().strip()
    for name in _OLD_FILES:
        (new / name).write_bytes(b"")
    _strangers(new)
    removed = checkpoint.remove_leftovers(new)
    assert_equal(sorted(Path(p).name for p in removed), sorted(_OLD_FILES),
                 what="removed beside a current version: the old-layout files")
    assert_equal(sorted(p.name for p in new.iterdir()), sorted(["CURRENT", version] + _NOT_LEFTOVERS),
                 what="entries after remove_leftovers beside a current version")
    _assert_same_weights(_state(checkpoint.load_checkpoint(new).model), _state(model), "weights after remove_leftovers")


class _Vanish:
    """Removes a leftover of ``names`` itself at the first removal (or rename) touching it: another cleaner came first."""

    def __init__(self, path, names):
        self.path, self.names, self.gone, self.busy = os.path.realpath(path), set(names), [], False
        self.thread = threading.get_ident()

    def event(self, event, args):
        if (self.busy or event not in ("os.remove", "os.rmdir", "shutil.rmtree", "os.rename")
                or threading.get_ident() != self.thread or not isinstance(args[0], (str, os.PathLike))):
            return
        file = os.fspath(args[0])
        if not os.path.isabs(file):
            return  # relative to a dir_fd: inside a directory whose removal was seen already
        top = os.path.relpath(os.path.realpath(file), self.path).split(os.sep)[0]
        if top not in self.names or top in self.gone:
            return
        self.busy = True
        try:
            entry = os.path.join(self.path, top)
            if os.path.isdir(entry):
                shutil.rmtree(entry)
            else:
                os.remove(entry)
            self.gone.append(top)
        finally:
            self.busy = False


@pytest.mark.parametrize("how", ["remove_leftovers", "a save"])
def test_leftovers_already_gone_are_no_error(checkpoint, impl, tmp_path, monkeypatch, no_disk_flush, how):
    """A leftover (version directory, temporary pointer) that vanishes just before remove_leftovers - or a save - removes it is no error."""
    path = tmp_path / "c"
    model = _saved_tiny(checkpoint, impl, path)
    stale = path / "v-00000000000000aa"
    stale.mkdir()
    (stale / "checkpoint.json").write_text("{}")
    (path / ".CURRENT.tmp-00000000000000bb").write_text("v-00000000000000aa\n")
    names = {stale.name, ".CURRENT.tmp-00000000000000bb"}
    if how == "a save":
        names.add((path / "CURRENT").read_text().strip())  # the version the save supersedes
        model = _tiny(impl, 2)
    vanish = _Vanish(path, names)
    with _injected(monkeypatch, vanish):
        if how == "a save":
            checkpoint.save_checkpoint(path, model, step=2, rng_state=_RNG)
        else:
            checkpoint.remove_leftovers(path)
    assert_equal(sorted(vanish.gone), sorted(names), what=f"leftovers {how} went to remove")
    for name in ("model.safetensors", "state.safetensors", "checkpoint.json"):
        _file(path, name)  # one version left
    _assert_same_weights(_state(checkpoint.load_checkpoint(path).model), _state(model), f"weights after {how}")


# --- shared tensors: each stored once, whatever its size ------------------------------------------

def _stored(path):
    """(names in model.safetensors, the tied field of checkpoint.json)."""
    from safetensors.torch import load
    names = sorted(load(_file(path, "model.safetensors").read_bytes()))
    return names, json.loads(_file(path, "checkpoint.json").read_text(encoding="utf-8"))["tied"]


def _assert_each_shared_tensor_once(path, model, aliases):
    names, tied = _stored(path)
    assert_equal(sorted(tied), sorted(aliases), what="the aliases in checkpoint.json's tied")
    assert_equal(names, sorted(set(model.state_dict()) - set(aliases)),
                 what="model.safetensors: every state_dict name but the aliases")


def test_tensors_the_caller_shares_are_stored_once_and_come_back(checkpoint, impl, tmp_path):
    """A tensor shared by two names mid-state_dict (two norms given one Parameter) is stored once, listed in tied, and loads back."""
    model = _tiny(impl, 3)
    with torch.no_grad():
        model.blocks[0].ln_1.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(3))
    model.blocks[0].ln_2.weight = model.blocks[0].ln_1.weight
    checkpoint.save_checkpoint(tmp_path / "c", model, step=1, rng_state=_RNG)
    _assert_each_shared_tensor_once(tmp_path / "c", model, ["blocks.0.ln_2.weight", "lm_head.weight"])
    _assert_same_weights(_state(checkpoint.load_checkpoint(tmp_path / "c").model), _state(model),
                         "weights of a model with a tensor shared by the caller")


def test_one_element_tied_weight_is_stored_once(checkpoint, impl, tmp_path):
    """The tie of a one-element embedding (vocab_size=1, d_model=1) is stored once and loads back tied."""
    model = _model(impl, 4, vocab_size=1, context_length=2, d_model=1, n_heads=1, dropout=0.0)
    checkpoint.save_checkpoint(tmp_path / "c", model, step=1, rng_state=_RNG)
    _assert_each_shared_tensor_once(tmp_path / "c", model, ["lm_head.weight"])
    loaded = checkpoint.load_checkpoint(tmp_path / "c").model
    _assert_same_weights(_state(loaded), _state(model), "weights of a one-element tied model")
    assert loaded.lm_head.weight is loaded.token_embedding.weight, "the loaded lm_head is not the token embedding"


def test_distinct_zero_size_tensors_are_not_aliases(checkpoint, impl, tmp_path):
    """Two distinct zero-size tensors of one shape (no storage to share) are each stored under their own name, not tied."""
    model = _tiny(impl, 5)
    model.register_buffer("empty_a", torch.zeros(0))
    model.register_buffer("empty_b", torch.zeros(0))
    checkpoint.save_checkpoint(tmp_path / "c", model, step=1, rng_state=_RNG)
    _assert_each_shared_tensor_once(tmp_path / "c", model, ["lm_head.weight"])


# --- a write that fails -----------------------------------------------------------------------------

def test_failed_tensor_write_is_an_os_error_and_keeps_the_checkpoint(checkpoint, impl, tmp_path):
    """A save whose files cannot be written (a full disk; here a 64-byte file size limit) raises an OSError, and the checkpoint already there still loads."""
    checkpoint.save_checkpoint(tmp_path / "c", _tiny(impl, 1), step=1, rng_state=_RNG)
    try:
        with file_size_limit(64):
            checkpoint.save_checkpoint(tmp_path / "c", _tiny(impl, 2), step=2, rng_state=_RNG)
    except OSError:
        pass
    except NotImplementedError:
        raise
    except Exception as err:  # noqa: BLE001 - the property is the type
        raise AssertionError(f"a failed write must raise an OSError (what a full disk gives), "
                             f"got {type(err).__name__}: {err}") from None
    else:
        raise AssertionError("the save under a 64-byte file size limit did not fail")
    assert_equal(checkpoint.load_checkpoint(tmp_path / "c").step, 1, what="step of the checkpoint kept after the failed save")

