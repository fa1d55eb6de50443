"""Spec of ``lora``: ``LoRALinear`` (h = W x + b + (alpha / r) B A dropout(x)), ``apply_lora``,
merge / unmerge, the adapter file (Hu et al., 2021)."""

import json
import struct

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from .support import (assert_close, assert_equal, batch_shapes, randint, randn, raises_clear,
                      rewrite_safetensors, seed_all, seeds, sizes)

TINY = dict(vocab_size=32, context_length=8, n_layers=2, d_model=8, n_heads=2)
ALL_TARGETS = ("q", "k", "v", "o", "w1", "w2", "w3")
#: short target name -> module path inside a block
PATHS = {"q": "attn.q_proj", "k": "attn.k_proj", "v": "attn.v_proj", "o": "attn.out_proj",
         "w1": "ffn.w1", "w2": "ffn.w2", "w3": "ffn.w3"}


@pytest.fixture(scope="module")
def lora(impl):
    return impl.component("lora")


def _linear(impl, n_in, n_out, bias=True, dtype=torch.float64, seed=0):
    seed_all(seed)
    layer = impl.component("linear").Linear(n_in, n_out, bias=bias).to(dtype)
    if bias:
        with torch.no_grad():
            layer.bias.copy_(randn((n_out,), seed + 7, dtype))
    return layer


def _model(impl, seed=0, dtype=torch.float64, **overrides):
    model = impl.component("model")
    seed_all(seed)
    m = model.TransformerLM(model.ModelConfig(**{**TINY, **overrides})).to(dtype)
    return m.eval()


def _randomise_adapters(lora, model, seed, scale=0.5):
    """B (and A) drawn at random, so that B A is not zero."""
    with torch.no_grad():
        for i, p in enumerate(lora.lora_parameters(model)):
            p.copy_(randn(p.shape, seed + 11 * i, p.dtype, scale=scale))


def _logits(model, seed):
    return model(randint(0, TINY["vocab_size"], (2, TINY["context_length"]), seed))[0]


def _base_weights(model):
    """The base model's tensors (every parameter and buffer that is not an adapter), cloned."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if ".lora_" not in k}


targets_strategy = st.lists(st.sampled_from(ALL_TARGETS[:6]), min_size=1, max_size=6, unique=True).map(tuple)


# --- LoRALinear ---------------------------------------------------------------------------------

@given(n_in=sizes(), n_out=sizes(), rank=sizes(6), alpha=st.sampled_from([1.0, 2.0, 16.0, 3.5]), bias=st.booleans())
def test_adapter_shapes_and_frozen_base(lora, impl, n_in, n_out, rank, alpha, bias):
    """LoRALinear: lora_A is (rank, in), lora_B is (out, rank) and zero, scaling = alpha / rank;
    the base layer's parameters are frozen (requires_grad False), the adapters trainable."""
    base = _linear(impl, n_in, n_out, bias=bias, dtype=torch.float32)
    layer = lora.LoRALinear(base, rank=rank, alpha=alpha)
    assert layer.base is base, "LoRALinear.base must be the wrapped Linear itself"
    assert_equal(tuple(layer.lora_A.shape), (rank, n_in), what="lora_A shape (rank, in_features)")
    assert_equal(tuple(layer.lora_B.shape), (n_out, rank), what="lora_B shape (out_features, rank)")
    assert torch.all(layer.lora_B == 0), "lora_B must start at zero (so B A = 0 at initialisation)"
    assert layer.scaling == pytest.approx(alpha / rank), \
        f"scaling: expected alpha / rank = {alpha} / {rank} = {alpha / rank}, got {layer.scaling}"
    assert_equal(layer.lora_A.dtype, base.weight.dtype, what="lora_A dtype (the base weight's)")
    for name, p in base.named_parameters():
        assert not p.requires_grad, f"the base layer's {name} must be frozen (requires_grad False)"
    assert layer.lora_A.requires_grad and layer.lora_B.requires_grad, "lora_A and lora_B must require gradients"


