"""Spec of ``linear``: ``Linear(in_features, out_features, bias=True)``, ``y = x W^T + b``."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from .support import assert_close, batch_shapes, float_dtypes, randn, raises_clear, seed_all, seeds, sizes


@pytest.fixture(scope="module")
def linear(impl):
    return impl.component("linear")


@given(n_in=sizes(), n_out=sizes(), bias=st.booleans())
def test_parameter_shapes(linear, n_in, n_out, bias):
    """Linear.weight is (out_features, in_features), bias is (out_features,) or None."""
    layer = linear.Linear(n_in, n_out, bias=bias)
    assert tuple(layer.weight.shape) == (n_out, n_in), \
        f"weight shape: expected (out_features, in_features) = {(n_out, n_in)}, got {tuple(layer.weight.shape)}"
    if bias:
        assert layer.bias is not None and tuple(layer.bias.shape) == (n_out,), "bias must have shape (out_features,)"
    else:
        assert layer.bias is None, "bias=False: Linear.bias must be None"


@given(lead=batch_shapes(0, 3), n_in=sizes(), n_out=sizes(), bias=st.booleans(), dtype=float_dtypes, seed=seeds)
def test_equals_torch_linear(linear, lead, n_in, n_out, bias, dtype, seed):
    """Linear(x) equals torch.nn.functional.linear(x, weight, bias) for any leading dims."""
    seed_all(seed)
    layer = linear.Linear(n_in, n_out, bias=bias).to(dtype)
    if bias:
        with torch.no_grad():
            layer.bias.copy_(randn((n_out,), seed + 1, dtype))
    x = randn((*lead, n_in), seed, dtype)
    assert_close(layer(x), F.linear(x, layer.weight, layer.bias), what="Linear(x)")



def test_initialisation_statistics(linear):
    """Weights start as N(0, 0.02^2) (checked on 65,536 draws), biases as zeros.

    False-failure rate: the thresholds are 12.8 standard errors of the mean (0.02 / 256) and 18 of
    the std (0.02 / sqrt(2 * 65,536)): below 1e-36 for a correct N(0, 0.02^2) draw.
    """
    seed_all(0)
    layer = linear.Linear(256, 256)
    w = layer.weight.detach().double()
    assert abs(w.mean().item()) < 0.001, f"weight mean: expected 0, got {w.mean().item():.4g}"
    assert abs(w.std().item() - 0.02) < 0.001, f"weight std: expected 0.02, got {w.std().item():.4g}"
    assert torch.all(layer.bias == 0), "bias must start at zero"


def test_gradients_reach_every_parameter(linear):
    """Backpropagating through Linear gives every parameter a non-zero gradient."""
    seed_all(0)
    layer = linear.Linear(3, 4)
    layer(randn((2, 3), 1)).pow(2).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"parameter {name} got no gradient"


def test_bad_arguments(linear):
    """Non-positive sizes and inputs of rank 0 or of the wrong last dimension raise clear errors (rank 1 is fine)."""
    with raises_clear(ValueError, "in_features"):
        linear.Linear(0, 3)
    with raises_clear(ValueError, "out_features"):
        linear.Linear(3, -1)
    with raises_clear(TypeError, "in_features"):
        linear.Linear(2.5, 3)
    layer = linear.Linear(3, 2)
    with raises_clear(ValueError, "x", "3"):
        layer(torch.zeros(2, 4))
    with raises_clear(ValueError, "x"):
        layer(torch.tensor(1.0))  # rank 0: x needs at least 1 dim (its last is in_features)
    assert tuple(layer(torch.zeros(3)).shape) == (2,), "a 1-dim x of in_features values is accepted: (in,) -> (out,)"


def _assert_low_precision(got, expected, dtype, factor, what, magnitude):
    """``got`` has ``dtype`` and is within ``factor * eps(dtype) * magnitude`` of the float64 ``expected``
    (``magnitude``: the largest operand, e.g. ``|x| |W|^T + |b|``: a result that cancels to ~0 still
    carries the rounding error of its operands)."""
    assert got.dtype == dtype, f"{what}: output dtype: expected {dtype}, got {got.dtype}"
    atol = factor * torch.finfo(dtype).eps * magnitude
    assert_close(got, expected.detach().to(dtype), what=f"{what} in {dtype} vs float64", atol=atol)


@given(n_in=sizes(), n_out=sizes(), seed=seeds)
def test_bias_by_default(linear, n_in, n_out, seed):
    """Linear(in, out) without bias= has a bias (zeros at first) that is added: y = x W^T + b."""
    seed_all(seed)
    layer = linear.Linear(n_in, n_out).double()
    assert layer.bias is not None, "Linear(in, out): bias defaults to True, got bias None"
    assert torch.equal(layer.bias.detach(), torch.zeros(n_out, dtype=torch.float64)), "the bias must start at zero"
    with torch.no_grad():
        layer.bias.copy_(randn((n_out,), seed + 1, torch.float64))
    x = randn((3, n_in), seed, torch.float64)
    assert_close(layer(x), x @ layer.weight.T + layer.bias, what="Linear(x) with the default bias")


@given(lead=batch_shapes(0, 2), n_in=sizes(), n_out=sizes(), bias=st.booleans(), dtype=float_dtypes, seed=seeds)
def test_fast_path_equals_written_out(linear, lead, n_in, n_out, bias, dtype, seed):
    """fast=True (one F.linear call) gives the written-out x W^T + b: outputs and input gradients.

    Tolerance: 2 (n + 1) eps(dtype) max M, M the sum over |terms| (|x| |W|^T + |b|, and
    |upstream| |W| for the gradient): the bound on two summation orders of n + 1 terms, so it never fails
    on rounding alone."""
    seed_all(seed)
    slow = linear.Linear(n_in, n_out, bias=bias).to(dtype)
    fast = linear.Linear(n_in, n_out, bias=bias, fast=True).to(dtype)
    with torch.no_grad():
        for i, p in enumerate(slow.parameters()):
            p.copy_(randn(p.shape, seed + 1 + i, dtype))
    fast.load_state_dict(slow.state_dict())
    xs, xf = randn((*lead, n_in), seed, dtype).requires_grad_(), randn((*lead, n_in), seed, dtype).requires_grad_()
    ys, yf = slow(xs), fast(xf)
    w = slow.weight.detach().double().abs()
    magnitude = xs.detach().double().abs() @ w.T + (slow.bias.detach().double().abs() if bias else 0.0)
    bound = lambda n, m: 2 * (n + 1) * torch.finfo(dtype).eps * float(m.max())  # noqa: E731
    assert_close(yf, ys, what="Linear(fast=True)(x) vs fast=False", atol=bound(n_in, magnitude), rtol=0)
    upstream = randn(ys.shape, seed + 9, dtype)
    (ys * upstream).sum().backward()
    (yf * upstream).sum().backward()
    assert_close(xf.grad, xs.grad, what="Linear(fast=True): gradient of the input",
                 atol=bound(n_out, upstream.double().abs() @ w), rtol=0)


def test_fast_defaults_to_false(linear):
    """Linear(in, out) without fast= is written out: its .fast is False; fast=True is stored as .fast."""
    assert linear.Linear(3, 2).fast is False, f"Linear: fast defaults to False, got {linear.Linear(3, 2).fast!r}"
    assert linear.Linear(3, 2, fast=True).fast is True, "Linear(fast=True) must store fast as .fast"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@given(lead=batch_shapes(0, 2), n_in=sizes(16), n_out=sizes(8), bias=st.booleans(), seed=seeds)
def test_low_precision(linear, dtype, lead, n_in, n_out, bias, seed):
    """In float16 / bfloat16 Linear keeps the dtype and equals float64 on the same rounded weights.

    Tolerance: 4 * eps(dtype) * max(|x| |W|^T + |b|) (measured worst, relative to max|y|: 0.7).
    """
    seed_all(seed)
    layer = linear.Linear(n_in, n_out, bias=bias).double()
    with torch.no_grad():
        for i, p in enumerate(layer.parameters()):
            p.copy_(randn(p.shape, seed + 1 + i, torch.float64))
    layer = layer.to(dtype).double()
    x = randn((*lead, n_in), seed, torch.float64).to(dtype)
    expected = layer(x.double())
    magnitude = x.double().abs() @ layer.weight.detach().abs().T
    if bias:
        magnitude = magnitude + layer.bias.detach().abs()
    _assert_low_precision(layer.to(dtype)(x), expected, dtype, 4, "Linear(x)", float(magnitude.max()))
