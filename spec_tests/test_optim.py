"""Spec of ``optim``: ``AdamW``, ``param_groups``, ``clip_grad_norm`` and ``lr_schedule``."""

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from .support import assert_close, assert_equal, randn, raises_clear, seed_all, seeds

shape_lists = st.lists(st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple), min_size=1, max_size=4)
lrs = st.sampled_from([1e-3, 1e-2, 0.1])
betas_st = st.tuples(st.sampled_from([0.0, 0.5, 0.9]), st.sampled_from([0.0, 0.9, 0.999]))
eps_st = st.sampled_from([1e-8, 1e-3, 0.5])
wds = st.sampled_from([0.0, 0.1, 0.5])


@pytest.fixture(scope="module")
def optim(impl):
    return impl.component("optim")


def _params(shapes, seed):
    return [torch.nn.Parameter(randn(s, seed + i, torch.float64)) for i, s in enumerate(shapes)]


def _run(opt, params, shapes, seed, steps, first=0):
    """``steps`` optimizer steps with seeded gradients (gradient k of step s from seed + 1000 * s + k)."""
    for s in range(first, first + steps):
        for k, p in enumerate(params):
            p.grad = randn(p.shape, seed + 1000 * (s + 1) + k, torch.float64)
        opt.step()


# --- AdamW --------------------------------------------------------------------------------------

@given(shapes=shape_lists, lr=lrs, betas=betas_st, eps=eps_st, wd=wds, steps=st.integers(1, 5), seed=seeds)
def test_adamw_equals_torch(optim, shapes, lr, betas, eps, wd, steps, seed):
    """AdamW equals torch.optim.AdamW (bias correction, decoupled decay) step after step, in float64."""
    ours = _params(shapes, seed)
    opt = optim.AdamW(ours, lr=lr, betas=betas, eps=eps, weight_decay=wd)
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    ref = torch.optim.AdamW(theirs, lr=lr, betas=betas, eps=eps, weight_decay=wd)
    for s in range(steps):
        _run(opt, ours, shapes, seed, 1, first=s)
        _run(ref, theirs, shapes, seed, 1, first=s)
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_close(a.detach(), b.detach(), what=f"parameter {i} after step {s + 1}", atol=1e-12, rtol=1e-9)


@given(seed=seeds, lr=lrs, wd=wds)
@settings(max_examples=10)
def test_adamw_param_groups_keep_their_options(optim, seed, lr, wd):
    """Param-group dicts keep their own weight_decay (and lr), as in torch.optim.AdamW."""
    shapes = [(3, 2), (2,)]
    ours = _params(shapes, seed)
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    groups = lambda ps: [{"params": [ps[0]], "weight_decay": wd}, {"params": [ps[1]], "weight_decay": 0.0, "lr": lr / 2}]
    opt = optim.AdamW(groups(ours), lr=lr, weight_decay=0.3)
    ref = torch.optim.AdamW(groups(theirs), lr=lr, weight_decay=0.3)
    _run(opt, ours, shapes, seed, 3)
    _run(ref, theirs, shapes, seed, 3)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert_close(a.detach(), b.detach(), what=f"parameter {i} of group {i}", atol=1e-12, rtol=1e-9)


def test_adamw_weight_decay_is_decoupled(optim):
    """With a zero gradient, AdamW only shrinks p by (1 - lr * wd); the moments stay zero (no L2 term)."""
    p = torch.nn.Parameter(torch.tensor([2.0, -4.0], dtype=torch.float64))
    opt = optim.AdamW([p], lr=0.1, weight_decay=0.5)
    p.grad = torch.zeros_like(p)
    opt.step()
    assert_close(p.detach(), torch.tensor([2.0, -4.0], dtype=torch.float64) * (1 - 0.1 * 0.5),
                 what="parameter after one step with a zero gradient")