def test_A_initialisation_statistics(lora, impl):
    """lora_A starts as nn.Linear's Kaiming-uniform: U(-1/sqrt(in), 1/sqrt(in)) (65,536 draws).

    Bound: every |A| <= 1/sqrt(in) = 1/16 and max|A| > 0.99 / 16. Mean within 0.001 of 0 (std of the
    mean 1.4e-4: 7 standard errors), std within 0.001 of 1/(16 sqrt 3) = 0.0361 (std error 1e-4).
    """
    layer = lora.LoRALinear(_linear(impl, 256, 4, dtype=torch.float32), rank=256, alpha=1.0)
    a = layer.lora_A.detach().double()
    bound = 1.0 / 16
    assert a.abs().max().item() <= bound * (1 + 1e-6), \
        f"lora_A: expected values in [-1/sqrt(in), 1/sqrt(in)] = [-{bound}, {bound}], got max |A| {a.abs().max().item():.4g}"
    assert a.abs().max().item() > 0.99 * bound, f"lora_A: expected U(-{bound}, {bound}), got max |A| {a.abs().max().item():.4g}"
    assert abs(a.mean().item()) < 0.001, f"lora_A mean: expected 0, got {a.mean().item():.4g}"
    expected_std = bound / 3 ** 0.5
    assert abs(a.std().item() - expected_std) < 0.001, \
        f"lora_A std: expected 1/(sqrt(in) sqrt(3)) = {expected_std:.4g} (uniform), got {a.std().item():.4g}"


@given(lead=batch_shapes(0, 2), n_in=sizes(), n_out=sizes(), rank=sizes(4),
       alpha=st.sampled_from([1.0, 4.0, 16.0, 0.5]), bias=st.booleans(), p=st.sampled_from([0.0, 0.5]), seed=seeds)
def test_equals_formula(lora, impl, lead, n_in, n_out, rank, alpha, bias, p, seed):
    """LoRALinear(x) = W x + b + (alpha / rank) * B (A x), checked against F.linear (float64; eval
    mode, where dropout of rate p is the identity)."""
    layer = lora.LoRALinear(_linear(impl, n_in, n_out, bias=bias, seed=seed), rank=rank, alpha=alpha, dropout=p)
    with torch.no_grad():
        layer.lora_A.copy_(randn((rank, n_in), seed + 1, torch.float64))
        layer.lora_B.copy_(randn((n_out, rank), seed + 2, torch.float64))
    layer.eval()
    x = randn((*lead, n_in), seed + 3, torch.float64)
    w, b = layer.base.weight, layer.base.bias
    expected = F.linear(x, w, b) + (alpha / rank) * F.linear(F.linear(x, layer.lora_A), layer.lora_B)
    assert_close(layer(x), expected, what=f"LoRALinear(x) = W x + b + (alpha/r) B A x, alpha={alpha}, r={rank}")


def test_dropout_on_adapter_input_only(lora, impl):
    """In training mode dropout acts on the adapter's input x alone: with in_features = 1 each
    output row's update is either all zero (x dropped) or all (alpha/r) B A x / (1 - p) (kept);
    the base path W x + b never sees dropout. Both cases occur over 64 rows (p = 0.5)."""
    p = 0.5
    layer = lora.LoRALinear(_linear(impl, 1, 16, seed=3), rank=2, alpha=2.0, dropout=p)
    with torch.no_grad():
        layer.lora_B.copy_(randn((16, 2), 5, torch.float64))
    layer.train()
    x = randn((64, 1), 6, torch.float64)
    base = F.linear(x, layer.base.weight, layer.base.bias)
    full = layer.scaling * F.linear(F.linear(x, layer.lora_A), layer.lora_B) / (1 - p)
    seed_all(1)
    update = layer(x).detach() - base
    kept = [bool(torch.allclose(u, f, atol=1e-9, rtol=1e-7)) for u, f in zip(update, full)]
    dropped = [bool(torch.all(u.abs() <= 1e-9)) for u in update]
    bad = [i for i in range(64) if not (kept[i] or dropped[i])]
    assert not bad, (f"row {bad[0]}: the update (output - (W x + b)) must be 0 or (alpha/r) B A x / (1 - p) "
                     f"as a whole (dropout on the input x, not on the output, not on the base path); "
                     f"got {update[bad[0]].tolist()[:4]}..., expected 0 or {full[bad[0]].tolist()[:4]}...")
    assert any(kept) and any(dropped), \
        f"with dropout p={p} in training mode some rows must be dropped and some kept: kept {sum(kept)} of 64"
    layer.eval()
    assert_close(layer(x) - base, full * (1 - p), what="eval mode: no dropout on the update")


