"""Spec of ``feedforward``: ``FeedForward(d_model, d_ff, activation, bias)`` and its activations."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from .support import assert_close, batch_shapes, float_dtypes, fresh, randn, raises_clear, seed_all, seeds, sizes

activations = st.sampled_from(["relu", "gelu", "gelu_tanh", "swiglu"])


@pytest.fixture(scope="module")
def feedforward(impl):
    return impl.component("feedforward")


def _build(feedforward, d, f, activation, bias, seed, dtype=torch.float64):
    seed_all(seed)
    ffn = feedforward.FeedForward(d, f, activation=activation, bias=bias).to(dtype)
    with torch.no_grad():  # biases start at zero: make them count
        for i, p in enumerate(ffn.parameters()):
            p.copy_(randn(p.shape, seed + i, dtype, 0.5))
    return ffn


def _oracle(ffn, x, activation):
    """The formula, written with torch.nn.functional."""
    lin = lambda layer, h: F.linear(h, layer.weight, layer.bias)  # noqa: E731
    if activation == "swiglu":
        return lin(ffn.w2, F.silu(lin(ffn.w1, x)) * lin(ffn.w3, x))
    act = {"relu": F.relu, "gelu": lambda h: F.gelu(h, approximate="none"),
           "gelu_tanh": lambda h: F.gelu(h, approximate="tanh")}[activation]
    return lin(ffn.w2, act(lin(ffn.w1, x)))


@given(lead=batch_shapes(0, 2), d=sizes(8), f=sizes(12), activation=activations, bias=st.booleans(),
       dtype=float_dtypes, seed=seeds)
def test_equals_formula(feedforward, lead, d, f, activation, bias, dtype, seed):
    """FFN(x) = W2 act(W1 x) for relu / exact gelu / tanh gelu, and W2 (silu(W1 x) * W3 x) for swiglu."""
    ffn = _build(feedforward, d, f, activation, bias, seed, dtype)
    x = randn((*lead, d), seed, dtype, 2.0)
    assert_close(ffn(x), _oracle(ffn, x, activation), what=f"FeedForward[{activation}](x)")


@given(t=sizes(6, 2), d=sizes(6), activation=activations, seed=seeds)
def test_position_wise(feedforward, t, d, activation, seed):
    """The FFN acts on each position alone: permuting positions permutes the outputs."""
    ffn = _build(feedforward, d, 2 * d, activation, True, seed)
    x = randn((2, t, d), seed, torch.float64)
    perm = torch.randperm(t, generator=torch.Generator().manual_seed(seed))
    assert_close(ffn(x[:, perm]), ffn(x)[:, perm], what="FFN(x[:, perm]) vs FFN(x)[:, perm]")


@given(d=sizes(16), f=sizes(32), activation=activations, bias=st.booleans())
def test_parameter_count(feedforward, d, f, activation, bias):
    """Parameters: 2*d*f (+ f + d biases); swiglu 3*d*f (+ 2f + d biases)."""
    ffn = feedforward.FeedForward(d, f, activation=activation, bias=bias)
    mats = 3 if activation == "swiglu" else 2
    expected = mats * d * f + ((mats - 1) * f + d if bias else 0)
    got = sum(p.numel() for p in ffn.parameters())
    assert got == expected, f"parameter count of FeedForward({d}, {f}, {activation!r}, bias={bias}): " \
                            f"expected {expected}, got {got}"


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh", "swiglu"])
def test_gradients_reach_every_parameter(feedforward, activation):
    """Backpropagating through the FFN gives every parameter a non-zero gradient."""
    ffn = _build(feedforward, 4, 8, activation, True, 0, torch.float32)
    (ffn(randn((3, 4), 1)) * randn((3, 4), 2)).sum().backward()
    for name, p in ffn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"parameter {name} got no gradient"


@given(lead=batch_shapes(0, 2), d=sizes(8), f=sizes(12), activation=activations, bias=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=seeds)
def test_fast_path_equals_written_out(feedforward, lead, d, f, activation, bias, dtype, seed):
    """fast=True (torch's activations) gives the written-out outputs and input gradients."""
    slow = _build(feedforward, d, f, activation, bias, seed, dtype)
    fast = feedforward.FeedForward(d, f, activation=activation, bias=bias, fast=True).to(dtype)
    fast.load_state_dict(slow.state_dict())
    assert fast.fast is True and slow.fast is False, "FeedForward must store fast as .fast"
    x = randn((*lead, d), seed, dtype, 2.0)
    xs, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    ys, yf = slow(xs), fast(xf)
    assert_close(yf, ys, what=f"FeedForward[{activation}](fast=True) vs fast=False")
    upstream = randn(ys.shape, seed + 1, dtype)
    (ys * upstream).sum().backward()
    (yf * upstream).sum().backward()
    assert_close(xf.grad, xs.grad, what=f"FeedForward[{activation}](fast=True): gradient of the input")


@given(seed=seeds)
def test_activation_functions(feedforward, seed):
    """relu, gelu (exact erf form), gelu_tanh (the tanh approximation) and silu equal torch's own."""
    x = randn((64,), seed, torch.float64, 4.0)
    assert_close(feedforward.relu(x), F.relu(x), what="relu(x)")
    assert_close(feedforward.gelu(x), F.gelu(x, approximate="none"), what="gelu(x), exact erf form")
    assert_close(feedforward.gelu_tanh(x), F.gelu(x, approximate="tanh"), what="gelu_tanh(x), tanh approximation")
    assert_close(feedforward.silu(x), F.silu(x), what="silu(x)")


def test_relu_gradient_at_zero(feedforward):
    """relu(x) = max(x, 0), and its derivative at x = 0 exactly is 0, as torch.nn.functional.relu's
    (so the fast and written-out FFN agree there too)."""
    x = torch.tensor([-2.0, -0.0, 0.0, 0.0, 1e-30, 3.0], dtype=torch.float64)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = feedforward.relu(ours)
    assert_close(y, F.relu(x), what="relu(x) at -2, -0, 0, 0, 1e-30, 3")
    y.sum().backward()
    F.relu(theirs).sum().backward()
    assert_close(ours.grad, theirs.grad, what="relu'(x) at -2, -0, 0, 0, 1e-30, 3 (0 at x = 0, as F.relu)", atol=0, rtol=0)


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh", "swiglu"])
def test_activation_name_compares_by_value(feedforward, activation):
    """An activation name read from a config (an equal string, not the literal) builds the same FFN:
    the same parameters (w3 for swiglu only) and the same formula."""
    name = fresh(activation)
    ffn = _build(feedforward, 4, 6, name, True, 0)
    assert (ffn.w3 is not None) == (activation == "swiglu"), \
        f"FeedForward(activation={activation!r} read from a config): w3 is {'missing' if ffn.w3 is None else 'present'}"
    x = randn((3, 4), 1, torch.float64, 2.0)
    assert_close(ffn(x), _oracle(ffn, x, activation), what=f"FeedForward[{activation!r} read from a config](x)")


def test_bad_arguments(feedforward):
    """An unknown activation, non-positive sizes or a wrong input shape raise clear errors."""
    with raises_clear(ValueError, "activation", "swiglu"):
        feedforward.FeedForward(4, 8, activation="tanh")
    with raises_clear(ValueError, "d_model"):
        feedforward.FeedForward(0, 8)
    with raises_clear(ValueError, "d_ff"):
        feedforward.FeedForward(4, -2)
    with raises_clear(TypeError, "fast"):
        feedforward.FeedForward(4, 8, fast="yes")
    ffn = feedforward.FeedForward(4, 8)
    with raises_clear(ValueError, "x", "4"):
        ffn(torch.zeros(2, 5))
    with raises_clear(ValueError, "x"):
        ffn(torch.tensor(0.5))


@given(lead=batch_shapes(0, 2), d=sizes(8), f=sizes(12), seed=seeds)
def test_defaults(feedforward, lead, d, f, seed):
    """FeedForward(d_model, d_ff) alone: exact GELU, biases in w1 and w2, no w3, fast False."""
    seed_all(seed)
    ffn = feedforward.FeedForward(d, f).double()
    assert ffn.w3 is None, "default activation gelu: w3 must be None"
    assert ffn.w1.bias is not None and ffn.w2.bias is not None, "FeedForward: bias defaults to True"
    assert ffn.fast is False, f"FeedForward: fast defaults to False, got {ffn.fast!r}"
    with torch.no_grad():
        for i, p in enumerate(ffn.parameters()):
            p.copy_(randn(p.shape, seed + i, torch.float64, 0.5))
    x = randn((*lead, d), seed, torch.float64, 2.0)
    assert_close(ffn(x), _oracle(ffn, x, "gelu"), what="FeedForward(d, f) vs w2(gelu(w1 x)) (the defaults)")


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@settings(max_examples=max(1, settings().max_examples // 2))
@given(lead=batch_shapes(0, 2), d=sizes(8), f=sizes(12), activation=activations, bias=st.booleans(),
       seed=seeds)
def test_low_precision(feedforward, dtype, lead, d, f, activation, bias, fast, seed):
    """In float16 / bfloat16 the FFN keeps the dtype and equals float64 on the same rounded weights.

    Tolerance: 8 * eps(dtype) * M, M = the oracle written with |x| and every |W|, |b| (a bound on
    each operand, so outputs that cancel to ~0 are fine); measured worst relative to max|y|: 2.4.
    """
    ffn = _build(feedforward, d, f, activation, bias, seed)
    ffn.fast = fast
    ffn = ffn.to(dtype).double()
    x = randn((*lead, d), seed, torch.float64).to(dtype)
    expected = _oracle(ffn, x.double(), activation)
    got = ffn.to(dtype)(x)
    assert got.dtype == dtype, f"output dtype: expected {dtype}, got {got.dtype}"
    lin_abs = lambda layer, h: F.linear(h, layer.weight.double().abs(),  # noqa: E731
                                        None if layer.bias is None else layer.bias.double().abs())
    hidden = lin_abs(ffn.w1, x.double().abs())
    if activation == "swiglu":
        hidden = hidden * lin_abs(ffn.w3, x.double().abs())
    magnitude = float(lin_abs(ffn.w2, hidden).detach().max())
    atol = 8 * torch.finfo(dtype).eps * magnitude
    assert_close(got, expected.detach().to(dtype), what=f"FeedForward({activation}) in {dtype} vs float64", atol=atol)