@given(shapes=shape_lists, betas=betas_st, wd=wds, k=st.integers(1, 3), m=st.integers(1, 3), seed=seeds)
@settings(max_examples=10)
def test_adamw_state_dict_resumes_exactly(optim, shapes, betas, wd, k, m, seed):
    """k steps, state_dict, a fresh AdamW + load_state_dict, m more steps == k + m steps in one go (bitwise)."""
    straight = _params(shapes, seed)
    opt = optim.AdamW(straight, lr=0.01, betas=betas, weight_decay=wd)
    _run(opt, straight, shapes, seed, k + m)
    first = _params(shapes, seed)
    opt1 = optim.AdamW(first, lr=0.01, betas=betas, weight_decay=wd)
    _run(opt1, first, shapes, seed, k)
    state = opt1.state_dict()
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in first]
    opt2 = optim.AdamW(resumed, lr=0.5, betas=(0.1, 0.2), weight_decay=0.0)  # overwritten by the state
    opt2.load_state_dict(state)
    _run(opt2, resumed, shapes, seed, m, first=k)
    for i, (a, b) in enumerate(zip(resumed, straight)):
        assert torch.equal(a.detach(), b.detach()), f"parameter {i}: resumed run differs from the straight run"


def test_adamw_defaults(optim):
    """AdamW(params, lr) alone uses betas (0.9, 0.999), eps 1e-8 and weight_decay 0.01 (torch.optim.AdamW with those)."""
    shapes = [(3, 2), (4,)]
    ours = _params(shapes, 0)
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt = optim.AdamW(ours, lr=0.1)
    ref = torch.optim.AdamW(theirs, lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    for s in range(4):
        for k, (a, b) in enumerate(zip(ours, theirs)):
            scale = 1e-8 if k == 0 else 1.0                      # tiny gradients: eps matters
            a.grad = randn(a.shape, 1000 * (s + 1) + k, torch.float64, scale)
            b.grad = a.grad.clone()
        opt.step()
        ref.step()
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_close(a.detach(), b.detach(), what=f"parameter {i} after step {s + 1} with default options",
                         atol=1e-12, rtol=1e-9)
    group = opt.param_groups[0]
    assert_equal((tuple(group["betas"]), group["eps"], group["weight_decay"]), ((0.9, 0.999), 1e-8, 0.01),
                 what="default (betas, eps, weight_decay) in param_groups[0]")


@given(shapes=shape_lists, k=st.integers(1, 3), m=st.integers(1, 3), seed=seeds)
@settings(max_examples=10)
def test_adamw_state_dict_round_trip(optim, shapes, k, m, seed):
    """A fresh AdamW loading a state dict (betas as a JSON list) reports the same state_dict, then runs as the original."""
    first = _params(shapes, seed)
    opt1 = optim.AdamW(first, lr=0.02, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1)
    _run(opt1, first, shapes, seed, k)
    state = copy.deepcopy(opt1.state_dict())      # as from a checkpoint: torch's load shares the tensors
    as_json = {"state": copy.deepcopy(state["state"]),
               "param_groups": [{**g, "betas": list(g["betas"])} for g in state["param_groups"]]}
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in first]
    opt2 = optim.AdamW(resumed, lr=0.5)
    opt2.load_state_dict(as_json)
    again = opt2.state_dict()
    for g in again["param_groups"]:
        assert isinstance(g["betas"], tuple), f"betas after load_state_dict: expected a tuple, got {g['betas']!r}"
    assert_equal(again["param_groups"], state["param_groups"], what="param_groups after the round trip")
    assert_equal(sorted(again["state"]), sorted(state["state"]), what="parameters with state")
    for i, entry in state["state"].items():
        got = again["state"][i]
        assert_equal(int(got["step"]), int(entry["step"]), what=f"step of parameter {i}")
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(got[key], entry[key]), f"{key} of parameter {i} changed in the round trip"
    _run(opt1, first, shapes, seed, m, first=k)
    _run(opt2, resumed, shapes, seed, m, first=k)
    for i, (a, b) in enumerate(zip(resumed, first)):
        assert torch.equal(a.detach(), b.detach()), f"parameter {i}: the loaded optimizer diverged from the original"