def test_defaults(lora, impl):
    """The documented defaults, with no argument given: LoRALinear(base) has rank 8, alpha 16,
    dropout 0 (scaling 2, lora_A (8, in), lora_B (out, 8), training mode draws no mask); apply_lora(model)
    wraps DEFAULT_TARGETS = ("q", "v") of every block with those settings."""
    base = _linear(impl, 6, 5)
    layer = lora.LoRALinear(base)
    assert_equal((layer.rank, layer.alpha, layer.dropout, layer.scaling), (8, 16.0, 0.0, 2.0),
                 what="LoRALinear(base): (rank, alpha, dropout, scaling)")
    assert_equal((tuple(layer.lora_A.shape), tuple(layer.lora_B.shape)), ((8, 6), (5, 8)),
                 what="LoRALinear(base): lora_A and lora_B shapes")
    with torch.no_grad():
        layer.lora_B.copy_(randn((5, 8), 3, layer.lora_B.dtype))
    x = randn((4, 6), 4, torch.float64)
    expected = base(x) + 2.0 * (x @ layer.lora_A.T @ layer.lora_B.T)
    assert_close(layer.train()(x), expected, what="LoRALinear(base)(x) in training mode (default dropout 0)")
    assert_equal(tuple(lora.DEFAULT_TARGETS), ("q", "v"), what="DEFAULT_TARGETS")
    model = lora.apply_lora(_model(impl, dtype=torch.float32))
    wrapped = lora.lora_layers(model)
    assert_equal(sorted(wrapped), sorted(f"blocks.{i}.{PATHS[t]}" for i in range(TINY["n_layers"]) for t in "qv"),
                 what="modules wrapped by apply_lora(model)")
    for name, w in wrapped.items():
        assert_equal((w.rank, w.alpha, w.dropout), (8, 16.0, 0.0), what=f"{name}: (rank, alpha, dropout) by default")


# --- apply_lora on a TransformerLM ----------------------------------------------------------------

@settings(max_examples=10, deadline=None)
@given(targets=targets_strategy, rank=sizes(4), activation=st.sampled_from(["gelu", "swiglu"]), seed=seeds)
def test_wrapped_model_equals_base_at_init(lora, impl, targets, rank, activation, seed):
    """At initialisation (B = 0) the wrapped model's logits equal the base model's exactly (float32)."""
    model = _model(impl, seed=seed % 1000, dtype=torch.float32, activation=activation)
    before = _logits(model, seed).detach()
    if activation == "swiglu":
        targets = targets + ("w3",)
    lora.apply_lora(model, targets=targets, rank=rank, alpha=16.0)
    assert_equal(_logits(model, seed).detach(), before, what=f"logits after apply_lora(targets={targets}) at init")


