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
    """Weights start as N(0, 0.02^2) (checked on 65,536 draws), biases as zeros."""
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
    """Non-positive sizes and inputs of the wrong last dimension raise clear errors."""
    with raises_clear(ValueError, "in_features"):
        linear.Linear(0, 3)
    with raises_clear(ValueError, "out_features"):
        linear.Linear(3, -1)
    with raises_clear(TypeError, "in_features"):
        linear.Linear(2.5, 3)
    layer = linear.Linear(3, 2)
    with raises_clear(ValueError, "x", "3"):
        layer(torch.zeros(2, 4))