def test_adamw_skips_parameters_without_gradient(optim):
    """A parameter whose .grad is None is left untouched (no weight decay either)."""
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = optim.AdamW([a, b], lr=0.1, weight_decay=0.5)
    a.grad = torch.ones(3)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(3)), f"parameter without grad changed: {b.detach()}"
    assert not torch.equal(a.detach(), torch.ones(3)), "parameter with a grad did not change"


def test_adamw_bad_arguments(optim):
    """Negative lr or weight_decay, betas outside [0, 1) and eps <= 0 raise clear errors."""
    p = [torch.nn.Parameter(torch.ones(2))]
    with raises_clear(ValueError, "lr"):
        optim.AdamW(p, lr=-1e-3)
    with raises_clear(ValueError, "betas"):
        optim.AdamW(p, lr=1e-3, betas=(0.9, 1.0))
    with raises_clear(ValueError, "betas"):
        optim.AdamW(p, lr=1e-3, betas=(-0.1, 0.9))
    with raises_clear(ValueError, "eps"):
        optim.AdamW(p, lr=1e-3, eps=0.0)
    with raises_clear(ValueError, "weight_decay"):
        optim.AdamW(p, lr=1e-3, weight_decay=-0.1)


# --- param_groups -------------------------------------------------------------------------------

V, T, C = 37, 11, 8  # shapes that tell embedding tables (V, C), (T, C) from weight matrices


def _model(impl, **overrides):
    model = impl.component("model")
    seed_all(0)
    cfg = dict(vocab_size=V, context_length=T, n_layers=2, d_model=C, n_heads=2, positional="learned",
               tie_weights=True, bias=True)
    cfg.update(overrides)
    return model.TransformerLM(model.ModelConfig(**cfg))


def _ids(params):
    return [id(p) for p in params]


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_param_groups_tied_model(optim, impl, norm):
    """Tied model: exactly the weight matrices decay; biases, gains, token and position tables do not."""
    model = _model(impl, norm=norm)
    groups = optim.param_groups(model, 0.1)
    assert_equal(len(groups), 2, what="number of groups")
    assert_equal([g["weight_decay"] for g in groups], [0.1, 0.0], what="weight_decay of the two groups")
    named = dict(model.named_parameters())
    expected_decay = [id(p) for p in named.values() if p.dim() >= 2 and tuple(p.shape) not in ((V, C), (T, C))]
    expected_rest = [id(p) for p in named.values() if id(p) not in expected_decay]
    names = {id(p): n for n, p in named.items()}
    got_decay, got_rest = _ids(groups[0]["params"]), _ids(groups[1]["params"])
    assert_equal(sorted(names[i] for i in got_decay), sorted(names[i] for i in expected_decay), what="decayed parameters")
    assert_equal(sorted(names[i] for i in got_rest), sorted(names[i] for i in expected_rest), what="undecayed parameters")
    assert sorted(got_decay + got_rest) == sorted(_ids(model.parameters())), "every parameter exactly once"


def test_param_groups_untied_model(optim, impl):
    """Untied model: the lm_head matrix (V, C) decays, the token embedding (V, C) does not."""
    model = _model(impl, tie_weights=False)
    decay, rest = optim.param_groups(model, 0.2)
    vc = lambda ps: sum(1 for p in ps if tuple(p.shape) == (V, C))
    assert_equal((vc(decay["params"]), vc(rest["params"])), (1, 1), what="(V, C) matrices in (decay, no-decay)")
    assert sorted(_ids(decay["params"]) + _ids(rest["params"])) == sorted(_ids(model.parameters())), \
        "every parameter exactly once"


# --- clip_grad_norm -----------------------------------------------------------------------------

def _with_grads(shapes, seed, scale=1.0):
    params = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    for i, p in enumerate(params):
        p.grad = randn(p.shape, seed + i, torch.float32, scale)
    return params


def _norm(grads):
    return math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))