@given(targets=targets_strategy)
@settings(max_examples=10, deadline=None)
def test_targets_wrap_the_named_projections(lora, impl, targets):
    """apply_lora(targets=...) wraps exactly those projections of every block (q -> attn.q_proj,
    k -> attn.k_proj, v -> attn.v_proj, o -> attn.out_proj, w1/w2/w3 -> ffn.w1/w2/w3), nothing else."""
    model = lora.apply_lora(_model(impl, dtype=torch.float32), targets=targets, rank=2)
    expected = sorted(f"blocks.{i}.{PATHS[t]}" for i in range(TINY["n_layers"]) for t in targets)
    assert_equal(sorted(lora.lora_layers(model)), expected, what=f"wrapped modules for targets {targets}")
    keys = sorted(lora.adapter_state_dict(model))
    assert_equal(keys, sorted(f"{n}.lora_{w}" for n in expected for w in "AB"), what="adapter_state_dict keys")


def test_only_adapters_get_gradients_and_optimizer_state(lora, impl):
    """After apply_lora only lora_A / lora_B require gradients; a backward pass leaves every base
    parameter's grad None; AdamW (weight decay 0.1) over lora_parameters keeps state for the adapters
    alone, and after 3 steps every base tensor is bit-identical while the adapters have moved."""
    model = _model(impl, dtype=torch.float32)
    model.train()
    lora.apply_lora(model, targets=("q", "v", "w1"), rank=2, alpha=4.0)
    adapters = {id(p) for p in lora.lora_parameters(model)}
    assert len(adapters) == 2 * TINY["n_layers"] * 3, \
        f"lora_parameters: expected one A and one B per wrapped projection ({2 * TINY['n_layers'] * 3}), got {len(adapters)}"
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    wrong = [n for n, p in model.named_parameters() if p.requires_grad != (id(p) in adapters)]
    assert not wrong, f"only the adapters may require gradients; wrong requires_grad on {wrong[:5]} (trainable: {trainable[:5]})"
    before = _base_weights(model)
    adam = impl.component("optim").AdamW(lora.lora_parameters(model), lr=1e-2, weight_decay=0.1)
    idx = randint(0, TINY["vocab_size"], (2, TINY["context_length"]), 1)
    adapters_before = [p.detach().clone() for p in lora.lora_parameters(model)]
    for _ in range(3):
        adam.zero_grad()
        _, loss = model(idx, idx)
        loss.backward()
        with_grad = [n for n, p in model.named_parameters() if p.grad is not None and id(p) not in adapters]
        assert not with_grad, f"base parameters got gradients: {with_grad[:5]}"
        adam.step()
    states = [p for p in model.parameters() if p in adam.state and len(adam.state[p])]
    assert all(id(p) in adapters for p in states), "optimiser state must exist for the adapter parameters only"
    for k, v in _base_weights(model).items():
        assert_equal(v, before[k], what=f"base tensor {k} after 3 LoRA fine-tuning steps")
    moved = sum(not torch.equal(p.detach(), q) for p, q in zip(lora.lora_parameters(model), adapters_before))
    assert moved > 0, "the adapters must change when trained"


# --- merge / unmerge ----------------------------------------------------------------------------------

@settings(max_examples=10, deadline=None)
@given(targets=targets_strategy, rank=sizes(4), alpha=st.sampled_from([1.0, 3.0, 16.0]), seed=seeds)
def test_merged_equals_unmerged(lora, impl, targets, rank, alpha, seed):
    """merge_lora: each base weight becomes W + (alpha/r) B A, and the logits equal the unmerged
    model's (float64, within 1e-10 + 1e-7 |x|); merging twice is merging once."""
    model = lora.apply_lora(_model(impl, dtype=torch.float64), targets=targets, rank=rank, alpha=alpha)
    _randomise_adapters(lora, model, seed)
    layers = lora.lora_layers(model)
    expected_w = {n: (l.base.weight + (alpha / rank) * l.lora_B @ l.lora_A).detach().clone() for n, l in layers.items()}
    unmerged = _logits(model, seed).detach()
    lora.merge_lora(model)
    lora.merge_lora(model)
    for n, l in layers.items():
        assert l.merged, f"{n}: merged must be True after merge_lora"
        assert_close(l.base.weight, expected_w[n], what=f"{n}.base.weight after merge: W + (alpha/r) B A")
    assert_close(_logits(model, seed), unmerged, what="logits merged vs unmerged")


