"""Spec of ``norm``: ``LayerNorm``, ``RMSNorm`` and ``build_norm``."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from .support import (assert_close, batch_shapes, float_dtypes, fresh, randn, raises_clear, seed_all, seeds,
                      sizes)

#: Input scales: tiny ones make eps matter (eps inside vs outside the square root), large ones
#: make a wrong variance obvious.
scales = st.sampled_from([1e-3, 1.0, 30.0])


@pytest.fixture(scope="module")
def norm(impl):
    return impl.component("norm")


def _conditioned(shape, seed: int, dtype: torch.dtype, scale: float) -> torch.Tensor:
    """Rows with standard deviation exactly ``scale`` around a random mean of the same size.

    LayerNorm divides by the row's standard deviation: two float32 values that happen to be close
    make it, and its gradient, arbitrarily sensitive to rounding, and a comparison between two
    correct implementations fails. Here every row's |x| / std is at most about 4 + sqrt(d), so
    float32 rounding moves the output by a few 1e-6 of its size: the tolerances hold on every
    input (no false failure), and a mean, an eps or a variance computed wrongly still shows.
    """
    z = randn(shape, seed, torch.float64)
    if shape[-1] > 1:
        z = (z - z.mean(dim=-1, keepdim=True)) / z.std(dim=-1, unbiased=False, keepdim=True)
    else:
        z = torch.zeros_like(z)
    mean = randn((*shape[:-1], 1), seed + 7, torch.float64).clamp(-3.0, 3.0)
    return (scale * (mean + z)).to(dtype)


def _randomise(module, seed):
    """Give every parameter random values, so a gain or bias that is ignored shows."""
    with torch.no_grad():
        for i, p in enumerate(module.parameters()):
            p.copy_(randn(p.shape, seed + 100 + i, p.dtype))


# --- LayerNorm ----------------------------------------------------------------------------------

@given(lead=batch_shapes(0, 2), d=sizes(16, 2), scale=scales, seed=seeds)
def test_layernorm_normalises(norm, lead, d, scale, seed):
    """Before the affine part, LayerNorm gives each vector mean 0 and biased variance var/(var+eps)."""
    x = randn((*lead, d), seed, torch.float64, scale) + 3.0 * scale
    y = norm.LayerNorm(d).double()(x)
    var = x.var(dim=-1, unbiased=False, keepdim=True)
    assert_close(y.mean(dim=-1), torch.zeros(lead, dtype=torch.float64), what="mean of LayerNorm(x)", atol=1e-9)
    assert_close(y.var(dim=-1, unbiased=False), (var / (var + 1e-5)).squeeze(-1),
                 what="biased variance of LayerNorm(x) (should be var / (var + eps))")


@given(lead=batch_shapes(0, 2), d=sizes(16), scale=scales, bias=st.booleans(), dtype=float_dtypes, seed=seeds)
def test_layernorm_equals_torch(norm, lead, d, scale, bias, dtype, seed):
    """LayerNorm equals torch.nn.functional.layer_norm with the same gain, bias and eps.

    Inputs are well conditioned (see ``_conditioned``): rounding alone never fails it."""
    ln = norm.LayerNorm(d, bias=bias).to(dtype)
    _randomise(ln, seed)
    x = _conditioned((*lead, d), seed, dtype, scale)
    expected = F.layer_norm(x, (d,), ln.weight, ln.bias, eps=1e-5)
    assert_close(ln(x), expected, what="LayerNorm(x)")


@given(lead=batch_shapes(1, 2), d=sizes(16, 2), shift=st.floats(-100, 100), gain=st.floats(0.1, 10), seed=seeds)
def test_layernorm_shift_and_scale_invariant(norm, lead, d, shift, gain, seed):
    """LayerNorm(a*x + c) == LayerNorm(x) for any shift c and gain a > 0 (eps = 1e-12 here)."""
    x = randn((*lead, d), seed, torch.float64)
    x[..., 0] = x.amax(dim=-1) + 1.0  # variance >= 1/d^2, so eps = 1e-12 is negligible
    ln = norm.LayerNorm(d, eps=1e-12).double()
    _randomise(ln, seed)
    assert_close(ln(gain * x + shift), ln(x), what="LayerNorm(a*x + c) vs LayerNorm(x)", atol=1e-7, rtol=1e-7)


def test_layernorm_parameters(norm):
    """LayerNorm has a gain `weight` of ones and a `bias` of zeros, shape (d_model,); bias=False: None."""
    ln = norm.LayerNorm(5)
    assert torch.equal(ln.weight.detach(), torch.ones(5)), "LayerNorm.weight must start as ones(d_model)"
    assert torch.equal(ln.bias.detach(), torch.zeros(5)), "LayerNorm.bias must start as zeros(d_model)"
    assert norm.LayerNorm(5, bias=False).bias is None, "LayerNorm(bias=False).bias must be None"
    assert sum(p.numel() for p in norm.LayerNorm(5, bias=False).parameters()) == 5


# --- RMSNorm ------------------------------------------------------------------------------------

@given(lead=batch_shapes(0, 2), d=sizes(16), scale=scales, dtype=float_dtypes, seed=seeds)
def test_rmsnorm_equals_torch(norm, lead, d, scale, dtype, seed):
    """RMSNorm equals torch.nn.functional.rms_norm with the same gain and eps."""
    rms = norm.RMSNorm(d).to(dtype)
    _randomise(rms, seed)
    x = randn((*lead, d), seed, dtype, scale) + scale
    assert_close(rms(x), F.rms_norm(x, (d,), rms.weight, eps=1e-5), what="RMSNorm(x)")


@given(lead=batch_shapes(1, 2), d=sizes(16), gain=st.floats(0.1, 10), seed=seeds)
def test_rmsnorm_scale_invariant(norm, lead, d, gain, seed):
    """RMSNorm(a*x) == RMSNorm(x) for any a > 0 (eps = 1e-12 here); RMSNorm has no bias."""
    rms = norm.RMSNorm(d, eps=1e-12).double()
    _randomise(rms, seed)
    x = randn((*lead, d), seed, torch.float64)
    x = x + 0.5 * x.sign()  # every |x| >= 0.5, so eps = 1e-12 is negligible
    assert_close(rms(gain * x), rms(x), what="RMSNorm(a*x) vs RMSNorm(x)", atol=1e-8, rtol=1e-8)
    names = [n for n, _ in rms.named_parameters()]
    assert names == ["weight"], f"RMSNorm parameters: expected ['weight'], got {names}"


# --- both ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_half_precision(norm, kind, dtype, fast):
    """bfloat16 / float16 inputs give outputs of that dtype close to the float32 result (statistics in float32)."""
    layer = norm.build_norm(kind, 64, fast=fast)
    x = (randn((4, 64), 0, torch.float32, 20.0) + 1000.0).to(dtype)  # steps of 4 (bf16), 0.5 (fp16) here
    got = layer.to(dtype)(x)
    assert got.dtype == dtype, f"output dtype: expected {dtype}, got {got.dtype}"
    expected = layer.float()(x.float())
    # Only the output's rounding to the dtype (relative 2^-8 for bfloat16, 2^-11 for float16) may differ.
    tol = 0.01 if dtype == torch.bfloat16 else 0.002
    assert_close(got.float(), expected, what=f"{kind} in {dtype} vs float32", atol=tol, rtol=tol)


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_gradients_reach_every_parameter(norm, kind):
    """Backpropagating through a norm gives every parameter and the input a gradient."""
    seed_all(0)
    layer = norm.build_norm(kind, 6)
    _randomise(layer, 0)
    x = randn((3, 6), 1).requires_grad_()
    (layer(x) * randn((3, 6), 2)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0, "no gradient reached the input"
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"parameter {name} got no gradient"


@given(kind=st.sampled_from(["layernorm", "rmsnorm"]), lead=batch_shapes(0, 2), d=sizes(16, 2),
       scale=scales, eps=st.sampled_from([1e-5, 1e-2, 0.5]), dtype=st.sampled_from([torch.float32, torch.float64]),
       seed=seeds)
def test_fast_path_equals_written_out(norm, kind, lead, d, scale, eps, dtype, seed):
    """fast=True gives the written-out path's outputs and gradients (same eps, gain and bias).

    Inputs are well conditioned (``_conditioned``), and the input gradient, whose size is about
    |gain * upstream| / std, is compared with a tolerance of that size: rounding alone never fails it."""
    slow = norm.build_norm(kind, d, eps=eps).to(dtype)
    _randomise(slow, seed)
    fast = norm.build_norm(kind, d, eps=eps, fast=True).to(dtype)
    fast.load_state_dict(slow.state_dict())
    assert fast.fast is True and slow.fast is False, "build_norm must pass fast on (stored as .fast)"
    x = _conditioned((*lead, d), seed, dtype, scale)
    upstream = randn((*lead, d), seed + 1, dtype)
    xs, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    ys, yf = slow(xs), fast(xf)
    assert_close(yf, ys, what=f"{kind}(fast=True) vs fast=False, eps={eps}")
    (ys * upstream).sum().backward()
    (yf * upstream).sum().backward()
    std = (x.double().var(dim=-1, unbiased=False) + eps).sqrt().min().item() if kind == "layernorm" else \
        (x.double().pow(2).mean(dim=-1) + eps).sqrt().min().item()
    size = (slow.weight.detach().double().abs().max() * upstream.double().abs().max()).item() / std
    assert_close(xf.grad, xs.grad, what=f"{kind}(fast=True): gradient of the input", atol=1e-5 * max(1.0, size))
    for (name, pf), ps in zip(fast.named_parameters(), slow.parameters()):
        assert_close(pf.grad, ps.grad, what=f"{kind}(fast=True): gradient of {name}")


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_fast_path_other_input_dtype_is_written_out(norm, kind, dtype):
    """fast=True with an input whose dtype is not the parameters' (float32 here) gives what fast=False
    gives: the same output dtype and values (the written-out path), and the same input gradient."""
    slow = norm.build_norm(kind, 8)
    _randomise(slow, 3)
    fast = norm.build_norm(kind, 8, fast=True)
    fast.load_state_dict(slow.state_dict())
    x = _conditioned((3, 8), 5, dtype, 1.0)
    xs, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    ys, yf = slow(xs), fast(xf)
    assert yf.dtype == ys.dtype, \
        f"{kind}(fast=True) on {dtype} input, float32 parameters: output dtype {yf.dtype}, fast=False gives {ys.dtype}"
    assert_close(yf, ys, what=f"{kind}(fast=True) vs fast=False on {dtype} input, float32 parameters")
    upstream = randn(ys.shape, 6, ys.dtype)
    (ys * upstream).sum().backward()
    (yf * upstream).sum().backward()
    assert_close(xf.grad, xs.grad, what=f"{kind}(fast=True) on {dtype} input: gradient of the input")


def test_build_norm(norm):
    """build_norm("layernorm" | "rmsnorm", d_model) builds the named layer (names compare by value: one read
    from a config counts); other names are errors."""
    assert isinstance(norm.build_norm("layernorm", 4), norm.LayerNorm)
    assert isinstance(norm.build_norm("rmsnorm", 4), norm.RMSNorm)
    for kind, cls in (("layernorm", norm.LayerNorm), ("rmsnorm", norm.RMSNorm)):
        built = norm.build_norm(fresh(kind), 4)
        assert isinstance(built, cls), f"build_norm({kind!r} read from a config): expected {cls.__name__}, " \
                                       f"got {type(built).__name__}"
    with raises_clear(ValueError, "norm", "layernorm", "rmsnorm"):
        norm.build_norm("batchnorm", 4)


@pytest.mark.parametrize("cls", ["LayerNorm", "RMSNorm"])
def test_bad_arguments(norm, cls):
    """Non-positive sizes or eps, wrong input shapes and integer inputs raise clear errors."""
    make = getattr(norm, cls)
    with raises_clear(ValueError, "d_model"):
        make(0)
    with raises_clear(TypeError, "d_model"):
        make(4.0)
    with raises_clear(ValueError, "eps"):
        make(4, eps=0.0)
    with raises_clear(TypeError, "fast"):
        make(4, fast=1)
    layer = make(4)
    with raises_clear(ValueError, "x", "4"):
        layer(torch.zeros(2, 3))
    with raises_clear(ValueError, "x"):
        layer(torch.tensor(1.0))
    with raises_clear(TypeError, "x"):
        layer(torch.zeros(2, 4, dtype=torch.long))


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
@given(lead=batch_shapes(1, 2), d=sizes(16, 2), seed=seeds)
def test_defaults(norm, kind, lead, d, seed):
    """build_norm(kind, d) and the classes without eps / bias / fast: eps 1e-5 inside the sqrt, LayerNorm has a bias, fast False.

    The input has variance about 1e-6, so an eps of 1e-6 or 1e-4 instead of 1e-5 shows.
    """
    x = randn((*lead, d), seed, torch.float64, 1e-3)
    for layer in (norm.build_norm(kind, d), norm.LayerNorm(d) if kind == "layernorm" else norm.RMSNorm(d)):
        layer = layer.double()
        assert layer.fast is False, f"{type(layer).__name__}: fast defaults to False, got {layer.fast!r}"
        if kind == "layernorm":
            assert layer.bias is not None, "LayerNorm / build_norm('layernorm'): bias defaults to True"
            with torch.no_grad():
                layer.bias.copy_(randn((d,), seed + 1, torch.float64))
            expected = F.layer_norm(x, (d,), layer.weight, layer.bias, eps=1e-5)
        else:
            expected = F.rms_norm(x, (d,), layer.weight, eps=1e-5)
        assert_close(layer(x), expected, what=f"{type(layer).__name__} with default eps (1e-5) on tiny inputs")