@given(shapes=shape_lists, ratio=st.sampled_from([0.05, 0.3, 0.7, 1.5, 4.0]), seed=seeds)
def test_clip_equals_torch(optim, shapes, ratio, seed):
    """clip_grad_norm equals torch.nn.utils.clip_grad_norm_: the returned norm and the clipped grads."""
    ours = _with_grads(shapes, seed)
    theirs = _with_grads(shapes, seed)
    max_norm = ratio * _norm([p.grad for p in ours])
    got = optim.clip_grad_norm(ours, max_norm)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    assert_close(torch.as_tensor(float(got)), torch.as_tensor(float(expected)), what="returned norm (before clipping)")
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert_close(a.grad, b.grad, what=f"clipped gradient {i}")


@given(shapes=shape_lists, seed=seeds)
def test_clip_keeps_direction(optim, shapes, seed):
    """Clipping scales ALL gradients by one factor: the global norm becomes max_norm * N / (N + 1e-6), the direction stays."""
    params = _with_grads(shapes, seed, scale=10.0)
    before = [p.grad.clone() for p in params]
    norm = _norm(before)
    max_norm = 0.25 * norm
    optim.clip_grad_norm(params, max_norm)
    factor = max_norm / (norm + 1e-6)
    for i, (p, g) in enumerate(zip(params, before)):
        assert_close(p.grad, g * factor, what=f"gradient {i} after clipping (one global factor)")
    assert_close(torch.tensor(_norm([p.grad for p in params]), dtype=torch.float64),      # max_norm, up to the 1e-6
                 torch.tensor(factor * norm, dtype=torch.float64), what="norm after clipping", rtol=1e-5)


@given(shapes=shape_lists, seed=seeds)
def test_clip_below_threshold_is_noop(optim, shapes, seed):
    """When the global norm is below max_norm, the gradients are unchanged and the norm is returned."""
    params = _with_grads(shapes, seed)
    before = [p.grad.clone() for p in params]
    norm = _norm(before)
    got = optim.clip_grad_norm(params, 2.0 * norm + 1.0)
    assert_close(torch.tensor(float(got), dtype=torch.float64), torch.tensor(norm, dtype=torch.float64),
                 what="returned norm", rtol=1e-5)
    for i, (p, g) in enumerate(zip(params, before)):
        assert torch.equal(p.grad, g), f"gradient {i} changed although the norm was below max_norm"


def test_clip_bad_arguments(optim):
    """max_norm <= 0 raises a ValueError naming max_norm."""
    params = _with_grads([(2,)], 0)
    with raises_clear(ValueError, "max_norm"):
        optim.clip_grad_norm(params, 0.0)
    with raises_clear(ValueError, "max_norm"):
        optim.clip_grad_norm(params, -1.0)


# --- lr_schedule --------------------------------------------------------------------------------

@st.composite
def schedules(draw):
    total = draw(st.integers(1, 200))
    warmup = draw(st.integers(0, total))
    max_lr = draw(st.sampled_from([1e-4, 3e-3, 1.0]))
    min_lr = max_lr * draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    return max_lr, min_lr, warmup, total


def _formula(step, max_lr, min_lr, warmup, total):
    if step < warmup:
        return max_lr * (step + 1) / warmup
    if step >= total:
        return min_lr
    progress = (step - warmup) / (total - warmup)
    return min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


@given(sched=schedules(), data=st.data())
def test_schedule_formula(optim, sched, data):
    """lr_schedule equals the documented formula (warmup (step+1)/warmup, cosine, then min_lr)."""
    max_lr, min_lr, warmup, total = sched
    steps = data.draw(st.lists(st.integers(0, total + 10), min_size=1, max_size=6))
    for step in steps:
        got = optim.lr_schedule(step, max_lr, min_lr, warmup, total)
        expected = _formula(step, max_lr, min_lr, warmup, total)
        assert abs(got - expected) <= 1e-12 * max(1.0, max_lr), f"lr at step {step} of {sched}: expected {expected}, got {got}"