@settings(max_examples=10, deadline=None)
@given(targets=targets_strategy, rank=sizes(4), seed=seeds)
def test_unmerge_restores_base_bits(lora, impl, targets, rank, seed):
    """unmerge_lora after merge_lora gives back every base weight bit for bit (float32: no W + D - D
    rounding) and the unmerged logits exactly."""
    model = lora.apply_lora(_model(impl, dtype=torch.float32), targets=targets, rank=rank, alpha=7.0)
    _randomise_adapters(lora, model, seed, scale=3.0)
    before = _base_weights(model)
    logits = _logits(model, seed).detach()
    lora.merge_lora(model)
    lora.unmerge_lora(model)
    lora.unmerge_lora(model)
    for n, l in lora.lora_layers(model).items():
        assert not l.merged, f"{n}: merged must be False after unmerge_lora"
    after = _base_weights(model)
    for k in before:
        assert_equal(after[k], before[k], what=f"base tensor {k} after merge then unmerge")
    assert_equal(_logits(model, seed).detach(), logits, what="logits after merge then unmerge")


# --- the adapter file ------------------------------------------------------------------------------------

def _data_bytes(path):
    """Bytes of tensor data in a safetensors file: its size less the 8-byte length and the header."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return len(raw) - 8 - n, json.loads(raw[8:8 + n])


def test_adapter_file_round_trip(lora, impl, tmp_path):
    """save_adapter writes the adapters alone; load_adapter on a fresh base model gives the same
    logits exactly and the same adapter tensors."""
    model = lora.apply_lora(_model(impl, dtype=torch.float32), targets=("q", "k", "o", "w2"), rank=3, alpha=5.0)
    _randomise_adapters(lora, model, 4)
    path = lora.save_adapter(model, tmp_path / "adapter.safetensors")
    assert (tmp_path / "adapter.safetensors").is_file(), "save_adapter must write the file at path"
    _, header = _data_bytes(tmp_path / "adapter.safetensors")
    stored = sorted(k for k in header if k != "__metadata__")
    assert_equal(stored, sorted(lora.adapter_state_dict(model)), what="tensors in the adapter file (adapters only)")
    fresh = lora.load_adapter(_model(impl, dtype=torch.float32), path)
    for k, v in lora.adapter_state_dict(model).items():
        assert_equal(lora.adapter_state_dict(fresh)[k], v, what=f"{k} after load_adapter")
    assert_equal(_logits(fresh, 2).detach(), _logits(model, 2).detach(), what="logits after load_adapter")
    for name, layer in lora.lora_layers(fresh).items():
        assert (layer.rank, layer.alpha) == (3, 5.0), f"{name}: rank/alpha from the file: expected (3, 5.0), got {(layer.rank, layer.alpha)}"


def test_adapter_file_size_proportional_to_rank(lora, impl, tmp_path):
    """The adapter file's tensor data is rank * sum(in + out) * 4 bytes (float32) over the wrapped
    projections: twice the rank, twice the data."""
    sizes_by_rank = {}
    for rank in (2, 4):
        model = lora.apply_lora(_model(impl, dtype=torch.float32), targets=("q", "v"), rank=rank)
        data, _ = _data_bytes(lora.save_adapter(model, tmp_path / f"r{rank}.safetensors"))
        per_rank = sum(l.base.in_features + l.base.out_features for l in lora.lora_layers(model).values())
        assert_equal(data, rank * per_rank * 4, what=f"adapter tensor bytes at rank {rank}")
        sizes_by_rank[rank] = data
    assert_equal(sizes_by_rank[4], 2 * sizes_by_rank[2], what="adapter data at rank 4 vs twice rank 2")


# --- errors ----------------------------------------------------------------------------------------

def test_bad_layer_arguments(lora, impl):
    """rank not a positive int, alpha not > 0, dropout outside [0, 1), base not a Linear: clear errors."""
    base = _linear(impl, 4, 4, dtype=torch.float32)
    with raises_clear(ValueError, "rank"):
        lora.LoRALinear(base, rank=0)
    with raises_clear(TypeError, "rank"):
        lora.LoRALinear(base, rank=2.5)
    with raises_clear(ValueError, "alpha"):
        lora.LoRALinear(base, rank=2, alpha=0.0)
    with raises_clear(TypeError, "alpha"):
        lora.LoRALinear(base, rank=2, alpha="16")
    with raises_clear(ValueError, "dropout"):
        lora.LoRALinear(base, rank=2, dropout=1.0)
    with raises_clear(ValueError, "dropout"):
        lora.LoRALinear(base, rank=2, dropout=-0.1)
    with raises_clear(TypeError, "base"):
        lora.LoRALinear(torch.zeros(4, 4), rank=2)


def test_bad_targets(lora, impl):
    """An unknown target name is a ValueError listing the allowed names; no targets, 'w3' without
    swiglu (listing the targets that model allows), targets that are not a sequence, a second
    apply_lora, rank 0 and dropout 1 are clear errors too."""
    with raises_clear(ValueError, "targets", "'q'", "'k'", "'v'", "'o'", "'w1'", "'w2'"):
        lora.apply_lora(_model(impl, dtype=torch.float32), targets=("q", "query"))
    with raises_clear(ValueError, "targets"):
        lora.apply_lora(_model(impl, dtype=torch.float32), targets=())
    with raises_clear(ValueError, "w3", "swiglu", "'q'", "'k'", "'v'", "'o'", "'w1'", "'w2'"):
        lora.apply_lora(_model(impl, dtype=torch.float32), targets=("w3",))
    with raises_clear(TypeError, "targets"):
        lora.apply_lora(_model(impl, dtype=torch.float32), targets=5)
    with raises_clear(ValueError, "rank"):
        lora.apply_lora(_model(impl, dtype=torch.float32), rank=0)
    with raises_clear(ValueError, "dropout"):
        lora.apply_lora(_model(impl, dtype=torch.float32), dropout=1.0)
    model = lora.apply_lora(_model(impl, dtype=torch.float32), targets=("q",))
    with raises_clear(ValueError, "LoRA"):
        lora.apply_lora(model, targets=("v",))


@pytest.mark.parametrize("bad", [dict(alpha=0.0), dict(alpha=-1.0), dict(dropout=1.0), dict(dropout=-0.5),
                                 dict(dropout=1.5), dict(rank=0), dict(targets=("q", "query")),
                                 dict(targets=("q", "w3"))], ids=repr)
def test_refused_apply_lora_leaves_the_model_as_it_was(lora, impl, bad):
    """apply_lora checks every argument before it touches the model: a refused call (ValueError)
    wraps nothing, freezes nothing and changes no tensor, so the model can be used or wrapped again."""
    model = _model(impl, dtype=torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError):
        lora.apply_lora(model, **bad)
    assert_equal(lora.lora_layers(model), {}, what=f"adapters after a refused apply_lora({bad})")
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert_equal(frozen, [], what=f"parameters frozen by a refused apply_lora({bad})")
    assert_equal(sorted(model.state_dict()), sorted(before), what=f"state_dict keys after a refused apply_lora({bad})")
    for k, v in model.state_dict().items():
        assert_equal(v, before[k], what=f"{k} after a refused apply_lora({bad})")


def test_w3_target_with_swiglu_from_any_string(lora, impl):
    """activation="swiglu" built at run time (as read from a config file, not a literal) allows the
    "w3" target: the activation is compared by value."""
    activation = "".join(["swi", "glu"])
    model = lora.apply_lora(_model(impl, dtype=torch.float32, activation=activation), targets=("w3",), rank=2)
    assert_equal(sorted(lora.lora_layers(model)), [f"blocks.{i}.ffn.w3" for i in range(TINY["n_layers"])],
                 what='modules wrapped for targets ("w3",) with activation built at run time')


def test_bad_adapter_files(lora, impl, tmp_path):
    """load_adapter refuses, naming the file: a missing path (FileNotFoundError), bytes that are not
    safetensors, a safetensors file without the adapter metadata, an adapter of another format (its
    tensors fitting the model), an adapter for more or fewer layers (naming a missing or an unexpected
    tensor) and one for a narrower or a wider model (naming the tensor whose shape does not fit)."""
    from safetensors.torch import save_file
    missing = tmp_path / "missing.safetensors"
    with raises_clear(FileNotFoundError, "missing.safetensors"):
        lora.load_adapter(_model(impl, dtype=torch.float32), missing)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x07\x00\x00\x00\x00\x00\x00\x00not json")
    with raises_clear(ValueError, "garbage.safetensors"):
        lora.load_adapter(_model(impl, dtype=torch.float32), garbage)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with raises_clear(ValueError, "plain.safetensors"):
        lora.load_adapter(_model(impl, dtype=torch.float32), plain)
    two = lora.save_adapter(lora.apply_lora(_model(impl, dtype=torch.float32), targets=("q",), rank=2),
                            tmp_path / "two_layers.safetensors")
    for fmt in ("bare-lm-lora-0", "bare-lm-lora-2", "another-lora-9"):   # sorting before and after
        other = rewrite_safetensors(two, tmp_path / f"format-{fmt}.safetensors", meta_key="lora",
                                    meta_edit=lambda settings_: settings_.update(format=fmt))
        with raises_clear(ValueError, other.name):
            lora.load_adapter(_model(impl, dtype=torch.float32), other)
    with pytest.raises(ValueError) as refused:
        lora.load_adapter(_model(impl, dtype=torch.float32, n_layers=3), two)
    message = str(refused.value)
    assert "two_layers.safetensors" in message and "blocks.2.attn.q_proj.lora_A" in message, (
        f"the error should name the file and the missing blocks.2.attn.q_proj.lora_A, got {message!r}")
    assert "blocks.0.attn.q_proj.lora_A" not in message, (
        f"the error should name what does not fit, not blocks.0.attn.q_proj.lora_A, which fits: {message!r}")
    with raises_clear(ValueError, "two_layers.safetensors", "blocks.1.attn.q_proj.lora_A"):
        lora.load_adapter(_model(impl, dtype=torch.float32, n_layers=1), two)
    with raises_clear(ValueError, "two_layers.safetensors", "lora_A"):
        lora.load_adapter(_model(impl, dtype=torch.float32, d_model=16), two)
    wide = lora.save_adapter(lora.apply_lora(_model(impl, dtype=torch.float32, d_model=16), targets=("q",), rank=2),
                             tmp_path / "wide.safetensors")
    with raises_clear(ValueError, "wide.safetensors", "lora_A"):
        lora.load_adapter(_model(impl, dtype=torch.float32), wide)


def test_adapter_file_keeps_dropout_and_targets(lora, impl, tmp_path):
    """The settings travel with the file: load_adapter wraps the saved targets with the saved rank,
    alpha and dropout."""
    model = lora.apply_lora(_model(impl, dtype=torch.float32), targets=("v", "w1"), rank=2, alpha=3.0, dropout=0.25)
    fresh = lora.load_adapter(_model(impl, dtype=torch.float32), lora.save_adapter(model, tmp_path / "a.safetensors"))
    got = {name: (layer.rank, layer.alpha, layer.dropout) for name, layer in lora.lora_layers(fresh).items()}
    assert_equal(got, {name: (2, 3.0, 0.25) for name in lora.lora_layers(model)},
                 what="(rank, alpha, dropout) of the layers load_adapter wraps")
