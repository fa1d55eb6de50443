"""Spec of ``checkpoint``: ``save_checkpoint``, ``load_checkpoint``, ``load_model``, RNG state helpers."""

import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from .support import assert_equal, randint, raises_clear, seed_all, seeds

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


@pytest.mark.parametrize("name", ["model.safetensors", "checkpoint.json"])
@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_corrupt_checkpoint_raises_clear_error(checkpoint, impl, tmp_path, name, damage):
    """A truncated, altered or missing file raises a clear error naming the file, never loads garbage."""
    model, opt = _trained(impl, 0)
    checkpoint.save_checkpoint(tmp_path / "c", model, step=2, optimizer=opt)
    file = tmp_path / "c" / name
    data = file.read_bytes()
    if damage == "truncate":
        file.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        i = len(data) - 9  # inside the tensor data / the JSON's last lines
        file.write_bytes(data[:i] + bytes([data[i] ^ 0x55]) + data[i + 1:])
    else:
        file.unlink()
    errors = (ValueError, FileNotFoundError) if damage == "delete" else ValueError
    with raises_clear(errors, name):
        checkpoint.load_checkpoint(tmp_path / "c")


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