@given(sched=schedules())
def test_schedule_landmarks(optim, sched):
    """lr reaches max_lr at the end of warmup (steps warmup-1 and warmup), min_lr at total_steps and after."""
    max_lr, min_lr, warmup, total = sched
    lr = lambda s: optim.lr_schedule(s, max_lr, min_lr, warmup, total)
    tol = 1e-12 * max(1.0, max_lr)
    if warmup > 0:
        assert abs(lr(warmup - 1) - max_lr) <= tol, f"lr(warmup - 1): expected max_lr={max_lr}, got {lr(warmup - 1)}"
        assert 0 < lr(0) <= max_lr / warmup + tol, f"lr(0) should be max_lr / warmup = {max_lr / warmup}, got {lr(0)}"
    if warmup < total:
        assert abs(lr(warmup) - max_lr) <= tol, f"lr(warmup): expected max_lr={max_lr}, got {lr(warmup)}"
    for s in (total, total + 1, total + 50):
        assert abs(lr(s) - min_lr) <= tol, f"lr({s}) with total_steps={total}: expected min_lr={min_lr}, got {lr(s)}"


@given(sched=schedules())
def test_schedule_shape(optim, sched):
    """Warmup increases, the decay never increases, and no step jumps more than one warmup or cosine step."""
    max_lr, min_lr, warmup, total = sched
    lrs = [optim.lr_schedule(s, max_lr, min_lr, warmup, total) for s in range(total + 3)]
    tol = 1e-12 * max(1.0, max_lr)
    for s in range(1, warmup):
        assert lrs[s] > lrs[s - 1], f"warmup must increase: lr({s - 1})={lrs[s - 1]}, lr({s})={lrs[s]}"
    for s in range(max(warmup, 1), total + 3):
        assert lrs[s] <= lrs[s - 1] + tol, f"lr increased after warmup: lr({s - 1})={lrs[s - 1]}, lr({s})={lrs[s]}"
    jump = max(max_lr / warmup if warmup else 0.0, (max_lr - min_lr) * math.pi / 2 / max(total - warmup, 1)) + tol
    for s in range(1, total + 3):
        assert abs(lrs[s] - lrs[s - 1]) <= jump, \
            f"jump between steps {s - 1} and {s}: {lrs[s - 1]} -> {lrs[s]} (more than {jump})"


def test_schedule_bad_arguments(optim):
    """Negative lrs or steps, min_lr > max_lr and warmup_steps > total_steps raise clear errors."""
    with raises_clear(ValueError, "max_lr"):
        optim.lr_schedule(0, -1.0, 0.0, 1, 10)
    with raises_clear(ValueError, "min_lr"):
        optim.lr_schedule(0, 1.0, 2.0, 1, 10)
    with raises_clear(ValueError, "warmup_steps"):
        optim.lr_schedule(0, 1.0, 0.1, 11, 10)
    with raises_clear(ValueError, "step"):
        optim.lr_schedule(-1, 1.0, 0.1, 1, 10)
    with raises_clear(ValueError, "total_steps"):
        optim.lr_schedule(0, 1.0, 0.1, 0, 0)


# --- argument boundaries and edge cases ----------------------------------------------------------

def test_adamw_betas_must_be_a_pair(optim):
    """betas must be a pair (tuple or list of two): one or three values are a ValueError naming betas."""
    p = [torch.nn.Parameter(torch.ones(2))]
    for bad in ((0.9,), (0.9, 0.99, 0.5), [0.9, 0.99, 0.999]):
        with raises_clear(ValueError, "betas"):
            optim.AdamW(p, lr=1e-3, betas=bad)
    opt = optim.AdamW(p, lr=1e-3, betas=[0.8, 0.9])
    assert_equal(tuple(opt.param_groups[0]["betas"]), (0.8, 0.9), what="betas given as a list")


@pytest.mark.parametrize("name", ["lr", "eps", "weight_decay"])
def test_adamw_hyperparameters_must_be_finite(optim, name):
    """lr, eps and weight_decay must be finite: nan and inf are a ValueError naming the argument."""
    p = [torch.nn.Parameter(torch.ones(2))]
    for bad in (float("nan"), float("inf")):
        with raises_clear(ValueError, name):
            optim.AdamW(p, **{"lr": 1e-3, name: bad})


def test_adamw_parameter_without_gradient_does_not_stop_the_others(optim):
    """Parameters after one whose .grad is None are still updated, as in torch.optim.AdamW."""
    shapes = [(3,), (2, 2), (4,), (3,)]
    ours = _params(shapes, 7)
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt, ref = optim.AdamW(ours, lr=0.1, weight_decay=0.1), torch.optim.AdamW(theirs, lr=0.1, weight_decay=0.1)
    for s in range(2):
        for params in (ours, theirs):
            for k in (1, 3):                                   # parameters 0 and 2 have no gradient
                params[k].grad = randn(shapes[k], 100 * s + k, torch.float64)
        opt.step()
        ref.step()
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert_close(a.detach(), b.detach(), what=f"parameter {i} (0 and 2 without gradient)", atol=1e-12, rtol=1e-9)


def test_adamw_loads_torch_adamw_state(optim):
    """AdamW loads torch.optim.AdamW's state dict (its step is a 0-dim tensor): the step comes back
    an int, and the following steps equal torch's."""
    shapes = [(3, 2), (4,)]
    theirs = _params(shapes, 3)
    ref = torch.optim.AdamW(theirs, lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)
    _run(ref, theirs, shapes, 3, 3)
    ours = [torch.nn.Parameter(p.detach().clone()) for p in theirs]
    opt = optim.AdamW(ours, lr=0.5)
    opt.load_state_dict(copy.deepcopy(ref.state_dict()))
    steps = [opt.state_dict()["state"][i]["step"] for i in range(len(shapes))]
    assert all(type(s) is int for s in steps), f"step after loading torch's state: expected ints, got {steps!r}"
    assert_equal(steps, [3, 3], what="steps after loading torch's state")
    _run(opt, ours, shapes, 3, 2, first=3)
    _run(ref, theirs, shapes, 3, 2, first=3)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert_close(a.detach(), b.detach(), what=f"parameter {i} resumed from torch's state", atol=1e-12, rtol=1e-9)


def test_param_groups_weight_decay_boundary(optim, impl):
    """param_groups' weight_decay must be >= 0: -1e-9 is a ValueError naming weight_decay, 0 is accepted."""
    model = _model(impl)
    with raises_clear(ValueError, "weight_decay"):
        optim.param_groups(model, -1e-9)
    assert_equal([g["weight_decay"] for g in optim.param_groups(model, 0.0)], [0.0, 0.0], what="weight_decay of the groups for 0")


def test_param_groups_decays_layers_nested_in_an_embedding(optim, impl):
    """Only an embedding's own table is exempt: a Linear attached inside the token embedding module
    (a factorised embedding's projection) is a weight matrix and decays."""
    model = _model(impl)
    model.token_embedding.proj = torch.nn.Linear(C, 5, bias=False)
    decay, rest = optim.param_groups(model, 0.1)
    assert id(model.token_embedding.proj.weight) in _ids(decay["params"]), "a Linear inside the embedding was not decayed"
    assert id(model.token_embedding.weight) in _ids(rest["params"]), "the token embedding table was decayed"


def test_param_groups_decays_parameters_of_three_or_more_dims(optim, impl):
    """Every parameter of >= 2 dims that is not an embedding table decays: a Conv1d's 3-D weight too (its bias does not)."""
    model = _model(impl)
    model.conv = torch.nn.Conv1d(C, 3, kernel_size=2)
    decay, rest = optim.param_groups(model, 0.1)
    assert id(model.conv.weight) in _ids(decay["params"]), "a 3-D weight was not decayed"
    assert id(model.conv.bias) in _ids(rest["params"]), "a bias was decayed"


def test_clip_without_gradients_returns_zero(optim):
    """clip_grad_norm of parameters that have no gradient (or of none) returns 0.0, as torch's does."""
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 2))]
    got = optim.clip_grad_norm(params, 1.0)
    assert_equal(float(got), float(torch.nn.utils.clip_grad_norm_(params, 1.0)), what="norm without gradients")
    assert_equal(float(got), 0.0, what="norm without gradients")
    assert_equal(float(optim.clip_grad_norm([], 1.0)), 0.0, what="norm of no parameters")


def test_clip_at_exactly_max_norm_is_noop(optim):
    """Clipping is for N > max_norm only: gradients (3, 4) (N = 5 exactly) are unchanged for max_norm 5,
    and scaled by max_norm / (N + 1e-6) for the next float below 5."""
    for dtype in (torch.float32, torch.float64):
        p = torch.nn.Parameter(torch.zeros(2, dtype=dtype))
        p.grad = torch.tensor([3.0, 4.0], dtype=dtype)
        assert_equal(float(optim.clip_grad_norm([p], 5.0)), 5.0, what=f"norm of (3, 4) in {dtype}")
        assert torch.equal(p.grad, torch.tensor([3.0, 4.0], dtype=dtype)), f"gradient changed at N == max_norm: {p.grad}"
        below = math.nextafter(5.0, 0.0)
        optim.clip_grad_norm([p], below)
        assert_close(p.grad, torch.tensor([3.0, 4.0], dtype=dtype) * (below / (5.0 + 1e-6)),
                     what=f"gradient clipped just below N in {dtype}", atol=0, rtol=1e-12 if dtype == torch.float64 else 1e-7)


@given(shapes=shape_lists, ratio=st.sampled_from([0.1, 0.5, 0.9]), seed=seeds)
def test_clip_coefficient_is_exact(optim, shapes, ratio, seed):
    """In float64 the clipped gradient is exactly g * max_norm / (N + 1e-6); with N ~ 1e-3 the 1e-6 shows."""
    params = [torch.nn.Parameter(torch.zeros(s, dtype=torch.float64)) for s in shapes]
    for i, p in enumerate(params):
        p.grad = randn(p.shape, seed + i, torch.float64, 1e-3)
    before = [p.grad.clone() for p in params]
    norm = _norm(before)
    max_norm = ratio * norm
    got = optim.clip_grad_norm(params, max_norm)
    assert_close(torch.tensor(float(got), dtype=torch.float64), torch.tensor(norm, dtype=torch.float64), what="returned norm")
    for i, (p, g) in enumerate(zip(params, before)):
        assert_close(p.grad, g * (max_norm / (norm + 1e-6)), what=f"gradient {i} after clipping", atol=0, rtol=1e-12)


def test_clip_max_norm_must_be_finite(optim):
    """max_norm nan or inf is a ValueError naming max_norm."""
    params = _with_grads([(2,)], 0)
    for bad in (float("nan"), float("inf")):
        with raises_clear(ValueError, "max_norm"):
            optim.clip_grad_norm(params, bad)


def test_schedule_min_lr_boundary(optim):
    """min_lr must be >= 0: -1e-9 is a ValueError naming min_lr; 0 is accepted (and reached at total_steps)."""
    with raises_clear(ValueError, "min_lr"):
        optim.lr_schedule(0, 1.0, -1e-9, 1, 10)
    assert_equal(optim.lr_schedule(10, 1.0, 0.0, 1, 10), 0.0, what="lr at total_steps with min_lr 0")


@pytest.mark.parametrize("name", ["step", "warmup_steps", "total_steps"])
def test_schedule_steps_must_be_ints(optim, name):
    """step, warmup_steps and total_steps must be ints: a float (even 2.0) or a bool is a TypeError naming it."""
    args = dict(step=2, warmup_steps=2, total_steps=10)
    lr = lambda a: optim.lr_schedule(a["step"], 1.0, 0.1, a["warmup_steps"], a["total_steps"])
    assert_equal(lr(args), 1.0, what="lr(2) with warmup_steps=2, max_lr=1 (ints accepted)")
    for bad in (2.0, True):
        with raises_clear(TypeError, name):
            lr({**args, name: bad})
